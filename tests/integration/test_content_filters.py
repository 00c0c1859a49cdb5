"""Content filters through the real daemon: antivirus (real libclamav with an EICAR
signature database the test writes), regex spam rules at each threshold (tag, quarantine,
reject; quarantine then `moat queue release`; the Subject prefix), the attachment filter
(reject, quarantine, strip: the part replaced by a notice at delivery, also after a
release and under a DKIM signature that still verifies; names in zips inside zips, and
the bounds on that: depth, a bomb), and every filter's result in the
accept/reject log lines (`filters`)."""

import base64
import email
import io
import json
import os
import subprocess
import sys
import threading
import time
import unittest
import zipfile

sys.path.insert(0, os.path.dirname(__file__))
from harness import Moat, RawClient, SinkTestCase, wait_for  # noqa: E402

# Built from pieces so this file itself does not look infected to scanners.
EICAR = ("X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-" + "ANTIVIRUS-TEST-FILE!$H+H*").encode()
SIGNATURE = "Eicar-Test-Moat"

SPAM_RULES = """# rules for the content-filter integration test
header SUBJ_CHEAP   Subject =~ /cheap pills/i
score  SUBJ_CHEAP   6
describe SUBJ_CHEAP Subject offers cheap pills

body   BODY_WINNER  /you are a winner/i
score  BODY_WINNER  11

header FROM_SPAMMER From =~ /\\@spammer\\.test/i
score  FROM_SPAMMER 16
"""


def message(subject, body="Hello.\r\n", sender="alice@sender.test", msgid=None):
    msgid = msgid or f"<{abs(hash(subject))}@sender.test>"
    return (f"From: {sender}\r\nTo: bob@example.test\r\nSubject: {subject}\r\nMessage-ID: {msgid}\r\n"
            f"\r\n{body}").encode()


