"""Final delivery over LMTP (RFC 2033): [[route]] to = ["lmtp:HOST:PORT"] and
["lmtp:unix:PATH"] against a real Dovecot LMTP server the test runs on 127.0.0.1 and on a
Unix socket in its temp dir (messages compared byte for byte with the Maildir files Dovecot
wrote), a server down then up (the retry delivers), per-recipient replies after DATA from a
scripted LMTP peer (250 delivered, 452 deferred and retried, 550 bounced with a DSN; a
connection that ends among those replies leaves the rest deferred), and bad targets refused
by `moat check` at FILE:LINE. Recipient verification (relay.verify_recipients) against the
same Dovecot, its users then a fixed list: a known user taken at RCPT and delivered, an unknown
one refused with 550 5.1.1 at RCPT, Dovecot down answered per verify_unknown.

Dovecot runs as the test's user, or as its `dovecot` user when the test runs as root; it is
stopped by PID. Every wait is bounded."""

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import ScriptedServer, check_config, free_port, maildir_texts, Moat, sendmail, wait_for  # noqa: E402

SENDER = "alice@sender.test"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
MESSAGE = (b"From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: over LMTP\r\n"
           b"Message-ID: <lmtp-1@sender.test>\r\n\r\n"
           b"first line\r\n.a line with a leading dot\r\n..two dots\r\n\r\n  indented\r\nlast line\r\n")


class Dovecot:
    """Dovecot's LMTP service on 127.0.0.1:`port` and on `socket` (base_dir/lmtp), storing
    each user's mail in Maildir `mail/<local part>` of its own temp dir. With `users` (local
    parts), its userdb is a passwd-file of those users only: any other gets Dovecot's own
    550 5.1.1 at RCPT; without, every user exists."""

    def __init__(self, port, users=None):
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="moat-dovecot-")
        os.chmod(self.dir, 0o755)  # Dovecot's own processes run as its user
        self.base = os.path.join(self.dir, "run")
        self.socket = os.path.join(self.base, "lmtp")
        self.mail = os.path.join(self.dir, "mail")
        os.makedirs(self.mail)
        if os.getuid() == 0:
            user = pwd.getpwnam("dovecot")
            internal, login = "dovecot", "dovenull"
            os.chown(self.mail, user.pw_uid, user.pw_gid)
        else:
            user = pwd.getpwuid(os.getuid())
            internal = login = user.pw_name
        userdb = f"driver = static\n  args = uid={user.pw_uid} gid={user.pw_gid} home={self.dir}/home/%n"
        if users is not None:
            passwd = os.path.join(self.dir, "users")
            with open(passwd, "w") as f:
                for u in users:
                    f.write(f"{u}::{user.pw_uid}:{user.pw_gid}::{self.dir}/home/{u}::\n")
            os.chmod(passwd, 0o644)  # read by Dovecot's auth process, under its own user
            userdb = f"driver = passwd-file\n  args = username_format=%n {passwd}"
        conf = f"""
base_dir = {self.base}
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
protocols = lmtp
ssl = no
listen = 127.0.0.1
default_internal_user = {internal}
default_internal_group = {grp.getgrgid(pwd.getpwnam(internal).pw_gid).gr_name}
default_login_user = {login}
first_valid_uid = 1
mail_location = maildir:{self.mail}/%n
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  {userdb}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
service anvil {{
  chroot =
}}
"""
        self.conf = os.path.join(self.dir, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.proc = None

    def start(self):
        assert os.path.exists(DOVECOT), "dovecot is not installed (deploy/deps.sh installs dovecot-lmtpd)"
        with open(os.path.join(self.dir, "stderr.log"), "wb") as err:
            self.proc = subprocess.Popen([DOVECOT, "-F", "-c", self.conf], stdout=subprocess.DEVNULL, stderr=err)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError("dovecot exited: " + self.log("stderr.log") + self.log())
            if not os.path.exists(self.socket):
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(up, 30, what="Dovecot's LMTP listeners")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self, name="dovecot.log"):
        path = os.path.join(self.dir, name)
        if not os.path.exists(path):
            return ""
        with open(path, errors="replace") as f:
            return f.read()

    def stored(self, local):
        new = os.path.join(self.mail, local, "new")
        if not os.path.isdir(new):
            return []
        out = []
        for name in sorted(os.listdir(new)):
            with open(os.path.join(new, name), "rb") as f:
                out.append(f.read())
        return out


