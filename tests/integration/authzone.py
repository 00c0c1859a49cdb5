"""Helpers for Moat's authentication end-to-end tests: the loopback DNS server of
tests/support/dns_server.py run as a child process with a zone the test writes, and DKIM
keys made at test time with openssl (never stored in the tree).

Only 127.0.0.1 is used; the server is stopped by its PID; every wait is bounded.
"""

import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from harness import SOURCE_DIR, SinkTestCase, _cleanup_of, wait_for  # noqa: E402

# Debian's python3-yaml and python3-dnslib live with the system interpreter.
SYSTEM_PYTHON = "/usr/bin/python3"
DNS_SERVER = os.path.join(SOURCE_DIR, "tests", "support", "dns_server.py")


class DnsServer:
    """An authoritative DNS server on 127.0.0.1 serving `zone` (a dict in the SPF suite's
    zonedata form: name -> list of records). `nameserver` is "127.0.0.1:PORT"."""

    def __init__(self, zone, directory=None):
        import yaml
        self.own_dir = directory is None  # a directory made here is removed by stop()
        self.dir = directory or tempfile.mkdtemp(prefix="moat-dns-")
        self.zone_path = os.path.join(self.dir, "zone.yaml")
        self.port_path = os.path.join(self.dir, "dns.port")
        self.querylog = os.path.join(self.dir, "queries.log")
        with open(self.zone_path, "w") as f:
            yaml.safe_dump({"zonedata": zone}, f)
        self.proc = subprocess.Popen([SYSTEM_PYTHON, DNS_SERVER, "--zone", self.zone_path, "--port", "0",
                                      "--portfile", self.port_path, "--querylog", self.querylog],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError("dns_server.py exited %s: %s" %
                                     (self.proc.returncode, self.proc.stderr.read().decode(errors="replace")))
            return os.path.exists(self.port_path)
        wait_for(listening, 15, what="the test DNS server to listen")
        with open(self.port_path) as f:
            self.port = int(f.read().strip())

    @property
    def nameserver(self):
        return f"127.0.0.1:{self.port}"

    def queries(self):
        if not os.path.exists(self.querylog):
            return []
        with open(self.querylog) as f:
            return [l.strip() for l in f if l.strip()]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        if self.own_dir and os.environ.get("MOAT_KEEP_TEST_DIRS") is None:
            shutil.rmtree(self.dir, ignore_errors=True)


def owned_dns(owner, zone, directory=None):
    """A DnsServer serving `zone` that `owner`, a test class or a test, stops when it is done."""
    dns = DnsServer(zone, directory=directory)
    _cleanup_of(owner)(dns.stop)
    return dns


class DnsSinkTestCase(SinkTestCase):
    """SinkTestCase with a DnsServer serving the class's ZONE for each test, in self.dns;
    stopped after the daemon and the Sink."""

    ZONE = {}

    def setUp(self):
        self.dns = owned_dns(self, self.ZONE)
        super().setUp()


def _openssl(*args, stdin=None):
    return subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, input=stdin).stdout


def rsa_key(path, bits=2048):
    """A PKCS#1 RSA key (the form python3-dkim signs with); returns the DKIM TXT value."""
    _openssl("genrsa", "-traditional", "-out", path, str(bits))
    der = _openssl("rsa", "-in", path, "-pubout", "-outform", "DER")
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def ed25519_key(path):
    """A PKCS#8 ed25519 key; returns the DKIM TXT value (RFC 8463: p= is the raw 32-octet
    public key, the last 32 octets of its SubjectPublicKeyInfo)."""
    _openssl("genpkey", "-algorithm", "ed25519", "-out", path)
    der = _openssl("pkey", "-in", path, "-pubout", "-outform", "DER")
    return "v=DKIM1; k=ed25519; p=" + base64.b64encode(der[-32:]).decode()


def txt_lookup(records):
    """A python3-dkim dnsfunc answering from {name: txt value}."""
    def dnsfunc(name, timeout=5):
        key = (name.decode() if isinstance(name, bytes) else name).rstrip(".").lower()
        value = records.get(key)
        return value.encode() if value is not None else None
    return dnsfunc


def header_values(data, name):
    """Every value of header `name` in a raw message (unfolded, in order)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    out, current = [], None
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t") and current is not None:
            current[1] += " " + line.strip()
            continue
        key, _, value = line.partition(":")
        current = [key.strip().lower(), value.strip()]
        out.append(current)
    return [v for k, v in out if k == name.lower()]
