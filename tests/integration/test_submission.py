"""SMTP AUTH (RFC 4954) and the submission listener (RFC 6409): the real daemon on loopback
with a certificate and a users file the test makes (hashes by `openssl passwd -6`), driven
by Python's smtplib and swaks, relaying to a sink the test owns. Only 127.0.0.1 is used."""

import base64
import os
import re
import signal
import select
import smtplib
import subprocess
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from harness import class_temp_dir, client_tls, free_port, make_cert, owned_moat, owned_sink  # noqa: E402

PASSWORDS = {"alice": "correct horse", "bob@example.test": "b0b's password", "jörg": "pässwörd"}


def crypt_hash(password):
    r = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password.encode(), capture_output=True,
                       check=True, timeout=30)
    return r.stdout.decode().strip()


SENDERS = {"bob@example.test": "bob@example.test,@bob.test"}  # alice and jörg: any sender


def write_users(path, passwords, extra=""):
    with open(path, "w") as f:
        f.write("# Moat submission users\n")
        for name, pw in passwords.items():
            f.write(f"{name}:{crypt_hash(pw)}" + (f":{SENDERS[name]}" if name in SENDERS else "") + "\n")
        f.write(extra)


def tls_auth_settings(cert):
    """Listener lines: STARTTLS with `cert` (make_cert's pair), AUTH against the "users" file."""
    return f'tls_cert = "{cert[0]}"\ntls_key = "{cert[1]}"\nauth_users = "users"'


def set_up_tls_auth_daemon(cls, prefix, listener_mode="", second_listener=None, **moat_kw):
    """For a test class: a temporary folder with a certificate (cls.tmp, cls.cert), a Sink
    (cls.sink) and a daemon, not yet started, that relays everything to it (cls.moat), its
    listener offering STARTTLS and AUTH (`listener_mode`: lines before those); all stopped
    and removed after the class's last test. `second_listener`: (port, mode) of another
    listener with the same TLS and AUTH. `moat_kw`: more of Moat's keywords."""
    cls.tmp = class_temp_dir(cls, prefix)
    cls.cert = make_cert(cls.tmp)
    cls.sink = owned_sink(cls)
    tls = tls_auth_settings(cls.cert)
    if second_listener:
        port, mode = second_listener
        moat_kw["extra"] = f'\n[[listener]]\naddress = "127.0.0.1:{port}"\nmode = "{mode}"\n{tls}\n'
    cls.moat = owned_moat(cls, routes=[(None, f"smtp:127.0.0.1:{cls.sink.port}")],
                          listener_extra=listener_mode + tls, start=False, **moat_kw)



def b64(s):
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def auth_plain(s, user, password):
    """AUTH PLAIN with an initial response, UTF-8 as RFC 4616 wants (smtplib's login() sends
    only ASCII and tries every mechanism in turn, two failures a call)."""
    return s.docmd("AUTH", "PLAIN " + b64("\0" + user + "\0" + password))


class SubmissionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.metrics_port = free_port()
        set_up_tls_auth_daemon(cls, "moat-sub-", listener_mode='mode = "submission"\n',
                               networks=["127.0.0.0/8"],  # a submission listener wants AUTH even from these
                               server_extra=f'metrics_listen = "127.0.0.1:{cls.metrics_port}"')
        cls.users = os.path.join(cls.moat.dir, "users")
        write_users(cls.users, PASSWORDS)
        cls.moat.start()

    def tls_session(self):
        s = self.moat.smtp()
        s.starttls(context=client_tls())
        s.ehlo()
        return s

    def test_auth_is_offered_only_over_tls(self):
        s = self.moat.smtp()
        s.ehlo()
        self.assertFalse(s.has_extn("auth"))
        self.assertTrue(s.has_extn("starttls"))
        # Asked anyway, before TLS: 538 (RFC 4954 §4), no password read.
        code, msg = auth_plain(s, "alice", PASSWORDS["alice"])
        self.assertEqual(code, 538, msg)
        self.assertIn(b"5.7.11", msg)
        s.starttls(context=client_tls())
        s.ehlo()
        self.assertTrue(s.has_extn("auth"))
        self.assertEqual(s.esmtp_features["auth"].split(), ["PLAIN", "LOGIN"])
        s.quit()

    def test_mail_needs_auth_first(self):
        s = self.moat.smtp()
        s.ehlo()
        code, msg = s.mail("a@sender.test")
        self.assertEqual(code, 530, msg)
        self.assertIn(b"STARTTLS", msg)
        s.starttls(context=client_tls())
        s.ehlo()
        code, msg = s.mail("a@sender.test")
        self.assertEqual((code, msg), (530, b"5.7.0 Authentication required"))
        s.quit()
        ev = self.moat.wait_log(event="reject", reply="530 5.7.0 Authentication required")
        self.assertEqual(ev["from"], "a@sender.test")

    def test_plain_then_relay_to_any_domain(self):
        before = len(self.sink.messages)
        s = self.tls_session()
        code, msg = s.login("alice", PASSWORDS["alice"])  # smtplib picks PLAIN
        self.assertEqual((code, msg), (235, b"2.7.0 Authentication successful"))
        # AUTH= on MAIL (RFC 4954 §5) is taken where AUTH is offered.
        code, _ = s.docmd("MAIL", "FROM:<alice@example.test> AUTH=<>")
        self.assertEqual(code, 250)
        self.assertEqual(s.rcpt("someone@elsewhere.test")[0], 250)
        code, _ = s.data(b"Subject: submitted\r\n\r\nhello from alice\r\n")
        self.assertEqual(code, 250)
        s.quit()
        msgs = self.sink.wait_messages(before + 1)
        got = msgs[before]
        self.assertEqual(got["rcpts"], ["someone@elsewhere.test"])
        received = got["data"].split(b"\r\n\r\n", 1)[0]
        self.assertIn(b"with ESMTPSA id", received)
        ev = self.moat.wait_log(event="auth", result="pass", user="alice")
        self.assertEqual(ev["mechanism"], "PLAIN")
        self.assertEqual(ev["level"], "info")
        # The password is in no log line, in clear or in base64.
        with open(self.moat.log_path, "rb") as f:
            log = f.read()
        self.assertNotIn(PASSWORDS["alice"].encode(), log)
        self.assertNotIn(b64("\0alice\0" + PASSWORDS["alice"]).encode(), log)

    def test_login_with_and_without_an_initial_response(self):
        for initial in (True, False):
            with self.subTest(initial_response=initial):
                s = self.tls_session()
                s.user, s.password = "bob@example.test", PASSWORDS["bob@example.test"]
                code, msg = s.auth("LOGIN", s.auth_login, initial_response_ok=initial)
                self.assertEqual(code, 235, msg)
                s.quit()
        self.moat.wait_log(event="auth", result="pass", user="bob@example.test", mechanism="LOGIN", count=2)

    def auth_metrics(self):
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        return {r: int(re.search(rf'^moat_auth_total{{result="{r}"}} (\d+)$', body, re.M).group(1))
                for r in ("pass", "fail")}

    def test_metrics_count_auth_attempts(self):
        before = self.auth_metrics()
        s = self.tls_session()
        self.assertEqual(auth_plain(s, "alice", "nope")[0], 535)
        self.assertEqual(auth_plain(s, "alice", PASSWORDS["alice"])[0], 235)
        s.quit()
        after = self.auth_metrics()
        self.assertEqual(after["pass"], before["pass"] + 1)
        self.assertEqual(after["fail"], before["fail"] + 1)

    def test_a_user_with_senders_may_use_only_those(self):
        s = self.tls_session()
        self.assertEqual(auth_plain(s, "bob@example.test", PASSWORDS["bob@example.test"])[0], 235)
        code, msg = s.mail("ceo@example.test")
        self.assertEqual(code, 553, msg)
        self.assertEqual(msg, b"5.7.1 <ceo@example.test>: Sender address rejected: not owned by user bob@example.test")
        for sender in ("Bob@Example.TEST", "anyone@bob.test", ""):
            with self.subTest(sender=sender):
                self.assertEqual(s.mail(sender)[0], 250)
                s.rset()
        s.quit()
        ev = self.moat.wait_log(event="reject", user="bob@example.test")
        self.assertEqual(ev["from"], "ceo@example.test")
        self.assertTrue(ev["reply"].startswith("553 5.7.1 "))

    def test_a_wrong_password_gets_535_and_the_session_lives_on(self):
        s = self.tls_session()
        code, msg = auth_plain(s, "alice", "wrong horse")
        self.assertEqual((code, msg), (535, b"5.7.8 Authentication credentials invalid"))
        ev = self.moat.wait_log(event="auth", result="fail", user="alice")
        self.assertEqual(ev["level"], "warn")
        self.assertEqual(ev["client_ip"], "127.0.0.1")
        # An unknown name gets the same answer.
        self.assertEqual(auth_plain(s, "mallory", "correct horse"), (535, b"5.7.8 Authentication credentials invalid"))
        self.assertEqual(auth_plain(s, "alice", PASSWORDS["alice"])[0], 235)
        # Once only (RFC 4954 §4).
        self.assertEqual(auth_plain(s, "alice", PASSWORDS["alice"])[0], 503)
        s.quit()

    def test_acting_for_another_identity_is_refused(self):
        s = self.tls_session()
        code, msg = s.docmd("AUTH", "PLAIN " + b64("bob@example.test\0alice\0" + PASSWORDS["alice"]))
        self.assertEqual(code, 535, msg)
        self.assertIn(b"acting for another identity", msg)
        s.quit()
        ev = self.moat.wait_log(event="auth", result="fail", user="alice",
                                reason="Authentication credentials invalid: acting for another identity is not permitted")
        self.assertEqual(ev["mechanism"], "PLAIN")

    def test_utf8_names_and_passwords(self):
        s = self.tls_session()
        self.assertEqual(auth_plain(s, "jörg", "pässwörd")[0], 235)
        s.quit()
        s = self.tls_session()
        self.assertEqual(auth_plain(s, "jörg", "passwörd")[0], 535)
        s.quit()

    def test_three_failures_close_the_session(self):
        s = self.tls_session()
        for i in range(2):
            code, msg = auth_plain(s, "alice", f"guess{i}")
            self.assertEqual(code, 535, msg)
        code, msg = auth_plain(s, "alice", "guess2")
        self.assertEqual(code, 535, msg)
        # The 421 follows the third 535, and the connection closes.
        code, msg = s.getreply()
        self.assertEqual(code, 421, msg)
        self.assertIn(b"too many failed authentication attempts", msg)
        with self.assertRaises(smtplib.SMTPServerDisconnected):
            s.noop()

    def test_cancel_unknown_mechanism_and_bad_base64(self):
        s = self.tls_session()
        code, msg = s.docmd("AUTH", "LOGIN")
        self.assertEqual((code, msg), (334, b"VXNlcm5hbWU6"))
        code, msg = s.docmd("*")
        self.assertEqual((code, msg), (501, b"5.0.0 Authentication cancelled"))
        code, _ = s.docmd("AUTH", "CRAM-MD5")
        self.assertEqual(code, 504)
        code, msg = s.docmd("AUTH", "PLAIN")
        self.assertEqual(code, 334)
        code, msg = s.docmd("not base64!")
        self.assertEqual(code, 501, msg)
        self.assertIn(b"5.5.2", msg)
        # The session is still usable: the line after a refused exchange is a command again.
        self.assertEqual(s.noop()[0], 250)
        self.assertEqual(s.login("alice", PASSWORDS["alice"])[0], 235)
        s.quit()

    def test_long_sasl_lines_are_read_whole_other_lines_keep_their_limit(self):
        # The longest credentials the SASL code takes (RFC 4616: 255-octet names; passwords
        # up to 1024 octets): 2048 octets of base64, beyond the 2048-octet command line with
        # its CRLF. RFC 4954 §4 wants them read whole: a 535 (no such user), not a 500.
        user = "u" * 255
        response = b64(user + "\0" + user + "\0" + "p" * 1024)
        self.assertEqual(len(response), 2048)
        s = self.tls_session()
        self.assertEqual(s.docmd("AUTH", "PLAIN")[0], 334)
        self.assertEqual(s.docmd(response), (535, b"5.7.8 Authentication credentials invalid"))
        s.quit()
        ev = self.moat.wait_log(event="auth", user=user, result="fail")
        self.assertEqual(ev["reason"], "wrong user name or password")
        # The same as an initial response on the AUTH line, as smtplib sends it.
        s = self.tls_session()
        self.assertEqual(s.docmd("AUTH", "PLAIN " + response), (535, b"5.7.8 Authentication credentials invalid"))
        s.quit()
        # 12288 octets, the response length RFC 4954 calls enough, reach the mechanism; one
        # more is refused with 500 5.5.6, and the session reads commands again.
        s = self.tls_session()
        self.assertEqual(s.docmd("AUTH", "PLAIN")[0], 334)
        code, msg = s.docmd("A" * 12288)
        self.assertEqual(code, 501, msg)
        self.assertEqual(s.docmd("AUTH", "PLAIN")[0], 334)
        self.assertEqual(s.docmd("A" * 12289), (500, b"5.5.6 Authentication exchange line is too long"))
        self.assertEqual(s.noop()[0], 250)
        s.quit()
        # Every other command line keeps 2048 octets with its CRLF, before and after an AUTH.
        s = self.tls_session()
        self.assertEqual(s.docmd("NOOP", "x" * (2048 - 7))[0], 250)
        self.assertEqual(s.docmd("NOOP", "x" * (2049 - 7)), (500, b"5.5.2 Line too long"))
        self.assertEqual(s.login("alice", PASSWORDS["alice"])[0], 235)
        self.assertEqual(s.docmd("NOOP", "x" * (2049 - 7)), (500, b"5.5.2 Line too long"))
        s.quit()

    def test_swaks_submits_with_auth(self):
        before = len(self.sink.messages)
        r = subprocess.run(["swaks", "--server", f"127.0.0.1:{self.moat.port}", "--tls", "--auth", "LOGIN",
                            "--auth-user", "alice", "--auth-password", PASSWORDS["alice"],
                            "--from", "alice@example.test", "--to", "friend@elsewhere.test",
                            "--helo", "laptop.test"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("235 2.7.0", r.stdout)
        self.sink.wait_messages(before + 1)

    def test_sighup_rereads_the_users_file_and_refuses_a_broken_one(self):
        try:
            write_users(self.users, {**PASSWORDS, "carol": "c4rol"})
            self.moat.signal(signal.SIGHUP)
            self.moat.wait_log(event="reload", ok=True)
            s = self.tls_session()
            self.assertEqual(s.login("carol", "c4rol")[0], 235)
            s.quit()
            # A broken users file: the reload is refused with FILE:LINE, carol stays.
            write_users(self.users, {"carol": "c4rol"}, extra="dave:$1$saltsalt$abcdefghijklmnopqrstuv\n")
            self.moat.signal(signal.SIGHUP)
            ev = self.moat.wait_log(event="reload", ok=False)
            self.assertTrue(any(e.startswith(self.users + ":3: \"dave\": a legacy hash method") for e in ev["errors"]),
                            ev)
            s = self.tls_session()
            self.assertEqual(s.login("alice", PASSWORDS["alice"])[0], 235)
            s.quit()
        finally:
            write_users(self.users, PASSWORDS)
            self.moat.signal(signal.SIGHUP)
            self.moat.wait_log(event="reload", ok=True, count=2)


class OptionalAuthTest(unittest.TestCase):
    """AUTH on an `smtp` listener (the MX port) and on an `smtps` one: mail for the relay
    domains needs none; relaying anywhere else needs it."""

    @classmethod
    def setUpClass(cls):
        cls.smtps_port = free_port()
        set_up_tls_auth_daemon(cls, "moat-auth-", second_listener=(cls.smtps_port, "smtps"),
                               networks=["10.255.255.0/24"])  # loopback is not a relay client here
        write_users(os.path.join(cls.moat.dir, "users"), PASSWORDS)
        cls.moat.start()
        cls.moat.wait_log(event="listen", address=f"127.0.0.1:{cls.smtps_port}")
        cls.moat.port = cls.moat.wait_log(event="listen", address="127.0.0.1:0")["port"]  # the smtp listener

    def test_relaying_needs_auth_local_mail_does_not(self):
        s = self.moat.smtp()
        s.starttls(context=client_tls())
        s.ehlo()
        self.assertTrue(s.has_extn("auth"))
        s.mail("a@sender.test")
        self.assertEqual(s.rcpt("user@example.test")[0], 250)
        code, msg = s.rcpt("someone@elsewhere.test")
        self.assertEqual(code, 554, msg)
        s.rset()
        self.assertEqual(s.login("alice", PASSWORDS["alice"])[0], 235)
        s.mail("alice@example.test")
        self.assertEqual(s.rcpt("someone@elsewhere.test")[0], 250)
        s.quit()

    def test_smtps_offers_auth_at_once(self):
        before = len(self.sink.messages)
        s = smtplib.SMTP_SSL("127.0.0.1", self.smtps_port, local_hostname="client.test", timeout=30,
                             context=client_tls())
        s.ehlo()
        self.assertTrue(s.has_extn("auth"))
        self.assertEqual(s.login("alice", PASSWORDS["alice"])[0], 235)
        s.sendmail("alice@example.test", ["far@elsewhere.test"], b"Subject: over smtps\r\n\r\nx\r\n")
        s.quit()
        msg = self.sink.wait_messages(before + 1)[before]
        self.assertIn(b"with ESMTPSA id", msg["data"].split(b"\r\n\r\n", 1)[0])


class ThreadPoolTest(unittest.TestCase):
    """crypt(3) runs on libuv's thread pool, which the spool's writes and fsyncs share. Clients
    that only guess passwords (no account needed) must not hold every thread of it, or the
    250 to other clients' DATA waits on their guesses. Two pool threads here, the daemon's
    own choice being 8: two guessing sessions would hold them all."""

    @classmethod
    def setUpClass(cls):
        set_up_tls_auth_daemon(cls, "moat-pool-", networks=["10.255.255.0/24"])
        # An expensive hash (sha512crypt, about two seconds) is what each guess costs.
        r = subprocess.run(["openssl", "passwd", "-6", "-stdin", "-salt", "rounds=10000000$saltsalt"],
                           input=b"slow password", capture_output=True, check=True, timeout=60)
        with open(os.path.join(cls.moat.dir, "users"), "w") as f:
            f.write("slow:" + r.stdout.decode().strip() + "\n")
        old = os.environ.get("UV_THREADPOOL_SIZE")
        os.environ["UV_THREADPOOL_SIZE"] = "2"
        try:
            cls.moat.start()
        finally:
            if old is None:
                del os.environ["UV_THREADPOOL_SIZE"]
            else:
                os.environ["UV_THREADPOOL_SIZE"] = old

    def test_password_guessing_does_not_hold_up_mail(self):
        guessers = []
        for _ in range(2):
            g = self.moat.smtp()
            g.starttls(context=client_tls())
            g.ehlo()
            guessers.append(g)
        for g in guessers:  # a guess each: seconds of crypt(3)
            g.send(("AUTH PLAIN " + b64("\0slow\0guess") + "\r\n").encode())
        time.sleep(0.2)  # the guesses are on the pool
        s = self.moat.smtp()
        s.ehlo()
        s.mail("someone@sender.test")
        self.assertEqual(s.rcpt("user@example.test")[0], 250)
        code, msg = s.data(b"Subject: inbound\r\n\r\nwhile others guess\r\n")
        self.assertEqual(code, 250, msg)
        s.quit()
        # Order, not time: the 250 came while both guesses were still unanswered. Before,
        # the spool's sync waited behind them, and the 535s went out first.
        for g in guessers:
            readable, _, _ = select.select([g.sock], [], [], 0)
            self.assertFalse(readable or g.sock.pending(), "a guess was answered before the 250")
        for g in guessers:
            self.assertEqual(g.getreply()[0], 535)
            g.quit()

if __name__ == "__main__":
    unittest.main()
