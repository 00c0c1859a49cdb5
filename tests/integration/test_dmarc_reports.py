"""End-to-end tests of DMARC aggregate reports (RFC 7489 §7.2, [dmarc_reports]), built like
test_tlsrpt.py and the DMARC tests of test_auth_filters.py: a loopback DNS server with the
senders' SPF, DKIM and _dmarc records; the daemon takes mail for example.test from 127.0.0.1
(not a relay client, so SPF, DKIM and DMARC apply) and delivers it to a sink. sender.test
publishes p=reject with rua=mailto:dmarc@sender.test (its own domain: no External Destination
Verification); one message from it passes DMARC (SPF and DKIM aligned), one forged one fails
and is refused. With interval = "5s" the report for sender.test reaches the reports sink
(sender.test and reports.test are routed there) with the §7.2.1.1 Subject and file name, the
gzipped XML counting both messages with their dispositions, aligned results, identifiers and
auth_results, and the policy_published. norua.test has no rua (no report); ext.test's rua is
at reports.test, which does not publish ext.test._report._dmarc.reports.test (none, logged);
verified.test's is at reports.test too, which publishes it (a report); small.test's rua
limits reports to 100 bytes (none, logged). The period under way outlives a graceful restart
and, checkpointed every second, a kill -9; a period is reported once, even across another
kill -9 after its report was queued.

Run: MOAT_BIN=build/moat MOAT_SOURCE_DIR=. /usr/bin/python3 tests/integration/test_dmarc_reports.py -v
"""

import email
import email.policy
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
import unittest
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(__file__))
import dkim  # noqa: E402  (python3-dkim)
from authzone import owned_dns, rsa_key, txt_lookup  # noqa: E402
from harness import Sink, check_config, owned_moat, simple_message, wait_for  # noqa: E402

REPORTS = "reports.test"
INBOUND_NETS = ["10.255.255.0/24"]  # loopback is NOT a relay client: SPF and DMARC apply


message = simple_message


