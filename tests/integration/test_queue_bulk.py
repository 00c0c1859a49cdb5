"""`moat queue` on many messages at once: selectors (--from, --to, --older, --younger) for
list and for the actions (hold, release, delete, bounce, flush), the refusal of an action
without a selector, --dry-run, and the qshape-like summary, against the real daemon whose
next hop is down (so mail stays queued) and then comes up."""

import json
import socket
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Moat, Sink, free_port, wait_for  # noqa: E402


class QueueBulkTest(unittest.TestCase):
    def setUp(self):
        self.port = free_port()  # the next hop: down until the end
        self.sink = None
        self.moat = Moat(routes=[(["example.test", "partner.test"], f"smtp:127.0.0.1:{self.port}"),
                                 (["bad.test", "ok.test"], "maildir:mail")],
                         relay_domains=("example.test", "partner.test"), retry='["1h"]')
        self.addCleanup(self.moat.cleanup)

    def tearDown(self):
        if self.sink:
            self.sink.stop()

    def send(self, sender, rcpt):
        s = self.moat.smtp()
        s.ehlo()
        s.mail(sender)
        s.rcpt(rcpt)
        code, reply = s.data(f"From: {sender}\r\nTo: {rcpt}\r\nSubject: bulk\r\n\r\nbody\r\n".encode())
        s.quit()
        self.assertEqual(code, 250)
        return reply.decode().rsplit(" ", 1)[-1]

    def ids(self, *args):
        listing = json.loads(self.moat.cli("queue", "list", "--json", *args).stdout)["messages"]
        return {x["id"] for x in listing}

    def areas(self):
        listing = json.loads(self.moat.cli("queue", "list", "--json", "--all").stdout)["messages"]
        return {x["id"]: x["area"] for x in listing}

    def logged(self, event, n):
        """The queue ids of the `event` lines once there are `n` (the log is written apart from the
        answers), and a moment later, so that a spare line would show."""
        self.moat.wait_log(event=event, count=n)
        time.sleep(0.3)
        return {x["queue_id"] for x in self.moat.find_logs(event=event)}

    def in_spool(self, qid):
        return [a for a in ("queue", "hold", "data") if os.path.exists(os.path.join(self.moat.dir, "spool", a, qid))]

    def test_select_and_act_on_many(self):
        m = self.moat
        spam_a = self.send("spam@bad.test", "a@example.test")
        spam_b = self.send("spam@bad.test", "b@partner.test")
        time.sleep(4)  # the first two are older than 3s, the others younger
        good_c = self.send("good@ok.test", "c@example.test")
        good_d = self.send("Good@OK.test", "d@partner.test")
        # By age at once, while the last two are young by a margin a slow (sanitizer) build keeps.
        self.assertEqual(self.ids("--younger", "3s"), {good_c, good_d})
        self.assertEqual(self.ids("--older", "3s"), {spam_a, spam_b})
        everyone = {spam_a, spam_b, good_c, good_d}
        m.wait_log(event="defer", count=4)

        # list with selectors: AND, case-insensitive addresses, pending recipients, age.
        self.assertEqual(self.ids("--from", "SPAM@bad.TEST"), {spam_a, spam_b})
        self.assertEqual(self.ids("--from", "@ok.test"), {good_c, good_d})
        self.assertEqual(self.ids("--to", "@partner.test"), {spam_b, good_d})
        self.assertEqual(self.ids("--from", "@ok.test", "--to", "@example.test"), {good_c})
        self.assertEqual(self.ids("--older", "1h"), set())
        self.assertEqual(self.ids("--reason", "4.4.1"), everyone)
        self.assertEqual(self.ids(), everyone)
        r = m.cli("queue", "list", "--older", "soon", check=False)
        self.assertEqual(r.returncode, 2)
        self.assertIn("not a duration", r.stderr)

        # summary: exact counts by area, age and recipient domain.
        summary = json.loads(m.cli("queue", "summary", "--json").stdout)
        self.assertEqual(summary["messages"], 4)
        self.assertEqual(summary["areas"], {"active": 4, "hold": 0, "quarantine": 0})
        self.assertEqual(summary["buckets"], ["<5m", "<1h", "<4h", "<1d", "older"])
        self.assertEqual(summary["ages"], [4, 0, 0, 0, 0])
        self.assertEqual({d["domain"]: (d["messages"], d["ages"]) for d in summary["domains"]},
                         {"example.test": (2, [2, 0, 0, 0, 0]), "partner.test": (2, [2, 0, 0, 0, 0])})
        text = m.cli("queue", "summary").stdout
        # Aligned columns: the area's name in 12, its count in 8; a domain in 20, its total in 8
        # and each age bucket in 7.
        self.assertIn(f"{'active':<12} {4:>8}\n{'hold':<12} {0:>8}\n", text)
        self.assertIn(f"{'Domain':<20} {'Total':>8}" + "".join(f" {b:>7}" for b in summary["buckets"]) + "\n", text)
        self.assertIn(f"{'TOTAL':<20} {4:>8}" + "".join(f" {n:>7}" for n in (4, 0, 0, 0, 0)) + "\n", text)
        self.assertIn(f"{'example.test':<20} {2:>8}" + "".join(f" {n:>7}" for n in (2, 0, 0, 0, 0)) + "\n", text)
        self.assertEqual(json.loads(m.cli("queue", "summary", "--json", "--from", "@bad.test").stdout)["messages"], 2)

        # An action with neither an ID nor a selector is refused, by the CLI and by the daemon.
        for verb in ("delete", "hold", "bounce", "release"):
            r = m.cli("queue", verb, check=False)
            self.assertEqual(r.returncode, 2, verb)
            self.assertIn("--all-messages", r.stderr)
        r = m.cli("queue", "delete", "--from", "@bad.test", "--all-messages", check=False)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(self.ids(), everyone)

        # --dry-run names what would be acted on and changes nothing.
        dry = json.loads(m.cli("queue", "delete", "--from", "spam@bad.test", "--dry-run", "--json").stdout)
        self.assertEqual((dry["dry_run"], dry["acted"], set(dry["ids"])), (True, 0, {spam_a, spam_b}))
        self.assertIn("Would delete 2 messages:\n", m.cli("queue", "delete", "--from", "@bad.test", "--dry-run").stdout)
        self.assertEqual(self.ids(), everyone)
        self.assertEqual(self.in_spool(spam_a), ["queue", "data"])
        self.assertFalse(m.find_logs(event="delete"))

        # hold by selector: only those.
        held = json.loads(m.cli("queue", "hold", "--to", "@partner.test", "--json").stdout)
        self.assertEqual((held["acted"], set(held["ids"]), held["failed"]), (2, {spam_b, good_d}, []))
        self.assertEqual(self.areas(), {spam_a: "active", spam_b: "hold", good_c: "active", good_d: "hold"})
        self.assertEqual(self.logged("hold", 2), {spam_b, good_d})
        self.assertEqual(self.ids("--hold"), {spam_b, good_d})
        summary = json.loads(m.cli("queue", "summary", "--json").stdout)
        self.assertEqual(summary["areas"], {"active": 2, "hold": 2, "quarantine": 0})

        # release by selector: the held one of ok.test only.
        out = m.cli("queue", "release", "--from", "@ok.test").stdout
        self.assertEqual(out, f"Released (to be tried now): 1 message:\n  {good_d}\n")
        self.assertEqual(self.areas(), {spam_a: "active", spam_b: "hold", good_c: "active", good_d: "active"})
        self.assertEqual(self.logged("release", 1), {good_d})
        m.wait_log(event="defer", queue_id=good_d, count=2)  # its new attempt is over (the next hop is down)

        # delete by sender: those (held or not) leave the spool, the others stay.
        deleted = json.loads(m.cli("queue", "delete", "--from", "spam@bad.test", "--json").stdout)
        self.assertEqual((deleted["acted"], set(deleted["ids"])), (2, {spam_a, spam_b}))
        self.assertEqual(self.in_spool(spam_a), [])
        self.assertEqual(self.in_spool(spam_b), [])
        self.assertEqual(self.logged("delete", 2), {spam_a, spam_b})
        self.assertEqual(self.ids("--all"), {good_c, good_d})

        # bounce by recipient domain: a DSN to the sender, the message gone.
        bounced = json.loads(m.cli("queue", "bounce", "--to", "@partner.test", "--json").stdout)
        self.assertEqual((bounced["acted"], bounced["ids"], bounced["bounced"]), (1, [good_d], 1))
        self.assertEqual(m.wait_log(event="bounce", queue_id=good_d)["to"], "d@partner.test")
        dsn = wait_for(lambda: m.maildir_files("good@ok.test"), timeout=20, what="the DSN")
        with open(dsn[0], "rb") as f:
            text = f.read()
        self.assertIn(b"report-type=delivery-status", text)
        self.assertIn(b"d@partner.test", text)
        wait_for(lambda: self.ids("--all") == {good_c}, timeout=20, what="the DSN delivered")

        # The next hop comes up: a flush by selector sends what is left, and only that.
        self.sink = Sink(port=self.port)
        flushed = json.loads(m.cli("queue", "flush", "--to", "@example.test", "--json").stdout)
        self.assertEqual((flushed["acted"], flushed["ids"]), (1, [good_c]))
        msgs = self.sink.wait_messages(1, timeout=20)
        self.assertEqual((msgs[0]["from"], msgs[0]["rcpts"]), ("good@ok.test", ["c@example.test"]))
        wait_for(lambda: not self.ids("--all"), timeout=20, what="an empty queue")
        time.sleep(0.5)
        self.assertEqual(len(self.sink.messages), 1)
        summary = json.loads(m.cli("queue", "summary", "--json").stdout)
        self.assertEqual((summary["messages"], summary["domains"]), (0, []))
        # With nothing selected, an action acts on nothing and says so.
        self.assertEqual(m.cli("queue", "delete", "--from", "@bad.test").stdout, "Deleted: 0 messages\n")

    def test_daemon_refuses_a_bulk_action_without_selector(self):
        # The control socket itself refuses, whatever client speaks to it.
        qid = self.send("spam@bad.test", "a@example.test")
        self.moat.wait_log(event="defer")

        for request, ok in ((b"bulk delete\n", False), (b"bulk delete area=all\n", False),
                            (b"bulk delete dry_run=1 all_messages=1\n", True), (b"bulk zap from=a@b.test\n", False)):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(os.path.join(self.moat.dir, "moat.sock"))
            s.sendall(request)
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
            s.close()
            reply = json.loads(answer)
            self.assertEqual(reply["ok"], ok, (request, reply))
            if ok:
                self.assertEqual(reply["ids"], [qid])
        self.assertEqual(self.ids(), {qid})
        # --all-messages: every message of the area, on purpose.
        out = json.loads(self.moat.cli("queue", "hold", "--all-messages", "--json").stdout)
        self.assertEqual(out["ids"], [qid])
        self.assertEqual(self.areas(), {qid: "hold"})


if __name__ == "__main__":
    unittest.main()
