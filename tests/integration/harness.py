"""Integration-test harness for Moat: the real daemon on loopback, a real SMTP sink the
tests own, and helpers to read the JSON log. Only 127.0.0.1 is ever used; every wait is
bounded.

    sink = Sink()                       # an SMTP server on 127.0.0.1:<free port>
    moat = Moat(routes=[...])           # writes a config, starts `moat serve`, finds its port
    moat.send(...)                      # smtplib
    moat.wait_log(event="deliver")      # JSON log lines
"""

import base64
import collections
import json
import os
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

MOAT_BIN = os.environ.get("MOAT_BIN", "build/moat")
SOURCE_DIR = os.environ.get("MOAT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))


def _no_duplicate_keys(pairs):
    """A log line names each field once (strict JSON consumers refuse or misread repeats)."""
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"duplicate keys {dup}")
    return dict(pairs)


def wait_for(predicate, timeout=20.0, interval=0.05, what="condition"):
    """Polls predicate() until it returns a truthy value or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def class_temp_dir(cls, prefix):
    """A temporary directory for a test class, removed after its last test (kept when
    MOAT_KEEP_TEST_DIRS is set, as Moat.cleanup keeps its own)."""
    d = tempfile.mkdtemp(prefix=prefix)
    if os.environ.get("MOAT_KEEP_TEST_DIRS") is None:
        cls.addClassCleanup(shutil.rmtree, d, True)
    return d


def client_tls():
    """A test client's TLS context that takes any certificate: the daemons' test certificates
    are self-signed."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def make_cert(directory, cn="localhost"):
    """A self-signed certificate and key made at test time with openssl."""
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-subj", f"/CN={cn}", "-days", "2", "-addext", f"subjectAltName=DNS:{cn},IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(directory, cn="Moat test CA"):
    """A certificate authority made at test time: (ca.pem, ca.key)."""
    ca, key = os.path.join(directory, "ca.pem"), os.path.join(directory, "ca.key")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", ca, "-days", "2",
             "-subj", f"/CN={cn}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return ca, key


def check_config(test, text, name="moat.toml"):
    """Writes `text` as a config file in a temporary folder (removed after `test`) and runs
    `moat check -c` on it: (path, the finished process)."""
    d = tempfile.mkdtemp(prefix="moat-check-")
    test.addCleanup(shutil.rmtree, d, True)
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path, subprocess.run([MOAT_BIN, "check", "-c", path], capture_output=True, text=True, timeout=60)


def make_signed_cert(directory, ca, name, san, chain=False):
    """A server certificate for `san` (e.g. "IP:127.0.0.1", "DNS:mx.example.test") signed by
    `ca`: (cert, key). With `chain`, the cert file holds the leaf and then the CA, as a
    server whose CA is not in the client's store sends it (DANE-TA, RFC 7671 §5.2.2)."""
    cert, key, csr, ext = (os.path.join(directory, f"{name}.{x}") for x in ("leaf", "key", "csr", "ext"))
    with open(ext, "w") as f:
        f.write(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-out", cert,
             "-days", "2", "-extfile", ext)
    out_path = os.path.join(directory, f"{name}.pem")
    with open(out_path, "w") as out:
        for part in (cert, ca[0]) if chain else (cert,):
            with open(part) as f:
                out.write(f.read())
    return out_path, key


