"""The client's reverse DNS ([connection] reject_unknown_client), its HELO/EHLO name ([helo])
and its envelope sender's domain ([senders] require_fqdn, reject_unknown_domain), as Postfix's
reject_unknown_reverse_client_hostname, reject_unknown_client_hostname,
reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname, reject_unknown_helo_hostname,
check_helo_access for the gateway's own name, reject_non_fqdn_sender and
reject_unknown_sender_domain, end to end: the real daemon asks a real
DNS server on loopback (tests/support/dns_server.py) at MAIL FROM, and answers MAIL.

Clients are told apart by their loopback source address: 127.0.0.8 is in relay.networks and
127.0.0.9 in connection.allow (neither is ever checked), the others come from the internet.
Only 127.0.0.0/8 is used."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from authzone import owned_dns  # noqa: E402
from harness import owned_moat, owned_sink  # noqa: E402

ZONE = {
    "host.sender.test": [{"A": "127.0.0.1"}],
    "v6.sender.test": [{"AAAA": "::1"}],
    "mail.sender.test": [{"MX": [10, "host.sender.test"]}],
    "nullmx.sender.test": [{"MX": [0, "."]}, {"A": "127.0.0.1"}],
    "txtonly.sender.test": [{"TXT": "v=spf1 -all"}],
    "slow.sender.test": ["TIMEOUT"],
    "xn--bcher-kva.sender.test": [{"A": "127.0.0.1"}],
    # Reverse DNS: .20 points back, .21 names a host elsewhere, .22 an invalid name, .23
    # times out, .24 has none; .25's name times out forward.
    "20.0.0.127.in-addr.arpa": [{"PTR": "Relay.Sender.Test"}],
    "relay.sender.test": [{"A": "127.0.0.20"}],
    "21.0.0.127.in-addr.arpa": [{"PTR": "liar.sender.test"}],
    "liar.sender.test": [{"A": "127.0.0.99"}],
    "22.0.0.127.in-addr.arpa": [{"PTR": "bad_name.sender.test"}],
    "23.0.0.127.in-addr.arpa": ["TIMEOUT"],
    "25.0.0.127.in-addr.arpa": [{"PTR": "slowname.sender.test"}],
    "slowname.sender.test": ["TIMEOUT"],
    # A DNS allowlist: 127.0.0.30 is on it.
    "30.0.0.127.wl.test": [{"A": "127.0.10.2"}],
}

COMMON = """
[spf]
enabled = false

[connection]
allow = ["127.0.0.9"]
"""


def config(nameserver, extra):
    return f'\n[dns]\nnameservers = ["{nameserver}"]\ntimeout = "1s"\n' + COMMON + extra


class ChecksTestCase(unittest.TestCase):
    EXTRA = ""

    @classmethod
    def setUpClass(cls):
        cls.dns = owned_dns(cls, ZONE)
        cls.sink = owned_sink(cls)
        cls.moat = owned_moat(cls, routes=[("example.test", f"smtp:127.0.0.1:{cls.sink.port}")],
                              relay_domains=("example.test", "moat.test"), networks=["127.0.0.8/32"],
                              extra=config(cls.dns.nameserver, cls.EXTRA))

    def mail(self, client_ip, helo, sender, options=()):
        """(code, text) of MAIL after EHLO `helo`; when 250, the message is sent and checked."""
        s = self.moat.smtp(source_address=(client_ip, 0))
        self.assertEqual(s.ehlo(helo)[0], 250)
        code, text = s.mail(sender, list(options))
        if code == 250:
            self.assertEqual(s.rcpt("user@example.test")[0], 250)
            self.assertEqual(s.data(b"Subject: client checks\r\n\r\nx\r\n")[0], 250)
        else:
            # The session goes on: a NOOP is answered, QUIT closes it politely.
            self.assertEqual(s.noop()[0], 250)
        s.quit()
        return code, text


class HeloChecksTest(ChecksTestCase):
    EXTRA = """
