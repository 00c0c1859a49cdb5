"""The milter client ([[milter]]) through the real daemon, against real milters: pymilter
on Sendmail's libmilter (milter_peer.py, a child process on a unix socket in the test's
folder or on 127.0.0.1). Reject, tempfail and a custom reply code; headers added, a header
changed and one deleted, the body replaced, headers inserted at their index, recipients added
and deleted and the sender changed (all seen at the sink); every recipient deleted (held in the
quarantine); a malformed recipient (default_action); Moat's Received field sent first; quarantine, and discard
held in the quarantine; the macros the milter read; a milter that is down (tempfail and
accept as default_action) and one that hangs past command_timeout; two milters in config
order; two chained milters, the second sent the first one's header, body, sender and
recipient and changing them again (what it left is delivered); milters behind Moat's own
filters sent the message as delivery will render it (Moat's Received, Authentication-Results and
X-Spam-* fields, the Subject prefix, the stripped part), their inserts and changes landing right
at the sink, a bare sender change keeping RET/ENVID, an outbound sender a milter set rewritten by
relay.rewrite; recipients milters add rewritten by relay.rewrite (in relay.domains only) and
expanded by relay.aliases, and one a later milter deletes by the address it was sent; bad
[[milter]] values refused at FILE:LINE."""

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Sink, SinkTestCase, check_config, free_port, make_cert, owned_moat, owned_sink, wait_for  # noqa: E402

PYTHON = "/usr/bin/python3"
PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "milter_peer.py")


def have_pymilter():
    return subprocess.run([PYTHON, "-c", "import Milter"], capture_output=True).returncode == 0


