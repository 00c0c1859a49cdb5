"""Recipient validation ([relay] recipients): the real daemon on loopback refuses, at RCPT
and with 550 5.1.1, addresses of its relay domains that the recipients file does not list,
so no bounce is ever owed for them (backscatter); takes whole domains, subaddresses and
postmaster; leaves unnamed domains unchecked (and `moat check` says so); rereads the file
on SIGHUP and keeps the old table when the new one is broken."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import owned_moat, owned_sink  # noqa: E402

TABLE = "# who exists behind the gateway\nalice@example.test\nBob.Smith@Example.TEST\n@catchall.test\n"


class RecipientValidationTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = owned_sink(cls)
        cls.moat = owned_moat(cls, routes=[(None, f"smtp:127.0.0.1:{cls.sink.port}")],
                              relay_domains=("example.test", "catchall.test", "other.test"),
                              relay_extra='recipients = "recipients"', start=False)
        cls.table = os.path.join(cls.moat.dir, "recipients")
        with open(cls.table, "w") as f:
            f.write(TABLE)
        cls.moat.start()

    def rcpt(self, address, s=None):
        own = s is None
        s = s or self.moat.smtp()
        if own:
            s.ehlo()
            s.mail("someone@sender.test")
        code, msg = s.rcpt(address)
        if own:
            s.quit()
        return code, msg

    def test_unknown_addresses_of_checked_domains_are_refused_at_rcpt(self):
        code, msg = self.rcpt("mallory@example.test")
        self.assertEqual(code, 550)
        self.assertEqual(msg, b"5.1.1 <mallory@example.test>: Recipient address rejected: "
                              b"User unknown in relay recipient table")
        ev = self.moat.wait_log(event="reject", to="mallory@example.test")
        self.assertEqual(ev["stage"], "rcpt")
        self.assertTrue(ev["reply"].startswith("550 5.1.1 "))

    def test_listed_whole_domain_subaddress_and_postmaster_are_taken(self):
        for address in ("alice@example.test", "ALICE@EXAMPLE.TEST", "bob.smith@example.test",
                        "alice+lists@example.test", "anyone@catchall.test", "postmaster@example.test",
                        "Postmaster", "anyone@other.test"):
            with self.subTest(address=address):
                self.assertEqual(self.rcpt(address)[0], 250)

    def test_a_message_goes_to_the_known_recipients_only(self):
        before = len(self.sink.messages)
        s = self.moat.smtp()
        refused = s.sendmail("someone@sender.test", ["alice@example.test", "ghost@example.test"],
                             b"Subject: half known\r\n\r\nx\r\n")
        s.quit()
        self.assertEqual(list(refused), ["ghost@example.test"])
        self.assertEqual(refused["ghost@example.test"][0], 550)
        msgs = self.sink.wait_messages(before + 1)
        self.assertEqual(msgs[before]["rcpts"], ["alice@example.test"])
        self.assertEqual(self.moat.find_logs(event="dsn"), [])  # nothing to bounce

    def test_relay_clients_are_checked_too(self):
        # The harness's clients are in relay.networks (127.0.0.0/8): an internal server
        # sending to a colleague who does not exist gets the 550 at once as well.
        self.assertEqual(self.rcpt("nobody@example.test")[0], 550)
        self.assertEqual(self.rcpt("anyone@elsewhere.test")[0], 250)  # outbound: not ours to check

    def test_check_warns_about_relay_domains_the_file_does_not_name(self):
        r = self.moat.cli("check")
        self.assertIn(f'{self.moat.config_path}:', r.stderr)
        self.assertIn('the file names no address of "other.test"', r.stderr)
        self.assertNotIn('"example.test"', r.stderr)

    def test_sighup_rereads_the_file_and_keeps_the_old_one_when_broken(self):
        try:
            self.moat.reload_with(self.table, TABLE + "carol@example.test\n")
            self.assertEqual(self.rcpt("carol@example.test")[0], 250)
            ev = self.moat.reload_with(self.table, "alice@example.test\nthis line is wrong\n", ok=False)
            self.assertIn(f'{self.table}:2: "this line is wrong" is not an address or @domain', ev["errors"])
            self.assertEqual(self.rcpt("carol@example.test")[0], 250)  # the running table stays
        finally:
            self.moat.reload_with(self.table, TABLE)


if __name__ == "__main__":
    unittest.main()
