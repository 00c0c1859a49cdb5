"""Next hops that misbehave, each a scripted server on loopback, and what Moat makes of them
(RFC 5321 §4.2 replies, §3.1 and §4.1.1.10 QUIT, §3.8 and §4.2.5 4xx, §4.5.3.1.10 too many
recipients, §4.5.3.2 timeouts; RFC 2920 PIPELINING): a refused greeting or HELO, malformed,
overlong, split and unterminated replies, a 421 among pipelined RCPTs, connections that end
after the 354 or the final dot, mixed per-recipient refusals, 4xx and 5xx to the message,
and a next hop that stops reading the body. Each asserts the outcome: what the hop got, the
`deliver`/`defer`/`bounce` lines, `moat queue list --json`, and the DSN owed to the sender.

Covered elsewhere: the HELO fallback's MAIL without ESMTP parameters and codes outside 2xx
to 5xx in the client (tests/client/smtp_client_test.cc), a 250 to DATA and a 421 to MAIL on
a pooled connection (test_next_hops.py), 452/552 for the recipients over a server's limit
with 250 for the others (test_delivery.py), BDAT refusals (test_chunking.py), LMTP's
per-recipient replies (test_lmtp.py). Every wait is bounded."""

import json
import os
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Moat, ScriptedHop, maildir_texts, sendmail, wait_for  # noqa: E402

SENDER = "alice@sender.test"
BODY = b"Subject: fault\r\nMessage-ID: <fault@sender.test>\r\n\r\nbody\r\n"


def serve(conn, rcpt=None, after_354=None, after_dot=None):
    """The rest of a session after the greeting and EHLO: each RCPT answered rcpt(line) (250 by
    default); after the 354, after_354(conn) instead of reading the message, when given; after
    the final dot, after_dot(conn) instead of "250 2.0.0 queued", when given. Either ends the
    connection unless it returns True."""
    while True:
        line = conn.line()
        verb = line.split(" ")[0].upper()
        if verb == "RCPT" and rcpt:
            conn.reply(rcpt(line))
        elif verb == "DATA":
            conn.reply("354 go ahead")
            if after_354 and not after_354(conn):
                return
            conn.data()
            if not after_dot:
                conn.reply("250 2.0.0 queued")
            elif not after_dot(conn):
                return
        elif verb == "QUIT":
            conn.reply("221 2.0.0 bye")
            return
        else:
            conn.reply("250 2.0.0 ok")


def good(conn, n):
    """A next hop that takes everything."""
    conn.greet()
    serve(conn)


def first_then_good(first):
    """first(conn) on the first connection, good() on the later ones (the retry)."""
    def handler(conn, n):
        return first(conn) if n == 0 else good(conn, n)
    return handler


def address(line):
    return line[line.index("<") + 1:line.index(">")]


