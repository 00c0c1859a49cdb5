"""[bounce_verification] (BATV, draft-levine-smtp-batv-01 "prvs", as Cisco's bounce
verification): outbound mail from the relay network leaves for a next hop outside the
organisation with a tagged envelope sender that verifies (HMAC-SHA1, computed here in Python
apart from Moat), while mail to relay.domains' internal server keeps the plain sender; a
bounce (MAIL FROM:<>) from the internet to a validly tagged address is taken and delivered to
the plain one; one to the plain address, to an expired or a forged tag is refused 550 5.7.1
at RCPT (or, with action = "tag", taken with X-Moat-BATV: fail); mail with a sender is never
refused by it; exempt recipients take bounces; a missing or short key file and bad values are
refused at FILE:LINE by `moat check` and by a reload, which keeps the running config. The key
rotates by a reload: tags made with a key listed in previous_key_files still verify, new tags
are made with key_file and key_number; `moat scan --rcpt` untags and refuses as serve does at
RCPT. The real daemon on loopback; 127.0.0.1 is the relay network, 127.0.0.2 a client from the
internet."""

import hashlib
import hmac
import json
import os
import smtplib
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import MOAT_BIN, check_config, owned_moat, owned_sink, wait_for  # noqa: E402

SECRET = b"moat-test-secret-0123456789abcdef"
NEW_SECRET = b"the-secret-after-the-rotation-42"
INBOUND = "127.0.0.2"


def today():
    return int(time.time()) // 86400


def prvs(address, secret=SECRET, made=None, max_age=7, key_number=0):
    """The draft's tag, made here independently of Moat: K, DDD (expiry day modulo 1000) and
    the first 3 octets of HMAC-SHA1 over K DDD and the lower-cased mailbox."""
    day = today() if made is None else made
    head = f"{key_number}{(day + max_age) % 1000:03d}"
    sig = hmac.new(secret, (head + address.lower()).encode(), hashlib.sha1).hexdigest()[:6]
    return f"prvs={head}{sig}={address}"


def config_extra(key_file, action="reject"):
    return f"""
[spf]
enabled = false

[dmarc]
enabled = false

[bounce_verification]
enabled = true
key_file = "{key_file}"
exempt_recipients = ["postmaster@example.test", "@reports.example.test"]
action = "{action}"
"""


def message(subject, sender="MAILER-DAEMON@far.test"):
    return (f"From: {sender}\r\nTo: jsmith@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@far.test>\r\n\r\nbounce body\r\n").encode()