def with_attachment(subject, filename, payload, ctype="application/octet-stream", text="see attached",
                    sender="alice@sender.test"):
    b64 = base64.encodebytes(payload).replace(b"\n", b"\r\n").decode()
    return (f"From: {sender}\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{abs(hash(subject + filename))}@sender.test>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: multipart/mixed; boundary=\"BOUNDARY\"\r\n\r\n"
            f"--BOUNDARY\r\nContent-Type: text/plain\r\n\r\n{text}\r\n"
            f"--BOUNDARY\r\nContent-Type: {ctype}; name=\"{filename}\"\r\n"
            f"Content-Disposition: attachment; filename=\"{filename}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            f"{b64}--BOUNDARY--\r\n").encode()


def zip_of(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def filter_result(line, name):
    """The result string of filter `name` in a log line's `filters` object."""
    f = line.get("filters", {}).get(name)
    if isinstance(f, dict):
        return f.get("result")
    return f


class ContentFiltersTest(SinkTestCase):
    def start(self, extra, files=None):
        """A daemon routing example.test to the Sink, with `files` written into its folder
        (databases, rule files) before it starts."""
        self.moat = Moat(extra=extra, routes=[("example.test", f"smtp:127.0.0.1:{self.sink.port}")], start=False)
        for rel, content in (files or {}).items():
            path = os.path.join(self.moat.dir, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb" if isinstance(content, bytes) else "w") as f:
                f.write(content)
        return self.moat.start()

    def send(self, data, sender="alice@sender.test"):
        """(code, reply text, queue id or None) for one message on a fresh session."""
        s = self.moat.smtp()
        try:
            s.ehlo()
            code, _ = s.mail(sender)
            self.assertEqual(code, 250)
            code, _ = s.rcpt("bob@example.test")
            self.assertEqual(code, 250)
            code, reply = s.data(data)
            s.quit()
        finally:
            s.close()
        reply = reply.decode(errors="replace")
        qid = reply.rsplit(" ", 1)[-1] if code == 250 else None
        return code, reply, qid

    def delivered(self, subject, timeout=30):
        def find():
            for m in list(self.sink.messages):
                msg = email.message_from_bytes(m["data"])
                if msg["Subject"] == subject:
                    return msg
            return None
        return wait_for(find, timeout, what=f"message {subject!r} at the sink")

    def quarantined(self):
        return json.loads(self.moat.cli("queue", "list", "--quarantine", "--json").stdout)["messages"]

    # --- antivirus -----------------------------------------------------------------------

    def test_virus_is_refused_with_the_signature_and_clean_mail_delivered(self):
        ndb = f"{SIGNATURE}:0:*:{b'EICAR-STANDARD-ANTIVIRUS-TEST-FILE'.hex()}\n"
        m = self.start('\n[antivirus]\ndatabase_dir = "clamav"\naction = "reject"\n',
                       files={"clamav/moat-test.ndb": ndb})
        # The engine loads in the background after start; until then a scan is 451 4.7.1.
        # Its `reload` event may be written before the log file is opened (the pipeline is
        # built first), so readiness is probed with clean mail rather than read from the log.
        def ready():
            code, reply, _ = self.send(message("probe"))
            self.assertIn(code, (250, 451), reply)
            return code == 250
        wait_for(ready, 30, interval=0.2, what="the antivirus engine to load")
        self.delivered("probe")

        code, reply, _ = self.send(with_attachment("virus", "eicar.com", EICAR))
        self.assertEqual(code, 554, reply)
        self.assertTrue(reply.startswith("5.7.1"), reply)
        self.assertIn(SIGNATURE, reply)
        rej = m.wait_log(event="reject", timeout=10)
        self.assertTrue(rej["reply"].startswith("554 5.7.1"), rej)
        self.assertTrue(filter_result(rej, "antivirus").startswith("FOUND " + SIGNATURE), rej)

        code, reply, qid = self.send(message("clean after virus"))
        self.assertEqual(code, 250, reply)
        msg = self.delivered("clean after virus")
        self.assertIn("Hello.", msg.get_payload())
        acc = m.wait_log(event="accept", queue_id=qid, timeout=10)
        self.assertEqual(filter_result(acc, "antivirus"), "clean")
        self.assertFalse([x for x in self.sink.messages if b"eicar.com" in x["data"]])  # never relayed

    def test_a_zip_nested_past_max_recursion_is_not_called_clean(self):
        """EICAR in a zip inside 20 zips: libclamav stops at max_recursion (16) and, by
        default, said nothing: the message was delivered as clean. It is a limit now, and
        `limits_exceeded` (default: as `action`) refuses it."""
        ndb = f"{SIGNATURE}:0:*:{b'EICAR-STANDARD-ANTIVIRUS-TEST-FILE'.hex()}\n"
        m = self.start('\n[antivirus]\ndatabase_dir = "clamav"\n', files={"clamav/moat-test.ndb": ndb})

        def ready():
            code, reply, _ = self.send(message("probe"))
            self.assertIn(code, (250, 451), reply)
            return code == 250
        wait_for(ready, 30, interval=0.2, what="the antivirus engine to load")
        bomb = zip_of({"eicar.com": EICAR})
        for i in range(20):
            bomb = zip_of({f"level{i}.zip": bomb})
        code, reply, _ = self.send(with_attachment("bomb", "bomb.zip", bomb, "application/zip"))
        self.assertEqual(code, 554, reply)
        self.assertIn("could not be fully scanned for viruses (MaxRecursion)", reply)
        rej = m.wait_log(event="reject", timeout=10)
        self.assertEqual(filter_result(rej, "antivirus"), "limit MaxRecursion")
        line = m.wait_log(event="filter", filter="antivirus", result="limit MaxRecursion", timeout=10)
        self.assertEqual(line["detail"]["limit"], "MaxRecursion", line)
        self.delivered("probe")
        self.assertFalse([x for x in self.sink.messages if b"bomb.zip" in x["data"]])

    def test_clamd_backend_refuses_eicar(self):
        """backend = "clamd": a real clamd (Debian's clamav-daemon, a test dependency) that
        this test starts on a unix socket in its own folder with the EICAR database."""
        clamd_bin = "/usr/sbin/clamd"
        self.assertTrue(os.access(clamd_bin, os.X_OK),
                        f"{clamd_bin} is missing: install clamav-daemon (deploy/deps.sh installs it)")
        import shutil
        import socket
        import tempfile
        d = tempfile.mkdtemp(prefix="moat-clamd-")
        self.addCleanup(shutil.rmtree, d, True)
        os.makedirs(f"{d}/db")
        with open(f"{d}/db/moat-test.ndb", "w") as f:
            f.write(f"{SIGNATURE}:0:*:{b'EICAR-STANDARD-ANTIVIRUS-TEST-FILE'.hex()}\n")
        with open(f"{d}/clamd.conf", "w") as f:
            f.write(f"Foreground yes\nLocalSocket {d}/clamd.sock\nDatabaseDirectory {d}/db\n"
                    f"LogFile {d}/clamd.log\nPidFile {d}/clamd.pid\n")
        with open(f"{d}/clamd.out", "wb") as out:
            clamd = subprocess.Popen([clamd_bin, "--foreground", f"--config-file={d}/clamd.conf"],
                                     stdout=out, stderr=subprocess.STDOUT)

        def stop_clamd():
            clamd.terminate()
            try:
                clamd.wait(10)
            except subprocess.TimeoutExpired:
                clamd.kill()
                clamd.wait()
        self.addCleanup(stop_clamd)

        def pong():
            if clamd.poll() is not None:
                with open(f"{d}/clamd.out") as out:
                    self.fail("clamd exited: " + out.read())
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(2)
                    s.connect(f"{d}/clamd.sock")
                    s.sendall(b"zPING\0")
                    return s.recv(16) == b"PONG\0"
            except OSError:
                return False
        wait_for(pong, 20, interval=0.05, what="clamd to answer PING")

        m = self.start(f'\n[antivirus]\nbackend = "clamd"\nclamd_socket = "{d}/clamd.sock"\n')
        code, reply, _ = self.send(with_attachment("virus via clamd", "eicar.com", EICAR))
        self.assertEqual(code, 554, reply)
        self.assertTrue(reply.startswith("5.7.1"), reply)
        self.assertIn(SIGNATURE, reply)
        rej = m.wait_log(event="reject", timeout=10)
        self.assertTrue(filter_result(rej, "antivirus").startswith("FOUND " + SIGNATURE), rej)
        code, reply, _ = self.send(message("clean via clamd"))
        self.assertEqual(code, 250, reply)
        self.delivered("clean via clamd")

    # --- spam rules ------------------------------------------------------------------------

    def test_spam_rules_tag_quarantine_reject_and_release(self):
        m = self.start('\n[rules]\nfiles = ["spam.cf"]\ntag = 5\nquarantine = 10\nreject = 15\n',
                       files={"spam.cf": SPAM_RULES})

        # score 16 >= reject: refused at end of DATA
        code, reply, _ = self.send(message("hello there", sender="boss@spammer.test"), sender="boss@spammer.test")
        self.assertEqual(code, 550, reply)
        self.assertTrue(reply.startswith("5.7.1"), reply)
        rej = m.wait_log(event="reject", timeout=10)
        self.assertTrue(rej["reply"].startswith("550 5.7.1"), rej)
        self.assertIn("rules", rej["filters"])

        # score 6 >= tag: delivered with the X-Spam-* headers
        code, reply, tag_qid = self.send(message("cheap pills today"))
        self.assertEqual(code, 250, reply)
        tagged = self.delivered("cheap pills today")
        self.assertEqual(tagged["X-Spam-Score"].strip(), "6.0")
        status = " ".join(tagged["X-Spam-Status"].split())
        self.assertTrue(status.startswith("Yes, score=6.0 required=5.0"), status)
        self.assertIn("tests=SUBJ_CHEAP", status)
        acc = m.wait_log(event="accept", queue_id=tag_qid, timeout=10)
        self.assertEqual(acc["verdict"], "tag")
        self.assertIn("rules", acc["filters"])

        # score 11 >= quarantine: 250, held, not delivered, listed, then released
        code, reply, q_qid = self.send(message("news", body="Congratulations, you are a winner!\r\n"))
        self.assertEqual(code, 250, reply)
        acc = m.wait_log(event="accept", queue_id=q_qid, timeout=10)
        self.assertEqual(acc["verdict"], "quarantine")
        held = wait_for(lambda: [x for x in self.quarantined() if x["id"] == q_qid], 10,
                        what="the message in the quarantine listing")
        self.assertEqual(held[0]["area"], "quarantine")
        text = m.cli("queue", "list", "--quarantine").stdout
        self.assertIn(q_qid, text)
        # not in the normal listing, and not delivered
        normal = json.loads(m.cli("queue", "list", "--json").stdout)["messages"]
        self.assertNotIn(q_qid, [x["id"] for x in normal])
        self.assertFalse([x for x in self.sink.messages if b"you are a winner" in x["data"]])

        m.cli("queue", "release", q_qid)
        released = self.delivered("news")
        self.assertEqual(released["X-Spam-Status"].split(",")[0].strip(), "Yes")
        self.assertIn("BODY_WINNER", " ".join(released["X-Spam-Status"].split()))
        m.wait_log(event="deliver", queue_id=q_qid, timeout=10)
        wait_for(lambda: not self.quarantined(), 10, what="an empty quarantine")

        # a clean message: delivered, X-Spam-Status No
        code, reply, _ = self.send(message("lunch"))
        self.assertEqual(code, 250, reply)
        clean = self.delivered("lunch")
        self.assertTrue(clean["X-Spam-Status"].startswith("No"), clean["X-Spam-Status"])

    # --- attachments ---------------------------------------------------------------------

    def test_blocked_attachment_is_refused(self):
        m = self.start('\n[attachments]\nblock_extensions = ["exe", "scr"]\naction = "reject"\n')
        code, reply, _ = self.send(with_attachment("invoice", "invoice.pdf.exe", b"MZ\x90\x00not really"))
        self.assertEqual(code, 554, reply)
        self.assertTrue(reply.startswith("5.7.1"), reply)
        self.assertIn("invoice.pdf.exe", reply)
        rej = m.wait_log(event="reject", timeout=10)
        self.assertEqual(filter_result(rej, "attachments"), "blocked invoice.pdf.exe")
        self.assertIn("mime", rej["filters"])

        # inside a zip, one level deep
        z = zip_of({"readme.txt": b"hi", "tools/setup.scr": b"MZ"})
        code, reply, _ = self.send(with_attachment("zipped", "files.zip", z, "application/zip"))
        self.assertEqual(code, 554, reply)
        self.assertIn("tools/setup.scr in files.zip", reply)

        # a harmless attachment passes
        code, reply, qid = self.send(with_attachment("report", "report.pdf", b"%PDF-1.4 ok", "application/pdf"))
        self.assertEqual(code, 250, reply)
        self.delivered("report")
        acc = m.wait_log(event="accept", queue_id=qid, timeout=10)
        self.assertEqual(filter_result(acc, "attachments"), "clean")
        self.assertEqual(len(self.sink.messages), 1)

    def test_a_blocked_name_in_a_zip_inside_a_zip_is_refused(self):
        """evil.exe in inner.zip in outer.zip: the filter used to list only outer.zip's own
        names, and the message was delivered as clean."""
        m = self.start('\n[attachments]\nblock_extensions = ["exe"]\naction = "reject"\n')
        nested = zip_of({"notes.txt": b"hi", "inner.zip": zip_of({"evil.exe": b"MZ\x90\x00"})})
        code, reply, _ = self.send(with_attachment("nested", "outer.zip", nested, "application/zip"))
        self.assertEqual(code, 554, reply)
        self.assertEqual(reply, "5.7.1 Attachment blocked: evil.exe in outer.zip/inner.zip (extension .exe)")
        rej = m.wait_log(event="reject", timeout=10)
        self.assertEqual(filter_result(rej, "attachments"), "blocked evil.exe in outer.zip/inner.zip")
        line = m.wait_log(event="filter", filter="attachments", timeout=10)
        self.assertEqual(line["detail"]["archive"], "outer.zip/inner.zip", line)

        # a clean nested archive is delivered, both levels' names read
        clean = zip_of({"a.txt": b"x", "inner.zip": zip_of({"b.pdf": b"%PDF", "c.txt": b""})})
        code, reply, qid = self.send(with_attachment("nested clean", "clean.zip", clean, "application/zip"))
        self.assertEqual(code, 250, reply)
        self.delivered("nested clean")
        acc = m.wait_log(event="accept", queue_id=qid, timeout=10)
        self.assertEqual(filter_result(acc, "attachments"), "clean")
        self.assertFalse([x for x in self.sink.messages if b"outer.zip" in x["data"]])

    def test_an_archive_past_the_bounds_is_not_called_clean(self):
        """Past max_archive_depth, and a member that inflates past max_archive_bytes (a bomb):
        `limits_exceeded` (default: as `action`) refuses the message; "pass" delivers it
        with the limit in the log."""
        m = self.start('\n[attachments]\nblock_extensions = ["exe"]\n')
        deep = zip_of({"fine.txt": b"x"})
        for i in range(7, 1, -1):
            deep = zip_of({f"l{i}.zip": deep})
        code, reply, _ = self.send(with_attachment("deep", "l1.zip", deep, "application/zip"))
        self.assertEqual(code, 554, reply)
        self.assertEqual(reply, "5.7.1 Attachment could not be fully checked: "
                                "l1.zip/l2.zip/l3.zip/l4.zip/l5.zip/l6.zip (max_archive_depth)")
        rej = m.wait_log(event="reject", timeout=10)
        self.assertEqual(filter_result(rej, "attachments"), "limit max_archive_depth")

        bomb = zip_of({"big.zip": bytes(200 << 20)})  # 200 MB of zeros, ~200 KB sent
        start = time.monotonic()
        code, reply, _ = self.send(with_attachment("bomb", "bomb.zip", bomb, "application/zip"))
        self.assertLess(time.monotonic() - start, 10)
        self.assertEqual(code, 554, reply)
        self.assertIn("(max_archive_bytes)", reply)
        line = m.wait_log(event="filter", filter="attachments", result="limit max_archive_bytes", timeout=10)
        self.assertEqual(line["detail"]["archive_bytes"], 64 << 20, line)
        self.assertEqual(line["detail"]["unchecked"], "bomb.zip/big.zip", line)
        self.assertEqual(len(self.sink.messages), 0)
        m.cleanup()

        m = self.start('\n[attachments]\nblock_extensions = ["exe"]\nlimits_exceeded = "pass"\n'
                       'max_archive_depth = 3\n')
        code, reply, qid = self.send(with_attachment("deep passed", "l1.zip", deep, "application/zip"))
        self.assertEqual(code, 250, reply)
        self.delivered("deep passed")
        acc = m.wait_log(event="accept", queue_id=qid, timeout=10)
        self.assertEqual(filter_result(acc, "attachments"), "limit max_archive_depth")

    def test_a_harmless_filename_does_not_hide_a_blocked_name(self):
        m = self.start('\n[attachments]\nblock_extensions = ["exe"]\naction = "reject"\n')
        b64 = base64.encodebytes(b"MZ\x90\x00").decode().replace("\n", "\r\n")
        for subject, headers, name in [
                ("name", 'Content-Type: application/octet-stream; name="evil.exe"\r\n'
                         'Content-Disposition: attachment; filename="evil.txt"\r\n', "evil.exe"),
                ("dup", 'Content-Type: application/octet-stream\r\n'
                        'Content-Disposition: attachment; filename="a.txt"; filename="run.exe"\r\n', "run.exe")]:
            data = (f"From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
                    f"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n{headers}"
                    f"Content-Transfer-Encoding: base64\r\n\r\n{b64}--B--\r\n").encode()
            code, reply, _ = self.send(data)
            self.assertEqual(code, 554, reply)
            self.assertIn(name, reply)
        code, reply, _ = self.send(message("uu", "see below\r\n\r\nbegin 644 tool.exe\r\n`\r\nend\r\n"))
        self.assertEqual(code, 554, reply)
        self.assertIn("tool.exe", reply)
        blocked = [filter_result(x, "attachments") for x in m.wait_log(event="reject", count=3, timeout=10)]
        self.assertEqual(blocked, ["blocked evil.exe", "blocked run.exe", "blocked tool.exe"])
        self.assertEqual(self.sink.messages, [])

    def test_blocked_attachment_is_quarantined(self):
        m = self.start('\n[attachments]\nblock_extensions = ["exe"]\naction = "quarantine"\n')
        code, reply, qid = self.send(with_attachment("quarantined invoice", "invoice.pdf.exe", b"MZ"))
        self.assertEqual(code, 250, reply)
        acc = m.wait_log(event="accept", queue_id=qid, timeout=10)
        self.assertEqual(acc["verdict"], "quarantine")
        self.assertEqual(filter_result(acc, "attachments"), "blocked invoice.pdf.exe")
        held = wait_for(lambda: [x for x in self.quarantined() if x["id"] == qid], 10,
                        what="the message in the quarantine listing")
        self.assertIn("invoice.pdf.exe", held[0].get("reason", ""))
        self.assertEqual(self.sink.messages, [])

    def test_quarantine_retention_removes_old_messages(self):
        m = self.start('\n[attachments]\nblock_extensions = ["exe"]\naction = "quarantine"\n'
                       '\n[quarantine]\nretention = "2s"\n')
        code, reply, qid = self.send(with_attachment("kept for a while", "setup.exe", b"MZ"))
        self.assertEqual(code, 250, reply)
        wait_for(lambda: [x for x in self.quarantined() if x["id"] == qid], 10, what="the message in the quarantine")
        ev = m.wait_log(event="quarantine_expired", queue_id=qid, timeout=15)
        self.assertIn("setup.exe", ev["reason"])
        self.assertGreaterEqual(ev["delay_ms"], 2000)
        self.assertEqual(self.quarantined(), [])
        self.assertEqual(self.sink.messages, [])

    # --- rewriting at delivery (edits kept in the envelope) --------------------------------

    def parts(self, msg):
        return [(p.get_content_type(), p.get_filename(), p.get_payload(decode=True))
                for p in msg.walk() if not p.is_multipart()]

    def test_blocked_attachment_is_stripped(self):
        m = self.start('\n[attachments]\nblock_extensions = ["exe"]\naction = "strip"\n')
        raw = with_attachment("stripped invoice", "invoice.pdf.exe", b"MZ\x90\x00not really")
        code, reply, qid = self.send(raw)
        self.assertEqual(code, 250, reply)
        acc = m.wait_log(event="accept", queue_id=qid, timeout=10)
        self.assertEqual(acc["verdict"], "continue")
        self.assertEqual(filter_result(acc, "attachments"), "stripped invoice.pdf.exe")
        msg = self.delivered("stripped invoice")
        parts = self.parts(msg)
        self.assertEqual(len(parts), 2, parts)
        self.assertEqual(parts[0], ("text/plain", None, b"see attached"))
        self.assertEqual(parts[1][0], "text/plain")
        self.assertIsNone(parts[1][1])
        self.assertEqual(parts[1][2], b'Moat removed the attachment "invoice.pdf.exe" (blocked extension .exe) '
                                      b'from this message.')
        data = self.sink.messages[-1]["data"]
        self.assertNotIn(b"invoice.pdf.exe\"\r\nContent-Transfer-Encoding: base64", data)
        # The message as received, up to the stripped part, arrives byte for byte (after
        # Moat's prepended headers), and so does the closing delimiter.
        head = raw[:raw.index(b"--BOUNDARY\r\nContent-Type: application/octet-stream")]
        self.assertTrue(data.endswith(b"from this message.\r\n--BOUNDARY--\r\n"), data[-200:])
        self.assertIn(head, data)
        # SIZE= at delivery is the rewritten size.
        mail = [c for c in self.sink.commands if c.upper().startswith("MAIL FROM") and "SIZE=" in c.upper()]
        self.assertTrue(mail, self.sink.commands)
        self.assertEqual(int(mail[-1].upper().split("SIZE=")[1].split()[0]), len(data))

    def test_subject_prefix_at_the_tag_threshold(self):
        self.start('\n[rules]\nfiles = ["spam.cf"]\ntag = 5\nquarantine = 10\nreject = 15\n'
                   'subject_prefix = "[SPAM]"\n', files={"spam.cf": SPAM_RULES})
        code, reply, _ = self.send(message("cheap pills today"))
        self.assertEqual(code, 250, reply)
        tagged = self.delivered("[SPAM] cheap pills today")
        self.assertTrue(tagged["X-Spam-Status"].startswith("Yes, score=6.0"), tagged["X-Spam-Status"])
        self.assertEqual(tagged["X-Spam-Score"].strip(), "6.0")
        self.assertEqual(self.sink.messages[-1]["data"].count(b"\r\nSubject: "), 1)
        # Below the tag threshold the Subject is left alone.
        code, reply, _ = self.send(message("lunch"))
        self.assertEqual(code, 250, reply)
        self.assertTrue(self.delivered("lunch")["X-Spam-Status"].startswith("No"))

    def test_quarantined_message_with_edits_is_released_rewritten(self):
        m = self.start('\n[attachments]\nblock_extensions = ["exe"]\naction = "strip"\n'
                       '\n[rules]\nfiles = ["spam.cf"]\ntag = 5\nquarantine = 10\nreject = 15\n'
                       'subject_prefix = "[SPAM]"\n', files={"spam.cf": SPAM_RULES})
        raw = with_attachment("prize", "claim.exe", b"MZ evil", text="Congratulations, you are a winner!")
        code, reply, qid = self.send(raw)
        self.assertEqual(code, 250, reply)
        acc = m.wait_log(event="accept", queue_id=qid, timeout=10)
        self.assertEqual(acc["verdict"], "quarantine")
        self.assertEqual(filter_result(acc, "attachments"), "stripped claim.exe")
        wait_for(lambda: [x for x in self.quarantined() if x["id"] == qid], 10, what="the message in the quarantine")
        shown = json.loads(m.cli("queue", "show", qid, "--json").stdout)
        self.assertEqual(sorted(e["why"] for e in shown["edits"]), ["Subject prefix [SPAM]", "stripped claim.exe"])
        self.assertEqual(self.sink.messages, [])
        m.cli("queue", "release", qid)
        msg = self.delivered("[SPAM] prize")
        parts = self.parts(msg)
        self.assertEqual(parts[0][2], b"Congratulations, you are a winner!")
        self.assertIn(b'Moat removed the attachment "claim.exe"', parts[1][2])
        self.assertNotIn(b"claim.exe\"\r\nContent-Disposition", self.sink.messages[-1]["data"])

    def test_stripped_message_is_signed_as_delivered(self):
        import tempfile
        from authzone import rsa_key, txt_lookup
        import dkim
        keydir = tempfile.mkdtemp(prefix="moat-strip-dkim-")
        txt = rsa_key(os.path.join(keydir, "s1.pem"))
        m = self.start('\n[attachments]\nblock_extensions = ["exe"]\naction = "strip"\n'
                       f'\n[[dkim.sign]]\ndomain = "example.test"\nselector = "s1"\n'
                       f'key_file = "{os.path.join(keydir, "s1.pem")}"\n')
        # From the relay network (loopback) with an example.test From: outbound, signed.
        raw = with_attachment("signed and stripped", "tool.exe", b"MZ", sender="carol@example.test")
        code, reply, qid = self.send(raw, sender="carol@example.test")
        self.assertEqual(code, 250, reply)
        acc = m.wait_log(event="accept", queue_id=qid, timeout=10)
        self.assertEqual(filter_result(acc, "dkim_sign"), "signed")
        self.delivered("signed and stripped")
        data = self.sink.messages[-1]["data"]
        self.assertIn(b"Moat removed the attachment", data)
        dnsfunc = txt_lookup({"s1._domainkey.example.test": txt})
        self.assertTrue(dkim.verify(data, dnsfunc=dnsfunc), data[:3000])
        # Not vacuous: the same signature over the unedited message fails.
        self.assertFalse(dkim.verify(data.replace(b"Moat removed", b"Moat Removed"), dnsfunc=dnsfunc))
        subprocess.run(["rm", "-rf", keydir], check=False)

    # --- the thread pool under filter load ----------------------------------------------

    def test_other_mail_gets_its_250_while_filter_work_fills_its_share_of_the_pool(self):
        """Costly content (here a backtracking PCRE2 body rule, each paragraph stopped by the
        match limit: seconds of CPU per message) on as many connections as the pool has
        threads: the filters hold at most their share of it, so a small message from another
        client still has its rules run and its spool commit done, and gets its 250 quickly,
        while the big ones are still being scanned."""
        m = self.start('\n[rules]\nfiles = ["slow.cf"]\nfallback = "pcre2"\n',
                       files={"slow.cf": "body SLOW /^(a+)+(?=[bc])/\nscore SLOW 1\n"})
        # ~500 KB: 16,000 paragraphs the rule backtracks on, seconds of CPU a message.
        body = ("a" * 28 + "\r\n\r\n") * 16000
        big = message("slow", body=body)
        attackers = 8  # the daemon's pool size
        sent, replies = [], []

        def attack():
            try:
                c = RawClient(m.port, timeout=120)
                c.read_reply()
                c.send(b"EHLO big.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
                for _ in range(4):
                    c.read_reply()
                c.send(big + b"\r\n.\r\n")
                sent.append(1)
                replies.append(c.code())
                c.close()
            except OSError as e:
                replies.append(repr(e))

        threads = [threading.Thread(target=attack, daemon=True) for _ in range(attackers)]
        for t in threads:
            t.start()
        # All are in and their filters started (the filter lines come at the end of the stage):
        # 5 of the 8 pool threads (8 less 2 kept for the rest, less 1 kept for small
        # messages) scan, the others wait.
        try:
            wait_for(lambda: len(sent) == attackers, 30, what="the big messages sent")
            time.sleep(1)
            self.assertEqual(replies, [], "the big messages must be in the filters still for this test to mean anything")
            start = time.monotonic()
            s = self.moat.smtp()
            try:
                s.ehlo()
                s.mail("carol@sender.test")
                s.rcpt("bob@example.test")
                code, reply = s.data(message("small and quick"))
            finally:
                s.close()
            took = time.monotonic() - start
            self.assertEqual(code, 250, reply)
            self.assertLess(took, 10, "the 250 waited on the filters' queue")
            self.assertLess(len(replies), attackers, "the big messages finished before the probe: no load was measured")
        finally:
            m.kill9()  # the big messages would take a while yet; nothing of them is asserted
            for t in threads:
                t.join(10)

    def test_strip_is_accepted_by_check(self):
        """`strip` is a valid action: `moat check` accepts it."""
        self.moat = Moat(extra='\n[attachments]\nblock_extensions = ["exe"]\naction = "strip"\n'
                         '\n[rules]\nfiles = []\nsubject_prefix = "[SPAM]"\n', start=False)
        r = self.moat.cli("check", check=False)
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        self.assertNotIn("not supported", r.stderr + r.stdout)


if __name__ == "__main__":
    unittest.main()
