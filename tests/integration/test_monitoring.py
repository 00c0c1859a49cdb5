"""The monitoring examples in deploy/monitoring/ against the real thing: the Prometheus rules
pass `promtool check rules` and their own `promtool test rules` cases, the daemon's /metrics
passes `promtool check metrics`, and the fail2ban filters, run by `fail2ban-regex` over the
log of a daemon that just saw failed AUTH and unknown recipients, match exactly those lines
and the client's address. Loopback only; Debian's prometheus and fail2ban packages."""

import os
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from harness import SOURCE_DIR, Moat, Sink, client_tls, free_port, http_get, scrape  # noqa: E402
from test_submission import auth_plain, set_up_tls_auth_daemon, write_users  # noqa: E402

MONITORING = os.path.join(SOURCE_DIR, "deploy", "monitoring")


def run(*args):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120)


def rejects(stage, cls):
    return f'moat_rejects_total{{stage="{stage}",class="{cls}"}}'


class PrometheusRulesTest(unittest.TestCase):
    def test_rules_are_valid_and_their_cases_pass(self):
        d = os.path.join(MONITORING, "prometheus")
        r = run("promtool", "check", "rules", os.path.join(d, "moat-alerts.yml"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS: 14 rules found", r.stdout)
        r = subprocess.run(["promtool", "test", "rules", "moat-alerts.test.yml"], cwd=d, capture_output=True,
                           text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS", r.stdout)


class LiveDaemonTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.metrics_port = free_port()
        set_up_tls_auth_daemon(cls, "moat-mon-", server_extra=f'metrics_listen = "127.0.0.1:{cls.metrics_port}"',
                               relay_extra='recipients = "recipients"')
        write_users(os.path.join(cls.moat.dir, "users"), {"alice": "correct horse"})
        with open(os.path.join(cls.moat.dir, "recipients"), "w") as f:
            f.write("user@example.test\n")
        cls.moat.start()
        # What the filters are for: two wrong passwords, then the right one; two addresses
        # that do not exist, one that does, and a relay refusal that is no harvest.
        s = cls.moat.smtp()
        s.starttls(context=client_tls())
        s.ehlo()
        assert auth_plain(s, "alice", "guess one")[0] == 535
        assert auth_plain(s, "mallory", "guess two")[0] == 535
        assert auth_plain(s, "alice", "correct horse")[0] == 235
        s.quit()
        s = cls.moat.smtp(source_address=("127.0.0.2", 0))
        s.ehlo()
        s.mail("a@sender.test")
        assert s.rcpt("ghost@example.test")[0] == 550
        assert s.rcpt("phantom@example.test")[0] == 550
        assert s.rcpt("user@example.test")[0] == 250
        s.quit()
        cls.moat.wait_log(event="auth", result="pass")
        cls.moat.wait_log(event="reject", to="phantom@example.test")

    def fail2ban(self, name):
        """fail2ban-regex with filter `name` over the daemon's log: (matched lines, hosts)."""
        r = run("fail2ban-regex", "--print-all-matched", "-v", self.moat.log_path,
                os.path.join(MONITORING, "fail2ban", "filter.d", name + ".conf"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        m = re.search(r"^Lines: \d+ lines, \d+ ignored, (\d+) matched", r.stdout, re.M)
        self.assertIsNotNone(m, r.stdout)
        hosts = set(re.findall(r"^\|\s+(\d+\.\d+\.\d+\.\d+)\s", r.stdout, re.M))
        return int(m.group(1)), hosts, r.stdout

    def test_fail2ban_auth_filter_matches_each_failed_attempt(self):
        matched, hosts, out = self.fail2ban("moat-auth")
        self.assertEqual(matched, 2, out)
        self.assertEqual(hosts, {"127.0.0.1"}, out)

    def test_fail2ban_rcpt_filter_matches_each_unknown_recipient(self):
        matched, hosts, out = self.fail2ban("moat-rcpt")
        self.assertEqual(matched, 2, out)
        self.assertEqual(hosts, {"127.0.0.2"}, out)

    def test_metrics_pass_promtool(self):
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read()
        r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, (r.stdout + r.stderr).decode())
        self.assertIn(b'moat_auth_total{result="fail"} 2', body)


class CertificateExpiryTest(unittest.TestCase):
    def test_expiry_of_the_certificate_served_is_a_metric_and_a_check_warning(self):
        """A listener's certificate (made here, valid for 2 days) gives
        moat_tls_certificate_expiry_timestamp_seconds its notAfter, and `moat check` warns that
        it expires within 14 days, naming the listener's line; the config still loads."""
        metrics_port = free_port()
        set_up_tls_auth_daemon(self, "moat-cert-", server_extra=f'metrics_listen = "127.0.0.1:{metrics_port}"')
        cert = self.cert[0]
        r = run("openssl", "x509", "-enddate", "-noout", "-in", cert)
        not_after = int(ssl.cert_time_to_seconds(r.stdout.strip().split("=", 1)[1]))
        write_users(os.path.join(self.moat.dir, "users"), {"alice": "correct horse"})
        self.moat.start()
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        self.assertIn(f'moat_tls_certificate_expiry_timestamp_seconds{{listener="127.0.0.1:0"}} {not_after}\n', body)
        r = self.moat.cli("check", check=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with open(self.moat.config_path) as f:
            line = f.read().split("\n").index('address = "127.0.0.1:0"') + 1
        date = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(not_after))
        # "in 1 day" or "in 2 days": whole days left, as the clock reads when moat check runs.
        self.assertRegex(r.stdout + r.stderr, re.escape(
            f"{self.moat.config_path}:{line}: warning: [[listener]] 127.0.0.1:0: the certificate in {cert} "
            f"expires on {date} (in ") + r"(1 day|2 days)\): renew it and reload \(SIGHUP\)")


class MetricsListenerLimitsTest(unittest.TestCase):
    def test_idle_clients_are_capped_and_closed(self):
        # Clients that connect and never finish a request must not hold file descriptors
        # or memory: at most 32 at once (more are closed at accept), each closed 10 s after
        # it was accepted. SMTP goes on meanwhile.
        sink = Sink()
        self.addCleanup(sink.stop)
        port = free_port()
        m = Moat(routes=[(None, f"smtp:127.0.0.1:{sink.port}")], server_extra=f'metrics_listen = "127.0.0.1:{port}"')
        self.addCleanup(m.cleanup)
        fds = lambda: len(os.listdir(f"/proc/{m.proc.pid}/fd"))  # noqa: E731
        baseline = fds()
        idle = []
        self.addCleanup(lambda: [c.close() for c in idle])
        for _ in range(60):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.sendall(b"G")
            idle.append(c)
        time.sleep(0.5)
        self.assertLessEqual(fds(), baseline + 32 + 2)
        with m.smtp() as s:
            self.assertEqual(s.sendmail("a@sender.test", ["u@example.test"], b"Subject: on\r\n\r\nx\r\n"), {})
        sink.wait_messages(1)
        for c in idle:  # every one is closed by the daemon, the last about 10 s after accept
            c.settimeout(15)
            try:
                self.assertEqual(c.recv(100), b"")
            except ConnectionResetError:
                pass
        self.assertEqual(http_get(port, "/healthz")[0], 200)


class RefusalMetricsTest(unittest.TestCase):
    """Every refusal a client is sent is one `reject` line and one count in
    moat_rejects_total{stage,class}; whole transactions refused at MAIL or DATA also count in
    moat_messages_rejected_total / moat_messages_tempfailed_total."""

    def start(self, **kw):
        port = free_port()
        m = Moat(server_extra=f'metrics_listen = "127.0.0.1:{port}"', start=False, **kw)
        self.addCleanup(m.cleanup)
        return m, port

    def test_refusals_at_every_stage_are_counted(self):
        m, port = self.start(networks=["10.255.255.0/24"],  # loopback may not relay here
                             relay_extra='recipients = "recipients"',
                             extra='\n[senders]\nblock = "blocked"\n\n[connection]\nblock = ["127.0.0.3/32"]\n')
        with open(os.path.join(m.dir, "recipients"), "w") as f:
            f.write("user@example.test\n")
        with open(os.path.join(m.dir, "blocked"), "w") as f:
            f.write("spam@bad.test\n")
        m.start()
        s = smtplib.SMTP(timeout=15, source_address=("127.0.0.3", 0))  # connection.block: 554
        self.assertEqual(s.connect("127.0.0.1", m.port)[0], 554)
        s.close()
        s = m.smtp()
        s.ehlo("client.test")
        self.assertEqual(s.mail("spam@bad.test")[0], 554)  # blocked sender
        self.assertEqual(s.mail("a@sender.test")[0], 250)
        self.assertEqual(s.rcpt("someone@elsewhere.test")[0], 554)  # relay denied
        self.assertEqual(s.rcpt("ghost@example.test")[0], 550)  # unknown recipient
        self.assertEqual(s.rcpt("user@example.test")[0], 250)
        s.quit()
        m.wait_log(event="reject", to="ghost@example.test")
        got = scrape(port)
        self.assertEqual(got[rejects("connect", "5xx")], 1, got)
        self.assertEqual(got[rejects("mail", "5xx")], 1, got)
        self.assertEqual(got[rejects("rcpt", "5xx")], 2, got)
        self.assertEqual(got[rejects("data", "5xx")], 0, got)
        self.assertEqual(got["moat_messages_rejected_total"], 1, got)  # the blocked sender's
        self.assertEqual(got["moat_messages_tempfailed_total"], 0, got)
        self.assertEqual(got["moat_sessions_refused_total"], 1, got)
        counted = sum(v for k, v in got.items() if k.startswith("moat_rejects_total{"))
        self.assertEqual(counted, len(m.find_logs(event="reject")))

    def test_low_disk_is_counted_shown_and_unhealthy(self):
        m, port = self.start(min_free_disk="1000000G")  # more than any disk here has
        m.start()
        status, body = http_get(port, "/healthz")
        self.assertEqual(status, 503, body)
        self.assertIn("min_free_disk", body)
        s = m.smtp()
        s.ehlo("client.test")
        code, text = s.mail("a@sender.test")
        self.assertEqual(code, 452)
        self.assertTrue(text.startswith(b"4.3.1"), text)
        s.quit()
        m.wait_log(event="reject", reason="low disk space")
        got = scrape(port)
        self.assertEqual(got[rejects("mail", "4xx")], 1, got)
        self.assertEqual(got["moat_messages_tempfailed_total"], 1, got)
        self.assertEqual(got["moat_spool_min_free_bytes"], 1000000 * 2**30, got)
        self.assertGreater(got["moat_spool_free_bytes"], 0, got)
        self.assertLess(got["moat_spool_free_bytes"], got["moat_spool_min_free_bytes"], got)
        st = os.statvfs(os.path.join(m.dir, "spool"))
        self.assertLess(abs(got["moat_spool_free_bytes"] - st.f_bavail * st.f_frsize), 2**30, got)


if __name__ == "__main__":
    unittest.main()
