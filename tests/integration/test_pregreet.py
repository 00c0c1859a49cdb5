"""[connection] pregreet_wait: the greeting's first line (220-) at once and its last (220) after
the wait; a client that talks before the greeting is complete (RFC 5321 §3.1, §4.3.1) is a
pregreeter: logged, and with pregreet_action "reject" answered 554 5.5.1 and then 503 until it
quits. Relay networks and connection.allow are greeted at once with one line. The real daemon
on loopback; clients are told apart by their source address in 127.0.0.0/8."""

import os
import re
import smtplib
import signal
import socket
import ssl
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import RawClient, free_port, make_cert, owned_moat, scrape  # noqa: E402

WAIT = 0.5  # pregreet_wait in these tests, seconds
GREETING = "mx.moat.test ESMTP Moat"
MESSAGE = "From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"


def connect(port, source="127.0.0.1"):
    c = RawClient.__new__(RawClient)
    c.sock = socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0))
    c.buf = b""
    return c


def first_line(c):
    """The first line the server sends, with its CRLF, and the seconds it took."""
    start = time.monotonic()
    while b"\r\n" not in c.buf:
        chunk = c.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed; got %r" % c.buf)
        c.buf += chunk
    line, c.buf = c.buf.split(b"\r\n", 1)
    return line + b"\r\n", time.monotonic() - start