class BounceVerificationTest(unittest.TestCase):
    action = "reject"

    @classmethod
    def setUpClass(cls):
        cls.internal = owned_sink(cls)  # the organisation's mailbox server (relay.domains)
        cls.external = owned_sink(cls)  # a smarthost to the internet (everything else)
        cls.moat = owned_moat(cls, networks=["127.0.0.1/32"], relay_domains=("example.test", "reports.example.test"),
                              routes=[(["example.test", "reports.example.test"],
                                       f"smtp:127.0.0.1:{cls.internal.port}"),
                                      (None, f"smtp:127.0.0.1:{cls.external.port}")],
                              start=False, extra=config_extra("batv.key", cls.action))
        cls.key_path = os.path.join(cls.moat.dir, "batv.key")
        with open(cls.key_path, "wb") as f:
            f.write(SECRET + b"\n")  # the trailing newline is not part of the secret
        cls.moat.start()

    def client(self, source):
        s = smtplib.SMTP("127.0.0.1", self.moat.port, timeout=15, source_address=(source, 0))
        s.ehlo("client.test")
        return s

    def send(self, source, sender, rcpts, subject):
        """One message; returns the RCPT replies by recipient, and the queue id if one was taken."""
        s = self.client(source)
        try:
            self.assertEqual(s.mail(sender)[0], 250)
            replies = {r: s.rcpt(r) for r in rcpts}
            qid = None
            if any(code == 250 for code, _ in replies.values()):
                code, text = s.data(message(subject))
                self.assertEqual(code, 250, text)
                qid = text.decode().rsplit(" ", 1)[-1]
            return replies, qid
        finally:
            s.quit()

    def at(self, sink, rcpt, subject):
        """The message `subject` that `sink` got for `rcpt`."""
        def find():
            for m in list(sink.messages):
                if rcpt in m["rcpts"] and f"Subject: {subject}\r\n".encode() in m["data"]:
                    return m
            return None
        return wait_for(find, 30, what=f"{subject!r} for {rcpt}")

    def test_outbound_sender_is_tagged_and_verifies(self):
        replies, qid = self.send("127.0.0.1", "jsmith@example.test", ["friend@far.test"], "outbound tagged")
        m = self.at(self.external, "friend@far.test", "outbound tagged")
        self.assertRegex(m["from"], r"^prvs=0\d{3}[0-9a-f]{6}=jsmith@example\.test$")
        # The tag is the one the draft's recipe gives under the secret, valid for max_age (7d).
        self.assertIn(m["from"], {prvs("jsmith@example.test", made=d) for d in (today(), today() - 1)})
        deliver = self.moat.wait_log(event="deliver", queue_id=qid, to="friend@far.test")
        self.assertIs(deliver.get("batv"), True)
        # The spool, the accept line and the deliver line keep the plain sender.
        self.assertEqual(self.moat.wait_log(event="accept", queue_id=qid)["from"], "jsmith@example.test")

    def test_internal_recipients_see_the_plain_sender(self):
        # One message to an internal and an external recipient: two transactions, only the
        # one leaving the organisation tagged, though both go out by smtp: routes.
        _, qid = self.send("127.0.0.1", "mary@example.test", ["colleague@example.test", "partner@far.test"],
                           "internal plain")
        inside = self.at(self.internal, "colleague@example.test", "internal plain")
        outside = self.at(self.external, "partner@far.test", "internal plain")
        self.assertEqual(inside["from"], "mary@example.test")
        self.assertEqual(outside["from"], prvs("mary@example.test"))
        self.assertNotIn("batv", self.moat.wait_log(event="deliver", queue_id=qid, to="colleague@example.test"))
        # A sender outside bounce_verification.domains is not tagged either.
        self.send("127.0.0.1", "someone@elsewhere.test", ["partner@far.test"], "foreign sender")
        self.assertEqual(self.at(self.external, "partner@far.test", "foreign sender")["from"], "someone@elsewhere.test")

    def test_bounce_to_tagged_address_is_delivered_to_the_user(self):
        tagged = prvs("jsmith@example.test")
        replies, qid = self.send(INBOUND, "", [tagged], "tagged bounce")
        self.assertEqual(replies[tagged][0], 250, replies)
        m = self.at(self.internal, "jsmith@example.test", "tagged bounce")
        self.assertEqual(m["from"], "")
        self.assertNotIn(b"X-Moat-BATV", m["data"])
        acc = self.moat.wait_log(event="accept", queue_id=qid)
        self.assertEqual(acc["to"], ["jsmith@example.test"])
        self.assertEqual(acc["rewritten"], [{"from": tagged, "to": "jsmith@example.test", "where": "batv"}])
        # PRVS= in capitals, and a reply with a sender to the tagged return path, come home too.
        upper = "PRVS=" + tagged[5:].upper().replace("JSMITH@EXAMPLE.TEST", "jsmith@example.test")
        replies, _ = self.send(INBOUND, "", [upper], "upper bounce")
        self.assertEqual(replies[upper][0], 250, replies)
        self.at(self.internal, "jsmith@example.test", "upper bounce")
        replies, _ = self.send(INBOUND, "friend@far.test", [tagged], "reply to return path")
        self.assertEqual(replies[tagged][0], 250, replies)
        self.at(self.internal, "jsmith@example.test", "reply to return path")

    def assertRefused(self, rcpt, subject):
        replies, qid = self.send(INBOUND, "", [rcpt], subject)
        code, text = replies[rcpt]
        self.assertEqual(code, 550, replies)
        self.assertTrue(text.decode().startswith("5.7.1 "), text)
        self.assertIn("bounce verification", text.decode())
        self.assertIsNone(qid)
        return self.moat.wait_log(event="reject", stage="rcpt", reason="bounce verification", to=rcpt)

    def test_bounce_to_plain_address_is_refused(self):
        line = self.assertRefused("jsmith@example.test", "plain bounce")
        self.assertEqual(line["batv"], "none")
        self.assertEqual(line["from"], "")

    def test_expired_and_forged_tags_are_refused(self):
        expired = prvs("jsmith@example.test", made=today() - 8)  # expired yesterday
        self.assertEqual(self.assertRefused(expired, "expired bounce")["batv"], "expired")
        forged = prvs("jsmith@example.test", secret=b"another-secret-nobody-here-knows")
        self.assertEqual(self.assertRefused(forged, "forged bounce")["batv"], "invalid")
        other_user = prvs("jsmith@example.test").replace("jsmith@", "mary@")
        self.assertEqual(self.assertRefused(other_user, "moved tag")["batv"], "invalid")

    def test_mail_with_a_sender_is_unaffected(self):
        replies, qid = self.send(INBOUND, "friend@far.test", ["jsmith@example.test"], "ordinary mail")
        self.assertEqual(replies["jsmith@example.test"][0], 250)
        m = self.at(self.internal, "jsmith@example.test", "ordinary mail")
        self.assertNotIn(b"X-Moat-BATV", m["data"])

    def test_exempt_recipients_take_bounces(self):
        replies, _ = self.send(INBOUND, "", ["postmaster@example.test", "dmarc@reports.example.test"], "exempt")
        self.assertEqual({r: c for r, (c, _) in replies.items()},
                         {"postmaster@example.test": 250, "dmarc@reports.example.test": 250})
        self.at(self.internal, "postmaster@example.test", "exempt")
        # The relay network's own null-sender mail (the internal servers' bounces) is not checked.
        replies, _ = self.send("127.0.0.1", "", ["jsmith@example.test"], "internal bounce")
        self.assertEqual(replies["jsmith@example.test"][0], 250)

    def test_short_key_is_refused_by_reload_and_the_running_one_kept(self):
        try:
            line = self.moat.reload_with(self.key_path, "too short\n", ok=False)
            self.assertTrue(any(e.startswith(f"{self.moat.config_path}:") and "bounce_verification.key_file" in e
                                and "holds 9 bytes" in e for e in line["errors"]), line)
        finally:
            self.moat.reload_with(self.key_path, SECRET.decode() + "\n", ok=True)
        # Still the same secret: a tag made with it is taken.
        tagged = prvs("jsmith@example.test")
        replies, _ = self.send(INBOUND, "", [tagged], "after reload")
        self.assertEqual(replies[tagged][0], 250)

    def scan(self, sender, rcpts):
        path = os.path.join(self.moat.dir, "scan.eml")
        with open(path, "wb") as f:
            f.write(message("scanned"))
        args = ["scan", "--client-ip", INBOUND, "--mail-from", sender]
        for r in rcpts:
            args += ["--rcpt", r]
        return json.loads(self.moat.cli(*args, path).stdout)

    def test_scan_untags_and_refuses_as_serve_does_at_rcpt(self):
        tagged = prvs("jsmith@example.test")
        out = self.scan("", [tagged])
        self.assertEqual(out["to"], ["jsmith@example.test"])
        self.assertEqual(out["rewritten"], [{"from": tagged, "to": "jsmith@example.test", "where": "batv"}])
        self.assertNotIn("refused", out)
        self.assertNotIn("X-Moat-BATV: fail", out["headers"])
        self.assertNotEqual(out["verdict"], "reject", out)
        # The null sender to the plain address: what serve answers at RCPT.
        out = self.scan("", ["jsmith@example.test"])
        if self.action == "reject":
            self.assertEqual(out["verdict"], "reject", out)
            self.assertEqual(out["reply"], "550 5.7.1 <jsmith@example.test>: Recipient address rejected: bounce "
                             "verification failed (no message of ours went out with this return path)")
            self.assertEqual(out["to"], [])
            self.assertEqual(out["refused"], [{"to": "jsmith@example.test", "reply": out["reply"],
                                               "reason": "bounce verification", "batv": "none"}])
        else:
            self.assertEqual(out["to"], ["jsmith@example.test"])
            self.assertIn("X-Moat-BATV: fail", out["headers"])
            self.assertNotIn("refused", out)
        # Beside a good tag, an exempt recipient and a sender: only the plain bounce is refused.
        out = self.scan("", [tagged, "postmaster@example.test"])
        self.assertEqual(out["to"], ["jsmith@example.test", "postmaster@example.test"])
        self.assertNotIn("refused", out)
        out = self.scan("friend@far.test", ["jsmith@example.test"])
        self.assertEqual(out["to"], ["jsmith@example.test"])
        self.assertNotIn("refused", out)


