"""RFC 6533 global DSNs through the real daemon: a message sent with SMTPUTF8 whose UTF-8
recipient the next hop refuses comes back to its UTF-8 sender as a DSN that names that
recipient in UTF-8 (message/global-delivery-status, address type utf-8), quotes the original
as message/global, is addressed To: the sender as is (RFC 6532), and travels with SMTPUTF8
and BODY=8BITMIME."""

import email
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Moat, Sink  # noqa: E402

SENDER = "j\u00f6rg@sender.test"          # jörg
REFUSED = "m\u00fcller@example.test"      # müller: the next hop refuses it
ACCEPTED = "bob@example.test"
SUBJECT = "Gr\u00fc\u00dfe"               # Grüße


def mime_parts(raw):
    """The body parts of a multipart message, split on its boundary byte for byte (Python's
    email package reads message/global-delivery-status as a nested message, not as fields):
    [(headers, body), ...], headers as one bytes string without the blank line."""
    top = email.message_from_bytes(raw)
    boundary = top.get_param("boundary").encode()
    chunks = raw.split(b"\r\n--" + boundary)
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk[2:].partition(b"\r\n\r\n")  # chunk starts with the CRLF after the delimiter
        parts.append((head, body))
    return top, parts


class GlobalDsnTest(unittest.TestCase):
    def setUp(self):
        self.sink = Sink()
        self.back = Sink()  # the sender's domain: where the DSN goes
        self.moat = None

    def tearDown(self):
        if self.moat:
            self.moat.cleanup()
        self.sink.stop()
        self.back.stop()

    def test_smtputf8_refusal_comes_back_as_a_global_dsn(self):
        self.sink.rcpt_reply = lambda a: "550 5.1.1 no such user" if a == REFUSED else "250 2.1.5 ok"
        self.moat = m = Moat(routes=[("example.test", f"smtp:127.0.0.1:{self.sink.port}"),
                                     ("sender.test", f"smtp:127.0.0.1:{self.back.port}")])
        s = m.smtp()
        s.ehlo()
        s.mail(SENDER, ["SMTPUTF8", "BODY=8BITMIME"])  # smtplib then sends the commands in UTF-8
        self.assertEqual(s.rcpt(REFUSED)[0], 250)
        self.assertEqual(s.rcpt(ACCEPTED)[0], 250)
        code, _ = s.data(f"From: {SENDER}\r\nTo: {REFUSED}\r\nSubject: {SUBJECT}\r\n\r\nHallo.\r\n".encode())
        s.quit()
        self.assertEqual(code, 250)
        self.assertEqual(self.sink.wait_messages(1)[0]["rcpts"], [ACCEPTED])

        msg = self.back.wait_messages(1)[0]
        self.assertEqual(msg["from"], "")
        self.assertEqual(msg["rcpts"], [SENDER])
        # UTF-8 in its header and report: it needs, and got, SMTPUTF8 and 8BITMIME.
        mail = [c for c in self.back.commands if c.startswith("MAIL")][0]
        self.assertTrue(mail.startswith("MAIL FROM:<>"), mail)
        self.assertIn("SMTPUTF8", mail)
        self.assertIn("BODY=8BITMIME", mail)
        self.assertTrue(m.wait_log(event="dsn", to=SENDER))

        raw = msg["data"]
        self.assertIsNone(re.search(rb"(m\?+ller|j\?+rg)", raw))  # what the DSN builder used to write
        header = raw.split(b"\r\n\r\n", 1)[0]
        self.assertIn(b"\r\nTo: <" + SENDER.encode() + b">\r\n", header)  # RFC 6532: UTF-8 as is
        top, parts = mime_parts(raw)
        self.assertEqual(top.get_content_type(), "multipart/report")
        self.assertEqual(top.get_param("report-type"), "delivery-status")
        self.assertEqual(len(parts), 3)

        human_head, human = parts[0]
        self.assertIn(b"Content-Type: text/plain; charset=utf-8", human_head)
        self.assertIn(b"<" + REFUSED.encode() + b">: failed: smtp; 550 5.1.1 no such user", human)

        status_head, status = parts[1]
        self.assertIn(b"Content-Type: message/global-delivery-status\r\n", status_head + b"\r\n")
        fields = status.decode("utf-8")  # strict: the report is well-formed UTF-8
        self.assertIn(f"Final-Recipient: utf-8; {REFUSED}\r\n", fields)
        self.assertIn("Action: failed\r\n", fields)
        self.assertIn("Status: 5.1.1\r\n", fields)
        self.assertIn("Remote-MTA: dns; 127.0.0.1\r\n", fields)
        self.assertIn("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n", fields)
        self.assertNotIn(ACCEPTED, fields)

        original_head, original = parts[2]
        self.assertIn(b"Content-Type: message/global\r\n", original_head + b"\r\n")
        self.assertIn(f"Subject: {SUBJECT}\r\n".encode(), original)


if __name__ == "__main__":
    unittest.main()
