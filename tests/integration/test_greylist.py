"""[greylist] (RFC 6647, as postgrey): the first attempt of a (client network, sender,
recipient) triplet from an inbound client gets 450 4.7.1 at RCPT and the session goes on; a
retry before the delay gets it again; after the delay it passes and the message reaches the
next hop. relay.networks clients and exempt_networks are not greylisted, nor postmaster@;
the table survives a graceful restart (SPOOL_DIR/greylist.state), also one with greylisting
off and a reload that turns it on; clients whose verified name (FCrDNS, from the test's own
DNS server on loopback) is in exempt_client_names are not greylisted, also when the PTR
answer comes late; bad values are refused at their line. The real daemon on loopback,
relaying to a loopback sink; clients are told apart by their source address in 127.0.0.0/8."""

import os
import re
import smtplib
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from authzone import owned_dns  # noqa: E402
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

    def test_the_table_survives_a_start_with_greylisting_off_and_a_reload_that_turns_it_on(self):
        sink = owned_sink(self)
        moat = owned_moat(self, networks=[RELAY], routes=[("example.test", f"smtp:127.0.0.1:{sink.port}")],
                          extra=GREYLIST)
        s = client(moat, "127.0.0.23")
        self.assertEqual(s.mail("h@sender.test")[0], 250)
        self.assertEqual(s.rcpt("reload@example.test")[0], 450)
        s.quit()
        time.sleep(DELAY + 0.3)
        s = client(moat, "127.0.0.23")
        self.assertEqual(s.sendmail("h@sender.test", ["reload@example.test"], body(8)), {})
        s.quit()
        sink.wait_messages(1)
        moat.stop()
        state = os.path.join(moat.dir, "spool", "greylist.state")
        key = "127.0.0.23/32%00h@sender.test%00reload@example.test"

        def passed_lines():
            with open(state) as f:
                return [line for line in f.read().splitlines() if line.startswith("t ") and line.endswith(" " + key)]
        lines = passed_lines()
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0].split(" ")[3], "1")  # passed
        with open(state, "rb") as f:
            saved = f.read()

        # Off at start, on by a reload: the triplet the last run passed passes at once.
        with open(moat.config_path) as f:
            on = f.read()
        self.assertIn("\nenabled = true\n", on)
        with open(moat.config_path, "w") as f:
            f.write(on.replace("\nenabled = true\n", "\nenabled = false\n"))
        moat.start()
        moat.reload_with(moat.config_path, on)
        s = client(moat, "127.0.0.23")
        self.assertEqual(s.sendmail("h@sender.test", ["reload@example.test"], body(9)), {})
        s.quit()
        sink.wait_messages(2)
        self.assertEqual(moat.find_logs(event="greylist", client_ip="127.0.0.23", since_start=True), [])
        with open(state, "rb") as f:
            self.assertEqual(f.read(), saved)  # not overwritten meanwhile
        moat.stop()
        lines = passed_lines()
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0].split(" ")[3], "1")
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


NAMES_DNS_TIMEOUT_S = 4  # c-ares' first try waits a third of it: longer than the slow PTR
NAMES_ZONE = {
    # a big sender's server: its PTR name points back
    "30.0.0.127.in-addr.arpa": [{"PTR": "MX1.Big.Example.TEST"}],
    "mx1.big.example.test": [{"A": "127.0.0.30"}],
    # .31 has no PTR at all
    # a PTR into the exempt domain that its A record does not confirm
    "32.0.0.127.in-addr.arpa": [{"PTR": "mx2.big.example.test"}],
    "mx2.big.example.test": [{"A": "127.0.0.99"}],
    # a name that points back, from a slow reverse zone
    "33.0.0.127.in-addr.arpa": [{"DELAY": 1.0}, {"PTR": "mx3.big.example.test"}],
    "mx3.big.example.test": [{"A": "127.0.0.33"}],
    # a look-alike outside the exempt domain
    "34.0.0.127.in-addr.arpa": [{"PTR": "notbig.example.test"}],
    "notbig.example.test": [{"A": "127.0.0.34"}],
}


