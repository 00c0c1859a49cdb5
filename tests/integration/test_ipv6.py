"""IPv6 end to end: the real daemon listening on [::1] and on the [::] wildcard, IPv6 clients
and an IPv4 client reaching the wildcard (an IPv4-mapped address, ::ffff:127.0.0.1, is that
IPv4 address everywhere), relay.networks with IPv6 CIDRs, the Received: header's address
literal (RFC 5321 §4.1.3, §4.4), DNSBL names (RFC 5782 §2.4) and SPF ip6/%{i} (RFC 7208 §5.6,
§7.3) asked of the loopback DNS server, and delivery to an IPv6 next hop. Only ::1 and
127.0.0.1 are used; without a usable ::1 the tests are skipped."""

import os
import smtplib
import socket
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from authzone import owned_dns  # noqa: E402
from harness import RawClient, free_port, ipv6_loopback, owned_moat, owned_sink  # noqa: E402


def listener_port(moat, address):
    return next(ev["port"] for ev in moat.find_logs(event="listen") if ev["address"] == address)


def connect(host, port):
    c = RawClient.__new__(RawClient)
    c.sock = socket.create_connection((host, port), timeout=15)
    c.buf = b""
    return c


def send(host, port, rcpts, frm="a@sender.test"):
    """EHLO client.test, one message to `rcpts`; returns (EHLO reply lines, {rcpt: code}, DATA code)."""
    s = smtplib.SMTP(host, port, local_hostname="client.test", timeout=30)
    try:
        code, ehlo = s.ehlo()
        s.mail(frm)
        codes = {r: s.rcpt(r)[0] for r in rcpts}
        data = s.data(f"From: {frm}\r\nSubject: v6\r\n\r\nhi\r\n".encode())[0] if 250 in codes.values() else None
        s.quit()
        return ehlo.decode().splitlines(), codes, data
    finally:
        s.close()


def six_listeners():
    return '\n[[listener]]\naddress = "[::1]:0"\n\n[[listener]]\naddress = "[::]:0"\n'


@unittest.skipUnless(ipv6_loopback(), "::1 is not usable here")
class Ipv6SessionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.moat = owned_moat(cls, networks=["::1/128", "fe80::/10", "2001:db8::/32"], extra=six_listeners())
        cls.v6 = listener_port(cls.moat, "[::1]:0")
        cls.wild = listener_port(cls.moat, "[::]:0")

    def received(self, address):
        files = self.moat.maildir_files(address)
        self.assertEqual(len(files), 1, files)
        with open(files[0], "rb") as f:
            head = f.read().split(b"\n\n", 1)[0].decode()
        return head.split("Received: ", 1)[1].split("\nAuthentication-Results", 1)[0]

    def test_received_and_ehlo_name_an_ipv6_client_by_its_address_literal(self):
        # RFC 5321 §4.4: TCP-info is an address-literal, "[IPv6:" IPv6-addr "]" (§4.1.3);
        # a bare "[::1]" is not one.
        ehlo, codes, data = send("::1", self.v6, ["lit6@example.test"])
        self.assertEqual(ehlo[0], "mx.moat.test Hello client.test [IPv6:::1]")
        self.assertEqual(data, 250)
        self.moat.wait_log(event="deliver", to="lit6@example.test")
        self.assertTrue(self.received("lit6@example.test").startswith("from client.test (unknown [IPv6:::1])\n"))
        # A HELO argument that is no domain: the literal stands in the "from" part.
        c = connect("::1", self.v6)
        c.read_reply()
        for line in ("HELO bad(name", "MAIL FROM:<a@sender.test>", "RCPT TO:<lit6b@example.test>", "DATA"):
            c.send(line + "\r\n")
            c.read_reply()
        c.send("Subject: v6\r\n\r\nhi\r\n.\r\n")
        self.assertEqual(c.code(), 250)
        c.close()
        self.moat.wait_log(event="deliver", to="lit6b@example.test")
        self.assertTrue(self.received("lit6b@example.test").startswith("from [IPv6:::1] (helo=bad?name unknown [IPv6:::1])\n"))

    def test_an_ipv4_client_on_the_wildcard_is_its_ipv4_address(self):
        ehlo, codes, data = send("127.0.0.1", self.wild, ["lit4@example.test", "out@other.test"])
        self.assertEqual(ehlo[0], "mx.moat.test Hello client.test [127.0.0.1]")
        # Not in relay.networks (IPv6 only): ::ffff:127.0.0.1 is not ::1.
        self.assertEqual(codes, {"lit4@example.test": 250, "out@other.test": 554})
        ev = self.moat.wait_log(event="reject", to="out@other.test")
        self.assertEqual(ev["client_ip"], "127.0.0.1")
        self.assertEqual(self.moat.wait_log(event="connect", client_ip="127.0.0.1")["listener"], "[::]:0")
        self.moat.wait_log(event="deliver", to="lit4@example.test")
        self.assertTrue(self.received("lit4@example.test").startswith("from client.test (unknown [127.0.0.1])\n"))

    def test_ipv6_relay_networks_let_their_clients_relay(self):
        for port in (self.v6, self.wild):
            with self.subTest(port=port):
                ehlo, codes, data = send("::1", port, ["x@other.test"])
                self.assertEqual(codes, {"x@other.test": 250})
        self.assertEqual(self.moat.find_logs(event="reject", client_ip="::1"), [])

    def test_ipv6_literal_recipients_are_refused_to_others_as_relaying(self):
        ehlo, codes, data = send("127.0.0.1", self.wild, ["u@[IPv6:::1]", "v@example.test"])
        self.assertEqual(codes["u@[IPv6:::1]"], 554)


