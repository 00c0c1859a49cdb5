"""Address rewriting ([relay] rewrite), as Exchange Edge Transport's address rewriting and
Postfix's canonical maps: the real daemon on loopback, a sink the test owns as the next hop.
Outbound mail (a relay client, a recipient outside relay.domains) leaves with its envelope
sender and From/Sender/Reply-To/To/Cc (and Resent-) addresses in their external form, the rest of the message
byte for byte as sent, and a DKIM signature over the rewritten From; inbound recipients
are rewritten at RCPT (by `moat scan` too) and in To/Cc/Resent-To/Resent-Cc, except by outbound-only entries; exact entries win over
domain entries; the accept line lists what changed; `moat queue show` lists the header edits;
`moat check` and SIGHUP refuse a broken map as FILE:LINE, SIGHUP keeping the running one."""

import json
import os
import re
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from authzone import header_values, rsa_key, txt_lookup  # noqa: E402
from harness import check_config, class_temp_dir, free_port, owned_moat, owned_sink, wait_for  # noqa: E402

import dkim  # noqa: E402  (python3-dkim)

MAP = """# internal               external
jsmith@corp.internal       john.smith@example.com
@corp.internal             @example.com
@.corp.internal            @example.com        outbound-only   # every subdomain
press@corp.internal        media@example.com   outbound-only
@.lab.internal             @lab.example.com    outbound-only
"""


class AddressRewriteTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = class_temp_dir(cls, "moat-rewrite-")
        cls.key = os.path.join(cls.tmp, "s1.pem")
        cls.txt = rsa_key(cls.key)
        cls.sink = owned_sink(cls)
        cls.sink.rcpt_reply = lambda a: "550 5.1.1 no such user" if a == "nobody@far.test" else "250 2.1.5 ok"
        cls.dead = free_port()  # a next hop that is never there: its mail stays queued
        # 127.0.0.0/8 is the relay network: mail to the internet from it is outbound, mail
        # to relay.domains inbound (the filters that inbound mail from the internet gets,
        # SPF and DMARC, would need DNS, and have nothing to do with rewriting).
        cls.moat = owned_moat(cls, routes=[("stuck.test", f"smtp:127.0.0.1:{cls.dead}"),
                                           (None, f"smtp:127.0.0.1:{cls.sink.port}")],
                              relay_domains=("example.com", "lab.example.com"), networks=["127.0.0.0/8"],
                              relay_extra='rewrite = "rewrite.map"', start=False,
                              extra=f'\n[[dkim.sign]]\ndomain = "example.com"\nselector = "s1"\n'
                                    f'key_file = "{cls.key}"\n')
        cls.map = os.path.join(cls.moat.dir, "rewrite.map")
        with open(cls.map, "w") as f:
            f.write(MAP)
        cls.moat.start()

    def send(self, mail_from, rcpts, raw):
        """One message; returns (the accept line, the sink's copy)."""
        before = len(self.sink.messages)
        s = self.moat.smtp()
        try:
            self.assertEqual(s.sendmail(mail_from, rcpts, raw), {})
        finally:
            s.quit()
        msg = self.sink.wait_messages(before + 1)[before]
        qid = re.search(rb"\bid ([0-9A-Z]+)", msg["data"]).group(1).decode()
        return self.moat.wait_log(event="accept", queue_id=qid, timeout=10), msg

    @staticmethod
    def body_of(data):
        """The message as the client sent it (or rewritten): what follows the headers Moat
        prepends (Received, Authentication-Results, DKIM-Signature); every message sent
        here begins with its From field."""
        return data[data.index(b"\r\nFrom: ") + 2:]

    def test_outbound_envelope_sender_and_from_fields_are_rewritten_and_nothing_else(self):
        raw = (b"From: \"Smith, John\" <jsmith@corp.internal> (work)\r\n"
               b"Sender: Mary Jones <MARY.Jones@Corp.Internal>\r\n"
               b"Reply-To: help@desk.corp.internal, other@far.test\r\n"
               b"To: Friend <friend@far.test>\r\n"
               b"Cc: colleague@corp.internal\r\n"
               b"Subject: jsmith@corp.internal writes\r\n"
               b"Message-ID: <out-1@corp.internal>\r\n"
               b"\r\n"
               b"From: jsmith@corp.internal, in the body\r\n"
               b"mail me at jsmith@corp.internal\r\n")
        acc, msg = self.send("jsmith@corp.internal", ["friend@far.test"], raw)
        self.assertEqual(msg["from"], "john.smith@example.com")
        self.assertEqual(msg["rcpts"], ["friend@far.test"])
        expected = raw.replace(b"<jsmith@corp.internal> (work)", b"<john.smith@example.com> (work)", 1) \
                      .replace(b"<MARY.Jones@Corp.Internal>", b"<MARY.Jones@example.com>", 1) \
                      .replace(b"help@desk.corp.internal,", b"help@example.com,", 1) \
                      .replace(b"Cc: colleague@corp.internal", b"Cc: colleague@example.com", 1)
        self.assertEqual(self.body_of(msg["data"]), expected)  # byte for byte, the rest as sent
        self.assertEqual(acc["from"], "john.smith@example.com")
        self.assertEqual(acc["rewritten"], [
            {"from": "jsmith@corp.internal", "to": "john.smith@example.com", "where": "mail_from"},
            {"from": "jsmith@corp.internal", "to": "john.smith@example.com", "where": "header:From"},
            {"from": "MARY.Jones@Corp.Internal", "to": "MARY.Jones@example.com", "where": "header:Sender"},
            {"from": "help@desk.corp.internal", "to": "help@example.com", "where": "header:Reply-To"},
            {"from": "colleague@corp.internal", "to": "colleague@example.com", "where": "header:Cc"}])

    def test_resent_fields_are_rewritten_as_their_counterparts(self):
        # RFC 5322 §3.6.6: a message passed on (resent) by an internal user names them in the
        # Resent- fields, which leak the internal address as From/Sender/To/Cc would.
        raw = (b"Resent-From: \"Smith, John\" <jsmith@corp.internal>\r\n"
               b"Resent-Sender: mary@corp.internal\r\n"
               b"Resent-To: friend@far.test\r\n"
               b"Resent-Cc: colleague@corp.internal\r\n"
               b"Resent-Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
               b"From: someone@far.test\r\n"
               b"To: jsmith@corp.internal\r\n"
               b"Subject: passed on\r\n"
               b"\r\n"
               b"Resent-From: jsmith@corp.internal in the body\r\n")
        acc, msg = self.send("jsmith@corp.internal", ["friend@far.test"], raw)
        expected = raw.replace(b"<jsmith@corp.internal>", b"<john.smith@example.com>", 1) \
                      .replace(b"Resent-Sender: mary@corp.internal", b"Resent-Sender: mary@example.com", 1) \
                      .replace(b"Resent-Cc: colleague@corp.internal", b"Resent-Cc: colleague@example.com", 1) \
                      .replace(b"To: jsmith@corp.internal", b"To: john.smith@example.com", 1)
        data = msg["data"]
        self.assertEqual(data[data.index(b"\r\nResent-From: ") + 2:], expected)
        self.assertEqual([r["where"] for r in acc["rewritten"]],
                         ["mail_from", "header:Resent-From", "header:Resent-Sender", "header:Resent-Cc",
                          "header:To"])
        # Inbound, the recipients' Resent- fields go back to the internal form; Resent-From
        # (a sender outside) stays.
        raw = (b"Resent-From: john.smith@example.com\r\n"
               b"Resent-To: John <John.Smith@Example.com>\r\n"
               b"Resent-Cc: mary@example.com\r\n"
               b"From: someone@far.test\r\n"
               b"Subject: resent inbound\r\n\r\nx\r\n")
        acc, msg = self.send("someone@far.test", ["john.smith@example.com"], raw)
        data = msg["data"]
        expected = raw.replace(b"<John.Smith@Example.com>", b"<jsmith@corp.internal>", 1) \
                      .replace(b"Resent-Cc: mary@example.com", b"Resent-Cc: mary@corp.internal", 1)
        self.assertEqual(data[data.index(b"\r\nResent-From: ") + 2:], expected)
        self.assertEqual([r["where"] for r in acc["rewritten"]], ["rcpt", "header:Resent-To", "header:Resent-Cc"])

    def test_scan_rewrites_the_recipients_as_serve_does_at_rcpt(self):
        raw = (b"From: Someone <someone@far.test>\r\nTo: John <john.smith@example.com>\r\n"
               b"Subject: scanned\r\n\r\nx\r\n")
        path = os.path.join(self.tmp, "scan.eml")
        with open(path, "wb") as f:
            f.write(raw)
        # From the relay network to relay domains, as send() does: inbound, without SPF.
        r = self.moat.cli("scan", "--client-ip", "127.0.0.1", "--mail-from", "someone@far.test",
                          "--rcpt", "John.Smith@Example.com", "--rcpt", "x@lab.example.com", path)
        out = json.loads(r.stdout)
        # What serve takes at RCPT for the same message (the accept line's to and rewritten).
        acc, msg = self.send("someone@far.test", ["John.Smith@Example.com", "x@lab.example.com"], raw)
        self.assertEqual(out["to"], ["jsmith@corp.internal", "x@lab.example.com"])
        self.assertEqual(out["to"], acc["to"])
        self.assertEqual(out["to"], msg["rcpts"])
        self.assertEqual(out["rewritten"], acc["rewritten"])
        self.assertEqual(out["rewritten"][0], {"from": "John.Smith@Example.com", "to": "jsmith@corp.internal",
                                               "where": "rcpt"})
        self.assertEqual(out["verdict"], "continue")
        self.assertEqual(out["filters"]["address_rewrite"]["detail"]["direction"], "inbound")
        # Outbound (a relay client to a recipient outside relay.domains): nothing at RCPT.
        r = self.moat.cli("scan", "--client-ip", "127.0.0.1", "--mail-from", "jsmith@corp.internal",
                          "--rcpt", "friend@far.test", path)
        out = json.loads(r.stdout)
        self.assertEqual(out["to"], ["friend@far.test"])
        self.assertEqual(out["from"], "john.smith@example.com")
        self.assertEqual(out["rewritten"], [{"from": "jsmith@corp.internal", "to": "john.smith@example.com",
                                             "where": "mail_from"}])

    def test_outbound_message_is_signed_for_the_rewritten_from_domain(self):
        raw = (b"From: John <jsmith@corp.internal>\r\nTo: friend@far.test\r\nSubject: signed after rewriting\r\n"
               b"\r\nbody\r\n")
        acc, msg = self.send("jsmith@corp.internal", ["friend@far.test"], raw)
        self.assertIn("rewritten", acc)
        data = msg["data"]
        self.assertEqual(header_values(data, "From"), ["John <john.smith@example.com>"])
        sigs = header_values(data, "DKIM-Signature")
        self.assertEqual(len(sigs), 1, data[:2000])
        self.assertIn("d=example.com", sigs[0].replace(" ", ""))
        dnsfunc = txt_lookup({"s1._domainkey.example.com": self.txt})
        self.assertTrue(dkim.verify(data, dnsfunc=dnsfunc), data[:2000])
        # The signature covers the rewritten From: the internal one put back fails it.
        self.assertFalse(dkim.verify(data.replace(b"john.smith@example.com", b"jsmith@corp.internal"),
                                     dnsfunc=dnsfunc))

    def test_inbound_recipients_and_to_cc_are_rewritten(self):
        raw = (b"From: Someone <someone@far.test>\r\n"
               b"To: John <John.Smith@Example.com>, friend@far.test\r\n"
               b"Cc: mary@example.com\r\n"
               b"Reply-To: john.smith@example.com\r\n"
               b"Subject: inbound\r\n\r\nhello john.smith@example.com\r\n")
        acc, msg = self.send("someone@far.test", ["John.Smith@Example.com", "mary@example.com"], raw)
        # The exact entry wins over @corp.internal's: jsmith@, not John.Smith@.
        self.assertEqual(msg["rcpts"], ["jsmith@corp.internal", "mary@corp.internal"])
        self.assertEqual(msg["from"], "someone@far.test")
        expected = raw.replace(b"<John.Smith@Example.com>", b"<jsmith@corp.internal>", 1) \
                      .replace(b"Cc: mary@example.com", b"Cc: mary@corp.internal", 1)
        self.assertEqual(self.body_of(msg["data"]), expected)
        # Received: names the address the client gave, as for aliases.
        self.assertNotIn(b"for <", msg["data"])  # two recipients: no "for"
        self.assertEqual(acc["to"], ["jsmith@corp.internal", "mary@corp.internal"])
        self.assertEqual(acc["rewritten"], [
            {"from": "John.Smith@Example.com", "to": "jsmith@corp.internal", "where": "rcpt"},
            {"from": "mary@example.com", "to": "mary@corp.internal", "where": "rcpt"},
            {"from": "John.Smith@Example.com", "to": "jsmith@corp.internal", "where": "header:To"},
            {"from": "mary@example.com", "to": "mary@corp.internal", "where": "header:Cc"}])

    def test_outbound_only_entries_are_not_applied_inbound(self):
        raw = (b"From: someone@far.test\r\nTo: media@example.com, x@lab.example.com\r\nSubject: press\r\n"
               b"\r\nbody\r\n")
        acc, msg = self.send("someone@far.test", ["media@example.com", "x@lab.example.com"], raw)
        # media@example.com is press@corp.internal's outbound form only: inbound, the
        # domain entry applies; @.lab.internal is outbound-only: x@lab.example.com stays.
        self.assertEqual(msg["rcpts"], ["media@corp.internal", "x@lab.example.com"])
        self.assertIn(b"\r\nTo: media@corp.internal, x@lab.example.com\r\n", msg["data"])
        # And outbound they do apply.
        acc, msg = self.send("press@corp.internal", ["friend@far.test"],
                             b"From: press@corp.internal\r\nSender: pc@host.lab.internal\r\nSubject: out\r\n\r\nx\r\n")
        self.assertEqual(msg["from"], "media@example.com")
        self.assertIn(b"\r\nFrom: media@example.com\r\nSender: pc@lab.example.com\r\n", msg["data"])

    def test_one_recipient_received_names_the_address_given(self):
        acc, msg = self.send("someone@far.test", ["john.smith@example.com"],
                             b"From: someone@far.test\r\nSubject: one\r\n\r\nx\r\n")
        self.assertEqual(msg["rcpts"], ["jsmith@corp.internal"])
        self.assertIn(b"\tfor <john.smith@example.com>;", msg["data"])

    def test_header_moat_cannot_parse_is_left_alone_and_logged(self):
        raw = b"From: \"John <jsmith@corp.internal>\r\nTo: friend@far.test\r\nSubject: broken from\r\n\r\nx\r\n"
        acc, msg = self.send("jsmith@corp.internal", ["friend@far.test"], raw)
        self.assertEqual(msg["from"], "john.smith@example.com")  # the envelope still is
        self.assertEqual(self.body_of(msg["data"]), raw)
        ev = self.moat.wait_log(event="rewrite_skipped", queue_id=acc["queue_id"], timeout=10)
        self.assertEqual(ev["level"], "warn")
        self.assertEqual(ev["header"], "From")
        self.assertEqual(acc["rewritten"], [{"from": "jsmith@corp.internal", "to": "john.smith@example.com",
                                             "where": "mail_from"}])
        # Inbound, the same is only noted: spam's broken To: lines are everyday.
        raw = b"From: someone@far.test\r\nTo: \"Team <john.smith@example.com>\r\nSubject: broken to\r\n\r\nx\r\n"
        acc, msg = self.send("someone@far.test", ["john.smith@example.com"], raw)
        self.assertEqual(msg["rcpts"], ["jsmith@corp.internal"])
        self.assertEqual(self.body_of(msg["data"]), raw)
        ev = self.moat.wait_log(event="rewrite_skipped", queue_id=acc["queue_id"], timeout=10)
        self.assertEqual((ev["level"], ev["header"]), ("info", "To"))

    def test_mail_between_relay_domains_is_not_outbound(self):
        # From the relay network to our own domain only: not leaving, so the sender stays.
        acc, msg = self.send("jsmith@corp.internal", ["mary@example.com"],
                             b"From: jsmith@corp.internal\r\nTo: mary@example.com\r\nSubject: internal\r\n\r\nx\r\n")
        self.assertEqual(msg["from"], "jsmith@corp.internal")
        self.assertEqual(msg["rcpts"], ["mary@corp.internal"])
        self.assertIn(b"\r\nFrom: jsmith@corp.internal\r\nTo: mary@corp.internal\r\n", msg["data"])

    def test_queue_show_lists_the_header_edits(self):
        s = self.moat.smtp()
        try:
            s.sendmail("jsmith@corp.internal", ["someone@stuck.test"],
                       b"From: jsmith@corp.internal\r\nSubject: stuck\r\n\r\nx\r\n")
        finally:
            s.quit()
        acc = self.moat.wait_log(event="accept", to=["someone@stuck.test"], timeout=10)
        shown = json.loads(self.moat.cli("queue", "show", acc["queue_id"], "--json").stdout)
        self.assertEqual([e["why"] for e in shown["edits"]],
                         ["header:From jsmith@corp.internal rewritten to john.smith@example.com"])
        self.assertEqual(shown["from"], "john.smith@example.com")
        self.moat.cli("queue", "delete", acc["queue_id"])


    def test_a_bounce_for_a_rewritten_sender_goes_to_the_internal_address(self):
        before = len(self.sink.messages)
        s = self.moat.smtp()
        try:
            s.sendmail("jsmith@corp.internal", ["nobody@far.test"],
                       b"From: jsmith@corp.internal\r\nSubject: to bounce\r\n\r\nx\r\n")
        finally:
            s.quit()
        dsn = wait_for(lambda: [m for m in self.sink.messages[before:] if m["from"] == ""], 30,
                       what="the DSN at the sink")[0]
        self.assertEqual(dsn["rcpts"], ["jsmith@corp.internal"])
        self.assertIn(b"nobody@far.test", dsn["data"])