class GreylistClientNameTest(unittest.TestCase):
    """exempt_client_names = [".big.example.test"], with the real daemon asking the test's DNS
    server for each client's PTR and the names' A records."""

    @classmethod
    def setUpClass(cls):
        cls.dns = owned_dns(cls, NAMES_ZONE)
        cls.sink = owned_sink(cls)
        cls.moat = owned_moat(cls, networks=[RELAY], routes=[("example.test", f"smtp:127.0.0.1:{cls.sink.port}")],
                              reverse_dns=True,
                              extra=f'\n[dns]\nnameservers = ["{cls.dns.nameserver}"]\n'
                                    f'timeout = "{NAMES_DNS_TIMEOUT_S}s"\n' +
                                    GREYLIST + 'exempt_client_names = [".big.example.test"]\n')

    def first_rcpt(self, source, rcpt):
        s = client(self.moat, source)
        self.assertEqual(s.mail("n@sender.test")[0], 250)
        code = s.rcpt(rcpt)[0]
        if code == 250:
            self.assertEqual(s.data(body(rcpt))[0], 250)
        s.quit()
        return code

    def test_a_verified_name_under_an_exempt_domain_is_not_greylisted(self):
        self.assertEqual(self.first_rcpt("127.0.0.30", "named@example.test"), 250)
        wait_for(lambda: [m for m in self.sink.messages if "named@example.test" in m["rcpts"]], 30,
                 what="the exempt client's message at the sink")
        accept = self.moat.wait_log(event="accept", client_ip="127.0.0.30")
        self.assertEqual(accept["client_name"], "mx1.big.example.test")
        self.assertEqual(self.moat.find_logs(event="greylist", client_ip="127.0.0.30"), [])

    def test_no_ptr_an_unconfirmed_ptr_and_a_look_alike_are_greylisted(self):
        self.assertEqual(self.first_rcpt("127.0.0.31", "noptr@example.test"), 450)
        self.assertEqual(self.first_rcpt("127.0.0.32", "liar@example.test"), 450)
        self.assertEqual(self.first_rcpt("127.0.0.34", "lookalike@example.test"), 450)
        queries = self.dns.queries()
        self.assertIn("31.0.0.127.in-addr.arpa PTR", queries)
        self.assertIn("mx2.big.example.test A", queries)  # asked, and it did not point back
        self.assertIn("notbig.example.test A", queries)
        for ip, rcpt in (("127.0.0.31", "noptr@example.test"), ("127.0.0.32", "liar@example.test"),
                         ("127.0.0.34", "lookalike@example.test")):
            line = self.moat.wait_log(event="greylist", client_ip=ip)
            self.assertEqual((line["to"], line["result"]), (rcpt, "deferred"))

    def test_a_slow_ptr_answer_is_waited_for_and_the_session_goes_on(self):
        raw = socket.create_connection(("127.0.0.1", self.moat.port), timeout=15, source_address=("127.0.0.33", 0))
        t0 = time.monotonic()
        f = raw.makefile("rb")

        def replies(n):
            out = []
            while len(out) < n:
                line = f.readline()
                self.assertTrue(line, out)
                if line[3:4] == b" ":
                    out.append((int(line[:3]), time.monotonic() - t0))
            return out
        self.assertEqual(replies(1)[0][0], 220)
        raw.sendall(b"EHLO client.test\r\n")
        self.assertEqual(replies(1)[0][0], 250)
        # Pipelined (RFC 2920): the RCPT waits for the name; the NOOP behind it is answered
        # after it, in order.
        raw.sendall(b"MAIL FROM:<slow@sender.test>\r\nRCPT TO:<slowptr@example.test>\r\nNOOP\r\n")
        (mail, _), (rcpt, rcpt_at), (noop, _) = replies(3)
        self.assertEqual((mail, rcpt, noop), (250, 250, 250))
        self.assertGreater(rcpt_at, 0.7)  # it did wait for the slow answer
        self.assertLess(rcpt_at, NAMES_DNS_TIMEOUT_S)
        raw.sendall(b"DATA\r\n")
        self.assertEqual(replies(1)[0][0], 354)
        raw.sendall(body("slow").encode() + b".\r\n")
        self.assertEqual(replies(1)[0][0], 250)
        # Known now: a second RCPT answers at once.
        raw.sendall(b"MAIL FROM:<slow@sender.test>\r\nRCPT TO:<slowptr2@example.test>\r\nRSET\r\n")
        t1 = time.monotonic() - t0
        got = replies(3)
        self.assertEqual([c for c, _ in got], [250, 250, 250])
        self.assertLess(got[-1][1] - t1, 0.5)
        raw.sendall(b"QUIT\r\n")
        self.assertEqual(replies(1)[0][0], 221)
        raw.close()
        wait_for(lambda: [m for m in self.sink.messages if "slowptr@example.test" in m["rcpts"]], 30,
                 what="the slow-named client's message at the sink")
        self.assertEqual(self.moat.wait_log(event="accept", client_ip="127.0.0.33")["client_name"],
                         "mx3.big.example.test")
        self.assertEqual(self.moat.find_logs(event="greylist", client_ip="127.0.0.33"), [])


class GreylistConfigTest(unittest.TestCase):
    def check(self, body):
        path, r = check_config(self, '[server]\nhostname = "mx.moat.test"\nspool_dir = "spool"\n\n'
                                     '[[listener]]\naddress = "127.0.0.1:2525"\n\n[greylist]\nenabled = true\n' + body)
        return path, r.returncode, r.stdout + r.stderr

    def test_good_values_are_accepted(self):
        _, rc, out = self.check('delay = "1s"\nretry_window = "4h"\nlifetime = "7d"\nauto_allow_after = 3\n'
                                'ipv4_prefix = 28\nipv6_prefix = 56\nexempt_networks = ["192.0.2.0/24"]\n'
                                'exempt_client_names = [".google.com", ".Outlook.com", "mx.example.test"]\n')
        self.assertEqual(rc, 0, out)

    def test_bad_values_are_refused_at_their_line(self):
        path, rc, out = self.check('delay = "2d"\nipv4_prefix = 40\nexempt_networks = ["nonsense"]\n'
                                   'exempt_client_names = ["*.google.com"]\n')
        self.assertEqual(rc, 1, out)
        self.assertIn(f"{path}:10: greylist.delay: must be from 1s to 1d", out)
        self.assertIn(f"{path}:11: greylist.ipv4_prefix", out)
        self.assertIn(f"{path}:12: greylist.exempt_networks", out)
        self.assertIn(f"{path}:13: greylist.exempt_client_names: \"*.google.com\": wildcards are not supported", out)


if __name__ == "__main__":
    unittest.main()
