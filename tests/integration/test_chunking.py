"""BDAT on the way out (RFC 3030, [[route]] chunking): a next hop that offers CHUNKING and
PIPELINING gets the message as BDAT chunks, byte for byte, without dot-stuffing; `chunking =
false` keeps DATA; and Moat relaying to Moat (its server takes BDAT) delivers the same bytes.
Real daemons and a real sink on 127.0.0.1."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Sink, owned_moat, owned_sink, wait_for  # noqa: E402

CHUNKING = Sink.DEFAULT_EXTENSIONS + ("CHUNKING",)
# Lines that dot-stuffing would change, an 8-bit line and a long body.
BODY = (b"Subject: chunks\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n.leading dot\r\n..two dots\r\n"
        b".\r\ncaf\xc3\xa9\r\n" + b"".join(b"line %d of the body\r\n" % i for i in range(12000)))


def route_to(port, chunking=None):
    extra = f'\n[[route]]\ndomains = ["example.test"]\nto = ["smtp:127.0.0.1:{port}"]\ntls = "none"\n'
    if chunking is not None:
        extra += f"chunking = {'true' if chunking else 'false'}\n"
    return extra


def send(moat, body=BODY, rcpts=("bob@example.test",)):
    s = moat.smtp()
    s.sendmail("alice@sender.test", list(rcpts), body, mail_options=["BODY=8BITMIME"])
    s.quit()


class ChunkingTest(unittest.TestCase):
    def test_bdat_to_a_next_hop_offering_chunking(self):
        sink = owned_sink(self, extensions=CHUNKING)
        moat = owned_moat(self, routes=[], extra=route_to(sink.port))
        send(moat)
        send(moat, body=b"Subject: small\r\n\r\n.one line\r\n", rcpts=("bob@example.test", "carol@example.test"))
        msgs = sink.wait_messages(2)
        big = next(m for m in msgs if b"Subject: chunks" in m["data"])
        small = next(m for m in msgs if b"Subject: small" in m["data"])
        self.assertTrue(big["data"].endswith(BODY), "the body arrives byte for byte after Moat's headers")
        self.assertTrue(small["data"].endswith(b"\r\n\r\n.one line\r\n"))
        self.assertEqual(sorted(small["rcpts"]), ["bob@example.test", "carol@example.test"])
        verbs = [c.split(" ")[0].upper() for c in sink.commands]
        self.assertNotIn("DATA", verbs)
        # The large one in 64 KiB chunks, the last one LAST; the small one in one LAST chunk.
        bdat = [c for c in sink.commands if c.upper().startswith("BDAT ")]
        self.assertIn("BDAT 65536", bdat)
        self.assertEqual(sum(1 for c in bdat if c.upper().endswith(" LAST")), 2)
        self.assertEqual(len(bdat), 2 + len(big["data"]) // 65536)
        delivered = wait_for(lambda: moat.find_logs(event="deliver"), 30, what="two deliver lines")
        self.assertTrue(all(d["reply"].startswith("250") for d in delivered))

    def test_chunking_false_keeps_data(self):
        sink = owned_sink(self, extensions=CHUNKING)
        moat = owned_moat(self, routes=[], extra=route_to(sink.port, chunking=False))
        send(moat)
        msg = sink.wait_messages(1)[0]
        self.assertTrue(msg["data"].endswith(BODY))
        verbs = [c.split(" ")[0].upper() for c in sink.commands]
        self.assertIn("DATA", verbs)
        self.assertNotIn("BDAT", verbs)

    def test_a_refused_recipient_and_a_refused_message_over_bdat(self):
        sink = owned_sink(self, extensions=CHUNKING)
        sink.rcpt_reply = lambda addr: "550 5.1.1 no such user" if addr.startswith("nobody") else "250 2.1.5 ok"
        sink.data_reply = lambda frm, rcpts, data: (
            "554 5.7.1 content refused" if b"Subject: refuse me" in data else "250 2.0.0 ok")
        moat = owned_moat(self, routes=[], extra=route_to(sink.port))
        send(moat, rcpts=("nobody@example.test", "bob@example.test"))
        msg = sink.wait_messages(1)[0]
        self.assertEqual(msg["rcpts"], ["bob@example.test"])
        bounce = moat.wait_log(event="bounce", to="nobody@example.test")
        self.assertTrue(bounce["reply"].startswith("550 5.1.1"))
        send(moat, body=b"Subject: refuse me\r\n\r\nno\r\n")
        refused = wait_for(lambda: [b for b in moat.find_logs(event="bounce", to="bob@example.test")
                                    if b["reply"].startswith("554 5.7.1")], 30, what="the refused message's bounce")
        self.assertEqual(len(refused), 1)
        self.assertIn("RSET", [c.upper() for c in sink.commands])  # RFC 3030 §2, after the refusal
        self.assertEqual(len(sink.messages), 1)

    def test_moat_to_moat_over_bdat(self):
        """Moat's client against Moat's server: the inner one takes the BDAT chunks and writes
        the same bytes to its Maildir."""
        inner = owned_moat(self)  # example.test to its maildir
        outer = owned_moat(self, routes=[], extra=route_to(inner.port))
        send(outer)
        files = wait_for(lambda: inner.maildir_files("bob@example.test"), 30, what="the inner Maildir file")
        with open(files[0], "rb") as f:
            stored = f.read()
        # The Maildir keeps LF line ends; the body is the same text.
        self.assertTrue(stored.endswith(BODY.replace(b"\r\n", b"\n")))
        # What makes the outer one use BDAT: the inner one offers both extensions.
        s = inner.smtp()
        s.ehlo("client.test")
        self.assertTrue(s.has_extn("chunking") and s.has_extn("pipelining"))
        s.quit()
        self.assertTrue(outer.wait_log(event="deliver")["reply"].startswith("250"))


if __name__ == "__main__":
    unittest.main()