class TagActionTest(BounceVerificationTest):
    """The same with action = "tag": untagged bounces are taken, marked X-Moat-BATV: fail."""
    action = "tag"

    def assertRefused(self, rcpt, subject):
        replies, qid = self.send(INBOUND, "", [rcpt], subject)
        self.assertEqual(replies[rcpt][0], 250, replies)
        self.assertIsNotNone(qid)
        delivered = rcpt  # an invalid tag is not removed: the address goes on as given
        m = self.at(self.internal, delivered, subject)
        self.assertEqual(m["data"].count(b"X-Moat-BATV: fail\r\n"), 1, m["data"][:600])
        return self.moat.wait_log(event="batv_fail", to=rcpt)

    def test_forged_header_from_the_internet_is_not_trusted(self):
        # A sender's own X-Moat-BATV is stripped (headers.strip_inbound): a good bounce has none.
        tagged = prvs("jsmith@example.test")
        s = self.client(INBOUND)
        try:
            s.sendmail("", [tagged], b"X-Moat-BATV: pass\r\nX-Moat-BATV: fail\r\n" + message("forged header"))
        finally:
            s.quit()
        m = self.at(self.internal, "jsmith@example.test", "forged header")
        self.assertNotIn(b"X-Moat-BATV", m["data"])


class KeyRotationTest(unittest.TestCase):
    """The key changed by a reload: mail sent before it keeps its bounces while the old key is
    listed in previous_key_files, and loses them when it is dropped."""

    @classmethod
    def setUpClass(cls):
        cls.internal = owned_sink(cls)
        cls.external = owned_sink(cls)
        cls.moat = owned_moat(cls, networks=["127.0.0.1/32"], relay_domains=("example.test",),
                              routes=[(["example.test"], f"smtp:127.0.0.1:{cls.internal.port}"),
                                      (None, f"smtp:127.0.0.1:{cls.external.port}")],
                              start=False, extra=config_extra("batv.key"))
        for name, secret in (("batv.key", SECRET), ("new.key", NEW_SECRET), ("short.key", b"too short")):
            with open(os.path.join(cls.moat.dir, name), "wb") as f:
                f.write(secret + b"\n")
        with open(cls.moat.config_path) as f:
            cls.config = f.read()
        cls.moat.start()

    send = BounceVerificationTest.send
    client = BounceVerificationTest.client
    at = BounceVerificationTest.at

    def keys(self, lines, ok=True):
        """Reloads with `lines` in place of key_file's line; returns the reload line and the
        number of the config line that names previous_key_files."""
        text = self.config.replace('key_file = "batv.key"\n', lines)
        number = next((i + 1 for i, l in enumerate(text.split("\n")) if l.startswith("previous_key_files")), None)
        return self.moat.reload_with(self.moat.config_path, text, ok=ok), number

    def bounce(self, rcpt, subject):
        replies, _ = self.send(INBOUND, "", [rcpt], subject)
        return replies[rcpt][0]

    def test_rotation_by_reload(self):
        self.send("127.0.0.1", "jsmith@example.test", ["friend@far.test"], "before rotation")
        old_tag = self.at(self.external, "friend@far.test", "before rotation")["from"]
        self.assertIn(old_tag, {prvs("jsmith@example.test", made=d) for d in (today(), today() - 1)})

        self.keys('key_file = "new.key"\nprevious_key_files = ["batv.key"]\nkey_number = 1\n')
        # New mail leaves tagged with the new key and its number.
        self.send("127.0.0.1", "jsmith@example.test", ["friend@far.test"], "after rotation")
        new_tag = self.at(self.external, "friend@far.test", "after rotation")["from"]
        self.assertIn(new_tag, {prvs("jsmith@example.test", secret=NEW_SECRET, made=d, key_number=1)
                                for d in (today(), today() - 1)})
        # The bounce of the mail sent before the reload is taken, as is the new one's.
        self.assertEqual(self.bounce(old_tag, "old bounce kept"), 250)
        self.at(self.internal, "jsmith@example.test", "old bounce kept")
        self.assertEqual(self.moat.wait_log(event="accept", to=["jsmith@example.test"],
                                            rewritten=[{"from": old_tag, "to": "jsmith@example.test",
                                                        "where": "batv"}])["from"], "")
        # Named as a tag of the first previous key, so an admin sees when old tags stop coming.
        self.assertEqual(self.moat.wait_log(event="batv_previous_key", to=old_tag)["previous_key"], 1)
        self.assertEqual(self.bounce(new_tag, "new bounce"), 250)
        self.moat.wait_log(event="accept", to=["jsmith@example.test"], rewritten=[{"from": new_tag,
                                                                                    "to": "jsmith@example.test",
                                                                                    "where": "batv"}])
        self.assertEqual(self.moat.find_logs(event="batv_previous_key", to=new_tag), [])
        # Made with the old key and the new number: K is tried first, not alone.
        self.assertEqual(self.bounce(prvs("mary@example.test", key_number=1), "old key new number"), 250)
        # A key nobody listed still fails.
        self.assertEqual(self.bounce(prvs("jsmith@example.test", secret=b"a-key-never-listed-anywhere-000"),
                                     "unlisted key"), 550)
        # moat scan reads the same keys.
        path = os.path.join(self.moat.dir, "scan.eml")
        with open(path, "wb") as f:
            f.write(message("scanned"))
        out = json.loads(self.moat.cli("scan", "--client-ip", INBOUND, "--mail-from", "", "--rcpt", old_tag,
                                       path).stdout)
        self.assertEqual(out["to"], ["jsmith@example.test"])
        self.assertEqual(out["rewritten"], [{"from": old_tag, "to": "jsmith@example.test", "where": "batv"}])

        # A short previous key is refused at its line; the running keys (old ones too) stay.
        line, number = self.keys('key_file = "new.key"\nprevious_key_files = ["batv.key", "short.key"]\n',
                                 ok=False)
        self.assertTrue(any(e.startswith(f"{self.moat.config_path}:{number}: bounce_verification.previous_key_files:")
                            and "holds 9 bytes" in e for e in line["errors"]), line)
        line, number = self.keys('key_file = "new.key"\nprevious_key_files = ["missing.key"]\n', ok=False)
        self.assertTrue(any(e.startswith(f"{self.moat.config_path}:{number}: bounce_verification.previous_key_files:")
                            and "cannot read" in e for e in line["errors"]), line)
        self.assertEqual(self.bounce(old_tag, "old bounce after refused reload"), 250)
        self.assertEqual(self.bounce(new_tag, "new bounce after refused reload"), 250)

        # The old key dropped: its tags are refused, the new ones still taken.
        self.keys('key_file = "new.key"\nkey_number = 1\n')
        self.assertEqual(self.bounce(old_tag, "old bounce dropped"), 550)
        self.assertEqual(self.moat.wait_log(event="reject", stage="rcpt", reason="bounce verification",
                                            to=old_tag)["batv"], "invalid")
        self.assertEqual(self.bounce(new_tag, "new bounce still"), 250)
        out = json.loads(self.moat.cli("scan", "--client-ip", INBOUND, "--mail-from", "", "--rcpt", old_tag,
                                       path).stdout)
        self.assertEqual(out["verdict"], "reject", out)
        self.assertEqual(out["refused"][0]["batv"], "invalid")


