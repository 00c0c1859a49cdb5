"""Recipient verification ([relay] verify_recipients, Postfix's reject_unverified_recipient):
the real daemon on loopback asks the next hop of a relay domain's smtp: route about each
recipient (MAIL FROM:<>, RCPT TO, RSET) before it answers the client's RCPT. The next hop is
a sink the test owns, which takes valid-* addresses, refuses nobody-* with 550 and defers
later-* with 451: an address it refuses gets 550 5.1.1 at RCPT and nothing is ever bounced;
one it cannot answer for gets 450 4.1.1 (or is taken with verify_unknown = "accept");
answers are cached (one probe for two messages); pipelined RCPTs are answered in order;
postmaster is never asked about."""

import os
import socket
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import RawClient, check_config, free_port, owned_moat, owned_sink, scrape  # noqa: E402

VERIFY = 'verify_recipients = true\nverify_timeout = "5s"'


class ProbingSink:
    """Sink's reply hooks: each RCPT's reply by local part, and every RCPT noted with the
    sender of its transaction (a probe's is "")."""

    def __init__(self, sink):
        self.sink = sink
        self.local = threading.local()  # one thread per connection: the transaction's sender
        self.rcpts = []  # (sender, address)
        sink.mail_reply = self.mail
        sink.rcpt_reply = self.rcpt

    def mail(self, sender):
        self.local.sender = sender
        return "250 2.1.0 ok"

    def rcpt(self, address):
        with self.sink.lock:
            self.rcpts.append((getattr(self.local, "sender", None), address))
        user = address.split("@")[0].lower()
        if user.startswith("nobody") or user == "postmaster":
            return f"550 5.1.1 <{address}>: no such user here"
        if user.startswith("later"):
            return "451 4.3.0 mailbox busy, try later"
        return "250 2.1.5 ok"

    def probes(self, address):
        with self.sink.lock:
            return sum(1 for sender, a in self.rcpts if sender == "" and a == address)


class VerifyRecipientsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = owned_sink(cls)
        cls.probing = ProbingSink(cls.sink)
        cls.metrics_port = free_port()
        cls.moat = owned_moat(cls, routes=[(None, f"smtp:127.0.0.1:{cls.sink.port}")], relay_extra=VERIFY,
                              server_extra=f'metrics_listen = "127.0.0.1:{cls.metrics_port}"')

    def send(self, rcpts, sender="alice@sender.test"):
        """One message through Moat: {refused address: (code, text)}."""
        s = self.moat.smtp()
        try:
            return s.sendmail(sender, rcpts, b"Subject: verify\r\n\r\nhello\r\n")
        except Exception as e:  # every recipient refused
            return {a: v for a, v in getattr(e, "recipients", {}).items()}
        finally:
            s.close()

    def test_a_valid_address_is_probed_and_delivered(self):
        before = len(self.sink.messages)
        self.assertEqual(self.send(["valid-1@example.test"]), {})
        msgs = self.sink.wait_messages(before + 1)
        self.assertEqual(msgs[before]["rcpts"], ["valid-1@example.test"])
        self.assertEqual(self.probing.probes("valid-1@example.test"), 1)
        ev = self.moat.wait_log(event="verify", rcpt="valid-1@example.test")
        self.assertEqual(ev["result"], "valid")
        self.assertEqual(ev["reply"], "250 2.1.5 ok")
        self.assertEqual(ev["relay"], f"127.0.0.1:{self.sink.port}")
        # The probe is a transaction reset, never one with data.
        self.assertIn("MAIL FROM:<>", self.sink.commands)

    def test_an_address_the_next_hop_refuses_gets_550_at_rcpt_and_no_bounce(self):
        before = len(self.sink.messages)
        refused = self.send(["nobody-1@example.test", "valid-2@example.test"])
        self.assertEqual(list(refused), ["nobody-1@example.test"])
        code, text = refused["nobody-1@example.test"]
        self.assertEqual(code, 550)
        self.assertEqual(text.decode(), "5.1.1 <nobody-1@example.test>: Recipient address rejected: undeliverable "
                                        "address: 550 5.1.1 <nobody-1@example.test>: no such user here")
        msgs = self.sink.wait_messages(before + 1)
        self.assertEqual(msgs[before]["rcpts"], ["valid-2@example.test"])
        ev = self.moat.wait_log(event="verify", rcpt="nobody-1@example.test")
        self.assertEqual(ev["result"], "invalid")
        rej = self.moat.wait_log(event="reject", to="nobody-1@example.test")
        self.assertEqual(rej["stage"], "rcpt")
        self.assertEqual(rej["reason"], "verify")
        self.moat.wait_log(event="deliver", to="valid-2@example.test")
        self.assertEqual(self.moat.find_logs(event="dsn"), [])
        self.assertEqual(self.moat.find_logs(event="bounce"), [])
        # Only the probe ever asked about it: the message never went to it.
        with self.sink.lock:
            asked = [s for s, a in self.probing.rcpts if a == "nobody-1@example.test"]
        self.assertEqual(asked, [""])

    def test_a_temporary_refusal_gets_450(self):
        code, text = self.send(["later-1@example.test"])["later-1@example.test"]
        self.assertEqual(code, 450)
        self.assertEqual(text.decode(), "4.1.1 <later-1@example.test>: Recipient address rejected: unverified "
                                        "address: 451 4.3.0 mailbox busy, try later")
        self.assertEqual(self.moat.wait_log(event="verify", rcpt="later-1@example.test")["result"], "unknown")

    def test_the_answer_is_cached_one_probe_for_two_messages(self):
        before = len(self.sink.messages)
        self.assertEqual(self.send(["Valid-Cache@example.test"]), {})
        self.assertEqual(self.send(["valid-cache@EXAMPLE.test"]), {})
        self.sink.wait_messages(before + 2)
        self.assertEqual(self.probing.probes("Valid-Cache@example.test"), 1)
        self.assertEqual(self.probing.probes("valid-cache@EXAMPLE.test"), 0)
        ev = self.moat.wait_log(event="verify", rcpt="valid-cache@EXAMPLE.test")
        self.assertEqual(ev["result"], "cached")
        self.assertEqual(ev["cached_result"], "valid")
        # A refusal is remembered as well: the second RCPT is refused without asking.
        for _ in range(2):
            self.assertEqual(self.send(["nobody-cache@example.test"])["nobody-cache@example.test"][0], 550)
        self.assertEqual(self.probing.probes("nobody-cache@example.test"), 1)
        metrics = scrape(self.metrics_port)
        self.assertGreaterEqual(metrics['moat_verify_total{result="cached"}'], 2)
        self.assertGreaterEqual(metrics['moat_verify_total{result="valid"}'], 1)
        self.assertGreaterEqual(metrics['moat_verify_total{result="invalid"}'], 1)

    def test_pipelined_rcpts_are_answered_in_order(self):
        before = len(self.sink.messages)
        c = RawClient(self.moat.port)
        try:
            self.assertEqual(c.code(), 220)
            c.send("EHLO client.test\r\n")
            self.assertIn("PIPELINING", [t for _, t in c.read_reply()])
            c.send("MAIL FROM:<alice@sender.test>\r\n"
                   "RCPT TO:<valid-p1@example.test>\r\n"
                   "RCPT TO:<nobody-p2@example.test>\r\n"
                   "RCPT TO:<valid-p3@example.test>\r\n"
                   "RCPT TO:<later-p4@example.test>\r\n"
                   "RCPT TO:<valid-p5@example.test>\r\n"
                   "DATA\r\n")
            replies = [c.read_reply()[-1] for _ in range(7)]
            self.assertEqual([code for code, _ in replies], [250, 250, 550, 250, 450, 250, 354], replies)
            self.assertIn("nobody-p2@example.test", replies[2][1])
            self.assertIn("later-p4@example.test", replies[4][1])
            c.send("Subject: pipelined\r\n\r\nhello\r\n.\r\nQUIT\r\n")
            self.assertEqual(c.code(), 250)
            self.assertEqual(c.code(), 221)
        finally:
            c.close()
        msgs = self.sink.wait_messages(before + 1)
        self.assertEqual(msgs[before]["rcpts"],
                         ["valid-p1@example.test", "valid-p3@example.test", "valid-p5@example.test"])

    def test_postmaster_always_passes_unasked(self):
        # The sink would refuse postmaster: Moat must take it without asking (RFC 5321 §4.5.1).
        s = self.moat.smtp()
        s.ehlo()
        s.mail("alice@sender.test")
        self.assertEqual(s.rcpt("postmaster@example.test")[0], 250)
        self.assertEqual(s.rcpt("Postmaster")[0], 250)
        s.quit()
        self.assertEqual(self.probing.probes("postmaster@example.test"), 0)
        self.assertEqual(self.moat.find_logs(event="verify", rcpt="postmaster@example.test"), [])

    def test_other_domains_are_not_verified(self):
        # Mail the relay network sends out: not ours to verify.
        s = self.moat.smtp()
        s.ehlo()
        s.mail("alice@example.test")
        self.assertEqual(s.rcpt("nobody-out@elsewhere.test")[0], 250)
        s.rset()
        s.quit()
        self.assertEqual(self.probing.probes("nobody-out@elsewhere.test"), 0)


