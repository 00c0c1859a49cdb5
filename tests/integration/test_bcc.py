"""Blind copies for an archive ([bcc] always, senders, recipients; Postfix's always_bcc,
sender_bcc_maps, recipient_bcc_maps): the real daemon on loopback adds the copies as it queues
a message, with NOTIFY=NEVER on their RCPT to a next hop that offers DSN, by the envelope
sender (+tag and case ignored, the most specific entry, never the null sender) and by each
recipient, each address once and never beside itself as a recipient; a message the filters
refuse gets none, a quarantined one keeps them for its release; the `accept` line names them
in `bcc`; `moat check` refuses a bad file with FILE:LINE, and SIGHUP keeps the running one.
`moat scan` shows the copies serve would add (`bcc`, also in `to`), by the same lookups: none
for a refused message, kept for a quarantined one, each recipient looked up after rewriting."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import MOAT_BIN, Moat, Sink, wait_for  # noqa: E402

SENDERS = """# archive copies by sender
ceo@sender.test      ceo-archive@archive.test
@sender.test         sender-journal@archive.test
@.corp.test          corp-sub@archive.test
@.lab.corp.test      lab@archive.test
"""
RECIPIENTS = """legal@example.test   legal-archive@archive.test
@partner.test        partner-archive@archive.test   # the whole domain
"""
RULES = "body BCC_QUARANTINE /QUARANTINE-ME/\nscore BCC_QUARANTINE 12\nbody BCC_REJECT /REJECT-ME/\nscore BCC_REJECT 20\n"
JOURNAL = "journal@archive.test"


class BccTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = Sink(extensions=Sink.DEFAULT_EXTENSIONS + ("DSN",))
        cls.moat = Moat(routes=[(None, f"smtp:127.0.0.1:{cls.sink.port}")],
                        relay_domains=("example.test", "partner.test"),
                        extra=f'\n[bcc]\nalways = "{JOURNAL}"\nsenders = "bcc-senders"\nrecipients = "bcc-recipients"\n'
                              '\n[rules]\nfiles = ["bcc.cf"]\ntag = 5\nquarantine = 10\nreject = 15\n',
                        start=False)
        cls.senders = os.path.join(cls.moat.dir, "bcc-senders")
        cls.moat.write_files({"bcc-senders": SENDERS, "bcc-recipients": RECIPIENTS, "bcc.cf": RULES})
        cls.moat.start()

    @classmethod
    def tearDownClass(cls):
        cls.moat.cleanup()
        cls.sink.stop()

    def send(self, sender, rcpts, subject, body="body", rcpt_options=()):
        """Sends one message: (code of DATA, queue id)."""
        s = self.moat.smtp()
        s.ehlo()
        code, _ = s.mail(sender)
        self.assertEqual(code, 250)
        for r in rcpts:
            code, _ = s.rcpt(r, list(rcpt_options))
            self.assertEqual(code, 250)
        code, reply = s.data(f"Subject: {subject}\r\nMessage-ID: <{subject}@client.test>\r\n\r\n{body}\r\n".encode())
        s.quit()
        return code, reply.decode().rsplit(" ", 1)[-1]

    def delivered(self, subject, count):
        """The addresses the sink took the message `subject` for, once it took `count` of them."""
        def rcpts():
            with self.sink.lock:
                got = [r for m in self.sink.messages if f"Subject: {subject}\r\n".encode() in m["data"]
                       for r in m["rcpts"]]
            return got if len(got) >= count else None
        return sorted(wait_for(rcpts, 30, what=f"{count} deliveries of {subject}"))

    def rcpt_line(self, address):
        return [c for c in self.sink.commands if c.startswith(f"RCPT TO:<{address}>")]

    def test_always_bcc_copy_arrives_with_notify_never(self):
        code, qid = self.send("someone@other.test", ["bob@example.test"], "always-bcc")
        self.assertEqual(code, 250)
        self.assertEqual(self.delivered("always-bcc", 2), ["bob@example.test", JOURNAL])
        accept = self.moat.wait_log(event="accept", queue_id=qid)
        self.assertEqual(accept["bcc"], [JOURNAL])
        self.assertEqual(accept["to"], ["bob@example.test", JOURNAL])
        # The copy's RCPT says NOTIFY=NEVER; it has no ORCPT of its own, so the next hop is
        # given the address itself, as for every recipient without one (RFC 3461 §4.2).
        self.assertIn(f"RCPT TO:<{JOURNAL}> NOTIFY=NEVER ORCPT=rfc822;{JOURNAL}", self.sink.commands)
        # The recipient the client gave is not touched.
        self.assertNotIn("NOTIFY", " ".join(self.rcpt_line("bob@example.test")))

    def test_sender_map_most_specific_entry_with_tag_and_case(self):
        code, qid = self.send("CEO+News@Sender.TEST", ["bob@example.test"], "sender-ceo")
        self.assertEqual(code, 250)
        self.assertEqual(self.delivered("sender-ceo", 3), ["bob@example.test", "ceo-archive@archive.test", JOURNAL])
        self.assertEqual(self.moat.wait_log(event="accept", queue_id=qid)["bcc"], [JOURNAL, "ceo-archive@archive.test"])
        self.assertEqual(set(self.rcpt_line("ceo-archive@archive.test")),
                         {"RCPT TO:<ceo-archive@archive.test> NOTIFY=NEVER ORCPT=rfc822;ceo-archive@archive.test"})

        code, qid = self.send("anyone@sender.test", ["bob@example.test"], "sender-domain")
        self.assertEqual(self.moat.wait_log(event="accept", queue_id=qid)["bcc"], [JOURNAL, "sender-journal@archive.test"])
        code, qid = self.send("x@pc1.lab.corp.test", ["bob@example.test"], "sender-longest")
        self.assertEqual(self.moat.wait_log(event="accept", queue_id=qid)["bcc"], [JOURNAL, "lab@archive.test"])
        code, qid = self.send("x@mail.corp.test", ["bob@example.test"], "sender-sub")
        self.assertEqual(self.moat.wait_log(event="accept", queue_id=qid)["bcc"], [JOURNAL, "corp-sub@archive.test"])
        code, qid = self.send("x@corp.test", ["bob@example.test"], "sender-parent")  # @.corp.test: subdomains only
        self.assertEqual(self.moat.wait_log(event="accept", queue_id=qid)["bcc"], [JOURNAL])
        self.assertEqual(self.delivered("sender-parent", 2), ["bob@example.test", JOURNAL])

    def test_the_null_sender_matches_no_entry_but_gets_the_always_copy(self):
        code, qid = self.send("", ["bob@example.test"], "null-sender")
        self.assertEqual(code, 250)
        self.assertEqual(self.moat.wait_log(event="accept", queue_id=qid)["bcc"], [JOURNAL])
        self.assertEqual(self.delivered("null-sender", 2), ["bob@example.test", JOURNAL])

    def test_recipient_map_adds_each_matching_recipients_copy_once(self):
        code, qid = self.send("someone@other.test", ["Legal@example.test", "carol@partner.test", "dave@PARTNER.test"],
                              "recipients-map")
        self.assertEqual(code, 250)
        accept = self.moat.wait_log(event="accept", queue_id=qid)
        self.assertEqual(accept["bcc"], [JOURNAL, "legal-archive@archive.test", "partner-archive@archive.test"])
        got = self.delivered("recipients-map", 6)
        self.assertEqual(got, sorted(["Legal@example.test", "carol@partner.test", "dave@PARTNER.test", JOURNAL,
                                      "legal-archive@archive.test", "partner-archive@archive.test"]))
        self.assertEqual(set(self.rcpt_line("partner-archive@archive.test")),
                         {"RCPT TO:<partner-archive@archive.test> NOTIFY=NEVER ORCPT=rfc822;partner-archive@archive.test"})

    def test_no_duplicate_when_the_bcc_address_is_already_a_recipient(self):
        # The same address by filters::recipientKey: the domain's case is folded (the local
        # part's is not, RFC 5321 §2.4, so Journal@ would be another recipient).
        code, qid = self.send("someone@other.test", ["bob@example.test", "journal@ARCHIVE.test"], "already-rcpt",
                              rcpt_options=["NOTIFY=SUCCESS"])
        self.assertEqual(code, 250)
        accept = self.moat.wait_log(event="accept", queue_id=qid)
        self.assertNotIn("bcc", accept)
        self.assertEqual(accept["to"], ["bob@example.test", "journal@ARCHIVE.test"])
        self.assertEqual(self.delivered("already-rcpt", 2), ["bob@example.test", "journal@ARCHIVE.test"])
        # The recipient the client gave keeps its own NOTIFY.
        self.assertIn("RCPT TO:<journal@ARCHIVE.test> NOTIFY=SUCCESS ORCPT=rfc822;journal@ARCHIVE.test",
                      self.sink.commands)

    def test_a_rejected_message_gets_no_copy_and_a_quarantined_one_keeps_them(self):
        before = len(self.sink.messages)
        s = self.moat.smtp()
        s.ehlo()
        s.mail("ceo@sender.test")
        s.rcpt("bob@example.test")
        code, _ = s.data(b"Subject: rejected-bcc\r\n\r\nREJECT-ME\r\n")
        s.quit()
        self.assertEqual(code, 550)
        rej = self.moat.wait_log(event="reject", stage="data", verdict="reject")
        self.assertNotIn("bcc", rej)
        self.assertNotIn(JOURNAL, rej["to"])

        code, qid = self.send("ceo@sender.test", ["bob@example.test"], "quarantined-bcc", body="QUARANTINE-ME")
        self.assertEqual(code, 250)
        accept = self.moat.wait_log(event="accept", queue_id=qid)
        self.assertEqual(accept["verdict"], "quarantine")
        self.assertEqual(accept["bcc"], [JOURNAL, "ceo-archive@archive.test"])
        self.moat.cli("queue", "release", qid)
        self.assertEqual(self.delivered("quarantined-bcc", 3),
                         ["bob@example.test", "ceo-archive@archive.test", JOURNAL])
        with self.sink.lock:
            self.assertFalse([m for m in self.sink.messages[before:] if b"Subject: rejected-bcc" in m["data"]])

    def scan(self, sender, rcpts, body="body"):
        """`moat scan` from the client the tests send from (127.0.0.1): its JSON."""
        path = os.path.join(self.moat.dir, "scan.eml")
        with open(path, "w") as f:
            f.write(f"From: {sender or 'x@other.test'}\nSubject: scanned\n\n{body}\n")
        args = ["scan", "--client-ip", "127.0.0.1", "--mail-from", sender]
        for r in rcpts:
            args += ["--rcpt", r]
        return json.loads(self.moat.cli(*args, path).stdout)

    def test_scan_shows_the_copies_serve_adds(self):
        cases = [  # (sender, recipients, the copies)
            ("someone@other.test", ["bob@example.test"], [JOURNAL]),  # bcc.always
            ("CEO+News@Sender.TEST", ["bob@example.test"], [JOURNAL, "ceo-archive@archive.test"]),  # sender map
            ("x@pc1.lab.corp.test", ["bob@example.test"], [JOURNAL, "lab@archive.test"]),
            ("someone@other.test", ["Legal@example.test", "carol@partner.test", "dave@PARTNER.test"],  # recipient map
             [JOURNAL, "legal-archive@archive.test", "partner-archive@archive.test"]),
            ("", ["bob@example.test"], [JOURNAL]),  # the null sender matches no entry
            ("someone@other.test", ["bob@example.test", "journal@ARCHIVE.test"], []),  # none: already a recipient
        ]
        for i, (sender, rcpts, copies) in enumerate(cases):
            with self.subTest(sender=sender, rcpts=rcpts):
                out = self.scan(sender, rcpts)
                self.assertEqual(out["verdict"], "continue", out)
                self.assertEqual(out["bcc"], copies)
                self.assertEqual(out["to"], rcpts + copies)
                # What serve queues for the same envelope: the accept line's `to` and `bcc`.
                code, qid = self.send(sender, rcpts, f"scan-parity-{i}")
                self.assertEqual(code, 250)
                accept = self.moat.wait_log(event="accept", queue_id=qid)
                self.assertEqual(accept.get("bcc", []), out["bcc"])
                self.assertEqual(accept["to"], out["to"])

    def test_scan_shows_no_copy_for_a_rejected_message_and_keeps_them_for_a_quarantined_one(self):
        out = self.scan("ceo@sender.test", ["legal@example.test"], body="REJECT-ME")
        self.assertEqual(out["verdict"], "reject", out)
        self.assertEqual(out["bcc"], [])
        self.assertEqual(out["to"], ["legal@example.test"])
        out = self.scan("ceo@sender.test", ["legal@example.test"], body="QUARANTINE-ME")
        self.assertEqual(out["verdict"], "quarantine", out)
        self.assertEqual(out["bcc"], [JOURNAL, "ceo-archive@archive.test", "legal-archive@archive.test"])

    def test_sighup_rereads_the_file_and_keeps_the_running_one_when_broken(self):
        try:
            ev = self.moat.reload_with(self.senders, SENDERS + "bad-key archive@archive.test\n"
                                       "ceo@sender.test twice@archive.test\n", ok=False)
            errors = "\n".join(ev["errors"])
            self.assertIn(self.senders + ":6:", errors)
            self.assertIn(self.senders + ":7:", errors)
            code, qid = self.send("ceo@sender.test", ["bob@example.test"], "after-bad-reload")
            self.assertEqual(self.moat.wait_log(event="accept", queue_id=qid)["bcc"],
                             [JOURNAL, "ceo-archive@archive.test"])
            self.moat.reload_with(self.senders, "ceo@sender.test new-ceo-archive@archive.test\n")
            code, qid = self.send("ceo@sender.test", ["bob@example.test"], "after-good-reload")
            self.assertEqual(self.moat.wait_log(event="accept", queue_id=qid)["bcc"],
                             [JOURNAL, "new-ceo-archive@archive.test"])
        finally:
            self.moat.reload_with(self.senders, SENDERS)


def config_dir(test, rest, files):
    """A folder (removed after `test`) with `files` and a moat.toml that ends its [relay] with
    `rest`: (folder, config path)."""
    d = tempfile.mkdtemp(prefix="moat-bcc-")
    test.addCleanup(shutil.rmtree, d, True)
    for name, text in files.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    path = os.path.join(d, "moat.toml")
    with open(path, "w") as f:
        f.write('[server]\nhostname = "mx.test"\nspool_dir = "spool"\nlog_file = "moat.log"\n'
                '[[listener]]\naddress = "127.0.0.1:0"\n[relay]\ndomains = ["example.test"]\n' + rest)
    return d, path


class BccCheckTest(unittest.TestCase):
    def check(self, bcc, files):
        d, path = config_dir(self, '[[route]]\nto = ["maildir:mail"]\n' + bcc, files)
        return d, subprocess.run([MOAT_BIN, "check", "-c", path], capture_output=True, text=True, timeout=60)

    def test_check_accepts_good_files(self):
        _, r = self.check('[bcc]\nalways = "j@archive.test"\nsenders = "s"\nrecipients = "r"\n',
                          {"s": SENDERS, "r": RECIPIENTS})
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_check_refuses_bad_lines_with_file_and_line(self):
        d, r = self.check('[bcc]\nsenders = "s"\nrecipients = "r"\n',
                          {"s": "ok@sender.test a@archive.test\nnot-a-key a@archive.test\n",
                           "r": "@example.test\n@partner.test x@archive.test\n@PARTNER.test y@archive.test\n"
                                "u@example.test @archive.test\n"})
        self.assertEqual(r.returncode, 1)
        s, rc = os.path.join(d, "s"), os.path.join(d, "r")
        self.assertIn(f'{s}:2: "not-a-key" is not an address, @domain or @.domain', r.stderr)
        self.assertIn(f'{rc}:1: expected "KEY BCC-ADDRESS"', r.stderr)
        self.assertIn(f'{rc}:3: "@PARTNER.test" is already given at line 2', r.stderr)
        self.assertIn(f'{rc}:4: "@archive.test" is not an address', r.stderr)
        self.assertNotIn(f"{s}:1:", r.stderr)

    def test_check_refuses_an_always_that_is_not_an_address_and_a_missing_file(self):
        d, r = self.check('[bcc]\nalways = "@archive.test"\nsenders = "missing"\n', {})
        self.assertEqual(r.returncode, 1)
        toml = os.path.join(d, "moat.toml")
        self.assertIn(f'{toml}:12: bcc.always: "@archive.test" is not an address', r.stderr)
        self.assertIn("bcc.senders", r.stderr)


class BccScanTest(unittest.TestCase):
    """`moat scan` on configs of its own, no daemon: `bcc` is always there."""

    def scan(self, config, files, sender, rcpts):
        d, path = config_dir(self, 'networks = ["127.0.0.0/8"]\n' + config + '[[route]]\nto = ["maildir:mail"]\n',
                             files)
        msg = os.path.join(d, "m.eml")
        with open(msg, "w") as f:
            f.write("From: a@sender.test\nSubject: hi\n\nhello\n")
        args = ["scan", "-c", path, "--client-ip", "127.0.0.1", "--mail-from", sender]
        for r in rcpts:
            args += ["--rcpt", r]
        r = subprocess.run([MOAT_BIN, *args, msg], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def test_without_bcc_the_field_is_an_empty_list(self):
        out = self.scan("", {}, "ceo@sender.test", ["bob@example.test"])
        self.assertEqual(out["bcc"], [])
        self.assertEqual(out["to"], ["bob@example.test"])

    def test_maps_without_a_matching_entry_give_none(self):
        out = self.scan('[bcc]\nsenders = "s"\nrecipients = "r"\n', {"s": SENDERS, "r": RECIPIENTS},
                        "someone@other.test", ["bob@example.test"])
        self.assertEqual(out["bcc"], [])
        self.assertEqual(out["to"], ["bob@example.test"])

    def test_the_recipient_map_is_looked_up_after_rewriting(self):
        # relay.rewrite takes legal@example.test in as legal@corp.internal at RCPT: the entry for
        # the queued address counts, not the one for the address given.
        out = self.scan('rewrite = "rewrite"\n[bcc]\nrecipients = "r"\n',
                        {"rewrite": "legal@corp.internal legal@example.test\n",
                         "r": "legal@corp.internal internal-archive@archive.test\n"
                              "legal@example.test external-archive@archive.test\n"},
                        "someone@other.test", ["legal@example.test"])
        self.assertEqual(out["to"], ["legal@corp.internal", "internal-archive@archive.test"])
        self.assertEqual(out["rewritten"], [{"from": "legal@example.test", "to": "legal@corp.internal",
                                             "where": "rcpt"}])
        self.assertEqual(out["bcc"], ["internal-archive@archive.test"])

    def test_the_sender_map_is_looked_up_after_outbound_rewriting(self):
        # Outbound mail leaves as john.smith@example.test: that is the key that counts, as Postfix
        # looks sender_bcc_maps up after canonical_maps.
        out = self.scan('rewrite = "rewrite"\n[bcc]\nsenders = "s"\n',
                        {"rewrite": "jsmith@corp.internal john.smith@example.test\n",
                         "s": "jsmith@corp.internal internal-archive@archive.test\n"
                              "john.smith@example.test sent-archive@archive.test\n"},
                        "jsmith@corp.internal", ["bob@outside.test"])
        self.assertEqual(out["from"], "john.smith@example.test")
        self.assertEqual(out["bcc"], ["sent-archive@archive.test"])


if __name__ == "__main__":
    unittest.main()
