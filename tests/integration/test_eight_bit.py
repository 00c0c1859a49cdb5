"""8-bit mail and a next hop that does not offer 8BITMIME (RFC 6152 §3): through the real
daemon, a message sent with BODY=8BITMIME reaches the sink as 7-bit MIME that decodes back to
what was sent, with a `downgraded` log line; one that cannot be converted (an 8-bit Subject)
is not sent and goes back to its sender in a DSN with status 5.6.3 (RFC 3463).

Mail Moat signs (RFC 6376 §5.3): an 8-bit message is converted to 7-bit MIME before it is
signed and leaves in that form to every next hop, so its DKIM-Signature verifies at one
without 8BITMIME as at one with it; the key is published on the loopback DNS server
(tests/support/dns_server.py) and the checks look it up there. Mail Moat does not sign
goes through byte for byte."""

import email
import email.policy
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from authzone import header_values, owned_dns, rsa_key  # noqa: E402
from harness import Moat, SinkTestCase, class_temp_dir, owned_moat, owned_sink, wait_for  # noqa: E402

import dkim  # noqa: E402  (python3-dkim)
from dnslib import QTYPE, DNSRecord  # noqa: E402  (python3-dnslib, as the DNS server uses)

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


def loopback_txt(nameserver):
    """A python3-dkim dnsfunc that asks the test's DNS server (on 127.0.0.1) for TXT records."""
    host, port = nameserver.rsplit(":", 1)

    def dnsfunc(name, timeout=5):
        qname = (name.decode() if isinstance(name, bytes) else name).rstrip(".")
        reply = DNSRecord.parse(DNSRecord.question(qname, "TXT").send(host, int(port), timeout=timeout))
        txt = [b"".join(rr.rdata.data) for rr in reply.rr if rr.rtype == QTYPE.TXT]
        return txt[0] if txt else None
    return dnsfunc


def signature_verifies(data, dnsfunc):
    """python3-dkim returns False for a bad signature, or raises for a body hash mismatch."""
    try:
        return dkim.DKIM(data).verify(idx=0, dnsfunc=dnsfunc)
    except dkim.ValidationError:
        return False


class SignedEightBitTest(unittest.TestCase):
    """Moat signs for sender.test (relay network 127.0.0.0/8: outbound mail); far7.test goes
    to a sink without 8BITMIME, far8.test to one with it. One DNS server, two sinks and one
    daemon for the class."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = class_temp_dir(cls, "moat-8bit-sign-")
        key_file = os.path.join(cls.tmp, "s1.pem")
        cls.dns = owned_dns(cls, {"s1._domainkey.sender.test": [{"TXT": rsa_key(key_file)}]}, directory=cls.tmp)
        cls.sink7 = owned_sink(cls, extensions=NO_8BITMIME)
        cls.sink8 = owned_sink(cls)
        extra = (f'\n[dns]\nnameservers = ["{cls.dns.nameserver}"]\ntimeout = "1s"\n'
                 f'\n[[dkim.sign]]\ndomain = "sender.test"\nselector = "s1"\nkey_file = "{key_file}"\n')
        cls.moat = owned_moat(cls, routes=[("far7.test", f"smtp:127.0.0.1:{cls.sink7.port}"),
                                           ("far8.test", f"smtp:127.0.0.1:{cls.sink8.port}")], extra=extra)

    def send(self, sender, rcpt, raw):
        s = self.moat.smtp()
        s.ehlo()
        s.mail(sender, ["BODY=8BITMIME"])
        s.rcpt(rcpt)
        code, reply = s.data(raw)
        s.quit()
        self.assertEqual(code, 250, reply)
        return reply.decode().rsplit(" ", 1)[-1]

    def received(self, sink, subject):
        def find():
            return next((m for m in list(sink.messages) if b"\r\nSubject: " + subject + b"\r\n" in m["data"]), None)
        return wait_for(find, 30, what=f"message {subject!r} at the sink")

    @staticmethod
    def eight_bit(subject, sender="alice@sender.test"):
        return (f"From: Alice <{sender}>\r\nTo: bob@far.test\r\nSubject: ".encode() + subject +
                b"\r\nMessage-ID: <" + subject + b"@sender.test>\r\nMIME-Version: 1.0\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
                TEXT.encode())

    def assert_signed_7bit(self, data, qid):
        self.assertTrue(all(b < 0x80 for b in data), data[:3000])
        self.assertEqual(len(header_values(data, "DKIM-Signature")), 1, data[:3000])
        self.assertTrue(signature_verifies(data, loopback_txt(self.dns.nameserver)), "the signature does not verify: " +
                        header_values(data, "DKIM-Signature")[0][:200])
        self.assertTrue(any("s1._domainkey.sender.test" in q for q in self.dns.queries()), self.dns.queries())
        msg = email.message_from_bytes(data, policy=email.policy.default)
        self.assertEqual(msg["Content-Transfer-Encoding"], "quoted-printable")
        self.assertEqual(msg.get_content(), TEXT)  # the text the sender wrote
        # Converted once, at receipt: delivery had nothing to convert.
        self.moat.wait_log(event="deliver", queue_id=qid)
        self.assertEqual(self.moat.find_logs(event="downgraded", queue_id=qid), [])
        sign = self.moat.wait_log(event="filter", queue_id=qid, filter="dkim_sign")
        self.assertEqual(sign["detail"]["conversion"], "7bit", sign)

    def test_signed_8bit_message_verifies_at_a_next_hop_without_8bitmime(self):
        qid = self.send("alice@sender.test", "bob@far7.test", self.eight_bit(b"to-seven"))
        got = self.received(self.sink7, b"to-seven")
        self.assert_signed_7bit(got["data"], qid)

    def test_signed_8bit_message_leaves_in_7bit_form_to_an_8bitmime_next_hop_and_verifies(self):
        qid = self.send("alice@sender.test", "bob@far8.test", self.eight_bit(b"to-eight"))
        got = self.received(self.sink8, b"to-eight")
        self.assert_signed_7bit(got["data"], qid)
        # The envelope says 7bit now: no BODY=8BITMIME (RFC 6152) for a 7-bit message.
        mail = [c for c in self.sink8.commands if c.startswith("MAIL") and "alice@sender.test" in c]
        self.assertEqual(len(mail), 1, self.sink8.commands)
        self.assertNotIn("BODY=", mail[0])

    def test_unsigned_8bit_message_reaches_an_8bitmime_next_hop_byte_for_byte(self):
        raw = self.eight_bit(b"unsigned", sender="carol@unsigned.test")
        qid = self.send("carol@unsigned.test", "bob@far8.test", raw)
        data = self.received(self.sink8, b"unsigned")["data"]
        self.assertTrue(data.endswith(b"\r\n" + raw), data[:2000])
        self.assertEqual(header_values(data, "DKIM-Signature"), [])
        head = data[:len(data) - len(raw)]
        self.assertTrue(head.startswith(b"Received: "), head)  # only Moat's own header fields before it
        mail = [c for c in self.sink8.commands if c.startswith("MAIL") and "carol@unsigned.test" in c]
        self.assertEqual(len(mail), 1, self.sink8.commands)
        self.assertIn("BODY=8BITMIME", mail[0])
        self.moat.wait_log(event="deliver", queue_id=qid)


if __name__ == "__main__":
    unittest.main()
