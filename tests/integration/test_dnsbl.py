"""DNS blocklists ([dnsbl], RFC 5782) end to end: the real daemon asks a real DNS server on
loopback, which serves a test blocklist zone, about each client at MAIL FROM. Clients are
told apart by their loopback source address (127.0.0.1 listed, .2 clean, .3 a refused
query, .4 a failing server). Only 127.0.0.0/8 is used."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from authzone import owned_dns  # noqa: E402
from harness import owned_moat, owned_sink  # noqa: E402

ZONE = {
    "1.0.0.127.bl.test": [{"A": "127.0.0.2"}, {"TXT": "Listed: see https://bl.test/q?127.0.0.1"}],
    "3.0.0.127.bl.test": [{"A": "127.255.255.254"}],  # the list refuses the query
    "4.0.0.127.bl.test": ["SERVFAIL"],
    "5.0.0.127.bl.test": [{"A": "127.0.0.1"}],  # never a listing (RFC 5782 §5): a refusal
    "1.0.0.127.second.test": [{"A": "127.0.0.4"}],
}


def config(nameserver, action="reject"):
    return (f'\n[dns]\nnameservers = ["{nameserver}"]\ntimeout = "1s"\n'
            f'\n[dnsbl]\nzones = ["bl.test", "second.test"]\naction = "{action}"\n'
            '\n[spf]\nenabled = false\n')


class DnsblTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dns = owned_dns(cls, ZONE)
        cls.sink = owned_sink(cls)
        cls.moat = owned_moat(cls, routes=[("example.test", f"smtp:127.0.0.1:{cls.sink.port}")],
                              networks=["10.255.255.0/24"], extra=config(cls.dns.nameserver))

    def mail_from(self, client_ip, moat=None):
        s = (moat or self.moat).smtp(source_address=(client_ip, 0))
        s.ehlo()
        reply = s.mail(f"someone@{client_ip.replace('.', '-')}.sender.test")
        if reply[0] == 250:
            self.assertEqual(s.rcpt("user@example.test")[0], 250)
            self.assertEqual(s.data(b"Subject: dnsbl\r\n\r\nx\r\n")[0], 250)
        s.quit()
        return reply

    def test_a_listed_client_is_refused_with_the_lists_text(self):
        code, msg = self.mail_from("127.0.0.1")
        self.assertEqual(code, 554)
        self.assertEqual(msg, b"5.7.1 Service unavailable; client [127.0.0.1] blocked using bl.test; "
                              b"Listed: see https://bl.test/q?127.0.0.1")
        ev = self.moat.wait_log(event="reject", client_ip="127.0.0.1")
        self.assertEqual(ev["stage"], "mail")
        self.assertEqual(sorted(ev["filters"]["dnsbl"]["listed"]), ["bl.test", "second.test"])

    def test_a_clean_client_is_looked_up_in_every_zone_and_passes(self):
        before = len(self.sink.messages)
        self.assertEqual(self.mail_from("127.0.0.2")[0], 250)
        self.sink.wait_messages(before + 1)
        queries = " ".join(self.dns.queries())
        self.assertIn("2.0.0.127.bl.test", queries)
        self.assertIn("2.0.0.127.second.test", queries)

    def test_a_refused_query_or_a_failing_list_never_blocks_mail(self):
        self.assertEqual(self.mail_from("127.0.0.3")[0], 250)
        ev = self.moat.wait_log(event="accept", client_ip="127.0.0.3")
        self.assertEqual(ev["filters"]["dnsbl"], {"result": "clean", "refused": ["bl.test"]})
        self.assertEqual(self.mail_from("127.0.0.4")[0], 250)
        ev = self.moat.wait_log(event="accept", client_ip="127.0.0.4")
        self.assertEqual(ev["filters"]["dnsbl"], {"result": "clean", "tempfail": ["bl.test"]})
        self.assertEqual(self.mail_from("127.0.0.5")[0], 250)
        ev = self.moat.wait_log(event="accept", client_ip="127.0.0.5")
        self.assertEqual(ev["filters"]["dnsbl"], {"result": "clean", "refused": ["bl.test"]})


class DnsblExemptionsAndTagTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dns = owned_dns(cls, ZONE)
        cls.sink = owned_sink(cls)

    def start(self, networks, extra):
        """A daemon for this test only, relaying example.test to the class's Sink."""
        return owned_moat(self, routes=[("example.test", f"smtp:127.0.0.1:{self.sink.port}")], networks=networks,
                          extra=extra)

    def test_relay_networks_are_not_looked_up(self):
        m = self.start(["127.0.0.1/32"], config(self.dns.nameserver))
        s = m.smtp(source_address=("127.0.0.1", 0))
        s.ehlo()
        self.assertEqual(s.mail("out@example.test")[0], 250)
        s.quit()
        m.wait_log(event="filter", filter="dnsbl", result="skipped")
        self.assertNotIn("1.0.0.127.bl.test", " ".join(self.dns.queries()))

    def test_the_connection_allow_list_is_not_looked_up(self):
        m = self.start(["10.255.255.0/24"], config(self.dns.nameserver) + '\n[connection]\nallow = ["127.0.0.1"]\n')
        s = m.smtp(source_address=("127.0.0.1", 0))
        s.ehlo()
        self.assertEqual(s.mail("friend@partner.test")[0], 250)
        s.quit()
        m.wait_log(event="filter", filter="dnsbl", result="skipped")

    def test_tag_marks_the_message_instead(self):
        m = self.start(["10.255.255.0/24"], config(self.dns.nameserver, action="tag"))
        before = len(self.sink.messages)
        s = m.smtp(source_address=("127.0.0.1", 0))
        s.sendmail("someone@sender.test", ["user@example.test"], b"Subject: tagged\r\n\r\nx\r\n")
        s.quit()
        msg = self.sink.wait_messages(before + 1)[before]
        headers = msg["data"].split(b"\r\n\r\n", 1)[0]
        self.assertIn(b"\r\nX-Moat-DNSBL: bl.test,second.test\r\n", headers)


if __name__ == "__main__":
    unittest.main()
