"""End-to-end tests of MTA-STS (RFC 8461) for delivery by MX ([[route]] mta_sts = true): a
loopback DNS server with the _mta-sts TXT record, the MX and the policy host; an HTTPS
server on 127.0.0.1:443 serving the policy with a certificate for mta-sts.DOMAIN from a
CA made at test time ([mta_sts] ca_file); a STARTTLS sink on 127.0.0.1:25 (MX delivery
always uses port 25). Both ports are bound by these tests: a test is skipped when either is
taken (after one retry), as other tests may hold port 25 for a moment.

Run: MOAT_BIN=build/moat MOAT_SOURCE_DIR=. /usr/bin/python3 tests/integration/test_mta_sts.py -v
"""

import http.server
import os
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from authzone import owned_dns  # noqa: E402
from harness import Sink, check_config, make_ca, make_cert, make_signed_cert, owned_moat, wait_for  # noqa: E402

DOMAIN = "example.test"
MX = "mx.example.test"
POLICY_HOST = f"mta-sts.{DOMAIN}"


def policy(mode, mx=(MX,), max_age=86400):
    lines = ["version: STSv1", f"mode: {mode}"] + [f"mx: {m}" for m in mx] + [f"max_age: {max_age}"]
    return "\r\n".join(lines) + "\r\n"


