"""End-to-end tests of tls = "dane" on a route (RFC 7672, DANE for SMTP): a loopback DNS
server (tests/support/dns_server.py) that sets the AD bit, as a local validating resolver
would, for the names a test declares SECURE; TLSA records for the sinks' certificates, made
at test time; sinks with STARTTLS on 127.0.0.1 ephemeral ports, named by smtp:HOST:PORT
routes (the TLSA records are at _PORT._tcp.HOST).

An mx route is not tested here: its hosts are reached on port 25, which tests must not bind.

Run: MOAT_BIN=build/moat MOAT_SOURCE_DIR=. /usr/bin/python3 tests/integration/test_dane.py -v
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from authzone import owned_dns  # noqa: E402
from harness import Sink, check_config, make_ca, make_cert, make_signed_cert, owned_moat  # noqa: E402

HOST = "mx.dane.test"


def openssl(*args, stdin=None):
    return subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, input=stdin).stdout


def spki_sha256(cert):
    """The hex SHA2-256 of a certificate's SubjectPublicKeyInfo: TLSA selector 1, matching type 1."""
    pub = openssl("x509", "-in", cert, "-pubkey", "-noout")
    return hashlib.sha256(openssl("pkey", "-pubin", "-outform", "DER", stdin=pub)).hexdigest()


