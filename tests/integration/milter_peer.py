"""A real milter for test_milter.py: pymilter (Debian's python3-milter, on Sendmail's
libmilter), run as a child process: milter_peer.py SOCKET TAG RECORD_FILE.

SOCKET is libmilter's spec ("unix:/path" or "inet:PORT@127.0.0.1"). What it does depends
on the message's Subject (see eom: verdicts, header, body and envelope changes; "chain ..." and
"TAG:addrcpt=..." by TAG) and the envelope
sender ("hang@..." sleeps at MAIL).
Every message's macros and the headers it saw are appended to RECORD_FILE as one JSON
line, with TAG, so a test can check what it was sent and in which order milters ran."""

import json
import re
import sys
import time

import Milter

SOCKET, TAG, RECORD = sys.argv[1], sys.argv[2], sys.argv[3]


class Peer(Milter.Base):
    def __init__(self):
        self.macros = {}
        self.headers = []
        self.rcpts = []
        self.sender = None
        self.received = b""

    @Milter.noreply
    def connect(self, hostname, family, hostaddr):
        self.macros["client_addr"] = self.getsymval("{client_addr}")
        self.macros["client_port"] = self.getsymval("{client_port}")
        self.macros["hostaddr"] = list(hostaddr) if isinstance(hostaddr, tuple) else hostaddr
        self.macros["j"] = self.getsymval("j")
        self.macros["hostname"] = hostname
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *args):
        self.sender = mailfrom
        self.macros["mail_addr"] = self.getsymval("{mail_addr}")
        self.macros["i_at_mail"] = self.getsymval("i")
        self.macros["tls_version"] = self.getsymval("{tls_version}")
        self.args = list(args)
        if mailfrom.startswith("<hang@"):
            time.sleep(30)
        return Milter.CONTINUE

    def envrcpt(self, rcpt, *args):
        self.rcpts.append(rcpt)
        self.macros.setdefault("rcpt_addr", []).append(self.getsymval("{rcpt_addr}"))
        return Milter.CONTINUE

    def header(self, name, value):
        self.headers.append([name, value])
        return Milter.CONTINUE

    def body(self, chunk):
        self.received += chunk
        return Milter.CONTINUE

    def eom(self):
        self.macros["i"] = self.getsymval("i")
        subject = next((v for n, v in self.headers if n.lower() == "subject"), "")
        with open(RECORD, "a") as f:
            f.write(json.dumps({"tag": TAG, "sender": self.sender, "rcpts": self.rcpts, "macros": self.macros,
                                "subject": subject, "headers": self.headers, "args": self.args,
                                "body": self.received.decode("latin-1")}) + "\n")
        if "reject me" in subject:
            return Milter.REJECT
        if "tempfail me" in subject:
            return Milter.TEMPFAIL
        if "custom code" in subject:
            self.setreply("554", "5.7.0", "Refused by the test milter")
            return Milter.REJECT
        if "discard me" in subject:
            return Milter.DISCARD
        if "quarantine me" in subject:
            self.quarantine("looks suspicious")
            return Milter.CONTINUE
        if "add header" in subject:
            self.addheader("X-Milter-Added", "by " + TAG)
            self.addheader("X-Milter-Inserted", "first", idx=1)
        if "change header" in subject:
            self.chgheader("X-Change-Me", 1, "changed by " + TAG)
            self.chgheader("X-Delete-Me", 1, "")
        if "replace body" in subject:
            self.replacebody(b"The body the milter wrote.\r\nSecond line.\r\n")
        if "tagged" in subject:
            self.addheader("X-Seen-By-" + TAG, "yes")
        if "insert at index" in subject:
            # Sent: Moat's fields (Received, Authentication-Results...), then the message's.
            at = [n for n, _ in self.headers].index("From")
            self.addheader("X-At-Zero", "top", idx=0)
            self.addheader("X-At-One", "below the first", idx=1)
            self.addheader("X-Above-From", "above From", idx=at)
            self.addheader("X-Below-From", "below From", idx=at + 1)
        if "add rcpt" in subject:
            self.addrcpt("<carol@example.test>")
            self.addrcpt("<dave@example.test>", "NOTIFY=NEVER XFOO=1")
        if "del rcpt" in subject:
            self.delrcpt("<dave@example.test>")
        if "change sender" in subject:
            self.chgfrom("<bounces@sender.test>", "RET=HDRS")
        if "delete every rcpt" in subject:
            for r in self.rcpts:
                self.delrcpt(r)
        if "bad rcpt" in subject:
            self.addrcpt("<not an address>")
        # "TAG:addrcpt=ADDRESS" and "TAG:delrcpt=ADDRESS": the milter of that TAG adds or
        # deletes that recipient (several may be given, done in order).
        for tag, action, address in re.findall(r"(\w+):(addrcpt|delrcpt)=(\S+)", subject):
            if tag == TAG:
                (self.addrcpt if action == "addrcpt" else self.delrcpt)("<" + address + ">")
        # Two chained milters, tagged a and b: a changes the message and the envelope, b is
        # sent them (its record says what it saw) and changes them again.
        if "chain content" in subject and TAG == "a":
            self.addheader("X-Chain", "from a")
            self.replacebody(b"Body from a.\r\n")
        if "chain content" in subject and TAG == "b":
            # Sent: Moat's fields (Received, Authentication-Results), a's X-Chain, From...
            names = [n for n, _ in self.headers]
            self.addheader("X-B-Above-Chain", "1", idx=names.index("X-Chain"))
            self.addheader("X-B-Above-From", "2", idx=names.index("From"))
            self.chgheader("X-Chain", 1, "changed by b after " + dict(self.headers).get("X-Chain", "nothing"))
            self.replacebody(b"Body from b, after: " + self.received.strip() + b"\r\n")
        if "chain envelope" in subject and TAG == "a":
            self.chgfrom("<bounces@sender.test>", "RET=HDRS")
            self.addrcpt("<dave@example.test>")
        if "chain envelope" in subject and TAG == "b" and "<dave@example.test>" in self.rcpts:
            self.delrcpt("<dave@example.test>")
        # Moat's own filters changed the message first (a Subject prefix, a stripped part):
        # inserts around the Subject as sent, and a change of it.
        if "view test" in subject and TAG == "a":
            at = [n for n, _ in self.headers].index("Subject")
            self.addheader("X-Above-Subject", "1", idx=at)
            self.addheader("X-Below-Subject", "2", idx=at + 1)
            self.chgheader("Subject", 1, subject + " (seen by a)")
        if "bare sender" in subject and TAG == "a":
            self.chgfrom("<bounces@sender.test>")  # no RET= or ENVID=
        if "internal sender" in subject and TAG == "a":
            self.chgfrom("<bounces@corp.internal>")
        return Milter.CONTINUE


Milter.factory = Peer
Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.QUARANTINE | Milter.ADDRCPT
                 | Milter.ADDRCPT_PAR | Milter.DELRCPT | Milter.CHGFROM)
print("ready", flush=True)
Milter.runmilter("moat-test-" + TAG, SOCKET, 60)
