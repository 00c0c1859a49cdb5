"""RFC 6533 global DSNs through the real daemon: a message sent with SMTPUTF8 whose UTF-8
recipient the next hop refuses comes back to its UTF-8 sender as a DSN that names that
recipient in UTF-8 (message/global-delivery-status, address type utf-8), quotes the original
as message/global, is addressed To: the sender as is (RFC 6532), and travels with SMTPUTF8
and BODY=8BITMIME.

When the next hop towards an ASCII sender does not offer SMTPUTF8, the global DSN goes as a
plain, 7-bit one instead (queue/dsn.h downgradeGlobalDsn): message/delivery-status naming
the UTF-8 recipient in its utf-8-addr-xtext form (RFC 6533 §3), the notification and the
original's headers quoted-printable, with a `downgraded` log line (conversion plain_dsn).
Before, such a DSN with UTF-8 in its header (the original's Message-ID in References) was
refused by Moat's own client (554 5.6.9) and dropped. A UTF-8 sender behind such a next hop
still cannot be told (553 5.6.7, dsn_dropped)."""

import email
import os
import quopri
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Moat, Sink, SinkTestCase, owned_sink  # noqa: E402

SENDER = "j\u00f6rg@sender.test"          # jörg
REFUSED = "m\u00fcller@example.test"      # müller: the next hop refuses it
ACCEPTED = "bob@example.test"
SUBJECT = "Gr\u00fc\u00dfe"               # Grüße
ASCII_SENDER = "alice@sender.test"
UTF8_MESSAGE_ID = "<gr\u00fc\u00dfe.1@sender.test>"  # so the DSN's References is UTF-8
NO_SMTPUTF8 = ("PIPELINING", "8BITMIME", "SIZE 104857600")


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


class DsnTestCase(SinkTestCase):
    """The Sink (example.test) refuses REFUSED at its RCPT; self.back, the sender's domain,
    is where the DSN goes."""

    def setUp(self):
        super().setUp()
        self.sink.rcpt_reply = lambda a: "550 5.1.1 no such user" if a == REFUSED else "250 2.1.5 ok"
        self.back = None

    def start(self, **back_options):
        """self.back (Sink's keywords) and the daemon routing example.test and sender.test to
        the two sinks."""
        self.back = owned_sink(self, **back_options)
        self.moat = Moat(routes=[("example.test", f"smtp:127.0.0.1:{self.sink.port}"),
                                 ("sender.test", f"smtp:127.0.0.1:{self.back.port}")])
        return self.moat

    def send_to_refused_and_accepted(self, sender, data):
        """One SMTPUTF8 transaction from `sender` to REFUSED and ACCEPTED, both taken by Moat;
        only ACCEPTED reaches the Sink."""
        s = self.moat.smtp()
        s.ehlo()
        s.mail(sender, ["SMTPUTF8", "BODY=8BITMIME"])  # smtplib then sends the commands in UTF-8
        self.assertEqual(s.rcpt(REFUSED)[0], 250)
        self.assertEqual(s.rcpt(ACCEPTED)[0], 250)
        code, _ = s.data(data)
        s.quit()
        self.assertEqual(code, 250)
        self.assertEqual(self.sink.wait_messages(1)[0]["rcpts"], [ACCEPTED])

    def assert_refusal_fields(self, fields):
        """The per-recipient fields of a DSN's status part: REFUSED failed with the Sink's
        550 5.1.1; ACCEPTED is not named."""
        self.assertIn("Action: failed\r\n", fields)
        self.assertIn("Status: 5.1.1\r\n", fields)
        self.assertIn("Remote-MTA: dns; 127.0.0.1\r\n", fields)
        self.assertIn("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n", fields)
        self.assertNotIn(ACCEPTED, fields)


class GlobalDsnTest(DsnTestCase):
    def test_smtputf8_refusal_comes_back_as_a_global_dsn(self):
        m = self.start()
        self.send_to_refused_and_accepted(
            SENDER, f"From: {SENDER}\r\nTo: {REFUSED}\r\nSubject: {SUBJECT}\r\n\r\nHallo.\r\n".encode())

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
        self.assert_refusal_fields(fields)

        original_head, original = parts[2]
        self.assertIn(b"Content-Type: message/global\r\n", original_head + b"\r\n")
        self.assertIn(f"Subject: {SUBJECT}\r\n".encode(), original)