def send(moat, rcpts, body=MESSAGE, sender=SENDER):
    sendmail(moat, sender, rcpts, body)


def dsn_texts(moat, addr=SENDER):
    return maildir_texts(moat, addr)


class ScriptedLmtp(ScriptedServer):
    """An LMTP server on 127.0.0.1 that answers its n-th transaction (0, 1..., whichever
    connection carries it) as `after_data(n, rcpts)` says: the replies to give after the
    message, one per accepted recipient (fewer: the connection is closed after them). Keeps
    each connection's command lines in `transcripts`, each transaction's recipients in
    `transactions`."""

    def __init__(self, after_data):
        self.transcripts = []
        self.transactions = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, text):
                self.wfile.write(text.encode() + b"\r\n")
                self.wfile.flush()

            def handle(self):
                lines = []
                outer.transcripts.append(lines)
                self.request.settimeout(30)
                self.reply("220 lmtp.test LMTP ready")
                rcpts = []
                try:
                    while True:
                        raw = self.rfile.readline(4096)
                        if not raw:
                            return
                        line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                        lines.append(line)
                        verb = line.split(" ")[0].upper()
                        if verb == "LHLO":
                            for ext in ("lmtp.test", "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING"):
                                self.reply(("250 " if ext == "CHUNKING" else "250-") + ext)
                        elif verb in ("EHLO", "HELO"):
                            self.reply("500 5.5.1 this is LMTP")
                        elif verb == "MAIL":
                            rcpts = []
                            self.reply("250 2.1.0 ok")
                        elif verb == "RCPT":
                            rcpts.append(line.split("<", 1)[1].split(">", 1)[0])
                            self.reply("250 2.1.5 ok")
                        elif verb == "DATA":
                            self.reply("354 go ahead")
                            while self.rfile.readline(65536).rstrip(b"\r\n") != b".":
                                pass
                            outer.transactions.append(rcpts)
                            replies = after_data(len(outer.transactions) - 1, rcpts)
                            for r in replies:
                                self.reply(r)
                            if len(replies) < len(rcpts):
                                return  # the connection ends before the other replies
                        elif verb == "QUIT":
                            self.reply("221 bye")
                            return
                        else:
                            self.reply("250 ok")
                except OSError:
                    pass

        super().__init__(Handler)


class DovecotTest(unittest.TestCase):
    def dovecot(self, port=None):
        d = Dovecot(port or free_port())
        self.addCleanup(d.cleanup)
        return d

    def moat(self, routes, **kw):
        m = Moat(routes=routes + [("sender.test", "maildir:mail")],
                 relay_domains=("example.test", "unix.test", "sender.test"), **kw)
        self.addCleanup(m.cleanup)
        return m

    def test_delivered_over_tcp_and_over_the_unix_socket_byte_for_byte(self):
        d = self.dovecot().start()
        inet = f"lmtp:127.0.0.1:{d.port}"
        unix = f"lmtp:unix:{d.socket}"
        m = self.moat([("example.test", inet), ("unix.test", unix)])
        send(m, ["bob@example.test"])
        send(m, ["carol@unix.test"])
        line = m.wait_log(event="deliver", to="bob@example.test")
        self.assertEqual(line["relay"], f"lmtp:127.0.0.1:{d.port}")
        self.assertTrue(line["reply"].startswith("250 2.0.0 <bob@example.test>"), line)
        line = m.wait_log(event="deliver", to="carol@unix.test")
        self.assertEqual(line["relay"], f"lmtp:unix:{d.socket}")
        # Maildir keeps LF line ends; Dovecot puts its Return-Path and Received first, Moat its
        # own headers before the message: the message itself ends the file, byte for byte.
        want = MESSAGE.replace(b"\r\n", b"\n")
        for local in ("bob", "carol"):
            files = wait_for(lambda: d.stored(local), 20, what=f"{local}'s mail in Dovecot's Maildir")
            self.assertEqual(len(files), 1)
            self.assertTrue(files[0].endswith(b"\n" + want), files[0])
            self.assertTrue(files[0].startswith(b"Return-Path: <alice@sender.test>\n"), files[0][:200])
            self.assertIn(b"with LMTP", files[0])
        self.assertIn("Connect from local", d.log())  # the Unix socket, not TCP
        self.assertEqual(m.find_logs(event="defer"), [])

    def test_server_down_then_up_the_retry_delivers(self):
        port = free_port()
        d = self.dovecot(port)
        m = self.moat([("example.test", f"lmtp:127.0.0.1:{port}")], retry='["1s"]')
        send(m, ["dave@example.test"])
        line = m.wait_log(event="defer", to="dave@example.test")
        self.assertEqual(line["relay"], f"lmtp:127.0.0.1:{port}")
        self.assertTrue(line["reply"].startswith("451 4.4.1"), line)
        self.assertEqual(m.find_logs(event="bounce"), [])
        d.start()
        line = m.wait_log(event="deliver", to="dave@example.test", timeout=60)
        self.assertEqual(line["relay"], f"lmtp:127.0.0.1:{port}")
        files = wait_for(lambda: d.stored("dave"), 20, what="dave's mail")
        self.assertTrue(files[0].endswith(b"\n" + MESSAGE.replace(b"\r\n", b"\n")))


