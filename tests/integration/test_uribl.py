"""URI blocklists ([uribl], RFC 5782 §2.2) end to end: the real daemon asks a real DNS server
on loopback, which serves test domain lists, about the registered domains of the links in
each message at the end of DATA. dbl.test lists evil.test; refuse.test answers 127.0.0.1 (a
list refusing the resolver); slow.test never answers for evil.test. Only 127.0.0.0/8 is used."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from authzone import owned_dns  # noqa: E402
from harness import Moat, owned_moat, owned_sink, wait_for  # noqa: E402

ZONE = {
    "evil.test.dbl.test": [{"A": "127.0.1.2"}],
    "evil.test.refuse.test": [{"A": "127.0.0.1"}],
    "evil.test.slow.test": ["TIMEOUT"],
    "1.2.0.192.dbl.test": [{"A": "127.0.1.2"}],
}

EVIL = "See https://Shop.Evil.TEST/offer?id=1 now"
CLEAN = "Read https://www.clean.test/news, write to mailto:help@partner.test or visit http://example.test/"


def config(nameserver, action="reject", zones=("dbl.test",), extra=""):
    zone_list = ", ".join(f'"{z}"' for z in zones)
    return (f'\n[dns]\nnameservers = ["{nameserver}"]\ntimeout = "1s"\n'
            f'\n[uribl]\nzones = [{zone_list}]\naction = "{action}"\nexempt_domains = ["partner.test"]\n{extra}'
            '\n[spf]\nenabled = false\n')


def message(subject, body):
    return (f"From: a@sender.test\r\nTo: user@example.test\r\nSubject: {subject}\r\n\r\n{body}\r\n").encode()


class UriblTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dns = owned_dns(cls, ZONE)
        cls.sink = owned_sink(cls)

    def start(self, extra, networks=("10.255.255.0/24",)):
        return owned_moat(self, routes=[("example.test", f"smtp:127.0.0.1:{self.sink.port}")],
                          networks=list(networks), extra=extra)

    def send(self, moat, subject, body):
        s = moat.smtp()
        s.ehlo()
        self.assertEqual(s.mail("a@sender.test")[0], 250)
        self.assertEqual(s.rcpt("user@example.test")[0], 250)
        code, reply = s.data(message(subject, body))
        s.quit()
        return code, reply

    def delivered(self, subject):
        def find():
            for m in list(self.sink.messages):
                if f"\r\nSubject: {subject}\r\n".encode() in m["data"]:
                    return m["data"]
            return None
        return wait_for(find, 30, what=f"message {subject!r} at the sink")

    def queried(self, suffix):
        return [q for q in self.dns.queries() if q.split(" ")[0].endswith(suffix)]

    def test_a_listed_link_is_refused_and_a_clean_message_delivered_untouched(self):
        m = self.start(config(self.dns.nameserver, action="reject"))
        code, reply = self.send(m, "listed", EVIL)
        self.assertEqual(code, 554)
        self.assertEqual(reply, b"5.7.1 Message refused: URI evil.test listed by dbl.test")
        ev = m.wait_log(event="reject", stage="data")
        self.assertEqual(ev["filters"]["uribl"], {"result": "listed", "listed": ["dbl.test=evil.test"], "domains": 1})

        code, _ = self.send(m, "clean", CLEAN)
        self.assertEqual(code, 250)
        data = self.delivered("clean")
        self.assertNotIn(b"X-Moat-URIBL", data)
        self.assertIn(CLEAN.encode() + b"\r\n", data)
        ev = m.wait_log(event="accept")
        self.assertEqual(ev["filters"]["uribl"], {"result": "clean", "domains": 1})
        # The exempt partner and the accepted domain (relay.domains) are never asked about.
        self.assertTrue(self.queried("clean.test.dbl.test"))
        self.assertEqual(self.queried(".partner.test.dbl.test") + self.queried("partner.test.dbl.test"), [])
        self.assertEqual(self.queried("example.test.dbl.test"), [])

    def test_an_ip_literal_link_is_looked_up_reversed(self):
        m = self.start(config(self.dns.nameserver, action="reject"))
        code, reply = self.send(m, "literal", "Go to http://192.0.2.1:8080/login")
        self.assertEqual(code, 554)
        self.assertEqual(reply, b"5.7.1 Message refused: URI 192.0.2.1 listed by dbl.test")

    def test_tag_adds_a_header(self):
        m = self.start(config(self.dns.nameserver, action="tag"))
        self.assertEqual(self.send(m, "tagged", EVIL)[0], 250)
        data = self.delivered("tagged")
        headers = data.split(b"\r\n\r\n", 1)[0]
        self.assertIn(b"\r\nX-Moat-URIBL: dbl.test=evil.test\r\n", headers)

    def test_quarantine_holds_the_message(self):
        m = self.start(config(self.dns.nameserver, action="quarantine"))
        code, reply = self.send(m, "held", EVIL)
        self.assertEqual(code, 250)
        ev = m.wait_log(event="accept")
        self.assertEqual(ev["verdict"], "quarantine")
        self.assertEqual(ev["filters"]["uribl"]["listed"], ["dbl.test=evil.test"])
        qid = reply.decode().rsplit(" ", 1)[-1]
        listing = m.cli("queue", "list", "--quarantine", "--json").stdout
        self.assertIn(qid, listing)
        self.assertFalse([x for x in self.sink.messages if b"\r\nSubject: held\r\n" in x["data"]])

    def test_a_refusing_list_and_a_silent_list_never_block_mail(self):
        m = self.start(config(self.dns.nameserver, action="reject", zones=("refuse.test", "slow.test")))
        code, _ = self.send(m, "unblocked", EVIL)
        self.assertEqual(code, 250)
        self.delivered("unblocked")
        ev = m.wait_log(event="accept")
        self.assertEqual(ev["filters"]["uribl"],
                         {"result": "clean", "refused": ["refuse.test"], "tempfail": ["slow.test"], "domains": 1})

    def test_relay_network_clients_are_not_looked_up(self):
        m = self.start(config(self.dns.nameserver, action="reject"), networks=["127.0.0.1/32"])
        code, _ = self.send(m, "outbound", "Our partner: https://outbound-only.test/")
        self.assertEqual(code, 250)
        m.wait_log(event="filter", filter="uribl", result="skipped")
        self.delivered("outbound")
        self.assertEqual(self.queried("outbound-only.test.dbl.test"), [])

    def test_the_lookups_of_a_message_are_capped(self):
        m = self.start(config(self.dns.nameserver, action="reject", zones=("dbl.test", "multi.test")))
        body = "\r\n".join(f"http://www{i}.cap{i}.test/x" for i in range(50))
        code, _ = self.send(m, "capped", body)
        self.assertEqual(code, 250)
        ev = m.wait_log(event="accept")
        self.assertEqual(ev["filters"]["uribl"], {"result": "clean", "domains": 20, "truncated": True})
        names = {q.split(" ")[0] for q in self.dns.queries() if q.startswith("cap")}
        # The default max_lookups (20) times two zones, the first 20 domains in order.
        self.assertEqual(names, {f"cap{i}.test.{z}" for i in range(20) for z in ("dbl.test", "multi.test")})


class UriblConfigTest(unittest.TestCase):
    def test_bad_values_are_refused_with_file_and_line(self):
        m = Moat(start=False, extra='\n[uribl]\nzones = ["dbl.test", "bad zone"]\naction = "drop"\n'
                                    'max_lookups = 0\nexempt_domains = [\n  "ok.test",\n  "not a domain",\n]\n')
        self.addCleanup(m.cleanup)
        r = m.cli("check", check=False)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        out = r.stdout + r.stderr
        with open(m.config_path) as f:
            lines = f.read().split("\n")

        def line_of(text):
            return next(i + 1 for i, line in enumerate(lines) if text in line)
        self.assertIn(f"{m.config_path}:{line_of('zones = ')}:", out)
        self.assertIn('"bad zone" is not a DNS zone name', out)
        self.assertIn(f"{m.config_path}:{line_of('action = ')}:", out)
        self.assertIn(f"{m.config_path}:{line_of('max_lookups = ')}:", out)
        self.assertIn(f'{m.config_path}:{line_of("not a domain")}: uribl.exempt_domains: "not a domain" is not a domain name',
                      out)


if __name__ == "__main__":
    unittest.main()
