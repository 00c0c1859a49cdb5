"""The DSN extension (RFC 3461) end to end. The server takes DSN in the EHLO reply, RET and
ENVID on MAIL, NOTIFY and ORCPT on RCPT, each kept in the envelope as received, and refuses
bad values with the session going on; the queue manager passes the requests on to a next
hop that offers DSN, answers NOTIFY=SUCCESS itself for one that does not ("relayed") and for
Maildir ("delivered"), and leaves out of failure and delay reports the recipients whose
NOTIFY does not ask for them. Real daemon on loopback, smtplib and a raw socket, sinks the
test owns, DSNs read from the sender's Maildir."""

import email
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Moat, RawClient, Sink, wait_for  # noqa: E402


class DsnRequestTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = Sink()
        cls.sink.rcpt_reply = lambda addr: "451 4.3.0 try later"  # keeps the messages queued
        cls.moat = Moat(routes=[("example.test", f"smtp:127.0.0.1:{cls.sink.port}")], retry='["1h"]')

    @classmethod
    def tearDownClass(cls):
        cls.moat.cleanup()
        cls.sink.stop()

    def test_dsn_is_offered(self):
        s = self.moat.smtp()
        s.ehlo()
        self.assertTrue(s.has_extn("dsn"))
        s.quit()

    def test_requests_are_kept_with_the_message(self):
        s = self.moat.smtp()
        s.ehlo()
        code, msg = s.mail("a@sender.test", ["RET=HDRS", "ENVID=QQ+2B314"])
        self.assertEqual(code, 250, msg)
        code, msg = s.rcpt("one@example.test", ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;One+40old.example.test"])
        self.assertEqual(code, 250, msg)
        code, msg = s.rcpt("two@example.test", ["NOTIFY=never"])
        self.assertEqual(code, 250, msg)
        self.assertEqual(s.rcpt("three@example.test")[0], 250)
        code, msg = s.data(b"Subject: dsn requests\r\n\r\nx\r\n")
        self.assertEqual(code, 250, msg)
        s.quit()
        qid = self.moat.wait_log(event="accept", **{"from": "a@sender.test"})["queue_id"]
        self.moat.wait_log(event="defer", queue_id=qid, count=3)
        shown = json.loads(self.moat.cli("queue", "show", qid, "--json").stdout)
        self.assertEqual(shown["envid"], "QQ+2B314")  # xtext, as received
        self.assertEqual(shown["ret"], "HDRS")
        rcpts = {r["address"]: r for r in shown["recipients"]}
        self.assertEqual(rcpts["one@example.test"]["notify"], "SUCCESS,DELAY")
        self.assertEqual(rcpts["one@example.test"]["orcpt"], "rfc822;One+40old.example.test")
        self.assertEqual(rcpts["two@example.test"]["notify"], "NEVER")
        self.assertNotIn("notify", rcpts["three@example.test"])
        self.assertNotIn("orcpt", rcpts["three@example.test"])

    def test_bad_values_are_refused_and_the_session_goes_on(self):
        c = RawClient(self.moat.port)
        self.assertEqual(c.code(), 220)
        c.send("EHLO client.test\r\n")
        c.read_reply()
        for line, want in (("MAIL FROM:<a@sender.test> RET=BODY", "501 5.5.4"),
                           ("MAIL FROM:<a@sender.test> ENVID=" + "x" * 101, "501 5.5.4"),
                           ("MAIL FROM:<a@sender.test> NOTIFY=NEVER", "555 5.5.4"),
                           ("MAIL FROM:<a@sender.test>", "250"),
                           ("RCPT TO:<u@example.test> NOTIFY=NEVER,SUCCESS", "501 5.5.4"),
                           ("RCPT TO:<u@example.test> NOTIFY=SOMETIMES", "501 5.5.4"),
                           ("RCPT TO:<u@example.test> ORCPT=no-semicolon", "501 5.5.4"),
                           ("RCPT TO:<u@example.test> ORCPT=rfc822;bad+zz", "501 5.5.4"),
                           ("RCPT TO:<u@example.test> RET=FULL", "555 5.5.4"),
                           ("RCPT TO:<u@example.test> NOTIFY=FAILURE ORCPT=rfc822;u@example.test", "250")):
            with self.subTest(line=line):
                c.send(line + "\r\n")
                code, text = c.read_reply()[-1]
                self.assertTrue(f"{code} {text}".startswith(want), (line, code, text))
        c.send("QUIT\r\n")
        self.assertEqual(c.code(), 221)
        c.close()


class DsnNotifyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.plain = Sink()                                             # no DSN extension
        cls.dsn = Sink(extensions=Sink.DEFAULT_EXTENSIONS + ("DSN",))  # offers DSN
        cls.failing = Sink()
        cls.failing.rcpt_reply = lambda addr: "550 5.1.1 no such user"
        cls.slow = Sink()
        cls.slow.rcpt_reply = lambda addr: "451 4.3.0 try later"
        cls.moat = Moat(routes=[("nodsn.test", f"smtp:127.0.0.1:{cls.plain.port}"),
                                ("dsn.test", f"smtp:127.0.0.1:{cls.dsn.port}"),
                                ("fail.test", f"smtp:127.0.0.1:{cls.failing.port}"),
                                ("slow.test", f"smtp:127.0.0.1:{cls.slow.port}"),
                                (["local.test", "sender.test"], "maildir:mail")],
                        delay_warning="2s")

    @classmethod
    def tearDownClass(cls):
        cls.moat.cleanup()
        for s in (cls.plain, cls.dsn, cls.failing, cls.slow):
            s.stop()

    def send(self, sender, rcpts, mail_options=()):
        """rcpts: [(address, [RCPT options])]; returns the queue id."""
        s = self.moat.smtp()
        s.ehlo()
        code, msg = s.mail(sender, list(mail_options))
        self.assertEqual(code, 250, msg)
        for addr, opts in rcpts:
            code, msg = s.rcpt(addr, list(opts))
            self.assertEqual(code, 250, msg)
        code, msg = s.data(b"Subject: notify test\r\nMessage-ID: <%s@sender.test>\r\n\r\nthe body\r\n" %
                           sender.split("@")[0].encode())
        self.assertEqual(code, 250, msg)
        s.quit()
        return self.moat.wait_log(event="accept", **{"from": sender})["queue_id"]

    def dsns_for(self, sender, n=1):
        """The DSNs in the sender's Maildir, parsed: [(message, {field: value} per status block)]."""
        files = wait_for(lambda: (lambda f: f if len(f) >= n else None)(self.moat.maildir_files(sender)), 30,
                         what=f"{n} DSN(s) for {sender}")
        out = []
        for path in files:
            with open(path, "rb") as f:
                m = email.message_from_bytes(f.read())
            status = [p for p in m.walk() if p.get_content_type() == "message/delivery-status"]
            self.assertEqual(len(status), 1)
            blocks = [dict((k.lower(), v) for k, v in b.items()) for b in status[0].get_payload()]
            out.append((m, blocks))
        return out

    def no_dsn_for(self, qid):
        """Nothing more happens to qid's DSNs: given a second after its last log line."""
        time.sleep(1.0)
        self.assertEqual(self.moat.find_logs(event="dsn", original_queue_id=qid), [])

    def test_success_is_reported_as_relayed_by_a_next_hop_without_dsn(self):
        qid = self.send("relay@sender.test", [("x@nodsn.test", ["NOTIFY=SUCCESS", "ORCPT=rfc822;X+40orig.test"])],
                        ["RET=FULL", "ENVID=E1"])
        self.moat.wait_log(event="deliver", queue_id=qid, to="x@nodsn.test")
        self.assertNotIn("NOTIFY", " ".join(self.plain.commands))
        [(m, blocks)] = self.dsns_for("relay@sender.test")
        self.assertEqual(m["Subject"], "Successful Mail Delivery Report")
        self.assertEqual(m.get_param("report-type"), "delivery-status")
        self.assertEqual(blocks[0]["original-envelope-id"], "E1")
        self.assertEqual(blocks[1]["final-recipient"], "rfc822; x@nodsn.test")
        self.assertEqual(blocks[1]["original-recipient"], "rfc822;X+40orig.test")
        self.assertEqual(blocks[1]["action"], "relayed")
        self.assertEqual(blocks[1]["status"], "2.0.0")
        self.assertEqual(self.moat.wait_log(event="dsn", original_queue_id=qid)["action"], "relayed")
        # RFC 3461 §4.3: RET=FULL is for failure reports; a success report has the headers only.
        types = [p.get_content_type() for p in m.walk()]
        self.assertIn("text/rfc822-headers", types)
        self.assertNotIn("message/rfc822", types)

    def test_requests_go_on_to_a_next_hop_that_offers_dsn(self):
        qid = self.send("pass@sender.test", [("y@dsn.test", ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;y+40dsn.test"]),
                                             ("z+tag@dsn.test", [])], ["RET=HDRS", "ENVID=E2"])
        self.moat.wait_log(event="deliver", queue_id=qid, count=2)
        self.assertIn("RCPT TO:<y@dsn.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;y+40dsn.test", self.dsn.commands)
        # RFC 3461 §4.2: received without ORCPT, it goes with the address as received (xtext).
        self.assertIn("RCPT TO:<z+tag@dsn.test> ORCPT=rfc822;z+2Btag@dsn.test", self.dsn.commands)
        mail = [c for c in self.dsn.commands if c.startswith("MAIL FROM:<pass@sender.test>")]
        self.assertEqual(len(mail), 1)
        self.assertTrue(mail[0].endswith(" RET=HDRS ENVID=E2"), mail[0])
        self.no_dsn_for(qid)  # the success report is the next hop's to make now

    def test_maildir_delivery_is_reported_as_delivered(self):
        qid = self.send("local@sender.test", [("z@local.test", ["NOTIFY=SUCCESS"]), ("w@local.test", [])])
        self.moat.wait_log(event="deliver", queue_id=qid, to="w@local.test")
        [(m, blocks)] = self.dsns_for("local@sender.test")
        self.assertEqual([b.get("action") for b in blocks[1:]], ["delivered"])  # w did not ask
        self.assertEqual(blocks[1]["final-recipient"], "rfc822; z@local.test")

    def test_failures_are_reported_only_to_those_who_ask(self):
        qid = self.send("mixed@sender.test", [("f1@fail.test", []), ("f2@fail.test", ["NOTIFY=NEVER"]),
                                              ("f3@fail.test", ["NOTIFY=SUCCESS"]),
                                              ("f4@fail.test", ["NOTIFY=FAILURE,DELAY"])])
        ev = self.moat.wait_log(event="dsn_dropped", queue_id=qid)
        self.assertEqual(ev["reason"], "NOTIFY")
        self.assertEqual(sorted(ev["to"]), ["f2@fail.test", "f3@fail.test"])
        [(m, blocks)] = self.dsns_for("mixed@sender.test")
        self.assertEqual(m["Subject"], "Undelivered Mail Returned to Sender")
        self.assertEqual(sorted(b["final-recipient"] for b in blocks[1:]),
                         ["rfc822; f1@fail.test", "rfc822; f4@fail.test"])
        self.assertTrue(all(b["action"] == "failed" for b in blocks[1:]))

    def test_notify_never_sends_no_dsn_at_all(self):
        qid = self.send("never@sender.test", [("n@fail.test", ["NOTIFY=NEVER"])])
        self.moat.wait_log(event="bounce", queue_id=qid)
        self.moat.wait_log(event="dsn_dropped", queue_id=qid, reason="NOTIFY")
        self.no_dsn_for(qid)
        self.assertEqual(self.moat.maildir_files("never@sender.test"), [])

    def test_delay_reports_only_for_delay_or_no_notify(self):
        qid = self.send("late@sender.test", [("d1@slow.test", ["NOTIFY=FAILURE"]), ("d2@slow.test", ["NOTIFY=DELAY"]),
                                             ("d3@slow.test", [])])
        [(m, blocks)] = self.dsns_for("late@sender.test")
        self.assertEqual(m["Subject"], "Delayed Mail (still being retried)")
        self.assertEqual(sorted(b["final-recipient"] for b in blocks[1:]),
                         ["rfc822; d2@slow.test", "rfc822; d3@slow.test"])
        ev = self.moat.wait_log(event="dsn_dropped", queue_id=qid, kind="delay")
        self.assertEqual(ev["to"], ["d1@slow.test"])
        self.moat.cli("queue", "delete", qid)


if __name__ == "__main__":
    unittest.main()
