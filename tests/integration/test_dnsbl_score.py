"""Weighted DNS blocklists and allowlists ([dnsbl] zones ZONE=FILTER*WEIGHT, threshold,
allowlist_threshold: postscreen's postscreen_dnsbl_sites) end to end: the real daemon asks a
real DNS server on loopback, which serves test list zones, about each client at MAIL FROM.
Clients are told apart by their loopback source address; only 127.0.0.0/8 is used.

  a.test*2, b.test*3 (threshold 4): one alone is under the threshold, both reject;
  c.test=127.0.0.[2..9]*4: an answer of 127.0.0.10 does not match, 127.0.0.4 does;
  c.test=127.0.0.10: the same zone again, with another filter (queried once);
  wl.test=127.0.[0..255].[1..3]*-5: an allowlist that cancels a listing, and allowlists a
  client on it alone (allowlist_threshold -3), which is then not greylisted."""

import os
import socket
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from authzone import owned_dns  # noqa: E402
from harness import Moat, owned_moat, owned_sink  # noqa: E402

ZONE = {
    "11.0.0.127.a.test": [{"A": "127.0.0.2"}],
    "12.0.0.127.a.test": [{"A": "127.0.0.2"}, {"TXT": "a.test lists 127.0.0.12"}],
    "12.0.0.127.b.test": [{"A": "127.0.0.3"}, {"TXT": "b.test lists 127.0.0.12"}],
    "13.0.0.127.b.test": [{"A": "127.0.0.3"}],
    "14.0.0.127.a.test": [{"A": "127.0.0.2"}],
    "14.0.0.127.b.test": [{"A": "127.0.0.3"}],
    "14.0.0.127.wl.test": [{"A": "127.0.10.2"}],
    "15.0.0.127.wl.test": [{"A": "127.0.10.2"}],
    "16.0.0.127.c.test": [{"A": "127.0.0.10"}],
    "17.0.0.127.c.test": [{"A": "127.0.0.4"}, {"TXT": "c.test lists 127.0.0.17"}],
    "18.0.0.127.wl.test": [{"A": "127.0.10.0"}],  # outside the allowlist's filter
}
ZONES = '["a.test*2", "b.test*3", "c.test=127.0.0.[2..9]*4", "c.test=127.0.0.10", ' \
        '"wl.test=127.0.[0..255].[1..3]*-5"]'


def config(nameserver, action="reject", extra=""):
    return (f'\n[dns]\nnameservers = ["{nameserver}"]\ntimeout = "1s"\n'
            f'\n[dnsbl]\nzones = {ZONES}\nthreshold = 4\nallowlist_threshold = -3\naction = "{action}"\n'
            '\n[spf]\nenabled = false\n' + extra)


class DnsblScoreTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dns = owned_dns(cls, ZONE)
        cls.sink = owned_sink(cls)
        cls.moat = owned_moat(cls, routes=[("example.test", f"smtp:127.0.0.1:{cls.sink.port}")],
                              networks=["10.255.255.0/24"], extra=config(cls.dns.nameserver))

    def mail_from(self, client_ip):
        s = self.moat.smtp(source_address=(client_ip, 0))
        s.ehlo()
        reply = s.mail(f"someone@{client_ip.replace('.', '-')}.sender.test")
        if reply[0] == 250:
            self.assertEqual(s.rcpt("user@example.test")[0], 250)
            self.assertEqual(s.data(b"Subject: dnsbl score\r\n\r\nx\r\n")[0], 250)
        s.quit()
        return reply

    def accepted(self, client_ip):
        self.assertEqual(self.mail_from(client_ip)[0], 250)
        return self.moat.wait_log(event="accept", client_ip=client_ip)["filters"]["dnsbl"]

    def test_one_zone_alone_is_under_the_threshold(self):
        self.assertEqual(self.accepted("127.0.0.11"), {"result": "clean", "score": 2, "listed": ["a.test*2"]})
        self.assertEqual(self.accepted("127.0.0.13"), {"result": "clean", "score": 3, "listed": ["b.test*3"]})

    def test_both_zones_together_reject_naming_the_heavier(self):
        code, msg = self.mail_from("127.0.0.12")
        self.assertEqual(code, 554)
        self.assertEqual(msg, b"5.7.1 Service unavailable; client [127.0.0.12] blocked using b.test; "
                              b"b.test lists 127.0.0.12")
        ev = self.moat.wait_log(event="reject", client_ip="127.0.0.12")
        self.assertEqual(ev["filters"]["dnsbl"]["score"], 5)
        self.assertEqual(ev["filters"]["dnsbl"]["listed"], ["a.test*2", "b.test*3"])

    def test_an_allowlist_weight_cancels_a_listing(self):
        self.assertEqual(self.accepted("127.0.0.14"),
                         {"result": "clean", "score": 0,
                          "listed": ["a.test*2", "b.test*3", "wl.test=127.0.[0..255].[1..3]*-5"]})

    def test_a_filter_excludes_an_answer_code_and_each_zone_is_asked_once(self):
        # 127.0.0.10 is outside c.test=127.0.0.[2..9]: only the weight-1 entry matches.
        self.assertEqual(self.accepted("127.0.0.16"), {"result": "clean", "score": 1, "listed": ["c.test=127.0.0.10"]})
        code, msg = self.mail_from("127.0.0.17")
        self.assertEqual(code, 554)
        self.assertEqual(msg, b"5.7.1 Service unavailable; client [127.0.0.17] blocked using c.test; "
                              b"c.test lists 127.0.0.17")
        asked = [q for q in self.dns.queries() if "16.0.0.127.c.test" in q]
        self.assertEqual(len(asked), 1, asked)

    def test_an_allowlisted_client_is_logged_so(self):
        self.assertEqual(self.accepted("127.0.0.15"),
                         {"result": "allowlisted", "score": -5, "listed": ["wl.test=127.0.[0..255].[1..3]*-5"]})
        # An answer outside the allowlist's filter counts nothing.
        self.assertEqual(self.accepted("127.0.0.18"), "clean")