def parse_report(data):
    """(message, attachment part, the XML root) of a report mail as the sink got it."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    parts = [p for p in msg.walk() if p.get_content_type() == "application/gzip"]
    assert len(parts) == 1, msg
    return msg, parts[0], ET.fromstring(gzip.decompress(parts[0].get_payload(decode=True)))


def read_state(path):
    with open(path) as f:
        return json.load(f)


def records(roots):
    """Every <record> of the reports, as dicts, counts added up over identical rows."""
    out = {}
    for root in roots:
        for rec in root.findall("record"):
            row = rec.find("row")
            pe = row.find("policy_evaluated")
            key = (row.findtext("source_ip"), pe.findtext("disposition"), pe.findtext("dkim"), pe.findtext("spf"),
                   rec.findtext("identifiers/header_from"), rec.findtext("identifiers/envelope_from"),
                   tuple((d.findtext("domain"), d.findtext("selector"), d.findtext("result"))
                         for d in rec.findall("auth_results/dkim")),
                   tuple((s.findtext("domain"), s.findtext("scope"), s.findtext("result"))
                         for s in rec.findall("auth_results/spf")))
            out[key] = out.get(key, 0) + int(row.findtext("count"))
    return out


class DmarcReportsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="moat-dmarcrpt-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.sender_key = os.path.join(cls.tmp, "sel.pem")
        cls.sender_txt = rsa_key(cls.sender_key)
        cls.report_key = os.path.join(cls.tmp, "report.pem")
        cls.report_txt = rsa_key(cls.report_key)

    def start(self, interval="5s", checkpoint="5m"):
        self.reports = Sink()
        self.addCleanup(self.reports.stop)
        self.sink = Sink()
        self.addCleanup(self.sink.stop)
        spf = [{"TXT": "v=spf1 ip4:127.0.0.1 -all"}]
        zone = {
            "sender.test": spf,
            "sel._domainkey.sender.test": [{"TXT": self.sender_txt}],
            "_dmarc.sender.test": [{"TXT": "v=DMARC1; p=reject; adkim=s; rua=mailto:dmarc@sender.test"}],
            "attacker.test": spf,
            "norua.test": spf,
            "_dmarc.norua.test": [{"TXT": "v=DMARC1; p=reject"}],
            "ext.test": spf,
            "_dmarc.ext.test": [{"TXT": f"v=DMARC1; p=none; rua=mailto:agg@{REPORTS}"}],
            "verified.test": spf,
            "_dmarc.verified.test": [{"TXT": f"v=DMARC1; p=quarantine; pct=100; rua=mailto:agg@{REPORTS}!10m"}],
            f"verified.test._report._dmarc.{REPORTS}": [{"TXT": "v=DMARC1"}],
            "small.test": spf,
            "_dmarc.small.test": [{"TXT": "v=DMARC1; p=none; rua=mailto:dmarc@small.test!100"}],
        }
        dns = owned_dns(self, zone)
        extra = (f'\n[dns]\nnameservers = ["{dns.nameserver}"]\ntimeout = "1s"\n'
                 f'\n[dmarc_reports]\nenabled = true\ninterval = "{interval}"\ncheckpoint_interval = "{checkpoint}"\n'
                 'organization_name = "Moat Test Org"\n'
                 'contact_info = "https://moat.test/dmarc"\nfrom = "dmarc-reports@moat.test"\n'
                 f'\n[[dkim.sign]]\ndomain = "moat.test"\nselector = "s1"\nkey_file = "{self.report_key}"\n'
                 f'\n[[route]]\ndomains = ["{REPORTS}", "sender.test", "small.test"]\n'
                 f'to = ["smtp:127.0.0.1:{self.reports.port}"]\n'
                 f'\n[[route]]\ndomains = ["example.test"]\nto = ["smtp:127.0.0.1:{self.sink.port}"]\n')
        m = owned_moat(self, routes=[], extra=extra, networks=INBOUND_NETS, retry='["1h"]')
        s = m.smtp()
        with open(self.sender_key, "rb") as f:
            private = f.read()
        raw = message("Alice <alice@sender.test>", "signed pass")
        signed = dkim.sign(raw, b"sel", b"sender.test", private, include_headers=[b"from", b"to", b"subject"]) + raw
        s.sendmail("alice@sender.test", ["bob@example.test"], signed)
        # Forged: attacker.test's own SPF passes, but neither it nor a signature aligns.
        code, _ = self.refused(s, "boss@attacker.test", message("CEO <ceo@sender.test>", "forged"))
        self.assertEqual(code, 550)
        for domain in ("norua.test", "ext.test", "verified.test", "small.test"):
            s.sendmail(f"a@{domain}", ["bob@example.test"], message(f"A <a@{domain}>", f"from {domain}"))
        s.quit()
        self.sink.wait_messages(5)
        return m

    @staticmethod
    def refused(s, mail_from, data):
        s.mail(mail_from)
        s.rcpt("bob@example.test")
        return s.data(data)

    def reports_to(self, rcpt):
        return [parse_report(x["data"]) for x in list(self.reports.messages) if x["rcpts"] == [rcpt]]

    def wait_sender_reports(self, timeout=40):
        """The sender.test reports once they count both of its messages (they may fall on both
        sides of a period's end: the reports are added up)."""
        def enough():
            got = self.reports_to("dmarc@sender.test")
            return sum(records([r for _, _, r in got]).values()) >= 2
        wait_for(enough, timeout, what="DMARC reports for sender.test counting two messages")
        return self.reports_to("dmarc@sender.test")

    def test_reports_with_rows_policy_and_headers_and_none_where_not_wanted(self):
        m = self.start()
        got = self.wait_sender_reports()
        for msg, part, root in got:
            report_id = root.findtext("report_metadata/report_id")
            self.assertEqual(msg["From"], "dmarc-reports@moat.test")
            self.assertEqual(msg["To"], "dmarc@sender.test")
            self.assertEqual(str(msg["Subject"]),
                             f"Report Domain: sender.test Submitter: mx.moat.test Report-ID: <{report_id}>")
            name = part.get_filename()
            receiver, domain, begin, end = name[:-len(".xml.gz")].split("!")
            self.assertTrue(name.endswith(".xml.gz"), name)
            self.assertEqual((receiver, domain), ("mx.moat.test", "sender.test"))
            self.assertEqual(int(end) - int(begin), 4)  # [begin, end] of a 5 s period
            self.assertEqual(root.findtext("report_metadata/org_name"), "Moat Test Org")
            self.assertEqual(root.findtext("report_metadata/email"), "dmarc-reports@moat.test")
            self.assertEqual(root.findtext("report_metadata/extra_contact_info"), "https://moat.test/dmarc")
            self.assertEqual(root.findtext("report_metadata/date_range/begin"), begin)
            pp = root.find("policy_published")
            self.assertEqual([pp.findtext(k) for k in ("domain", "adkim", "aspf", "p", "sp", "pct")],
                             ["sender.test", "s", "r", "reject", "reject", "100"])
        rows = records([r for _, _, r in got])
        self.assertEqual(rows, {
            ("127.0.0.1", "none", "pass", "pass", "sender.test", "sender.test",
             (("sender.test", "sel", "pass"),), (("sender.test", "mfrom", "pass"),)): 1,
            ("127.0.0.1", "reject", "fail", "fail", "sender.test", "attacker.test",
             (), (("attacker.test", "mfrom", "pass"),)): 1,
        })
        # Signed by the From domain's key; sent like DSNs (null sender).
        dnsfunc = txt_lookup({"s1._domainkey.moat.test": self.report_txt})
        for x in self.reports.messages:
            self.assertTrue(dkim.verify(x["data"], dnsfunc=dnsfunc), x["data"][:1500])
            self.assertEqual(x["from"], "")
        ev = m.wait_log(event="dmarc_report", domain="sender.test")
        self.assertEqual(ev["rua"], "mailto:dmarc@sender.test")
        self.assertIn("report_id", ev)
        # verified.test: an external rua whose domain publishes the §7.1 record gets its report.
        wait_for(lambda: self.reports_to(f"agg@{REPORTS}"), 40, what="the report for verified.test")
        for _, _, root in self.reports_to(f"agg@{REPORTS}"):
            self.assertEqual(root.findtext("policy_published/domain"), "verified.test")
            self.assertEqual(root.findtext("policy_published/p"), "quarantine")
        # ext.test: the same rua without that record gets none.
        skipped = m.wait_log(event="dmarc_report_skipped", domain="ext.test")
        self.assertIn("not verified", skipped["reason"])
        self.assertIn(f"ext.test._report._dmarc.{REPORTS}", skipped["reason"])
        small = m.wait_log(event="dmarc_report_skipped", domain="small.test")
        self.assertIn("size limit", small["reason"])
        norua = m.wait_log(event="dmarc_report_skipped", domain="norua.test")
        self.assertEqual(norua["reason"], "no rua")
        time.sleep(1)
        self.assertEqual(sorted({tuple(x["rcpts"]) for x in self.reports.messages}),
                         [(f"agg@{REPORTS}",), ("dmarc@sender.test",)])
        for domain in ("ext.test", "norua.test", "small.test"):
            self.assertEqual(m.find_logs(event="dmarc_report", domain=domain), [])

    def test_the_period_under_way_outlives_a_graceful_restart(self):
        left = 30 - time.time() % 30
        if left < 15:
            time.sleep(left + 0.5)
        m = self.start(interval="30s")
        m.stop()
        state = os.path.join(m.dir, "spool", "dmarc_report.state")
        with open(state) as f:
            saved = json.load(f)
        self.assertEqual(saved["interval"], 30000)
        self.assertIn("sender.test", [d["policy"][0] for d in saved["domains"]])
        self.assertEqual(m.find_logs(event="dmarc_report"), [])
        m.start()
        got = self.wait_sender_reports(timeout=60)  # the messages before the restart are reported
        # The checkpoint now holds the new period's counts: none.
        self.assertEqual(read_state(state)["domains"], [])
        self.assertEqual(sum(records([r for _, _, r in got]).values()), 2)

    def test_a_checkpoint_outlives_kill_9_and_a_period_is_reported_once(self):
        # Far enough from the end of a 30 s period that the kill comes before it.
        left = 30 - time.time() % 30
        if left < 20:
            time.sleep(left + 0.5)
        m = self.start(interval="30s", checkpoint="1s")
        state = os.path.join(m.dir, "spool", "dmarc_report.state")

        def checkpointed():
            try:
                saved = read_state(state)
            except (OSError, ValueError):
                return False
            got = {d["policy"][0]: d for d in saved["domains"]}
            return "sender.test" in got and sum(r["count"] for r in got["sender.test"]["rows"]) == 2

        wait_for(checkpointed, 10, what="a checkpoint with sender.test's two messages")
        m.kill9()
        self.assertEqual(m.find_logs(event="dmarc_report"), [])
        m.start()
        got = self.wait_sender_reports(timeout=60)  # the messages before the crash are reported
        self.assertEqual(sum(records([r for _, _, r in got]).values()), 2)
        ev = m.wait_log(event="dmarc_report", domain="sender.test", since_start=True)
        self.assertEqual(ev["messages"], 2)
        # The checkpoint no longer holds the reported period: another crash and restart do
        # not report it again.
        self.assertEqual(read_state(state)["domains"], [])
        # verified.test's report goes to the same sink: it is in, and every report has left the
        # spool, before the kill (one still queued would be sent after the restart, rightly).
        m.wait_log(event="dmarc_report", domain="verified.test", since_start=True)
        wait_for(lambda: self.reports_to(f"agg@{REPORTS}"), 30, what="the report for verified.test")
        sent = len(self.reports.messages)
        m.wait_settled(self.reports.messages[:sent], since_start=True)
        m.kill9()
        m.start()
        time.sleep(3)
        self.assertEqual(len(self.reports.messages), sent)
        self.assertEqual(m.find_logs(event="dmarc_report", since_start=True), [])


class DmarcReportsCheckTest(unittest.TestCase):
    """`moat check` refuses bad [dmarc_reports] values with FILE:LINE."""

    def check(self, body):
        path, r = check_config(self, '[server]\nhostname = "mx.moat.test"\nspool_dir = "spool"\n\n'
                                     '[[listener]]\naddress = "127.0.0.1:2525"\n\n[dmarc_reports]\nenabled = true\n' +
                                     body)
        return path, r.returncode, r.stdout + r.stderr

    def test_good_values_are_accepted(self):
        _, rc, out = self.check('interval = "1h"\nfrom = "dmarc@moat.test"\norganization_name = "Moat"\n'
                                'checkpoint_interval = "1s"\n')
        self.assertEqual(rc, 0, out)

    def test_bad_values_are_refused_at_their_line(self):
        for body, what in (('interval = "0s"\n', "interval"), ('interval = "8d"\n', "interval"),
                           ('checkpoint_interval = "0s"\n', "checkpoint_interval"),
                           ('checkpoint_interval = "2h"\n', "checkpoint_interval"),
                           ('from = "no address"\n', "from"), ('contact_info = "a\\u0001b"\n', "contact_info"),
                           ('colour = "red"\n', "colour")):
            path, rc, out = self.check(body)
            self.assertNotEqual(rc, 0, body)
            self.assertIn(f"{path}:10:", out)
            self.assertIn(what, out)


if __name__ == "__main__":
    unittest.main()
