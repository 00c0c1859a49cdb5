"""Outbound source address and EHLO name ([queue] source_ipv4 / source_ipv6, [[route]]
source_ipv4 / source_ipv6 / helo_name; Postfix's smtp_bind_address, smtp_bind_address6 and
smtp_helo_name): the real daemon on loopback delivers to a sink the test owns, which records
each connection's peer address and EHLO argument. 127.0.0.0/8 is all this host's on Linux, so
127.0.0.2 and 127.0.0.3 can be bound. A route's own source and EHLO name are used, the
queue-wide source applies to a route without its own, two routes with different sources never
share a pooled connection, a recipient-verification probe comes from its route's source,
`moat check` refuses an address this host does not have (192.0.2.7) and one of the wrong
family at their lines, and a reload with such an address keeps the running config."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import check_config, owned_moat, owned_sink, wait_for  # noqa: E402


def route(domain, port, extra=""):
    return f'\n[[route]]\ndomains = ["{domain}"]\nto = ["smtp:127.0.0.1:{port}"]\n{extra}\n'


def routes(port, a_source="127.0.0.2"):
    return (route("a.test", port, f'source_ipv4 = "{a_source}"') +
            route("b.test", port, 'source_ipv4 = "127.0.0.3"\nhelo_name = "out2.example.test"') +
            route("c.test", port) +
            route("v.test", port, 'source_ipv4 = "127.0.0.5"'))


class SourceAddressTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = owned_sink(cls)
        cls.moat = owned_moat(cls, routes=[], relay_domains=("v.test",),
                              relay_extra='verify_recipients = true\nverify_timeout = "5s"',
                              queue_extra='source_ipv4 = "127.0.0.4"', extra=routes(cls.sink.port))

    def send(self, rcpt, subject):
        with self.moat.smtp() as s:
            s.sendmail("sender@client.test", [rcpt], f"From: sender@client.test\r\nSubject: {subject}\r\n\r\nbody\r\n")
        return self.moat.wait_log(event="deliver", to=rcpt)

    def message(self, subject):
        return wait_for(lambda: next((m for m in self.sink.messages if f"Subject: {subject}".encode() in m["data"]),
                                     None), 30, what=f"message {subject} at the sink")

    def test_routes_use_their_source_and_helo_name_on_separate_connections(self):
        first = self.send("one@a.test", "route-a")
        a = self.message("route-a")["session"]
        self.assertEqual(a["peer"], "127.0.0.2")
        self.assertEqual(a["helo"], "mx.moat.test")  # server.hostname: the route has no helo_name
        self.assertEqual(first.get("source"), "127.0.0.2")
        # The route-a connection now waits idle in the pool: route b must not be handed it.
        second = self.send("two@b.test", "route-b")
        b = self.message("route-b")["session"]
        self.assertIsNot(a, b)
        self.assertEqual(b["peer"], "127.0.0.3")
        self.assertEqual(b["helo"], "out2.example.test")
        self.assertEqual(second.get("source"), "127.0.0.3")

    def test_queue_source_applies_to_a_route_without_its_own(self):
        line = self.send("three@c.test", "route-c")
        c = self.message("route-c")["session"]
        self.assertEqual(c["peer"], "127.0.0.4")
        self.assertEqual(c["helo"], "mx.moat.test")
        self.assertEqual(line.get("source"), "127.0.0.4")

    def test_verification_probe_comes_from_the_route_source(self):
        before = len(self.sink.sessions)
        with self.moat.smtp() as s:
            s.ehlo()
            s.mail("sender@client.test")
            code, reply = s.rcpt("someone@v.test")
            self.assertEqual(code, 250, reply)
            s.rset()
        probes = [x for x in self.sink.sessions[before:] if any(c.startswith("MAIL FROM:<>") for c in x["commands"])]
        self.assertEqual(len(probes), 1, self.sink.sessions[before:])
        self.assertEqual(probes[0]["peer"], "127.0.0.5")
        self.assertTrue(any(c.startswith("RCPT TO:<someone@v.test>") for c in probes[0]["commands"]), probes[0])


BASE = """[server]
hostname = "mx.moat.test"
spool_dir = "spool"
log_file = "-"

[[listener]]
address = "127.0.0.1:0"

[queue]
"""


class CheckTest(unittest.TestCase):
    def test_check_refuses_an_address_not_on_this_host_and_the_wrong_family(self):
        sink = owned_sink(self)
        text = (BASE +                                   # [queue] is line 9
                'source_ipv4 = "192.0.2.7"\n' +          # 10
                '\n[[route]]\n' +                        # 11, 12
                f'to = ["smtp:127.0.0.1:{sink.port}"]\n' +  # 13
                'source_ipv4 = "::1"\n' +                # 14
                'helo_name = "out 2.example.test"\n')    # 15
        path, r = check_config(self, text)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(f"{path}:10: queue.source_ipv4: cannot bind 192.0.2.7: Cannot assign requested address",
                      r.stderr)
        self.assertIn(f'{path}:14: [[route]].source_ipv4: "::1" is an IPv6 address', r.stderr)
        self.assertIn(f'{path}:15: [[route]].helo_name: "out 2.example.test"', r.stderr)
        self.assertEqual(sink.connections, 0)  # a check sends nothing anywhere

    def test_check_takes_addresses_this_host_has(self):
        text = BASE + 'source_ipv4 = "127.0.0.2"\nsource_ipv6 = "::1"\n\n[[route]]\nto = ["mx"]\nhelo_name = "o.test"\n'
        path, r = check_config(self, text)
        self.assertEqual(r.returncode, 0, r.stderr)


class ReloadTest(unittest.TestCase):
    def test_reload_with_an_address_not_on_this_host_keeps_the_running_config(self):
        sink = owned_sink(self)
        moat = owned_moat(self, routes=[], extra=routes(sink.port))
        with open(moat.config_path) as f:
            good = f.read()
        # The route's source changes too: were the new config taken, a.test would come from .6.
        bad = good.replace('[queue]\n', '[queue]\nsource_ipv4 = "192.0.2.7"\n', 1)
        bad = bad.replace('source_ipv4 = "127.0.0.2"', 'source_ipv4 = "127.0.0.6"')
        line = moat.reload_with(moat.config_path, bad, ok=False)
        self.assertIn("cannot bind 192.0.2.7", str(line.get("errors")))
        with moat.smtp() as s:
            s.sendmail("sender@client.test", ["one@a.test"], "Subject: after-reload\r\n\r\nbody\r\n")
        moat.wait_log(event="deliver", to="one@a.test")
        m = sink.wait_messages(1)[0]
        self.assertEqual(m["session"]["peer"], "127.0.0.2")


if __name__ == "__main__":
    unittest.main()
