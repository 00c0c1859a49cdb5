"""[rate_limits]: messages and recipients per client for inbound clients, messages per sender
for relay.networks clients (Postfix's anvil, Exchange's per-sender rate limit). Over a limit
MAIL or RCPT gets 450 4.7.1 and the session goes on; the messages taken before are
delivered; exempt_networks are never limited; one rate_limited line per key and window; a
reload with a higher limit lets mail through again, the counts kept; the counts survive a
graceful restart (SPOOL_DIR/rate_limit.state, wall-clock times), also one with every limit
off and a reload that turns one on, but not past their window; a broken state file is logged
and ignored. The real daemon on loopback; clients are told apart by their source address in
127.0.0.0/8."""

import os
import smtplib
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import client_tls, free_port, owned_moat, scrape, wait_for  # noqa: E402
from test_submission import auth_plain, set_up_tls_auth_daemon, write_users  # noqa: E402

RELAY = "127.0.0.64/28"  # relay.networks: outbound clients; the rest of 127/8 is inbound
LIMITS = """
[rate_limits]
window = "1h"
messages_per_client = 2
recipients_per_client = 5
messages_per_sender = 2
exempt_networks = ["127.0.0.9"]
"""


def body(n):
    return f"Subject: rate {n}\r\n\r\nmessage {n}\r\n"


class Client:
    """An smtplib session from `source`; `send` returns the reply of the step that failed."""

    def __init__(self, moat, source):
        self.s = smtplib.SMTP("127.0.0.1", moat.port, timeout=15, source_address=(source, 0))
        self.s.ehlo("client.test")

    def send(self, sender, rcpts, n):
        code, text = self.s.mail(sender)
        if code != 250:
            return "mail", code, text.decode()
        for r in rcpts:
            code, text = self.s.rcpt(r)
            if code != 250:
                self.s.rset()
                return "rcpt", code, text.decode()
        code, text = self.s.data(body(n))
        return "data", code, text.decode()

    def close(self):
        self.s.quit()


def delivered(moat, address, count):
    wait_for(lambda: len(moat.maildir_files(address)) >= count, 30, what=f"{count} messages for {address}")
    return len(moat.maildir_files(address))


class RateLimitsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.metrics = free_port()
        cls.moat = owned_moat(cls, networks=[RELAY], server_extra=f'metrics_listen = "127.0.0.1:{cls.metrics}"',
                              extra=LIMITS)

    def test_inbound_client_message_limit_at_mail_and_the_session_lives_on(self):
        c = Client(self.moat, "127.0.0.10")
        for n in range(2):
            self.assertEqual(c.send("a@sender.test", ["in1@example.test"], n)[1], 250)
        stage, code, text = c.send("a@sender.test", ["in1@example.test"], 3)
        self.assertEqual((stage, code), ("mail", 450))
        self.assertEqual(text, "4.7.1 Rate limit exceeded (2 messages per 1h for 127.0.0.10), try again later")
        # The session goes on: RSET and NOOP work, MAIL is refused again (a transient 4xx).
        self.assertEqual(c.s.rset()[0], 250)
        self.assertEqual(c.s.noop()[0], 250)
        self.assertEqual(c.s.mail("b@sender.test")[0], 450)
        c.close()
        c = Client(self.moat, "127.0.0.10")  # a new session counts for the same client
        self.assertEqual(c.send("a@sender.test", ["in1@example.test"], 4)[:2], ("mail", 450))
        c.close()
        # Another client is not concerned.
        c = Client(self.moat, "127.0.0.13")
        self.assertEqual(c.send("a@sender.test", ["in1@example.test"], 5)[1], 250)
        c.close()
        self.assertEqual(delivered(self.moat, "in1@example.test", 3), 3)
        # One line for three refusals, with what was refused and why.
        ev = self.moat.wait_log(event="rate_limited", key="127.0.0.10")
        self.assertEqual(ev["level"], "warn")
        self.assertEqual((ev["client_ip"], ev["limit"], ev["max"], ev["count"], ev["window"]),
                         ("127.0.0.10", "messages_per_client", 2, 2, "1h"))
        self.assertEqual(len(self.moat.find_logs(event="rate_limited", key="127.0.0.10")), 1)
        # Each refusal is still a reject line, at debug only, and counted.
        rejects = self.moat.find_logs(event="reject", client_ip="127.0.0.10", reason="messages_per_client")
        self.assertEqual(len(rejects), 3)
        self.assertTrue(all(r["level"] == "debug" and r["stage"] == "mail" for r in rejects))
        self.assertGreaterEqual(scrape(self.metrics)['moat_rate_limited_total{limit="messages_per_client"}'], 3)

    def test_inbound_client_recipient_limit_at_rcpt(self):
        c = Client(self.moat, "127.0.0.11")
        self.assertEqual(c.s.mail("a@sender.test")[0], 250)
        for i in range(5):
            self.assertEqual(c.s.rcpt(f"r{i}@example.test")[0], 250, i)
        code, text = c.s.rcpt("r5@example.test")
        self.assertEqual(code, 450)
        self.assertEqual(text.decode(),
                         "4.7.1 Rate limit exceeded (5 recipients per 1h for 127.0.0.11), try again later")
        # The transaction goes on with the recipients taken.
        self.assertEqual(c.s.data(body(1))[0], 250)
        self.assertEqual(delivered(self.moat, "r4@example.test", 1), 1)
        self.assertEqual(self.moat.maildir_files("r5@example.test"), [])
        # The next transaction: MAIL is taken (one message of two), its RCPT is not.
        self.assertEqual(c.send("a@sender.test", ["r6@example.test"], 2)[:2], ("rcpt", 450))
        c.close()
        ev = self.moat.wait_log(event="rate_limited", key="127.0.0.11")
        self.assertEqual((ev["limit"], ev["max"], ev["count"]), ("recipients_per_client", 5, 5))
        self.assertEqual(len(self.moat.find_logs(event="rate_limited", key="127.0.0.11")), 1)

    def test_outbound_limit_per_sender_not_per_client(self):
        c = Client(self.moat, "127.0.0.65")  # relay.networks
        for n in range(2):
            self.assertEqual(c.send("Limited@Corp.Test", ["out1@example.test"], n)[1], 250)
        stage, code, text = c.send("limited@corp.test", ["out1@example.test"], 2)
        self.assertEqual((stage, code), ("mail", 450))
        self.assertEqual(text, "4.7.1 Rate limit exceeded (2 messages per 1h for limited@corp.test), try again later")
        # Another sender of the same client is not limited by it, nor is the client as a
        # whole (messages_per_client is for inbound clients), nor the null sender.
        for n in range(2):
            self.assertEqual(c.send("other@corp.test", ["out2@example.test"], 10 + n)[1], 250, n)
        for n in range(3):
            self.assertEqual(c.send("", ["out3@example.test"], 20 + n)[1], 250, n)
        # The limited sender from another relay client: the same count.
        c2 = Client(self.moat, "127.0.0.66")
        self.assertEqual(c2.send("LIMITED@corp.test", ["out1@example.test"], 30)[:2], ("mail", 450))
        c2.close()
        c.close()
        self.assertEqual(delivered(self.moat, "out1@example.test", 2), 2)
        self.assertEqual(delivered(self.moat, "out2@example.test", 2), 2)
        self.assertEqual(delivered(self.moat, "out3@example.test", 3), 3)
        ev = self.moat.wait_log(event="rate_limited", key="limited@corp.test")
        self.assertEqual((ev["limit"], ev["client_ip"], ev["count"]), ("messages_per_sender", "127.0.0.65", 2))
        self.assertEqual(len(self.moat.find_logs(event="rate_limited", key="limited@corp.test")), 1)
        self.assertEqual(self.moat.find_logs(event="rate_limited", key="other@corp.test"), [])

    def test_exempt_networks_are_never_limited(self):
        c = Client(self.moat, "127.0.0.9")
        for n in range(4):
            self.assertEqual(c.send("a@sender.test", [f"ex{i}@example.test" for i in range(3)], n)[1], 250, n)
        c.close()
        self.assertEqual(delivered(self.moat, "ex2@example.test", 4), 4)
        self.assertEqual(self.moat.find_logs(event="rate_limited", client_ip="127.0.0.9"), [])