class DowngradedDsnTest(DsnTestCase):
    """The DSN's next hop (the sender's domain) without SMTPUTF8."""

    def bounce(self, sender, back_extensions, body="Hallo.\r\n"):
        """Sends an SMTPUTF8 message from `sender` to REFUSED and ACCEPTED; the sender's
        domain routes to a sink offering `back_extensions`."""
        m = self.start(extensions=back_extensions)
        self.send_to_refused_and_accepted(sender, f"From: J\u00f6rg <{sender}>\r\nTo: {REFUSED}\r\nSubject: {SUBJECT}\r\n"
                                          f"Message-ID: {UTF8_MESSAGE_ID}\r\n\r\n{body}".encode())
        m.wait_log(event="dsn", to=sender)
        return m

    def test_ascii_sender_behind_a_next_hop_without_smtputf8_gets_a_plain_7bit_dsn(self):
        m = self.bounce(ASCII_SENDER, NO_SMTPUTF8)
        msg = self.back.wait_messages(1)[0]
        self.assertEqual(msg["from"], "")
        self.assertEqual(msg["rcpts"], [ASCII_SENDER])
        mail = [c for c in self.back.commands if c.startswith("MAIL")][0]
        self.assertEqual(mail.split(" ")[:2], ["MAIL", "FROM:<>"])
        self.assertNotIn("SMTPUTF8", mail)
        self.assertNotIn("BODY=8BITMIME", mail)  # nothing 8-bit is left
        ev = m.wait_log(event="downgraded", conversion="plain_dsn")
        self.assertEqual(ev["relay"], f"127.0.0.1:{self.back.port}")
        self.assertEqual(m.find_logs(event="dsn_dropped"), [])

        raw = msg["data"]
        self.assertTrue(all(b < 0x80 for b in raw), "a byte over 0x7f in the DSN")
        header = raw.split(b"\r\n\r\n", 1)[0]
        self.assertIn(b"\r\nTo: <" + ASCII_SENDER.encode() + b">\r\n", header)
        self.assertNotIn(b"\r\nReferences:", header)  # the UTF-8 Message-ID has no 7-bit form
        self.assertIn(b"\r\nContent-Transfer-Encoding: 7bit\r\n", header + b"\r\n")
        top, parts = mime_parts(raw)
        self.assertEqual(top.get_content_type(), "multipart/report")
        self.assertEqual(top.get_param("report-type"), "delivery-status")
        self.assertEqual(len(parts), 3)

        human_head, human = parts[0]
        self.assertIn(b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable",
                      human_head)
        self.assertIn(f"<{REFUSED}>: failed: smtp; 550 5.1.1 no such user", quopri.decodestring(human).decode("utf-8"))

        status_head, status = parts[1]
        self.assertIn(b"Content-Type: message/delivery-status\r\n", status_head + b"\r\n")
        self.assertNotIn(b"Content-Transfer-Encoding", status_head)
        fields = status.decode("ascii")
        self.assertIn("Final-Recipient: utf-8; m\\x{FC}ller@example.test\r\n", fields)  # utf-8-addr-xtext
        self.assert_refusal_fields(fields)

        original_head, original = parts[2]
        self.assertIn(b"Content-Type: text/rfc822-headers; charset=utf-8\r\n"
                      b"Content-Transfer-Encoding: quoted-printable\r\n", original_head + b"\r\n")
        headers = quopri.decodestring(original).decode("utf-8")
        self.assertIn(f"\r\nSubject: {SUBJECT}\r\n", headers)
        self.assertIn(f"\r\nMessage-ID: {UTF8_MESSAGE_ID}\r\n", headers)
        self.assertNotIn("Hallo.", headers)  # headers only

    def test_a_large_dsn_is_converted_off_the_loop(self):
        # The global DSN quotes the whole original (about 1 MB): converted on the thread pool,
        # and what goes is only its headers.
        m = self.bounce(ASCII_SENDER, NO_SMTPUTF8, body="Gr\u00fc\u00dfe aus dem Gro\u00dfraumb\u00fcro.\r\n" * 30000)
        msg = self.back.wait_messages(1)[0]
        m.wait_log(event="downgraded", conversion="plain_dsn")
        raw = msg["data"]
        self.assertTrue(all(b < 0x80 for b in raw))
        self.assertLess(len(raw), 16384)
        _, parts = mime_parts(raw)
        self.assertIn(f"\r\nSubject: {SUBJECT}\r\n", quopri.decodestring(parts[2][1]).decode("utf-8"))
        self.assertNotIn(b"Gro=C3=9F", raw)

    def test_ascii_sender_behind_a_next_hop_with_smtputf8_still_gets_the_global_dsn(self):
        m = self.bounce(ASCII_SENDER, Sink.DEFAULT_EXTENSIONS)
        msg = self.back.wait_messages(1)[0]
        mail = [c for c in self.back.commands if c.startswith("MAIL")][0]
        self.assertIn("SMTPUTF8", mail)
        raw = msg["data"]
        self.assertIn(b"\r\nReferences: " + UTF8_MESSAGE_ID.encode() + b"\r\n", raw.split(b"\r\n\r\n", 1)[0])
        _, parts = mime_parts(raw)
        self.assertIn(b"Content-Type: message/global-delivery-status\r\n", parts[1][0] + b"\r\n")
        self.assertIn(f"Final-Recipient: utf-8; {REFUSED}\r\n", parts[1][1].decode("utf-8"))
        self.assertIn(b"Content-Type: message/global\r\n", parts[2][0] + b"\r\n")
        self.assertEqual(m.find_logs(event="downgraded"), [])

    def test_utf8_sender_behind_a_next_hop_without_smtputf8_is_still_not_told(self):
        m = self.bounce(SENDER, NO_SMTPUTF8)
        dsn_id = m.wait_log(event="dsn", to=SENDER)["queue_id"]
        # The DSN's own address needs SMTPUTF8: refused by Moat's client, and as a DSN of
        # Moat's own, dropped with a log line, as before.
        ev = m.wait_log(event="bounce", queue_id=dsn_id)
        self.assertTrue(ev["reply"].startswith("553 5.6.7"), ev["reply"])
        self.assertEqual(m.wait_log(event="dsn_dropped", queue_id=dsn_id)["reason"], "undeliverable DSN")
        self.assertEqual(self.back.messages, [])
        self.assertFalse([c for c in self.back.commands if c.startswith("MAIL")])
        self.assertEqual(m.find_logs(event="downgraded"), [])


if __name__ == "__main__":
    unittest.main()
