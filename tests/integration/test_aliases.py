"""Aliases and lists at RCPT ([relay] aliases): the real daemon on loopback puts an alias's
targets in the envelope in its place (lists, chains, domain aliases, postmaster), each target
once; checks the targets against relay.recipients (dropping unknown ones, refusing the
address with 550 5.1.1 when none is left); passes NOTIFY on and names the address the client
gave in ORCPT (RFC 3461 §4.2); counts RCPT commands, not targets, for limits.max_recipients;
logs an `expand` line; `moat check` points out targets it drops; SIGHUP rereads the file and
keeps the old table when the new one is broken."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Moat, Sink  # noqa: E402

RECIPIENTS = "alice@example.test\nbob@example.test\ncarol@example.test\ndave@example.test\n"
ALIASES = """# lists and aliases
sales@example.test: alice@example.test, bob@example.test, ghost@example.test
info@example.test:  sales@example.test carol@example.test
team@example.test:  alice@example.test
@old.example.test:  @example.test
postmaster@example.test: dave@example.test
partners@example.test: partner@elsewhere.test, alice@example.test
nobody-left@example.test: ghost@example.test
big@example.test: alice@example.test bob@example.test carol@example.test dave@example.test
helpdesk@outside.test: carol@example.test
"""


class AliasTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = Sink(extensions=Sink.DEFAULT_EXTENSIONS + ("DSN",))
        cls.moat = Moat(routes=[(None, f"smtp:127.0.0.1:{cls.sink.port}")],
                        relay_domains=("example.test", "old.example.test"),
                        relay_extra='recipients = "recipients"\naliases = "aliases"',
                        extra="\n[limits]\nmax_recipients = 3\n", start=False)
        cls.table = os.path.join(cls.moat.dir, "aliases")
        cls.moat.write_files({"recipients": RECIPIENTS, "aliases": ALIASES})
        cls.moat.start()

    @classmethod
    def tearDownClass(cls):
        cls.moat.cleanup()
        cls.sink.stop()

    def send(self, rcpts, body=b"Subject: aliases\r\n\r\nbody\r\n", rcpt_options=()):
        """Sends one message; returns (refused, the sink's copy of it)."""
        before = len(self.sink.messages)
        s = self.moat.smtp()
        refused = s.sendmail("someone@sender.test", rcpts, body, rcpt_options=list(rcpt_options))
        s.quit()
        return refused, self.sink.wait_messages(before + 1)[before]

    def rcpt(self, address):
        s = self.moat.smtp()
        s.ehlo()
        s.mail("someone@sender.test")
        code, msg = s.rcpt(address)
        s.quit()
        return code, msg

    def test_a_list_goes_to_its_members_and_unknown_members_are_dropped(self):
        refused, msg = self.send(["sales@example.test"])
        self.assertEqual(refused, {})
        self.assertEqual(msg["rcpts"], ["alice@example.test", "bob@example.test"])
        self.assertTrue(msg["data"].endswith(b"Subject: aliases\r\n\r\nbody\r\n"))
        # Received: names the address the client gave, not the members.
        self.assertRegex(msg["data"].decode(), r"\r\n\tfor <sales@example\.test>; ")
        ev = self.moat.wait_log(event="expand", to="sales@example.test")
        self.assertEqual(ev["level"], "warn")
        self.assertEqual(ev["targets"], ["alice@example.test", "bob@example.test"])
        self.assertEqual(ev["dropped"], ["ghost@example.test"])
        self.assertIn("session", ev)
        accept = self.moat.wait_log(event="accept", to=["alice@example.test", "bob@example.test"])
        self.assertEqual(accept["session"], ev["session"])

    def test_chains_and_overlapping_lists_deliver_each_address_once(self):
        refused, msg = self.send(["info@example.test", "TEAM@example.test", "alice@example.test"])
        self.assertEqual(refused, {})
        self.assertEqual(msg["rcpts"], ["alice@example.test", "bob@example.test", "carol@example.test"])
        self.assertNotIn("\tfor <", msg["data"].decode())  # three RCPTs: no single "for"

    def test_a_domain_alias_keeps_the_local_part_and_is_checked_after_it(self):
        refused, msg = self.send(["Carol@OLD.example.test"])
        self.assertEqual(refused, {})
        self.assertEqual(msg["rcpts"], ["Carol@example.test"])
        code, text = self.rcpt("ghost@old.example.test")
        self.assertEqual(code, 550)
        self.assertEqual(text, b"5.1.1 <ghost@old.example.test>: Recipient address rejected: "
                               b"User unknown in relay recipient table")

    def test_postmaster_and_forwarding_out(self):
        refused, msg = self.send(["Postmaster"])  # RFC 5321 §4.5.1, then its alias
        self.assertEqual(msg["rcpts"], ["dave@example.test"])
        refused, msg = self.send(["partners@example.test"])
        self.assertEqual(msg["rcpts"], ["partner@elsewhere.test", "alice@example.test"])
        # The harness's clients are relay clients: their mail to other domains is aliased too.
        refused, msg = self.send(["helpdesk@outside.test"])
        self.assertEqual(msg["rcpts"], ["carol@example.test"])

    def test_an_alias_with_no_known_target_is_an_unknown_recipient(self):
        code, _ = self.rcpt("nobody-left@example.test")
        self.assertEqual(code, 550)
        ev = self.moat.wait_log(event="reject", to="nobody-left@example.test")
        self.assertTrue(ev["reply"].startswith("550 5.1.1 "))
        self.assertEqual(self.moat.wait_log(event="expand", to="nobody-left@example.test")["dropped"],
                         ["ghost@example.test"])

    def test_targets_keep_notify_and_name_the_given_address_in_orcpt(self):
        self.sink.commands.clear()
        self.send(["team@example.test"], rcpt_options=["NOTIFY=DELAY,FAILURE"])
        self.assertIn("RCPT TO:<alice@example.test> NOTIFY=DELAY,FAILURE ORCPT=rfc822;team@example.test",
                      self.sink.commands)
        self.sink.commands.clear()
        self.send(["team@example.test"], rcpt_options=["ORCPT=rfc822;first+40hop.test"])
        self.assertIn("RCPT TO:<alice@example.test> ORCPT=rfc822;first+40hop.test", self.sink.commands)

    def test_notify_success_gets_one_expanded_report_and_the_targets_go_on_without_it(self):
        # RFC 3461 §5.2.7.3: the list answers SUCCESS itself, once; its members are not asked.
        self.sink.commands.clear()
        before = len(self.sink.messages)
        s = self.moat.smtp()
        s.sendmail("asker@sender.test", ["sales@example.test"], b"Subject: did it arrive?\r\n\r\nx\r\n",
                   rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
        s.quit()
        msgs = self.sink.wait_messages(before + 2)[before:]  # the message, and the report (either first)
        for member in ("alice", "bob"):
            self.assertIn(f"RCPT TO:<{member}@example.test> NOTIFY=FAILURE ORCPT=rfc822;sales@example.test",
                          self.sink.commands)
        reports = [m for m in msgs if m["from"] == ""]
        self.assertEqual(len(reports), 1, msgs)
        report = reports[0]
        self.assertEqual(report["rcpts"], ["asker@sender.test"])
        text = report["data"].decode()
        self.assertIn("Subject: Successful Mail Delivery Report", text)
        self.assertIn("Final-Recipient: rfc822; sales@example.test", text)
        self.assertIn("Original-Recipient: rfc822;sales@example.test", text)
        self.assertIn("Action: expanded", text)
        self.assertIn("Status: 2.0.0", text)
        self.assertIn("Subject: did it arrive?", text)  # the original's headers come back
        self.assertNotIn("alice@example.test", text)  # who is on the list is not said
        ev = self.moat.wait_log(event="dsn", to="asker@sender.test")
        self.assertEqual(ev["action"], "expanded")

    def test_max_recipients_counts_rcpt_commands_not_targets(self):
        # limits.max_recipients is 3 here: three lists (4 + 2 + 2 targets) are three RCPTs.
        refused, msg = self.send(["big@example.test", "sales@example.test", "partners@example.test"])
        self.assertEqual(refused, {})
        self.assertEqual(sorted(msg["rcpts"]), ["alice@example.test", "bob@example.test", "carol@example.test",
                                                "dave@example.test", "partner@elsewhere.test"])
        s = self.moat.smtp()
        s.ehlo()
        s.mail("someone@sender.test")
        for a in ("big@example.test", "sales@example.test", "team@example.test"):
            self.assertEqual(s.rcpt(a)[0], 250)
        self.assertEqual(s.rcpt("carol@example.test")[0], 452)
        s.quit()

    def test_check_names_the_targets_it_drops(self):
        r = self.moat.cli("check")
        warnings = [l for l in r.stderr.splitlines() if l.startswith(self.table)]
        self.assertEqual(warnings, [
            f'{self.table}:{n}: warning: "{a}@example.test": target "ghost@example.test" is not in relay.recipients: '
            'its copy is dropped at RCPT' for n, a in ((2, "sales"), (3, "info"), (8, "nobody-left"))] + [
            f'{self.table}:10: warning: "helpdesk@outside.test" is not in a relay domain: only mail from relay '
            'clients reaches it'])
        # old.example.test is aliased to a checked domain: no "not checked" warning for it
        self.assertNotIn('"old.example.test"', r.stderr)

    def test_sighup_rereads_the_file_and_keeps_the_old_one_when_broken(self):
        try:
            self.moat.reload_with(self.table, ALIASES + "new@example.test: carol@example.test\n")
            _, msg = self.send(["new@example.test"])
            self.assertEqual(msg["rcpts"], ["carol@example.test"])
            ev = self.moat.reload_with(self.table, "new@example.test: dave@example.test\nthis line is wrong\n", ok=False)
            self.assertIn(f'{self.table}:2: expected "ADDRESS: TARGET, ..." or "@DOMAIN: @DOMAIN"', ev["errors"])
            _, msg = self.send(["new@example.test"])  # the running table stays
            self.assertEqual(msg["rcpts"], ["carol@example.test"])
        finally:
            self.moat.reload_with(self.table, ALIASES)


if __name__ == "__main__":
    unittest.main()
