"""Delivery to next hops that misbehave, and MX lists that name Moat itself: a DATA command
answered 250 (the message was never sent: not delivered), a 421 on a pooled connection, a
STARTTLS handshake that never finishes with tls = "may", a delay DSN after a 552 to RCPT, a
message over the next hop's SIZE, and RFC 5321 §5.1's "MX is myself" (loops back: 5.4.6; a
backup MX waits for its primary).

The next hops are scripted servers on loopback (one handler per connection); every wait is
bounded. The MX cases that need Moat to listen on port 25 (the port MX delivery uses) bind
loopback aliases 127.0.25.x and are skipped when that is not allowed."""

import os
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import (ScriptedHop, _Server, _SinkHandler, maildir_texts, Moat, sendmail, serve_commands, Sink,  # noqa: E402
                     wait_for)
from authzone import DnsServer  # noqa: E402

SENDER = "alice@sender.test"


def send(moat, rcpts, body=b"Subject: t\r\n\r\nbody\r\n", sender=SENDER):
    sendmail(moat, sender, rcpts, body)


def dsn_texts(moat, addr=SENDER):
    return maildir_texts(moat, addr)


class NextHopTest(unittest.TestCase):
    def start(self, handler, tls=None, **kw):
        """A scripted next hop and a Moat routing example.test to it, with the route's `tls`
        when given (both stopped by cleanups)."""
        self.hop = ScriptedHop(handler)
        self.addCleanup(self.hop.stop)
        kw.setdefault("retry", '["1h"]')
        to = f"smtp:127.0.0.1:{self.hop.port}"
        if tls:
            kw["routes"] = [("sender.test", "maildir:mail")]
            kw["extra"] = kw.get("extra", "") + f'\n[[route]]\ndomains = ["example.test"]\nto = ["{to}"]\ntls = "{tls}"\n'
        else:
            kw["routes"] = [("example.test", to), ("sender.test", "maildir:mail")]
        self.moat = Moat(**kw)
        self.addCleanup(self.moat.cleanup)
        return self.moat

    def test_data_answered_250_is_not_a_delivery(self):
        # RFC 5321 §4.3.2: only 354 lets the message go, only the reply to its final dot
        # accepts it. A 250 to DATA left the recipient "delivered" and the message removed,
        # unsent, with no DSN. Now: deferred (451 4.5.0), still queued, connection closed.
        for ext in (("8BITMIME",), ("PIPELINING", "8BITMIME")):
            with self.subTest(ext=ext):
                def handler(conn, n):
                    conn.greet(ext)
                    serve_commands(conn, data_cmd="250 2.0.0 ok whatever")
                m = self.start(handler)
                send(m, ["bob@example.test", "carol@example.test"])
                line = m.wait_log(event="defer", to="bob@example.test")
                self.assertTrue(line["reply"].startswith("451 4.5.0 unexpected reply to DATA: 250 2.0.0 ok whatever"),
                                line)
                m.wait_log(event="defer", to="carol@example.test")
                time.sleep(0.5)
                self.assertEqual(m.find_logs(event="deliver"), [])
                self.assertEqual(m.find_logs(event="bounce"), [])
                listed = m.cli("queue", "list", "--json").stdout
                self.assertIn("bob@example.test", listed)
                # the connection was not used again: no RSET, no QUIT on it, no second message
                self.assertEqual(len(self.hop.transcripts), 1)
                self.assertFalse([l for l in self.hop.transcripts[0] if l.upper().startswith(("RSET", "QUIT"))],
                                 self.hop.transcripts[0])

    def test_421_to_mail_on_a_pooled_connection_opens_a_new_one(self):
        # RFC 5321 §3.8: after a 421 the connection is closed. It went back to the pool, so the
        # next message went into a closing connection and waited a whole retry interval.
        def handler(conn, n):
            conn.greet(("8BITMIME",))
            while n == 0:
                line = conn.line()
                if line.upper().startswith("MAIL"):
                    time.sleep(1.0)  # the second message is queued behind this one by now
                    conn.reply("421 4.3.2 shutting down")
                    return
                conn.reply("250 ok")
            serve_commands(conn)
        m = self.start(handler, queue_extra="max_per_destination = 1")
        s = m.smtp()
        s.ehlo()
        s.sendmail(SENDER, ["a@example.test"], b"Subject: one\r\n\r\nbody\r\n")
        s.sendmail(SENDER, ["b@example.test"], b"Subject: two\r\n\r\nbody\r\n")
        s.quit()
        line = m.wait_log(event="defer", to="a@example.test")
        self.assertEqual(line["reply"], "421 4.3.2 shutting down")
        m.wait_log(event="deliver", to="b@example.test", timeout=20)
        self.assertEqual(m.find_logs(event="defer", to="b@example.test"), [])
        self.assertEqual(len(self.hop.transcripts), 2)

    def test_starttls_handshake_that_hangs_falls_back_to_plain_text_with_may(self):
        # README, [[route]] tls = "may": plain text over a new connection if the handshake
        # fails; one that never finishes (220, then silence) failed too, not a deferral.
        def handler(conn, n):
            conn.reply("220 hop.test ESMTP")
            conn.line()
            conn.reply("250-hop.test\r\n250-PIPELINING\r\n250 STARTTLS")
            while True:
                line = conn.line()
                verb = line.split(" ")[0].upper()
                if verb == "STARTTLS":
                    conn.reply("220 go ahead")
                    while conn.sock.recv(65536):  # the ClientHello, never answered
                        pass
                    return
                if verb == "DATA":
                    conn.reply("354 go ahead")
                    conn.data()
                    conn.reply("250 2.0.0 queued")
                elif verb == "QUIT":
                    conn.reply("221 bye")
                    return
                else:
                    conn.reply("250 ok")
        m = self.start(handler, tls="may", queue_extra='reply_timeout = "2s"')
        send(m, ["a@example.test"])
        line = m.wait_log(event="deliver", to="a@example.test", timeout=30)
        self.assertNotIn("tls", line)
        fallback = m.wait_log(event="tls_fallback")
        self.assertIn("timeout in TLS handshake", fallback["error"])
        self.assertEqual(m.find_logs(event="defer"), [])

    def test_delay_dsn_after_552_to_rcpt_has_a_transient_status(self):
        # RFC 5321 §4.5.3.1.10: a 552 to RCPT is retried; RFC 3464 §2.3.4: "delayed" goes with
        # a 4.x.x status. The Diagnostic-Code, the log and the queue keep the server's words.
        def handler(conn, n):
            conn.greet()
            serve_commands(conn, rcpt=lambda line: "552 5.2.2 mailbox full", data_cmd="554 5.5.1 no valid recipients")
        m = self.start(handler, retry='["2s"]', delay_warning="1s")
        send(m, ["full@example.test"])
        line = m.wait_log(event="defer", to="full@example.test")
        self.assertEqual(line["reply"], "552 5.2.2 mailbox full")
        texts = wait_for(lambda: dsn_texts(m), 30, what="the delay DSN")
        dsn = texts[0]
        self.assertIn("Action: delayed", dsn)
        self.assertIn("Status: 4.2.2", dsn)
        self.assertNotIn("Status: 5.", dsn)
        self.assertIn("Diagnostic-Code: smtp; 552 5.2.2 mailbox full", dsn)
        qid = m.find_logs(event="defer", to="full@example.test")[0]["queue_id"]
        self.assertIn("552 5.2.2 mailbox full", m.cli("queue", "show", qid).stdout)

    def test_message_over_the_next_hops_size_is_returned_unsent(self):
        # RFC 1870: a next hop that announces SIZE 1000 gets no larger message: it is refused
        # locally with 552 5.3.4, and the sender gets a DSN.
        def handler(conn, n):
            conn.greet(("PIPELINING", "8BITMIME", "SIZE 1000"))
            serve_commands(conn)
        m = self.start(handler)
        send(m, ["a@example.test"], body=b"Subject: big\r\n\r\n" + (b"z" * 70 + b"\r\n") * 60)
        line = m.wait_log(event="bounce", to="a@example.test")
        self.assertRegex(line["reply"],
                         r"^552 5\.3\.4 message size \d+ exceeds fixed maximum message size 1000 of the next hop "
                         r"\(not sent\)$")
        dsn = wait_for(lambda: dsn_texts(m), 30, what="the DSN")[0]
        self.assertIn("Status: 5.3.4", dsn)
        self.assertIn("Diagnostic-Code: X-Moat; 552 5.3.4", dsn)
        self.assertFalse([l for t in self.hop.transcripts for l in t if l.upper().startswith("MAIL")])