def send_mail(test, c):
    """A whole transaction on a greeted raw client: asserts the 250 to the data."""
    c.send("EHLO client.test\r\n")
    ehlo = c.read_reply()
    test.assertEqual(ehlo[-1][0], 250)
    test.assertIn((250, "PIPELINING"), ehlo)
    c.send("MAIL FROM:<alice@sender.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    test.assertEqual([c.code() for _ in range(3)], [250, 250, 354])
    c.send(MESSAGE + ".\r\n")
    test.assertEqual(c.code(), 250)
    c.send("QUIT\r\n")
    test.assertEqual(c.code(), 221)


class PregreetRejectTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.moat = owned_moat(cls, networks=["10.255.255.0/24"],  # loopback is not a relay client here
                              extra=f'\n[connection]\npregreet_wait = "{int(WAIT * 1000)}ms"\nallow = ["127.0.0.5"]\n')

    def test_a_client_that_talks_first_gets_554_then_503_and_sends_no_mail(self):
        c = connect(self.moat.port, "127.0.0.2")
        self.assertEqual(first_line(c)[0], f"220-{GREETING}\r\n".encode())
        c.send("EHLO bot.test\r\n")  # before the greeting's last line
        self.assertEqual(c.read_reply(), [(220, GREETING)])
        self.assertEqual(c.read_reply(), [(554, "5.5.1 Error: SMTP protocol violation: talked before the greeting")])
        for line in ("EHLO bot.test", "MAIL FROM:<a@sender.test>", "RCPT TO:<bob@example.test>"):
            c.send(line + "\r\n")
            self.assertEqual(c.read_reply(), [(503, "5.5.1 Error: access denied, send QUIT")])
        c.send("QUIT\r\n")
        self.assertEqual(c.code(), 221)
        self.assertEqual(c.sock.recv(10), b"")
        c.close()
        ev = self.moat.wait_log(event="pregreet", client_ip="127.0.0.2")
        self.assertEqual(ev["bytes"], "EHLO bot.test\\x0d\\x0a")
        self.assertEqual(ev["action"], "reject")
        self.assertLess(ev["after_ms"], WAIT * 1000)
        rej = self.moat.wait_log(event="reject", client_ip="127.0.0.2", stage="connect")
        self.assertEqual(rej["session"], ev["session"])
        self.assertEqual(rej["reason"], "pregreet")
        self.assertEqual(rej["reply"], "554 5.5.1 Error: SMTP protocol violation: talked before the greeting")
        self.assertEqual(self.moat.find_logs(event="accept", client_ip="127.0.0.2"), [])

    def test_a_bot_that_sends_all_at_once_is_logged_with_a_capped_prefix(self):
        c = connect(self.moat.port, "127.0.0.3")
        burst = "EHLO bot.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n" + "x" * 200
        c.send(burst)
        self.assertEqual(c.read_reply(), [(220, GREETING), (220, GREETING)])
        replies = [c.read_reply()[-1][0] for _ in range(4)]
        self.assertEqual(replies, [554, 503, 503, 503])
        c.close()
        ev = self.moat.wait_log(event="pregreet", client_ip="127.0.0.3")
        self.assertEqual(ev["bytes"], burst[:100].replace("\r", "\\x0d").replace("\n", "\\x0a"))
        self.assertEqual(self.moat.find_logs(event="accept", client_ip="127.0.0.3"), [])

    def test_a_client_that_waits_gets_a_multiline_greeting_and_sends_mail(self):
        c = connect(self.moat.port, "127.0.0.4")
        start = time.monotonic()
        self.assertEqual(first_line(c)[0], f"220-{GREETING}\r\n".encode())
        self.assertEqual(c.buf, b"")  # nothing else yet: the greeting's last line waits
        line, _ = first_line(c)
        self.assertEqual(line, f"220 {GREETING}\r\n".encode())
        self.assertGreaterEqual(time.monotonic() - start, WAIT * 0.9)
        send_mail(self, c)
        c.close()
        self.moat.wait_log(event="accept", client_ip="127.0.0.4")
        self.assertEqual(self.moat.find_logs(event="pregreet", client_ip="127.0.0.4"), [])

    def test_smtplib_waits_for_the_whole_greeting_and_sends_mail(self):
        s = smtplib.SMTP(local_hostname="client.test", timeout=30)
        code, msg = s.connect("127.0.0.1", self.moat.port, source_address=("127.0.0.6", 0))
        self.assertEqual((code, msg), (220, f"{GREETING}\n{GREETING}".encode()))
        s.sendmail("alice@sender.test", ["bob@example.test"], MESSAGE)
        s.quit()
        self.moat.wait_log(event="accept", client_ip="127.0.0.6")
        self.assertEqual(self.moat.find_logs(event="pregreet", client_ip="127.0.0.6"), [])

    def test_connection_allow_is_greeted_at_once_with_one_line(self):
        c = connect(self.moat.port, "127.0.0.5")
        c.sock.settimeout(WAIT * 0.8)  # the whole greeting, well before the wait would end
        self.assertEqual(first_line(c)[0], f"220 {GREETING}\r\n".encode())
        c.sock.settimeout(15)
        c.send("QUIT\r\n")
        self.assertEqual(c.code(), 221)
        c.close()

    def test_a_client_that_leaves_during_the_wait_ends_its_session_cleanly(self):
        for source, early in (("127.0.0.7", b""), ("127.0.0.8", b"EHLO bot.test\r\n")):
            with self.subTest(source=source):
                c = connect(self.moat.port, source)
                first_line(c)
                if early:
                    c.send(early)
                c.close()
                ev = self.moat.wait_log(event="disconnect", client_ip=source)
                self.assertEqual(ev["messages"], 0)
                self.assertEqual(self.moat.find_logs(level="error"), [])
        # The daemon goes on greeting others.
        c = connect(self.moat.port, "127.0.0.9")
        self.assertEqual(c.read_reply(), [(220, GREETING), (220, GREETING)])
        c.close()


class PregreetShutdownTest(unittest.TestCase):
    def test_a_shutdown_during_the_wait_completes_the_greeting_before_its_421(self):
        moat = owned_moat(self, networks=["10.255.255.0/24"], extra='\n[connection]\npregreet_wait = "20s"\n')
        c = connect(moat.port, "127.0.0.2")
        self.assertEqual(first_line(c)[0], f"220-{GREETING}\r\n".encode())
        moat.signal(signal.SIGTERM)
        self.assertEqual(c.read_reply(), [(220, GREETING)])  # the multi-line reply stays well-formed
        self.assertEqual(c.read_reply()[-1][0], 421)
        self.assertEqual(c.sock.recv(10), b"")
        c.close()
        _, err = moat.proc.communicate(timeout=30)
        self.assertEqual(moat.proc.returncode, 0, err)


class PregreetLogOnlyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.metrics_port = free_port()
        cls.moat = owned_moat(cls, networks=["10.255.255.0/24"],
                              server_extra=f'metrics_listen = "127.0.0.1:{cls.metrics_port}"',
                              extra=f'\n[connection]\npregreet_wait = "{int(WAIT * 1000)}ms"\npregreet_action = "log"\n')

    def test_a_pregreeter_is_logged_and_its_mail_accepted(self):
        c = connect(self.moat.port, "127.0.0.2")
        c.send("EHLO early.test\r\n")
        self.assertEqual(c.read_reply(), [(220, GREETING), (220, GREETING)])
        ehlo = c.read_reply()  # the early EHLO, answered after the greeting
        self.assertEqual(ehlo[0], (250, "mx.moat.test Hello early.test [127.0.0.2]"))
        c.send("MAIL FROM:<alice@sender.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        self.assertEqual([c.code() for _ in range(3)], [250, 250, 354])
        c.send(MESSAGE + ".\r\n")
        self.assertEqual(c.code(), 250)
        c.send("QUIT\r\n")
        self.assertEqual(c.code(), 221)
        c.close()
        ev = self.moat.wait_log(event="pregreet", client_ip="127.0.0.2")
        self.assertEqual((ev["action"], ev["bytes"]), ("log", "EHLO early.test\\x0d\\x0a"))
        self.moat.wait_log(event="accept", client_ip="127.0.0.2")
        self.assertEqual(self.moat.find_logs(event="reject", client_ip="127.0.0.2"), [])
        self.assertEqual(scrape(self.metrics_port)["moat_pregreet_total"], 1)


class PregreetExemptionsTest(unittest.TestCase):
    def test_a_relay_network_client_is_greeted_at_once_with_one_line(self):
        moat = owned_moat(self, extra='\n[connection]\npregreet_wait = "5s"\n')  # 127.0.0.0/8 relays
        c = connect(moat.port)
        c.sock.settimeout(3)
        self.assertEqual(first_line(c)[0], f"220 {GREETING}\r\n".encode())
        c.sock.settimeout(15)
        send_mail(self, c)
        c.close()
        moat.wait_log(event="accept", client_ip="127.0.0.1")

    def test_submission_and_smtps_listeners_are_greeted_at_once_with_one_line(self):
        smtps_port, smtp_port = free_port(), free_port()
        moat = owned_moat(self, networks=["10.255.255.0/24"], start=False, listener_extra='mode = "submission"\n',
                          extra=f'\n[[listener]]\naddress = "127.0.0.1:{smtps_port}"\nmode = "smtps"\n'
                                f'\n[[listener]]\naddress = "127.0.0.1:{smtp_port}"\n'
                                '\n[connection]\npregreet_wait = "5s"\n')
        cert = make_cert(moat.dir)
        with open(moat.config_path) as f:
            text = f.read()
        tls = f'tls_cert = "{cert[0]}"\ntls_key = "{cert[1]}"\nauth_users = "users"\n'
        hashed = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=b"secret", capture_output=True,
                                check=True, timeout=30).stdout.decode().strip()
        with open(os.path.join(moat.dir, "users"), "w") as f:
            f.write(f"alice:{hashed}\n")
        with open(moat.config_path, "w") as f:  # both TLS listeners: the certificate and AUTH
            f.write(text.replace('mode = "submission"\n', 'mode = "submission"\n' + tls)
                    .replace('mode = "smtps"\n', 'mode = "smtps"\n' + tls))
        moat.start()
        submission_port = moat.find_logs(event="listen", address="127.0.0.1:0")[0]["port"]
        c = connect(submission_port)
        c.sock.settimeout(3)
        self.assertEqual(first_line(c)[0], f"220 {GREETING}\r\n".encode())
        c.close()
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", smtps_port), timeout=3)) as t:
            buf = b""
            while b"\r\n" not in buf:
                chunk = t.recv(4096)
                self.assertTrue(chunk, buf)
                buf += chunk
            self.assertEqual(buf, f"220 {GREETING}\r\n".encode())
        c = connect(smtp_port)  # the same config's port 25 kind of listener does wait
        self.assertEqual(first_line(c)[0], f"220-{GREETING}\r\n".encode())
        c.close()

    def test_off_by_default_the_greeting_is_one_line_at_once(self):
        moat = owned_moat(self, networks=["10.255.255.0/24"])
        c = connect(moat.port, "127.0.0.2")
        c.send("EHLO early.test\r\n")  # no test: taken as ever
        self.assertEqual(c.read_reply(), [(220, GREETING)])
        self.assertEqual(c.code(), 250)
        c.close()
        self.assertEqual(moat.find_logs(event="pregreet"), [])


class PregreetConfigTest(unittest.TestCase):
    def test_check_reports_a_bad_wait_or_action_at_its_line(self):
        for extra, key, message in (
                ('pregreet_wait = "-1s"\n', "pregreet_wait", "expected a duration"),
                ('pregreet_wait = "2m"\n', "pregreet_wait", "must be at most 1m"),
                ('pregreet_action = "drop"\n', "pregreet_action", '"drop" is not one of: reject, log')):
            with self.subTest(extra=extra):
                moat = owned_moat(self, extra="\n[connection]\n" + extra, start=False)
                with open(moat.config_path) as f:
                    text = f.read()
                line = text[:text.index(key)].count("\n") + 1
                r = moat.cli("check", check=False)
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                self.assertRegex(r.stderr, re.escape(f"{moat.config_path}:{line}: connection.{key}: {message}"))


if __name__ == "__main__":
    unittest.main()
