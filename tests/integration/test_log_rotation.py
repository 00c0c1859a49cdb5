"""The JSON log under an operator's hands: logrotate's rename and SIGHUP (deploy/logrotate/moat),
a log file that cannot be made again, and a log that cannot be written at all (its file
system full; here RLIMIT_FSIZE on the daemon, as `prlimit --fsize` or systemd's LimitFSIZE=
set it). Mail keeps flowing, the file stays one JSON object a line, and what was lost is
counted in a `log_dropped` line once the log can be written again."""

import json
import os
import resource
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import owned_moat, wait_for  # noqa: E402


def read_lines(path):
    """Every line of `path` as JSON (a line that is not fails the test)."""
    with open(path, "rb") as f:
        data = f.read()
    out = []
    for raw in data.splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError as e:
            raise AssertionError(f"{path}: a line that is not JSON ({e}): {raw[:200]!r}")
    return out


def send(m, subject):
    with m.smtp() as s:
        return s.sendmail("a@sender.test", ["u@example.test"], f"Subject: {subject}\r\n\r\nx\r\n".encode())


class LogRotationTest(unittest.TestCase):
    def test_rename_and_sighup_go_on_in_a_new_file(self):
        m = owned_moat(self)
        send(m, "before")
        m.wait_log(event="accept")
        rotated = m.log_path + ".1"
        os.rename(m.log_path, rotated)  # logrotate's default (no copytruncate)
        send(m, "between")  # written to the renamed file until the SIGHUP
        wait_for(lambda: len([l for l in read_lines(rotated) if l["event"] == "accept"]) == 2, 10,
                 what="the second accept in the renamed file")
        m.signal(signal.SIGHUP)
        m.wait_log(event="reload", ok=True)  # in the new file
        send(m, "after")
        m.wait_log(event="accept")
        self.assertEqual(len(m.find_logs(event="accept")), 1)
        self.assertFalse([l for l in read_lines(rotated) if l["event"] == "log_reopen"])

    def test_a_log_that_cannot_be_made_again_is_reported_in_the_old_one(self):
        # As root a folder's mode does not stop the daemon, so what stands where the log
        # was is a folder of that name: open(2) fails with EISDIR.
        m = owned_moat(self)
        rotated = m.log_path + ".1"
        os.rename(m.log_path, rotated)
        os.mkdir(m.log_path)
        self.addCleanup(os.rmdir, m.log_path)
        m.signal(signal.SIGHUP)
        line = wait_for(lambda: [l for l in read_lines(rotated) if l["event"] == "log_reopen"], 10,
                        what="log_reopen in the old file")[0]
        self.assertEqual((line["level"], line["ok"], line["path"]), ("error", False, m.log_path))
        self.assertIn("directory", line["error"].lower())
        send(m, "still logged")  # the log goes on where it was; mail flows
        wait_for(lambda: [l for l in read_lines(rotated) if l["event"] == "accept"], 10, what="accept in the old file")

    def test_a_log_that_cannot_be_written_loses_no_mail_and_counts_its_losses(self):
        m = owned_moat(self, start=False)
        # RLIMIT_FSIZE caps every file the daemon writes: a log already 1 MB long can be
        # capped where it is while the spool's and the maildir's files stay far below.
        with open(m.log_path, "w") as f:
            f.write('{"event":"padding"}\n' * 50_000)
        m.start()
        send(m, "first")
        m.wait_log(event="deliver")
        # The log cannot grow past where it is now (plus less than a line): as a full disk.
        cap = os.path.getsize(m.log_path) + 100
        resource.prlimit(m.proc.pid, resource.RLIMIT_FSIZE, (cap, resource.RLIM_INFINITY))
        for i in range(5):
            self.assertEqual(send(m, f"while full {i}"), {})  # 250: the spool is not the log
        wait_for(lambda: len(m.maildir_files("u@example.test")) == 6, 20, what="six messages delivered")
        # The log's writer thread drains every 25 ms: give it time to meet the cap with the
        # last deliver line before the cap is lifted (on a loaded machine it can lag behind).
        time.sleep(1)
        self.assertIsNone(m.proc.poll(), "the daemon died (SIGXFSZ?)")
        self.assertLessEqual(os.path.getsize(m.log_path), cap)
        resource.prlimit(m.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        send(m, "space again")
        line = m.wait_log(event="log_dropped")
        # Each message logs at least connect, accept, deliver and disconnect.
        self.assertGreaterEqual(line["lines"], 5 * 4, line)
        self.assertIn("large", line.get("error", ""))  # strerror(EFBIG): "File too large"
        wait_for(lambda: len(m.find_logs(event="deliver")) == 2, 20, what="the last deliver line")
        read_lines(m.log_path)  # no piece of a line was left behind by the failed writes


if __name__ == "__main__":
    unittest.main()
