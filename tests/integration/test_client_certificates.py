"""Client certificates towards next hops ([[route]] tls_cert, tls_key: mutual TLS): a sink on
127.0.0.1 that requires a client certificate of its own test CA gets the message only when
the route presents one (with tls = "may", "require" and "verify"), and sees its subject;
without one, or with one of another CA, the handshake fails and the message is deferred,
never sent in plain text; a reload that replaces the files makes the next delivery present
the new certificate; `moat check` refuses a half-set pair, a key that does not match, a
missing file and a file that holds no certificate at FILE:LINE, and warns about one that
expires within 14 days (also in moat_tls_certificate_expiry_timestamp_seconds)."""

import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import (_openssl, free_port, make_ca, make_signed_cert, owned_moat, owned_sink,  # noqa: E402
                     scrape, wait_for)


def make_client_cert(directory, ca, name):
    """A client certificate (CN=`name`, extendedKeyUsage clientAuth) signed by `ca`, valid for
    2 days: (cert, key)."""
    cert, key, csr, ext = (os.path.join(directory, f"{name}.{x}") for x in ("pem", "key", "csr", "ext"))
    with open(ext, "w") as f:
        f.write("extendedKeyUsage=clientAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}/O=Moat test")
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-out", cert,
             "-days", "2", "-extfile", ext)
    return cert, key


def subject_cn(peer_cert):
    for rdn in (peer_cert or {}).get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return None


class ClientCertificateTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="moat-clientcert-")
        ca_dir, other_dir = os.path.join(cls.tmp, "ca"), os.path.join(cls.tmp, "other")
        os.makedirs(ca_dir)
        os.makedirs(other_dir)
        cls.ca = make_ca(ca_dir, "Moat test client CA")
        cls.other_ca = make_ca(other_dir, "Some other CA")
        cls.server = make_signed_cert(ca_dir, cls.ca, "sink", "IP:127.0.0.1")
        cls.client = make_client_cert(ca_dir, cls.ca, "gateway.moat.test")
        cls.renewed = make_client_cert(ca_dir, cls.ca, "renewed.moat.test")
        cls.rogue = make_client_cert(other_dir, cls.other_ca, "rogue.moat.test")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def sink(self):
        """A sink whose STARTTLS requires a client certificate the test CA signed."""
        sink = owned_sink(self, tls_cert=self.server)
        sink.tls_context.verify_mode = ssl.CERT_REQUIRED
        sink.tls_context.load_verify_locations(self.ca[0])
        return sink

    def moat(self, sink, tls="require", cert=None, start=True, extra="", server_extra=""):
        """A Moat whose route for example.test goes to `sink`; with `cert` (cert, key), it is
        copied beside the config as client.pem / client.key and named relative to it."""
        keys = ""
        if cert:
            keys = 'tls_cert = "client.pem"\ntls_key = "client.key"\n'
        if tls == "verify":
            keys += f'ca_file = "{self.ca[0]}"\n'
        route = (f'\n[[route]]\ndomains = ["example.test"]\nto = ["smtp:127.0.0.1:{sink.port}"]\n'
                 f'tls = "{tls}"\n{keys}{extra}')
        m = owned_moat(self, routes=[], extra=route, retry='["1h"]', start=False, server_extra=server_extra)
        if cert:
            self.install(m, cert)
        if start:
            m.start()
        return m

    @staticmethod
    def install(m, cert):
        shutil.copyfile(cert[0], os.path.join(m.dir, "client.pem"))
        shutil.copyfile(cert[1], os.path.join(m.dir, "client.key"))

    @staticmethod
    def send(m, subject="mutual TLS"):
        s = m.smtp()
        s.sendmail("alice@sender.test", ["bob@example.test"], f"Subject: {subject}\r\n\r\nbody\r\n".encode())
        s.quit()

    def line_of(self, m, key):
        with open(m.config_path) as f:
            return next(i for i, line in enumerate(f, 1) if line.startswith(key + " "))

    def test_presents_the_certificate_with_each_tls_level(self):
        for tls in ("may", "require", "verify"):
            with self.subTest(tls=tls):
                sink = self.sink()
                m = self.moat(sink, tls=tls, cert=self.client)
                self.send(m)
                msg = sink.wait_messages(1)[0]
                self.assertTrue(msg["tls"])
                self.assertEqual(subject_cn(msg["session"]["peer_cert"]), "gateway.moat.test")
                ev = m.wait_log(event="deliver")
                self.assertIs(ev.get("client_cert"), True, ev)
                if tls == "verify":
                    self.assertIn("verified", ev["tls"])
                self.assertEqual(sink.tls_failures, [])

    def test_no_client_cert_field_when_the_server_does_not_ask(self):
        sink = owned_sink(self, tls_cert=self.server)  # STARTTLS without a CertificateRequest
        m = self.moat(sink, cert=self.client)
        self.send(m)
        msg = sink.wait_messages(1)[0]
        self.assertTrue(msg["tls"])
        self.assertFalse(msg["session"]["peer_cert"])
        ev = m.wait_log(event="deliver")
        self.assertNotIn("client_cert", ev)

    def assert_deferred_unsent(self, m, sink, note):
        ev = m.wait_log(event="defer")
        self.assertIn(note, ev["reply"])
        self.assertTrue(ev["reply"].startswith("451 "), ev)
        wait_for(lambda: sink.tls_failures, 10, what="the sink's failed handshake")
        # Nothing after the failed STARTTLS: no plain-text retry, no MAIL, no message.
        self.assertEqual(sink.messages, [])
        self.assertFalse([c for s in sink.sessions for c in s["commands"] if c.upper().startswith("MAIL")],
                         sink.sessions)
        self.assertEqual(m.find_logs(event="deliver"), [])

    def test_without_a_certificate_the_message_is_deferred(self):
        sink = self.sink()
        m = self.moat(sink)
        self.send(m)
        self.assert_deferred_unsent(m, sink, "the server asked for a client certificate: none presented")

    def test_a_certificate_of_another_ca_is_deferred(self):
        sink = self.sink()
        m = self.moat(sink, cert=self.rogue)
        self.send(m)
        self.assert_deferred_unsent(m, sink, "client certificate presented: O=Moat test,CN=rogue.moat.test")

    def test_a_reload_presents_the_renewed_certificate(self):
        sink = self.sink()
        m = self.moat(sink, cert=self.client)
        self.send(m, "before")
        self.assertEqual(subject_cn(sink.wait_messages(1)[0]["session"]["peer_cert"]), "gateway.moat.test")
        m.wait_log(event="deliver")
        # The key first, then the certificate and SIGHUP: the files as a renewal leaves them.
        shutil.copyfile(self.renewed[1], os.path.join(m.dir, "client.key"))
        with open(self.renewed[0]) as f:
            m.reload_with(os.path.join(m.dir, "client.pem"), f.read())
        self.send(m, "after")
        msgs = sink.wait_messages(2)
        self.assertEqual(subject_cn(msgs[1]["session"]["peer_cert"]), "renewed.moat.test")
        # A broken pair (a key that does not match) is refused; the renewed one stays in force.
        shutil.copyfile(self.client[1], os.path.join(m.dir, "client.key"))
        m.reload_with(os.path.join(m.dir, "client.pem"), open(self.renewed[0]).read(), ok=False)
        self.send(m, "kept")
        msgs = sink.wait_messages(3)
        self.assertEqual(subject_cn(msgs[2]["session"]["peer_cert"]), "renewed.moat.test")

    def check(self, m):
        r = m.cli("check", check=False)
        return r.returncode, r.stdout + r.stderr

    def test_check_refuses_bad_pairs_at_their_line(self):
        sink = owned_sink(self)
        # Only one of the two keys.
        m = self.moat(sink, start=False, extra='tls_cert = "client.pem"\n')
        self.install(m, self.client)
        code, out = self.check(m)
        self.assertNotEqual(code, 0, out)
        self.assertIn(f"{m.config_path}:{self.line_of(m, 'tls_cert')}:", out)
        self.assertIn("tls_cert and tls_key go together", out)
        m = self.moat(sink, start=False, extra='tls_key = "client.key"\n')
        code, out = self.check(m)
        self.assertNotEqual(code, 0, out)
        self.assertIn(f"{m.config_path}:{self.line_of(m, 'tls_key')}:", out)
        # A key that does not match the certificate.
        m = self.moat(sink, cert=self.client, start=False)
        shutil.copyfile(self.rogue[1], os.path.join(m.dir, "client.key"))
        code, out = self.check(m)
        self.assertNotEqual(code, 0, out)
        self.assertIn(f"{m.config_path}:{self.line_of(m, 'tls_cert')}: [[route]] tls_cert: private key", out)
        self.assertIn("does not match certificate", out)
        # A missing file.
        os.unlink(os.path.join(m.dir, "client.pem"))
        code, out = self.check(m)
        self.assertNotEqual(code, 0, out)
        self.assertIn(f"{m.config_path}:{self.line_of(m, 'tls_cert')}: [[route]] tls_cert: cannot load certificate "
                      f"{os.path.join(m.dir, 'client.pem')}", out)
        # A file that holds no certificate (the key in its place).
        shutil.copyfile(self.client[1], os.path.join(m.dir, "client.pem"))
        code, out = self.check(m)
        self.assertNotEqual(code, 0, out)
        self.assertIn(f"{m.config_path}:{self.line_of(m, 'tls_cert')}: [[route]] tls_cert: cannot load certificate", out)
        # tls = "none" never presents one.
        m = self.moat(sink, tls="none", cert=self.client, start=False)
        code, out = self.check(m)
        self.assertNotEqual(code, 0, out)
        self.assertIn(f"{m.config_path}:{self.line_of(m, 'tls_cert')}:", out)
        # `serve` refuses the same at start.
        m = self.moat(sink, cert=self.client, start=False)
        shutil.copyfile(self.rogue[1], os.path.join(m.dir, "client.key"))
        with self.assertRaises(AssertionError):
            m.start()

    def test_expiry_is_a_check_warning_and_a_metric(self):
        sink = self.sink()
        metrics_port = free_port()
        m = self.moat(sink, cert=self.client, start=False, server_extra=f'metrics_listen = "127.0.0.1:{metrics_port}"')
        code, out = self.check(m)
        self.assertEqual(code, 0, out)
        cert = os.path.join(m.dir, "client.pem")
        r = subprocess.run(["openssl", "x509", "-enddate", "-noout", "-in", cert], capture_output=True, text=True,
                           check=True, timeout=60)
        not_after = int(ssl.cert_time_to_seconds(r.stdout.strip().split("=", 1)[1]))
        date = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(not_after))
        self.assertRegex(out, re.escape(
            f"{m.config_path}:{self.line_of(m, 'tls_cert')}: warning: [[route]] tls_cert: the certificate in {cert} "
            f"expires on {date} (in ") + r"(1 day|2 days)\): renew it and reload \(SIGHUP\)")
        m.start()
        series = f'moat_tls_certificate_expiry_timestamp_seconds{{client_cert="{cert}"}}'
        self.assertEqual(scrape(metrics_port).get(series), float(not_after))


if __name__ == "__main__":
    unittest.main()