GREYLIST = """
[greylist]
enabled = true
delay = "1h"
retry_window = "2h"
auto_allow_after = 0
ipv4_prefix = 32
exempt_networks = ["127.0.0.12"]
"""


class DnsblAllowlistAndTagTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dns = owned_dns(cls, ZONE)
        cls.sink = owned_sink(cls)
        cls.moat = owned_moat(cls, routes=[("example.test", f"smtp:127.0.0.1:{cls.sink.port}")],
                              networks=["10.255.255.0/24"],
                              extra=config(cls.dns.nameserver, action="tag", extra=GREYLIST))

    def pipelined(self, client_ip, rcpt):
        """EHLO, then MAIL and RCPT in one write (PIPELINING): the two replies."""
        sock = socket.create_connection(("127.0.0.1", self.moat.port), timeout=15, source_address=(client_ip, 0))
        self.addCleanup(sock.close)
        f = sock.makefile("rb")

        def reply():
            lines = []
            while True:
                line = f.readline(4096)
                if not line:
                    raise ConnectionError(f"closed after {lines!r}")
                lines.append(line.decode().rstrip("\r\n"))
                if len(lines) > 50 or line[3:4] == b" ":
                    return lines[-1]
        self.assertTrue(reply().startswith("220"))
        sock.sendall(b"EHLO client.test\r\n")
        self.assertTrue(reply().startswith("250"))
        sock.sendall(f"MAIL FROM:<someone@sender.test>\r\nRCPT TO:<{rcpt}>\r\n".encode())
        mail, rc = reply(), reply()
        sock.sendall(b"QUIT\r\n")
        return mail, rc

    def test_an_allowlisted_client_is_not_greylisted_even_pipelined(self):
        mail, rcpt = self.pipelined("127.0.0.15", "user@example.test")
        self.assertTrue(mail.startswith("250"), mail)
        self.assertTrue(rcpt.startswith("250"), rcpt)
        # A client the allowlist's filter does not match is greylisted as any other.
        mail, rcpt = self.pipelined("127.0.0.18", "user@example.test")
        self.assertTrue(mail.startswith("250"), mail)
        self.assertTrue(rcpt.startswith("450 4.7.1"), rcpt)
        # And one listed under the threshold too.
        mail, rcpt = self.pipelined("127.0.0.11", "user@example.test")
        self.assertTrue(rcpt.startswith("450 4.7.1"), rcpt)

    def test_tag_names_the_listing_zones_and_the_score(self):
        before = len(self.sink.messages)
        s = self.moat.smtp(source_address=("127.0.0.12", 0))
        s.sendmail("someone@sender.test", ["user@example.test"], b"Subject: tagged\r\n\r\nx\r\n")
        s.quit()
        msg = self.sink.wait_messages(before + 1)[before]
        headers = msg["data"].split(b"\r\n\r\n", 1)[0]
        self.assertIn(b"\r\nX-Moat-DNSBL: a.test,b.test; score=5\r\n", headers)


class DnsblScoreConfigTest(unittest.TestCase):
    def test_bad_entries_and_thresholds_are_refused_with_file_and_line(self):
        m = Moat(start=False, extra='\n[dnsbl]\nzones = [\n  "zen.test=127.0.0.[2..11]*3",\n'
                                    '  "bad.test=127.0.0.[2..300]",\n  "w.test*lots",\n  "r.test=127.0.0.[9..2]",\n]\n'
                                    'threshold = 0\nallowlist_threshold = 2\n'
                                    '\n[uribl]\nzones = ["dbl.test*2"]\n')
        self.addCleanup(m.cleanup)
        r = m.cli("check", check=False)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        out = r.stdout + r.stderr
        with open(m.config_path) as f:
            lines = f.read().split("\n")

        def at(text):
            return f"{m.config_path}:{next(i + 1 for i, line in enumerate(lines) if text in line)}:"
        self.assertIn(at('"bad.test') + ' dnsbl.zones: the filter "127.0.0.[2..300]": '
                      'an octet must be a number from 0 to 255', out)
        self.assertIn(at('"w.test') + " dnsbl.zones: the weight after '*' must be an integer from -1000 to 1000", out)
        self.assertIn(at('"r.test') + ' dnsbl.zones: the filter "127.0.0.[9..2]": range [9..2] ends before it starts',
                      out)
        self.assertIn(at("threshold = 0") + " dnsbl.threshold", out)
        self.assertIn(at("allowlist_threshold = 2") + " dnsbl.allowlist_threshold", out)
        self.assertNotIn("zen.test", out)
        # [uribl] takes no weights.
        self.assertIn('uribl.zones: "dbl.test*2" is not a DNS zone name', out)


if __name__ == "__main__":
    unittest.main()