def make_expired_cert(directory, cn):
    """A self-signed certificate for `cn` that expired days ago (made with python3-cryptography)."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=10)).not_valid_after(now - datetime.timedelta(days=5))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "expired.pem"), os.path.join(directory, "expired.key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    return cert_path, key_path


class DaneTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="moat-dane-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.cert = make_cert(cls.tmp, cn=HOST)  # self-signed: only DANE-EE can vouch for it
        other_dir = os.path.join(cls.tmp, "other")
        os.mkdir(other_dir)
        cls.other_cert = make_cert(other_dir, cn=HOST)  # another key
        cls.ca = make_ca(cls.tmp, cn="Moat DANE test CA")
        cls.ta_good = make_signed_cert(cls.tmp, cls.ca, "good", f"DNS:{HOST}", chain=True)
        cls.ta_wrong_name = make_signed_cert(cls.tmp, cls.ca, "wrong", "DNS:other.dane.test", chain=True)
        cls.expired_other_name = make_expired_cert(cls.tmp, "not-the-host.test")

    def run_case(self, tlsa, secure=True, tls_cert=None, tlsa_servfail=False, extensions=Sink.DEFAULT_EXTENSIONS):
        """A sink (with `tls_cert`, or no STARTTLS), a zone for HOST with `tlsa` records at
        _PORT._tcp.HOST (SECURE when `secure`), and a daemon relaying example.test to
        smtp:HOST:PORT with tls = "dane"; one message sent. Returns (moat, sink)."""
        sink = Sink(tls_cert=tls_cert, extensions=extensions)
        self.addCleanup(sink.stop)
        owner = f"_{sink.port}._tcp.{HOST}"
        host_items = [{"A": "127.0.0.1"}]
        tlsa_items = [{"TLSA": list(r)} for r in tlsa]
        if tlsa_servfail:
            tlsa_items = [{"SERVFAIL": True}]
        if secure:
            host_items.insert(0, {"SECURE": True})
            tlsa_items.insert(0, {"SECURE": True})
        dns = owned_dns(self, {HOST: host_items, owner: tlsa_items})
        extra = (f'\n[dns]\nnameservers = ["{dns.nameserver}"]\ntimeout = "1s"\n'
                 f'\n[[route]]\ndomains = ["example.test"]\nto = ["smtp:{HOST}:{sink.port}"]\ntls = "dane"\n')
        m = owned_moat(self, routes=[], extra=extra, retry='["1h"]')
        s = m.smtp()
        s.sendmail("a@sender.test", ["u@example.test"], b"Subject: dane\r\n\r\nbody\r\n")
        s.quit()
        return m, sink, dns

    def assert_deferred(self, m, sink, *words):
        ev = m.wait_log(event="defer")
        self.assertIn("4.7.5", ev["reply"])
        for w in words:
            self.assertIn(w, ev["reply"])
        self.assertEqual(sink.messages, [])
        return ev

    def test_matching_dane_ee_is_delivered_and_logged_as_dane(self):
        m, sink, _ = self.run_case([(3, 1, 1, spki_sha256(self.cert[0]))], tls_cert=self.cert)
        msgs = sink.wait_messages(1)
        self.assertTrue(msgs[0]["tls"])
        ev = m.wait_log(event="deliver")
        self.assertTrue(ev["tls"].endswith(" dane"), ev["tls"])

    def test_dane_ee_checks_neither_names_nor_expiry(self):
        # RFC 7672 §3.1.1: with DANE-EE(3) the key is what is authenticated.
        cert = self.expired_other_name
        m, sink, _ = self.run_case([(3, 1, 1, spki_sha256(cert[0]))], tls_cert=cert)
        sink.wait_messages(1)
        ev = m.wait_log(event="deliver")
        self.assertTrue(ev["tls"].endswith(" dane"), ev["tls"])

    def test_mismatching_dane_ee_in_a_secure_zone_is_deferred(self):
        m, sink, _ = self.run_case([(3, 1, 1, spki_sha256(self.other_cert[0]))], tls_cert=self.cert)
        self.assert_deferred(m, sink, "DANE")

    def test_mismatching_tlsa_in_an_insecure_zone_is_opportunistic(self):
        m, sink, dns = self.run_case([(3, 1, 1, spki_sha256(self.other_cert[0]))], secure=False,
                                     tls_cert=self.cert)
        msgs = sink.wait_messages(1)
        self.assertTrue(msgs[0]["tls"])  # "may": TLS when offered, not authenticated
        ev = m.wait_log(event="deliver")
        self.assertFalse(ev["tls"].endswith(" dane"), ev["tls"])

    def test_secure_tlsa_without_starttls_is_deferred_not_sent_in_plain_text(self):
        m, sink, _ = self.run_case([(3, 1, 1, spki_sha256(self.cert[0]))], tls_cert=None)
        self.assert_deferred(m, sink, "STARTTLS")

    def test_dane_ta_with_the_host_name_is_delivered(self):
        m, sink, _ = self.run_case([(2, 1, 1, spki_sha256(self.ca[0]))], tls_cert=self.ta_good)
        sink.wait_messages(1)
        ev = m.wait_log(event="deliver")
        self.assertTrue(ev["tls"].endswith(" dane"), ev["tls"])

    def test_dane_ta_with_another_name_is_deferred(self):
        m, sink, _ = self.run_case([(2, 1, 1, spki_sha256(self.ca[0]))], tls_cert=self.ta_wrong_name)
        self.assert_deferred(m, sink, "DANE")

    def test_tlsa_servfail_for_a_secure_host_is_deferred(self):
        m, sink, _ = self.run_case([], tlsa_servfail=True, tls_cert=self.cert)
        self.assert_deferred(m, sink, "TLSA lookup")
        self.assertEqual(sink.connections, 0)  # the host was not tried at all

    def test_only_unusable_secure_records_require_tls_without_authentication(self):
        # PKIX-EE(1) is unusable for SMTP (RFC 7672 §3.1.3): TLS is required, not authenticated.
        m, sink, _ = self.run_case([(1, 1, 1, spki_sha256(self.other_cert[0]))], tls_cert=self.cert)
        msgs = sink.wait_messages(1)
        self.assertTrue(msgs[0]["tls"])
        ev = m.wait_log(event="deliver")
        self.assertFalse(ev["tls"].endswith(" dane"), ev["tls"])
        m2, sink2, _ = self.run_case([(1, 1, 1, spki_sha256(self.other_cert[0]))], tls_cert=None)
        self.assert_deferred(m2, sink2, "STARTTLS")

    def test_a_host_failing_dane_is_passed_over_for_the_next_one(self):
        # RFC 7672 §2.2: a host whose peer the TLSA records do not authenticate is skipped
        # like an unreachable one; the next host of the route gets the mail.
        bad = Sink(tls_cert=self.cert)
        good = Sink(tls_cert=self.cert)
        self.addCleanup(bad.stop)
        self.addCleanup(good.stop)
        match, other = spki_sha256(self.cert[0]), spki_sha256(self.other_cert[0])
        zone = {"bad.dane.test": [{"SECURE": True}, {"A": "127.0.0.1"}],
                f"_{bad.port}._tcp.bad.dane.test": [{"SECURE": True}, {"TLSA": [3, 1, 1, other]}],
                HOST: [{"SECURE": True}, {"A": "127.0.0.1"}],
                f"_{good.port}._tcp.{HOST}": [{"SECURE": True}, {"TLSA": [3, 1, 1, match]}]}
        dns = owned_dns(self, zone)
        extra = (f'\n[dns]\nnameservers = ["{dns.nameserver}"]\ntimeout = "1s"\n'
                 f'\n[[route]]\ndomains = ["example.test"]\n'
                 f'to = ["smtp:bad.dane.test:{bad.port}", "smtp:{HOST}:{good.port}"]\ntls = "dane"\n')
        m = owned_moat(self, routes=[], extra=extra, retry='["1h"]')
        s = m.smtp()
        s.sendmail("a@sender.test", ["u@example.test"], b"Subject: dane\r\n\r\nbody\r\n")
        s.quit()
        good.wait_messages(1)
        ev = m.wait_log(event="deliver")
        self.assertTrue(ev["tls"].endswith(" dane"), ev["tls"])
        self.assertIn(f"{HOST}[127.0.0.1]:{good.port}", ev["relay"])
        self.assertEqual(bad.messages, [])
        self.assertGreaterEqual(bad.tls_sessions + bad.connections, 1)  # it was tried first


class DaneCheckTest(unittest.TestCase):
    def test_check_warns_about_a_remote_nameserver(self):
        path, r = check_config(self, '[server]\nhostname = "mx.moat.test"\nspool_dir = "spool"\n\n'
                                     '[dns]\nnameservers = ["127.0.0.1:53", "192.0.2.53"]\n\n'
                                     '[[route]]\nto = ["mx"]\ntls = "dane"\n')
        out = r.stdout + r.stderr
        self.assertIn(f"{path}:10: warning", out)  # the tls line
        self.assertIn("192.0.2.53", out)
        self.assertNotIn("127.0.0.1:53 is not", out)


if __name__ == "__main__":
    unittest.main()