class VerifyOverLmtpTest(unittest.TestCase):
    """relay.verify_recipients with the route to a real Dovecot's LMTP service, over TCP and
    over its Unix socket: Moat asks it (LHLO, MAIL FROM:<>, RCPT TO, RSET) at the client's
    RCPT; a user it knows is taken and delivered, one it refuses gets 550 5.1.1 at RCPT and
    nothing is queued for it; Dovecot down gives verify_unknown's 450 4.1.1."""

    VERIFY = 'verify_recipients = true\nverify_timeout = "10s"'

    def moat(self, routes):
        m = Moat(routes=routes + [("sender.test", "maildir:mail")],
                 relay_domains=("example.test", "unix.test", "sender.test"), relay_extra=self.VERIFY)
        self.addCleanup(m.cleanup)
        return m

    def rcpts(self, m, rcpts):
        """One session: each RCPT's (code, text); then the message if any was taken."""
        s = m.smtp()
        try:
            s.ehlo()
            self.assertEqual(s.mail(SENDER)[0], 250)
            out = {}
            for r in rcpts:
                code, text = s.rcpt(r)
                out[r] = (code, text.decode())
            if any(code == 250 for code, _ in out.values()):
                self.assertEqual(s.data(MESSAGE)[0], 250)
            else:
                s.rset()
            s.quit()
        finally:
            s.close()
        return out

    def test_known_users_taken_and_delivered_unknown_refused_at_rcpt(self):
        d = Dovecot(free_port(), users=["bob", "carol"])
        self.addCleanup(d.cleanup)
        d.start()
        inet = f"lmtp:127.0.0.1:{d.port}"
        unix = f"lmtp:unix:{d.socket}"
        m = self.moat([("example.test", inet), ("unix.test", unix)])
        for known, unknown, relay in (("bob@example.test", "nobody@example.test", inet),
                                      ("carol@unix.test", "ghost@unix.test", unix)):
            with self.subTest(relay=relay):
                got = self.rcpts(m, [unknown, known])
                self.assertEqual(got[known][0], 250, got)
                code, text = got[unknown]
                self.assertEqual(code, 550, got)
                # Dovecot's own refusal, quoted after Moat's.
                self.assertTrue(text.startswith(f"5.1.1 <{unknown}>: Recipient address rejected: undeliverable "
                                                f"address: 550 5.1.1 <{unknown}> User doesn't exist"), text)
                ev = m.wait_log(event="verify", rcpt=known)
                self.assertEqual(ev["result"], "valid")
                self.assertEqual(ev["relay"], relay)
                ev = m.wait_log(event="verify", rcpt=unknown)
                self.assertEqual(ev["result"], "invalid")
                self.assertEqual(ev["relay"], relay)
                rej = m.wait_log(event="reject", to=unknown)
                self.assertEqual(rej["stage"], "rcpt")
                self.assertEqual(rej["reason"], "verify")
                # Only the known user was queued, and delivered by Dovecot.
                acc = m.wait_log(event="accept", to=[known])
                line = m.wait_log(event="deliver", to=known, queue_id=acc["queue_id"])
                self.assertEqual(line["relay"], relay)
                files = wait_for(lambda: d.stored(known.split("@")[0]), 20, what=f"{known}'s mail")
                self.assertEqual(len(files), 1)
                self.assertTrue(files[0].endswith(b"\n" + MESSAGE.replace(b"\r\n", b"\n")), files[0])
                self.assertEqual(d.stored(unknown.split("@")[0]), [])
        # The answers are cached: asked again, Dovecot is not.
        got = self.rcpts(m, ["nobody@example.test"])
        self.assertEqual(got["nobody@example.test"][0], 550)
        ev = m.wait_log(event="verify", rcpt="nobody@example.test", result="cached")
        self.assertEqual(ev["cached_result"], "invalid")
        self.assertEqual(len(m.find_logs(event="verify", rcpt="nobody@example.test", result="invalid")), 1)
        # Nothing for the unknown users anywhere: never queued, delivered, deferred or bounced.
        for unknown in ("nobody@example.test", "ghost@unix.test"):
            for event in ("deliver", "defer", "bounce"):
                self.assertEqual(m.find_logs(event=event, to=unknown), [])
        wait_for(lambda: json.loads(m.cli("queue", "list", "--json").stdout)["messages"] == [], 20,
                 what="an empty queue")
        self.assertIn("Connect from local", d.log())  # the probe and delivery over the Unix socket

    def test_dovecot_down_gives_verify_unknowns_450(self):
        d = Dovecot(free_port(), users=["bob"])  # never started: nothing on its port or socket
        self.addCleanup(d.cleanup)
        inet = f"lmtp:127.0.0.1:{d.port}"
        unix = f"lmtp:unix:{d.socket}"
        m = self.moat([("example.test", inet), ("unix.test", unix)])
        for rcpt, relay in (("bob@example.test", inet), ("bob@unix.test", unix)):
            with self.subTest(relay=relay):
                code, text = self.rcpts(m, [rcpt])[rcpt]
                self.assertEqual(code, 450)
                self.assertTrue(text.startswith(f"4.1.1 <{rcpt}>: Recipient address rejected: unverified address: "
                                                f"{relay}: "), text)
                ev = m.wait_log(event="verify", rcpt=rcpt)
                self.assertEqual(ev["result"], "unknown")
                self.assertIn(relay, ev["reply"])
                self.assertEqual(m.wait_log(event="reject", to=rcpt)["reason"], "verify")
        self.assertEqual(m.find_logs(event="accept"), [])


