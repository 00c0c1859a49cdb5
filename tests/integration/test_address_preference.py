"""Which address family delivery tries first ([queue] address_preference, Postfix's
smtp_address_preference) and which families it uses at all ([queue] ip_versions, Postfix's
inet_protocols), end to end: a next hop named in DNS (the project's loopback DNS server) with
an AAAA record ::1 and an A record 127.0.0.1, on one port number. On ::1 listens a "blackhole"
the test owns: it takes connections and never greets, as an IPv6 path that swallows packets
costs a timeout before the next address is tried. On 127.0.0.1 a working sink. Only ::1 and
127.0.0.1 are used; without a usable ::1 the tests are skipped. Every wait is bounded."""

import os
import smtplib
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from authzone import owned_dns  # noqa: E402
from harness import Sink, ipv6_loopback, owned_moat  # noqa: E402

TIMEOUT = 3  # queue.connect_timeout and queue.reply_timeout, seconds


class Blackhole:
    """Listens on [::1]:port, accepts and holds every connection, says nothing."""

    def __init__(self, port):
        self.sock = socket.socket(socket.AF_INET6)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("::1", port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.held = []
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
                self.held.append(conn)
            except (socket.timeout, OSError):
                continue

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        for c in self.held:
            c.close()
        self.sock.close()


def sink_and_blackhole(owner):
    """A Sink on 127.0.0.1:P and a Blackhole on [::1]:P, for one free P (a few tries)."""
    for _ in range(20):
        sink = Sink()
        try:
            hole = Blackhole(sink.port)
        except OSError:
            sink.stop()
            continue
        owner.addCleanup(sink.stop)
        owner.addCleanup(hole.stop)
        return sink, hole
    raise AssertionError("no port free on both 127.0.0.1 and ::1")


ZONE = {"dual.hop.test": [{"AAAA": "::1"}, {"A": "127.0.0.1"}]}


def send(port, rcpts):
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as s:
        s.sendmail("a@sender.test", rcpts, b"From: a@sender.test\r\nSubject: family\r\n\r\nhi\r\n")


@unittest.skipUnless(ipv6_loopback(), "::1 is not usable here")
class AddressPreferenceTest(unittest.TestCase):
    def setUp(self):
        self.dns = owned_dns(self, ZONE)
        self.sink, self.hole = sink_and_blackhole(self)

    def moat(self, queue_extra=""):
        return owned_moat(
            self, relay_domains=("dual.test",), retry='["1h"]',
            routes=[("dual.test", f"smtp:dual.hop.test:{self.sink.port}")],
            queue_extra=f'connect_timeout = "{TIMEOUT}s"\nreply_timeout = "{TIMEOUT}s"\n' + queue_extra,
            extra=f'\n[dns]\nnameservers = ["{self.dns.nameserver}"]\ntimeout = "1s"\n')

    def deliver(self, m, rcpt):
        """Sends one message; returns the seconds until the sink had it."""
        start = time.monotonic()
        send(m.port, [rcpt])
        self.sink.wait_messages(1, timeout=4 * TIMEOUT)
        took = time.monotonic() - start
        ev = m.wait_log(event="deliver", to=rcpt)
        self.assertEqual(ev["relay"], f"dual.hop.test[127.0.0.1]:{self.sink.port}")
        return took

    def test_default_tries_the_ipv6_address_first_and_waits_out_its_timeout(self):
        m = self.moat()
        took = self.deliver(m, "u@dual.test")
        self.assertGreaterEqual(took, TIMEOUT - 0.5)
        self.assertEqual(len(self.hole.held), 1)  # the attempt went to [::1] first

    def test_ipv4_preference_delivers_at_once_without_touching_ipv6(self):
        m = self.moat('address_preference = "ipv4"\n')
        took = self.deliver(m, "u@dual.test")
        self.assertLess(took, TIMEOUT - 1)
        self.assertEqual(len(self.hole.held), 0)

    def test_ipv4_only_asks_for_no_aaaa_and_defers_ipv6_literals(self):
        m = self.moat('ip_versions = ["ipv4"]\n')
        took = self.deliver(m, "u@dual.test")
        self.assertLess(took, TIMEOUT - 1)
        self.assertEqual(len(self.hole.held), 0)
        queries = self.dns.queries()
        self.assertIn("dual.hop.test A", queries)
        self.assertNotIn("dual.hop.test AAAA", queries)
        # RFC 5321 §4.1.3: user@[IPv6:::1] names the host; its family is not used here. It waits
        # (451: the admin may enable IPv6) and is never connected to.
        send(m.port, ["lit@[IPv6:::1]"])
        ev = m.wait_log(event="defer", to="lit@[IPv6:::1]")
        self.assertEqual(ev["reply"], "451 4.4.4 host [IPv6:::1] is IPv6, which queue.ip_versions leaves out")
        self.assertEqual(len(self.hole.held), 0)

    def test_any_shuffles_the_two_families(self):
        # A fresh daemon each time: a second message would go over the first one's pooled
        # connection, whatever the order of the addresses.
        ipv4_first = 0
        for i in range(12):  # all 12 the same way by chance: 1 in 2**11
            m = self.moat('address_preference = "any"\n')
            held = len(self.hole.held)
            send(m.port, [f"u{i}@dual.test"])
            m.wait_log(event="deliver", to=f"u{i}@dual.test", timeout=4 * TIMEOUT)
            m.cleanup()
            ipv4_first += len(self.hole.held) == held
            if ipv4_first and self.hole.held:
                break
        self.assertGreater(ipv4_first, 0)  # some attempt went to 127.0.0.1 first
        self.assertGreater(len(self.hole.held), 0)  # and some to [::1] first
        self.assertEqual(len(self.sink.messages), i + 1)


MX_ZONE = {"mxdual.test": [{"MX": [10, "mx.mxdual.test"]}],
           "mx.mxdual.test": [{"AAAA": "::1"}, {"A": "127.0.0.1"}]}


@unittest.skipUnless(ipv6_loopback(), "::1 is not usable here")
class MxAddressPreferenceTest(unittest.TestCase):
    """The same through an MX lookup (RFC 5321 §5.1), which delivers to port 25: the sink
    takes 127.0.0.1:25 and the blackhole [::1]:25 (skipped when either is taken; ctest runs
    this file apart from test_ipv6.py, which wants nothing there)."""

    def setUp(self):
        self.dns = owned_dns(self, MX_ZONE)
        try:
            self.sink = Sink(port=25)
        except OSError as e:
            self.skipTest(f"cannot listen on 127.0.0.1:25: {e}")
        self.addCleanup(self.sink.stop)
        try:
            self.hole = Blackhole(25)
        except OSError as e:
            self.skipTest(f"cannot listen on [::1]:25: {e}")
        self.addCleanup(self.hole.stop)

    def deliver(self, queue_extra):
        m = owned_moat(
            self, relay_domains=("mxdual.test",), retry='["1h"]', routes=[],
            queue_extra=f'connect_timeout = "{TIMEOUT}s"\nreply_timeout = "{TIMEOUT}s"\n' + queue_extra,
            extra=f'\n[dns]\nnameservers = ["{self.dns.nameserver}"]\ntimeout = "1s"\n')
        start = time.monotonic()
        send(m.port, ["u@mxdual.test"])
        self.sink.wait_messages(1, timeout=4 * TIMEOUT)
        took = time.monotonic() - start
        ev = m.wait_log(event="deliver", to="u@mxdual.test")
        self.assertEqual(ev["relay"], "mx.mxdual.test[127.0.0.1]:25")
        return took

    def test_default_waits_for_the_ipv6_timeout_first(self):
        self.assertGreaterEqual(self.deliver(""), TIMEOUT - 0.5)
        self.assertEqual(len(self.hole.held), 1)

    def test_ipv4_preference_delivers_at_once(self):
        self.assertLess(self.deliver('address_preference = "ipv4"\n'), TIMEOUT - 1)
        self.assertEqual(len(self.hole.held), 0)

if __name__ == "__main__":
    unittest.main()
