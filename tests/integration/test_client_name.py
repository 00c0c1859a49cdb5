"""The client's verified name ([server] reverse_dns, forward-confirmed reverse DNS as Postfix's
smtpd finds it) end to end: the real daemon asks a real DNS server on loopback
(tests/support/dns_server.py) for the PTR of each client and the A records of the names,
and writes `Received: from HELO (NAME [IP])`, or `unknown` in place of NAME, and the
`client_name` log field. Clients are told apart by their loopback source address:
127.0.0.1 has a PTR whose name points back, .2 a PTR whose name points elsewhere, .3 a PTR
the server never answers. The greeting never waits for the lookup; only the end of the
data does, at most dns.timeout after the connect. Only 127.0.0.0/8 is used."""

import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from authzone import header_values, owned_dns  # noqa: E402
from harness import owned_moat, owned_sink, wait_for  # noqa: E402

DNS_TIMEOUT_S = 2
ZONE = {
    "1.0.0.127.in-addr.arpa": [{"PTR": "Relay.Lists.TEST"}],
    "relay.lists.test": [{"A": "127.0.0.1"}],
    "2.0.0.127.in-addr.arpa": [{"PTR": "liar.lists.test"}],
    "liar.lists.test": [{"A": "127.0.0.99"}],
    "3.0.0.127.in-addr.arpa": ["TIMEOUT"],
    # a p=reject domain the test forges in From:, and a sender domain whose SPF passes
    "bank.test": [{"TXT": "v=spf1 -all"}],
    "_dmarc.bank.test": [{"TXT": "v=DMARC1; p=reject"}],
    "sender.test": [{"TXT": "v=spf1 ip4:127.0.0.0/8 -all"}],
}


def config(nameserver, extra=""):
    return f'\n[dns]\nnameservers = ["{nameserver}"]\ntimeout = "{DNS_TIMEOUT_S}s"\n' + extra


def message(subject, author="alice@sender.test"):
    return (f"From: {author}\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@sender.test>\r\n\r\nhello\r\n").encode()