class _SinkHandler(socketserver.StreamRequestHandler):
    timeout = 30

    def reply(self, line):
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def authenticate(self, line, tls, authed):
        """RFC 4954 AUTH with PLAIN (RFC 4616, initial response or not) or LOGIN, offered
        only over TLS; returns the name now authenticated (or still, after a refusal)."""
        sink = self.server.sink
        parts = line.split(" ")
        mech = parts[1].upper() if len(parts) > 1 else ""
        if not sink.auth or not tls or authed is not None:
            self.reply("503 5.5.1 AUTH not available")
            return authed
        if mech not in sink.auth_mechanisms:
            self.reply("504 5.5.4 mechanism not supported")
            return authed

        def answer(challenge):
            self.reply("334 " + challenge)
            return self.rfile.readline(65536).rstrip(b"\r\n").decode()

        try:
            if mech == "PLAIN":
                response = parts[2] if len(parts) > 2 else answer("")
                _, user, password = base64.b64decode(response, validate=True).split(b"\0")
            else:
                user = base64.b64decode(answer("VXNlcm5hbWU6"), validate=True)  # "Username:"
                password = base64.b64decode(answer("UGFzc3dvcmQ6"), validate=True)  # "Password:"
            user, password = user.decode(), password.decode()
        except ValueError:
            self.reply("501 5.5.2 cannot decode the response")
            return authed
        ok = (user, password) == tuple(sink.auth)
        with sink.lock:
            sink.auth_attempts.append({"mechanism": mech, "user": user, "ok": ok})
        if not ok:
            self.reply("535 5.7.8 Authentication credentials invalid")
            return authed
        self.reply("235 2.7.0 Authentication successful")
        return user

    def handle(self):
        sink = self.server.sink
        sink.connections += 1
        # Who connected (the source address a client bound) and the name it gave at EHLO/HELO.
        session = {"peer": self.client_address[0], "helo": None, "commands": []}
        with sink.lock:
            sink.sessions.append(session)
        self.reply("220 sink.test ESMTP test sink")
        mail_from, rcpts, tls = None, [], False
        chunks = bytearray()  # BDAT (RFC 3030), with CHUNKING among the extensions
        authed = None  # the name this connection authenticated as (AUTH), None = none
        while True:
            raw = self.rfile.readline(65536)
            if not raw:
                return
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            verb = line.split(" ", 1)[0].upper()
            sink.commands.append(line)
            session["commands"].append(line)
            if verb in ("EHLO", "HELO"):
                session["helo"] = line.split(" ", 1)[1] if " " in line else ""
            if verb == "EHLO":
                ext = list(sink.extensions)
                if (sink.tls_context or sink.break_tls) and not tls:
                    ext.append("STARTTLS")
                if sink.auth and tls and sink.auth_mechanisms:
                    ext.append("AUTH " + " ".join(sink.auth_mechanisms))
                lines = ["sink.test"] + ext
                for i, e in enumerate(lines):
                    self.reply(("250 " if i == len(lines) - 1 else "250-") + e)
            elif verb == "HELO":
                self.reply("250 sink.test")
            elif verb == "STARTTLS" and sink.break_tls:
                # a broken TLS server: it agrees, then answers the ClientHello with garbage
                self.reply("220 2.0.0 go ahead")
                self.request.recv(65536)
                self.request.sendall(b"this is not TLS\r\n")
                return
            elif verb == "STARTTLS" and sink.tls_context and not tls:
                self.reply("220 2.0.0 go ahead")
                try:
                    self.request = sink.tls_context.wrap_socket(self.request, server_side=True)
                except (ssl.SSLError, OSError) as e:  # e.g. no client certificate where one is required
                    sink.tls_failures.append(str(e))
                    return
                # The client's certificate, when the context asked for one and it verified.
                session["peer_cert"] = self.request.getpeercert()
                self.rfile = self.request.makefile("rb")
                self.wfile = self.request.makefile("wb")
                tls = True
                sink.tls_sessions += 1
            elif verb == "AUTH":
                authed = self.authenticate(line, tls, authed)
            elif verb == "MAIL" and sink.require_auth and authed is None:
                self.reply("530 5.7.0 Authentication required")
            elif verb == "MAIL":
                mail_from = line[line.index(":") + 1:].strip().split(" ")[0].strip("<>")
                rcpts = []
                code = sink.mail_reply(mail_from)
                self.reply(code)
                if not code.startswith("2"):
                    mail_from = None
            elif verb == "RCPT":
                addr = line[line.index(":") + 1:].strip().split(" ")[0].strip("<>")
                too_many = sink.max_rcpts is not None and len(rcpts) >= sink.max_rcpts
                code = sink.too_many_reply if too_many else sink.rcpt_reply(addr)
                if code.startswith("2"):
                    rcpts.append(addr)
                self.reply(code)
            elif verb == "DATA":
                if mail_from is None or not rcpts:
                    self.reply("554 5.5.1 no valid recipients")
                    continue
                self.reply("354 go ahead")
                data = bytearray()
                while True:
                    l = self.rfile.readline(1 << 20)
                    if not l:
                        return
                    if l == b".\r\n":
                        break
                    if l.startswith(b"."):
                        l = l[1:]
                    data += l
                code = sink.data_reply(mail_from, rcpts, bytes(data))
                if code.startswith("2"):
                    with sink.lock:
                        sink.messages.append({"from": mail_from, "rcpts": list(rcpts), "data": bytes(data), "tls": tls,
                                              "auth": authed, "session": session})
                self.reply(code)
                mail_from, rcpts = None, []
            elif verb == "BDAT" and "CHUNKING" in sink.extensions:
                words = line.split()
                size, last = int(words[1]), len(words) > 2 and words[2].upper() == "LAST"
                chunk = self.rfile.read(size)  # read even when refused (RFC 3030 §2)
                if len(chunk) < size:
                    return
                if mail_from is None or not rcpts:
                    self.reply("503 5.5.1 no valid recipients")
                    continue
                chunks += chunk
                if not last:
                    self.reply(f"250 2.0.0 {size} octets received")
                    continue
                data, chunks = bytes(chunks), bytearray()
                code = sink.data_reply(mail_from, rcpts, data)
                if code.startswith("2"):
                    with sink.lock:
                        sink.messages.append({"from": mail_from, "rcpts": list(rcpts), "data": data, "tls": tls,
                                              "auth": authed, "session": session})
                self.reply(code)
                mail_from, rcpts = None, []
            elif verb == "RSET":
                mail_from, rcpts, chunks = None, [], bytearray()
                self.reply("250 2.0.0 ok")
            elif verb == "NOOP":
                self.reply("250 2.0.0 ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 bye")
                return
            else:
                self.reply("502 5.5.2 unknown")


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # Moat opens many connections at once; the default 5 drops some