class RateLimitsAuthTest(unittest.TestCase):
    """An authenticated client (SMTP AUTH on an smtp listener, outside relay.networks) is
    outbound: counted per user, whatever its envelope senders, and not per client."""

    @classmethod
    def setUpClass(cls):
        set_up_tls_auth_daemon(cls, "moat-rl-", networks=["10.255.255.0/24"], extra=LIMITS)
        write_users(os.path.join(cls.moat.dir, "users"), {"alice": "correct horse"})
        cls.moat.start()

    def test_authenticated_user_is_limited_per_user_not_per_sender_or_client(self):
        s = self.moat.smtp()
        s.starttls(context=client_tls())
        s.ehlo()
        self.assertEqual(auth_plain(s, "alice", "correct horse")[0], 235)
        for n, sender in enumerate(("a1@corp.test", "a2@corp.test")):
            self.assertEqual(s.sendmail(sender, ["x@elsewhere.test"], body(n)), {})
        code, text = s.mail("a3@corp.test")
        self.assertEqual((code, text.decode()),
                         (450, "4.7.1 Rate limit exceeded (2 messages per 1h for alice), try again later"))
        s.quit()
        self.sink.wait_messages(2)
        ev = self.moat.wait_log(event="rate_limited", key="alice")
        self.assertEqual((ev["limit"], ev["count"]), ("messages_per_sender", 2))
        # Unauthenticated, the same address is an inbound client with its own, untouched count.
        c = Client(self.moat, "127.0.0.1")
        for n in range(2):
            self.assertEqual(c.send("b@sender.test", ["in@example.test"], 10 + n)[1], 250, n)
        c.close()


class RateLimitsReloadTest(unittest.TestCase):
    def test_a_reload_with_a_higher_limit_lets_mail_through_and_keeps_the_counts(self):
        moat = owned_moat(self, networks=["10.255.255.0/24"], extra=LIMITS)
        c = Client(moat, "127.0.0.12")
        for n in range(2):
            self.assertEqual(c.send("a@sender.test", ["rl@example.test"], n)[1], 250)
        self.assertEqual(c.send("a@sender.test", ["rl@example.test"], 2)[:2], ("mail", 450))
        c.close()
        with open(moat.config_path) as f:
            text = f.read()
        moat.reload_with(moat.config_path, text.replace("messages_per_client = 2", "messages_per_client = 3"))
        c = Client(moat, "127.0.0.12")
        # The two messages before the reload still count: one more, then 450 again.
        self.assertEqual(c.send("a@sender.test", ["rl@example.test"], 3)[1], 250)
        stage, code, text = c.send("a@sender.test", ["rl@example.test"], 4)
        self.assertEqual((stage, code), ("mail", 450))
        self.assertIn("(3 messages per 1h for 127.0.0.12)", text)
        c.close()
        self.assertEqual(delivered(moat, "rl@example.test", 3), 3)


def state_lines(moat):
    """The state file's record lines, as [counter, key, [(end_ms, count), ...]]."""
    with open(os.path.join(moat.dir, "spool", "rate_limit.state")) as f:
        lines = f.read().splitlines()
    assert lines[0] == "moat-ratelimit 1" and lines[-1] == f"end {len(lines) - 2}", lines
    out = []
    for line in lines[1:-1]:
        f = line.split(" ")
        out.append([int(f[0]), f[1], [(int(f[i]), int(f[i + 1])) for i in range(2, len(f), 2)]])
    return out


