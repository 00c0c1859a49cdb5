"""End-to-end tests of SMTP TLS Reporting (RFC 8460, [tlsrpt]) for delivery by MX, built like
test_mta_sts.py: a loopback DNS server with the MX records, the _mta-sts and _smtp._tls TXT
records; the MTA-STS policy over HTTPS on 127.0.0.1:443 (a CA made at test time, [mta_sts]
ca_file); a STARTTLS sink on 127.0.0.1:25 whose certificate names mx.example.test only. The
domain's better MX, bad.example.test, points at the same sink: its certificate does not name
it, so under the enforce policy that session fails (certificate-host-mismatch) and the next MX
takes the mail. With [tlsrpt] interval = "5s", the report for example.test is mailed to
reports@reports.test, routed to a second sink on a port of its own; other.test, delivered to
the same MX without a TLSRPT record, gets none. The record's https: rua is served by a loopback
HTTPS server on a port of its own (a certificate from the same CA for tlsrpt.reports.test,
which the zone points at 127.0.0.1), which records each POST. Ports 25 and 443 as
test_mta_sts.py binds them (a test is skipped when either is taken, after one retry).

Run: MOAT_BIN=build/moat MOAT_SOURCE_DIR=. /usr/bin/python3 tests/integration/test_tlsrpt.py -v
"""

import email
import email.policy
import gzip
import http.server
import json
import os
import shutil
import ssl
import sys
import tempfile
import threading
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
UPLOAD_HOST = f"tlsrpt.{REPORTS}"


class _UploadHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (http.server's name)
        srv = self.server.owner
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with srv.lock:
            srv.posts.append({"path": self.path, "headers": dict(self.headers), "body": body,
                              "peer": self.client_address[0]})
        reply = b"thanks\n"
        self.send_response(srv.status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(reply)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


class UploadServer:
    """HTTPS on 127.0.0.1 (a port of its own) with `cert`: records each POST, answers `status`."""

    def __init__(self, cert, status=201):
        self.status = status
        self.posts = []
        self.lock = threading.Lock()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*cert)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _UploadHandler)
        self.server.owner = self
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def read_state(path):
    with open(path) as f:
        return json.load(f)