class ScriptedLmtpTest(unittest.TestCase):
    def start(self, after_data, **kw):
        self.hop = ScriptedLmtp(after_data)
        self.addCleanup(self.hop.stop)
        m = Moat(routes=[("example.test", f"lmtp:127.0.0.1:{self.hop.port}"), ("sender.test", "maildir:mail")],
                 relay_domains=("example.test", "sender.test"), **kw)
        self.addCleanup(m.cleanup)
        return m

    def test_one_reply_per_recipient_delivered_deferred_bounced(self):
        # RFC 2033 §4.2: after the message, one reply per accepted RCPT, in RCPT order; each
        # is that recipient's outcome. The deferred one goes again alone.
        def after_data(n, rcpts):
            if n == 0:
                return ["250 2.0.0 <a@example.test> saved", "452 4.2.2 <b@example.test> mailbox full",
                        "550 5.1.1 <c@example.test> no such mailbox"]
            return ["250 2.0.0 <%s> saved on retry" % r for r in rcpts]
        m = self.start(after_data, retry='["1s"]')
        send(m, ["a@example.test", "b@example.test", "c@example.test"])
        relay = f"lmtp:127.0.0.1:{self.hop.port}"
        line = m.wait_log(event="deliver", to="a@example.test")
        self.assertEqual(line["reply"], "250 2.0.0 <a@example.test> saved")
        self.assertEqual(line["relay"], relay)
        line = m.wait_log(event="defer", to="b@example.test")
        self.assertEqual(line["reply"], "452 4.2.2 <b@example.test> mailbox full")
        self.assertEqual(line["relay"], relay)
        line = m.wait_log(event="bounce", to="c@example.test")
        self.assertEqual(line["reply"], "550 5.1.1 <c@example.test> no such mailbox")
        self.assertEqual(line["relay"], relay)
        dsn = wait_for(lambda: dsn_texts(m), 30, what="the DSN to the sender")[0]
        self.assertIn("Final-Recipient: rfc822; c@example.test", dsn)
        self.assertIn("Action: failed", dsn)
        self.assertIn("Status: 5.1.1", dsn)
        self.assertIn("Diagnostic-Code: smtp; 550 5.1.1 <c@example.test> no such mailbox", dsn)
        self.assertNotIn("a@example.test", dsn.split("message/delivery-status")[1].split("text/rfc822-headers")[0])
        # The retry: b alone, delivered.
        line = m.wait_log(event="deliver", to="b@example.test", timeout=60)
        self.assertEqual(line["reply"], "250 2.0.0 <b@example.test> saved on retry")
        first = self.hop.transcripts[0]
        self.assertTrue(first[0].startswith("LHLO "), first)
        self.assertFalse([l for t in self.hop.transcripts for l in t if l.upper().startswith(("EHLO", "HELO", "BDAT"))])
        self.assertEqual(self.hop.transactions, [["a@example.test", "b@example.test", "c@example.test"],
                                                 ["b@example.test"]])
        self.assertEqual(len(m.find_logs(event="deliver", to="a@example.test")), 1)
        self.assertEqual(len(m.find_logs(event="bounce")), 1)

    def test_a_connection_ending_among_the_replies_defers_the_unanswered(self):
        def after_data(n, rcpts):
            if n == 0:
                return ["250 2.0.0 <a@example.test> saved"]  # then the connection ends
            return ["250 2.0.0 <%s> saved on retry" % r for r in rcpts]
        m = self.start(after_data, retry='["1s"]')
        send(m, ["a@example.test", "b@example.test", "c@example.test"])
        m.wait_log(event="deliver", to="a@example.test")
        for r in ("b@example.test", "c@example.test"):
            line = m.wait_log(event="defer", to=r)
            self.assertTrue(line["reply"].startswith("451 4.4.2 "), line)
            self.assertIn("no LMTP reply for this recipient", line["reply"])
        self.assertEqual(m.find_logs(event="bounce"), [])
        for r in ("b@example.test", "c@example.test"):
            m.wait_log(event="deliver", to=r, timeout=60)
        # a was delivered once: never sent again.
        self.assertEqual(sorted(r for t in self.hop.transactions[1:] for r in t), ["b@example.test", "c@example.test"])
        self.assertEqual(len(self.hop.transcripts), 2)  # the first connection was not used again
        self.assertEqual(len(m.find_logs(event="deliver", to="a@example.test")), 1)


class ConfigTest(unittest.TestCase):
    def test_bad_lmtp_targets_are_refused_at_their_line(self):
        head = ('[server]\nhostname = "mx.test"\nspool_dir = "spool"\ncontrol_socket = "moat.sock"\n\n'
                '[[listener]]\naddress = "127.0.0.1:0"\n\n')
        for target, message in (("lmtp:127.0.0.1", "expected lmtp:HOST:PORT (the port is required)"),
                                ("lmtp:[::1]", "expected lmtp:HOST:PORT"),
                                ("lmtp:unix:", "expected lmtp:unix:/PATH/TO/SOCKET"),
                                ("lmtp:unix:/" + "x" * 120, "longer than a Unix socket address holds")):
            with self.subTest(target=target):
                path, r = check_config(self, head + f'[[route]]\nto = ["{target}"]\n')
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertIn(f'{path}:10: [[route]].to: "{target}": ', r.stderr)
                self.assertIn(message, r.stderr)
        path, r = check_config(self, head + '[[route]]\nto = ["lmtp:127.0.0.1:24", "lmtp:unix:/run/dovecot/lmtp"]\n')
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    unittest.main()