[helo]
reject_invalid = true
require_fqdn = true
reject_own_name = true
reject_unknown = true
"""

    def refused(self, helo, code, text, summary, client_ip="127.0.0.2"):
        self.assertEqual(self.mail(client_ip, helo, "a@host.sender.test"), (code, text.encode()))
        ev = self.moat.wait_log(event="reject", client_ip=client_ip, helo=helo)
        self.assertEqual(ev["stage"], "mail")
        self.assertEqual(ev["reply"], f"{code} {text}")
        got = ev["filters"]["helo"]
        self.assertEqual(got if isinstance(got, str) else got["result"], summary)

    def test_an_invalid_name_gets_501(self):
        for helo in ("bad..name.test", "-bad-.sender.test", "bad!name.test", "[1.2.3]", "[::1]"):
            with self.subTest(helo=helo):
                self.refused(helo, 501, f"5.5.2 <{helo}>: Helo command rejected: Invalid name", "invalid")

    def test_a_single_label_gets_504(self):
        for helo in ("localhost", "user-pc", "DESKTOP_7Q2"):
            with self.subTest(helo=helo):
                self.refused(helo, 504, f"5.5.2 <{helo}>: Helo command rejected: need fully-qualified hostname",
                             "not_fqdn")

    def test_the_gateways_own_name_or_address_gets_550(self):
        # server.hostname (any case, absolute form), a relay domain, the listener's address.
        for helo in ("mx.moat.test", "MX.Moat.Test.", "example.test", "[127.0.0.1]"):
            with self.subTest(helo=helo):
                self.refused(helo, 550, f"5.7.1 <{helo}>: Helo command rejected: that is this gateway's name",
                             "own_name")

    def test_a_name_dns_does_not_know_gets_450(self):
        self.refused("nowhere.sender.test", 450, "4.7.1 <nowhere.sender.test>: Helo command rejected: Host not found",
                     "unknown")
        self.refused("txtonly.sender.test", 450, "4.7.1 <txtonly.sender.test>: Helo command rejected: Host not found",
                     "unknown")
        self.refused("slow.sender.test", 450,
                     "4.7.1 <slow.sender.test>: Helo command rejected: Host not found (DNS lookup failed)", "tempfail")

    def test_names_with_mx_a_or_aaaa_and_address_literals_pass(self):
        for helo in ("host.sender.test", "host.sender.test.", "mail.sender.test", "v6.sender.test",
                     "[127.0.0.2]", "[IPv6:2001:db8::1]"):
            with self.subTest(helo=helo):
                self.assertEqual(self.mail("127.0.0.3", helo, "a@host.sender.test")[0], 250)
                ev = self.moat.wait_log(event="accept", client_ip="127.0.0.3", helo=helo)
                got = ev["filters"]["helo"]
                self.assertEqual(got if isinstance(got, str) else got["result"], "pass")
        # Address literals are not looked up.
        self.assertFalse([q for q in self.dns.queries() if "127.0.0.2" in q or "2001" in q])

    def test_relay_networks_and_connection_allow_are_not_checked(self):
        for client_ip in ("127.0.0.8", "127.0.0.9"):
            with self.subTest(client_ip=client_ip):
                self.assertEqual(self.mail(client_ip, "user-pc", "a@host.sender.test")[0], 250)
                ev = self.moat.wait_log(event="accept", client_ip=client_ip, helo="user-pc")
                self.assertEqual(ev["filters"]["helo"], "skipped")

    def test_a_better_ehlo_in_the_same_session_is_checked_anew(self):
        s = self.moat.smtp(source_address=("127.0.0.4", 0))
        s.ehlo("localhost")
        self.assertEqual(s.mail("a@host.sender.test")[0], 504)
        s.ehlo("host.sender.test")
        self.assertEqual(s.mail("a@host.sender.test")[0], 250)
        self.assertEqual(s.rcpt("user@example.test")[0], 250)
        self.assertEqual(s.data(b"Subject: second try\r\n\r\nx\r\n")[0], 250)
        s.quit()
        self.moat.wait_log(event="accept", client_ip="127.0.0.4", helo="host.sender.test")


class SenderDomainTest(ChecksTestCase):
    EXTRA = """
