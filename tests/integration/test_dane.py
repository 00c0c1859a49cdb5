"""End-to-end tests of tls = "dane" on a route (RFC 7672, DANE for SMTP): a loopback DNS
server (tests/support/dns_server.py) that sets the AD bit, as a local validating resolver
would, for the names a test declares SECURE; TLSA records for the sinks' certificates, made
at test time; sinks with STARTTLS on 127.0.0.1 ephemeral ports, named by smtp:HOST:PORT
routes (the TLSA records are at _PORT._tcp.HOST), and host names that are CNAMEs (§2.2.2).

DaneMxTest delivers by MX (to = ["mx"]), whose hosts are reached on port 25: its sink binds
127.0.0.1:25 (one retry when the port is taken, then the test is skipped), so it must not
run alongside other tests that bind port 25 (test_mta_sts.py, test_next_hops.py, ...).

Run: MOAT_BIN=build/moat MOAT_SOURCE_DIR=. /usr/bin/python3 tests/integration/test_dane.py -v
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
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


ALIAS = "mx.alias.test"     # a CNAME ...
TARGET = "mx.target.test"   # ... to this name, which has the address


class DaneAliasTest(unittest.TestCase):
    """RFC 7672 §2.2.2: the route's host is an alias. With a DNSSEC-authenticated CNAME chain
    the TLSA records are looked up at the expanded name first, at the alias only when there
    are none there; the certificate may name either; SNI is the TLSA base domain (§8.1)."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="moat-dane-alias-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.cert = make_cert(cls.tmp, cn=TARGET)
        other_dir = os.path.join(cls.tmp, "other")
        os.mkdir(other_dir)
        cls.other_cert = make_cert(other_dir, cn=TARGET)
        cls.ca = make_ca(cls.tmp, cn="Moat DANE alias test CA")
        cls.ta_alias_name = make_signed_cert(cls.tmp, cls.ca, "alias", f"DNS:{ALIAS}", chain=True)
        cls.ta_target_name = make_signed_cert(cls.tmp, cls.ca, "target", f"DNS:{TARGET}", chain=True)
        cls.ta_other_name = make_signed_cert(cls.tmp, cls.ca, "elsewhere", "DNS:other.dane.test", chain=True)

    def run_case(self, tls_cert, at_target=(), at_alias=(), chain_secure=True):
        """A sink with `tls_cert`; ALIAS a CNAME to TARGET (127.0.0.1), the CNAME SECURE when
        `chain_secure`, TARGET always; TLSA records `at_target` at _PORT._tcp.TARGET and
        `at_alias` at _PORT._tcp.ALIAS (SECURE); a daemon relaying example.test to
        smtp:ALIAS:PORT with tls = "dane"; one message sent. Returns (moat, sink, dns)."""
        sink = Sink(tls_cert=tls_cert)
        self.addCleanup(sink.stop)
        alias = [{"CNAME": TARGET}]
        if chain_secure:
            alias.insert(0, {"SECURE": True})
        zone = {ALIAS: alias, TARGET: [{"SECURE": True}, {"A": "127.0.0.1"}]}
        for name, records in ((TARGET, at_target), (ALIAS, at_alias)):
            if records:
                zone[f"_{sink.port}._tcp.{name}"] = [{"SECURE": True}] + [{"TLSA": list(r)} for r in records]
        dns = owned_dns(self, zone)
        extra = (f'\n[dns]\nnameservers = ["{dns.nameserver}"]\ntimeout = "1s"\n'
                 f'\n[[route]]\ndomains = ["example.test"]\nto = ["smtp:{ALIAS}:{sink.port}"]\ntls = "dane"\n')
        m = owned_moat(self, routes=[], extra=extra, retry='["1h"]')
        s = m.smtp()
        s.sendmail("a@sender.test", ["u@example.test"], b"Subject: dane alias\r\n\r\nbody\r\n")
        s.quit()
        return m, sink, dns

    def assert_dane_delivery(self, m, sink):
        msgs = sink.wait_messages(1)
        self.assertTrue(msgs[0]["tls"])
        ev = m.wait_log(event="deliver")
        self.assertTrue(ev["tls"].endswith(" dane"), ev["tls"])
        self.assertIn(f"{ALIAS}[127.0.0.1]:{sink.port}", ev["relay"])  # the route's name, as before
        return ev

    def test_records_at_the_expanded_name_authenticate_the_host(self):
        m, sink, dns = self.run_case(self.cert, at_target=[(3, 1, 1, spki_sha256(self.cert[0]))])
        self.assert_dane_delivery(m, sink)
        self.assertEqual(sink.sni, [TARGET])  # the TLSA base domain (RFC 7672 §8.1)
        # Records there: the alias's own are not asked for.
        self.assertNotIn(f"_{sink.port}._tcp.{ALIAS} TLSA", dns.queries())

    def test_records_at_the_expanded_name_come_first(self):
        # The alias's records would match, the expanded name's do not: the expanded name's decide.
        m, sink, _ = self.run_case(self.cert, at_target=[(3, 1, 1, spki_sha256(self.other_cert[0]))],
                                   at_alias=[(3, 1, 1, spki_sha256(self.cert[0]))])
        ev = m.wait_log(event="defer")
        self.assertIn("4.7.5", ev["reply"])
        self.assertIn("DANE", ev["reply"])
        self.assertEqual(sink.messages, [])

    def test_no_records_at_the_expanded_name_falls_back_to_the_alias(self):
        m, sink, dns = self.run_case(self.cert, at_alias=[(3, 1, 1, spki_sha256(self.cert[0]))])
        self.assert_dane_delivery(m, sink)
        self.assertEqual(sink.sni, [ALIAS])  # the records were at the alias: it is the base domain
        q = dns.queries()
        at_target, at_alias = f"_{sink.port}._tcp.{TARGET} TLSA", f"_{sink.port}._tcp.{ALIAS} TLSA"
        self.assertIn(at_target, q)
        self.assertIn(at_alias, q)
        self.assertLess(q.index(at_target), q.index(at_alias))

    def test_dane_ta_certificate_may_name_the_alias_when_the_records_are_at_the_expanded_name(self):
        m, sink, _ = self.run_case(self.ta_alias_name, at_target=[(2, 1, 1, spki_sha256(self.ca[0]))])
        self.assert_dane_delivery(m, sink)

    def test_dane_ta_certificate_may_name_the_expanded_name_when_the_records_are_at_the_alias(self):
        m, sink, _ = self.run_case(self.ta_target_name, at_alias=[(2, 1, 1, spki_sha256(self.ca[0]))])
        self.assert_dane_delivery(m, sink)

    def test_dane_ta_certificate_naming_neither_is_deferred(self):
        m, sink, _ = self.run_case(self.ta_other_name, at_target=[(2, 1, 1, spki_sha256(self.ca[0]))])
        ev = m.wait_log(event="defer")
        self.assertIn("4.7.5", ev["reply"])
        self.assertEqual(sink.messages, [])

    def test_an_insecure_chain_is_not_dane(self):
        # The CNAME is not authenticated (no AD on the address answers): DANE does not apply,
        # not even the expanded name's signed records (which would not match): "may".
        m, sink, dns = self.run_case(self.cert, at_target=[(3, 1, 1, spki_sha256(self.other_cert[0]))],
                                     chain_secure=False)
        msgs = sink.wait_messages(1)
        self.assertTrue(msgs[0]["tls"])
        ev = m.wait_log(event="deliver")
        self.assertFalse(ev["tls"].endswith(" dane"), ev["tls"])
        self.assertFalse([q for q in dns.queries() if q.endswith(" TLSA")])


