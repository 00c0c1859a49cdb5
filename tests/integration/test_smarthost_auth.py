"""SMTP AUTH on the client side ([[route]] auth_file): Moat hands mail to a smarthost that
wants AUTH (RFC 4954) after STARTTLS, with PLAIN or LOGIN; a refusal or a next hop without
AUTH defers the mail (never bounces it); the password never reaches the log; moat check
refuses an auth_file without a TLS level that never falls back to plain text, and a bad
credentials file, with FILE:LINE, and warns about one others can read."""

import base64
import json
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import make_cert, owned_moat, owned_sink  # noqa: E402

USER = "relay-user@example.test"
PASSWORD = "s3cret:Pa55w0rd"  # with a ':' after the first: the line splits at the first one
WRONG = "not-the-Pa55w0rd"


def secrets(password):
    """What must never show in the log: the password and the base64 forms AUTH sends."""
    return [password, base64.b64encode(password.encode()).decode(),
            base64.b64encode(f"\0{USER}\0{password}".encode()).decode()]


class SmarthostAuthTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="moat-smarthost-")
        cls.cert = make_cert(cls.tmp)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def moat(self, sink, password=PASSWORD, tls="require", start=True):
        """A Moat whose route for example.test goes to `sink` with auth_file = "relay.auth"."""
        route = (f'\n[[route]]\ndomains = ["example.test"]\nto = ["smtp:127.0.0.1:{sink.port}"]\n'
                 f'tls = "{tls}"\nauth_file = "relay.auth"\n')
        m = owned_moat(self, routes=[], extra=route, retry='["1h"]', start=False)
        m.auth_path = os.path.join(m.dir, "relay.auth")
        self.write_auth(m, f"# the smarthost's account\n{USER}:{password}\n")
        if start:
            m.start()
        return m

    @staticmethod
    def write_auth(m, text, mode=0o600):
        with open(m.auth_path, "w") as f:
            f.write(text)
        os.chmod(m.auth_path, mode)

    def send(self, m, subject="auth"):
        s = m.smtp()
        s.sendmail("alice@sender.test", ["bob@example.test"], f"Subject: {subject}\r\n\r\nbody\r\n".encode())
        s.quit()

    def assert_no_secret(self, m, *passwords):
        with open(m.log_path, encoding="utf-8") as f:
            log = f.read()
        for password in passwords:
            for secret in secrets(password):
                self.assertNotIn(secret, log)

    def test_plain_delivers_as_the_configured_user(self):
        sink = owned_sink(self, tls_cert=self.cert, auth=(USER, PASSWORD), require_auth=True)
        m = self.moat(sink)
        self.send(m)
        msg = sink.wait_messages(1)[0]
        self.assertTrue(msg["tls"])
        self.assertEqual(msg["auth"], USER)
        self.assertEqual([(a["mechanism"], a["user"], a["ok"]) for a in sink.auth_attempts], [("PLAIN", USER, True)])
        ev = m.wait_log(event="deliver")
        self.assertEqual(ev["auth"], USER)
        self.assertTrue(ev["tls"])
        # AUTH only after STARTTLS and the EHLO after it; MAIL only after AUTH.
        verbs = [c.split(" ")[0].upper() for c in sink.commands]
        self.assertLess(verbs.index("STARTTLS"), verbs.index("AUTH"))
        self.assertEqual(verbs[verbs.index("AUTH") - 1], "EHLO")
        self.assertLess(verbs.index("AUTH"), verbs.index("MAIL"))
        self.assert_no_secret(m, PASSWORD)

    def test_login_when_the_server_offers_only_login(self):
        sink = owned_sink(self, tls_cert=self.cert, auth=(USER, PASSWORD), auth_mechanisms=("LOGIN",),
                          require_auth=True)
        m = self.moat(sink)
        self.send(m)
        self.assertEqual(sink.wait_messages(1)[0]["auth"], USER)
        self.assertEqual([(a["mechanism"], a["ok"]) for a in sink.auth_attempts], [("LOGIN", True)])
        self.assertEqual(m.wait_log(event="deliver")["auth"], USER)
        self.assert_no_secret(m, PASSWORD)

    def test_wrong_password_defers_and_a_fixed_file_delivers_after_reload(self):
        sink = owned_sink(self, tls_cert=self.cert, auth=(USER, PASSWORD), require_auth=True)
        m = self.moat(sink, password=WRONG)
        self.send(m)
        ev = m.wait_log(event="defer")
        self.assertIn("535", ev["reply"])
        self.assertIn("4.7.0", ev["reply"])
        self.assertIn("SASL authentication", ev["reply"])
        self.assertEqual(sink.messages, [])
        self.assertEqual(m.find_logs(event="bounce"), [])
        listed = json.loads(m.cli("queue", "list", "--json").stdout)
        self.assertEqual(len(listed["messages"]), 1, listed)
        # A broken file is refused at reload with FILE:LINE; the running config stays.
        bad = m.reload_with(m.auth_path, "no colon on this line\n", ok=False)
        self.assertIn(f"{m.auth_path}:1", json.dumps(bad))
        # The fixed file is taken at the next reload; flush tries the message now.
        m.reload_with(m.auth_path, f"{USER}:{PASSWORD}\n")
        m.cli("queue", "flush")
        self.assertEqual(sink.wait_messages(1)[0]["auth"], USER)
        self.assertEqual(m.wait_log(event="deliver")["auth"], USER)
        self.assert_no_secret(m, PASSWORD, WRONG)

    def test_next_hop_without_auth_defers(self):
        sink = owned_sink(self, tls_cert=self.cert)  # STARTTLS, no AUTH
        m = self.moat(sink)
        self.send(m)
        ev = m.wait_log(event="defer")
        self.assertIn("4.7.0", ev["reply"])
        self.assertIn("no AUTH mechanism Moat supports (PLAIN, LOGIN); it offers no AUTH", ev["reply"])
        self.assertEqual(sink.messages, [])
        self.assertNotIn("MAIL", [c.split(" ")[0].upper() for c in sink.commands])
        self.assertEqual(m.find_logs(event="bounce"), [])
        self.assert_no_secret(m, PASSWORD)

    def test_next_hop_with_only_other_mechanisms_defers(self):
        sink = owned_sink(self, tls_cert=self.cert, auth=(USER, PASSWORD), auth_mechanisms=("CRAM-MD5",),
                          require_auth=True)
        m = self.moat(sink)
        self.send(m)
        ev = m.wait_log(event="defer")
        self.assertIn("no AUTH mechanism Moat supports (PLAIN, LOGIN); it offers AUTH CRAM-MD5", ev["reply"])
        self.assertEqual(sink.auth_attempts, [])
        self.assertEqual(sink.messages, [])

    def check(self, m):
        r = m.cli("check", check=False)
        return r.returncode, r.stdout + r.stderr

    def line_of(self, m, key):
        with open(m.config_path) as f:
            return next(i for i, line in enumerate(f, 1) if line.startswith(key + " "))

    def test_check_refuses_auth_file_with_tls_may(self):
        sink = owned_sink(self)
        m = self.moat(sink, tls="may", start=False)
        code, out = self.check(m)
        self.assertNotEqual(code, 0, out)
        self.assertIn(f"{m.config_path}:{self.line_of(m, 'auth_file')}: [[route]].auth_file", out)
        self.assertIn('tls = \\"require\\"', json.dumps(out))

    def test_check_refuses_a_malformed_file_with_its_line(self):
        sink = owned_sink(self)
        m = self.moat(sink, start=False)
        self.write_auth(m, f"# one line only\n{USER}:{PASSWORD}\nsecond:line\n")
        code, out = self.check(m)
        self.assertNotEqual(code, 0, out)
        self.assertIn(f"{m.auth_path}:3:", out)
        self.assertNotIn(PASSWORD, out)
        self.write_auth(m, "\n# no credentials here\n")
        code, out = self.check(m)
        self.assertNotEqual(code, 0, out)
        self.assertIn(f"{m.auth_path}:2: no USERNAME:PASSWORD line", out)

    def test_check_warns_when_others_can_read_the_file(self):
        sink = owned_sink(self)
        m = self.moat(sink, start=False)
        code, out = self.check(m)
        self.assertEqual(code, 0, out)
        self.assertNotIn("auth_file", out)
        self.write_auth(m, f"{USER}:{PASSWORD}\n", mode=0o644)
        code, out = self.check(m)
        self.assertEqual(code, 0, out)
        self.assertIn(f"{m.config_path}:{self.line_of(m, 'auth_file')}: warning: [[route]].auth_file", out)
        self.assertIn("0644", out)


if __name__ == "__main__":
    unittest.main()