class BadConfigTest(unittest.TestCase):
    def check(self, body, key=None):
        text = ('[server]\nhostname = "mx.moat.test"\nspool_dir = "spool"\n\n[[listener]]\n'
                'address = "127.0.0.1:2525"\n\n[relay]\ndomains = ["example.test"]\n\n'
                '[bounce_verification]\nenabled = true\n' + body)
        path, r = check_config(self, text)
        if key is not None:
            with open(os.path.join(os.path.dirname(path), "batv.key"), "wb") as f:
                f.write(key)
            r = subprocess.run([MOAT_BIN, "check", "-c", path], capture_output=True, text=True, timeout=60)
        return path, r.returncode, r.stdout + r.stderr

    def test_good_config_is_accepted(self):
        _, rc, out = self.check('key_file = "batv.key"\nmax_age = "30d"\naction = "tag"\n'
                                'domains = ["example.test", ".example.test"]\n'
                                'exempt_recipients = ["postmaster@example.test", "@Reports.example.test"]\n',
                                key=SECRET)
        self.assertEqual(rc, 0, out)

    def test_bad_values_are_refused_at_their_line(self):
        path, rc, out = self.check('key_file = "batv.key"\nmax_age = "40d"\naction = "bounce"\n'
                                   'exempt_recipients = ["nobody"]\ndomains = ["not a domain"]\n', key=SECRET)
        self.assertEqual(rc, 1, out)
        for line, key in ((14, "max_age"), (15, "action"), (16, "exempt_recipients"), (17, "domains")):
            self.assertRegex(out, rf"{path}:{line}: bounce_verification\.{key}", out)
        _, rc, out = self.check('key_file = "batv.key"\nmax_age = "36h"\n', key=SECRET)
        self.assertIn(":14: bounce_verification.max_age: must be a whole number of days", out)

    def test_missing_or_short_key_file_is_refused(self):
        path, rc, out = self.check('key_file = "batv.key"\n')
        self.assertEqual(rc, 1, out)
        self.assertIn(f"{path}:13: bounce_verification.key_file: cannot read", out)
        path, rc, out = self.check('key_file = "batv.key"\n', key=b"0123456789abcde\n")
        self.assertEqual(rc, 1, out)
        self.assertIn(f"{path}:13: bounce_verification.key_file:", out)
        self.assertIn("holds 15 bytes", out)
        path, rc, out = self.check('action = "reject"\n')
        self.assertEqual(rc, 1, out)
        self.assertIn("bounce_verification.key_file: is required", out)

    def test_bad_previous_key_files_are_refused_at_their_line(self):
        body = 'key_file = "batv.key"\nprevious_key_files = [\n  "batv.key",\n  "gone.key",\n]\n'
        path, rc, out = self.check(body, key=SECRET)
        self.assertEqual(rc, 1, out)
        self.assertIn(f"{path}:16: bounce_verification.previous_key_files: cannot read", out)
        with open(os.path.join(os.path.dirname(path), "gone.key"), "wb") as f:
            f.write(b"0123456789abcde\n")
        r = subprocess.run([MOAT_BIN, "check", "-c", path], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(f"{path}:16: bounce_verification.previous_key_files:", r.stdout + r.stderr)
        self.assertIn("holds 15 bytes", r.stdout + r.stderr)
        with open(os.path.join(os.path.dirname(path), "gone.key"), "wb") as f:
            f.write(NEW_SECRET)
        r = subprocess.run([MOAT_BIN, "check", "-c", path], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        files = ", ".join(['"batv.key"'] * 10)
        path, rc, out = self.check(f'key_file = "batv.key"\nprevious_key_files = [{files}]\nkey_number = 10\n',
                                   key=SECRET)
        self.assertEqual(rc, 1, out)
        self.assertIn(f"{path}:14: bounce_verification.previous_key_files: names 10 files; at most 9", out)
        self.assertIn(f"{path}:15: bounce_verification.key_number: must be between 0 and 9", out)


if __name__ == "__main__":
    unittest.main()
