"""Routes chosen by envelope sender as well ([[route]] senders; Postfix's
sender_dependent_relayhost_maps): the real daemon on loopback relays to two sinks the test
owns. Mail from @brand-b.test leaves through sink B with the brand's EHLO name, mail from
anyone else through sink A; the sender matched is the one that leaves, after relay.rewrite;
a DSN for brand-b's failed mail (null sender) takes the route without senders; a
recipient-verification probe at RCPT asks the next hop the session's MAIL FROM is routed to;
two routes to one next hop with different EHLO names never share a pooled connection; SIGHUP picks up a changed list; `moat check` refuses a bad entry at its line."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import check_config, owned_moat, owned_sink, wait_for  # noqa: E402

REWRITE_MAP = "@b-internal.test    @brand-b.test    outbound-only\n"


def sender_routes(port_a, port_b, senders='["@brand-b.test"]'):
    # Route B has senders and no domains: it takes brand-b's mail to every domain, and leaves
    # everyone else's (and the null sender's) to route A.
    return (f'\n[[route]]\nsenders = {senders}\nto = ["smtp:127.0.0.1:{port_b}"]\n'
            'helo_name = "out.brand-b.test"\n'
            f'\n[[route]]\nto = ["smtp:127.0.0.1:{port_a}"]\n')


class SenderRoutesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink_a = owned_sink(cls)
        cls.sink_b = owned_sink(cls)
        cls.sink_b.rcpt_reply = lambda a: "550 5.1.1 no such user" if a.startswith("nobody@") else "250 2.1.5 ok"
        cls.moat = owned_moat(cls, routes=[], relay_domains=("corp.test",), networks=["127.0.0.0/8"],
                              relay_extra='rewrite = "rewrite.map"\nverify_recipients = true\nverify_timeout = "5s"',
                              start=False, extra=sender_routes(cls.sink_a.port, cls.sink_b.port))
        with open(os.path.join(cls.moat.dir, "rewrite.map"), "w") as f:
            f.write(REWRITE_MAP)
        cls.moat.start()

    def send(self, mail_from, rcpts, subject):
        with self.moat.smtp() as s:
            s.sendmail(mail_from, rcpts, f"From: <{mail_from}>\r\nSubject: {subject}\r\n\r\nbody\r\n")

    @staticmethod
    def arrived(sink, subject):
        return wait_for(lambda: next((m for m in list(sink.messages) if f"Subject: {subject}\r\n".encode() in m["data"]),
                                     None), 30, what=f"{subject} at the sink")

    @staticmethod
    def has(sink, subject):
        return any(f"Subject: {subject}\r\n".encode() in m["data"] for m in list(sink.messages))

    def test_brand_mail_leaves_by_its_own_route_with_its_helo_name(self):
        self.send("sales@brand-b.test", ["x@outside.test"], "from-brand-b")
        self.send("other@example.test", ["x@outside.test"], "from-other")
        # ASCII case ignored, and a +tag matches the domain entry as the address.
        self.send("Sales+News@Brand-B.TEST", ["y@outside.test"], "from-brand-b-tagged")
        b = self.arrived(self.sink_b, "from-brand-b")
        self.assertEqual(b["from"], "sales@brand-b.test")
        self.assertEqual(b["session"]["helo"], "out.brand-b.test")
        a = self.arrived(self.sink_a, "from-other")
        self.assertEqual(a["session"]["helo"], "mx.moat.test")  # server.hostname: route A has no helo_name
        self.arrived(self.sink_b, "from-brand-b-tagged")
        self.assertFalse(self.has(self.sink_a, "from-brand-b"))
        self.assertFalse(self.has(self.sink_a, "from-brand-b-tagged"))
        self.assertFalse(self.has(self.sink_b, "from-other"))

    def test_the_sender_is_matched_as_it_leaves_after_rewrite(self):
        self.send("alice@b-internal.test", ["z@outside.test"], "rewritten-sender")
        m = self.arrived(self.sink_b, "rewritten-sender")
        self.assertEqual(m["from"], "alice@brand-b.test")
        self.assertEqual(m["session"]["helo"], "out.brand-b.test")
        self.assertFalse(self.has(self.sink_a, "rewritten-sender"))

    def test_a_dsn_for_brand_mail_takes_the_route_without_senders(self):
        self.send("ops@brand-b.test", ["nobody@outside.test"], "refused-at-b")
        self.moat.wait_log(event="bounce", to="nobody@outside.test")
        dsn = wait_for(lambda: next((m for m in list(self.sink_a.messages)
                                     if m["rcpts"] == ["ops@brand-b.test"]), None), 30, what="the DSN at sink A")
        self.assertEqual(dsn["from"], "")  # the null sender
        self.assertIn(b"report-type=delivery-status", dsn["data"])
        self.assertFalse(any(m["rcpts"] == ["ops@brand-b.test"] for m in list(self.sink_b.messages)))

    def test_a_verification_probe_asks_the_next_hop_of_the_session_sender(self):
        for sender, sink, other in (("hr@brand-b.test", self.sink_b, self.sink_a),
                                    ("hr@example.test", self.sink_a, self.sink_b)):
            before, before_other = len(sink.sessions), len(other.sessions)
            with self.moat.smtp() as s:
                s.ehlo()
                s.mail(sender)
                code, reply = s.rcpt(f"someone-{sender[3:].replace('.', '-')}@corp.test")
                self.assertEqual(code, 250, reply)
                s.rset()
            probes = [x for x in list(sink.sessions)[before:]
                      if any(c.startswith("MAIL FROM:<>") for c in x["commands"])]
            self.assertEqual(len(probes), 1, (sender, list(sink.sessions)[before:]))
            self.assertFalse([x for x in list(other.sessions)[before_other:]
                              if any(c.startswith("RCPT TO:<someone-") for c in x["commands"])], sender)


class SharedNextHopTest(unittest.TestCase):
    def test_routes_to_one_next_hop_with_different_helo_names_never_share_a_connection(self):
        sink = owned_sink(self)
        moat = owned_moat(self, routes=[], relay_domains=("corp.test",), extra=sender_routes(sink.port, sink.port))
        with moat.smtp() as s:
            s.sendmail("other@example.test", ["x@outside.test"], "Subject: shared-first\r\n\r\nbody\r\n")
        sink.wait_subject("shared-first")
        # The first connection now waits idle in the pool: the brand's route must not be handed it.
        with moat.smtp() as s:
            s.sendmail("sales@brand-b.test", ["x@outside.test"], "Subject: shared-brand\r\n\r\nbody\r\n")
        sink.wait_subject("shared-brand")
        by_subject = {subject: next(m for m in list(sink.messages) if f"Subject: {subject}\r\n".encode() in m["data"])
                      for subject in ("shared-first", "shared-brand")}
        self.assertEqual(by_subject["shared-first"]["session"]["helo"], "mx.moat.test")
        self.assertEqual(by_subject["shared-brand"]["session"]["helo"], "out.brand-b.test")
        self.assertIsNot(by_subject["shared-first"]["session"], by_subject["shared-brand"]["session"])


class ReloadTest(unittest.TestCase):
    def test_sighup_picks_up_a_changed_senders_list(self):
        sink_a, sink_b = owned_sink(self), owned_sink(self)
        moat = owned_moat(self, routes=[], relay_domains=("corp.test",),
                          extra=sender_routes(sink_a.port, sink_b.port))
        with moat.smtp() as s:
            s.sendmail("sales@brand-b.test", ["x@outside.test"], "Subject: before-reload\r\n\r\nbody\r\n")
        sink_b.wait_subject("before-reload")
        with open(moat.config_path) as f:
            text = f.read()
        moat.reload_with(moat.config_path, text.replace('["@brand-b.test"]', '["@brand-c.test"]'))
        with moat.smtp() as s:
            s.sendmail("sales@brand-b.test", ["x@outside.test"], "Subject: after-reload-b\r\n\r\nbody\r\n")
            s.sendmail("sales@brand-c.test", ["x@outside.test"], "Subject: after-reload-c\r\n\r\nbody\r\n")
        sink_a.wait_subject("after-reload-b")
        sink_b.wait_subject("after-reload-c")


BASE = """[server]
hostname = "mx.moat.test"
spool_dir = "spool"
log_file = "-"

[[listener]]
address = "127.0.0.1:0"
"""


class CheckTest(unittest.TestCase):
    def test_check_refuses_a_bad_entry_at_its_line(self):
        text = (BASE +                                     # lines 1-7
                '\n[[route]]\n' +                          # 8, 9
                'senders = [\n' +                          # 10
                '  "@brand-b.test",\n' +                   # 11
                '  "brand-b.test",\n' +                    # 12
                ']\n' +                                    # 13
                'to = ["mx"]\n')                           # 14
        path, r = check_config(self, text)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(f'{path}:12: [[route]].senders: "brand-b.test" is not an address, @domain or @.domain',
                      r.stderr)

    def test_a_sender_route_without_domains_leaves_later_routes_reachable(self):
        text = BASE + '\n[[route]]\nsenders = ["@brand-b.test"]\nto = ["mx"]\n\n[[route]]\ndomains = ["a.test"]\n' \
                      'to = ["mx"]\n'
        path, r = check_config(self, text)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("never matches", r.stderr)


if __name__ == "__main__":
    unittest.main()
