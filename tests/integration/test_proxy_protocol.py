"""The PROXY protocol (HAProxy's, v1 and v2) on a listener with `proxy_protocol = true`: the
header's client address stands for the connection's in the `connect` line, Received, relay
control, the per-address limit and the block list; no header, a bad one, a late one or a
peer outside `proxy_networks` is closed without a greeting and a `proxy_refused` line. The
real daemon on loopback: every connection comes from 127.0.0.1 (127.0.0.2 for the one outside
proxy_networks); the addresses inside the headers (127.x.x.x, ::2) are only data."""

import os
import shutil
import socket
import ssl
import struct
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from authzone import header_values, owned_dns  # noqa: E402
from harness import RawClient, check_config, free_port, make_cert, owned_moat, scrape, wait_for  # noqa: E402

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MESSAGE = b"From: a@sender.test\r\nTo: bob@example.test\r\nSubject: proxied\r\n\r\nHello.\r\n"


def v1(src, sport=5678, dst="127.0.0.1", dport=25):
    family = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src=None, sport=5678, dst=None, dport=25, command=1, tlvs=b""):
    """A v2 header; with `src` None, a LOCAL one (command 0) without addresses."""
    if src is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    six = ":" in src
    fam = socket.AF_INET6 if six else socket.AF_INET
    dst = dst or ("::1" if six else "127.0.0.1")
    block = socket.inet_pton(fam, src) + socket.inet_pton(fam, dst) + struct.pack("!HH", sport, dport) + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, 0x21 if six else 0x11]) + struct.pack("!H", len(block)) + block


def connect(port, source="127.0.0.1"):
    c = RawClient.__new__(RawClient)
    c.sock = socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0))
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.buf = b""
    return c


def closed_without_a_word(c):
    """The server closes and sends nothing (no greeting, no 421)."""
    try:
        data = c.sock.recv(4096)
    except ConnectionResetError:
        data = b""
    c.close()
    return data == b""


class ProxyProtocolTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.metrics_port = free_port()
        cls.moat = owned_moat(
            cls, networks=["127.9.9.0/24"], server_extra=f'metrics_listen = "127.0.0.1:{cls.metrics_port}"',
            listener_extra='proxy_protocol = true\nproxy_networks = ["127.0.0.1", "::1"]\nproxy_timeout = "1s"\n',
            extra='\n[limits]\nmax_connections_per_ip = 2\n\n[connection]\nblock = ["127.6.6.6"]\n'
                  'max_rate_per_ip = 3\n')

    def session_mail(self, c, rcpt="bob@example.test"):
        """EHLO, MAIL, RCPT, DATA with MESSAGE on an open session: the final reply code."""
        c.send("EHLO client.test\r\n")
        self.assertEqual(c.code(), 250)
        c.send("MAIL FROM:<a@sender.test>\r\n")
        self.assertEqual(c.code(), 250)
        c.send(f"RCPT TO:<{rcpt}>\r\n")
        code = c.code()
        if code != 250:
            return code
        c.send("DATA\r\n")
        self.assertEqual(c.code(), 354)
        c.send(MESSAGE + b".\r\n")
        return c.code()

    def head_of_new_message(self, before, client):
        """The header of the message from `client` (its Received: names it) delivered since the
        maildir held the files `before`: Maildir names do not sort by arrival, and another
        test's message may land meanwhile."""
        def heads():
            out = []
            for path in set(self.moat.maildir_files("bob@example.test")) - before:
                with open(path, "rb") as f:  # Maildir keeps LF
                    head = f.read().replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode()
                if f"[{client}])" in head:
                    out.append(head)
            return out
        found = wait_for(heads, 20, what=f"the message from {client}")
        self.assertEqual(len(found), 1)
        return found[0]

    def test_v1_header_names_the_client_everywhere(self):
        before = set(self.moat.maildir_files("bob@example.test"))
        c = connect(self.moat.port)
        c.send(v1("127.9.9.9", 40001))
        self.assertEqual(c.code(), 220)
        self.assertEqual(self.session_mail(c), 250)
        c.send("QUIT\r\n")
        c.code()
        c.close()
        ev = self.moat.wait_log(event="connect", client_ip="127.9.9.9", client_port=40001)
        self.assertEqual(ev["proxy"], "127.0.0.1")
        self.moat.wait_log(event="accept", client_ip="127.9.9.9")
        head = self.head_of_new_message(before, "127.9.9.9")
        self.assertIn("(unknown [127.9.9.9])", head)
        self.assertNotIn("[127.0.0.1]", head)

    def test_v2_header_with_ipv6_and_tlvs(self):
        c = connect(self.moat.port)
        c.send(v2("::2", 40002, tlvs=b"\x04\x00\x02\x00\x00"))
        self.assertEqual(c.code(), 220)
        c.send("EHLO client.test\r\n")
        lines = c.read_reply()
        self.assertIn("[IPv6:::2]", lines[0][1])
        c.close()
        ev = self.moat.wait_log(event="connect", client_ip="::2", client_port=40002)
        self.assertEqual(ev["proxy"], "127.0.0.1")

    def test_v2_ipv4_mapped_address_is_ipv4(self):
        c = connect(self.moat.port)
        c.send(v2("::ffff:127.9.9.10", 40003))
        self.assertEqual(c.code(), 220)
        c.close()
        self.moat.wait_log(event="connect", client_ip="127.9.9.10", client_port=40003)

    def test_relay_control_follows_the_header_address(self):
        c = connect(self.moat.port)
        c.send(v1("127.9.9.11"))
        self.assertEqual(c.code(), 220)
        self.assertEqual(self.session_mail(c, "someone@elsewhere.test"), 250)  # 127.9.9.0/24 may relay
        c.close()
        c = connect(self.moat.port)  # the same TCP peer, another client behind it
        c.send(v2("127.8.8.8"))
        self.assertEqual(c.code(), 220)
        self.assertEqual(self.session_mail(c, "someone@elsewhere.test"), 554)
        c.close()
        ev = self.moat.wait_log(event="reject", client_ip="127.8.8.8", stage="rcpt")
        self.assertTrue(ev["reply"].startswith("554 5.7.1"))

    def test_per_address_limit_counts_the_header_address(self):
        held = []
        for i in range(2):
            c = connect(self.moat.port)
            c.send(v1("127.7.7.7"))
            self.assertEqual(c.code(), 220, i)
            held.append(c)
        c = connect(self.moat.port)
        c.send(v1("127.7.7.7"))
        code, text = c.read_reply()[-1]
        self.assertEqual(code, 421)
        self.assertIn("Too many connections from your address", text)
        c.close()
        ev = self.moat.wait_log(event="reject", client_ip="127.7.7.7", stage="connect")
        self.assertEqual(ev["proxy"], "127.0.0.1")
        # Another client through the same balancer is not held back.
        c = connect(self.moat.port)
        c.send(v1("127.7.7.8"))
        self.assertEqual(c.code(), 220)
        c.close()
        for h in held:
            h.close()

    def test_connection_rate_counts_the_header_address(self):
        for i in range(3):
            c = connect(self.moat.port)
            c.send(v1("127.4.4.4"))
            self.assertEqual(c.code(), 220, i)
            c.send("QUIT\r\n")
            self.assertEqual(c.code(), 221)
            c.close()
        c = connect(self.moat.port)
        c.send(v1("127.4.4.4"))
        code, text = c.read_reply()[-1]
        self.assertEqual(code, 421)
        self.assertIn("Too many connections from your address in the last minute", text)
        c.close()
        c = connect(self.moat.port)  # the balancer itself is not what is counted
        c.send(v1("127.4.4.5"))
        self.assertEqual(c.code(), 220)
        c.close()

    def test_block_list_looks_at_the_header_address(self):
        c = connect(self.moat.port)
        c.send(v1("127.6.6.6"))
        self.assertEqual(c.read_reply()[-1], (554, "5.7.1 mx.moat.test Access denied"))
        c.close()

    def test_pipelined_commands_in_the_header_segment_are_kept(self):
        before = set(self.moat.maildir_files("bob@example.test"))
        c = connect(self.moat.port)
        c.send(v2("127.9.9.12", 40004) + b"EHLO client.test\r\nMAIL FROM:<a@sender.test>\r\n"
               b"RCPT TO:<bob@example.test>\r\nDATA\r\n")
        self.assertEqual(c.code(), 220)
        self.assertEqual(c.code(), 250)
        self.assertEqual(c.code(), 250)
        self.assertEqual(c.code(), 250)
        self.assertEqual(c.code(), 354)
        c.send(MESSAGE + b".\r\nQUIT\r\n")
        self.assertEqual(c.code(), 250)
        self.assertEqual(c.code(), 221)
        c.close()
        self.moat.wait_log(event="accept", client_ip="127.9.9.12")
        self.assertIn("[127.9.9.12])", self.head_of_new_message(before, "127.9.9.12"))

    def test_unknown_and_local_keep_the_proxy_address(self):
        for header in (b"PROXY UNKNOWN\r\n", v2(None)):
            with self.subTest(header=header):
                n = len(self.moat.find_logs(event="connect", client_ip="127.0.0.1", proxy="127.0.0.1"))
                c = connect(self.moat.port)
                c.send(header + b"QUIT\r\n")
                self.assertEqual(c.code(), 220)
                self.assertEqual(c.code(), 221)
                c.close()
                self.moat.wait_log(event="connect", client_ip="127.0.0.1", proxy="127.0.0.1", count=n + 1)

    def wait_refused(self, reason_start, source="127.0.0.1"):
        """The proxy_refused line for `source` whose reason starts with `reason_start`."""
        def found():
            return [l for l in self.moat.find_logs(event="proxy_refused", proxy=source)
                    if l["reason"].startswith(reason_start)]
        return wait_for(found, 20, what=f"proxy_refused {reason_start!r}")[-1]

    def test_no_header_is_closed_without_a_greeting(self):
        c = connect(self.moat.port)
        c.send("EHLO client.test\r\n")
        self.assertTrue(closed_without_a_word(c))
        self.wait_refused("PROXY protocol: not a PROXY protocol header")

    def test_garbage_and_an_over_long_header_are_closed(self):
        for data, reason in ((b"PROXY TCP4 127.9.9.9 127.0.0.1 99999 25\r\n", 'v1: "99999" is not a port'),
                             (b"PROXY TCP4 127.9.9.9 ::1 1 25\r\n", 'v1: "::1" is not an IPv4 address'),
                             (b"PROXY UNKNOWN " + b"x" * 200, "v1: no CRLF within 107 octets"),
                             (V2_SIGNATURE + b"\x21\x11\x02\x10" + b"\0" * 600, "v2: a header of 544 octets, over 536"),
                             (V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\0" * 12, "v2: transport 2, not STREAM"),
                             (V2_SIGNATURE[:6] + b"X" * 10, "not a PROXY protocol header (a bad v2 signature)")):
            with self.subTest(reason=reason):
                c = connect(self.moat.port)
                c.send(data)
                self.assertTrue(closed_without_a_word(c))
                ev = self.wait_refused("PROXY protocol: " + reason)
                self.assertEqual(ev["listener"], "127.0.0.1:0")
        self.assertEqual(self.moat.find_logs(event="connect", client_ip="127.9.9.9", client_port=99999), [])

    def test_a_header_too_late_is_a_timeout(self):
        c = connect(self.moat.port)
        c.send("PROXY TCP4 127.9.9.13")  # and no more
        start = time.monotonic()
        self.assertTrue(closed_without_a_word(c))
        self.assertLess(time.monotonic() - start, 10)
        self.wait_refused("PROXY protocol: timeout")
        self.assertEqual(self.moat.find_logs(event="connect", client_ip="127.9.9.13"), [])

    def test_a_balancer_health_check_is_counted_not_logged(self):
        """A plain TCP health check (connect, close, not a byte) from a balancer is counted in
        moat_proxy_health_checks_total and logged only at debug (not at the default info); a close halfway through a
        header is still a proxy_refused line."""
        before = scrape(self.metrics_port).get("moat_proxy_health_checks_total", 0)
        checks = []
        for _ in range(3):
            c = connect(self.moat.port)
            checks.append(c.sock.getsockname()[1])
            c.close()
        wait_for(lambda: scrape(self.metrics_port)["moat_proxy_health_checks_total"] >= before + 3, 20,
                 what="three health checks counted")
        c = connect(self.moat.port)
        half = c.sock.getsockname()[1]
        c.send("PROXY TCP4 127.9.9.15")
        c.sock.shutdown(socket.SHUT_WR)
        self.assertTrue(closed_without_a_word(c))
        ev = wait_for(lambda: self.moat.find_logs(event="proxy_refused", proxy_port=half), 20, what="half header")[-1]
        self.assertEqual(ev["reason"], "PROXY protocol: closed before the header ended")
        self.assertEqual(ev["level"], "info")
        for port in checks:  # the harness logs at debug
            lines = self.moat.find_logs(event="proxy_refused", proxy_port=port)
            self.assertEqual([(l["level"], l["reason"]) for l in lines],
                             [("debug", "PROXY protocol: closed without sending anything")])
        self.assertEqual(scrape(self.metrics_port)["moat_proxy_health_checks_total"], before + 3)

    def test_a_peer_outside_proxy_networks_is_closed_at_once(self):
        c = connect(self.moat.port, source="127.0.0.2")
        c.send(v1("127.9.9.14"))
        self.assertTrue(closed_without_a_word(c))
        self.wait_refused("not in proxy_networks", source="127.0.0.2")
        self.assertEqual(self.moat.find_logs(event="connect", client_ip="127.9.9.14"), [])


class ProxyProtocolDnsTest(unittest.TestCase):
    """Reverse DNS, SPF and the DNS blocklist ask about the header's address, on a real DNS
    server on loopback that knows only the proxied clients (not 127.0.0.1, the balancer)."""

    ZONE = {
        "9.9.9.127.in-addr.arpa": [{"PTR": "client.proxied.test"}],
        "client.proxied.test": [{"A": "127.9.9.9"}],
        "sender.test": [{"TXT": "v=spf1 ip4:127.9.9.9 -all"}],
        "5.5.5.127.bl.test": [{"A": "127.0.0.2"}],
    }

    @classmethod
    def setUpClass(cls):
        cls.dns = owned_dns(cls, cls.ZONE)
        cls.moat = owned_moat(
            cls, networks=["10.255.255.0/24"], reverse_dns=True,
            listener_extra='proxy_protocol = true\nproxy_networks = ["127.0.0.1"]\n',
            extra=f'\n[dns]\nnameservers = ["{cls.dns.nameserver}"]\ntimeout = "2s"\n'
                  '\n[dnsbl]\nzones = ["bl.test"]\n')

    def test_reverse_dns_and_spf_use_the_header_address(self):
        c = connect(self.moat.port)
        c.send(v1("127.9.9.9"))
        self.assertEqual(c.code(), 220)
        c.send("EHLO client.test\r\n")
        self.assertEqual(c.code(), 250)
        c.send("MAIL FROM:<alice@sender.test>\r\n")
        self.assertEqual(c.code(), 250)
        c.send("RCPT TO:<bob@example.test>\r\n")
        self.assertEqual(c.code(), 250)
        c.send("DATA\r\n")
        self.assertEqual(c.code(), 354)
        c.send(MESSAGE + b".\r\n")
        self.assertEqual(c.code(), 250)
        c.close()
        files = wait_for(lambda: self.moat.maildir_files("bob@example.test"), 20, what="the message")
        with open(files[-1], "rb") as f:
            data = f.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # Maildir keeps LF
        received = header_values(data, "Received")[0]
        self.assertIn("(client.proxied.test [127.9.9.9])", received)
        results = header_values(data, "Authentication-Results")[0]
        self.assertIn("spf=pass", results)
        accept = self.moat.wait_log(event="accept", client_ip="127.9.9.9")
        self.assertEqual(accept["client_name"], "client.proxied.test")

    def test_the_blocklist_looks_up_the_header_address(self):
        c = connect(self.moat.port)
        c.send(v2("127.5.5.5"))
        self.assertEqual(c.code(), 220)
        c.send("EHLO client.test\r\n")
        self.assertEqual(c.code(), 250)
        c.send("MAIL FROM:<alice@sender.test>\r\n")
        code, text = c.read_reply()[-1]
        self.assertEqual(code, 554)
        self.assertIn("client [127.5.5.5] blocked using bl.test", text)
        c.close()


class ProxyProtocolReloadTest(unittest.TestCase):
    def test_proxy_networks_is_reloaded_proxy_protocol_needs_a_restart(self):
        moat = owned_moat(self, listener_extra='proxy_protocol = true\nproxy_networks = ["127.0.0.1"]\n')
        with open(moat.config_path) as f:
            text = f.read()
        line = moat.reload_with(moat.config_path, text.replace('proxy_networks = ["127.0.0.1"]',
                                                                 'proxy_networks = ["127.0.0.2"]'))
        self.assertNotIn("note", line)
        c = connect(moat.port)
        c.send(v1("127.9.9.9"))
        self.assertTrue(closed_without_a_word(c))
        wait_for(lambda: moat.find_logs(event="proxy_refused", proxy="127.0.0.1", reason="not in proxy_networks"), 20,
                 what="the refusal of the balancer no longer listed")
        c = connect(moat.port, source="127.0.0.2")
        c.send(v1("127.9.9.9"))
        self.assertEqual(c.code(), 220)
        c.close()
        line = moat.reload_with(moat.config_path, text.replace("proxy_protocol = true", "proxy_protocol = false"))
        self.assertIn("listener 127.0.0.1:0", line.get("note", ""))
        c = connect(moat.port)  # still the running listener: a header first
        c.send(v1("127.9.9.16"))
        self.assertEqual(c.code(), 220)
        c.close()
        moat.wait_log(event="connect", client_ip="127.9.9.16")


class _TlsOverSocket:
    """TLS through memory BIOs, so the PROXY header and the ClientHello leave in one send."""

    def __init__(self, sock, first):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock, self.inc, self.out = sock, ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")
        self.buf = b""
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        self.sock.sendall(first + self.out.read())
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._pump()
        self._flush()

    def _flush(self):
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def _pump(self):
        self._flush()
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed during TLS")
        self.inc.write(chunk)

    def send(self, data):
        self.tls.write(data)
        self._flush()

    def code(self):
        while True:
            while b"\r\n" not in self.buf:
                try:
                    self.buf += self.tls.read(65536)
                except ssl.SSLWantReadError:
                    self._pump()
            line, self.buf = self.buf.split(b"\r\n", 1)
            if line[3:4] == b" ":
                return int(line[:3])


class ProxyProtocolSmtpsTest(unittest.TestCase):
    def test_smtps_behind_a_balancer_reads_the_header_then_tls(self):
        d = tempfile.mkdtemp(prefix="moat-proxy-")
        self.addCleanup(shutil.rmtree, d, True)
        cert, key = make_cert(d)
        moat = owned_moat(self, listener_extra=f'mode = "smtps"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
                                                'proxy_protocol = true\nproxy_networks = ["127.0.0.1"]\n')
        sock = socket.create_connection(("127.0.0.1", moat.port), timeout=15)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.addCleanup(sock.close)
        t = _TlsOverSocket(sock, v2("127.9.9.15", 40005))
        self.assertEqual(t.code(), 220)
        t.send(b"EHLO client.test\r\n")
        self.assertEqual(t.code(), 250)
        t.send(b"QUIT\r\n")
        self.assertEqual(t.code(), 221)
        ev = moat.wait_log(event="connect", client_ip="127.9.9.15", client_port=40005)
        self.assertEqual(ev["proxy"], "127.0.0.1")


class ProxyProtocolConfigTest(unittest.TestCase):
    def check(self, listener_extra):
        path, r = check_config(self, '[server]\nhostname = "mx.moat.test"\nspool_dir = "spool"\nlog_file = "-"\n\n'
                                     '[[listener]]\naddress = "127.0.0.1:0"\n' + listener_extra)
        return r, path

    def test_proxy_protocol_without_proxy_networks_is_refused_with_file_line(self):
        r, path = self.check("proxy_protocol = true\n")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(f"{path}:8: [[listener]].proxy_protocol: needs proxy_networks", r.stdout + r.stderr)
        r, path = self.check('proxy_protocol = true\nproxy_networks = ["127.0.0.1", "not-a-network"]\n')
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"{path}:9: [[listener]].proxy_networks: \"not-a-network\" is not an address or CIDR network",
                      r.stdout + r.stderr)
        r, path = self.check('proxy_protocol = true\nproxy_networks = ["127.0.0.1"]\n')
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main()
