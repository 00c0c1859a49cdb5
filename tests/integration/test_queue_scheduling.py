"""The scheduler against real next hops on loopback: a next hop that is alive but never
finishes a transaction must not take every delivery slot (queue.max_deliveries) from the
others, and the waits between attempts run on the monotonic clock, so a step of the wall
clock neither makes every deferred message due at once nor holds them back.

The wall clock is stepped for the daemon alone with a small LD_PRELOAD library the test
builds (it adds the seconds in a file to CLOCK_REALTIME); without a C compiler that case is
skipped. Every wait is bounded."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Moat, Sink, free_port, wait_for  # noqa: E402

SENDER = "alice@sender.test"

CLOCK_SHIFT_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
/* CLOCK_REALTIME plus the seconds written in the file $MOAT_TEST_CLOCK_SHIFT. */
static long shift(void) {
  const char* p = getenv("MOAT_TEST_CLOCK_SHIFT");
  FILE* f = p ? fopen(p, "r") : NULL;
  long s = 0;
  if (!f) return 0;
  if (fscanf(f, "%ld", &s) != 1) s = 0;
  fclose(f);
  return s;
}
int clock_gettime(clockid_t id, struct timespec* ts) {
  static int (*real)(clockid_t, struct timespec*);
  if (!real) real = (int (*)(clockid_t, struct timespec*))dlsym(RTLD_NEXT, "clock_gettime");
  int r = real(id, ts);
  if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) ts->tv_sec += shift();
  return r;
}
"""


def send(m, rcpts, subject="test"):
    s = m.smtp()
    for to in rcpts:
        s.sendmail(SENDER, [to], f"From: {SENDER}\r\nSubject: {subject}\r\n\r\nbody\r\n")
    s.quit()


