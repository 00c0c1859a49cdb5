"""[headers] strip_inbound, the header firewall: mail from the internet loses the copies of
Moat's own verdict fields it brought (X-Spam-*, X-Moat-* by default) before any filter reads
it, so the internal servers see only Moat's; mail from relay.networks keeps them; the list
is reloadable and a pattern that would strip a field the message is built on is refused
with FILE:LINE while the running list stays. The real daemon on loopback against a sink the
test owns; clients are told apart by their source address in 127.0.0.0/8."""

import os
import re
import smtplib
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import owned_moat, owned_sink  # noqa: E402

RULES = "body MOAT_TEST_NEVER /zzzz-never-zzzz/\nscore MOAT_TEST_NEVER 1.0\n"

FORGED = (b"From: a@sender.test\r\n"
          b"To: user@example.test\r\n"
          b"Subject: forged verdicts\r\n"
          b"X-Spam-Status: No, score=-10.0 required=5.0\r\n"
          b"X-Spam-Score:\r\n -10.0\r\n"
          b"X-MOAT-URIBL: none\r\n"
          b"X-Spamd-Result: default: False [0.00 / 15.00]\r\n"
          b"\r\n"
          b"X-Spam-Status: Yes, in the body\r\n")


def fields(data, name):
    """The values of header field `name` in the header section of `data` (bytes), unfolded."""
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    head = re.sub(r"\r\n[ \t]", " ", head)
    return [l.split(":", 1)[1].strip() for l in head.split("\r\n") if l.split(":", 1)[0].strip().lower() == name]


class HeaderFirewallTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = owned_sink(cls)
        cls.moat = owned_moat(cls, routes=[(None, f"smtp:127.0.0.1:{cls.sink.port}")],
                              networks=["127.0.0.9/32"],  # only this source is a relay client
                              extra='\n[rules]\nfiles = ["spam.cf"]\n', start=False)
        with open(os.path.join(cls.moat.dir, "spam.cf"), "w") as f:
            f.write(RULES)
        with open(cls.moat.config_path) as f:
            cls.config = f.read()
        cls.moat.start()

    def send(self, source="127.0.0.1"):
        before = len(self.sink.messages)
        s = smtplib.SMTP("127.0.0.1", self.moat.port, local_hostname="client.test", timeout=30,
                         source_address=(source, 0))
        s.sendmail("a@sender.test", ["user@example.test"], FORGED)
        s.quit()
        return self.sink.wait_messages(before + 1)[before]["data"]

    def test_inbound_mail_loses_the_forged_verdict_fields_and_keeps_the_rest(self):
        data = self.send()
        status = fields(data, "x-spam-status")
        self.assertEqual(len(status), 1, data[:2000])  # Moat's own, not the sender's
        self.assertTrue(status[0].startswith("No, score=0"), status)
        self.assertEqual(fields(data, "x-spam-score"), ["0.0"])
        self.assertEqual(fields(data, "x-moat-uribl"), [])
        self.assertEqual(fields(data, "x-spamd-result"), ["default: False [0.00 / 15.00]"])
        self.assertEqual(fields(data, "subject"), ["forged verdicts"])
        self.assertTrue(data.endswith(b"\r\n\r\nX-Spam-Status: Yes, in the body\r\n"), data[-200:])
        ev = self.moat.wait_log(event="header_removed", header="X-Spam-Status,X-Spam-Score,X-MOAT-URIBL")
        self.assertEqual(ev["count"], 3)
        self.assertTrue(ev["queue_id"])
        self.moat.wait_log(event="accept", queue_id=ev["queue_id"])

    def test_relay_network_mail_keeps_them(self):
        data = self.send(source="127.0.0.9")
        self.assertIn("No, score=-10.0 required=5.0", fields(data, "x-spam-status"))
        self.assertEqual(fields(data, "x-moat-uribl"), ["none"])

    def test_reload_changes_the_list_and_a_broken_one_is_refused(self):
        try:
            self.moat.reload_with(self.moat.config_path,
                                  self.config + '\n[headers]\nstrip_inbound = ["X-Moat-*"]\n')
            data = self.send()
            self.assertIn("No, score=-10.0 required=5.0", fields(data, "x-spam-status"))
            self.assertEqual(fields(data, "x-moat-uribl"), [])
            broken = self.config + '\n[headers]\nstrip_inbound = [\n  "X-Spam-*",\n  "Received",\n]\n'
            line = len(broken.split("\n")) - 2
            ev = self.moat.reload_with(self.moat.config_path, broken, ok=False)
            self.assertIn(f'{self.moat.config_path}:{line}: headers.strip_inbound: "Received" would remove '
                          f'received: fields the message is built on are never stripped', ev["errors"])
            data = self.send()  # the running list ["X-Moat-*"] stays
            self.assertIn("No, score=-10.0 required=5.0", fields(data, "x-spam-status"))
            self.assertEqual(fields(data, "x-moat-uribl"), [])
        finally:
            self.moat.reload_with(self.moat.config_path, self.config)


if __name__ == "__main__":
    unittest.main()