class _PolicyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked replies need it

    def do_GET(self):  # noqa: N802 (http.server's name)
        srv = self.server.owner
        with srv.lock:
            srv.requests.append((self.path, self.headers.get("Host")))
            srv.peers.append(self.client_address[0])
        body = srv.body.encode()
        if self.path != "/.well-known/mta-sts.txt":
            self.send_response(404)
            body = b"not found\n"
        else:
            self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if srv.chunked:  # RFC 9112 §7.1: the body in chunks of 7 octets, with an extension
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 7):
                part = body[i:i + 7]
                self.wfile.write(b"%x;n=%d\r\n%s\r\n" % (len(part), i, part))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class SilentServer:
    """Takes TCP connections on 127.0.0.1:443 and never answers: a policy fetch that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 443))
        self.sock.listen(8)
        self.accepted = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def stop(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(10)
        for c in self.accepted:
            c.close()


class PolicyServer:
    """HTTPS on 127.0.0.1:443 with `cert`, serving `body` at /.well-known/mta-sts.txt."""

    def __init__(self, cert, body, chunked=False):
        self.body = body
        self.chunked = chunked
        self.requests = []
        self.peers = []  # the client address of each request
        self.lock = threading.Lock()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*cert)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 443), _PolicyHandler)
        self.server.owner = self
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def bind_or_skip(test, make, what):
    """make() binds a privileged loopback port; one retry (another test may be about to let
    it go), then the test is skipped."""
    for attempt in range(2):
        try:
            return make()
        except OSError as e:
            if attempt == 1:
                test.skipTest(f"cannot listen on {what}: {e}")
            time.sleep(1)


class MtaStsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="moat-mta-sts-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.ca = make_ca(cls.tmp, cn="Moat MTA-STS test CA")
        cls.policy_cert = make_signed_cert(cls.tmp, cls.ca, "policy", f"DNS:{POLICY_HOST}")
        cls.mx_cert = make_signed_cert(cls.tmp, cls.ca, "mx", f"DNS:{MX}")
        cls.other_cert = make_signed_cert(cls.tmp, cls.ca, "other", "DNS:other.example.test")

    def run_case(self, body, mx_cert, txt="v=STSv1; id=20261123", https=True, tls="may", zone_extra=None,
                 secure=False, chunked=False, policy_host=({"A": "127.0.0.1"},), fetch_timeout="5s",
                 make_server=None, refresh_interval=None):
        """The zone, the policy server (unless not `https`; `make_server` makes another),
        a sink on 127.0.0.1:25 with `mx_cert` (None: no STARTTLS), a daemon with an mx route
        and mta_sts = true; one message sent. Returns (moat, sink, policy_server)."""
        sink = bind_or_skip(self, lambda: Sink(port=25, tls_cert=mx_cert), "127.0.0.1:25")
        self.addCleanup(sink.stop)
        server = None
        if https:
            make = make_server or (lambda: PolicyServer(self.policy_cert, body, chunked=chunked))
            server = bind_or_skip(self, make, "127.0.0.1:443")
            self.addCleanup(server.stop)
        zone = {DOMAIN: [{"MX": [10, MX]}], MX: [{"A": "127.0.0.1"}], POLICY_HOST: list(policy_host)}
        if secure:  # DNSSEC-authenticated MX and address records (the AD bit), for DANE
            zone[DOMAIN].insert(0, {"SECURE": True})
            zone[MX].insert(0, {"SECURE": True})
        zone.update(zone_extra or {})
        if txt:
            zone[f"_mta-sts.{DOMAIN}"] = [{"TXT": txt}]
        dns = owned_dns(self, zone)
        ca_file = self.ca[0]
        extra = (f'\n[dns]\nnameservers = ["{dns.nameserver}"]\ntimeout = "1s"\n'
                 f'\n[mta_sts]\nca_file = "{ca_file}"\nfetch_timeout = "{fetch_timeout}"\n'
                 + (f'refresh_interval = "{refresh_interval}"\n' if refresh_interval else '') +
                 f'\n[[route]]\ndomains = ["{DOMAIN}"]\nto = ["mx"]\ntls = "{tls}"\nmta_sts = true\n')
        m = owned_moat(self, routes=[], extra=extra, retry='["1h"]')
        s = m.smtp()
        s.sendmail("a@sender.test", [f"u@{DOMAIN}"], b"Subject: mta-sts\r\n\r\nbody\r\n")
        s.quit()
        return m, sink, server

    def test_enforce_with_a_valid_certificate_is_delivered_and_logged(self):
        m, sink, server = self.run_case(policy("enforce"), self.mx_cert)
        msgs = sink.wait_messages(1)
        self.assertTrue(msgs[0]["tls"])
        ev = m.wait_log(event="deliver")
        self.assertTrue(ev["tls"].endswith(" mta-sts"), ev["tls"])
        self.assertEqual(ev["relay"], f"{MX}[127.0.0.1]:25")
        self.assertEqual(server.requests, [("/.well-known/mta-sts.txt", POLICY_HOST)])

    def test_enforce_with_a_certificate_for_another_name_is_deferred(self):
        m, sink, _ = self.run_case(policy("enforce"), self.other_cert)
        ev = m.wait_log(event="defer")
        self.assertIn("4.7.5", ev["reply"])
        self.assertIn("MTA-STS", ev["reply"])
        self.assertEqual(sink.messages, [])

    def test_enforce_without_starttls_is_deferred_not_sent_in_plain_text(self):
        m, sink, _ = self.run_case(policy("enforce"), None)
        ev = m.wait_log(event="defer")
        self.assertIn("4.7.5", ev["reply"])
        self.assertIn("STARTTLS", ev["reply"])
        self.assertEqual(sink.messages, [])

    def test_testing_with_the_same_failure_delivers_and_warns(self):
        m, sink, _ = self.run_case(policy("testing"), self.other_cert)
        msgs = sink.wait_messages(1)
        self.assertTrue(msgs[0]["tls"])  # as "may" would: TLS, unauthenticated
        warn = m.wait_log(event="mta_sts", host=MX)
        self.assertEqual(warn["domain"], DOMAIN)
        self.assertEqual(warn["mode"], "testing")
        self.assertIn("certificate", warn["reason"])
        ev = m.wait_log(event="deliver")
        self.assertFalse(ev["tls"].endswith(" mta-sts"), ev["tls"])

    def test_enforce_leaves_out_mx_hosts_the_policy_does_not_name(self):
        m, sink, _ = self.run_case(policy("enforce", mx=("*.elsewhere.test",)), self.mx_cert)
        ev = m.wait_log(event="defer")
        self.assertIn("4.7.5", ev["reply"])
        self.assertIn("MTA-STS", ev["reply"])
        self.assertEqual(sink.connections, 0)  # never tried
        self.assertEqual(sink.messages, [])

    def test_wildcard_mx_pattern_names_the_host(self):
        m, sink, _ = self.run_case(policy("enforce", mx=("*.example.test",)), self.mx_cert)
        sink.wait_messages(1)
        ev = m.wait_log(event="deliver")
        self.assertTrue(ev["tls"].endswith(" mta-sts"), ev["tls"])

    def test_without_a_txt_record_delivery_is_as_before(self):
        m, sink, server = self.run_case(policy("enforce"), self.other_cert, txt=None)
        sink.wait_messages(1)
        ev = m.wait_log(event="deliver")
        self.assertFalse(ev["tls"].endswith(" mta-sts"), ev["tls"])
        self.assertEqual(server.requests, [])  # no record: no fetch

    def test_a_failed_fetch_with_nothing_cached_delivers_as_before(self):
        m, sink, _ = self.run_case(policy("enforce"), self.other_cert, https=False)
        sink.wait_messages(1)
        warn = m.wait_log(event="mta_sts")
        self.assertEqual(warn["domain"], DOMAIN)
        self.assertIn("policy fetch failed", warn["reason"])
        ev = m.wait_log(event="deliver")
        self.assertFalse(ev["tls"].endswith(" mta-sts"), ev["tls"])

    def test_a_host_with_dane_records_is_danes_not_mta_stss(self):
        # RFC 8461 §2: where the MX host has DNSSEC-signed TLSA records, DANE decides: the
        # enforce policy does not name the host, yet DANE authenticates it and it is used.
        from test_dane import spki_sha256
        d = os.path.join(self.tmp, "dane")
        os.makedirs(d, exist_ok=True)
        cert = make_cert(d, cn=MX)
        tlsa = {f"_25._tcp.{MX}": [{"SECURE": True}, {"TLSA": [3, 1, 1, spki_sha256(cert[0])]}]}
        m, sink, _ = self.run_case(policy("enforce", mx=("*.elsewhere.test",)), cert, tls="dane",
                                   zone_extra=tlsa, secure=True)
        sink.wait_messages(1)
        ev = m.wait_log(event="deliver")
        self.assertTrue(ev["tls"].endswith(" dane"), ev["tls"])

    def test_a_cached_policy_outlives_a_restart_when_the_fetch_is_blocked(self):
        # RFC 8461 §5.1: after a restart, an attacker who stops the policy fetch must not
        # downgrade a domain whose policy is still valid: it comes from spool/mta-sts.cache.
        m, sink, server = self.run_case(policy("enforce"), self.mx_cert)
        sink.wait_messages(1)
        m.wait_log(event="deliver")
        m.stop()  # a write of the cache file under way finishes before Moat exits
        server.stop()  # the policy host is unreachable from now on (its cleanup stops it again)
        m.start()
        s = m.smtp()
        s.sendmail("a@sender.test", [f"v@{DOMAIN}"], b"Subject: after restart\r\n\r\nbody\r\n")
        s.quit()
        sink.wait_messages(2)
        ev = m.wait_log(event="deliver", since_start=True)
        self.assertTrue(ev["tls"].endswith(" mta-sts"), ev["tls"])  # enforce, from the cache
        self.assertEqual(m.find_logs(since_start=True, event="mta_sts"), [])  # nothing fetched
        self.assertEqual(len(server.requests), 1)
        with open(os.path.join(m.dir, "spool", "mta-sts.cache")) as f:
            self.assertIn(f"\n{DOMAIN} ", f.read())

    def test_a_broken_cache_file_is_logged_and_ignored(self):
        m, sink, server = self.run_case(policy("enforce"), self.mx_cert)
        sink.wait_messages(1)
        m.wait_log(event="deliver")
        m.stop()
        cache = os.path.join(m.dir, "spool", "mta-sts.cache")
        with open(cache, "wb") as f:
            f.write(b"\x00garbage\n")
        m.start()
        warn = m.wait_log(event="mta_sts", since_start=True)
        self.assertIn("cache file ignored", warn["reason"])
        self.assertEqual(warn["file"], cache)
        s = m.smtp()
        s.sendmail("a@sender.test", [f"v@{DOMAIN}"], b"Subject: again\r\n\r\nbody\r\n")
        s.quit()
        sink.wait_messages(2)
        ev = m.wait_log(event="deliver", since_start=True)
        self.assertTrue(ev["tls"].endswith(" mta-sts"), ev["tls"])
        self.assertEqual(len(server.requests), 2)  # fetched anew

    def test_a_chunked_policy_reply_is_decoded(self):
        m, sink, server = self.run_case(policy("enforce"), self.mx_cert, chunked=True)
        sink.wait_messages(1)
        ev = m.wait_log(event="deliver")
        self.assertTrue(ev["tls"].endswith(" mta-sts"), ev["tls"])
        self.assertEqual(m.find_logs(event="mta_sts"), [])
        self.assertEqual(len(server.requests), 1)

    def test_every_address_of_the_policy_host_is_tried(self):
        # [::1] first (IPv6 before IPv4), where nothing listens on 443; then 127.0.0.1.
        m, sink, server = self.run_case(policy("enforce"), self.mx_cert,
                                        policy_host=({"AAAA": "::1"}, {"A": "127.0.0.1"}))
        sink.wait_messages(1)
        ev = m.wait_log(event="deliver")
        self.assertTrue(ev["tls"].endswith(" mta-sts"), ev["tls"])
        self.assertEqual(m.find_logs(event="mta_sts"), [])
        self.assertEqual(len(server.requests), 1)

    def test_a_hanging_fetch_does_not_hold_the_stop(self):
        # fetch_timeout 60s, a policy host that takes the connection and never answers: SIGTERM
        # cancels the fetch, its delivery is deferred, and Moat stops at once, the mail kept.
        m, sink, server = self.run_case(policy("enforce"), self.mx_cert, fetch_timeout="60s",
                                        make_server=SilentServer)
        wait_for(lambda: server.accepted, 15, what="the policy fetch to connect")
        m.stop(timeout=10)  # the drain grace is 20 s: only a cancelled fetch stops sooner
        ev = m.wait_log(event="defer")
        self.assertIn("4.3.2", ev["reply"])
        self.assertIn("MTA-STS", ev["reply"])
        warn = m.wait_log(event="mta_sts")
        self.assertIn("cancelled", warn["reason"])
        self.assertEqual(len(os.listdir(os.path.join(m.dir, "spool", "queue"))), 1)  # not lost
        self.assertEqual(sink.messages, [])

    def test_the_sweep_refreshes_a_policy_without_mail_and_drops_it_once_expired(self):
        # RFC 8461 §5.1, §10.2: a domain mailed seldom still has a fresh policy when mail comes.
        # max_age 8 s: under a quarter of it (2 s) is left 6 s after each fetch; the sweep
        # looks every second.
        m, sink, server = self.run_case(policy("enforce", max_age=8), self.mx_cert, refresh_interval="1s")
        sink.wait_messages(1)
        m.wait_log(event="deliver")
        wait_for(lambda: len(server.requests) >= 3, 30, what="two refreshes with no mail")
        self.assertEqual(server.requests[1:3], [("/.well-known/mta-sts.txt", POLICY_HOST)] * 2)
        self.assertEqual(m.find_logs(event="mta_sts"), [])
        self.assertEqual(len(m.find_logs(event="deliver")), 1)  # no delivery asked for them
        # The policy host is gone: the next refresh fails (the policy stays in force until it
        # expires), and then the expired policy leaves the cache, and its file.
        server.stop()
        warn = m.wait_log(event="mta_sts", timeout=20)
        self.assertIn("policy refresh failed", warn["reason"])
        self.assertEqual(warn["domain"], DOMAIN)
        self.assertTrue(warn["cached"].startswith("enforce id="), warn)
        cache = os.path.join(m.dir, "spool", "mta-sts.cache")

        def dropped():
            with open(cache) as f:
                text = f.read()
            return text.endswith("\nend 0\n") and f"\n{DOMAIN} " not in text

        wait_for(dropped, 20, what="the expired policy to leave the cache file")

    def test_a_malformed_policy_is_a_failed_fetch(self):
        m, sink, _ = self.run_case("version: STSv1\r\nmode: enforce\r\n", self.other_cert)
        sink.wait_messages(1)
        warn = m.wait_log(event="mta_sts")
        self.assertIn("policy fetch failed", warn["reason"])


class MtaStsCheckTest(unittest.TestCase):
    """`moat check` refuses mta_sts where it cannot apply, with FILE:LINE."""

    def check(self, body):
        path, r = check_config(self, '[server]\nhostname = "mx.moat.test"\nspool_dir = "spool"\n\n'
                                     '[[listener]]\naddress = "127.0.0.1:2525"\n\n' + body)
        return path, r.returncode, r.stdout + r.stderr

    def test_mta_sts_on_an_mx_route_with_may_or_dane_is_accepted(self):
        for tls in ("may", "dane"):
            _, rc, out = self.check(f'[[route]]\nto = ["mx"]\ntls = "{tls}"\nmta_sts = true\n\n'
                                    '[mta_sts]\nfetch_timeout = "5s"\n')
            self.assertEqual(rc, 0, out)

    def test_mta_sts_on_an_smtp_route_is_refused(self):
        path, rc, out = self.check('[[route]]\nto = ["smtp:192.0.2.1:25"]\nmta_sts = true\n')
        self.assertNotEqual(rc, 0)
        self.assertIn(f"{path}:10:", out)  # the mta_sts line
        self.assertIn("mta_sts needs an mx route", out)

    def test_a_refresh_interval_out_of_range_is_refused_at_its_line(self):
        for value in ("0s", "2d"):
            path, rc, out = self.check('[[route]]\nto = ["mx"]\nmta_sts = true\n\n'
                                       f'[mta_sts]\nrefresh_interval = "{value}"\n')
            self.assertNotEqual(rc, 0, value)
            self.assertIn(f"{path}:13: ", out)  # the refresh_interval line
            self.assertIn("refresh_interval", out)
        _, rc, out = self.check('[[route]]\nto = ["mx"]\nmta_sts = true\n\n[mta_sts]\nrefresh_interval = "6h"\n')
        self.assertEqual(rc, 0, out)

    def test_mta_sts_with_tls_require_is_refused(self):
        path, rc, out = self.check('[[route]]\nto = ["mx"]\ntls = "require"\nmta_sts = true\n')
        self.assertNotEqual(rc, 0)
        self.assertIn(f"{path}:11:", out)  # the mta_sts line
        self.assertIn("mta_sts needs tls", out)

    def test_an_unloadable_ca_file_is_refused_at_its_line(self):
        path, rc, out = self.check('[[route]]\nto = ["mx"]\nmta_sts = true\n\n'
                                   '[mta_sts]\nfetch_timeout = "5s"\nca_file = "/nonexistent/ca.pem"\n')
        self.assertNotEqual(rc, 0)
        self.assertIn(f"{path}:14: ", out)  # the ca_file line
        self.assertIn("ca_file", out)


if __name__ == "__main__":
    unittest.main()