class NextHopFaultTest(unittest.TestCase):
    def start(self, *handlers, **kw):
        """Scripted next hops (one per handler, tried in that order as the route's targets) and
        a Moat routing example.test to them; the sender's domain goes to a Maildir (DSNs)."""
        self.hops = []
        for h in handlers:
            hop = ScriptedHop(h)
            self.addCleanup(hop.stop)
            self.hops.append(hop)
        kw.setdefault("retry", '["1h"]')
        kw.setdefault("queue_extra", 'reply_timeout = "5s"')
        kw["routes"] = [("example.test", [f"smtp:127.0.0.1:{h.port}" for h in self.hops]),
                        ("sender.test", "maildir:mail")]
        self.moat = Moat(**kw)
        self.addCleanup(self.moat.cleanup)
        return self.moat

    def queued(self):
        """{recipient: last_reply} of every recipient still queued (`moat queue list --json`)."""
        out = {}
        for msg in json.loads(self.moat.cli("queue", "list", "--json").stdout)["messages"]:
            for to in msg["to"]:
                out[to] = msg["last_reply"]
        return out

    def dsns(self):
        return maildir_texts(self.moat, SENDER)

    def assert_deferred(self, rcpts, reply_has, qid=None):
        """Each of `rcpts` deferred (its reply containing `reply_has`), nothing delivered or
        bounced, each still queued, no DSN."""
        m = self.moat
        for r in rcpts:
            line = m.wait_log(event="defer", to=r)
            self.assertIn(reply_has, line["reply"])
            for field in ("queue_id", "relay", "attempt", "delay_ms", "from"):
                self.assertIn(field, line)
        time.sleep(0.5)  # nothing else may follow
        self.assertEqual(m.find_logs(event="deliver"), [])
        self.assertEqual(m.find_logs(event="bounce"), [])
        self.assertEqual(sorted(self.queued()), sorted(rcpts))
        self.assertEqual(self.dsns(), [])

    def flush_and_deliver(self, rcpts):
        """The admin flushes: the retry goes over a new connection and delivers each once."""
        self.moat.cli("queue", "flush")
        for r in rcpts:
            self.moat.wait_log(event="deliver", to=r)
        wait_for(lambda: not self.queued(), 20, what="an empty queue")
        for r in rcpts:
            self.assertEqual(len(self.moat.find_logs(event="deliver", to=r)), 1)

    # ---- greeting and hello ----------------------------------------------------------------

    def test_greeting_554_defers_sends_quit_and_the_next_target_takes_it(self):
        # RFC 5321 §3.1: a server that greets with 554 waits for the client's QUIT, and
        # §4.1.1.10: the client closes only after one. The next target is tried; with none
        # left the message waits (a refusal by one host is not the domain's answer).
        def refuse(conn, n):
            conn.reply("554 5.3.2 hop.test no SMTP service here")
            conn.line(timeout=10)
            conn.reply("221 2.0.0 bye")
        m = self.start(refuse, good)
        sendmail(m, SENDER, ["bob@example.test"], BODY)
        line = m.wait_log(event="deliver", to="bob@example.test")
        self.assertEqual(line["relay"], f"127.0.0.1:{self.hops[1].port}")
        self.assertEqual(m.find_logs(event="defer"), [])
        wait_for(lambda: self.hops[0].transcripts and self.hops[0].transcripts[0], 10, what="the QUIT")
        self.assertEqual(self.hops[0].transcripts[0], ["QUIT"])

    def test_greeting_554_or_421_from_the_only_target_defers(self):
        for greeting, quits in (("554 5.3.2 no SMTP service here", True), ("421 4.3.2 too busy", False)):
            with self.subTest(greeting=greeting):
                def refuse(conn, n):
                    conn.reply(greeting)
                    if quits:
                        conn.line(timeout=10)
                        conn.reply("221 2.0.0 bye")
                m = self.start(refuse)
                sendmail(m, SENDER, ["bob@example.test"], BODY)
                self.assert_deferred(["bob@example.test"], greeting)
                line = m.find_logs(event="defer")[0]
                self.assertTrue(line["reply"].startswith("451 4.4.1 127.0.0.1:"), line)
                if quits:
                    wait_for(lambda: self.hops[0].transcripts[0], 10, what="the QUIT")
                    self.assertEqual(self.hops[0].transcripts[0], ["QUIT"])
                self.doCleanups()

    def test_ehlo_refused_falls_back_to_helo(self):
        for refusal in ("500 5.5.1 command unrecognized", "502 5.5.2 EHLO not implemented"):
            with self.subTest(refusal=refusal):
                def old(conn, n):
                    conn.reply("220 old.test SMTP")
                    conn.line()
                    conn.reply(refusal)
                    conn.line()
                    conn.reply("250 old.test")
                    serve(conn)
                m = self.start(old)
                sendmail(m, SENDER, ["bob@example.test"], BODY)
                m.wait_log(event="deliver", to="bob@example.test")
                lines = self.hops[0].transcripts[0]
                self.assertTrue(lines[0].startswith("EHLO ") and lines[1].startswith("HELO "), lines)
                self.assertEqual(lines[2], "MAIL FROM:<alice@sender.test>")  # no ESMTP parameters
                self.doCleanups()

    def test_ehlo_and_helo_both_refused_defers_after_quit(self):
        def refuse(conn, n):
            conn.reply("220 strict.test ESMTP")
            conn.line()
            conn.reply("500 5.5.1 command unrecognized")
            conn.line()
            conn.reply("550 5.7.1 you are not welcome")
            conn.line(timeout=10)
            conn.reply("221 2.0.0 bye")
        m = self.start(refuse)
        sendmail(m, SENDER, ["bob@example.test"], BODY)
        self.assert_deferred(["bob@example.test"], "HELO refused: 550 5.7.1 you are not welcome")
        wait_for(lambda: len(self.hops[0].transcripts[0]) >= 3, 10, what="the QUIT")
        self.assertEqual(self.hops[0].transcripts[0][2], "QUIT")

    # ---- replies as bytes ------------------------------------------------------------------

    def test_multiline_reply_with_a_changed_code_is_a_protocol_error(self):
        # RFC 5321 §4.2: every line of a reply has the same code. "250-ok / 550 no" to the final
        # dot says neither: never delivered, never bounced, retried.
        def greeting(conn):
            conn.reply("220-hop.test ESMTP\r\n554 hop.test no")
            conn.sock.recv(100)  # nothing more is said to it
        def after_dot(conn):
            conn.reply("250-2.0.0 queued\r\n550 5.7.1 rejected")
        for name, first in (("greeting", greeting), ("final dot", lambda c: (c.greet(), serve(c, after_dot=after_dot)))):
            with self.subTest(at=name):
                m = self.start(first_then_good(first))
                sendmail(m, SENDER, ["bob@example.test"], BODY)
                self.assert_deferred(["bob@example.test"], "reply code changed within a multi-line reply")
                self.flush_and_deliver(["bob@example.test"])
                self.doCleanups()

    def test_reply_lines_over_512_octets_are_read_and_over_the_bound_are_an_error(self):
        # RFC 5321 §4.5.3.1.5 bounds a reply line at 512 octets, and §4.5.3.1 asks to take
        # longer ones; the client's bound (4096, reply.h) ends the connection: retried.
        long_ok = "250 2.1.5 " + "x" * 700
        m = self.start(lambda conn, n: (conn.greet(), serve(conn, rcpt=lambda line: long_ok)))
        sendmail(m, SENDER, ["bob@example.test"], BODY)
        m.wait_log(event="deliver", to="bob@example.test")
        self.doCleanups()
        def after_dot(conn):
            conn.reply("250 2.0.0 " + "y" * 5000)
        m = self.start(first_then_good(lambda c: (c.greet(), serve(c, after_dot=after_dot))))
        sendmail(m, SENDER, ["bob@example.test"], BODY)
        self.assert_deferred(["bob@example.test"], "reply line too long")
        self.flush_and_deliver(["bob@example.test"])

    def test_replies_split_byte_by_byte(self):
        def handler(conn, n):
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def trickle(text):
                for b in (text + "\r\n").encode():
                    conn.sock.sendall(bytes([b]))
                    time.sleep(0.002)
            conn.reply = trickle
            conn.greet()
            serve(conn)
        m = self.start(handler)
        sendmail(m, SENDER, ["bob@example.test", "carol@example.test"], BODY)
        for r in ("bob@example.test", "carol@example.test"):
            self.assertEqual(m.wait_log(event="deliver", to=r)["reply"], "250 2.0.0 queued")

    def test_reply_without_crlf_then_close_is_no_reply(self):
        # The final dot answered "250 2.0.0 queued" without its CRLF, then the connection ends:
        # not a reply (RFC 5321 §4.2, §2.3.8), so not a delivery.
        def unterminated(conn):
            conn.sock.sendall(b"250 2.0.0 queued")
        def greeting(conn):
            conn.sock.sendall(b"220 hop.test ESMTP")
        for name, first in (("greeting", greeting),
                            ("final dot", lambda c: (c.greet(), serve(c, after_dot=unterminated)))):
            with self.subTest(at=name):
                m = self.start(first_then_good(first))
                sendmail(m, SENDER, ["bob@example.test"], BODY)
                self.assert_deferred(["bob@example.test"], "connection closed by peer")
                self.flush_and_deliver(["bob@example.test"])
                self.doCleanups()

    def test_reply_codes_outside_2xx_to_5xx_and_garbage_are_protocol_errors(self):
        cases = (("RCPT", "600 6.0.0 what"), ("RCPT", "199 hello"), ("final dot", "HTTP/1.1 400 Bad Request"),
                 ("final dot", "\x00\xff garbage"))
        for at, reply in cases:
            with self.subTest(at=at, reply=reply):
                if at == "RCPT":
                    first = lambda c, reply=reply: (c.greet(), serve(c, rcpt=lambda line: reply))  # noqa: E731
                else:
                    first = lambda c, reply=reply: (c.greet(), serve(c, after_dot=lambda c2: c2.reply(reply)))  # noqa: E731
                m = self.start(first_then_good(first))
                sendmail(m, SENDER, ["bob@example.test"], BODY)
                self.assert_deferred(["bob@example.test"], "malformed reply line")
                self.flush_and_deliver(["bob@example.test"])
                self.doCleanups()

    # ---- the transaction ----------------------------------------------------------------------

    def test_421_among_pipelined_rcpts_defers_every_recipient(self):
        # RFC 2920 §3.1: MAIL, the RCPTs and DATA go in one write; RFC 5321 §3.8: a 421 ends
        # the session. Accepted, refused-with-421 and unanswered recipients all wait, and the
        # retry goes over a new connection.
        def closing(conn):
            conn.greet()
            while True:
                line = conn.line()
                if line.upper().startswith("RCPT") and address(line) == "carol@example.test":
                    conn.reply("421 4.3.2 shutting down")
                    return
                conn.reply("250 2.0.0 ok")
        m = self.start(first_then_good(closing))
        rcpts = ["bob@example.test", "carol@example.test", "dave@example.test"]
        sendmail(m, SENDER, rcpts, BODY)
        self.assert_deferred(rcpts, "421 4.3.2 shutting down")
        first = self.hops[0].transcripts[0]
        self.assertEqual([l.split(":")[0] for l in first[1:]], ["MAIL FROM", "RCPT TO", "RCPT TO"])
        self.flush_and_deliver(rcpts)

    def test_connection_closed_after_354_or_after_the_final_dot_defers(self):
        # After the final dot and before its reply the message may have arrived (RFC 5321
        # §6.1: a duplicate is the accepted risk); only the reply can make it delivered.
        for at, kw in (("354", {"after_354": lambda c: None}), ("final dot", {"after_dot": lambda c: None})):
            with self.subTest(closed_after=at):
                m = self.start(first_then_good(lambda c, kw=kw: (c.greet(), serve(c, **kw))))
                sendmail(m, SENDER, ["bob@example.test", "carol@example.test"], BODY)
                self.assert_deferred(["bob@example.test", "carol@example.test"], "connection closed by peer")
                self.flush_and_deliver(["bob@example.test", "carol@example.test"])
                self.doCleanups()

    def test_452_550_and_250_each_their_own_outcome_and_one_dsn_for_the_550(self):
        # RFC 5321 §4.5.3.1.10: the recipients refused 452 go again (at once, in a new
        # transaction, here over the same pooled connection); the 550 one bounces, with one DSN
        # naming it alone; the 250 ones are delivered once.
        seen = set()

        def rcpt(line):
            to = address(line)
            again = to in seen
            seen.add(to)
            return {"carol@example.test": "550 5.1.1 no such user",
                    "dave@example.test": "250 2.1.5 ok" if again else "452 4.5.3 too many recipients",
                    "erin@example.test": "250 2.1.5 ok" if again else "452 4.5.3 too many recipients"}.get(
                        to, "250 2.1.5 ok")
        m = self.start(lambda conn, n: (conn.greet(), serve(conn, rcpt=rcpt)))
        rcpts = ["bob@example.test", "carol@example.test", "dave@example.test", "erin@example.test",
                 "frank@example.test"]
        sendmail(m, SENDER, rcpts, BODY)
        bounce = m.wait_log(event="bounce", to="carol@example.test")
        self.assertEqual(bounce["reply"], "550 5.1.1 no such user")
        for r in ("dave@example.test", "erin@example.test"):
            self.assertEqual(m.wait_log(event="defer", to=r)["reply"], "452 4.5.3 too many recipients")
            self.assertEqual(m.wait_log(event="deliver", to=r, timeout=20)["attempt"], 1)  # not an hour later
        for r in ("bob@example.test", "frank@example.test"):
            self.assertEqual(m.wait_log(event="deliver", to=r)["attempt"], 1)
        wait_for(lambda: not self.queued(), 20, what="an empty queue")
        time.sleep(0.5)
        for r in ("bob@example.test", "dave@example.test", "erin@example.test", "frank@example.test"):
            self.assertEqual(len(m.find_logs(event="deliver", to=r)), 1, r)
        self.assertEqual([x["to"] for x in m.find_logs(event="bounce")], ["carol@example.test"])
        dsns = wait_for(self.dsns, 20, what="the DSN")
        time.sleep(0.5)
        dsns = self.dsns()
        self.assertEqual(len(dsns), 1)
        self.assertIn("Final-Recipient: rfc822; carol@example.test", dsns[0])
        self.assertIn("Action: failed", dsns[0])
        self.assertIn("Status: 5.1.1", dsns[0])
        for r in ("bob@", "dave@", "erin@", "frank@"):
            self.assertNotIn("Final-Recipient: rfc822; " + r, dsns[0])
        self.assertNotIn("Action: delayed", dsns[0])
        mails = [l for t in self.hops[0].transcripts for l in t if l.startswith("MAIL")]
        self.assertEqual(len(mails), 2)  # the first transaction, and one for the two 452s

    def test_4xx_to_the_message_defers_it_whole(self):
        # RFC 5321 §4.2.5: after a 4xx to the final dot the client keeps the message. The
        # connection stays usable (the flush takes it from the pool).
        answers = ["451 4.3.0 try again later"]

        def after_dot(conn):
            conn.reply(answers.pop() if answers else "250 2.0.0 queued")
            return True
        m = self.start(lambda conn, n: (conn.greet(), serve(conn, after_dot=after_dot)))
        sendmail(m, SENDER, ["bob@example.test", "carol@example.test"], BODY)
        self.assert_deferred(["bob@example.test", "carol@example.test"], "451 4.3.0 try again later")
        self.assertEqual(self.queued()["bob@example.test"], "451 4.3.0 try again later")
        self.flush_and_deliver(["bob@example.test", "carol@example.test"])

    def test_5xx_to_the_message_bounces_it_with_one_dsn(self):
        def refuse(conn, n):
            conn.greet()
            serve(conn, after_dot=lambda c: c.reply("554-5.7.1 rejected as spam\r\n554 5.7.1 see the policy")
                  or True)
        m = self.start(refuse)
        sendmail(m, SENDER, ["bob@example.test", "carol@example.test"], BODY)
        for r in ("bob@example.test", "carol@example.test"):
            line = m.wait_log(event="bounce", to=r)
            self.assertEqual(line["reply"], "554-5.7.1 rejected as spam 554 5.7.1 see the policy")
        wait_for(lambda: not self.queued(), 20, what="an empty queue")
        dsns = wait_for(self.dsns, 20, what="the DSN")
        time.sleep(0.5)
        self.assertEqual(len(self.dsns()), 1)
        for r in ("bob@example.test", "carol@example.test"):
            self.assertIn("Final-Recipient: rfc822; " + r, dsns[0])
        self.assertIn("Status: 5.7.1", dsns[0])
        self.assertIn("Diagnostic-Code: smtp; 554-5.7.1 rejected as spam", dsns[0])
        self.assertEqual([x for x in m.find_logs(event="deliver") if x["to"] != SENDER], [])  # the DSN is
        self.assertEqual(m.find_logs(event="defer"), [])

    def test_next_hop_that_stops_reading_the_message_times_out(self):
        # RFC 5321 §4.5.3.2.5: a block of the message that cannot go out within
        # queue.data_timeout ends the attempt (it waited 3 minutes, whatever the config):
        # deferred, and the retry delivers.
        release = threading.Event()
        self.addCleanup(release.set)

        def stall(conn):
            conn.greet()
            serve(conn, after_354=lambda c: release.wait(60) and False)  # reads no more of it
        m = self.start(first_then_good(stall), queue_extra='reply_timeout = "5s"\ndata_timeout = "2s"')
        body = b"Subject: big\r\n\r\n" + (b"z" * 98 + b"\r\n") * 80_000
        started = time.monotonic()
        sendmail(m, SENDER, ["bob@example.test"], body)
        self.assert_deferred(["bob@example.test"], "timeout sending the message")
        self.assertLess(time.monotonic() - started, 60)
        release.set()
        self.flush_and_deliver(["bob@example.test"])


if __name__ == "__main__":
    unittest.main()