@unittest.skipUnless(ipv6_loopback(), "::1 is not usable here")
class Ipv6ConfigTest(unittest.TestCase):
    def test_ipv4_mapped_networks_are_the_ipv4_ones(self):
        m = owned_moat(self, networks=["::ffff:127.0.0.0/104"], extra=six_listeners())
        _, codes, _ = send("127.0.0.1", listener_port(m, "[::]:0"), ["x@other.test"])
        self.assertEqual(codes, {"x@other.test": 250})
        _, codes, _ = send("::1", listener_port(m, "[::1]:0"), ["x@other.test"])
        self.assertEqual(codes, {"x@other.test": 554})

    def test_bad_ipv6_networks_are_refused_with_file_and_line(self):
        m = owned_moat(self, networks=["2001:db8::/129"], start=False)
        r = m.cli("check", check=False)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stderr, r"moat\.toml:\d+: relay\.networks: \"2001:db8::/129\" is not an address or CIDR")

    def test_connections_per_address_count_ipv6_clients(self):
        m = owned_moat(self, extra=six_listeners() + "\n[limits]\nmax_connections_per_ip = 1\n")
        port = listener_port(m, "[::1]:0")
        first = connect("::1", port)
        self.assertEqual(first.code(), 220)
        second = connect("::1", listener_port(m, "[::]:0"))
        code, text = second.read_reply()[-1]
        self.assertEqual((code, text), (421, "4.7.0 mx.moat.test Too many connections from your address"))
        second.close()
        # An IPv4 client is someone else.
        third = connect("127.0.0.1", m.port)
        self.assertEqual(third.code(), 220)
        third.close()
        first.close()
        ev = m.wait_log(event="reject", stage="connect")
        self.assertEqual(ev["client_ip"], "::1")

    def test_metrics_listen_on_ipv6(self):
        port = free_port()
        m = owned_moat(self, server_extra=f'metrics_listen = "[::1]:{port}"')
        s = socket.create_connection(("::1", port), timeout=10)
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        s.close()
        self.assertTrue(reply.startswith(b"HTTP/1.0 200"), reply)
        m.stop()