class WithRecipientTableTest(unittest.TestCase):
    """relay.recipients applies first: an address it does not list is refused without a probe."""

    def test_the_table_first_then_the_next_hop(self):
        sink = owned_sink(self)
        probing = ProbingSink(sink)
        moat = owned_moat(self, routes=[(None, f"smtp:127.0.0.1:{sink.port}")], start=False,
                          relay_extra=VERIFY + '\nrecipients = "recipients"')
        with open(os.path.join(moat.dir, "recipients"), "w") as f:
            f.write("valid-t@example.test\nnobody-t@example.test\n")
        moat.start()
        s = moat.smtp()
        s.ehlo()
        s.mail("alice@sender.test")
        code, text = s.rcpt("stranger@example.test")
        self.assertEqual((code, text), (550, b"5.1.1 <stranger@example.test>: Recipient address rejected: "
                                             b"User unknown in relay recipient table"))
        self.assertEqual(s.rcpt("valid-t@example.test")[0], 250)
        code, text = s.rcpt("nobody-t@example.test")  # listed, but the next hop knows better
        self.assertEqual(code, 550)
        self.assertIn(b"undeliverable address", text)
        s.quit()
        self.assertEqual(probing.probes("stranger@example.test"), 0)
        self.assertEqual(probing.probes("valid-t@example.test"), 1)
        self.assertEqual(probing.probes("nobody-t@example.test"), 1)


class NextHopDownTest(unittest.TestCase):
    """The next hop cannot be asked: verify_unknown decides."""

    def run_rcpt(self, extra, address):
        port = free_port()  # nothing listens there: the connection is refused
        moat = owned_moat(self, routes=[(None, f"smtp:127.0.0.1:{port}")], relay_extra=VERIFY + "\n" + extra)
        s = moat.smtp()
        s.ehlo()
        s.mail("alice@sender.test")
        code, text = s.rcpt(address)
        s.quit()
        ev = moat.wait_log(event="verify", rcpt=address)
        self.assertEqual(ev["result"], "unknown")
        self.assertIn(f"127.0.0.1:{port}", ev["reply"])
        return code, text.decode()

    def test_defer_by_default(self):
        code, text = self.run_rcpt("", "anyone@example.test")
        self.assertEqual(code, 450)
        self.assertTrue(text.startswith("4.1.1 <anyone@example.test>: Recipient address rejected: unverified "
                                        "address: 127.0.0.1:"), text)

    def test_accept_when_asked_to(self):
        code, _ = self.run_rcpt('verify_unknown = "accept"', "anyone@example.test")
        self.assertEqual(code, 250)

    def test_a_next_hop_that_never_answers_is_given_up_on_at_verify_timeout(self):
        # A listener that takes the connection (the kernel's backlog) and never greets.
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        moat = owned_moat(self, routes=[(None, f"smtp:127.0.0.1:{silent.getsockname()[1]}")],
                          relay_extra='verify_recipients = true\nverify_timeout = "1s"')
        s = moat.smtp()
        s.ehlo()
        s.mail("alice@sender.test")
        code, text = s.rcpt("anyone@example.test")
        self.assertEqual(code, 450)
        self.assertIn(b"no answer within verify_timeout (1s)", text)
        # The session goes on as usual after it.
        self.assertEqual(s.noop()[0], 250)
        s.quit()


class CheckTest(unittest.TestCase):
    def test_bad_values_are_refused_with_file_and_line(self):
        path, r = check_config(self, '[server]\nhostname = "mx.test"\n\n[[listener]]\naddress = "127.0.0.1:0"\n\n'
                               '[relay]\ndomains = ["example.test"]\nverify_recipients = true\n'
                               'verify_unknown = "maybe"\nverify_timeout = "1h"\n')
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(f"{path}:10: relay.verify_unknown", r.stderr)
        self.assertIn(f"{path}:11: relay.verify_timeout: must be between 1s and 2m", r.stderr)


class VerifyRewrittenRecipientTest(unittest.TestCase):
    """With [relay] rewrite, the next hop is asked about the internal address the external
    one maps to (the one it knows), on the internal domain's route."""

    def test_the_internal_address_is_asked_about(self):
        sink = owned_sink(self)
        probing = ProbingSink(sink)
        moat = owned_moat(self, routes=[("corp.internal", f"smtp:127.0.0.1:{sink.port}")], relay_extra=VERIFY +
                          '\nrewrite = "rewrite.map"', start=False)
        with open(os.path.join(moat.dir, "rewrite.map"), "w") as f:
            f.write("@corp.internal @example.test\n")
        moat.start()
        s = moat.smtp()
        try:
            refused = s.sendmail("alice@sender.test", ["valid-7@example.test", "nobody-7@example.test"],
                                 b"Subject: rewritten\r\n\r\nhello\r\n")
        finally:
            s.close()
        self.assertEqual(list(refused), ["nobody-7@example.test"])
        self.assertEqual(refused["nobody-7@example.test"][0], 550)
        self.assertEqual(probing.probes("valid-7@corp.internal"), 1)
        self.assertEqual(probing.probes("nobody-7@corp.internal"), 1)
        self.assertEqual(probing.probes("valid-7@example.test"), 0)
        msg = sink.wait_messages(1)[0]
        self.assertEqual(msg["rcpts"], ["valid-7@corp.internal"])
        accept = moat.wait_log(event="accept")
        self.assertEqual(accept["rewritten"], [{"from": "valid-7@example.test", "to": "valid-7@corp.internal",
                                                "where": "rcpt"}])


if __name__ == "__main__":
    unittest.main()