[senders]
reject_unknown_domain = true
"""

    def refused(self, sender, code, text, summary, dns):
        self.assertEqual(self.mail("127.0.0.2", "host.sender.test", sender), (code, text.encode()))
        ev = self.moat.wait_log(event="reject", client_ip="127.0.0.2", **{"from": sender})
        self.assertEqual(ev["stage"], "mail")
        self.assertEqual(ev["filters"]["sender_domain"], {"result": summary, "dns": dns})

    def accepted(self, sender, client_ip="127.0.0.3", options=()):
        self.assertEqual(self.mail(client_ip, "host.sender.test", sender, options)[0], 250)
        return self.moat.wait_log(event="accept", client_ip=client_ip, **{"from": sender})["filters"]["sender_domain"]

    def test_a_domain_with_mx_a_or_aaaa_passes(self):
        for sender in ("a@mail.sender.test", "b@host.sender.test", "c@v6.sender.test", "d@HOST.Sender.Test"):
            with self.subTest(sender=sender):
                self.assertEqual(self.accepted(sender), {"result": "pass", "dns": "exists"})

    def test_a_domain_without_records_gets_550_5_1_8(self):
        self.refused("a@nowhere.sender.test", 550,
                     "5.1.8 <a@nowhere.sender.test>: Sender address rejected: Domain not found", "not_found",
                     "not_found")
        self.refused("b@txtonly.sender.test", 550,
                     "5.1.8 <b@txtonly.sender.test>: Sender address rejected: Domain not found", "not_found",
                     "not_found")

    def test_a_null_mx_gets_550_5_7_27(self):
        # RFC 7505 §4.2: the domain says it sends no mail, whatever its A record.
        self.refused("a@nullmx.sender.test", 550,
                     "5.7.27 <a@nullmx.sender.test>: Sender address rejected: Domain has a null MX", "null_mx",
                     "null_mx")

    def test_dns_trouble_gets_450_4_1_8(self):
        self.refused("a@slow.sender.test", 450,
                     "4.1.8 <a@slow.sender.test>: Sender address rejected: Domain not found (DNS lookup failed)",
                     "tempfail", "tempfail")

    def test_the_null_sender_and_address_literals_are_not_checked(self):
        self.assertEqual(self.accepted(""), "skipped")
        self.assertEqual(self.accepted("a@[127.0.0.1]"), "skipped")

    def test_an_internationalized_domain_is_looked_up_as_a_labels(self):
        self.assertEqual(self.accepted("a@bücher.sender.test", options=["SMTPUTF8"]),
                         {"result": "pass", "dns": "exists"})
        self.assertIn("xn--bcher-kva.sender.test MX", self.dns.queries())

    def test_relay_networks_and_connection_allow_are_not_checked(self):
        for client_ip in ("127.0.0.8", "127.0.0.9"):
            with self.subTest(client_ip=client_ip):
                self.assertEqual(self.accepted(f"{client_ip}@nowhere.sender.test", client_ip=client_ip), "skipped")

    def test_the_session_goes_on_after_a_refusal(self):
        s = self.moat.smtp(source_address=("127.0.0.5", 0))
        s.ehlo("host.sender.test")
        self.assertEqual(s.mail("a@nowhere.sender.test")[0], 550)
        self.assertEqual(s.mail("a@mail.sender.test")[0], 250)
        self.assertEqual(s.rcpt("user@example.test")[0], 250)
        self.assertEqual(s.data(b"Subject: after a refusal\r\n\r\nx\r\n")[0], 250)
        s.quit()
        self.moat.wait_log(event="accept", client_ip="127.0.0.5", **{"from": "a@mail.sender.test"})


class SenderFqdnTest(ChecksTestCase):
    EXTRA = """