def counts(reports):
    """(successful, failed) sessions summed over JSON reports."""
    ok = failed = 0
    for r in reports:
        for p in r["policies"]:
            ok += p["summary"]["total-successful-session-count"]
            failed += p["summary"]["total-failure-session-count"]
    return ok, failed


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
        cls.upload_cert = make_signed_cert(cls.tmp, cls.ca, "upload", f"DNS:{UPLOAD_HOST}")
        cls.dkim_key = os.path.join(cls.tmp, "dkim.key")
        cls.dkim_txt = rsa_key(cls.dkim_key)

    def start(self, tlsrpt_txt, interval="5s", upload_status=201, checkpoint="5m", queue_extra=""):
        """`tlsrpt_txt`: the _smtp._tls records; "{upload}" in them is the upload server's URI."""
        self.upload = UploadServer(self.upload_cert, upload_status)
        self.addCleanup(self.upload.stop)
        self.upload_uri = f"https://{UPLOAD_HOST}:{self.upload.port}/v1/tlsrpt"
        tlsrpt_txt = [t.replace("{upload}", self.upload_uri) for t in tlsrpt_txt]
        mx_sink = bind_or_skip(self, lambda: Sink(port=25, tls_cert=self.mx_cert), "127.0.0.1:25")
        self.addCleanup(mx_sink.stop)
        server = bind_or_skip(self, lambda: PolicyServer(self.policy_cert, policy("enforce", mx=("*.example.test",))),
                              "127.0.0.1:443")
        self.addCleanup(server.stop)
        self.policy_server = server
        reports = Sink()
        self.addCleanup(reports.stop)
        zone = {
            DOMAIN: [{"MX": [5, BAD_MX]}, {"MX": [10, MX]}],
            OTHER: [{"MX": [10, MX]}],
            MX: [{"A": "127.0.0.1"}],
            BAD_MX: [{"A": "127.0.0.1"}],
            POLICY_HOST: [{"A": "127.0.0.1"}],
            UPLOAD_HOST: [{"A": "127.0.0.1"}],
            f"_mta-sts.{DOMAIN}": [{"TXT": "v=STSv1; id=20261124"}],
        }
        if tlsrpt_txt:
            zone[f"_smtp._tls.{DOMAIN}"] = [{"TXT": t} for t in tlsrpt_txt]
        dns = owned_dns(self, zone)
        extra = (f'\n[dns]\nnameservers = ["{dns.nameserver}"]\ntimeout = "1s"\n'
                 f'\n[mta_sts]\nca_file = "{self.ca[0]}"\nfetch_timeout = "5s"\n'
                 f'\n[tlsrpt]\nenabled = true\ninterval = "{interval}"\ncheckpoint_interval = "{checkpoint}"\n'
                 'organization_name = "Moat Test Org"\nhttps_timeout = "5s"\n'
                 'contact_info = "tls-ops@moat.test"\nfrom = "tlsrpt@moat.test"\n'
                 f'\n[[dkim.sign]]\ndomain = "moat.test"\nselector = "s1"\nkey_file = "{self.dkim_key}"\n'
                 f'\n[[route]]\ndomains = ["{REPORTS}"]\nto = ["smtp:127.0.0.1:{reports.port}"]\n'
                 f'\n[[route]]\ndomains = ["{DOMAIN}"]\nto = ["mx"]\ntls = "may"\nmta_sts = true\n'
                 f'\n[[route]]\ndomains = ["{OTHER}"]\nto = ["mx"]\ntls = "may"\n')
        m = owned_moat(self, routes=[], extra=extra, retry='["1h"]', queue_extra=queue_extra)
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

        def enough():
            while len(got) < len(reports.messages):
                got.append(parse_report(reports.messages[len(got)]["data"]))
            return counts(r for _, _, r in got) == (1, 1)

        wait_for(enough, timeout, what="TLS reports with one successful and one failed session")
        return got

    def wait_uploads(self, timeout=40):
        """The JSON reports POSTed to the upload server once they count one successful and one
        failed session."""
        def enough():
            with self.upload.lock:
                posts = list(self.upload.posts)
            return counts(json.loads(gzip.decompress(p["body"])) for p in posts) == (1, 1)

        wait_for(enough, timeout, what="uploaded TLS reports with one successful and one failed session")
        with self.upload.lock:
            return list(self.upload.posts)

    def test_report_for_a_domain_with_a_policy_and_none_without_a_record(self):
        m, reports = self.start([f"v=TLSRPTv1; rua=mailto:reports@{REPORTS},{{upload}}"])
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
        # RFC 8460 §4.4: the local address of Moat's connection, the name the MX gave in EHLO.
        self.assertEqual(rows[0]["sending-mta-ip"], "127.0.0.1")
        self.assertEqual(rows[0]["receiving-mx-helo"], "sink.test")
        # RFC 8460 §5.3: DKIM-signed by the domain of the From address.
        dnsfunc = txt_lookup({"s1._domainkey.moat.test": self.dkim_txt})
        for x in reports.messages:
            self.assertTrue(dkim.verify(x["data"], dnsfunc=dnsfunc), x["data"][:1500])
        # Reports go out like DSNs: null sender, through the reports route.
        self.assertTrue(all(x["from"] == "" and x["rcpts"] == [f"reports@{REPORTS}"] for x in reports.messages))
        ev = m.wait_log(event="tlsrpt", rua=f"mailto:reports@{REPORTS}")
        self.assertEqual(ev["domain"], DOMAIN)
        self.assertEqual(ev["to"], f"reports@{REPORTS}")
        self.assertIn("report_id", ev)
        skipped = m.wait_log(event="tlsrpt_skipped", domain=OTHER)
        self.assertEqual(skipped["reason"], "no TLSRPT record")
        # RFC 8460 §5.2: the same report POSTed to the https: rua, gzipped JSON.
        posts = self.wait_uploads()
        for p in posts:
            self.assertEqual(p["path"], "/v1/tlsrpt")
            self.assertEqual(p["headers"]["Content-Type"], "application/tlsrpt+gzip")
            self.assertEqual(p["headers"]["Host"], f"{UPLOAD_HOST}:{self.upload.port}")
            r = json.loads(gzip.decompress(p["body"]))
            self.assertEqual(r["organization-name"], "Moat Test Org")
            self.assertEqual({x["policy"]["policy-domain"] for x in r["policies"]}, {DOMAIN})
        uploaded = [row for p in posts for x in json.loads(gzip.decompress(p["body"]))["policies"]
                    for row in x.get("failure-details", [])]
        self.assertEqual([(x["result-type"], x["sending-mta-ip"], x["receiving-mx-helo"]) for x in uploaded],
                         [("certificate-host-mismatch", "127.0.0.1", "sink.test")])
        up = m.wait_log(event="tlsrpt", rua=self.upload_uri)
        self.assertEqual((up["domain"], up["http_status"], up["attempt"]), (DOMAIN, 201, 1))
        self.assertEqual(m.find_logs(event="tlsrpt_skipped", domain=DOMAIN), [])
        self.assertEqual(m.find_logs(event="tlsrpt_error"), [])
        self.assertEqual(m.find_logs(event="tlsrpt", domain=OTHER), [])
        self.assertTrue(all(msg["TLS-Report-Domain"] == DOMAIN for msg, _, _ in got))
        self.assertEqual(len(got), len(reports.messages))

    def test_https_requests_leave_from_the_queue_source_address(self):
        # [queue] source_ipv4 binds the policy fetch and the report upload as it binds delivery.
        self.start(["v=TLSRPTv1; rua={upload}"], queue_extra='source_ipv4 = "127.0.0.2"')
        posts = self.wait_uploads()
        self.assertEqual({p["peer"] for p in posts}, {"127.0.0.2"})
        with self.policy_server.lock:
            peers = list(self.policy_server.peers)
        self.assertTrue(peers)
        self.assertEqual(set(peers), {"127.0.0.2"})
        rows = [row for p in posts for x in json.loads(gzip.decompress(p["body"]))["policies"]
                for row in x.get("failure-details", [])]
        self.assertEqual([x["sending-mta-ip"] for x in rows], ["127.0.0.2"])

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
        wait_for(lambda: read_state(state)["domains"] == [], 10, what="the reported period out of the checkpoint")
        ev = m.wait_log(event="tlsrpt", since_start=True)
        self.assertEqual((ev["successful_sessions"], ev["failed_sessions"]), (1, 1))

    def test_an_upload_answered_500_is_a_logged_failure(self):
        m, reports = self.start(["v=TLSRPTv1; rua={upload}"], upload_status=500)
        err = m.wait_log(event="tlsrpt_error", rua=self.upload_uri, timeout=40)
        self.assertEqual(err["domain"], DOMAIN)
        self.assertEqual(err["attempt"], 1)
        self.assertEqual(err["reason"], "report upload failed: HTTP status 500 (tried again in 1m)")
        self.assertTrue(self.upload.posts)
        self.assertEqual(m.find_logs(event="tlsrpt", rua=self.upload_uri), [])
        self.assertEqual(reports.messages, [])

    def test_a_checkpoint_outlives_kill_9_and_a_period_is_reported_once(self):
        # Far enough from the end of a 30 s period that the kill comes before it.
        left = 30 - time.time() % 30
        if left < 20:
            time.sleep(left + 0.5)
        m, reports = self.start([f"v=TLSRPTv1; rua=mailto:reports@{REPORTS}"], interval="30s", checkpoint="1s")
        state = os.path.join(m.dir, "spool", "tlsrpt.state")

        def checkpointed():
            try:
                saved = read_state(state)
            except (OSError, ValueError):
                return False
            got = {d["domain"]: d for d in saved["domains"]}
            return DOMAIN in got and OTHER in got and sum(
                p["successes"] + p["failures"] for p in got[DOMAIN]["policies"]) == 2

        wait_for(checkpointed, 10, what="a checkpoint with both domains' sessions")
        m.kill9()
        self.assertEqual(m.find_logs(event="tlsrpt"), [])
        m.start()
        self.wait_reports(reports, timeout=60)  # the sessions before the crash are reported
        ev = m.wait_log(event="tlsrpt", since_start=True)
        self.assertEqual((ev["successful_sessions"], ev["failed_sessions"]), (1, 1))
        # The checkpoint no longer holds the reported period: another crash and restart do
        # not report it again.
        self.assertEqual(read_state(state)["domains"], [])
        sent = len(reports.messages)
        m.wait_settled(reports.messages[:sent], since_start=True)
        m.kill9()
        m.start()
        time.sleep(3)
        self.assertEqual(len(reports.messages), sent)
        self.assertEqual(m.find_logs(event="tlsrpt", since_start=True), [])

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
        _, rc, out = self.check('interval = "1h"\nfrom = "tls@moat.test"\norganization_name = "Moat"\n'
                                'checkpoint_interval = "1s"\nhttps_timeout = "10m"\n')
        self.assertEqual(rc, 0, out)

    def test_bad_values_are_refused_at_their_line(self):
        for body, what in (('interval = "0s"\n', "interval"), ('interval = "8d"\n', "interval"),
                           ('interval = "soon"\n', "interval"), ('from = "no address"\n', "from"),
                           ('checkpoint_interval = "0s"\n', "checkpoint_interval"),
                           ('checkpoint_interval = "2h"\n', "checkpoint_interval"),
                           ('https_timeout = "0s"\n', "https_timeout"), ('https_timeout = "11m"\n', "https_timeout")):
            path, rc, out = self.check(body)
            self.assertNotEqual(rc, 0, body)
            self.assertIn(f"{path}:10:", out)  # the key's own line
            self.assertIn(what, out)


if __name__ == "__main__":
    unittest.main()
