"""8-bit mail and a next hop that does not offer 8BITMIME (RFC 6152 §3): through the real
daemon, a message sent with BODY=8BITMIME reaches the sink as 7-bit MIME that decodes back to
what was sent, with a `downgraded` log line; one that cannot be converted (an 8-bit Subject)
is not sent and goes back to its sender in a DSN with status 5.6.3 (RFC 3463)."""

import email
import email.policy
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Moat, SinkTestCase, wait_for  # noqa: E402

NO_8BITMIME = ("PIPELINING", "SIZE 104857600")  # nor SMTPUTF8, which needs 8BITMIME

TEXT = ("Gr\u00fc\u00dfe aus K\u00f6ln \u2014 caf\u00e9, na\u00efve, \u65e5\u672c\u8a9e\r\n"
        "a trailing blank \r\n"
        "=41 is not an escape here\r\n"
        ".a leading dot\r\n" + "\u00e9" * 200 + "\r\n")


class EightBitTest(SinkTestCase):
    sink_options = {"extensions": NO_8BITMIME}

    def start(self):
        self.moat = Moat(routes=[("example.test", f"smtp:127.0.0.1:{self.sink.port}"),
                                 ("sender.test", "maildir:mail")])
        return self.moat

    def test_8bit_body_arrives_as_7bit_mime_that_decodes_to_the_original(self):
        self.start()
        qid = self.send_8bit(b"From: Alice <alice@sender.test>\r\nTo: bob@example.test\r\nSubject: greetings\r\n"
                             b"Message-ID: <eight-bit-1@sender.test>\r\nMIME-Version: 1.0\r\n"
                             b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
                             TEXT.encode())
        got = self.sink.wait_messages(1)[0]["data"]
        self.assertTrue(all(b < 0x80 for b in got), got)
        head, body = got.split(b"\r\n\r\n", 1)
        self.assertTrue(head.startswith(b"Received: "))
        self.assertLessEqual(max(len(line) for line in body.split(b"\r\n")), 76)
        mail = [c for c in self.sink.commands if c.startswith("MAIL")]
        self.assertEqual(len(mail), 1)
        self.assertNotIn("BODY=", mail[0])
        msg = email.message_from_bytes(got, policy=email.policy.default)
        self.assertEqual(msg["Content-Transfer-Encoding"], "quoted-printable")
        self.assertEqual(len(msg.get_all("Content-Transfer-Encoding")), 1)
        self.assertEqual(msg["Subject"], "greetings")
        # Python's own decoder gives back the text
        self.assertEqual(msg.get_content(), TEXT)
        ev = self.moat.wait_log(event="downgraded", queue_id=qid)
        self.assertEqual(ev["level"], "info")
        self.assertIn("127.0.0.1", ev["relay"])
        self.assertTrue(ev["relay"].endswith(f":{self.sink.port}"), ev)
        self.assertTrue(self.moat.wait_log(event="deliver", queue_id=qid)["reply"].startswith("250"))

    def test_a_large_8bit_message_is_converted_off_the_loop(self):
        # Over 256 KB the conversion runs on the thread pool; the result is the same.
        self.start()
        big = TEXT * 2000  # about 1 MB
        qid = self.send_8bit(b"From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: big\r\n"
                             b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                             b"Content-Transfer-Encoding: 8bit\r\n\r\n" + big.encode())
        got = self.sink.wait_messages(1, timeout=60)[0]["data"]
        self.assertTrue(all(b < 0x80 for b in got))
        msg = email.message_from_bytes(got, policy=email.policy.default)
        self.assertEqual(msg.get_content(), big)
        self.moat.wait_log(event="downgraded", queue_id=qid)

    def test_8bit_subject_is_returned_to_the_sender_with_5_6_3(self):
        m = self.start()
        qid = self.send_8bit("From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: caf\u00e9\r\n\r\n"
                             "caf\u00e9 au lait\r\n".encode())
        bounce = m.wait_log(event="bounce", queue_id=qid)
        self.assertTrue(bounce["reply"].startswith("554 5.6.3 Conversion required but not supported"), bounce)
        files = wait_for(lambda: m.maildir_files("alice@sender.test"), 20, what="the DSN in the sender's maildir")
        with open(files[0], "rb") as f:
            dsn = email.message_from_bytes(f.read())
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        status = [p for p in dsn.walk() if p.get_content_type() == "message/delivery-status"]
        self.assertEqual(len(status), 1)
        text = status[0].as_string()
        self.assertIn("Status: 5.6.3", text)
        self.assertIn("Action: failed", text)
        self.assertIn("bob@example.test", text)
        self.assertNotIn("Remote-MTA", text)  # our own refusal: no server said it
        # nothing reached the sink, not even a MAIL command
        self.assertFalse([c for c in self.sink.commands if c.startswith("MAIL")])
        self.assertEqual(m.find_logs(event="downgraded"), [])


if __name__ == "__main__":
    unittest.main()
