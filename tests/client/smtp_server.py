#!/usr/bin/env python3
"""tests/client/smtp_server.py - a scripted SMTP server on loopback for the SMTP client tests.

Usage: smtp_server.py CONFIG_JSON
CONFIG keys: out (dir, required; the port is written to OUT/port), pipelining (bool),
cert/key (offer STARTTLS), reject_rcpt {addr: reply}, mail_reply, data_reply,
ehlo_reply, rset_reply, greeting, data_done_delay (s), greeting_delay (s), no_esmtp,
starttls_extra, no_8bitmime (8BITMIME not offered), no_dsn (DSN not offered), size (the SIZE
parameter, "104857600" by default), data_cmd_reply (the reply to the DATA command instead of
354: the message is then not read), starttls_hang (220 to STARTTLS, then silence), chunking
(CHUNKING offered: BDAT, RFC 3030), bdat_reply {chunk number (from 1, as a string): reply}
(that chunk's reply instead of 250; its octets are read all the same, as §2 requires),
requiretls (REQUIRETLS offered after STARTTLS, RFC 8689), starttls_reply (STARTTLS offered,
and answered with this reply instead of 220), lmtp (LMTP, RFC 2033: LHLO, EHLO and
HELO refused, and after the message one reply per accepted recipient, in RCPT order: the
lmtp_reply {addr: reply} one, else 250; lmtp_drop_after N closes the connection after N of
those), unix (listen on this Unix socket path instead of 127.0.0.1; OUT/port is then "0").
After any 421 reply the server closes the connection, as RFC 5321 §3.8 has it.
For each message it writes OUT/msgN.eml (the un-stuffed body, byte-exact) and OUT/msgN.env;
every command line received goes to OUT/commands.log as "CONN-ID LINE".
Python standard library only; exits on SIGTERM."""
import json, os, socket, ssl, sys, threading, time

cfg = json.loads(sys.argv[1])
out = cfg["out"]
lock = threading.Lock()
counter = {"conn": 0, "msg": 0}


def log(cid, line):
    with lock, open(os.path.join(out, "commands.log"), "ab") as f:
        f.write(b"%d %s\n" % (cid, line))


