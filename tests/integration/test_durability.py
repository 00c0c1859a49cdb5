"""A crash never loses a message that got 250: 1,000 messages sent over 50 concurrent
sessions, the daemon killed with SIGKILL in the middle, restarted on the same spool, and
every message whose DATA got 250 must reach the sink. Duplicates (delivered, but the
delivery not yet recorded when the kill came) are counted and reported, never losses."""

import collections
import os
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Moat, Sink, wait_for  # noqa: E402

TOTAL = 1000
SESSIONS = 50


class DurabilityTest(unittest.TestCase):
    def test_kill9_loses_nothing_that_got_250(self):
        sink = Sink()
        self.addCleanup(sink.stop)
        moat = Moat(routes=[("example.test", f"smtp:127.0.0.1:{sink.port}")], retry='["1s"]',
                    extra="\n[limits]\nmax_connections_per_ip = 1000\n")
        self.addCleanup(moat.cleanup)
        acked = set()
        lock = threading.Lock()
        counter = iter(range(TOTAL))
        counter_lock = threading.Lock()
        stop = threading.Event()
        port = moat.port

        def worker():
            import smtplib
            while not stop.is_set():
                with counter_lock:
                    n = next(counter, None)
                if n is None:
                    return
                tag = f"msg-{n:05d}"
                try:
                    s = smtplib.SMTP("127.0.0.1", port, timeout=20)
                    s.ehlo("load.test")
                    s.mail("load@sender.test")
                    s.rcpt(f"user{n % 7}@example.test")
                    code, _ = s.data(f"Subject: {tag}\r\nX-Tag: {tag}\r\n\r\n{tag}\r\n".encode())
                    if code == 250:
                        with lock:
                            acked.add(tag)
                    s.quit()
                except (OSError, smtplib.SMTPException):
                    pass  # the daemon was killed mid-session: this message was never acknowledged

        threads = [threading.Thread(target=worker) for _ in range(SESSIONS)]
        for t in threads:
            t.start()
        wait_for(lambda: len(acked) >= TOTAL // 3, 120, what="a third of the messages acknowledged")
        moat.kill9()
        stop.set()
        for t in threads:
            t.join(60)
        acked_at_kill = set(acked)
        sent_after = TOTAL - len(acked_at_kill)

        moat.start()
        report = moat.wait_log(event="spool_recovered", since_start=True)

        def all_delivered():
            got = {m["data"].split(b"X-Tag: ", 1)[1].split(b"\r\n", 1)[0].decode() for m in sink.messages}
            return acked_at_kill <= got
        try:
            wait_for(all_delivered, 60, interval=0.5, what="every acknowledged message at the sink")
        except AssertionError:
            got = {m["data"].split(b"X-Tag: ", 1)[1].split(b"\r\n", 1)[0].decode() for m in sink.messages}
            print("missing:", sorted(acked_at_kill - got)[:20], "log dir:", moat.dir)
            raise
        counts = collections.Counter(m["data"].split(b"X-Tag: ", 1)[1].split(b"\r\n", 1)[0].decode()
                                     for m in sink.messages)
        duplicates = sum(c - 1 for c in counts.values() if c > 1)
        lost = acked_at_kill - set(counts)
        print(f"\ndurability: acknowledged before kill={len(acked_at_kill)}, delivered distinct={len(counts)}, "
              f"duplicates={duplicates}, lost={len(lost)}, recovered at restart={report.get('messages')}, "
              f"partial files removed={report.get('removed_partial')}, corrupt={report.get('moved_corrupt')}, "
              f"not sent after kill={sent_after}")
        self.assertEqual(lost, set())


if __name__ == "__main__":
    unittest.main()
