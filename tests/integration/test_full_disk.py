"""A full disk never loses a message that got 250, on a file system that really fills: the
spool is on a small tmpfs the test mounts (root only; skipped otherwise) and fills with a
file of its own. Covered: the free-space floor at MAIL (452 4.3.1), ENOSPC while a large
message streams to the spool and while a held one commits (452 4.3.1 after the data, the
session goes on, nothing is left behind), kill -9 while the disk is full, and a DSN that
cannot be written (the recipient it reports on is deferred, not settled without its
report)."""

import json
import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Moat, RawClient, Sink, free_port, http_get, scrape, wait_for  # noqa: E402

KB = 1 << 10
MB = 1 << 20
DISK_SIZE = 24 * MB
CACHE_S = 1.2  # the daemon reads the free space at most once a second


def message(tag, size):
    head = f"From: <alice@sender.test>\r\nTo: <bob@example.test>\r\nSubject: {tag}\r\nX-Tag: {tag}\r\n\r\n"
    line = (tag + " " + "x" * 70)[:70] + "\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return (head + body).encode()


def tag_of(data):
    return data.split(b"X-Tag: ", 1)[1].split(b"\r\n", 1)[0].decode()


class FullDiskTest(unittest.TestCase):
    def setUp(self):
        if os.geteuid() != 0:
            self.skipTest("mounting a small tmpfs for the spool needs root")
        self.dir = tempfile.mkdtemp(prefix="moat-it-full-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.disk = os.path.join(self.dir, "disk")
        os.mkdir(self.disk)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "moat-test", self.disk],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            self.skipTest(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        self.addCleanup(subprocess.run, ["umount", "-l", self.disk], capture_output=True, timeout=30)
        os.mkdir(os.path.join(self.disk, "spool"))
        os.symlink(os.path.join("disk", "spool"), os.path.join(self.dir, "spool"))
        self.filler = os.path.join(self.disk, "filler")

    def free(self):
        st = os.statvfs(self.disk)
        return st.f_bavail * st.f_frsize

    def fill(self, leave):
        """Grows the filler file until `leave` bytes are free on the spool's file system."""
        with open(self.filler, "ab") as f:
            while self.free() > leave:
                f.write(b"\0" * min(MB, self.free() - leave))
                f.flush()
        time.sleep(CACHE_S)

    def unfill(self):
        os.remove(self.filler)
        time.sleep(CACHE_S)

    def start(self, routes, **kw):
        m = Moat(workdir=self.dir, routes=routes, **kw)
        self.addCleanup(m.stop)  # before the unmount and the removal (cleanups run last first)
        return m

    def send(self, m, tag, size):
        """Sends one message; returns the code after the data (or at MAIL when refused there)."""
        with m.smtp() as s:
            try:
                s.sendmail("alice@sender.test", ["bob@example.test"], message(tag, size))
                return 250
            except smtplib.SMTPDataError as e:
                return e.smtp_code
            except smtplib.SMTPSenderRefused as e:
                return e.smtp_code

    def test_full_disk_refuses_with_452_and_loses_nothing_that_got_250(self):
        hop = free_port()  # nothing listens there yet: every message stays queued
        mport = free_port()
        m = self.start([("example.test", f"smtp:127.0.0.1:{hop}")], retry='["1h"]',
                       server_extra=f'metrics_listen = "127.0.0.1:{mport}"')
        self.assertEqual(http_get(mport, "/healthz"), (200, "ok\n"))
        acked, refused = set(), set()
        for i in range(5):
            tag = f"before-{i}"
            self.assertEqual(self.send(m, tag, 100 * KB), 250)
            acked.add(tag)
        m.wait_log(event="defer", count=5)

        # ENOSPC while a 4 MB message streams to the spool: 452 after the data, the session
        # goes on, and the half-written file is gone.
        self.fill(leave=3 * MB)
        c = RawClient(m.port)
        c.read_reply()
        for cmd in ("EHLO client.test", "MAIL FROM:<alice@sender.test>", "RCPT TO:<bob@example.test>", "DATA"):
            c.send(cmd + "\r\n")
            c.read_reply()
        c.send(message("streamed", 4 * MB) + b"\r\n.\r\n")
        reply = c.read_reply()
        self.assertEqual(reply[-1][0], 452, reply)
        self.assertTrue(reply[-1][1].startswith("4.3.1"), reply)
        refused.add("streamed")
        c.send("NOOP\r\n")
        self.assertEqual(c.read_reply()[-1][0], 250)
        wait_for(lambda: self.free() > 2.5 * MB, 10, what="the half-written file removed")
        c.send("QUIT\r\n")
        c.close()
        m.wait_log(event="spool_error")
        rej = m.wait_log(event="reject", stage="data", reason="spool full")
        self.assertTrue(rej["reply"].startswith("452 4.3.1"), rej)
        got = scrape(mport)
        self.assertEqual(got['moat_rejects_total{stage="data",class="4xx"}'], 1, got)
        self.assertEqual(got["moat_messages_tempfailed_total"], 1, got)

        # ENOSPC as held messages commit: two of 900 KB where one fits. Both pass the floor
        # at MAIL; the one that commits second gets 452.
        self.fill(leave=int(1.5 * MB))
        codes = {}

        def one(tag):
            codes[tag] = self.send(m, tag, 900 * KB)
        threads = [threading.Thread(target=one, args=(f"held-{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(sorted(codes.values()), [250, 452], codes)
        for tag, code in codes.items():
            (acked if code == 250 else refused).add(tag)

        # Under the floor (1 MB here): 452 4.3.1 at MAIL, and the session goes on.
        self.fill(leave=512 * KB)
        c = RawClient(m.port)
        c.read_reply()
        c.send("EHLO client.test\r\n")
        c.read_reply()
        c.send("MAIL FROM:<alice@sender.test>\r\n")
        reply = c.read_reply()
        self.assertEqual(reply[-1][0], 452, reply)
        self.assertTrue(reply[-1][1].startswith("4.3.1"), reply)
        c.send("NOOP\r\n")
        self.assertEqual(c.read_reply()[-1][0], 250)
        c.close()
        m.wait_log(event="reject", reason="low disk space")
        # What an operator sees meanwhile: the gauge under the floor, /healthz 503, the count.
        got = scrape(mport)
        self.assertLess(got["moat_spool_free_bytes"], got["moat_spool_min_free_bytes"], got)
        self.assertEqual(got["moat_spool_min_free_bytes"], MB, got)  # the harness's 1M
        self.assertLess(abs(got["moat_spool_free_bytes"] - self.free()), 256 * KB, got)
        self.assertEqual(got['moat_rejects_total{stage="mail",class="4xx"}'], 1, got)
        status, body = http_get(mport, "/healthz")
        self.assertEqual(status, 503, body)
        self.assertIn("min_free_disk", body)

        # kill -9 while the disk is full, then room again and the next hop up.
        m.kill9()
        self.unfill()
        sink = Sink(port=hop)
        self.addCleanup(sink.stop)
        m.start()
        report = m.wait_log(event="spool_recovered", since_start=True)
        self.assertEqual(report.get("moved_corrupt", 0), 0, report)
        m.cli("queue", "flush")
        wait_for(lambda: acked <= {tag_of(x["data"]) for x in sink.messages}, 60, interval=0.2,
                 what=f"every acknowledged message at the sink ({sorted(acked)})")
        time.sleep(0.5)  # nothing refused may follow
        delivered = [tag_of(x["data"]) for x in sink.messages]
        self.assertEqual(sorted(delivered), sorted(acked), "each acknowledged message once, nothing else")
        for x in sink.messages:
            tag = tag_of(x["data"])
            size = 900 * KB if tag.startswith("held") else 100 * KB
            self.assertTrue(x["data"].endswith(message(tag, size).split(b"\r\n\r\n", 1)[1]), tag)
        self.assertEqual(refused & set(delivered), set())

    def test_a_dsn_that_cannot_be_written_defers_its_recipient(self):
        sink = Sink()
        self.addCleanup(sink.stop)
        sink.rcpt_reply = lambda a: "451 4.3.0 try later"
        m = self.start([("example.test", f"smtp:127.0.0.1:{sink.port}"), ("sender.test", "maildir:mail")],
                       retry='["1s"]')
        with m.smtp() as s:
            s.sendmail("alice@sender.test", ["bob@example.test", "nobody@example.test"],
                       message("half", 4 * KB))
        m.wait_log(event="defer", to="nobody@example.test")

        # Full to the last block: bob is delivered, nobody refused for good, and the report
        # on nobody has nowhere to go.
        self.fill(leave=0)
        sink.rcpt_reply = lambda a: "550 5.1.1 no such user" if a.startswith("nobody") else "250 2.1.5 ok"
        sink.wait_messages(1)
        m.wait_log(event="bounce", to="nobody@example.test")
        m.wait_log(event="dsn_deferred", kind="failure")
        wait_for(lambda: [x for x in m.find_logs(event="defer", to="nobody@example.test")
                          if "notification not written" in x["reply"]], 30, what="nobody deferred for its report")
        self.assertEqual(m.maildir_files("alice@sender.test"), [])

        # Room again: the next attempt bounces nobody and the report reaches the sender.
        self.unfill()
        files = wait_for(lambda: m.maildir_files("alice@sender.test"), 30, what="the DSN in the sender's maildir")
        with open(files[0], "rb") as f:
            dsn = f.read()
        self.assertIn(b"nobody@example.test", dsn)
        self.assertIn(b"5.1.1", dsn)
        time.sleep(1.5)
        self.assertEqual([x["rcpts"] for x in sink.messages], [["bob@example.test"]], "bob delivered once")
        self.assertEqual(len(m.maildir_files("alice@sender.test")), 1, "one report")

    def test_an_admin_bounce_that_cannot_be_reported_keeps_the_message(self):
        hop = free_port()  # nothing listens there: the message stays queued
        m = self.start([("example.test", f"smtp:127.0.0.1:{hop}"), ("sender.test", "maildir:mail")],
                       retry='["1h"]')
        with m.smtp() as s:
            s.ehlo()
            s.mail("alice@sender.test")
            s.rcpt("gone@example.test")
            qid = s.data(message("admin", 4 * KB))[1].decode().rsplit(" ", 1)[-1]
        m.wait_log(event="defer", queue_id=qid)

        self.fill(leave=0)
        r = m.cli("queue", "bounce", qid, check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("DSN not written", r.stdout + r.stderr)
        shown = json.loads(m.cli("queue", "show", qid, "--json").stdout)
        self.assertEqual([x["status"] for x in shown["recipients"]], ["pending"], shown)

        self.unfill()
        m.cli("queue", "bounce", qid)
        files = wait_for(lambda: m.maildir_files("alice@sender.test"), 20, what="the DSN")
        with open(files[0], "rb") as f:
            self.assertIn(b"5.0.0 returned to sender", f.read())
        self.assertNotEqual(m.cli("queue", "show", qid, check=False).returncode, 0)


if __name__ == "__main__":
    unittest.main()