class QueueSchedulingTest(unittest.TestCase):
    def test_a_slow_next_hop_does_not_take_every_delivery_slot(self):
        # A next hop that accepts connections but does not answer the end of the data (alive,
        # slow) had messages enough to fill queue.max_deliveries: those past
        # max_per_destination waited in its queue holding a slot each, and a message for any
        # other next hop waited for them all. Now it is delivered meanwhile.
        release = threading.Event()
        self.addCleanup(release.set)
        slow = Sink()
        self.addCleanup(slow.stop)
        slow.data_reply = lambda sender, rcpts, data: (release.wait(120), "250 2.0.0 queued")[1]
        fast = Sink()
        self.addCleanup(fast.stop)
        m = Moat(routes=[("slow.test", f"smtp:127.0.0.1:{slow.port}"),
                         ("fast.test", f"smtp:127.0.0.1:{fast.port}")],
                 relay_domains=("slow.test", "fast.test"),
                 queue_extra="max_deliveries = 4\nmax_per_destination = 1\n")
        self.addCleanup(m.cleanup)
        self.addCleanup(release.set)  # before the stop: the stop waits for the transaction
        send(m, [f"u{i}@slow.test" for i in range(12)])
        wait_for(lambda: slow.connections >= 1 and any(c.startswith("DATA") for c in slow.commands), 20,
                 what="the slow next hop to have a message")
        send(m, ["v@fast.test"])
        fast.wait_messages(1, timeout=30)
        self.assertEqual(fast.messages[0]["rcpts"], ["v@fast.test"])
        self.assertEqual(slow.messages, [], "the slow next hop was to hold its first message")
        self.assertEqual(slow.connections, 1, "max_per_destination = 1")
        # the messages set aside are all delivered once the next hop answers
        release.set()
        slow.wait_messages(12, timeout=60)
        self.assertEqual(sorted(x["rcpts"][0] for x in slow.messages), sorted(f"u{i}@slow.test" for i in range(12)))
        m.wait_log(event="deliver", count=13)

    def test_a_slow_next_hop_does_not_take_every_slot_when_its_queue_is_flushed(self):
        # The same with messages read back from the spool (after a restart, at a flush): the
        # read is a trip to the thread pool, and every due message was taken up before the
        # first of them counted against its next hop.
        release = threading.Event()
        self.addCleanup(release.set)
        port = free_port()
        fast = Sink()
        self.addCleanup(fast.stop)
        m = Moat(routes=[("slow.test", f"smtp:127.0.0.1:{port}"), ("fast.test", f"smtp:127.0.0.1:{fast.port}")],
                 relay_domains=("slow.test", "fast.test"), retry='["1h"]',
                 queue_extra="max_deliveries = 4\nmax_per_destination = 1\n")
        self.addCleanup(m.cleanup)
        send(m, [f"u{i}@slow.test" for i in range(12)])  # nothing listens there yet: deferred
        m.wait_log(event="defer", count=12)
        m.stop()
        slow = Sink(port=port)
        self.addCleanup(slow.stop)
        slow.data_reply = lambda sender, rcpts, data: (release.wait(120), "250 2.0.0 queued")[1]
        self.addCleanup(release.set)  # before the stop: the stop waits for the transaction
        m.start()
        m.cli("queue", "flush")
        wait_for(lambda: any(c.startswith("DATA") for c in slow.commands), 20, what="the slow next hop to have one")
        send(m, ["v@fast.test"])
        fast.wait_messages(1, timeout=30)
        self.assertEqual(slow.messages, [])
        release.set()
        slow.wait_messages(12, timeout=60)

    def test_a_round_for_recipients_refused_as_too_many_carries_them_alone(self):
        # A next hop that takes one recipient a transaction (452 for the rest, RFC 5321
        # §4.5.3.1.10) gets the rest at once in new transactions. Each such round took the
        # message's every deferred recipient along (here one another next hop answers 450:
        # a RCPT to it every round) and counted as an attempt, so the 450 recipient's next
        # retry was at the last, longest wait. Now the rounds carry the refused ones alone.
        one = Sink()
        self.addCleanup(one.stop)
        one.max_rcpts = 1
        later = Sink()
        self.addCleanup(later.stop)
        later.rcpt_reply = lambda addr: "450 4.2.1 try again later"
        m = Moat(routes=[("one.test", f"smtp:127.0.0.1:{one.port}"), ("later.test", f"smtp:127.0.0.1:{later.port}")],
                 relay_domains=("one.test", "later.test"), retry='["10m", "1h"]')
        self.addCleanup(m.cleanup)
        s = m.smtp()
        s.sendmail(SENDER, [f"u{i}@one.test" for i in range(5)] + ["v@later.test"], "Subject: t\r\n\r\nbody\r\n")
        s.quit()
        one.wait_messages(5)
        self.assertEqual(sorted(x["rcpts"][0] for x in one.messages), [f"u{i}@one.test" for i in range(5)])
        m.wait_log(event="deliver", count=5)
        time.sleep(1)
        self.assertEqual([c for c in later.commands if c.upper().startswith("RCPT")], ["RCPT TO:<v@later.test>"])
        self.assertEqual(len(m.find_logs(event="defer", to="v@later.test")), 1)
        listed = json.loads(m.cli("queue", "list", "--json").stdout)["messages"]
        self.assertEqual([x["to"] for x in listed], [["v@later.test"]])
        self.assertEqual(listed[0]["attempts"], 1)
        # the first wait (10 min, ±10%), not the second (1 h)
        self.assertLess(listed[0]["next_attempt_ms"] - listed[0]["arrival_ms"], 15 * 60 * 1000)

    def test_a_wall_clock_step_does_not_make_every_retry_due(self):
        cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if not cc:
            self.skipTest("no C compiler for the clock shim")
        tmp = tempfile.mkdtemp(prefix="moat-clock-")
        self.addCleanup(shutil.rmtree, tmp, True)
        src, lib, shift = os.path.join(tmp, "shift.c"), os.path.join(tmp, "shift.so"), os.path.join(tmp, "shift")
        with open(src, "w") as f:
            f.write(CLOCK_SHIFT_C)
        subprocess.run([cc, "-shared", "-fPIC", "-o", lib, src, "-ldl"], check=True, timeout=60)
        with open(shift, "w") as f:
            f.write("0")
        sink = Sink()
        self.addCleanup(sink.stop)
        sink.rcpt_reply = lambda addr: "450 4.2.0 try again later"
        env = {"LD_PRELOAD": lib, "MOAT_TEST_CLOCK_SHIFT": shift,
               # A sanitized daemon wants its runtime first among the libraries; the shim
               # only wraps clock_gettime, which ASan does not intercept.
               "ASAN_OPTIONS": ":".join(filter(None, [os.environ.get("ASAN_OPTIONS"),
                                                      "verify_asan_link_order=0"]))}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # for the daemon the harness starts
        try:
            m = Moat(routes=[("example.test", f"smtp:127.0.0.1:{sink.port}"), ("sender.test", "maildir:mail")],
                     retry='["1h"]')
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.addCleanup(m.cleanup)
        send(m, [f"u{i}@example.test" for i in range(3)])
        m.wait_log(event="defer", count=3)
        rcpts_before = len([c for c in sink.commands if c.upper().startswith("RCPT")])
        # The wall clock steps two hours forward: an hour's retry wait has not passed.
        with open(shift, "w") as f:
            f.write(str(2 * 3600))
        send(m, [SENDER])  # a new message makes the scheduler look at its timer again
        m.wait_log(event="deliver", to=SENDER)
        time.sleep(2)
        self.assertEqual(len(m.find_logs(event="defer")), 3, "the step made the deferred messages due")
        self.assertEqual(len([c for c in sink.commands if c.upper().startswith("RCPT")]), rcpts_before)
        # still queued, for the retry an hour after their attempt
        listed = m.cli("queue", "list", "--json").stdout
        self.assertEqual(listed.count("@example.test"), 3)
        # and `flush` still tries them at once
        m.cli("queue", "flush")
        m.wait_log(event="defer", count=6, timeout=20)


if __name__ == "__main__":
    unittest.main()
