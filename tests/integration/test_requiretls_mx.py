"""End-to-end tests of REQUIRETLS (RFC 8689) for delivery by MX (to = ["mx"]), the way mail
goes to the internet: a loopback DNS server (tests/support/dns_server.py) that sets the AD
bit for the names a test declares SECURE (a DNSSEC-signed MX RRset, TLSA records), an MTA-STS
policy served over HTTPS on 127.0.0.1:443 (as in test_mta_sts.py), and a STARTTLS sink on
127.0.0.1:25 (MX delivery always uses port 25) with certificates from a test CA ([mta_sts]
ca_file) or self-signed for DANE-EE. Both ports are bound by these tests: a test is skipped
when either is taken (after one retry), and ctest runs them under the loopback_port_25 lock.

    - a DNSSEC-signed MX whose host shows a certificate PKIX verifies for its name (or that
      its DNSSEC-signed TLSA record names) and offers REQUIRETLS gets the message, with
      REQUIRETLS on MAIL FROM;
    - an unsigned MX, without MTA-STS, is no way in: 5.7.30 at once, a headers-only DSN;
    - an MTA-STS policy in enforce mode that names the MX host authenticates it instead;
      one in testing mode does not;
    - a host that does not offer REQUIRETLS does not get the message;
    - "TLS-Required: No" mail goes, with opportunistic TLS, where MTA-STS enforce keeps other
      mail waiting for a certificate that verifies.

Run: MOAT_BIN=build/moat MOAT_SOURCE_DIR=. /usr/bin/python3 tests/integration/test_requiretls_mx.py -v
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from authzone import owned_dns  # noqa: E402
from harness import Sink, class_temp_dir, make_ca, make_cert, make_signed_cert, owned_moat, wait_for  # noqa: E402
from test_dane import spki_sha256  # noqa: E402
from test_mta_sts import PolicyServer, bind_or_skip, policy  # noqa: E402
from test_requiretls import SENDER, send  # noqa: E402

DOMAIN = "rt.test"
MX = "mx.rt.test"
POLICY_HOST = f"mta-sts.{DOMAIN}"
WITH_REQUIRETLS = Sink.DEFAULT_EXTENSIONS + ("REQUIRETLS",)


class RequireTlsMxTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = class_temp_dir(cls, "moat-requiretls-mx-")
        listener_dir = os.path.join(cls.tmp, "listener")
        os.mkdir(listener_dir)
        cls.listener_cert = make_cert(listener_dir, cn="mx.moat.test")
        cls.ca = make_ca(cls.tmp, cn="Moat REQUIRETLS test CA")
        cls.policy_cert = make_signed_cert(cls.tmp, cls.ca, "policy", f"DNS:{POLICY_HOST}")
        cls.mx_cert = make_signed_cert(cls.tmp, cls.ca, "mx", f"DNS:{MX}")
        cls.other_cert = make_signed_cert(cls.tmp, cls.ca, "other", "DNS:other.rt.test")
        dane_dir = os.path.join(cls.tmp, "dane")
        os.mkdir(dane_dir)
        cls.self_signed = make_cert(dane_dir, cn=MX)  # only DANE-EE can vouch for it

    def run_case(self, mx_cert, extensions=WITH_REQUIRETLS, secure=False, sts_mode=None, tls="may", tlsa=None):
        """A sink on 127.0.0.1:25 with `mx_cert` and `extensions`; a zone with DOMAIN's MX
        (DNSSEC-signed when `secure`, with a TLSA 3 1 1 record for `tlsa`, a certificate);
        an MTA-STS policy in `sts_mode` naming MX (None: no policy); a daemon delivering
        DOMAIN by MX with `tls` (and mta_sts = true), and SENDER's domain to Maildir.
        Returns (moat, sink, policy_server)."""
        sink = bind_or_skip(self, lambda: Sink(port=25, tls_cert=mx_cert, extensions=extensions), "127.0.0.1:25")
        self.addCleanup(sink.stop)
        server = None
        zone = {DOMAIN: [{"MX": [10, MX]}], MX: [{"A": "127.0.0.1"}], POLICY_HOST: [{"A": "127.0.0.1"}]}
        if sts_mode:
            server = bind_or_skip(self, lambda: PolicyServer(self.policy_cert, policy(sts_mode, mx=(MX,))), "127.0.0.1:443")
            self.addCleanup(server.stop)
            zone[f"_mta-sts.{DOMAIN}"] = [{"TXT": "v=STSv1; id=20261124"}]
        if secure:  # the AD bit on the MX RRset and the host's address records
            zone[DOMAIN].insert(0, {"SECURE": True})
            zone[MX].insert(0, {"SECURE": True})
        if tlsa:
            zone[f"_25._tcp.{MX}"] = [{"SECURE": True}, {"TLSA": [3, 1, 1, spki_sha256(tlsa[0])]}]
        dns = owned_dns(self, zone)
        extra = (f'\n[dns]\nnameservers = ["{dns.nameserver}"]\ntimeout = "1s"\n'
                 f'\n[mta_sts]\nca_file = "{self.ca[0]}"\nfetch_timeout = "5s"\n'
                 f'\n[[route]]\ndomains = ["{DOMAIN}"]\nto = ["mx"]\ntls = "{tls}"\nmta_sts = true\n'
                 '\n[[route]]\ndomains = ["local.test"]\nto = ["maildir:mail"]\n')
        m = owned_moat(self, routes=[], extra=extra, retry='["1h"]', relay_domains=("local.test",),
                       listener_extra=f'tls_cert = "{self.listener_cert[0]}"\n'
                                      f'tls_key = "{self.listener_cert[1]}"\n')
        return m, sink, server

    def dsn_for(self, m, queue_id):
        """The DSN reporting on `queue_id`, as delivered to SENDER's Maildir, and its log line."""
        ev = m.wait_log(event="dsn", original_queue_id=queue_id)
        m.wait_log(event="deliver", queue_id=ev["queue_id"])
        for path in m.maildir_files(SENDER):
            with open(path, "rb") as f:
                data = f.read()
            if queue_id.encode() in data:
                return ev, data
        self.fail(f"no DSN for {queue_id} in the Maildir")

    def assert_delivered_with_requiretls(self, m, sink, qid, rcpt, tls_suffix):
        ev = m.wait_log(event="deliver", queue_id=qid)
        self.assertIs(ev.get("requiretls"), True)
        self.assertTrue(ev["tls"].endswith(tls_suffix), ev["tls"])
        self.assertEqual(ev["relay"], f"{MX}[127.0.0.1]:25")
        msg = wait_for(lambda: [x for x in sink.messages if x["rcpts"] == [rcpt]], 10, what="the message at the sink")[0]
        self.assertTrue(msg["tls"])
        mail = [c for c in msg["session"]["commands"] if c.upper().startswith("MAIL FROM:")]
        self.assertTrue(mail and mail[-1].endswith(" REQUIRETLS"), mail)

    def assert_returned_with_5_7_30(self, m, sink, qid, rcpt, secret, why):
        ev = m.wait_log(event="bounce", queue_id=qid)
        self.assertIn("550 5.7.30 REQUIRETLS support required", ev["reply"])
        self.assertIn(why, ev["reply"])
        self.assertIs(ev.get("requiretls"), True)
        self.assertEqual(m.find_logs(event="defer", queue_id=qid), [])  # returned at once
        self.assertFalse([x for x in sink.messages if rcpt in x["rcpts"]])
        self.assertFalse([c for c in sink.commands if rcpt in c])  # not even a RCPT
        _, data = self.dsn_for(m, qid)
        self.assertIn(b"Status: 5.7.30", data)
        # RFC 8689 §5: the report quotes the headers only.
        self.assertIn(b"text/rfc822-headers", data)
        self.assertNotIn(secret.encode(), data)
        return ev

    def test_signed_mx_with_a_pkix_verified_certificate_is_delivered(self):
        m, sink, _ = self.run_case(self.mx_cert, secure=True)
        qid = send(m, f"u1@{DOMAIN}", "signed pkix")
        self.assert_delivered_with_requiretls(m, sink, qid, f"u1@{DOMAIN}", " verified")
        self.assertIn(MX, sink.sni)  # the certificate was checked for the MX name

    def test_signed_mx_with_a_dane_ee_record_is_delivered(self):
        m, sink, _ = self.run_case(self.self_signed, secure=True, tls="dane", tlsa=self.self_signed)
        qid = send(m, f"u2@{DOMAIN}", "signed dane")
        self.assert_delivered_with_requiretls(m, sink, qid, f"u2@{DOMAIN}", " dane")

    def test_unsigned_mx_without_mta_sts_is_returned_with_5_7_30(self):
        m, sink, _ = self.run_case(self.mx_cert)
        qid = send(m, f"u3@{DOMAIN}", "secret unsigned")
        self.assert_returned_with_5_7_30(m, sink, qid, f"u3@{DOMAIN}", "secret unsigned", "not found securely")
        self.assertEqual(sink.connections, 0)  # never tried
        # Without REQUIRETLS the same host takes mail as before.
        plain = send(m, f"u4@{DOMAIN}", "plain", requiretls=False)
        self.assertNotIn("requiretls", m.wait_log(event="deliver", queue_id=plain))

    def test_mta_sts_enforce_naming_the_mx_host_authenticates_an_unsigned_mx(self):
        m, sink, server = self.run_case(self.mx_cert, sts_mode="enforce")
        qid = send(m, f"u5@{DOMAIN}", "sts enforce")
        self.assert_delivered_with_requiretls(m, sink, qid, f"u5@{DOMAIN}", " mta-sts")
        self.assertEqual(server.requests, [("/.well-known/mta-sts.txt", POLICY_HOST)])

    def test_mta_sts_testing_does_not_authenticate_an_unsigned_mx(self):
        m, sink, server = self.run_case(self.mx_cert, sts_mode="testing")
        qid = send(m, f"u6@{DOMAIN}", "secret testing")
        self.assert_returned_with_5_7_30(m, sink, qid, f"u6@{DOMAIN}", "secret testing", "not found securely")
        self.assertEqual(len(server.requests), 1)  # the policy was fetched, and is only "testing"
        self.assertEqual(sink.connections, 0)

    def test_signed_mx_that_does_not_offer_requiretls_is_returned_with_5_7_30(self):
        m, sink, _ = self.run_case(self.mx_cert, extensions=Sink.DEFAULT_EXTENSIONS, secure=True)
        qid = send(m, f"u7@{DOMAIN}", "secret no offer")
        self.assert_returned_with_5_7_30(m, sink, qid, f"u7@{DOMAIN}", "secret no offer",
                                         "the server does not offer REQUIRETLS")
        self.assertGreaterEqual(sink.tls_sessions, 1)  # it got as far as the EHLO after STARTTLS

    def test_tls_required_no_goes_where_mta_sts_enforce_keeps_other_mail(self):
        # The certificate chains to the trust anchors but names another host: MTA-STS enforce
        # keeps the message waiting ...
        m, sink, _ = self.run_case(self.other_cert, sts_mode="enforce")
        held = send(m, f"u8@{DOMAIN}", "held", requiretls=False)
        ev = m.wait_log(event="defer", queue_id=held)
        self.assertIn("4.7.5", ev["reply"])
        self.assertIn("MTA-STS (enforce) requires TLS with a valid certificate", ev["reply"])
        # ... and the same message with "TLS-Required: No" goes, over opportunistic TLS.
        qid = send(m, f"u9@{DOMAIN}", "goes anyway", requiretls=False, headers="TLS-Required: No\r\n")
        ev = m.wait_log(event="deliver", queue_id=qid)
        self.assertNotIn("requiretls", ev)
        self.assertTrue(ev["tls"], ev)
        self.assertFalse(ev["tls"].endswith(" mta-sts"), ev["tls"])
        msg = wait_for(lambda: [x for x in sink.messages if x["rcpts"] == [f"u9@{DOMAIN}"]], 10,
                       what="the message at the sink")[0]
        self.assertTrue(msg["tls"])
        self.assertIn(b"TLS-Required: No", msg["data"])  # passed on as it came
        self.assertFalse([x for x in sink.messages if x["rcpts"] == [f"u8@{DOMAIN}"]])


if __name__ == "__main__":
    unittest.main()