NIBBLES = ".".join("0" * 31) + ".1"  # ::1, 32 nibbles from the most significant
ZONE = {
    # RFC 5782 §2.4: the nibbles reversed, least significant first.
    NIBBLES[::-1] + ".bl.test": [{"A": "127.0.0.2"}],
    "v6.test": [{"TXT": "v=spf1 ip6:::1/128 -all"}],
    "v4only.test": [{"TXT": "v=spf1 ip4:127.0.0.1 -all"}],
    # RFC 7208 §7.3: %{i} of an IPv6 client is its nibbles, dot-separated, in order.
    "macro.test": [{"TXT": "v=spf1 exists:%{i}.ok.macro.test -all"}],
    NIBBLES + ".ok.macro.test": [{"A": "127.0.0.2"}],
    "mx6.test": [{"MX": [10, "mail.mx6.test"]}],
    "mail.mx6.test": [{"AAAA": "::1"}],
}


@unittest.skipUnless(ipv6_loopback(), "::1 is not usable here")
class Ipv6LookupsAndDeliveryTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dns = owned_dns(cls, ZONE)
        cls.sink = owned_sink(cls, host="::1")
        cls.moat = owned_moat(
            cls, networks=["10.255.255.0/24"], relay_domains=("example.test", "mx6.test"),
            routes=[("example.test", f"smtp:[::1]:{cls.sink.port}")],
            extra=six_listeners() + f'\n[dns]\nnameservers = ["{cls.dns.nameserver}"]\ntimeout = "1s"\n'
                                    '\n[dnsbl]\nzones = ["bl.test"]\naction = "tag"\n')
        cls.v6 = listener_port(cls.moat, "[::1]:0")

    def test_dnsbl_and_spf_look_up_an_ipv6_client(self):
        for sender, spf in (("a@v6.test", "pass"), ("a@v4only.test", "fail"), ("a@macro.test", "pass")):
            with self.subTest(sender=sender):
                _, codes, data = send("::1", self.v6, [f"{sender.split('@')[1]}@example.test"], frm=sender)
                self.assertEqual(data, 250)
                ev = self.moat.wait_log(event="accept", **{"from": sender})
                self.assertEqual(ev["filters"]["spf"]["spf_result"], spf)
                self.assertEqual(ev["filters"]["dnsbl"]["listed"], ["bl.test"])
        self.assertIn(NIBBLES[::-1] + ".bl.test A", self.dns.queries())

    def test_a_route_to_an_ipv6_next_hop_logs_it_with_brackets(self):
        before = len(self.sink.messages)
        _, codes, data = send("127.0.0.1", self.moat.port, ["route6@example.test"])
        self.assertEqual(data, 250)
        self.sink.wait_messages(before + 1)
        ev = self.moat.wait_log(event="deliver", to="route6@example.test")
        # "::1:PORT" would read as one IPv6 address.
        self.assertEqual(ev["relay"], f"[::1]:{self.sink.port}")

    def test_mx_hosts_with_only_an_aaaa_record_are_tried(self):
        _, codes, data = send("127.0.0.1", self.moat.port, ["mx6@mx6.test"])
        self.assertEqual(data, 250)
        ev = self.moat.wait_log(event="defer", to="mx6@mx6.test")
        # Nothing listens on [::1]:25 here: the attempt went to the AAAA address.
        self.assertIn("mail.mx6.test[::1]:25", ev["reply"])

    def test_address_literal_recipients_go_to_the_address_without_an_mx_lookup(self):
        # RFC 5321 §4.1.3: user@[IPv6:::1] names the host; "[ipv6:::1]" is no DNS name.
        m = owned_moat(self, networks=["127.0.0.0/8"],
                       extra=f'\n[dns]\nnameservers = ["{self.dns.nameserver}"]\ntimeout = "1s"\n')
        _, codes, data = send("127.0.0.1", m.port, ["lit@[IPv6:::1]", "lit4@[127.0.0.1]"])
        self.assertEqual(codes, {"lit@[IPv6:::1]": 250, "lit4@[127.0.0.1]": 250})
        # Nothing listens on port 25 here: each is deferred after trying its address.
        ev = m.wait_log(event="defer", to="lit@[IPv6:::1]")
        self.assertIn("[::1]:25: connect", ev["reply"])
        ev = m.wait_log(event="defer", to="lit4@[127.0.0.1]")
        self.assertIn("127.0.0.1:25: connect", ev["reply"])
        self.assertEqual([q for q in self.dns.queries() if "[" in q], [])


if __name__ == "__main__":
    unittest.main()