class RateLimitsRestartTest(unittest.TestCase):
    def test_the_counts_survive_a_graceful_restart(self):
        moat = owned_moat(self, networks=[RELAY], extra=LIMITS)
        c = Client(moat, "127.0.0.14")
        for n in range(2):
            self.assertEqual(c.send("a@sender.test", ["restart@example.test"], n)[1], 250)
        self.assertEqual(c.send("a@sender.test", ["restart@example.test"], 2)[:2], ("mail", 450))
        c.close()
        c = Client(moat, "127.0.0.67")  # relay.networks: per sender
        for n in range(2):
            self.assertEqual(c.send("kept@corp.test", ["restart@example.test"], 10 + n)[1], 250)
        c.close()
        self.assertEqual(delivered(moat, "restart@example.test", 4), 4)
        before = time.time() * 1000
        moat.stop()
        # Wall-clock times (ms since the epoch): each bucket ended at most a window ago and
        # ends at most a bucket (1h/32) from now.
        lines = state_lines(moat)
        by_key = {(counter, key): buckets for counter, key, buckets in lines}
        self.assertEqual(sum(n for _, n in by_key[(0, "127.0.0.14")]), 2)  # messages_per_client
        self.assertEqual(sum(n for _, n in by_key[(2, "kept@corp.test")]), 2)  # messages_per_sender
        for buckets in by_key.values():
            for end, _ in buckets:
                self.assertTrue(before - 3600_000 < end <= before + 3600_000 / 32 + 60_000, end)

        moat.start()
        # The limits still hold: the first MAIL of the new run is refused.
        c = Client(moat, "127.0.0.14")
        stage, code, text = c.send("a@sender.test", ["restart@example.test"], 3)
        self.assertEqual((stage, code), ("mail", 450))
        self.assertIn("(2 messages per 1h for 127.0.0.14)", text)
        c.close()
        c = Client(moat, "127.0.0.68")
        self.assertEqual(c.send("Kept@corp.test", ["restart@example.test"], 12)[:2], ("mail", 450))
        self.assertEqual(c.send("new@corp.test", ["restart@example.test"], 13)[1], 250)
        c.close()
        ev = moat.wait_log(event="rate_limited", key="127.0.0.14", since_start=True)
        self.assertEqual(ev["count"], 2)
        self.assertEqual(moat.find_logs(event="rate_limit_error"), [])

    def test_the_counts_survive_a_start_with_the_limits_off_and_a_reload_that_turns_them_on(self):
        moat = owned_moat(self, networks=[RELAY], extra=LIMITS)
        c = Client(moat, "127.0.0.15")
        for n in range(2):
            self.assertEqual(c.send("a@sender.test", ["off@example.test"], n)[1], 250)
        c.close()
        moat.stop()
        state = os.path.join(moat.dir, "spool", "rate_limit.state")
        with open(state, "rb") as f:
            saved = f.read()
        with open(moat.config_path) as f:
            on = f.read()
        off = on
        for key in ("messages_per_client", "recipients_per_client", "messages_per_sender"):
            off = off.replace(f"\n{key} = ", f"\n{key} = 0\n# {key} = ")
        self.assertNotEqual(off, on)
        with open(moat.config_path, "w") as f:
            f.write(off)
        moat.start()
        c = Client(moat, "127.0.0.16")  # off: nothing counted, nothing refused
        for n in range(3):
            self.assertEqual(c.send("a@sender.test", ["off@example.test"], 10 + n)[1], 250)
        c.close()
        moat.reload_with(moat.config_path, on)
        c = Client(moat, "127.0.0.15")
        self.assertEqual(c.send("a@sender.test", ["off@example.test"], 20)[:2], ("mail", 450))
        c.close()
        self.assertEqual(delivered(moat, "off@example.test", 5), 5)
        moat.stop()
        # Nothing was counted while off: the file the first run left was not rewritten then;
        # the refusal after the reload counts nothing either.
        with open(state, "rb") as f:
            self.assertEqual(f.read(), saved)
        self.assertEqual(moat.find_logs(event="rate_limit_error"), [])

    def test_counts_whose_window_ended_while_stopped_are_not_carried_over(self):
        window_s = 2
        moat = owned_moat(self, networks=[RELAY], extra=LIMITS.replace('window = "1h"', f'window = "{window_s}s"'))
        c = Client(moat, "127.0.0.17")
        for n in range(2):
            self.assertEqual(c.send("a@sender.test", ["expired@example.test"], n)[1], 250)
        last = time.monotonic()
        self.assertEqual(c.send("a@sender.test", ["expired@example.test"], 2)[:2], ("mail", 450))
        c.close()
        moat.stop()
        # They were saved...
        self.assertIn((0, "127.0.0.17"), [(counter, key) for counter, key, _ in state_lines(moat)])
        # ...and are dropped as they are read once their window (and a bucket) is over.
        time.sleep(max(0.0, last + window_s * (1 + 1 / 32) + 0.3 - time.monotonic()))
        moat.start()
        c = Client(moat, "127.0.0.17")
        for n in range(2):
            self.assertEqual(c.send("a@sender.test", ["expired@example.test"], 3 + n)[1], 250, n)
        c.close()
        self.assertEqual(delivered(moat, "expired@example.test", 4), 4)

    def test_a_broken_state_file_is_logged_and_ignored(self):
        moat = owned_moat(self, networks=[RELAY], extra=LIMITS, start=False)
        os.makedirs(os.path.join(moat.dir, "spool"), exist_ok=True)
        with open(os.path.join(moat.dir, "spool", "rate_limit.state"), "w") as f:
            f.write("moat-ratelimit 1\n0 127.0.0.18 garbage\n")
        moat.start()
        ev = moat.wait_log(event="rate_limit_error")
        self.assertEqual(ev["level"], "warn")
        self.assertEqual(ev["reason"], "saved counts ignored: not a file Moat wrote, or cut short")
        self.assertTrue(ev["file"].endswith("rate_limit.state"))
        c = Client(moat, "127.0.0.18")  # the counts start empty
        for n in range(2):
            self.assertEqual(c.send("a@sender.test", ["broken@example.test"], n)[1], 250)
        self.assertEqual(c.send("a@sender.test", ["broken@example.test"], 2)[:2], ("mail", 450))
        c.close()


if __name__ == "__main__":
    unittest.main()