class ClientNameTest(unittest.TestCase):
    """One DNS server, Sink and daemon; loopback is not a relay client, so SPF and DMARC
    apply and `lists.test` is a DMARC trusted forwarder (matched by the verified name)."""

    @classmethod
    def setUpClass(cls):
        cls.dns = owned_dns(cls, ZONE)
        cls.sink = owned_sink(cls)
        cls.moat = owned_moat(cls, routes=[("example.test", f"smtp:127.0.0.1:{cls.sink.port}")],
                              networks=["10.255.255.0/24"], reverse_dns=None,  # the default: on
                              extra=config(cls.dns.nameserver, '\n[dmarc]\ntrusted_forwarders = ["lists.test"]\n'))

    def send(self, client_ip, subject, author="alice@sender.test"):
        """One message from `client_ip`: returns (seconds from connect to the greeting,
        seconds from connect to the reply to the data, that reply, the delivered message)."""
        t0 = time.monotonic()
        s = self.moat.smtp(source_address=(client_ip, 0))  # returns once the greeting is read
        greeting = time.monotonic() - t0
        s.ehlo()
        self.assertEqual(s.mail("alice@sender.test")[0], 250)
        self.assertEqual(s.rcpt("bob@example.test")[0], 250)
        reply = s.data(message(subject, author))
        done = time.monotonic() - t0
        s.quit()
        delivered = None
        if reply[0] == 250:
            mark = f"Subject: {subject}\r\n".encode()
            delivered = wait_for(lambda: [m["data"] for m in self.sink.messages if mark in m["data"]], 30,
                                 what=f"{subject!r} at the sink")[0]
        return greeting, done, reply, delivered

    def test_a_name_that_points_back_is_in_received_and_the_logs(self):
        _, _, reply, data = self.send("127.0.0.1", "verified name")
        self.assertEqual(reply[0], 250, reply)
        self.assertTrue(data.startswith(b"Received: from client.test (relay.lists.test [127.0.0.1])\r\n"),
                        data[:120])
        queue_id = reply[1].decode().rsplit(" ", 1)[-1]
        accept = self.moat.wait_log(event="accept", queue_id=queue_id)
        self.assertEqual(accept["client_name"], "relay.lists.test")
        ev = self.moat.wait_log(event="disconnect", session=accept["session"])
        self.assertEqual(ev["client_name"], "relay.lists.test")
        self.assertIn("relay.lists.test A", self.dns.queries())

    def test_a_name_that_points_elsewhere_is_unknown(self):
        _, _, reply, data = self.send("127.0.0.2", "name pointing elsewhere")
        self.assertEqual(reply[0], 250, reply)
        self.assertTrue(data.startswith(b"Received: from client.test (unknown [127.0.0.2])\r\n"), data[:120])
        self.assertNotIn(b"liar.lists.test", data)
        accept = self.moat.wait_log(event="accept", client_ip="127.0.0.2")
        self.assertEqual(accept["client_name"], "unknown")
        self.assertIn("liar.lists.test A", self.dns.queries())  # asked, and it did not point back

    def test_a_silent_dns_server_delays_no_greeting_and_the_data_at_most_dns_timeout(self):
        greeting, done, reply, data = self.send("127.0.0.3", "silent dns")
        self.assertLess(greeting, 1.0, "the greeting waited for the lookup")
        self.assertEqual(reply[0], 250, reply)  # the message is still taken
        # The end of the data waited for the lookup until its deadline, dns.timeout after
        # the connect, and not longer.
        self.assertGreater(done, DNS_TIMEOUT_S - 0.5)
        self.assertLess(done, DNS_TIMEOUT_S + 1.5)
        self.assertTrue(data.startswith(b"Received: from client.test (unknown [127.0.0.3])\r\n"), data[:120])
        self.assertIn("3.0.0.127.in-addr.arpa PTR", self.dns.queries())
        accept = self.moat.wait_log(event="accept", client_ip="127.0.0.3")
        self.assertEqual(accept["client_name"], "unknown")

    def test_a_client_gone_while_its_lookup_runs_leaves_the_daemon_well(self):
        # One leaves before any mail, one right after its message's end, which waits for the
        # name (the session is not reading then: it sees the close when it writes the reply,
        # as after slow filters).
        s = self.moat.smtp(source_address=("127.0.0.3", 0))
        s.ehlo()
        s.quit()
        raw = socket.create_connection(("127.0.0.1", self.moat.port), timeout=10, source_address=("127.0.0.3", 0))
        raw.recv(1024)
        raw.sendall(b"EHLO client.test\r\nMAIL FROM:<alice@sender.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        got = b""
        while b"354 " not in got:  # the replies to EHLO, MAIL and RCPT come first
            chunk = raw.recv(4096)
            self.assertTrue(chunk, got)
            got += chunk
        raw.sendall(message("gone while waiting") + b".\r\n")
        raw.close()
        evs = self.moat.wait_log(event="disconnect", client_ip="127.0.0.3", count=2)
        self.assertEqual([e["client_name"] for e in evs[-2:]], ["unknown", "unknown"])
        time.sleep(DNS_TIMEOUT_S + 0.5)  # the lookups end after their sessions
        self.assertIsNone(self.moat.proc.poll())
        _, _, reply, _ = self.send("127.0.0.1", "after the departures")
        self.assertEqual(reply[0], 250, reply)

    def test_dmarc_trusted_forwarders_match_the_verified_name(self):
        # From: a p=reject domain whose SPF and DKIM fail: only the forwarder rule lets it in,
        # and only the verified name (relay.lists.test) names lists.test.
        _, _, reply, data = self.send("127.0.0.1", "forwarded list mail", author="ceo@bank.test")
        self.assertEqual(reply[0], 250, reply)
        results = " ".join(header_values(data, "Authentication-Results"))
        self.assertIn("reason=trusted_forwarder", results)
        _, _, reply, _ = self.send("127.0.0.2", "forged elsewhere", author="ceo@bank.test")
        self.assertEqual(reply[0], 550, reply)  # no verified name: DMARC's p=reject applies


class ReverseDnsOffTest(unittest.TestCase):
    def test_off_asks_no_ptr_and_writes_unknown(self):
        dns = owned_dns(self, ZONE)
        sink = owned_sink(self)
        moat = owned_moat(self, routes=[("example.test", f"smtp:127.0.0.1:{sink.port}")], reverse_dns=False,
                          extra=config(dns.nameserver))
        with open(moat.config_path) as f:
            self.assertIn("\nreverse_dns = false\n", f.read())
        s = moat.smtp(source_address=("127.0.0.1", 0))
        s.sendmail("alice@sender.test", ["bob@example.test"], message("no lookups"))
        s.quit()
        data = sink.wait_messages(1)[0]["data"]
        self.assertTrue(data.startswith(b"Received: from client.test (unknown [127.0.0.1])\r\n"), data[:120])
        self.assertEqual(moat.wait_log(event="accept")["client_name"], "unknown")
        self.assertEqual(moat.wait_log(event="disconnect")["client_name"], "unknown")
        self.assertEqual([q for q in dns.queries() if q.endswith(" PTR")], [])


if __name__ == "__main__":
    unittest.main()
