"""[greylist] (RFC 6647, as postgrey): the first attempt of a (client network, sender,
recipient) triplet from an inbound client gets 450 4.7.1 at RCPT and the session goes on; a
retry before the delay gets it again; after the delay it passes and the message reaches the
next hop. relay.networks clients and exempt_networks are not greylisted, nor postmaster@;
the table survives a graceful restart (SPOOL_DIR/greylist.state); bad values are refused at
their line. The real daemon on loopback, relaying to a loopback sink; clients are told apart
by their source address in 127.0.0.0/8."""

import os
import re
import smtplib
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import check_config, owned_moat, owned_sink, scrape, free_port, wait_for  # noqa: E402

DELAY = 2
RELAY = "127.0.0.64/28"  # relay.networks; the rest of 127/8 is inbound
GREYLIST = f"""
[greylist]
enabled = true
delay = "{DELAY}s"
retry_window = "1h"
auto_allow_after = 0
ipv4_prefix = 32
exempt_networks = ["127.0.0.9"]
"""
REPLY = re.compile(r"^4\.7\.1 <([^>]+)>: Recipient address rejected: Greylisted, try again in (\d+) seconds$")


def client(moat, source):
    s = smtplib.SMTP("127.0.0.1", moat.port, timeout=15, source_address=(source, 0))
    s.ehlo("client.test")
    return s


def body(n):
    return f"Subject: greylist {n}\r\n\r\nmessage {n}\r\n"


class GreylistTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = owned_sink(cls)
        cls.metrics = free_port()
        cls.moat = owned_moat(cls, networks=[RELAY], routes=[("example.test", f"smtp:127.0.0.1:{cls.sink.port}")],
                              server_extra=f'metrics_listen = "127.0.0.1:{cls.metrics}"', extra=GREYLIST)

    def delivered_to(self, rcpt, count=1):
        wait_for(lambda: len([m for m in self.sink.messages if rcpt in m["rcpts"]]) >= count, 30,
                 what=f"{count} messages for {rcpt} at the sink")
        return [m for m in self.sink.messages if rcpt in m["rcpts"]]

    def test_first_attempt_deferred_early_retry_deferred_then_passes(self):
        s = client(self.moat, "127.0.0.10")
        self.assertEqual(s.mail("a@sender.test")[0], 250)
        code, text = s.rcpt("Grey1@example.test")
        self.assertEqual(code, 450)
        m = REPLY.match(text.decode())
        self.assertIsNotNone(m, text)
        self.assertEqual(m.group(1), "Grey1@example.test")
        self.assertEqual(int(m.group(2)), DELAY)
        # The session goes on: NOOP, another transaction (a new triplet: deferred too).
        self.assertEqual(s.noop()[0], 250)
        self.assertEqual(s.rset()[0], 250)
        self.assertEqual(s.mail("a@sender.test")[0], 250)
        # Too early: deferred again (the case of the address does not make a new triplet).
        code, text = s.rcpt("grey1@EXAMPLE.test")
        self.assertEqual(code, 450)
        self.assertLessEqual(int(REPLY.match(text.decode()).group(2)), DELAY)
        # Postmaster is never greylisted; the transaction goes on with it alone.
        self.assertEqual(s.rcpt("postmaster@example.test")[0], 250)
        self.assertEqual(s.data(body(0))[0], 250)
        s.quit()
        self.delivered_to("postmaster@example.test")
        self.assertEqual([m for m in self.sink.messages if "Grey1@example.test" in m["rcpts"]], [])

        time.sleep(DELAY + 0.3)
        s = client(self.moat, "127.0.0.10")
        self.assertEqual(s.mail("A@Sender.test")[0], 250)
        self.assertEqual(s.rcpt("Grey1@example.test")[0], 250)
        self.assertEqual(s.data(body(1))[0], 250)
        # Known now: the next message passes at once.
        self.assertEqual(s.sendmail("a@sender.test", ["Grey1@example.test"], body(2)), {})
        s.quit()
        self.assertEqual(len(self.delivered_to("Grey1@example.test", 2)), 2)

        # One line when deferred, one when it passed; the early retry a reject at debug.
        lines = self.moat.find_logs(event="greylist", to="Grey1@example.test")
        self.assertEqual([l["result"] for l in lines], ["deferred", "passed"])
        self.assertEqual((lines[0]["level"], lines[0]["client_ip"], lines[0]["network"], lines[0]["wait_s"]),
                         ("info", "127.0.0.10", "127.0.0.10/32", DELAY))
        rejects = self.moat.find_logs(event="reject", client_ip="127.0.0.10", reason="greylist")
        self.assertGreaterEqual(len(rejects), 2)
        self.assertTrue(all(r["level"] == "debug" and r["stage"] == "rcpt" for r in rejects))
        metrics = scrape(self.metrics)
        self.assertGreaterEqual(metrics['moat_greylist_total{result="deferred"}'], 2)
        self.assertGreaterEqual(metrics['moat_greylist_total{result="passed"}'], 2)

    def test_another_client_is_greylisted_on_its_own(self):
        s = client(self.moat, "127.0.0.11")
        self.assertEqual(s.mail("b@sender.test")[0], 250)
        self.assertEqual(s.rcpt("grey2@example.test")[0], 450)
        s.quit()
        time.sleep(DELAY + 0.3)
        # The same sender and recipient from another address (ipv4_prefix = 32): a new triplet.
        s = client(self.moat, "127.0.0.12")
        self.assertEqual(s.mail("b@sender.test")[0], 250)
        self.assertEqual(s.rcpt("grey2@example.test")[0], 450)
        s.quit()

    def test_relay_network_client_is_not_greylisted(self):
        s = client(self.moat, "127.0.0.65")
        self.assertEqual(s.sendmail("c@corp.test", ["relayed@example.test"], body(3)), {})
        s.quit()
        self.delivered_to("relayed@example.test")
        self.assertEqual(self.moat.find_logs(event="greylist", client_ip="127.0.0.65"), [])

    def test_exempt_network_is_not_greylisted(self):
        s = client(self.moat, "127.0.0.9")
        self.assertEqual(s.sendmail("d@sender.test", ["exempt@example.test"], body(4)), {})
        s.quit()
        self.delivered_to("exempt@example.test")
        self.assertEqual(self.moat.find_logs(event="greylist", client_ip="127.0.0.9"), [])