def bind_port_25(test, tls_cert):
    """A sink on 127.0.0.1:25 (MX delivery always uses port 25): one retry when the port is
    taken (another test may be letting it go), then the test is skipped."""
    for attempt in range(2):
        try:
            return Sink(port=25, tls_cert=tls_cert)
        except OSError as e:
            if attempt == 1:
                test.skipTest(f"cannot listen on 127.0.0.1:25: {e}")
            time.sleep(1)


MX_DOMAIN = "dane-mx.test"
MX_HOST = "mx.dane-mx.test"


class DaneMxTest(unittest.TestCase):
    """to = ["mx"] with tls = "dane", end to end: the recipient domain's MX names a host with
    TLSA records at _25._tcp.HOST, the next hop a STARTTLS sink on 127.0.0.1:25."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="moat-dane-mx-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.cert = make_cert(cls.tmp, cn=MX_HOST)
        other_dir = os.path.join(cls.tmp, "other")
        os.mkdir(other_dir)
        cls.other_cert = make_cert(other_dir, cn=MX_HOST)

    def run_case(self, tlsa_cert, secure=True, mx_host=MX_HOST, zone_extra=None):
        """MX_DOMAIN's MX names `mx_host` (127.0.0.1), with a DANE-EE(3) record for
        `tlsa_cert` at _25._tcp.MX_HOST; everything SECURE when `secure`; a sink on
        127.0.0.1:25 with self.cert; a daemon with an mx route, tls = "dane"; one message
        sent. Returns (moat, sink)."""
        sink = bind_port_25(self, self.cert)
        self.addCleanup(sink.stop)
        zone = {MX_DOMAIN: [{"MX": [10, mx_host]}],
                MX_HOST: [{"A": "127.0.0.1"}],
                f"_25._tcp.{MX_HOST}": [{"TLSA": [3, 1, 1, spki_sha256(tlsa_cert[0])]}]}
        zone.update(zone_extra or {})
        if secure:
            for records in zone.values():
                records.insert(0, {"SECURE": True})
        dns = owned_dns(self, zone)
        extra = (f'\n[dns]\nnameservers = ["{dns.nameserver}"]\ntimeout = "1s"\n'
                 f'\n[[route]]\ndomains = ["{MX_DOMAIN}"]\nto = ["mx"]\ntls = "dane"\n')
        m = owned_moat(self, routes=[], relay_domains=(MX_DOMAIN,), extra=extra, retry='["1h"]')
        s = m.smtp()
        s.sendmail("a@sender.test", [f"u@{MX_DOMAIN}"], b"Subject: dane mx\r\n\r\nbody\r\n")
        s.quit()
        return m, sink

    def test_matching_dane_ee_is_delivered_and_logged_as_dane(self):
        m, sink = self.run_case(self.cert)
        msgs = sink.wait_messages(1)
        self.assertTrue(msgs[0]["tls"])
        ev = m.wait_log(event="deliver")
        self.assertTrue(ev["tls"].endswith(" dane"), ev["tls"])
        self.assertEqual(ev["relay"], f"{MX_HOST}[127.0.0.1]:25")
        self.assertEqual(sink.sni, [MX_HOST])

    def test_mismatching_dane_ee_is_deferred_never_sent_in_plain_text(self):
        m, sink = self.run_case(self.other_cert)
        ev = m.wait_log(event="defer")
        self.assertIn("451 4.7.5", ev["reply"])
        self.assertIn("DANE", ev["reply"])
        self.assertEqual(sink.messages, [])
        # The handshake failed: no transaction was begun, in TLS or in plain text.
        self.assertFalse([c for c in sink.commands if c.upper().startswith(("MAIL", "RCPT", "DATA"))])

    def test_an_unsigned_zone_is_opportunistic(self):
        m, sink = self.run_case(self.other_cert, secure=False)  # the records would not match
        msgs = sink.wait_messages(1)
        self.assertTrue(msgs[0]["tls"])
        ev = m.wait_log(event="deliver")
        self.assertFalse(ev["tls"].endswith(" dane"), ev["tls"])

    def test_an_mx_host_that_is_a_secure_alias_uses_the_expanded_names_records(self):
        # The MX names an alias of MX_HOST: the records at _25._tcp.MX_HOST (§2.2.2) decide.
        m, sink = self.run_case(self.cert, mx_host="alias.dane-mx.test",
                                zone_extra={"alias.dane-mx.test": [{"CNAME": MX_HOST}]})
        sink.wait_messages(1)
        ev = m.wait_log(event="deliver")
        self.assertTrue(ev["tls"].endswith(" dane"), ev["tls"])
        self.assertEqual(ev["relay"], "alias.dane-mx.test[127.0.0.1]:25")


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