class _Server6(_Server):
    address_family = socket.AF_INET6


class ScriptedServer:
    """A TCP server on 127.0.0.1, port 0, running the request handler class `handler` in a
    thread of its own, for the tests' scripted peers; `port`, and `stop()`."""

    def __init__(self, handler):
        self.server = _Server(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Conn:
    """One connection to the scripted next hop, line by line."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.lines = []

    def reply(self, text):
        self.sock.sendall(text.encode() + b"\r\n")

    def line(self, timeout=30):
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        self.lines.append(text)
        return text

    def data(self):
        body = []
        while True:
            line = self.line()
            if line == ".":
                return body
            body.append(line)

    def greet(self, ext=("PIPELINING", "8BITMIME", "SIZE 100000000")):
        self.reply("220 hop.test ESMTP")
        self.line()  # EHLO
        lines = ["hop.test"] + list(ext)
        for i, e in enumerate(lines):
            self.reply(("250 " if i == len(lines) - 1 else "250-") + e)


class ScriptedHop(ScriptedServer):
    """A TCP server on 127.0.0.1 that runs handler(conn, n) for its n-th connection (0, 1...)
    and keeps every connection's command lines in `transcripts`."""

    def __init__(self, handler):
        self.transcripts = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                conn = Conn(self.request)
                n = len(outer.transcripts)
                outer.transcripts.append(conn.lines)
                try:
                    handler(conn, n)
                except (EOFError, OSError):
                    pass

        super().__init__(Handler)


def serve_commands(conn, data_cmd=None, body_reply="250 2.0.0 queued", rcpt=None):
    """The rest of a session after the greeting: DATA answered `data_cmd` (instead of 354 and
    the message) when given, each RCPT by rcpt(line) when given."""
    while True:
        line = conn.line()
        verb = line.split(" ")[0].upper()
        if verb == "DATA":
            if data_cmd:
                conn.reply(data_cmd)
                continue
            conn.reply("354 go ahead")
            conn.data()
            conn.reply(body_reply)
        elif verb == "RCPT" and rcpt:
            conn.reply(rcpt(line))
        elif verb == "QUIT":
            conn.reply("221 bye")
            return
        else:
            conn.reply("250 ok")


class Sink:
    """A real SMTP server on 127.0.0.1 (or `host`, "::1" for IPv6) that records what it is
    sent. The reply hooks can be replaced to refuse particular recipients or to fail
    temporarily."""

    DEFAULT_EXTENSIONS = ("PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 104857600")

    def __init__(self, port=0, tls_cert=None, break_tls=False, extensions=DEFAULT_EXTENSIONS, host="127.0.0.1",
                 auth=None, auth_mechanisms=("PLAIN", "LOGIN"), require_auth=False):
        self.host = host
        # SMTP AUTH (RFC 4954), offered after STARTTLS when `auth` is (USERNAME, PASSWORD):
        # 235 to those, 535 to others; each try is noted in auth_attempts, and each message
        # records the name its connection authenticated as ("auth", None without).
        self.auth = auth
        self.auth_mechanisms = tuple(auth_mechanisms)
        self.require_auth = require_auth  # MAIL before a successful AUTH gets 530
        self.auth_attempts = []
        self.break_tls = break_tls  # offers STARTTLS, then fails every handshake
        self.extensions = tuple(extensions)  # EHLO keywords (STARTTLS is added when TLS is set up)
        self.messages = []
        self.commands = []
        self.connections = 0
        # One per connection: {"peer": the client's address, "helo": its EHLO/HELO argument,
        # "commands": its command lines}; each message's "session" is the one it came on.
        self.sessions = []
        self.tls_sessions = 0
        self.tls_failures = []  # the reason of each handshake that failed on the sink's side
        self.lock = threading.Lock()
        self.tls_context = None
        self.sni = []  # the server name each TLS client sent (None: none)
        if tls_cert:
            self.tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls_context.load_cert_chain(*tls_cert)
            self.tls_context.sni_callback = lambda sock, name, ctx: self.sni.append(name)
        self.mail_reply = lambda sender: "250 2.1.0 ok"
        self.rcpt_reply = lambda addr: "250 2.1.5 ok"
        self.data_reply = lambda sender, rcpts, data: "250 2.0.0 queued"
        self.max_rcpts = None  # recipients one transaction takes; more get too_many_reply
        self.too_many_reply = "452 4.5.3 too many recipients"
        self._port = port
        self.server = None
        self.start()

    def start(self):
        server = _Server6 if ":" in self.host else _Server
        self.server = server((self.host, self._port), _SinkHandler)
        self.server.sink = self
        self._port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def port(self):
        return self._port

    def wait_messages(self, n, timeout=30):
        wait_for(lambda: len(self.messages) >= n, timeout, what=f"{n} messages at the sink (have {len(self.messages)})")
        return self.messages

    def wait_subject(self, subject, timeout=30):
        """The bytes of the first message received whose Subject is `subject`."""
        field = ("Subject: " + subject + "\r\n").encode()

        def find():
            return next((m for m in list(self.messages) if field in m["data"]), None)
        return wait_for(find, timeout, what=f"message {subject!r} at the sink")["data"]


def http_get(port, path):
    """(status, body) of GET `path` on 127.0.0.1:`port` (the metrics listener), errors included."""
    import urllib.error
    import urllib.request
    try:
        r = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
        return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(port):
    """/metrics as {'name{labels}': value}."""
    out = {}
    for line in http_get(port, "/metrics")[1].splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ipv6_loopback():
    """Whether ::1 can be bound here (tests that need it skip otherwise)."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Moat:
    """Writes a config into a temp dir, runs `moat serve` on it and follows its JSON log.

    `reverse_dns` is [server] reverse_dns, off unless a test asks for it: the daemon would
    otherwise ask the host's resolver (/etc/resolv.conf) about every client, and tests talk
    to no DNS server but their own (a test that wants the lookups sets [dns] nameservers).
    None leaves the key out (the daemon's default)."""

    def __init__(self, extra="", routes=None, relay_domains=("example.test",), networks=("127.0.0.0/8",),
                 listener_extra="", retry='["1s"]', delay_warning="4h", max_lifetime="2d", start=True,
                 workdir=None, queue_extra="", server_extra="", relay_extra="", min_free_disk="1M",
                 reverse_dns=False):
        self.dir = workdir or tempfile.mkdtemp(prefix="moat-it-")
        self.log_path = os.path.join(self.dir, "moat.log")
        self.config_path = os.path.join(self.dir, "moat.toml")
        self.maildir = os.path.join(self.dir, "mail")
        routes = routes if routes is not None else [("example.test", "maildir:mail")]
        text = f"""
[server]
hostname = "mx.moat.test"
spool_dir = "spool"
control_socket = "moat.sock"
log_file = "moat.log"
log_level = "debug"
min_free_disk = "{min_free_disk}"
{"" if reverse_dns is None else "reverse_dns = " + ("true" if reverse_dns else "false")}
{server_extra}

[[listener]]
address = "127.0.0.1:0"
{listener_extra}

[relay]
domains = {json.dumps(list(relay_domains))}
networks = {json.dumps(list(networks))}
{relay_extra}

[queue]
retry = {retry}
delay_warning = "{delay_warning}"
max_lifetime = "{max_lifetime}"
{queue_extra}
"""
        for domains, to in routes:
            text += "\n[[route]]\n"
            if domains:
                text += f"domains = {json.dumps(domains if isinstance(domains, list) else [domains])}\n"
            text += f"to = {json.dumps(to if isinstance(to, list) else [to])}\n"
        text += extra
        with open(self.config_path, "w") as f:
            f.write(text)
        self.proc = None
        self.port = None
        self._log_offset = 0
        if start:
            self.start()

    def start(self, expect_port=None):
        self._log_offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        self.proc = subprocess.Popen([MOAT_BIN, "serve", "-c", self.config_path], cwd=self.dir,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            ev = self.wait_log(event="listen", timeout=30, since_start=True)
            self.port = ev["port"]
            self.wait_log(event="start", timeout=10, since_start=True)
        except BaseException:
            self.proc.kill()  # never leave a daemon behind
            self.proc.wait(10)
            raise
        return self

    def logs(self, since_start=False):
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path, "rb") as f:
            if since_start:
                f.seek(self._log_offset)
            data = f.read()
            # The writer may be mid-write: a last line without its newline is not here yet.
            if not data.endswith(b"\n"):
                data = data[:data.rfind(b"\n") + 1]
            out = []
            for raw in data.splitlines():
                try:
                    out.append(json.loads(raw, object_pairs_hook=_no_duplicate_keys))
                except ValueError as e:
                    raise AssertionError(f"log line is not JSON ({e}): {raw[:200]!r}")
            return out

    def find_logs(self, since_start=False, **match):
        return [l for l in self.logs(since_start) if all(l.get(k) == v for k, v in match.items())]

    def wait_log(self, timeout=30, since_start=False, count=1, **match):
        def check():
            if self.proc and self.proc.poll() is not None and not self.find_logs(since_start, **match):
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise AssertionError(f"moat exited with {self.proc.returncode}: {err}")
            found = self.find_logs(since_start, **match)
            return found if len(found) >= count else None
        return wait_for(check, timeout, what=f"log {match} x{count}")[-1] if count == 1 else \
            wait_for(check, timeout, what=f"log {match} x{count}")

    def write_files(self, files):
        """Writes each {name: text} into the instance's directory (policy files the config names)."""
        for name, text in files.items():
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)

    def smtp(self, **kw):
        import smtplib
        return smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=30, **kw)

    def cli(self, *args, check=True):
        r = subprocess.run([MOAT_BIN, *args[:1], "-c", self.config_path, *args[1:]], capture_output=True,
                           text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"moat {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r

    def signal(self, sig):
        self.proc.send_signal(sig)

    def reload_with(self, path, text, ok=True):
        """Writes `text` to `path` (a file the config names), sends SIGHUP and returns the
        `reload` line it brings, which must say `ok` as expected."""
        before = len(self.find_logs(event="reload"))
        with open(path, "w") as f:
            f.write(text)
        self.signal(signal.SIGHUP)
        line = wait_for(lambda: (self.find_logs(event="reload")[before:] or [None])[0], 30,
                        what="the reload after SIGHUP")
        if line.get("ok") != ok:
            raise AssertionError(f"reload ok={line.get('ok')}, expected {ok}: {line}")
        return line

    def stop(self, timeout=30):
        """SIGTERM, then a graceful stop must end with exit status 0 (under the sanitizers, a
        leak or an error found on the way out fails the test here)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                _, err = self.proc.communicate(timeout=timeout)  # reads stderr: a long report cannot block it
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError("moat did not stop within %ss of SIGTERM" % timeout)
            if self.proc.returncode != 0:
                err = (err or b"").decode(errors="replace")
                raise AssertionError(f"moat exited with {self.proc.returncode} after SIGTERM: {err[-4000:]}")
        return self.proc.returncode if self.proc else None

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def wait_settled(self, messages, timeout=30, since_start=False):
        """Waits for the deliver lines of `messages` (what a Sink got) and then for those
        messages to leave the spool's queue/. A sink has a message as soon as it answers the
        DATA, before Moat has heard that answer and removed the message: a kill -9 in between
        sends it again at the restart, as it should (at least once). A test that counts what
        reaches a sink across a kill -9 waits for this first."""
        want = collections.Counter(r for x in messages for r in x["rcpts"])

        def delivered():
            lines = [x for x in self.find_logs(since_start, event="deliver") if x.get("to") in want]
            got = collections.Counter(x["to"] for x in lines)
            return lines if all(got[r] >= n for r, n in want.items()) else None
        ids = {x["queue_id"] for x in wait_for(delivered, timeout, what=f"deliver lines for {dict(want)}")}
        queue_dir = os.path.join(self.dir, "spool", "queue")
        wait_for(lambda: not ids & set(os.listdir(queue_dir)), timeout, what=f"{sorted(ids)} to leave queue/")

    def maildir_files(self, address):
        local, domain = address.rsplit("@", 1)
        new = os.path.join(self.maildir, domain.lower(), local.lower(), "new")
        if not os.path.isdir(new):
            return []
        return sorted(os.path.join(new, f) for f in os.listdir(new))

    def cleanup(self):
        try:
            self.stop()
        finally:
            if os.environ.get("MOAT_KEEP_TEST_DIRS") is None:
                shutil.rmtree(self.dir, ignore_errors=True)


def simple_message(from_addr, subject, extra_headers=b"", body=b"hello\r\n", msgid_host="client.test"):
    """A small message From `from_addr` to bob@example.test, its Message-ID made from the Subject."""
    return (b"From: " + from_addr.encode() + b"\r\nTo: bob@example.test\r\nSubject: " + subject.encode() +
            b"\r\nMessage-ID: <" + subject.replace(" ", "-").encode() + b"@" + msgid_host.encode() + b">\r\n" +
            extra_headers + b"\r\n" + body)


def transaction(moat, mail_from, rcpt, data):
    """MAIL, RCPT, DATA one step at a time through `moat`: returns the (code, text) of each step
    that ran, by step name ("mail", "rcpt", "data")."""
    import smtplib
    steps = {}
    s = moat.smtp()
    try:
        s.ehlo()
        steps["mail"] = s.mail(mail_from)
        if steps["mail"][0] != 250:
            return steps
        steps["rcpt"] = s.rcpt(rcpt)
        if steps["rcpt"][0] != 250:
            return steps
        steps["data"] = s.data(data)
        return steps
    finally:
        try:
            s.quit()
        except smtplib.SMTPException:
            s.close()


def sendmail(moat, sender, rcpts, body):
    """One message through `moat` after an EHLO; smtplib raises on a refusal."""
    s = moat.smtp()
    s.ehlo()
    s.sendmail(sender, rcpts, body)
    s.quit()


def maildir_texts(moat, address):
    """The messages in `address`'s Maildir under `moat` (its DSNs, say), as text."""
    out = []
    for path in moat.maildir_files(address):
        with open(path, "rb") as f:
            out.append(f.read().decode("utf-8", "replace"))
    return out


def _cleanup_of(owner):
    """Where `owner` registers a cleanup: a test class (setUpClass) runs it after its last
    test, a test (setUp or the test itself) after that test; either way in reverse order of
    registration, and also when the set-up that registered it fails later on."""
    return owner.addClassCleanup if isinstance(owner, type) else owner.addCleanup


def owned_sink(owner, **kw):
    """A Sink (Sink's keywords) that `owner`, a test class or a test, stops when it is done."""
    sink = Sink(**kw)
    _cleanup_of(owner)(sink.stop)
    return sink


def owned_moat(owner, **kw):
    """A Moat (Moat's keywords) that `owner`, a test class or a test, cleans up when it is
    done; registered after the Sink it relays to, it stops before it."""
    moat = Moat(**kw)
    _cleanup_of(owner)(moat.cleanup)
    return moat


class SinkTestCase(unittest.TestCase):
    """A fresh Sink for each test (`sink_options`: Sink's keywords) and the Moat the test may
    start in self.moat; after the test the daemon is cleaned up first, then the Sink stops."""

    sink_options = {}

    def setUp(self):
        self.sink = Sink(**self.sink_options)
        self.moat = None

    def tearDown(self):
        try:
            if self.moat:
                self.moat.cleanup()
        finally:
            self.sink.stop()

    def send_8bit(self, message):
        """alice@sender.test to bob@example.test through self.moat with BODY=8BITMIME: asserts
        the 250 to DATA and returns the queue id it names."""
        s = self.moat.smtp()
        s.ehlo()
        s.mail("alice@sender.test", ["BODY=8BITMIME"])
        s.rcpt("bob@example.test")
        code, reply = s.data(message)
        s.quit()
        self.assertEqual(code, 250)
        return reply.decode().rsplit(" ", 1)[-1]


class RawClient:
    """A plain socket for what smtplib will not send (pipelined bursts, bare LF, garbage)."""

    def __init__(self, port, timeout=15):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def read_reply(self):
        """One complete (possibly multi-line) reply: [(code, text), ...]."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed; got %r" % (lines,))
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            text = line.decode("utf-8", "replace")
            lines.append((int(text[:3]), text[4:]))
            if len(text) < 4 or text[3] == " ":
                return lines

    def code(self):
        return self.read_reply()[-1][0]

    def close(self):
        self.sock.close()