class GreylistRestartTest(unittest.TestCase):
    def test_the_table_survives_a_graceful_restart(self):
        sink = owned_sink(self)
        moat = owned_moat(self, networks=[RELAY], routes=[("example.test", f"smtp:127.0.0.1:{sink.port}")],
                          extra=GREYLIST)
        s = client(moat, "127.0.0.20")
        self.assertEqual(s.mail("e@sender.test")[0], 250)
        self.assertEqual(s.rcpt("kept@example.test")[0], 450)  # pending
        s.quit()
        time.sleep(DELAY + 0.3)
        s = client(moat, "127.0.0.21")
        self.assertEqual(s.mail("f@sender.test")[0], 250)
        self.assertEqual(s.rcpt("passed@example.test")[0], 450)
        s.quit()
        time.sleep(DELAY + 0.3)
        s = client(moat, "127.0.0.21")
        self.assertEqual(s.sendmail("f@sender.test", ["passed@example.test"], body(5)), {})
        s.quit()
        sink.wait_messages(1)

        moat.stop()
        state = os.path.join(moat.dir, "spool", "greylist.state")
        self.assertTrue(os.path.exists(state))
        moat.start()
        # The passed triplet passes at once; the pending one keeps its first attempt (long
        # enough ago: it passes now); a new one is greylisted.
        s = client(moat, "127.0.0.21")
        self.assertEqual(s.sendmail("f@sender.test", ["passed@example.test"], body(6)), {})
        s.quit()
        s = client(moat, "127.0.0.20")
        self.assertEqual(s.sendmail("e@sender.test", ["kept@example.test"], body(7)), {})
        self.assertEqual(s.mail("new@sender.test")[0], 250)
        self.assertEqual(s.rcpt("kept@example.test")[0], 450)
        s.quit()
        sink.wait_messages(3)
        self.assertEqual(moat.find_logs(event="greylist_error"), [])

    def test_a_broken_state_file_is_logged_and_ignored(self):
        moat = owned_moat(self, networks=[RELAY], extra=GREYLIST, start=False)
        os.makedirs(os.path.join(moat.dir, "spool"), exist_ok=True)
        with open(os.path.join(moat.dir, "spool", "greylist.state"), "w") as f:
            f.write("moat-greylist 1\nt 1 2 garbage\n")
        moat.start()
        ev = moat.wait_log(event="greylist_error")
        self.assertEqual(ev["level"], "warn")
        self.assertIn("saved table ignored", ev["reason"])
        s = client(moat, "127.0.0.22")
        self.assertEqual(s.mail("g@sender.test")[0], 250)
        self.assertEqual(s.rcpt("fresh@example.test")[0], 450)
        s.quit()


class GreylistConfigTest(unittest.TestCase):
    def check(self, body):
        path, r = check_config(self, '[server]\nhostname = "mx.moat.test"\nspool_dir = "spool"\n\n'
                                     '[[listener]]\naddress = "127.0.0.1:2525"\n\n[greylist]\nenabled = true\n' + body)
        return path, r.returncode, r.stdout + r.stderr

    def test_good_values_are_accepted(self):
        _, rc, out = self.check('delay = "1s"\nretry_window = "4h"\nlifetime = "7d"\nauto_allow_after = 3\n'
                                'ipv4_prefix = 28\nipv6_prefix = 56\nexempt_networks = ["192.0.2.0/24"]\n')
        self.assertEqual(rc, 0, out)

    def test_bad_values_are_refused_at_their_line(self):
        path, rc, out = self.check('delay = "2d"\nipv4_prefix = 40\nexempt_networks = ["nonsense"]\n')
        self.assertEqual(rc, 1, out)
        self.assertIn(f"{path}:10: greylist.delay: must be from 1s to 1d", out)
        self.assertIn(f"{path}:11: greylist.ipv4_prefix", out)
        self.assertIn(f"{path}:12: greylist.exempt_networks", out)


if __name__ == "__main__":
    unittest.main()