[senders]
require_fqdn = true
"""

    def test_a_sender_domain_of_one_label_gets_504_without_a_lookup(self):
        for sender in ("root@localhost", "user@server"):
            with self.subTest(sender=sender):
                self.assertEqual(self.mail("127.0.0.2", "host.sender.test", sender),
                                 (504, f"5.5.2 <{sender}>: Sender address rejected: need fully-qualified address"
                                       .encode()))
                ev = self.moat.wait_log(event="reject", client_ip="127.0.0.2", **{"from": sender})
                self.assertEqual(ev["filters"]["sender_domain"], "not_fqdn")
        # A fully-qualified domain passes without DNS (reject_unknown_domain is off).
        self.assertEqual(self.mail("127.0.0.3", "host.sender.test", "a@nowhere.sender.test")[0], 250)
        self.assertFalse([q for q in self.dns.queries() if "nowhere.sender.test" in q or "localhost" in q])

    def test_relay_networks_the_null_sender_and_literals_are_not_checked(self):
        self.assertEqual(self.mail("127.0.0.8", "host.sender.test", "root@localhost")[0], 250)
        self.assertEqual(self.mail("127.0.0.3", "host.sender.test", "")[0], 250)
        self.assertEqual(self.mail("127.0.0.3", "host.sender.test", "a@[127.0.0.1]")[0], 250)


class ReverseDnsTest(ChecksTestCase):
    EXTRA = 'reject_unknown_client = "confirmed"\n'  # continues COMMON's [connection]

    def result(self, client_ip, code):
        got = self.mail(client_ip, "host.sender.test", f"a@{client_ip}.test")
        self.assertEqual(got[0], code, got)
        ev = self.moat.wait_log(event="accept" if code == 250 else "reject", client_ip=client_ip)
        return got[1], ev["filters"]["reverse_dns"]

    def test_a_name_that_resolves_back_passes(self):
        self.assertEqual(self.result("127.0.0.20", 250)[1],
                         {"result": "pass", "dns": "confirmed", "name": "relay.sender.test"})

    def test_a_name_that_does_not_resolve_back_gets_450(self):
        text, got = self.result("127.0.0.21", 450)
        self.assertEqual(text, b"4.7.25 Client host rejected: cannot find your hostname, [127.0.0.21]")
        self.assertEqual(got, {"result": "not_confirmed", "dns": "not_confirmed"})

    def test_no_ptr_an_invalid_name_or_dns_trouble_gets_450(self):
        for client_ip, dns in (("127.0.0.24", "no_ptr"), ("127.0.0.22", "no_ptr"), ("127.0.0.23", "tempfail"),
                               ("127.0.0.25", "tempfail")):
            with self.subTest(client_ip=client_ip):
                text, got = self.result(client_ip, 450)
                self.assertEqual(text, f"4.7.25 Client host rejected: cannot find your hostname, [{client_ip}]".encode())
                self.assertEqual(got, {"result": dns, "dns": dns})

    def test_relay_networks_and_connection_allow_are_not_checked(self):
        for client_ip in ("127.0.0.8", "127.0.0.9"):
            with self.subTest(client_ip=client_ip):
                self.assertEqual(self.result(client_ip, 250)[1], "skipped")


class ReverseOnlyTest(ChecksTestCase):
    EXTRA = 'reject_unknown_client = "reverse"\n'  # continues COMMON's [connection]

    def test_reverse_asks_only_for_a_ptr_name(self):
        # A PTR name that does not resolve back is enough.
        self.assertEqual(self.mail("127.0.0.21", "host.sender.test", "a@host.sender.test")[0], 250)
        ev = self.moat.wait_log(event="accept", client_ip="127.0.0.21")
        self.assertEqual(ev["filters"]["reverse_dns"], {"result": "pass", "dns": "not_confirmed"})
        self.assertEqual(self.mail("127.0.0.24", "host.sender.test", "a@host.sender.test"),
                         (450, b"4.7.25 Client host rejected: cannot find your reverse hostname, [127.0.0.24]"))


class DnsblAllowlistTest(ChecksTestCase):
    # postscreen: a client on a DNS allowlist skips the tests left.
    EXTRA = """reject_unknown_client = "confirmed"

[dnsbl]
zones = ["wl.test=127.0.[0..255].[1..3]*-5"]
allowlist_threshold = -3

[helo]
require_fqdn = true

[senders]
reject_unknown_domain = true
"""

    def test_an_allowlisted_client_skips_the_dns_and_helo_checks(self):
        self.assertEqual(self.mail("127.0.0.30", "user-pc", "a@nowhere.sender.test")[0], 250)
        filters = self.moat.wait_log(event="accept", client_ip="127.0.0.30")["filters"]
        self.assertEqual(filters["dnsbl"]["result"], "allowlisted")
        for name in ("reverse_dns", "helo", "sender_domain"):
            self.assertEqual(filters[name], "allowlisted", name)

    def test_a_client_not_on_the_allowlist_is_checked(self):
        self.assertEqual(self.mail("127.0.0.31", "user-pc", "a@nowhere.sender.test"),
                         (450, b"4.7.25 Client host rejected: cannot find your hostname, [127.0.0.31]"))


if __name__ == "__main__":
    unittest.main()