class AddressSink(Sink):
    """The harness's sink on another loopback address (MX delivery goes to port 25)."""

    def __init__(self, address, port):
        self.address = address
        super().__init__(port=port)

    def start(self):
        self.server = _Server((self.address, self._port), _SinkHandler)
        self.server.sink = self
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def can_bind(addr, port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libuv binds Moat's listener
        try:
            s.bind((addr, port))
            return True
        except OSError:
            return False


def refused(addr, port):
    """Nothing listens there (a host-wide listener on port 25 would take it)."""
    try:
        socket.create_connection((addr, port), timeout=2).close()
        return False
    except OSError:
        return True


class MxIsMyselfTest(unittest.TestCase):
    """RFC 5321 §5.1: Moat in a domain's MX list. Moat's hostname (harness) is mx.moat.test."""

    LISTEN = "127.0.25.77"  # Moat listens here on port 25 (the address tests)
    PRIMARY = "127.0.25.79"  # a sink on port 25
    DOWN = "127.0.25.78"  # nothing listens: connection refused

    ZONE = {
        "mx.moat.test": [{"A": "127.0.25.77"}],
        "alias.moat.test": [{"A": "127.0.25.77"}],  # another name for Moat's listener
        "down.hop.test": [{"A": "127.0.25.78"}],
        "up.hop.test": [{"A": "127.0.25.79"}],
        # Moat is the best MX, by name or by address
        "byname.test": [{"MX": [10, "mx.moat.test"]}, {"MX": [20, "up.hop.test"]}],
        "byaddr.test": [{"MX": [10, "alias.moat.test"]}],
        # Moat is the backup MX (20) and the primary (10) is down or has no address
        "backup.test": [{"MX": [10, "down.hop.test"]}, {"MX": [20, "mx.moat.test"]}],
        "backupaddr.test": [{"MX": [10, "down.hop.test"]}, {"MX": [20, "alias.moat.test"]}],
        "noprimary.test": [{"MX": [10, "gone.hop.test"]}, {"MX": [20, "MX.Moat.Test"]}],
        # the primary is up: delivered there, never to Moat nor to the MX after it
        "primaryup.test": [{"MX": [10, "up.hop.test"]}, {"MX": [20, "alias.moat.test"]},
                           {"MX": [30, "down.hop.test"]}],
    }

    def setUp(self):
        if not refused(self.DOWN, 25):
            self.skipTest(f"something listens on {self.DOWN}:25")
        self.dns = DnsServer(self.ZONE)
        self.addCleanup(self.dns.stop)

    def moat(self, listen25):
        extra = f'\n[dns]\nnameservers = ["{self.dns.nameserver}"]\ntimeout = "1s"\n'
        if listen25:
            extra += f'\n[[listener]]\naddress = "{self.LISTEN}:25"\n'
        m = Moat(routes=[("sender.test", "maildir:mail"), ([], "mx")], retry='["1h"]', start=False, extra=extra)
        self.addCleanup(m.cleanup)
        m.start()
        # the harness reads the first listener's port: make it the loopback one
        m.port = [l["port"] for l in m.logs() if l.get("event") == "listen" and l["port"] != 25][0]
        return m

    def assert_no_loop(self, m):
        accepted = [l for l in m.logs() if l.get("event") == "accept"]
        self.assertEqual(len(accepted), 1, "the message came back to Moat")

    def test_best_mx_by_name_bounces_as_a_loop_at_once(self):
        m = self.moat(listen25=False)
        send(m, ["u@byname.test"])
        line = m.wait_log(event="bounce", to="u@byname.test", timeout=20)
        self.assertEqual(line["reply"], "554 5.4.6 mail for byname.test loops back to myself")
        self.assertEqual(line["attempt"], 1)
        self.assert_no_loop(m)
        dsn = wait_for(lambda: dsn_texts(m), 30, what="the DSN")[0]
        self.assertIn("Status: 5.4.6", dsn)
        self.assertIn("loops back to myself", dsn)

    def test_backup_mx_by_name_waits_for_the_primary(self):
        m = self.moat(listen25=False)
        send(m, ["u@backup.test", "v@noprimary.test"])
        line = m.wait_log(event="defer", to="u@backup.test", timeout=20)
        self.assertTrue(line["reply"].startswith("451 4.4.1"), line)
        self.assertIn(self.DOWN, line["reply"])
        line = m.wait_log(event="defer", to="v@noprimary.test", timeout=20)
        self.assertTrue(line["reply"].startswith("451 4.4.4 unable to find primary relay for noprimary.test"), line)
        time.sleep(0.5)
        self.assertEqual(m.find_logs(event="bounce"), [])
        self.assert_no_loop(m)

    def test_mx_by_address_of_a_listener_on_port_25(self):
        if not can_bind(self.LISTEN, 25) or not can_bind(self.PRIMARY, 25):
            self.skipTest("cannot bind loopback aliases on port 25 here")
        primary = AddressSink(self.PRIMARY, 25)
        self.addCleanup(primary.stop)
        m = self.moat(listen25=True)
        send(m, ["u@byaddr.test"])
        send(m, ["u@backupaddr.test"])
        send(m, ["u@primaryup.test"])
        line = m.wait_log(event="bounce", to="u@byaddr.test", timeout=20)
        self.assertEqual(line["reply"], "554 5.4.6 mail for byaddr.test loops back to myself")
        line = m.wait_log(event="defer", to="u@backupaddr.test", timeout=20)
        self.assertTrue(line["reply"].startswith("451 4.4.1"), line)
        m.wait_log(event="deliver", to="u@primaryup.test", timeout=20)
        self.assertEqual([x["rcpts"] for x in primary.messages], [["u@primaryup.test"]])
        time.sleep(0.5)
        self.assertEqual(m.find_logs(event="bounce", to="u@backupaddr.test"), [])
        accepted = [l for l in m.logs() if l.get("event") == "accept"]
        self.assertEqual(len(accepted), 3, "a message came back to Moat")



class MxAddressTest(unittest.TestCase):
    """What an MX list's addresses may make Moat do: at most 10 addresses per delivery attempt
    (100 MX hosts or 50 addresses for one host would each cost a connect timeout), and never
    a connection to 0.0.0.0 (which reaches this host's own loopback)."""

    ZONE = {
        "many.test": [{"MX": [i, f"h{i}.hop.test"]} for i in range(1, 13)],
        "wide.test": [{"MX": [10, "w.hop.test"]}],
        "w.hop.test": [{"A": f"127.0.28.{i}"} for i in range(1, 13)],
        "zero.test": [{"MX": [10, "z.hop.test"]}],
        "z.hop.test": [{"A": "0.0.0.0"}],
        "zero6.test": [{"MX": [10, "z6.hop.test"]}],
        "z6.hop.test": [{"AAAA": "::"}],
        # Six better MX hosts whose lookups never get an answer, then one that works.
        "slow.test": [{"MX": [i, f"t{i}.hop.test"]} for i in range(1, 7)] + [{"MX": [10, "ok.hop.test"]}],
        "ok.hop.test": [{"A": "127.0.29.1"}],
    }
    ZONE.update({f"h{i}.hop.test": [{"A": f"127.0.27.{i}"}] for i in range(1, 13)})
    ZONE.update({f"t{i}.hop.test": ["TIMEOUT"] for i in range(1, 7)})

    def setUp(self):
        self.dns = DnsServer(self.ZONE)
        self.addCleanup(self.dns.stop)
        extra = f'\n[dns]\nnameservers = ["{self.dns.nameserver}"]\ntimeout = "1s"\n'
        self.m = Moat(routes=[("sender.test", "maildir:mail"), ([], "mx")], retry='["1h"]', extra=extra)
        self.addCleanup(self.m.cleanup)

    def test_an_attempt_tries_at_most_ten_addresses(self):
        # The 11th and 12th address (a host name each, or one name's) listen; the first ten
        # refuse. One attempt must stop after ten: deferred, nothing delivered.
        for a in ("127.0.27.11", "127.0.27.12", "127.0.28.11", "127.0.28.12"):
            if not refused(a, 25) or not can_bind(a, 25):
                self.skipTest(f"cannot bind {a}:25 here")
        for a in ("127.0.27.%d" % i for i in range(1, 11)):
            if not refused(a, 25):
                self.skipTest(f"something listens on {a}:25")
        sinks = [AddressSink(a, 25) for a in ("127.0.27.11", "127.0.27.12", "127.0.28.11", "127.0.28.12")]
        for s in sinks:
            self.addCleanup(s.stop)
        send(self.m, ["u@many.test"])
        send(self.m, ["u@wide.test"])
        for to in ("u@many.test", "u@wide.test"):
            line = self.m.wait_log(event="defer", to=to, timeout=30)
            self.assertTrue(line["reply"].startswith("451 4.4.1"), line)
        self.assertEqual([s.connections for s in sinks], [0, 0, 0, 0])
        self.assertEqual(self.m.find_logs(event="deliver"), [])

    def test_mx_hosts_are_looked_up_at_once(self):
        # One after another, six lookups that time out (dns.timeout 1s, each name's AAAA and
        # A together) cost six seconds before the working host was tried; at once, one.
        if not refused("127.0.29.1", 25) or not can_bind("127.0.29.1", 25):
            self.skipTest("cannot bind 127.0.29.1:25 here")
        sink = AddressSink("127.0.29.1", 25)
        self.addCleanup(sink.stop)
        send(self.m, ["u@slow.test"])
        line = self.m.wait_log(event="deliver", to="u@slow.test", timeout=30)
        self.assertLess(line["delay_ms"], 4000, line)
        self.assertEqual(len(sink.messages), 1)
        asked = self.dns.queries()
        self.assertTrue(all(f"t{i}.hop.test A" in asked for i in range(1, 7)), asked)

    def test_an_mx_at_the_unspecified_address_loops_back(self):
        send(self.m, ["u@zero.test"])
        send(self.m, ["u@zero6.test"])
        for d in ("zero.test", "zero6.test"):
            line = self.m.wait_log(event="bounce", to="u@" + d, timeout=20)
            self.assertEqual(line["reply"], f"554 5.4.6 mail for {d} loops back to myself")
        self.assertEqual(len([l for l in self.m.logs() if l.get("event") == "accept"]), 2)


if __name__ == "__main__":
    unittest.main()