def start_peer(owner, spec, tag, record):
    """Runs milter_peer.py on `spec` ("unix:PATH" or "inet:PORT@127.0.0.1") and waits until
    it takes connections; `owner` (a test or a test class) stops it afterwards."""
    proc = subprocess.Popen([PYTHON, PEER, spec, tag, record], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cleanup = owner.addClassCleanup if isinstance(owner, type) else owner.addCleanup

    def stop():
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()
    cleanup(stop)

    def ready():
        if proc.poll() is not None:
            raise AssertionError("the milter exited: " + proc.stderr.read().decode(errors="replace"))
        if spec.startswith("unix:"):
            target, family = spec[5:], socket.AF_UNIX
        else:
            port, host = spec[5:].split("@")
            target, family = (host, int(port)), socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.settimeout(1)
            s.connect(target)
            return True
        except OSError:
            return False
        finally:
            s.close()
    wait_for(ready, 20, what="the milter listening on " + spec)
    return proc


def records(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def message(subject, body="Hello from the milter test.\r\n", extra=""):
    return (f"From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\n{extra}"
            f"Message-ID: <{subject.replace(' ', '.')}.{time.time()}@sender.test>\r\n\r\n{body}")


def send(moat, subject, sender="alice@sender.test", rcpts=("bob@example.test",), tls=False, **kw):
    """(code, reply text, queue id or None) for one message through `moat` (after STARTTLS
    with `tls`)."""
    return send_data(moat, message(subject, **kw), sender, rcpts, tls=tls)


def send_data(moat, data, sender="alice@sender.test", rcpts=("bob@example.test",), options=(), tls=False):
    """(code, reply text, queue id or None) for the message `data` through `moat`, MAIL FROM
    with `options` (after STARTTLS with `tls`)."""
    s = moat.smtp()
    try:
        s.ehlo()
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s.starttls(context=ctx)
            s.ehlo()
        code, reply = s.mail(sender, list(options))
        assert code == 250, (code, reply)
        for r in rcpts:
            code, reply = s.rcpt(r)
            assert code == 250, (code, reply)
        code, reply = s.data(data)
        reply = reply.decode()
        return code, reply, (reply.rsplit(" ", 1)[-1] if code == 250 else None)
    finally:
        try:
            s.quit()
        except Exception:
            pass


def milter_block(address, name=None, extra=""):
    return f'\n[[milter]]\naddress = "{address}"\n' + (f'name = "{name}"\n' if name else "") + extra


@unittest.skipUnless(have_pymilter(), "python3-milter (pymilter) is not installed")
class MilterVerdicts(unittest.TestCase):
    """One pymilter on a unix socket; each message's Subject picks what it does."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="moat-milter-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        cls.record = os.path.join(cls.dir, "record.jsonl")
        sock = os.path.join(cls.dir, "peer.sock")
        start_peer(cls, "unix:" + sock, "one", cls.record)
        cert, key = make_cert(cls.dir)
        cls.sink = owned_sink(cls)
        cls.moat = owned_moat(cls, routes=[("example.test", f"smtp:127.0.0.1:{cls.sink.port}")],
                              listener_extra=f'tls_cert = "{cert}"\ntls_key = "{key}"\n',
                              extra=milter_block("unix:" + sock, "peer"))

    def delivered(self, subject):
        msgs = self.sink.wait_messages(1, timeout=30)
        found = wait_for(lambda: [m for m in self.sink.messages if f"Subject: {subject}".encode() in m["data"]], 30,
                         what="the message at the sink")
        self.assertTrue(msgs)
        return found[0]["data"].decode("latin-1")

    def record_for(self, subject):
        return wait_for(lambda: [r for r in records(self.record) if r["subject"] == subject], 10,
                        what="the milter's record")[-1]

    def quarantined(self):
        return json.loads(self.moat.cli("queue", "list", "--quarantine", "--json").stdout)["messages"]

    def test_reject(self):
        code, reply, _ = send(self.moat, "please reject me")
        self.assertEqual((code, reply), (550, "5.7.1 Command rejected"))
        line = self.moat.wait_log(event="reject", reply="550 5.7.1 Command rejected")
        self.assertEqual(line["filters"]["milter"]["milters"], {"peer": "reject 550"})

    def test_tempfail(self):
        code, reply, _ = send(self.moat, "please tempfail me")
        self.assertEqual(code, 451)
        self.assertTrue(reply.startswith("4.7.1"), reply)

    def test_custom_reply_code(self):
        code, reply, _ = send(self.moat, "a custom code please")
        self.assertEqual((code, reply), (554, "5.7.0 Refused by the test milter"))

    def test_added_headers_at_the_sink(self):
        code, _, qid = send(self.moat, "add header test")
        self.assertEqual(code, 250)
        data = self.delivered("add header test")
        self.assertIn("X-Milter-Added: by one\r\n", data)
        self.assertIn("X-Milter-Inserted: first\r\n", data)
        acc = self.moat.wait_log(event="accept", queue_id=qid)
        self.assertEqual(acc["filters"]["milter"]["milters"], {"peer": "continue"})

    def test_changed_and_deleted_header(self):
        code, _, _ = send(self.moat, "change header test", extra="X-Change-Me: original\r\nX-Delete-Me: gone\r\n")
        self.assertEqual(code, 250)
        data = self.delivered("change header test")
        self.assertIn("X-Change-Me: changed by one\r\n", data)
        self.assertNotIn("original", data)
        self.assertNotIn("X-Delete-Me", data)

    def test_replaced_body(self):
        code, _, _ = send(self.moat, "replace body test", body="The original body.\r\n")
        self.assertEqual(code, 250)
        data = self.delivered("replace body test")
        self.assertEqual(data.split("\r\n\r\n", 1)[1], "The body the milter wrote.\r\nSecond line.\r\n")
        # The milter was sent the body as received.
        self.assertEqual(self.record_for("replace body test")["body"], "The original body.\r\n")

    def test_quarantine_and_discard(self):
        for subject, reason in (("quarantine me now", "milter peer: looks suspicious"),
                                ("discard me now", "milter peer: discard")):
            code, _, qid = send(self.moat, subject)
            self.assertEqual(code, 250, subject)
            acc = self.moat.wait_log(event="accept", queue_id=qid)
            self.assertEqual(acc["verdict"], "quarantine")
            held = wait_for(lambda: [x for x in self.quarantined() if x["id"] == qid], 10,
                            what="the message in the quarantine")
            self.assertIn(reason, json.dumps(held[0]))
            self.assertFalse([m for m in self.sink.messages if subject.encode() in m["data"]])

    def delivered_all(self, subject, n):
        """The sink's transactions of the message with this Subject, once there are `n` of them
        (Moat sends one per recipient domain and route, so normally one)."""
        return wait_for(lambda: (lambda f: f if len(f) >= n else None)(
            [m for m in self.sink.messages if f"Subject: {subject}".encode() in m["data"]]), 30,
            what="the message at the sink")

    def envelope_lines(self, qid):
        return wait_for(lambda: self.moat.find_logs(event="milter_envelope", queue_id=qid), 10,
                        what="the milter_envelope lines")

    def test_added_recipients_reach_the_sink(self):
        code, _, qid = send(self.moat, "add rcpt test")
        self.assertEqual(code, 250)
        acc = self.moat.wait_log(event="accept", queue_id=qid)
        self.assertEqual(sorted(acc["to"]), ["bob@example.test", "carol@example.test", "dave@example.test"])
        got = self.delivered_all("add rcpt test", 1)
        rcpts = wait_for(lambda: (lambda r: r if len(r) == 3 else None)(
            sorted(r for m in self.sink.messages if b"Subject: add rcpt test" in m["data"] for r in m["rcpts"])),
            30, what="three recipients at the sink")
        self.assertEqual(rcpts, ["bob@example.test", "carol@example.test", "dave@example.test"])
        self.assertTrue(got)
        lines = self.envelope_lines(qid)
        self.assertEqual([(x["action"], x["address"], x["milter"]) for x in lines],
                         [("add_rcpt", "carol@example.test", "peer"), ("add_rcpt", "dave@example.test", "peer")])
        self.assertEqual(lines[1]["notify"], "NEVER")
        self.assertEqual(lines[1]["ignored"], ["XFOO=1"])

    def test_deleted_recipient_not_at_the_sink(self):
        code, _, qid = send(self.moat, "del rcpt test", rcpts=("bob@example.test", "dave@example.test"))
        self.assertEqual(code, 250)
        acc = self.moat.wait_log(event="accept", queue_id=qid)
        self.assertEqual(acc["to"], ["bob@example.test"])
        got = self.delivered_all("del rcpt test", 1)
        self.assertEqual([r for m in got for r in m["rcpts"]], ["bob@example.test"])
        self.moat.wait_log(event="deliver", queue_id=qid)
        self.assertEqual([(x["action"], x["address"], x["result"]) for x in self.envelope_lines(qid)],
                         [("del_rcpt", "dave@example.test", "applied")])

    def test_changed_sender_at_the_sink(self):
        code, _, qid = send(self.moat, "change sender test")
        self.assertEqual(code, 250)
        got = self.delivered_all("change sender test", 1)
        self.assertEqual(got[0]["from"], "bounces@sender.test")
        self.assertEqual(self.moat.wait_log(event="accept", queue_id=qid)["from"], "bounces@sender.test")
        line = self.envelope_lines(qid)[0]
        self.assertEqual((line["action"], line["address"], line["ret"]), ("chg_from", "bounces@sender.test", "HDRS"))
        # The milter saw the sender as the client gave it.
        self.assertEqual(self.record_for("change sender test")["sender"], "<alice@sender.test>")

    def test_every_recipient_deleted_is_quarantined(self):
        code, _, qid = send(self.moat, "delete every rcpt test", rcpts=("bob@example.test", "dave@example.test"))
        self.assertEqual(code, 250)  # kept, not dropped: the client is told it is queued
        acc = self.moat.wait_log(event="accept", queue_id=qid)
        self.assertEqual(acc["verdict"], "quarantine")
        self.assertEqual(acc["to"], ["bob@example.test", "dave@example.test"])  # as received
        held = wait_for(lambda: [x for x in self.quarantined() if x["id"] == qid], 10,
                        what="the message in the quarantine")
        self.assertIn("milter peer: deleted every recipient", json.dumps(held[0]))
        last = self.moat.wait_log(event="milter_envelope", queue_id=qid, action="quarantine")
        self.assertEqual(last["level"], "warn")
        self.assertFalse([m for m in self.sink.messages if b"delete every rcpt test" in m["data"]])

    def test_malformed_recipient_is_the_default_action(self):
        code, reply, _ = send(self.moat, "bad rcpt test")
        self.assertEqual(code, 451)  # default_action tempfail
        err = self.moat.wait_log(event="milter_error", milter="peer")
        self.assertIn("add_rcpt", err["error"])

    def test_inserted_headers_at_their_index(self):
        code, _, qid = send(self.moat, "insert at index test")
        self.assertEqual(code, 250)
        data = self.delivered("insert at index test")
        names = [line.split(":", 1)[0] for line in data.split("\r\n\r\n", 1)[0].split("\r\n")
                 if line and line[0] not in " \t"]
        # Sent to the milter: Moat's Received and Authentication-Results, From, To, Subject...
        # Index 0 is above the Received field, 1 (among Moat's own fields) just below them;
        # the index of From above it, the next one below it.
        self.assertEqual(names[0], "X-At-Zero")
        self.assertEqual(names[1], "Received")
        self.assertEqual(names[names.index("Authentication-Results") + 1], "X-At-One")
        self.assertEqual(names[names.index("From") - 1], "X-Above-From")
        self.assertEqual(names[names.index("From") + 1], "X-Below-From")

    def test_milter_sees_moats_received_first(self):
        code, _, qid = send(self.moat, "received check")
        self.assertEqual(code, 250)
        seen = self.record_for("received check")["headers"]
        first = seen[0]
        self.assertEqual(first[0], "Received")
        # Then the Authentication-Results field Moat adds, the one delivered.
        self.assertEqual(seen[1][0], "Authentication-Results")
        self.assertIn("by mx.moat.test (Moat) with ESMTP id " + qid, first[1])
        data = self.delivered("received check")
        head = data.split("\r\n\r\n", 1)[0]
        self.assertEqual(head.count("\r\nReceived:") + head.startswith("Received:"), 1)
        # The same field: the milter read the one delivered.
        delivered = head.split("Received: ", 1)[1].split("\r\nAuthentication-Results:", 1)[0]
        self.assertEqual(delivered.replace("\r\n", "\n"), first[1])
        ar = re.search(r"\r\nAuthentication-Results: (.*?)\r\n(?![ \t])", head, re.S).group(1)
        self.assertEqual(ar.replace("\r\n", "\n"), seen[1][1])
        self.assertIn("spf=", seen[1][1])

    def test_macros_received(self):
        code, _, qid = send(self.moat, "macro check", sender="carol@sender.test",
                            rcpts=("bob@example.test", "dave@example.test"))
        self.assertEqual(code, 250)
        r = self.record_for("macro check")
        self.assertEqual(r["macros"]["mail_addr"], "carol@sender.test")
        self.assertEqual(r["macros"]["rcpt_addr"], ["bob@example.test", "dave@example.test"])
        self.assertEqual(r["macros"]["i"], qid)
        self.assertEqual(r["macros"]["j"], "mx.moat.test")
        self.assertEqual(r["macros"]["client_addr"], "127.0.0.1")
        # The client's own port, in the macro and in CONNECT's address, as the session logged it.
        session = self.moat.wait_log(event="accept", queue_id=qid)["session"]
        connect = self.moat.wait_log(event="connect", session=session)
        self.assertEqual(r["macros"]["client_port"], str(connect["client_port"]))
        self.assertEqual(r["macros"]["hostaddr"], ["127.0.0.1", connect["client_port"]])
        self.assertNotEqual(connect["client_port"], 0)
        self.assertEqual(r["sender"], "<carol@sender.test>")
        self.assertIn(["Subject", "macro check"], r["headers"])
        self.assertIsNone(r["macros"]["tls_version"])  # a milter reads it only over TLS
        code, _, _ = send(self.moat, "macro check over tls", tls=True)
        self.assertEqual(code, 250)
        self.assertRegex(self.record_for("macro check over tls")["macros"]["tls_version"], r"^TLSv1\.[23]$")


@unittest.skipUnless(have_pymilter(), "python3-milter (pymilter) is not installed")
class MilterFailures(SinkTestCase):

    def start(self, extra):
        self.moat = owned_moat(self, routes=[("example.test", f"smtp:127.0.0.1:{self.sink.port}")],
                               extra=extra)
        return self.moat

    def test_down_milter_tempfail_by_default(self):
        port = free_port()  # nothing listens there
        m = self.start(milter_block(f"inet:127.0.0.1:{port}", "down"))
        code, reply, _ = send(m, "to a milter that is down")
        self.assertEqual(code, 451)
        self.assertTrue(reply.startswith("4.7.1"), reply)
        err = m.wait_log(event="milter_error", milter="down")
        self.assertEqual(err["action"], "tempfail")
        self.assertIn("connect", err["error"])

    def test_down_milter_with_accept_delivers(self):
        d = tempfile.mkdtemp(prefix="moat-milter-")
        self.addCleanup(shutil.rmtree, d, True)
        m = self.start(milter_block("unix:" + os.path.join(d, "none.sock"), "absent",
                                    'default_action = "accept"\n'))
        code, _, qid = send(m, "accepted without the milter")
        self.assertEqual(code, 250)
        self.sink.wait_messages(1)
        acc = m.wait_log(event="accept", queue_id=qid)
        self.assertEqual(acc["filters"]["milter"]["milters"], {"absent": "error, accept"})

    def test_outbound_false_skips_mail_from_relay_networks(self):
        # The test client, 127.0.0.1, is in relay.networks: its mail is outbound. The milter
        # is down, so were it asked, the message would get 451.
        m = self.start(milter_block(f"inet:127.0.0.1:{free_port()}", "inbound-only", "outbound = false\n"))
        code, _, qid = send(m, "outbound mail")
        self.assertEqual(code, 250)
        acc = m.wait_log(event="accept", queue_id=qid)
        self.assertEqual(acc["filters"]["milter"]["milters"], {"inbound-only": "skipped (outbound)"})
        self.assertFalse(m.find_logs(event="milter_error"))

    def test_hanging_milter_is_bounded(self):
        d = tempfile.mkdtemp(prefix="moat-milter-")
        self.addCleanup(shutil.rmtree, d, True)
        sock = os.path.join(d, "hang.sock")
        start_peer(self, "unix:" + sock, "hang", os.path.join(d, "record.jsonl"))
        m = self.start(milter_block("unix:" + sock, "slow", 'command_timeout = "1s"\n'))
        started = time.monotonic()
        code, _, _ = send(m, "held up", sender="hang@sender.test")
        elapsed = time.monotonic() - started
        self.assertEqual(code, 451)
        self.assertLess(elapsed, 10)
        err = m.wait_log(event="milter_error", milter="slow")
        self.assertIn("timed out waiting for the reply to MAIL", err["error"])

    def test_two_milters_in_order(self):
        d = tempfile.mkdtemp(prefix="moat-milter-")
        self.addCleanup(shutil.rmtree, d, True)
        record = os.path.join(d, "record.jsonl")
        port = free_port()
        start_peer(self, f"inet:{port}@127.0.0.1", "a", record)
        sock = os.path.join(d, "b.sock")
        start_peer(self, "unix:" + sock, "b", record)
        m = self.start(milter_block(f"inet:127.0.0.1:{port}", "first") + milter_block("unix:" + sock, "second"))
        code, _, qid = send(m, "tagged twice")
        self.assertEqual(code, 250)
        data = self.sink.wait_messages(1)[0]["data"].decode()
        self.assertIn("X-Seen-By-a: yes\r\n", data)
        self.assertIn("X-Seen-By-b: yes\r\n", data)
        self.assertEqual([r["tag"] for r in records(record)], ["a", "b"])
        acc = m.wait_log(event="accept", queue_id=qid)
        self.assertEqual(list(acc["filters"]["milter"]["milters"].items()), [("first", "continue"),
                                                                             ("second", "continue")])
        # The first milter's reject ends it: the second never sees the message.
        code, _, _ = send(m, "reject me first")
        self.assertEqual(code, 550)
        self.assertEqual([r["tag"] for r in records(record) if r["subject"] == "reject me first"], ["a"])


@unittest.skipUnless(have_pymilter(), "python3-milter (pymilter) is not installed")
class MilterChain(SinkTestCase):
    """Two milters, a then b: b is sent the message and envelope with a's changes applied."""

    def setUp(self):
        super().setUp()
        d = tempfile.mkdtemp(prefix="moat-milter-")
        self.addCleanup(shutil.rmtree, d, True)
        self.record = os.path.join(d, "record.jsonl")
        port = free_port()
        start_peer(self, f"inet:{port}@127.0.0.1", "a", self.record)
        sock = os.path.join(d, "b.sock")
        start_peer(self, "unix:" + sock, "b", self.record)
        self.moat = owned_moat(self, routes=[("example.test", f"smtp:127.0.0.1:{self.sink.port}")],
                               extra=milter_block(f"inet:127.0.0.1:{port}", "first") + milter_block("unix:" + sock,
                                                                                                    "second"))

    def seen_by(self, tag, subject):
        return wait_for(lambda: [r for r in records(self.record) if r["tag"] == tag and r["subject"] == subject], 10,
                        what="milter " + tag + "'s record")[-1]

    def test_second_milter_sees_and_changes_the_first_ones_content(self):
        subject = "chain content test"
        code, _, qid = send(self.moat, subject, body="The original body.\r\n")
        self.assertEqual(code, 250)
        a, b = self.seen_by("a", subject), self.seen_by("b", subject)
        # a was sent the message as received; b with a's header and body.
        self.assertEqual(a["body"], "The original body.\r\n")
        self.assertNotIn("X-Chain", [n for n, _ in a["headers"]])
        self.assertEqual([n for n, _ in b["headers"]][:4], ["Received", "Authentication-Results", "X-Chain", "From"])
        self.assertEqual(b["headers"][2][1], "from a")
        self.assertEqual(b["body"], "Body from a.\r\n")
        # Delivered: what b left, its indexes counted in the header it was sent.
        data = self.sink.wait_messages(1)[0]["data"].decode("latin-1")
        head, body = data.split("\r\n\r\n", 1)
        self.assertEqual(body, "Body from b, after: Body from a.\r\n")
        self.assertIn("X-Chain: changed by b after from a\r\n", head)
        self.assertNotIn("X-Chain: from a", head)
        names = [line.split(":", 1)[0] for line in head.split("\r\n") if line and line[0] not in " \t"]
        self.assertEqual(names[names.index("X-Chain") - 1], "X-B-Above-Chain")
        self.assertEqual(names[names.index("From") - 1], "X-B-Above-From")
        self.assertEqual(names.count("X-Chain"), 1)
        acc = self.moat.wait_log(event="accept", queue_id=qid)
        self.assertEqual(acc["filters"]["milter"]["milters"], {"first": "continue", "second": "continue"})

    def test_second_milter_sees_the_first_ones_sender_and_recipient(self):
        subject = "chain envelope test"
        code, _, qid = send(self.moat, subject)
        self.assertEqual(code, 250)
        a, b = self.seen_by("a", subject), self.seen_by("b", subject)
        self.assertEqual((a["sender"], a["rcpts"]), ("<alice@sender.test>", ["<bob@example.test>"]))
        self.assertEqual(b["sender"], "<bounces@sender.test>")
        self.assertIn("RET=HDRS", b["args"])
        self.assertEqual(b["macros"]["mail_addr"], "bounces@sender.test")
        self.assertEqual(b["rcpts"], ["<bob@example.test>", "<dave@example.test>"])
        self.assertEqual(b["macros"]["rcpt_addr"], ["bob@example.test", "dave@example.test"])
        # b deleted the recipient a added: the sink gets the message from a's sender, to bob.
        got = self.sink.wait_messages(1)
        self.assertEqual(got[0]["from"], "bounces@sender.test")
        self.assertEqual(got[0]["rcpts"], ["bob@example.test"])
        acc = self.moat.wait_log(event="accept", queue_id=qid)
        self.assertEqual(acc["to"], ["bob@example.test"])
        lines = wait_for(lambda: (lambda x: x if len(x) == 3 else None)(
            self.moat.find_logs(event="milter_envelope", queue_id=qid)), 10, what="the milter_envelope lines")
        self.assertEqual([(x["milter"], x["action"], x["address"], x["result"]) for x in lines],
                         [("first", "chg_from", "bounces@sender.test", "applied"),
                          ("first", "add_rcpt", "dave@example.test", "applied"),
                          ("second", "del_rcpt", "dave@example.test", "applied")])


VIEW_RULES = """header SUBJ_VIEW Subject =~ /view test/
score SUBJ_VIEW 6
"""


def with_exe(subject):
    """A message with a text part and an .exe attachment `[attachments]` strips."""
    return (f"From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time()}.view@sender.test>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=\"BOUNDARY\"\r\n\r\n"
            "--BOUNDARY\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            "--BOUNDARY\r\nContent-Type: application/octet-stream; name=\"tool.exe\"\r\n"
            "Content-Disposition: attachment; filename=\"tool.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            "TVqQAG5vdCByZWFsbHk=\r\n--BOUNDARY--\r\n")


@unittest.skipUnless(have_pymilter(), "python3-milter (pymilter) is not installed")
class MilterSeesMoat(SinkTestCase):
    """Two milters, a then b, behind Moat's own filters that change the message ([rules]
    subject_prefix and X-Spam-* fields, [attachments] action = "strip") and relay.rewrite:
    each milter is sent the message as Moat will deliver it so far."""

    def setUp(self):
        super().setUp()
        d = tempfile.mkdtemp(prefix="moat-milter-")
        self.addCleanup(shutil.rmtree, d, True)
        self.record = os.path.join(d, "record.jsonl")
        port = free_port()
        start_peer(self, f"inet:{port}@127.0.0.1", "a", self.record)
        sock = os.path.join(d, "b.sock")
        start_peer(self, "unix:" + sock, "b", self.record)
        extra = ('\n[rules]\nfiles = ["view.cf"]\ntag = 5\nquarantine = 10\nreject = 15\nsubject_prefix = "[SPAM]"\n'
                 '\n[attachments]\nblock_extensions = ["exe"]\naction = "strip"\n'
                 + milter_block(f"inet:127.0.0.1:{port}", "first") + milter_block("unix:" + sock, "second"))
        self.moat = owned_moat(self, routes=[(["example.test", "remote.test"], f"smtp:127.0.0.1:{self.sink.port}")],
                               relay_extra='rewrite = "rewrite"\n', extra=extra, start=False)
        with open(os.path.join(self.moat.dir, "view.cf"), "w") as f:
            f.write(VIEW_RULES)
        with open(os.path.join(self.moat.dir, "rewrite"), "w") as f:
            f.write("bounces@corp.internal  bounces@example.test  outbound-only\n")
        self.moat.start()

    def seen_by(self, tag, subject):
        return wait_for(lambda: [r for r in records(self.record) if r["tag"] == tag and subject in r["subject"]], 10,
                        what="milter " + tag + "'s record")[-1]

    def send_raw(self, data, sender="alice@sender.test", rcpts=("bob@example.test",), options=()):
        code, reply, qid = send_data(self.moat, data, sender, rcpts, options)
        self.assertEqual(code, 250, reply)
        return qid

    def test_milters_see_the_prefixed_subject_stripped_part_and_moats_fields(self):
        qid = self.send_raw(with_exe("view test"))
        a, b = self.seen_by("a", "view test"), self.seen_by("b", "view test")
        names = [n for n, _ in a["headers"]]
        # Moat's own fields first, as delivered: Received, Authentication-Results, the rules'.
        self.assertEqual(names[:2], ["Received", "Authentication-Results"])
        self.assertIn("mx.moat.test;", a["headers"][1][1])
        self.assertIn("spf=", a["headers"][1][1])
        self.assertLess(names.index("X-Spam-Status"), names.index("From"))
        self.assertTrue(dict(a["headers"])["X-Spam-Status"].startswith("Yes, score=6.0"))
        # The message with Moat's edits: the Subject prefixed, the .exe replaced by a notice.
        self.assertEqual(a["subject"], "[SPAM] view test")
        self.assertIn("Moat removed the attachment", a["body"])
        self.assertNotIn("TVqQAG5vdCByZWFsbHk=", a["body"])
        # b after a: a's change of the Subject composed with Moat's prefix.
        self.assertEqual(b["subject"], "[SPAM] view test (seen by a)")
        self.assertIn("Moat removed the attachment", b["body"])
        # Delivered: a's inserts where it put them in the header it was sent, its Subject
        # (prefixed once), the part stripped; the Authentication-Results it was sent.
        data = self.sink.wait_messages(1)[0]["data"].decode("latin-1")
        head, body = data.split("\r\n\r\n", 1)
        names = [line.split(":", 1)[0] for line in head.split("\r\n") if line and line[0] not in " \t"]
        self.assertEqual(names.count("Subject"), 1)
        self.assertIn("\r\nSubject: [SPAM] view test (seen by a)\r\n", head)
        self.assertEqual(names[names.index("Subject") - 1], "X-Above-Subject")
        self.assertEqual(names[names.index("Subject") + 1], "X-Below-Subject")
        self.assertIn("Moat removed the attachment", body)
        ar = re.search(r"\r\nAuthentication-Results: (.*?)\r\n(?![ \t])", head, re.S).group(1)
        self.assertEqual(ar.replace("\r\n", "\n"), a["headers"][1][1])
        self.assertFalse(self.moat.find_logs(event="edit_dropped", queue_id=qid))

    def test_a_bare_sender_change_keeps_ret_and_envid(self):
        self.send_raw(message("bare sender test"), options=("RET=HDRS", "ENVID=client-envid"))
        a, b = self.seen_by("a", "bare sender test"), self.seen_by("b", "bare sender test")
        # The client's DSN parameters, to the first milter and, after a's change of the
        # sender without them, to the second: as the session queues the message.
        self.assertIn("RET=HDRS", a["args"])
        self.assertIn("ENVID=client-envid", a["args"])
        self.assertEqual(b["sender"], "<bounces@sender.test>")
        self.assertIn("RET=HDRS", b["args"])
        self.assertIn("ENVID=client-envid", b["args"])
        self.assertEqual(self.sink.wait_messages(1)[0]["from"], "bounces@sender.test")

    def test_outbound_sender_set_by_a_milter_is_rewritten(self):
        # 127.0.0.1 is in relay.networks and carol@remote.test outside relay.domains: outbound.
        qid = self.send_raw(message("internal sender test"), rcpts=("carol@remote.test",))
        self.assertEqual(self.seen_by("b", "internal sender test")["sender"], "<bounces@corp.internal>")
        got = self.sink.wait_messages(1)
        self.assertEqual(got[0]["from"], "bounces@example.test")
        acc = self.moat.wait_log(event="accept", queue_id=qid)
        self.assertEqual(acc["from"], "bounces@example.test")
        self.assertIn({"from": "bounces@corp.internal", "to": "bounces@example.test", "where": "mail_from"},
                      acc["rewritten"])


@unittest.skipUnless(have_pymilter(), "python3-milter (pymilter) is not installed")
class MilterAddedRecipients(unittest.TestCase):
    """Two milters, a then b, adding and deleting recipients ("a:addrcpt=X", "b:delrcpt=X" in
    the Subject) behind relay.rewrite and relay.aliases: an added recipient gets what a RCPT's
    address gets after relay control (Postfix's cleanup: canonical_maps, virtual_alias_maps)."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="moat-milter-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        cls.record = os.path.join(cls.dir, "record.jsonl")
        port = free_port()
        start_peer(cls, f"inet:{port}@127.0.0.1", "a", cls.record)
        sock = os.path.join(cls.dir, "b.sock")
        start_peer(cls, "unix:" + sock, "b", cls.record)
        # DSN offered: the sink's RCPT lines show each recipient's ORCPT.
        cls.sink = owned_sink(cls, extensions=Sink.DEFAULT_EXTENSIONS + ("DSN",))
        domains = ["example.test", "example.com", "corp.internal", "remote.test", "lab.internal"]
        cls.moat = owned_moat(cls, routes=[(domains, f"smtp:127.0.0.1:{cls.sink.port}")],
                              relay_domains=("example.test", "example.com"),
                              relay_extra='rewrite = "rewrite"\naliases = "aliases"\n',
                              extra=milter_block(f"inet:127.0.0.1:{port}", "first") + milter_block("unix:" + sock, "second"),
                              start=False)
        with open(os.path.join(cls.moat.dir, "rewrite"), "w") as f:
            # remote.test is not a relay domain: its entry is never applied inbound.
            f.write("@corp.internal  @example.com\n@lab.internal  @remote.test\n")
        with open(os.path.join(cls.moat.dir, "aliases"), "w") as f:
            f.write("sales@example.test: bob@example.test, carol@example.test\n"
                    "team@corp.internal: erin@example.test\n")
        cls.moat.start()

    def send(self, subject, rcpts=("bob@example.test",)):
        """The queue id of one message from alice@sender.test to `rcpts`."""
        data = (f"From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
                f"Message-ID: <{time.time()}.added@sender.test>\r\n\r\nHello.\r\n")
        code, reply, qid = send_data(self.moat, data, rcpts=rcpts)
        self.assertEqual(code, 250, reply)
        return qid

    def at_sink(self, subject, n):
        """{recipient: its RCPT line at the sink} once `n` recipients of the message are there."""
        def found():
            lines = {}
            for m in self.sink.messages:
                if f"Subject: {subject}".encode() not in m["data"]:
                    continue
                for r in m["rcpts"]:
                    lines[r] = next(c for c in m["session"]["commands"] if c.upper().startswith("RCPT")
                                    and f"<{r}>" in c)
            return lines if len(lines) >= n else None
        return wait_for(found, 30, what=f"{n} recipients at the sink")

    def added_lines(self, qid):
        return [x for x in wait_for(lambda: self.moat.find_logs(event="milter_envelope", queue_id=qid), 10,
                                    what="the milter_envelope lines")]

    def test_added_recipient_in_a_rewritten_domain_arrives_at_the_internal_address(self):
        subject = "rewritten add a:addrcpt=jsmith@example.com"
        qid = self.send(subject)
        got = self.at_sink(subject, 2)
        self.assertEqual(sorted(got), ["bob@example.test", "jsmith@corp.internal"])
        # DSNs name the address the milter gave.
        self.assertIn("ORCPT=rfc822;jsmith@example.com", got["jsmith@corp.internal"])
        acc = self.moat.wait_log(event="accept", queue_id=qid)
        self.assertEqual(acc["to"], ["bob@example.test", "jsmith@corp.internal"])
        self.assertEqual(acc["rewritten"],
                         [{"from": "jsmith@example.com", "to": "jsmith@corp.internal", "where": "milter_rcpt"}])
        line = self.added_lines(qid)[0]
        self.assertEqual((line["action"], line["address"], line["result"], line["rewritten_to"]),
                         ("add_rcpt", "jsmith@example.com", "applied", "jsmith@corp.internal"))
        self.assertNotIn("targets", line)
        # The second milter was sent it as the first gave it.
        rec = wait_for(lambda: [r for r in records(self.record) if r["tag"] == "b" and r["subject"] == subject], 10,
                       what="b's record")[-1]
        self.assertIn("<jsmith@example.com>", rec["rcpts"])

    def test_added_alias_expands_to_its_targets(self):
        # sales@ expands to bob (already a recipient: once) and carol; team@example.com is
        # rewritten first, and team@corp.internal is the alias (to erin).
        subject = "alias add a:addrcpt=sales@example.test a:addrcpt=team@example.com"
        qid = self.send(subject)
        got = self.at_sink(subject, 3)
        self.assertEqual(sorted(got), ["bob@example.test", "carol@example.test", "erin@example.test"])
        # The client's own recipient stands (the delivery names it as it is).
        self.assertIn("ORCPT=rfc822;bob@example.test", got["bob@example.test"])
        self.assertIn("ORCPT=rfc822;sales@example.test", got["carol@example.test"])
        self.assertIn("ORCPT=rfc822;team@example.com", got["erin@example.test"])
        acc = self.moat.wait_log(event="accept", queue_id=qid)
        self.assertEqual(acc["to"], ["bob@example.test", "carol@example.test", "erin@example.test"])
        self.assertEqual(acc["rewritten"],
                         [{"from": "team@example.com", "to": "team@corp.internal", "where": "milter_rcpt"}])
        sales, team = self.added_lines(qid)
        self.assertEqual((sales["address"], sales["result"], sales["targets"]),
                         ("sales@example.test", "applied", ["bob@example.test", "carol@example.test"]))
        self.assertNotIn("rewritten_to", sales)
        self.assertEqual((team["address"], team["rewritten_to"], team["targets"]),
                         ("team@example.com", "team@corp.internal", ["erin@example.test"]))

    def test_added_recipient_outside_the_relay_domains_is_untouched(self):
        # The rewrite map would make carol@lab.internal of it, were remote.test ours.
        subject = "outside add a:addrcpt=carol@remote.test"
        qid = self.send(subject)
        got = self.at_sink(subject, 2)
        self.assertEqual(sorted(got), ["bob@example.test", "carol@remote.test"])
        self.assertIn("ORCPT=rfc822;carol@remote.test", got["carol@remote.test"])
        acc = self.moat.wait_log(event="accept", queue_id=qid)
        self.assertEqual(acc["to"], ["bob@example.test", "carol@remote.test"])
        self.assertNotIn("rewritten", acc)
        line = self.added_lines(qid)[0]
        self.assertEqual((line["address"], line["result"]), ("carol@remote.test", "applied"))
        self.assertNotIn("rewritten_to", line)
        self.assertNotIn("targets", line)

    def test_a_later_milter_deletes_an_added_recipient_by_the_address_it_was_sent(self):
        subject = "chain delete a:addrcpt=jsmith@example.com b:delrcpt=jsmith@example.com"
        qid = self.send(subject)
        acc = self.moat.wait_log(event="accept", queue_id=qid)
        self.assertEqual(acc["to"], ["bob@example.test"])
        self.assertNotIn("rewritten", acc)  # the change went with the recipient
        self.assertEqual([(x["milter"], x["action"], x["result"]) for x in self.added_lines(qid)],
                         [("first", "add_rcpt", "applied"), ("second", "del_rcpt", "applied")])
        self.moat.wait_log(event="deliver", queue_id=qid)
        self.assertEqual(sorted(self.at_sink(subject, 1)), ["bob@example.test"])


class MilterConfig(unittest.TestCase):

    def test_bad_values_refused_at_file_line(self):
        text = """[[listener]]
address = "127.0.0.1:0"

[[milter]]
address = "inet:mail.example.test:8891"

[[milter]]
address = "unix:/run/m.sock"
default_action = "drop"
command_timeout = "soon"
"""
        path, r = check_config(self, text)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(f"{path}:5:", r.stderr)
        self.assertIn("host name", r.stderr)
        self.assertIn(f"{path}:9:", r.stderr)
        self.assertIn(f"{path}:10:", r.stderr)
        path, r = check_config(self, '[[listener]]\naddress = "127.0.0.1:0"\n\n[[milter]]\nname = "x"\n')
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(f"{path}:4:", r.stderr)
        path, r = check_config(self, '[[listener]]\naddress = "127.0.0.1:0"\n[[milter]]\naddress = "unix:m.sock"\n'
                               'outbound = false\ncontent_timeout = "10s"\n')
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    unittest.main()