class Conn:
    def __init__(self, sock, cid):
        self.sock, self.cid, self.buf, self.tls = sock, cid, b"", False

    def send(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        if text.startswith("421"):
            raise EOFError  # RFC 5321 §3.8: the server closes the channel after a 421

    def exactly(self, n):
        while len(self.buf) < n:
            d = self.sock.recv(65536)
            if not d:
                return None
            self.buf += d
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def store(self, body, mail, rcpts):
        """Writes msgN.eml / msgN.env for an accepted message; returns N."""
        with lock:
            counter["msg"] += 1
            n = counter["msg"]
        with open(os.path.join(out, "msg%d.eml" % n), "wb") as f:
            f.write(body)
        with open(os.path.join(out, "msg%d.env" % n), "w") as f:
            f.write("%d\n%s\n%s\ntls=%s\n" % (self.cid, mail, "\n".join(rcpts), self.tls))
        return n

    def line(self):
        while b"\n" not in self.buf:
            d = self.sock.recv(65536)
            if not d:
                return None
            self.buf += d
        l, self.buf = self.buf.split(b"\n", 1)
        return l + b"\n"

    def run(self):
        time.sleep(cfg.get("greeting_delay", 0))
        self.send(cfg.get("greeting", "220 test.example ESMTP scripted"))
        mail, rcpts = None, []
        chunks, failed = [], False  # the BDAT transaction so far
        while True:
            l = self.line()
            if l is None:
                return
            cmd = l.rstrip(b"\r\n")
            log(self.cid, cmd)
            verb = cmd[:4].upper()
            if cfg.get("lmtp") and verb in (b"EHLO", b"HELO"):
                self.send("500 5.5.1 this is LMTP: LHLO")
                continue
            if cfg.get("lmtp") and verb == b"LHLO":
                verb = b"EHLO"
            elif verb == b"LHLO":
                self.send("502 5.5.2 unknown command")
                continue
            if verb == b"EHLO":
                if cfg.get("no_esmtp") or cfg.get("ehlo_reply"):
                    self.send(cfg.get("ehlo_reply", "502 5.5.2 no EHLO"))
                    continue
                caps = ["SIZE " + cfg.get("size", "104857600"), "8BITMIME", "DSN", "ENHANCEDSTATUSCODES"]
                if cfg.get("no_8bitmime"):
                    caps.remove("8BITMIME")
                if cfg.get("no_dsn"):
                    caps.remove("DSN")
                if cfg.get("pipelining"):
                    caps.append("PIPELINING")
                if cfg.get("smtputf8"):
                    caps.append("SMTPUTF8")
                if cfg.get("chunking"):
                    caps.append("CHUNKING")
                if cfg.get("requiretls") and self.tls:
                    caps.append("REQUIRETLS")
                if (cfg.get("cert") or cfg.get("starttls_break") or cfg.get("starttls_hang")
                        or cfg.get("starttls_reply")) and not self.tls:
                    caps.append("STARTTLS")
                lines = ["test.example hello"] + caps
                for i, c in enumerate(lines):
                    self.send("250%s%s" % ("-" if i < len(lines) - 1 else " ", c))
            elif verb == b"HELO":
                self.send("250 test.example")
            elif verb == b"STAR" and cfg.get("starttls_reply"):
                self.send(cfg["starttls_reply"])
            elif verb == b"STAR" and cfg.get("starttls_hang"):
                # agrees, then never takes part in the handshake: waits for the client to go
                self.send("220 2.0.0 Ready to start TLS")
                while self.sock.recv(65536):
                    pass
                return
            elif verb == b"STAR" and cfg.get("starttls_break"):
                # a broken TLS server: it agrees, then answers the ClientHello with garbage
                self.send("220 2.0.0 Ready to start TLS")
                self.sock.recv(65536)
                self.sock.sendall(b"this is not TLS\r\n")
                return
            elif verb == b"STAR" and cfg.get("cert") and not self.tls:
                # starttls_extra: plaintext injected right behind the 220, in the same packet
                self.sock.sendall(b"220 2.0.0 Ready to start TLS\r\n" + cfg.get("starttls_extra", "").encode())
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(cfg["cert"], cfg["key"])
                self.buf = b""
                self.sock = ctx.wrap_socket(self.sock, server_side=True)
                self.tls = True
                mail, rcpts = None, []
            elif verb == b"MAIL":
                r = cfg.get("mail_reply", "250 2.1.0 Ok")
                if r.startswith("2"):
                    mail, rcpts = cmd.decode(), []
                self.send(r)
            elif verb == b"RCPT":
                if mail is None:
                    self.send("503 5.5.1 need MAIL")
                    continue
                addr = cmd.decode().split("<", 1)[-1].split(">", 1)[0]
                r = cfg.get("reject_rcpt", {}).get(addr, "250 2.1.5 Ok")
                if r.startswith("2"):
                    rcpts.append(addr)
                self.send(r)
            elif verb == b"DATA":
                if not rcpts:
                    self.send("554 5.5.1 no valid recipients")
                    continue
                if cfg.get("data_cmd_reply"):
                    self.send(cfg["data_cmd_reply"])
                    continue
                self.send("354 End data with <CR><LF>.<CR><LF>")
                parts = []
                while True:
                    l = self.line()
                    if l is None:
                        return
                    if l == b".\r\n":
                        break
                    parts.append(l[1:] if l.startswith(b".") else l)
                n = self.store(b"".join(parts), mail, rcpts)
                time.sleep(cfg.get("data_done_delay", 0))
                if cfg.get("lmtp"):
                    for i, addr in enumerate(rcpts):
                        if i == cfg.get("lmtp_drop_after", -1):
                            return
                        self.send(cfg.get("lmtp_reply", {}).get(addr, "250 2.0.0 <%s> M%d delivered" % (addr, n)))
                else:
                    self.send(cfg.get("data_reply", "250 2.0.0 Ok: queued as M%d" % n))
                mail, rcpts = None, []
            elif verb == b"BDAT" and cfg.get("chunking"):
                args = cmd.decode().split()
                data = self.exactly(int(args[1]))
                if data is None:
                    return
                last = len(args) > 2 and args[2].upper() == "LAST"
                chunks.append(data)
                scripted = cfg.get("bdat_reply", {}).get(str(len(chunks)))
                if scripted or failed or not rcpts:
                    failed = True  # RFC 3030 §2: no more chunks count; the client must RSET
                    self.send(scripted or "503 5.5.1 no valid recipients")
                    if last:
                        mail, rcpts, chunks, failed = None, [], [], False
                    continue
                if not last:
                    self.send("250 2.0.0 %d octets received" % len(data))
                    continue
                n = self.store(b"".join(chunks), mail, rcpts)
                time.sleep(cfg.get("data_done_delay", 0))
                self.send(cfg.get("data_reply", "250 2.0.0 Ok: queued as M%d" % n))
                mail, rcpts, chunks = None, [], []
            elif verb == b"RSET":
                r = cfg.get("rset_reply", "250 2.0.0 Ok")
                if r.startswith("2"):
                    mail, rcpts, chunks, failed = None, [], [], False
                self.send(r)
            elif verb == b"QUIT":
                if cfg.get("quit_silent"):  # never answers: waits for the client to close
                    while self.line() is not None:
                        pass
                    return
                self.send("221 2.0.0 Bye")
                return
            else:
                self.send("502 5.5.2 unknown command")


def serve(sock, cid):
    try:
        Conn(sock, cid).run()
    except (OSError, ssl.SSLError, EOFError):
        pass
    finally:
        sock.close()


def main():
    if cfg.get("unix"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(cfg["unix"])
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
    s.listen(16)
    tmp = os.path.join(out, "port.tmp")
    with open(tmp, "w") as f:
        f.write("0" if cfg.get("unix") else str(s.getsockname()[1]))
    os.rename(tmp, os.path.join(out, "port"))
    while True:
        c, _ = s.accept()
        counter["conn"] += 1
        threading.Thread(target=serve, args=(c, counter["conn"]), daemon=True).start()


main()
