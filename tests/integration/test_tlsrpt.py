"""End-to-end tests of SMTP TLS Reporting (RFC 8460, [tlsrpt]) for delivery by MX, built like
test_mta_sts.py: a loopback DNS server with the MX records, the _mta-sts and _smtp._tls TXT
records; the MTA-STS policy over HTTPS on 127.0.0.1:443 (a CA made at test time, [mta_sts]
ca_file); a STARTTLS sink on 127.0.0.1:25 whose certificate names mx.example.test only. The
domain's better MX, bad.example.test, points at the same sink: its certificate does not name
it, so under the enforce policy that session fails (certificate-host-mismatch) and the next MX
takes the mail. With [tlsrpt] interval = "5s", the report for example.test is mailed to
reports@reports.test, routed to a second sink on a port of its own; other.test, delivered to
the same MX without a TLSRPT record, gets none. Ports 25 and 443 as test_mta_sts.py binds them
(a test is skipped when either is taken, after one retry).

Run: MOAT_BIN=build/moat MOAT_SOURCE_DIR=. /usr/bin/python3 tests/integration/test_tlsrpt.py -v
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

sys.path.insert(0, os.path.dirname(__file__))
import dkim  # noqa: E402  (python3-dkim)
from authzone import owned_dns, rsa_key, txt_lookup  # noqa: E402
from harness import Sink, check_config, make_ca, make_signed_cert, owned_moat, wait_for  # noqa: E402
from test_mta_sts import PolicyServer, bind_or_skip, policy  # noqa: E402

DOMAIN = "example.test"
MX = "mx.example.test"
BAD_MX = "bad.example.test"
OTHER = "other.test"
REPORTS = "reports.test"
POLICY_HOST = f"mta-sts.{DOMAIN}"


def parse_report(data):
    """(message, the JSON report) of a report mail as the sink got it."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    parts = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    assert len(parts) == 1, msg
    return msg, parts[0], json.loads(gzip.decompress(parts[0].get_payload(decode=True)))


class TlsRptTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="moat-tlsrpt-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.ca = make_ca(cls.tmp, cn="Moat TLSRPT test CA")
        cls.policy_cert = make_signed_cert(cls.tmp, cls.ca, "policy", f"DNS:{POLICY_HOST}")
        cls.mx_cert = make_signed_cert(cls.tmp, cls.ca, "mx", f"DNS:{MX}")
        cls.dkim_key = os.path.join(cls.tmp, "dkim.key")
        cls.dkim_txt = rsa_key(cls.dkim_key)

    def start(self, tlsrpt_txt, interval="5s"):
        mx_sink = bind_or_skip(self, lambda: Sink(port=25, tls_cert=self.mx_cert), "127.0.0.1:25")
        self.addCleanup(mx_sink.stop)
        server = bind_or_skip(self, lambda: PolicyServer(self.policy_cert, policy("enforce", mx=("*.example.test",))),
                              "127.0.0.1:443")
        self.addCleanup(server.stop)
        reports = Sink()
        self.addCleanup(reports.stop)
        zone = {
            DOMAIN: [{"MX": [5, BAD_MX]}, {"MX": [10, MX]}],
            OTHER: [{"MX": [10, MX]}],
            MX: [{"A": "127.0.0.1"}],
            BAD_MX: [{"A": "127.0.0.1"}],
            POLICY_HOST: [{"A": "127.0.0.1"}],
            f"_mta-sts.{DOMAIN}": [{"TXT": "v=STSv1; id=20261124"}],
        }
        if tlsrpt_txt:
            zone[f"_smtp._tls.{DOMAIN}"] = [{"TXT": t} for t in tlsrpt_txt]
        dns = owned_dns(self, zone)
        extra = (f'\n[dns]\nnameservers = ["{dns.nameserver}"]\ntimeout = "1s"\n'
                 f'\n[mta_sts]\nca_file = "{self.ca[0]}"\nfetch_timeout = "5s"\n'
                 f'\n[tlsrpt]\nenabled = true\ninterval = "{interval}"\norganization_name = "Moat Test Org"\n'
                 'contact_info = "tls-ops@moat.test"\nfrom = "tlsrpt@moat.test"\n'
                 f'\n[[dkim.sign]]\ndomain = "moat.test"\nselector = "s1"\nkey_file = "{self.dkim_key}"\n'
                 f'\n[[route]]\ndomains = ["{REPORTS}"]\nto = ["smtp:127.0.0.1:{reports.port}"]\n'
                 f'\n[[route]]\ndomains = ["{DOMAIN}"]\nto = ["mx"]\ntls = "may"\nmta_sts = true\n'
                 f'\n[[route]]\ndomains = ["{OTHER}"]\nto = ["mx"]\ntls = "may"\n')
        m = owned_moat(self, routes=[], extra=extra, retry='["1h"]')
        s = m.smtp()
        s.sendmail("a@sender.test", [f"u@{DOMAIN}"], b"Subject: tlsrpt\r\n\r\nbody\r\n")
        s.sendmail("a@sender.test", [f"u@{OTHER}"], b"Subject: tlsrpt other\r\n\r\nbody\r\n")
        s.quit()
        mx_sink.wait_messages(2)
        return m, reports

    def wait_reports(self, reports, timeout=40):
        """The reports at `reports` once they count one successful and one failed session (the
        sessions may fall on both sides of a period's end: the reports are added up)."""
        got = []

        def counts():
            ok = failed = 0
            for _, _, r in got:
                for p in r["policies"]:
                    ok += p["summary"]["total-successful-session-count"]
                    failed += p["summary"]["total-failure-session-count"]
            return ok, failed

        def enough():
            while len(got) < len(reports.messages):
                got.append(parse_report(reports.messages[len(got)]["data"]))
            return counts() == (1, 1)

        wait_for(enough, timeout, what="TLS reports with one successful and one failed session")
        return got

    def test_report_for_a_domain_with_a_policy_and_none_without_a_record(self):
        m, reports = self.start([f"v=TLSRPTv1; rua=mailto:reports@{REPORTS},https://tlsrpt.{REPORTS}/v1"])
        got = self.wait_reports(reports)
        for msg, part, r in got:
            self.assertEqual(msg["TLS-Report-Domain"], DOMAIN)
            self.assertEqual(msg["TLS-Report-Submitter"], "mx.moat.test")
            self.assertEqual(msg["From"], "tlsrpt@moat.test")
            self.assertEqual(msg["To"], f"reports@{REPORTS}")
            self.assertEqual(msg.get_content_type(), "multipart/report")
            self.assertEqual(msg.get_param("report-type"), "tlsrpt")
            self.assertEqual(str(msg["Subject"]),
                             f"Report Domain: {DOMAIN} Submitter: mx.moat.test Report-ID: <{r['report-id']}>")
            name = part.get_filename()
            self.assertTrue(name.startswith(f"mx.moat.test!{DOMAIN}!"), name)
            self.assertTrue(name.endswith(".json.gz"), name)
            start, end = (int(x) for x in name.split("!")[2:4])
            self.assertEqual(end - start, 5)
            self.assertEqual(r["organization-name"], "Moat Test Org")
            self.assertEqual(r["contact-info"], "tls-ops@moat.test")
            self.assertEqual(r["date-range"]["start-datetime"],
                             time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)))
            for p in r["policies"]:
                pol = p["policy"]
                self.assertEqual(pol["policy-type"], "sts")
                self.assertEqual(pol["policy-domain"], DOMAIN)
                self.assertIn("mode: enforce", pol["policy-string"])
                self.assertEqual(pol["mx-host"], ["*.example.test"])
        rows = [row for _, _, r in got for p in r["policies"] for row in p.get("failure-details", [])]
        self.assertEqual(len(rows), 1, rows)
        self.assertEqual(rows[0]["result-type"], "certificate-host-mismatch")
        self.assertEqual(rows[0]["receiving-mx-hostname"], BAD_MX)
        self.assertEqual(rows[0]["receiving-ip"], "127.0.0.1")
        self.assertEqual(rows[0]["failed-session-count"], 1)
        # RFC 8460 §5.3: DKIM-signed by the domain of the From address.
        dnsfunc = txt_lookup({"s1._domainkey.moat.test": self.dkim_txt})
        for x in reports.messages:
            self.assertTrue(dkim.verify(x["data"], dnsfunc=dnsfunc), x["data"][:1500])
        # Reports go out like DSNs: null sender, through the reports route.
        self.assertTrue(all(x["from"] == "" and x["rcpts"] == [f"reports@{REPORTS}"] for x in reports.messages))
        ev = m.wait_log(event="tlsrpt")
        self.assertEqual(ev["domain"], DOMAIN)
        self.assertEqual(ev["rua"], f"mailto:reports@{REPORTS}")
        self.assertIn("report_id", ev)
        skipped = m.wait_log(event="tlsrpt_skipped", domain=OTHER)
        self.assertEqual(skipped["reason"], "no TLSRPT record")
        https = m.wait_log(event="tlsrpt_skipped", domain=DOMAIN)
        self.assertEqual(https["rua"], f"https://tlsrpt.{REPORTS}/v1")
        self.assertEqual(m.find_logs(event="tlsrpt", domain=OTHER), [])
        self.assertTrue(all(msg["TLS-Report-Domain"] == DOMAIN for msg, _, _ in got))
        self.assertEqual(len(got), len(reports.messages))

    def test_the_period_under_way_outlives_a_graceful_restart(self):
        # Far enough from the end of a 30 s period that the stop comes before it.
        left = 30 - time.time() % 30
        if left < 15:
            time.sleep(left + 0.5)
        m, reports = self.start([f"v=TLSRPTv1; rua=mailto:reports@{REPORTS}"], interval="30s")
        m.stop()
        state = os.path.join(m.dir, "spool", "tlsrpt.state")
        with open(state) as f:
            saved = json.load(f)
        self.assertEqual(saved["interval"], 30000)
        self.assertEqual(sorted(d["domain"] for d in saved["domains"]), [DOMAIN, OTHER])
        self.assertEqual(m.find_logs(event="tlsrpt"), [])
        m.start()
        self.wait_reports(reports, timeout=60)  # the sessions before the restart are reported
        self.assertFalse(os.path.exists(state))
        ev = m.wait_log(event="tlsrpt", since_start=True)
        self.assertEqual((ev["successful_sessions"], ev["failed_sessions"]), (1, 1))

    def test_two_tlsrpt_records_mean_no_report(self):
        # RFC 8460 §3: exactly one v=TLSRPTv1 record, or no reporting.
        m, reports = self.start([f"v=TLSRPTv1; rua=mailto:reports@{REPORTS}",
                                 f"v=TLSRPTv1; rua=mailto:other@{REPORTS}"])
        warn = m.wait_log(event="tlsrpt_error", domain=DOMAIN, timeout=40)
        self.assertIn("exactly one", warn["reason"])
        m.wait_log(event="tlsrpt_skipped", domain=OTHER)
        self.assertEqual(m.find_logs(event="tlsrpt"), [])
        self.assertEqual(reports.messages, [])

    def test_many_domains_each_get_their_report(self):
        # More domains than Moat looks up at once at the end of a period (16): the lookups
        # go a few at a time, and every domain still gets its report.
        mx_sink = bind_or_skip(self, lambda: Sink(port=25), "127.0.0.1:25")
        self.addCleanup(mx_sink.stop)
        reports = Sink()
        self.addCleanup(reports.stop)
        domains = [f"d{i}.many.test" for i in range(40)]
        zone = {MX: [{"A": "127.0.0.1"}]}
        for d in domains:
            zone[d] = [{"MX": [10, MX]}]
            zone[f"_smtp._tls.{d}"] = [{"TXT": f"v=TLSRPTv1; rua=mailto:{d}@{REPORTS}"}]
        dns = owned_dns(self, zone)
        extra = (f'\n[dns]\nnameservers = ["{dns.nameserver}"]\ntimeout = "1s"\n'
                 '\n[tlsrpt]\nenabled = true\ninterval = "5s"\nfrom = "tlsrpt@moat.test"\n'
                 f'\n[[route]]\ndomains = ["{REPORTS}"]\nto = ["smtp:127.0.0.1:{reports.port}"]\n'
                 '\n[[route]]\nto = ["mx"]\ntls = "may"\n')
        m = owned_moat(self, routes=[], extra=extra, retry='["1h"]')
        s = m.smtp()
        s.sendmail("a@sender.test", [f"u@{d}" for d in domains], b"Subject: many\r\n\r\nbody\r\n")
        s.quit()
        mx_sink.wait_messages(len(domains))
        wait_for(lambda: len(reports.messages) >= len(domains), 60, what="a TLS report for each of 40 domains")
        time.sleep(1)  # and no more than one each
        got = sorted(x["rcpts"][0] for x in reports.messages)
        self.assertEqual(got, sorted(f"{d}@{REPORTS}" for d in domains))
        for x in reports.messages:
            msg, _, r = parse_report(x["data"])
            self.assertEqual(f"{msg['TLS-Report-Domain']}@{REPORTS}", x["rcpts"][0])
            self.assertEqual(r["policies"][0]["policy"]["policy-type"], "no-policy-found")
            self.assertEqual(r["policies"][0]["summary"]["total-successful-session-count"], 0)
            self.assertEqual(r["policies"][0]["summary"]["total-failure-session-count"], 1)


class TlsRptCheckTest(unittest.TestCase):
    """`moat check` refuses bad [tlsrpt] values with FILE:LINE."""

    def check(self, body):
        path, r = check_config(self, '[server]\nhostname = "mx.moat.test"\nspool_dir = "spool"\n\n'
                                     '[[listener]]\naddress = "127.0.0.1:2525"\n\n[tlsrpt]\nenabled = true\n' + body)
        return path, r.returncode, r.stdout + r.stderr

    def test_good_values_are_accepted(self):
        _, rc, out = self.check('interval = "1h"\nfrom = "tls@moat.test"\norganization_name = "Moat"\n')
        self.assertEqual(rc, 0, out)

    def test_bad_values_are_refused_at_their_line(self):
        for body, what in (('interval = "0s"\n', "interval"), ('interval = "8d"\n', "interval"),
                           ('interval = "soon"\n', "interval"), ('from = "no address"\n', "from")):
            path, rc, out = self.check(body)
            self.assertNotEqual(rc, 0, body)
            self.assertIn(f"{path}:10:", out)  # the key's own line
            self.assertIn(what, out)


if __name__ == "__main__":
    unittest.main()
