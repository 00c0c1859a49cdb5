"""`moat queue show ID --message` and `--headers`: a queued, held or quarantined message
printed as Moat would deliver it (the gateway's Received and Authentication-Results lines
and the filters' edits applied), compared byte for byte with what the next hop receives
once it is released; a 5 MB message streamed intact, also to a reader that waits before
reading (the daemon serves the others meanwhile), and to one whose message is deleted
halfway; the refusals (unknown id, --json, misplaced options)."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import MOAT_BIN, Moat, Sink, free_port, wait_for  # noqa: E402

SPAM_RULES = """body BODY_WINNER /you are a winner/i
score BODY_WINNER 11
"""


def message(subject, body, msgid):
    return (f"From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{msgid}@sender.test>\r\n\r\n{body}").encode()


class QueueMessageTest(unittest.TestCase):
    def setUp(self):
        self.port = free_port()  # the next hop: down until the messages have been looked at
        self.sink = None
        self.moat = Moat(routes=[("example.test", f"smtp:127.0.0.1:{self.port}")], retry='["1h"]', start=False,
                         extra='\n[rules]\nfiles = ["spam.cf"]\ntag = 5\nquarantine = 10\nreject = 15\n'
                               'subject_prefix = "[SPAM]"\n')
        self.addCleanup(self.moat.cleanup)
        with open(os.path.join(self.moat.dir, "spam.cf"), "w") as f:
            f.write(SPAM_RULES)
        self.moat.start()

    def tearDown(self):
        if self.sink:
            self.sink.stop()

    def send(self, data):
        s = self.moat.smtp()
        try:
            s.ehlo()
            s.mail("alice@sender.test")
            s.rcpt("bob@example.test")
            code, reply = s.data(data)
            s.quit()
        finally:
            s.close()
        self.assertEqual(code, 250, reply)
        return reply.decode().rsplit(" ", 1)[-1]

    def show(self, *args):
        """`moat queue show ...` with its output as bytes."""
        return subprocess.run([MOAT_BIN, "queue", "-c", self.moat.config_path, "show", *args], capture_output=True,
                              timeout=60)

    def raw(self, request):
        """A control-socket connection with `request` sent and nothing read yet."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(os.path.join(self.moat.dir, "moat.sock"))
        s.sendall(request.encode() + b"\n")
        return s

    @staticmethod
    def read_answer(s, already=b""):
        """(the JSON head, the bytes after it) of a streamed answer, read to its end."""
        data = bytearray(already)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        s.close()
        head, _, rest = bytes(data).partition(b"\n")
        return json.loads(head), rest

    def delivered(self, msgid):
        def find():
            found = [m["data"] for m in list(self.sink.messages) if f"<{msgid}@sender.test>".encode() in m["data"]]
            return found[0] if found else None
        return wait_for(find, 30, what=f"message {msgid} at the sink")

    def test_held_and_quarantined_messages_print_as_delivered(self):
        m = self.moat
        held = self.send(message("minutes", "The minutes of Monday.\r\n", "held"))
        m.wait_log(event="defer", queue_id=held)
        m.cli("queue", "hold", held)
        quarantined = self.send(message("news", "Congratulations, you are a winner!\r\n", "quarantined"))
        self.assertEqual(m.wait_log(event="accept", queue_id=quarantined)["verdict"], "quarantine")

        shown = {}
        for qid, area in ((held, "hold"), (quarantined, "quarantine")):
            self.assertEqual(json.loads(m.cli("queue", "show", qid, "--json").stdout)["area"], area)
            r = self.show(qid, "--message")
            self.assertEqual((r.returncode, r.stderr), (0, b""), qid)
            shown[qid] = r.stdout
            # --headers: the header section up to and including the empty line, Moat's fields in it.
            h = self.show(qid, "--headers")
            self.assertEqual((h.returncode, h.stderr), (0, b""), qid)
            self.assertTrue(h.stdout.endswith(b"\r\n\r\n"), h.stdout)
            self.assertEqual(h.stdout.count(b"\r\n\r\n"), 1, h.stdout)
            self.assertTrue(r.stdout.startswith(h.stdout))
            self.assertTrue(h.stdout.startswith(b"Received: from client.test"), h.stdout)
            self.assertIn(b"\r\nAuthentication-Results: mx.moat.test;", h.stdout)
            self.assertIn(b"\r\nMessage-ID: <", h.stdout)
            self.assertNotIn(b"Monday", h.stdout)
            self.assertNotIn(b"winner", h.stdout)
        self.assertTrue(shown[held].endswith(b"\r\n\r\nThe minutes of Monday.\r\n"), shown[held])
        self.assertTrue(m.find_logs(event="control", verb="message", arg=f"{held} headers=1"))
        # The quarantined one with the rules' header lines and its Subject edit applied.
        self.assertIn(b"\r\nX-Spam-Status: Yes, score=11.0", shown[quarantined])
        self.assertIn(b"\r\nSubject: [SPAM] news\r\n", shown[quarantined])

        # Released to a next hop that is up now: it gets exactly those bytes.
        self.sink = Sink(port=self.port)
        m.cli("queue", "release", held)
        m.cli("queue", "release", quarantined)
        self.assertEqual(self.delivered("held"), shown[held])
        self.assertEqual(self.delivered("quarantined"), shown[quarantined])
        m.wait_log(event="deliver", queue_id=quarantined)
        # Gone now: the same answer as `show` gives.
        r = self.show(held, "--message")
        self.assertEqual((r.returncode, r.stdout), (1, b""))
        self.assertEqual(r.stderr.decode(), f"moat: no such message: {held}\n")

    def test_silent_connection_is_closed_and_a_pausing_reader_is_not(self):
        """A connection that never sends its request is closed after 10 s with a control_timeout
        line; a reader that asked for a 5 MB message and read nothing for those 10 s is not
        (its limit is 10 minutes, for a person in a pager), and then gets the whole message."""
        m = self.moat
        line = "".join(chr(33 + i % 90) for i in range(76)) + "\r\n"
        data = message("big", line * (5 * 1024 * 1024 // len(line)), "paused")
        qid = self.send(data)
        m.wait_log(event="defer", queue_id=qid)
        digest = hashlib.sha256(self.show(qid, "--message").stdout).hexdigest()
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        silent.settimeout(60)
        silent.connect(os.path.join(m.dir, "moat.sock"))
        paused = self.raw(f"message {qid}")
        started = time.monotonic()
        line = m.wait_log(event="control_timeout", timeout=40)
        self.assertEqual((line["waiting_for"], line["verb"], line["after_ms"]), ("request", "", 10000))
        self.assertGreaterEqual(time.monotonic() - started, 9)
        self.assertEqual(silent.recv(100), b"")  # closed by the daemon
        silent.close()
        time.sleep(1)
        head, rest = self.read_answer(paused)
        self.assertEqual((head["ok"], head["size"]), (True, len(rest)))
        self.assertEqual(hashlib.sha256(rest).hexdigest(), digest)
        self.assertEqual(len(m.find_logs(event="control_timeout")), 1)

    def test_refusals(self):
        m = self.moat
        plain = m.cli("queue", "show", "NOSUCHID", check=False)
        self.assertEqual(plain.returncode, 1)
        for opt in ("--message", "--headers"):
            r = self.show("NOSUCHID", opt)
            self.assertEqual((r.returncode, r.stdout), (1, b""), opt)
            self.assertEqual(r.stderr.decode(), plain.stderr)
            self.assertIn("no such message: NOSUCHID", r.stderr.decode())
            r = self.show("NOSUCHID", opt, "--json")
            self.assertEqual(r.returncode, 2, opt)
            self.assertIn(b"--json", r.stderr)
            r = subprocess.run([MOAT_BIN, "queue", "-c", m.config_path, "list", opt], capture_output=True, timeout=60)
            self.assertEqual(r.returncode, 2, opt)
        self.assertEqual(self.show("NOSUCHID", "--message", "--headers").returncode, 2)

    def test_large_message_streams_intact(self):
        m = self.moat
        line = "".join(chr(33 + i % 90) for i in range(76)) + "\r\n"
        body = "".join(f"{i:08d} {line}" for i in range(5 * 1024 * 1024 // len(line)))
        data = message("big", body, "big")
        self.assertGreater(len(data), 5 * 1024 * 1024)
        qid = self.send(data)
        m.wait_log(event="defer", queue_id=qid)

        r = self.show(qid, "--message")
        self.assertEqual((r.returncode, r.stderr), (0, b""))
        self.assertTrue(r.stdout.endswith(data), len(r.stdout))
        digest = hashlib.sha256(r.stdout).hexdigest()
        headers = self.show(qid, "--headers").stdout
        self.assertEqual(r.stdout[:len(headers)], headers)
        self.assertLess(len(headers), 4096)

        # A reader that asks, then does not read for a while: the daemon answers the others
        # meanwhile, and the reader gets the whole message once it reads.
        slow = self.raw(f"message {qid}")
        time.sleep(1.5)
        start = time.monotonic()
        self.assertEqual(json.loads(m.cli("queue", "show", qid, "--json").stdout)["id"], qid)
        self.assertLess(time.monotonic() - start, 5)
        head, rest = self.read_answer(slow)
        self.assertEqual((head["ok"], head["id"], head["area"], head["size"]), (True, qid, "active", len(r.stdout)))
        self.assertEqual(hashlib.sha256(rest).hexdigest(), digest)

        # A reader that goes away early: nothing else is disturbed.
        gone = self.raw(f"message {qid}")
        gone.recv(1000)
        gone.close()

        # Deleted while it is being read: the reader still gets the message it asked for, whole.
        reader = self.raw(f"message {qid}")
        first = reader.recv(65536)
        self.assertTrue(first.startswith(b'{"ok":true'), first[:200])
        m.cli("queue", "delete", qid)
        head, rest = self.read_answer(reader, first)
        self.assertEqual(hashlib.sha256(rest).hexdigest(), digest)
        r = self.show(qid, "--message")
        self.assertEqual((r.returncode, r.stderr.decode()), (1, f"moat: no such message: {qid}\n"))

        # The next hop gets the same bytes as were shown: a second copy, delivered.
        qid2 = self.send(data)
        m.wait_log(event="defer", queue_id=qid2)
        shown = self.show(qid2, "--message").stdout
        self.sink = Sink(port=self.port)
        m.cli("queue", "flush", qid2)
        got = wait_for(lambda: self.sink.messages[0]["data"] if self.sink.messages else None, 30,
                       what="the big message at the sink")
        self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(shown).hexdigest())
        self.assertEqual(len(got), len(shown))
        # Still running and answering.
        self.assertIsNone(m.proc.poll())


if __name__ == "__main__":
    unittest.main()
