"""Delivery through the real daemon: byte-exact relay, retries when the next hop is down,
per-recipient failures with DSNs (never to <>), the delay DSN, Maildir delivery, the queue
commands, and one message's life followed by its queue_id in the log."""

import email
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import (MOAT_BIN, Moat, Sink, SinkTestCase, free_port, make_ca, make_cert,  # noqa: E402
                     make_signed_cert, wait_for)
from authzone import DnsServer  # noqa: E402

BODY = (b"From: Alice <alice@sender.test>\r\nTo: bob@example.test\r\nSubject: byte exact\r\n"
        b"Message-ID: <byte-exact-1@sender.test>\r\n\r\n"
        b"line one\r\n.leading dot\r\n..two dots\r\n\r\n  indented \t\r\n" + "caf\u00e9 8-bit\r\n".encode() +
        b"last line without trailing newline")


def strip_gateway_headers(data):
    """The message as the sender sent it: Moat prepends Received and Authentication-Results."""
    lines = data.split(b"\r\n")
    i = 0
    while i < len(lines) and (lines[i].startswith(b"Received:") or lines[i].startswith(b"Authentication-Results:")
                              or lines[i].startswith((b"\t", b" "))):
        i += 1
    return b"\r\n".join(lines[i:])


class DeliveryTest(SinkTestCase):
    def start(self, **kw):
        kw.setdefault("routes", [("example.test", f"smtp:127.0.0.1:{self.sink.port}"),
                                 ("sender.test", "maildir:mail")])
        self.moat = Moat(**kw)
        return self.moat

    def test_relay_is_byte_exact_and_logged_by_queue_id(self):
        m = self.start()
        qid = self.send_8bit(BODY)
        msgs = self.sink.wait_messages(1)
        self.assertEqual(msgs[0]["from"], "alice@sender.test")
        self.assertEqual(msgs[0]["rcpts"], ["bob@example.test"])
        got = msgs[0]["data"]
        # smtplib adds the final CRLF the message lacked; everything else is untouched
        self.assertEqual(strip_gateway_headers(got), BODY + b"\r\n")
        self.assertTrue(got.startswith(b"Received: from client.test"))
        self.assertIn(b"Authentication-Results: mx.moat.test", got)
        self.assertIn(("id " + qid).encode(), got)
        # the message's life, followed by its queue_id alone
        deliver = m.wait_log(event="deliver", queue_id=qid)
        life = m.find_logs(queue_id=qid)
        events = [l["event"] for l in life]
        # filter results first (one line per filter), then accept, then delivery
        first_accept = events.index("accept")
        self.assertTrue(first_accept > 0 and set(events[:first_accept]) == {"filter"}, events)
        self.assertGreater(events.index("deliver"), first_accept)
        self.assertIn("mime", [l["filter"] for l in life if l["event"] == "filter"])
        accept = life[first_accept]
        for field in ("ts", "level", "session", "client_ip", "helo", "from", "to", "size", "message_id"):
            self.assertIn(field, accept)
        self.assertEqual(accept["message_id"], "<byte-exact-1@sender.test>")
        for field in ("relay", "reply", "attempt", "delay_ms", "to"):
            self.assertIn(field, deliver)
        self.assertTrue(deliver["reply"].startswith("250"))
        # the session that carried it is in the connect/disconnect lines
        sess = accept["session"]
        self.assertTrue(m.find_logs(event="connect", session=sess))
        # a graceful stop ends the pooled connection with QUIT (RFC 5321 §4.1.1.10) and exits 0
        self.assertEqual(m.stop(), 0)
        self.assertEqual(self.sink.commands[-1], "QUIT")

    def test_tls_may_falls_back_to_plain_text_when_the_handshake_fails(self):
        # RFC 7435: with tls = "may" (the default) a next hop whose TLS is broken still gets
        # the mail, over a new plain-text connection, and the operator sees why.
        self.sink.stop()
        self.sink = Sink(break_tls=True)
        m = self.start()
        s = m.smtp()
        s.sendmail("alice@sender.test", ["bob@example.test"], b"Subject: fallback\r\n\r\nhi\r\n")
        s.quit()
        msgs = self.sink.wait_messages(1)
        self.assertFalse(msgs[0]["tls"])
        self.assertIn("STARTTLS", self.sink.commands)
        warn = m.wait_log(event="tls_fallback")
        self.assertIn("127.0.0.1", warn["relay"])
        self.assertTrue(warn["error"])
        self.assertTrue(m.wait_log(event="deliver", to="bob@example.test")["reply"].startswith("250"))

    def test_next_hop_down_then_up(self):
        port = free_port()
        self.sink.stop()
        m = self.start(routes=[("example.test", f"smtp:127.0.0.1:{port}")], retry='["1s"]')
        s = m.smtp()
        for i in range(5):
            s.sendmail("a@sender.test", [f"user{i}@example.test"], f"Subject: retry {i}\r\n\r\nbody {i}\r\n")
        s.quit()
        m.wait_log(event="defer", count=5)
        listing = json.loads(m.cli("queue", "list", "--json").stdout)
        self.assertEqual(len(listing["messages"]), 5)
        self.sink = Sink(port=port)
        self.sink.wait_messages(5, timeout=40)
        wait_for(lambda: not json.loads(m.cli("queue", "list", "--json").stdout)["messages"], 20,
                 what="an empty queue")
        self.assertEqual(sorted(r for msg in self.sink.messages for r in msg["rcpts"]),
                         [f"user{i}@example.test" for i in range(5)])

    def test_per_recipient_failure_makes_one_dsn(self):
        self.sink.rcpt_reply = lambda a: "550 5.1.1 no such user" if a.startswith("nobody") else "250 2.1.5 ok"
        m = self.start()
        s = m.smtp()
        s.sendmail("alice@sender.test", ["bob@example.test", "nobody@example.test"],
                   b"Subject: half\r\nMessage-ID: <half@sender.test>\r\n\r\nbody\r\n")
        s.quit()
        self.sink.wait_messages(1)
        self.assertEqual(self.sink.messages[0]["rcpts"], ["bob@example.test"])
        m.wait_log(event="bounce", to="nobody@example.test")
        files = wait_for(lambda: m.maildir_files("alice@sender.test"), 20, what="the DSN in the sender's maildir")
        with open(files[0], "rb") as f:
            dsn = email.message_from_bytes(f.read())
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        self.assertEqual(dsn.get_param("report-type"), "delivery-status")
        status = [p for p in dsn.walk() if p.get_content_type() == "message/delivery-status"]
        self.assertEqual(len(status), 1)
        text = status[0].as_string()
        self.assertIn("nobody@example.test", text)
        self.assertIn("5.1.1", text)
        self.assertIn("failed", text.lower())
        self.assertNotIn("bob@example.test", text)

    def test_recipients_are_split_per_transaction(self):
        m = self.start(queue_extra="max_recipients_per_transaction = 4")
        rcpts = [f"r{i}@example.test" for i in range(10)]
        s = m.smtp()
        s.sendmail("alice@sender.test", rcpts, b"Subject: many\r\n\r\nbody\r\n")
        s.quit()
        msgs = self.sink.wait_messages(3)
        time.sleep(0.5)  # nothing more may come
        self.assertEqual(sorted(len(x["rcpts"]) for x in self.sink.messages), [2, 4, 4])
        self.assertEqual(sorted(r for x in msgs for r in x["rcpts"]), sorted(rcpts))

    def test_too_many_recipients_go_again_at_once(self):
        # RFC 5321 §4.5.3.1.10: a server that takes 3 recipients per transaction answers the
        # rest 452 (or 552, which a client treats as temporary). They go again at once, in
        # new transactions, although the next retry is an hour away; none bounces.
        for reply in ("452 4.5.3 too many recipients", "552 5.5.3 too many recipients"):
            with self.subTest(reply=reply):
                self.sink.messages.clear()
                self.sink.max_rcpts = 3
                self.sink.too_many_reply = reply
                m = self.start(retry='["1h"]')
                rcpts = [f"r{i}@example.test" for i in range(10)]
                s = m.smtp()
                s.sendmail("alice@sender.test", rcpts, b"Subject: many\r\n\r\nbody\r\n")
                s.quit()
                wait_for(lambda: sum(len(x["rcpts"]) for x in self.sink.messages) >= 10, 20,
                         what="all ten recipients at the sink")
                got = sorted(r for x in self.sink.messages for r in x["rcpts"])
                self.assertEqual(got, sorted(rcpts))  # each once
                self.assertTrue(all(len(x["rcpts"]) <= 3 for x in self.sink.messages))
                m.wait_log(event="deliver", count=10)  # the sink keeps a message before its 250
                self.assertEqual(m.find_logs(event="bounce"), [])
                m.cleanup()
                self.moat = None

    def test_an_unreachable_next_hop_is_not_tried_for_every_message(self):
        # A next hop that answers every connection with 421: after the connections of the
        # first round fail, the other queued messages are deferred without connecting, until
        # the mark ends (the first retry wait, here an hour) or the admin flushes the queue.
        port = free_port()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listener.settimeout(0.2)
        accepted = []
        stop = threading.Event()

        def refuse():
            while not stop.is_set():
                try:
                    c, _ = listener.accept()
                except socket.timeout:
                    continue
                accepted.append(c)
                c.sendall(b"421 4.3.2 not now\r\n")
                c.close()
        t = threading.Thread(target=refuse, daemon=True)
        t.start()
        try:
            m = self.start(routes=[("example.test", f"smtp:127.0.0.1:{port}"), ("sender.test", "maildir:mail")],
                           retry='["1h"]', queue_extra="max_per_destination = 2")
            s = m.smtp()
            for i in range(30):
                s.sendmail("alice@sender.test", [f"u{i}@example.test"], b"Subject: %d\r\n\r\nbody\r\n" % i)
            s.quit()
            defers = m.wait_log(event="defer", count=30, timeout=30)
            self.assertLessEqual(len(accepted), 4)  # was one connection per message
            marks = m.find_logs(event="destination_unreachable")
            self.assertGreaterEqual(len(marks), 1)
            self.assertIn("421", marks[0]["error"])
            self.assertTrue(any("next hop unreachable" in d["reply"] for d in defers))
        finally:
            stop.set()
            t.join(5)
            listener.close()
        # The next hop is back; the admin flushes: the mark goes and everything is delivered.
        sink = Sink(port=port)
        self.addCleanup(sink.stop)
        m.cli("queue", "flush")
        sink.wait_messages(30)

    def test_no_dsn_to_the_null_sender(self):
        self.sink.rcpt_reply = lambda a: "550 5.1.1 no such user"
        m = self.start()
        s = m.smtp()
        s.ehlo()
        s.mail("<>")
        s.rcpt("nobody@example.test")
        code, reply = s.data(b"Subject: bounce of a bounce\r\n\r\nbody\r\n")
        s.quit()
        self.assertEqual(code, 250)
        qid = reply.decode().rsplit(" ", 1)[-1]
        m.wait_log(event="bounce", queue_id=qid)
        m.wait_log(event="dsn_dropped", queue_id=qid)
        self.assertEqual(m.find_logs(event="dsn"), [])

    def test_delay_dsn_once(self):
        port = free_port()
        self.sink.stop()
        m = self.start(routes=[("example.test", f"smtp:127.0.0.1:{port}"), ("sender.test", "maildir:mail")],
                       retry='["1s"]', delay_warning="2s")
        s = m.smtp()
        s.sendmail("alice@sender.test", ["late@example.test"], b"Subject: slow\r\n\r\nbody\r\n")
        s.quit()
        files = wait_for(lambda: m.maildir_files("alice@sender.test"), 30, what="a delay DSN")
        with open(files[0], "rb") as f:
            dsn = email.message_from_bytes(f.read())
        self.assertIn("delayed", dsn.as_string().lower())
        time.sleep(3)  # more retries happen; no second warning
        self.assertEqual(len(m.maildir_files("alice@sender.test")), 1)
        self.assertEqual(len(m.find_logs(event="dsn")), 1)
        self.sink = Sink(port=port)
        self.sink.wait_messages(1, timeout=30)

    def test_expiry_bounces(self):
        port = free_port()
        self.sink.stop()
        m = self.start(routes=[("example.test", f"smtp:127.0.0.1:{port}"), ("sender.test", "maildir:mail")],
                       retry='["1s"]', max_lifetime="2s")
        s = m.smtp()
        s.sendmail("alice@sender.test", ["gone@example.test"], b"Subject: expire\r\n\r\nbody\r\n")
        s.quit()
        m.wait_log(event="expire", timeout=30)
        files = wait_for(lambda: m.maildir_files("alice@sender.test"), 20, what="the expiry DSN")
        with open(files[0], "rb") as f:
            self.assertIn(b"4.4.7", f.read())

    def test_maildir_delivery_and_queue_commands(self):
        m = self.start(routes=[("example.test", "maildir:mail")])
        s = m.smtp()
        s.sendmail("a@sender.test", ["User@Example.test"], b"Subject: to maildir\r\n\r\nhello\r\n")
        s.quit()
        files = wait_for(lambda: m.maildir_files("user@example.test"), 20, what="a maildir file")
        with open(files[0], "rb") as f:
            content = f.read()
        self.assertTrue(content.startswith(b"Return-Path: <a@sender.test>\nDelivered-To: User@Example.test\n"))
        self.assertIn(b"\nSubject: to maildir\n\nhello\n", content)
        self.assertNotIn(b"\r\n", content)
        out = m.cli("queue", "list").stdout
        self.assertIn("Queue is empty", out)
        # A mistake elsewhere in the config (an admin halfway through an edit) does not keep
        # the queue from being looked at: only the control socket is needed.
        with open(m.config_path) as f:
            text = f.read()
        broken = os.path.join(m.dir, "broken.toml")
        with open(broken, "w") as f:
            f.write(text + "\n[limitz]\nmax_recipients = 5\n")
        r = subprocess.run([MOAT_BIN, "queue", "-c", broken, "list"], capture_output=True, text=True, timeout=30)
        self.assertEqual((r.returncode, r.stdout), (0, "Queue is empty\n"), r.stderr)
        self.assertIn("broken.toml:", r.stderr)
        self.assertIn("limitz: unknown section", r.stderr)
        self.assertIn("its control socket", r.stderr)
        r = m.cli("queue", "show", "NOSUCHID", check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no such message", r.stderr)
        r = m.cli("queue", "bogus", check=False)
        self.assertEqual(r.returncode, 2)

    def test_hold_release_delete(self):
        port = free_port()
        self.sink.stop()
        m = self.start(routes=[("example.test", f"smtp:127.0.0.1:{port}")], retry='["1h"]')
        s = m.smtp()
        ids = []
        for i in range(2):
            s.ehlo()
            s.mail("a@sender.test")
            s.rcpt(f"h{i}@example.test")
            ids.append(s.data(b"Subject: hold\r\n\r\nbody\r\n")[1].decode().rsplit(" ", 1)[-1])
        s.quit()
        m.wait_log(event="defer", count=2)
        self.assertEqual(m.cli("queue", "hold", ids[0]).stdout, f"{ids[0]}: held\n")
        listing = json.loads(m.cli("queue", "list", "--json", "--all").stdout)["messages"]
        self.assertEqual({x["id"]: x["area"] for x in listing}, {ids[0]: "hold", ids[1]: "active"})
        table = m.cli("queue", "list", "--all").stdout
        self.assertIn(ids[0], table)
        self.assertIn("h1@example.test", table)
        # show: text for people, JSON with --json.
        text = m.cli("queue", "show", ids[1]).stdout
        self.assertIn(f"Queue ID:   {ids[1]}\nState:      active\n", text)
        self.assertIn("From:       <a@sender.test>\n", text)
        self.assertRegex(text, r"Recipients:\n  <h1@example.test>  pending, 1 attempt, smtp:127.0.0.1:\d+\n      451 ")
        self.assertIn("Headers added:\n  Received: from client.test (unknown [127.0.0.1])\n    by mx.moat.test", text)
        shown = json.loads(m.cli("queue", "show", ids[1], "--json").stdout)
        self.assertEqual([r["address"] for r in shown["recipients"]], ["h1@example.test"])
        self.assertEqual(json.loads(m.cli("queue", "delete", ids[1], "--json").stdout), {"ok": True, "id": ids[1]})
        # "ok" comes once the files are gone, not when their removal is queued.
        self.assertEqual([a for a in ("queue", "hold", "data") if os.path.exists(os.path.join(m.dir, "spool", a, ids[1]))], [])
        self.sink = Sink(port=port)
        self.assertEqual(m.cli("queue", "release", ids[0]).stdout, f"{ids[0]}: released, to be tried now\n")
        msgs = self.sink.wait_messages(1, timeout=20)
        self.assertEqual(msgs[0]["rcpts"], ["h0@example.test"])
        time.sleep(0.5)
        self.assertEqual(len(self.sink.messages), 1)
        self.assertTrue(m.find_logs(event="delete", queue_id=ids[1]))

    def test_swaks_default_style(self):
        m = self.start(routes=[("example.test", "maildir:mail")])
        r = subprocess.run(["swaks", "--server", f"127.0.0.1:{m.port}", "--to", "user@example.test",
                            "--from", "someone@sender.test", "--helo", "swaks.test"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("250 2.0.0 Ok: queued as", r.stdout)
        wait_for(lambda: m.maildir_files("user@example.test"), 20, what="swaks' message in the maildir")

    def test_graceful_stop_keeps_the_dsn_being_written(self):
        # A 5xx arrives while SIGTERM is pending: the original is retired at once and its DSN
        # is still on its way into the spool (a big one through the pool). The stop must wait
        # for it, log it, and the next start must deliver it.
        def slow_refusal(addr):
            time.sleep(2)
            return "550 5.1.1 no such user"
        self.sink.rcpt_reply = slow_refusal
        for size, label in ((1600, "over 1 MB"), (5, "small")):
            with self.subTest(label):
                m = self.start()
                s = m.smtp()
                s.sendmail("alice@sender.test", ["nobody@example.test"],
                           b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * size)
                s.quit()
                wait_for(lambda: any(c.startswith("RCPT") for c in self.sink.commands), 20, what="the RCPT")
                self.sink.commands.clear()
                m.signal(signal.SIGTERM)
                self.assertEqual(m.proc.wait(60), 0)
                self.assertTrue(m.find_logs(event="bounce", to="nobody@example.test"))
                dsn = m.find_logs(event="dsn")
                self.assertEqual(len(dsn), 1, [l["event"] for l in m.logs()])
                self.assertEqual(m.maildir_files("alice@sender.test"), [])
                m.start()
                wait_for(lambda: m.maildir_files("alice@sender.test"), 20, what="the DSN after the restart")
                m.cleanup()
                self.moat = None


    def test_kill9_as_a_bounced_original_goes_keeps_its_dsn(self):
        # The original is removed only once its DSN is durable: kill -9 the moment the
        # original's file leaves queue/, and the restart still delivers the DSN. (A big DSN
        # takes long to write, which made this window wide when the removal did not wait.)
        self.sink.rcpt_reply = lambda a: "550 5.1.1 no such user"
        m = self.start()
        s = m.smtp()
        s.ehlo()
        s.mail("alice@sender.test")
        s.rcpt("nobody@example.test")
        code, reply = s.data(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 4000)
        s.quit()
        self.assertEqual(code, 250)
        qid = reply.decode().rsplit(" ", 1)[-1]
        queue_dir = os.path.join(m.dir, "spool", "queue")
        wait_for(lambda: qid in os.listdir(queue_dir), 10, interval=0.001, what="the original in queue/")
        wait_for(lambda: qid not in os.listdir(queue_dir), 30, interval=0.001, what="the original to leave queue/")
        m.kill9()
        self.assertTrue(m.find_logs(event="bounce", queue_id=qid))
        m.start()
        wait_for(lambda: m.maildir_files("alice@sender.test"), 20, what="the DSN after the restart")

    def dsn_status(self, raw):
        """The message/delivery-status part of a DSN, as text."""
        dsn = email.message_from_bytes(raw)
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        parts = [p for p in dsn.walk() if p.get_content_type() == "message/delivery-status"]
        self.assertEqual(len(parts), 1)
        return dsn, parts[0].as_string()

    def test_dsn_for_a_remote_refusal(self):
        # RFC 3464 §2.3.5-6: Remote-MTA is the answering host's name, no port; "smtp;" for its
        # reply. RFC 5322 §3.6.7: Received ends in a date. The DSN quotes an 8-bit original and
        # goes to a UTF-8 sender: BODY=8BITMIME and SMTPUTF8 on its MAIL FROM.
        self.sink.rcpt_reply = lambda a: "550 5.1.1 <%s>: no such user" % a
        back = Sink()
        try:
            m = self.start(routes=[("example.test", f"smtp:127.0.0.1:{self.sink.port}"),
                                   ("sender.test", f"smtp:127.0.0.1:{back.port}")])
            s = m.smtp()
            s.ehlo()
            s.mail("j\u00f6rg@sender.test", ["BODY=8BITMIME", "SMTPUTF8"])
            s.rcpt("nobody@example.test")
            code, _ = s.data("Subject: caf\u00e9\r\n\r\ncaf\u00e9 8-bit body\r\n".encode())
            s.quit()
            self.assertEqual(code, 250)
            msg = back.wait_messages(1)[0]
            mail = [c for c in back.commands if c.startswith("MAIL")][0]
            self.assertIn("BODY=8BITMIME", mail)
            self.assertIn("SMTPUTF8", mail)
            raw = msg["data"]
            received = raw.split(b"\r\n", 1)[0].decode()
            self.assertTrue(received.startswith("Received: by mx.moat.test (Moat) id "), received)
            self.assertRegex(received, r"; \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} \+0000$")
            # An SMTPUTF8 original gets a global DSN (RFC 6533): its report is
            # message/global-delivery-status (test_global_dsn.py reads the rest of it).
            self.assertIn(b"\r\nContent-Type: message/global-delivery-status\r\n", raw)
            self.assertIn(b"\r\nRemote-MTA: dns; 127.0.0.1\r\n", raw)
            self.assertIn(b"\r\nDiagnostic-Code: smtp; 550 5.1.1", raw)
        finally:
            back.stop()

    def test_delay_dsn_for_a_refused_connection(self):
        # Nobody answered: no Remote-MTA, our own text is not "smtp;", and a delay DSN says
        # until when it is retried (arrival + max_lifetime).
        port = free_port()
        self.sink.stop()
        m = self.start(routes=[("example.test", f"smtp:127.0.0.1:{port}"), ("sender.test", "maildir:mail")],
                       retry='["1s"]', delay_warning="1s", max_lifetime="2d")
        s = m.smtp()
        s.sendmail("alice@sender.test", ["late@example.test"], b"Subject: slow\r\n\r\nbody\r\n")
        s.quit()
        files = wait_for(lambda: m.maildir_files("alice@sender.test"), 30, what="a delay DSN")
        with open(files[0], "rb") as f:
            _, status = self.dsn_status(f.read())
        self.assertIn("Action: delayed", status)
        self.assertNotIn("Remote-MTA", status)
        self.assertIn("Diagnostic-Code: X-Moat; 451 4.4.1", status)
        self.assertIn("Will-Retry-Until: ", status)
        self.sink = Sink(port=port)

    def test_admin_bounce_dsn_is_local_text(self):
        port = free_port()
        self.sink.stop()
        m = self.start(routes=[("example.test", f"smtp:127.0.0.1:{port}"), ("sender.test", "maildir:mail")],
                       retry='["1h"]')
        s = m.smtp()
        s.ehlo()
        s.mail("alice@sender.test")
        s.rcpt("gone@example.test")
        qid = s.data(b"Subject: b\r\n\r\nbody\r\n")[1].decode().rsplit(" ", 1)[-1]
        s.quit()
        m.wait_log(event="defer", queue_id=qid)
        m.cli("queue", "bounce", qid)
        files = wait_for(lambda: m.maildir_files("alice@sender.test"), 20, what="the DSN")
        with open(files[0], "rb") as f:
            _, status = self.dsn_status(f.read())
        self.assertIn("Diagnostic-Code: X-Moat; 5.0.0 returned to sender", status)
        self.assertNotIn("Remote-MTA", status)
        self.sink = Sink(port=port)

    def test_mx_routing_failures_and_equal_preference_order(self):
        # RFC 5321 §5.1: a domain without MX and without address, MX hosts without address,
        # and an MX naming an address literal bounce at once (5.4.4); a temporary DNS failure
        # is retried. Hosts of one preference are tried in random order.
        zone = {"noaddr.test": [{"TXT": "no mail here"}],
                "mxnoaddr.test": [{"MX": [10, "h.mxnoaddr.test"]}],
                "h.mxnoaddr.test": [{"TXT": "no address"}],
                "mxlit.test": [{"MX": [10, "127.0.0.1"]}],
                "temp.test": [{"MX": [10, "h.temp.test"]}],
                "h.temp.test": ["SERVFAIL"]}
        n = 12
        for i in range(n):
            zone[f"eq{i}.test"] = [{"MX": [10, f"a.eq{i}.test"]}, {"MX": [10, f"b.eq{i}.test"]},
                                   {"MX": [10, f"c.eq{i}.test"]}]
        dns = DnsServer(zone)
        try:
            m = self.start(routes=[("sender.test", "maildir:mail"), ([], "mx")], retry='["1h"]',
                           extra=f'\n[dns]\nnameservers = ["{dns.nameserver}"]\ntimeout = "1s"\n')
            s = m.smtp()
            perm = ["u@noaddr.test", "u@mxnoaddr.test", "u@mxlit.test"] + [f"u@eq{i}.test" for i in range(n)]
            for rcpt in perm + ["u@temp.test"]:
                s.sendmail("alice@sender.test", [rcpt], b"Subject: t\r\n\r\nbody\r\n")
            s.quit()
            for rcpt in perm:
                line = m.wait_log(event="bounce", to=rcpt)
                self.assertTrue(line["reply"].startswith("550 5.4.4"), line)
            line = m.wait_log(event="defer", to="u@temp.test")
            self.assertTrue(line["reply"].startswith("451"), line)
            self.assertEqual(m.find_logs(event="bounce", to="u@temp.test"), [])
            self.assertFalse([c for c in dns.queries() if c.startswith("127.0.0.1 ")])
            orders = set()
            for i in range(n):
                hosts = [q.split(" ")[0] for q in dns.queries() if q.split(" ")[0].endswith(f".eq{i}.test")]
                orders.add("".join(dict.fromkeys(h.split(".")[0] for h in hosts)))
            self.assertGreater(len(orders), 1, orders)
        finally:
            dns.stop()

    def test_destinations_are_removed_when_unused(self):
        # A next hop with nothing waiting and no connection is forgotten (it would otherwise
        # stay, with its timer, for the life of the process), and comes back when needed.
        port = free_port()
        self.sink.stop()
        m = self.start(routes=[("example.test", f"smtp:127.0.0.1:{port}")], retry='["1s"]')
        s = m.smtp()
        s.sendmail("a@sender.test", ["x@example.test"], b"Subject: d\r\n\r\nbody\r\n")
        m.wait_log(event="defer")
        dest = m.wait_log(event="destination_removed")["destination"]
        self.assertIn(f"127.0.0.1:{port}", dest)
        self.sink = Sink(port=port)
        self.sink.wait_messages(1, timeout=30)
        # the pooled connection idles, says QUIT, and the destination goes again
        m.wait_log(event="destination_removed", count=2, timeout=30)
        s.sendmail("a@sender.test", ["y@example.test"], b"Subject: d2\r\n\r\nbody\r\n")
        s.quit()
        self.sink.wait_messages(2, timeout=30)


class OutboundTlsTest(unittest.TestCase):
    """tls = "verify" on a route: the next hop's certificate must chain to the system store
    or the route's ca_file and name the host (or the address) of the route; otherwise the
    message is deferred, never sent in plain text or to an unverified peer."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="moat-tls-out-")
        cls.ca = make_ca(cls.tmp)
        cls.good = make_signed_cert(cls.tmp, cls.ca, "good", "IP:127.0.0.1,DNS:localhost")
        cls.wrong_name = make_signed_cert(cls.tmp, cls.ca, "other", "DNS:other.test")
        cls.self_signed = make_cert(cls.tmp)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def relay(self, cert, tls, ca_file=True):
        sink = Sink(tls_cert=cert)
        self.addCleanup(sink.stop)
        route = f'\ntls = "{tls}"' + (f'\nca_file = "{self.ca[0]}"' if ca_file else "")
        m = Moat(routes=[("example.test", f"smtp:127.0.0.1:{sink.port}")], retry='["1h"]')
        self.addCleanup(m.cleanup)
        # The route's extra keys go into its own table: rewrite the config and restart.
        m.stop()
        with open(m.config_path) as f:
            text = f.read()
        with open(m.config_path, "w") as f:
            f.write(text.replace(f'to = ["smtp:127.0.0.1:{sink.port}"]',
                                 f'to = ["smtp:127.0.0.1:{sink.port}"]{route}'))
        m.start()
        s = m.smtp()
        s.sendmail("a@sender.test", ["u@example.test"], b"Subject: tls\r\n\r\nbody\r\n")
        s.quit()
        return m, sink

    def test_verified_delivery(self):
        m, sink = self.relay(self.good, "verify")
        msgs = sink.wait_messages(1)
        self.assertTrue(msgs[0]["tls"])
        ev = m.wait_log(event="deliver")
        self.assertTrue(ev["tls"].endswith(" verified"), ev["tls"])

    def test_untrusted_certificate_is_deferred_not_sent(self):
        m, sink = self.relay(self.self_signed, "verify")
        ev = m.wait_log(event="defer")
        self.assertIn("certificate verify failed", ev["reply"])
        self.assertEqual(sink.messages, [])

    def test_wrong_name_is_deferred_not_sent(self):
        m, sink = self.relay(self.wrong_name, "verify")
        ev = m.wait_log(event="defer")
        self.assertIn("certificate verify failed", ev["reply"])
        self.assertEqual(sink.messages, [])

    def test_require_encrypts_without_verifying(self):
        m, sink = self.relay(self.self_signed, "require", ca_file=False)
        msgs = sink.wait_messages(1)
        self.assertTrue(msgs[0]["tls"])
        ev = m.wait_log(event="deliver")
        self.assertFalse(ev["tls"].endswith("verified"), ev["tls"])

    def test_bad_ca_file_and_ca_file_without_verify_are_refused_with_file_and_line(self):
        d = tempfile.mkdtemp(prefix="moat-tls-cfg-", dir=self.tmp)
        bad = os.path.join(d, "bad.pem")
        with open(bad, "w") as f:
            f.write("not a certificate\n")
        base = '[server]\nhostname = "mx.moat.test"\nspool_dir = "spool"\n\n[[listener]]\naddress = "127.0.0.1:0"\n\n'
        cases = [(f'[[route]]\nto = ["smtp:127.0.0.1:25"]\ntls = "verify"\nca_file = "{bad}"\n', 9),
                 (f'[[route]]\nto = ["smtp:127.0.0.1:25"]\ntls = "may"\nca_file = "{self.ca[0]}"\n', 11)]
        for i, (route, line) in enumerate(cases):
            path = os.path.join(d, f"moat{i}.toml")
            with open(path, "w") as f:
                f.write(base + route)
            r = subprocess.run([MOAT_BIN, "check", "-c", path], capture_output=True, text=True, timeout=60)
            self.assertNotEqual(r.returncode, 0, r.stdout)
            self.assertIn(f"{path}:{line}", r.stderr + r.stdout)


if __name__ == "__main__":
    unittest.main()