CHECKED = '[[listener]]\naddress = "127.0.0.1:0"\n[relay]\ndomains = ["example.com"]\nrewrite = "{path}"\n'


class RewriteMapErrorsTest(unittest.TestCase):
    BROKEN = ("jsmith@corp.internal john.smith@example.com\n"
              "@corp.internal john@example.com\n"        # an address beside a domain
              "@.corp.internal @example.com\n")          # a wildcard both ways

    def test_moat_check_names_every_bad_line(self):
        d = tempfile.mkdtemp(prefix="moat-rewrite-check-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "map")
        with open(path, "w") as f:
            f.write(self.BROKEN)
        _, r = check_config(self, CHECKED.format(path=path))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        out = r.stdout + r.stderr
        self.assertIn(f"{path}:2: \"@corp.internal\" and \"john@example.com\": both sides must be addresses", out)
        self.assertIn(f"{path}:3: \"@.corp.internal\" stands for every subdomain", out)

    def test_moat_check_warns_about_a_two_way_entry_outside_relay_domains(self):
        d = tempfile.mkdtemp(prefix="moat-rewrite-check-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "map")
        with open(path, "w") as f:
            f.write("@corp.internal @example.com\n@other.internal @elsewhere.test\n"
                    "@third.internal @elsewhere.test outbound-only\n")
        _, r = check_config(self, CHECKED.format(path=path))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        out = r.stdout + r.stderr
        self.assertIn(f"{path}:2: warning: \"@elsewhere.test\" is not in relay.domains", out)
        self.assertNotIn(f"{path}:1:", out)
        self.assertNotIn(f"{path}:3:", out)

    def test_sighup_with_a_broken_map_keeps_the_running_one(self):
        sink = owned_sink(self)
        moat = owned_moat(self, routes=[(None, f"smtp:127.0.0.1:{sink.port}")], relay_domains=("example.com",),
                          relay_extra='rewrite = "rewrite.map"', start=False)
        path = os.path.join(moat.dir, "rewrite.map")
        with open(path, "w") as f:
            f.write("jsmith@corp.internal john.smith@example.com\n")
        moat.start()

        def rcpts_of(address):
            before = len(sink.messages)
            s = moat.smtp()
            try:
                s.sendmail("someone@far.test", [address], b"Subject: x\r\n\r\nx\r\n")
            finally:
                s.quit()
            return sink.wait_messages(before + 1)[before]["rcpts"]

        self.assertEqual(rcpts_of("john.smith@example.com"), ["jsmith@corp.internal"])
        line = moat.reload_with(path, "jsmith@corp.internal john.smith@example.com\n" + self.BROKEN, ok=False)
        self.assertTrue(any(e.startswith(f"{path}:3: ") for e in line["errors"]), line)
        self.assertTrue(any(e.startswith(f"{path}:4: ") for e in line["errors"]), line)
        self.assertEqual(rcpts_of("john.smith@example.com"), ["jsmith@corp.internal"])  # the old map
        moat.reload_with(path, "jsmith@corp.internal john@example.com\n", ok=True)
        self.assertEqual(rcpts_of("john@example.com"), ["jsmith@corp.internal"])  # the new one
        self.assertEqual(rcpts_of("john.smith@example.com"), ["john.smith@example.com"])


if __name__ == "__main__":
    unittest.main()
