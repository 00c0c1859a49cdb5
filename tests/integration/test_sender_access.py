"""[senders] block: envelope senders refused at MAIL FROM with 554 5.7.1 (Postfix's
check_sender_access), by address, subaddress, domain or subdomains, while the session goes
on; connection.allow's clients are exempt; the file is reread on SIGHUP and a broken one is
refused with FILE:LINE while the running list stays. The real daemon on loopback; clients
are told apart by their source address in 127.0.0.0/8."""

import os
import smtplib
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import owned_moat, owned_sink  # noqa: E402

BLOCKED = "# refused senders\nspammer@sender.test\n@bulk.test\n@.junk.test\n"


class SenderAccessTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = owned_sink(cls)
        cls.moat = owned_moat(cls, routes=[(None, f"smtp:127.0.0.1:{cls.sink.port}")],
                              networks=["10.255.255.0/24"],  # loopback is not a relay client here
                              extra='\n[senders]\nblock = "blocked-senders"\n\n[connection]\nallow = ["127.0.0.9"]\n',
                              start=False)
        cls.list = os.path.join(cls.moat.dir, "blocked-senders")
        with open(cls.list, "w") as f:
            f.write(BLOCKED)
        cls.moat.start()

    def mail(self, sender, source="127.0.0.1"):
        s = smtplib.SMTP("127.0.0.1", self.moat.port, timeout=15, source_address=(source, 0))
        s.ehlo("client.test")
        reply = s.mail(sender)
        s.quit()
        return reply

    def test_listed_senders_are_refused_at_mail_and_the_session_goes_on(self):
        before = len(self.sink.messages)
        s = self.moat.smtp()
        s.ehlo("client.test")
        self.assertEqual(s.mail("Spammer+promo@SENDER.test"),
                         (554, b"5.7.1 <Spammer+promo@SENDER.test>: Sender address rejected: Access denied"))
        s.sendmail("friend@sender.test", ["user@example.test"], b"Subject: after\r\n\r\nstill here\r\n")
        s.quit()
        msgs = self.sink.wait_messages(before + 1)
        self.assertEqual(msgs[before]["from"], "friend@sender.test")
        ev = self.moat.wait_log(event="reject", **{"from": "Spammer+promo@SENDER.test"})
        self.assertEqual(ev["stage"], "mail")
        self.assertEqual(ev["reply"], "554 5.7.1 <Spammer+promo@SENDER.test>: Sender address rejected: Access denied")
        self.assertEqual(ev["client_ip"], "127.0.0.1")

    def test_domains_subdomains_and_what_is_not_listed(self):
        for sender, code in (("anyone@bulk.test", 554), ("anyone@mail.bulk.test", 250),
                             ("x@mx.junk.test", 554), ("x@junk.test", 250),
                             ("spammer2@sender.test", 250), ("", 250)):
            with self.subTest(sender=sender):
                self.assertEqual(self.mail(sender)[0], code)

    def test_connection_allow_is_exempt(self):
        self.assertEqual(self.mail("spammer@sender.test", source="127.0.0.9")[0], 250)
        self.assertEqual(self.mail("spammer@sender.test", source="127.0.0.8")[0], 554)

    def test_sighup_rereads_the_list_and_keeps_the_old_one_when_broken(self):
        try:
            self.moat.reload_with(self.list, BLOCKED + "late@sender.test\n")
            self.assertEqual(self.mail("late@sender.test")[0], 554)
            ev = self.moat.reload_with(self.list, "spammer@sender.test\nnot an address\n", ok=False)
            self.assertIn(f'{self.list}:2: "not an address" is not an address, @domain or @.domain', ev["errors"])
            self.assertEqual(self.mail("late@sender.test")[0], 554)  # the running list stays
        finally:
            self.moat.reload_with(self.list, BLOCKED)


if __name__ == "__main__":
    unittest.main()
