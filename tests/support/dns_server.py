#!/usr/bin/env python3
"""tests/support/dns_server.py — a small authoritative DNS server on loopback for Moat's tests.

Serves one zone written in the zonedata format of the public SPF suite
(/work/shared/conformance/README.md, "Format"), over UDP and TCP on 127.0.0.1, on the
same port for both (RFC 1035 4.2; RFC 7766: TCP is needed for truncated answers).
Negative answers carry an SOA in the authority section so resolvers can cache them
(RFC 2308). Usage and the zone format: tests/support/README.md.

Untrusted input: every query packet (parsed by dnslib; a packet that does not parse is
dropped). The zone file is trusted test data, but a record dnslib cannot encode makes that
one answer SERVFAIL rather than killing the server.

Logs: one line per query "NAME TYPE" to --querylog (when given; flushed at once, so tests
can count how often the server was asked), errors to stderr.
"""

import argparse
import heapq
import os
import selectors
import signal
import socket
import sys
import time

try:
    import yaml
    from dnslib import (AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, SOA, TLSA, TXT, A, DNSHeader,
                        DNSRecord)
except ImportError as e:  # pragma: no cover - environment problem, say it plainly
    sys.stderr.write("dns_server.py: needs python3-dnslib and python3-yaml (%s); "
                     "run it with /usr/bin/python3\n" % e)
    sys.exit(2)

DEFAULT_TTL = 300
MAX_UDP = 512           # without EDNS (RFC 1035 4.2.1)
MAX_CNAME_CHAIN = 8     # bounds CNAME chasing inside the zone (loops in test data)
TYPE_NAMES = ("A", "AAAA", "MX", "TXT", "SPF", "PTR", "CNAME", "TLSA")


class ZoneError(Exception):
    pass


def norm_name(name):
    """Zone and query names compare case-insensitively (ASCII only, RFC 4343), without
    the trailing dot; kept as bytes so any octet in a label survives."""
    if not isinstance(name, bytes):
        name = str(name).encode("utf-8")
    return name.rstrip(b".").lower()


def txt_strings(value):
    """A TXT/SPF value: one string, or a list of strings (character-strings of one
    record). Each string longer than 255 octets is split into 255-octet pieces."""
    if value is None:
        value = []
    if not isinstance(value, (list, tuple)):
        value = [value]
    out = []
    for v in value:
        b = v if isinstance(v, bytes) else str(v).encode("utf-8")
        if not b:
            out.append(b"")
        while b:
            out.append(b[:255])
            b = b[255:]
    return out


class Name:
    """What the zone says about one owner name, in file order.

    items: list of ("REC", type, value) | ("TIMEOUT", None) | ("TIMEOUT_TYPE", type)
           | ("SERVFAIL", None)
    secure: answers about this name say "DNSSEC-validated" (the AD bit) to a query that
            asked for it with AD or DO, as a validating resolver does (RFC 6840 5.7).
    delay: seconds a UDP answer about this name is held back (a slow server), 0 for none.
    """

    def __init__(self):
        self.items = []
        self.ttl = None
        self.secure = False
        self.delay = 0.0


def parse_name_entries(owner, entries, default_ttl):
    n = Name()
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise ZoneError("%s: expected a list of records" % owner)
    generated_txt = []
    explicit_txt = False
    for item in entries:
        if item == "TIMEOUT":
            n.items.append(("TIMEOUT", None))
            continue
        if item == "SERVFAIL":
            n.items.append(("SERVFAIL", None))
            continue
        if not isinstance(item, dict):
            raise ZoneError("%s: bad item %r" % (owner, item))
        for rtype, value in item.items():
            rtype = str(rtype).upper()
            if rtype == "TTL":
                n.ttl = int(value)
                continue
            if rtype == "SECURE":
                n.secure = bool(value)
                continue
            if rtype == "DELAY":
                n.delay = float(value)
                if not 0 <= n.delay <= 30:
                    raise ZoneError("%s: DELAY must be from 0 to 30 seconds" % owner)
                continue
            if rtype in ("TIMEOUT", "SERVFAIL"):
                if value:
                    n.items.append((rtype, None))
                continue
            if rtype not in TYPE_NAMES:
                raise ZoneError("%s: unknown record type %s" % (owner, rtype))
            if rtype == "TXT":
                explicit_txt = True
            elif rtype == "SPF" and value != "NONE":
                generated_txt.append(value)
            if value == "NONE":
                continue
            if value == "TIMEOUT":
                n.items.append(("TIMEOUT_TYPE", rtype))
                continue
            n.items.append(("REC", rtype, value))
    # As the suite's reference driver does: SPF records are also TXT records unless the
    # name has any explicit TXT entry; the generated ones come last (after a TIMEOUT).
    if not explicit_txt:
        for v in generated_txt:
            n.items.append(("REC", "TXT", v))
    if n.ttl is None:
        n.ttl = default_ttl
    return n


def load_zone(path, scenario):
    with open(path, "rb") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    if not docs:
        raise ZoneError("%s: no YAML document" % path)
    if scenario is None:
        if len(docs) > 1:
            raise ZoneError("%s has %d documents: pick one with --scenario N" % (path, len(docs)))
        scenario = 0
    if not 0 <= scenario < len(docs):
        raise ZoneError("%s: --scenario %d out of range (0..%d)" % (path, scenario, len(docs) - 1))
    doc = docs[scenario]
    if not isinstance(doc, dict):
        raise ZoneError("%s: document %d is not a mapping" % (path, scenario))
    default_ttl = DEFAULT_TTL
    if "zonedata" in doc:
        if "ttl" in doc:
            default_ttl = int(doc["ttl"])
        data = doc["zonedata"] or {}
    else:
        data = doc
    if not isinstance(data, dict):
        raise ZoneError("%s: zonedata is not a mapping" % path)
    zone = {}
    for owner, entries in data.items():
        key = norm_name(owner)
        parsed = parse_name_entries(owner, entries, default_ttl)
        if key in zone:  # the same name twice (different case): merge in order
            zone[key].items.extend(parsed.items)
        else:
            zone[key] = parsed
    return zone, default_ttl


def name_bytes(value):
    """A target name as raw octets (no IDNA conversion); "." is the root."""
    b = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return b.rstrip(b".") if b != b"." else b""


def make_rdata(rtype, value):
    if rtype == "A":
        return QTYPE.A, A(str(value))
    if rtype == "AAAA":
        return QTYPE.AAAA, AAAA(str(value))
    if rtype == "MX":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ZoneError("MX wants [preference, exchange], got %r" % (value,))
        return QTYPE.MX, MX(name_bytes(value[1]), int(value[0]))
    if rtype in ("TXT", "SPF"):
        return (QTYPE.TXT if rtype == "TXT" else 99), TXT(txt_strings(value))
    if rtype == "PTR":
        return QTYPE.PTR, PTR(name_bytes(value))
    if rtype == "CNAME":
        return QTYPE.CNAME, CNAME(name_bytes(value))
    if rtype == "TLSA":
        if not isinstance(value, (list, tuple)) or len(value) != 4:
            raise ZoneError("TLSA wants [usage, selector, matching type, hex data], got %r" % (value,))
        return QTYPE.TLSA, TLSA(int(value[0]), int(value[1]), int(value[2]), bytes.fromhex(str(value[3])))
    raise ZoneError("unknown type %s" % rtype)


class Lookup:
    """Outcome of a query against the zone: rcode, answer RRs, or drop (time out)."""

    def __init__(self):
        self.rcode = RCODE.NOERROR
        self.answers = []
        self.drop = False
        self.negative_owner = None
        self.negative_ttl = DEFAULT_TTL
        self.names = []  # every name the answer is about (the CNAME chain's too)


def records_for(entry, qtype_name):
    """Records of one type for one name, applying TIMEOUT rules: a bare TIMEOUT answers
    only types already seen before it; `TYPE: TIMEOUT` times out that type. Returns
    (records, timeout, servfail)."""
    seen = []
    for it in entry.items:
        kind = it[0]
        if kind == "TIMEOUT":
            return seen, not seen, False
        if kind == "SERVFAIL":
            return [], False, True
        if kind == "TIMEOUT_TYPE":
            if it[1] == qtype_name:
                return [], True, False
            continue
        _, rtype, value = it
        if rtype == qtype_name:
            seen.append(value)
    return seen, False, False


def resolve(zone, default_ttl, qname, qtype, chase=True):
    res = Lookup()
    qtype_name = QTYPE.get(qtype, str(qtype))
    name = qname
    for _ in range(MAX_CNAME_CHAIN + 1):
        res.names.append(name)
        entry = zone.get(name)
        if entry is None:
            # Also at the end of a CNAME chain: the rcode is the last name's (RFC 6604).
            res.rcode = RCODE.NXDOMAIN
            res.negative_owner, res.negative_ttl = name, default_ttl
            return res
        recs, timeout, servfail = records_for(entry, qtype_name)
        if timeout:
            res.drop = True
            return res
        if servfail:
            res.rcode = RCODE.SERVFAIL
            return res
        if recs:
            for value in recs:
                rt, rd = make_rdata(qtype_name, value)
                res.answers.append(RR(name, rt, rdata=rd, ttl=entry.ttl))
            return res
        if qtype_name != "CNAME":
            cnames, timeout, servfail = records_for(entry, "CNAME")
            if cnames and not timeout and not servfail:
                rt, rd = make_rdata("CNAME", cnames[0])
                res.answers.append(RR(name, rt, rdata=rd, ttl=entry.ttl))
                if not chase:  # as a server not authoritative for the target would
                    return res
                name = norm_name(cnames[0])
                continue
        res.negative_owner, res.negative_ttl = name, entry.ttl
        return res
    res.rcode = RCODE.SERVFAIL  # a CNAME loop
    res.answers = []
    return res


def soa_for(owner, ttl):
    """The SOA of a negative answer: its MINIMUM and TTL are the negative TTL (RFC 2308).
    The apex is a guess (the last two labels): the zone file has no apex."""
    labels = [l for l in owner.split(b".") if l][-2:]
    return RR(labels, QTYPE.SOA, ttl=ttl,
              rdata=SOA(tuple([b"ns"] + labels), tuple([b"hostmaster"] + labels),
                        (1, 3600, 600, 86400, ttl)))


class Server:
    def __init__(self, zone, default_ttl, querylog, chase=True):
        self.zone = zone
        self.chase = chase
        self.default_ttl = default_ttl
        self.querylog = querylog
        self.sel = selectors.DefaultSelector()
        self.tcp_buffers = {}
        self.stopping = False
        self.delayed = []  # heap of (due, sequence, packet, address): DELAY answers
        self.sequence = 0

    def bind(self, port):
        """UDP and TCP on the same port; with port 0 retry until both binds succeed."""
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", port))
            chosen = udp.getsockname()[1]
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind(("127.0.0.1", chosen))
            except OSError:
                udp.close()
                tcp.close()
                if port != 0:
                    raise
                continue
            tcp.listen(64)
            udp.setblocking(False)
            tcp.setblocking(False)
            self.udp, self.tcp, self.port = udp, tcp, chosen
            self.sel.register(udp, selectors.EVENT_READ, self.on_udp)
            self.sel.register(tcp, selectors.EVENT_READ, self.on_accept)
            return chosen
        raise OSError("no free port for UDP and TCP together")

    def answer(self, data, max_size):
        try:
            query = DNSRecord.parse(data)
        except Exception:
            return None  # not a DNS message: drop
        if query.header.qr or len(query.questions) != 1:
            return None
        q = query.questions[0]
        qname = norm_name(b".".join(q.qname.label))
        if self.querylog:
            self.querylog.write("%s %s\n" % (qname.decode("latin-1"), QTYPE.get(q.qtype, q.qtype)))
            self.querylog.flush()
        reply = DNSRecord(DNSHeader(id=query.header.id, qr=1, aa=1, ra=1, rd=query.header.rd),
                          q=q)
        try:
            res = resolve(self.zone, self.default_ttl, qname, q.qtype, self.chase)
            if res.drop:
                return None
            reply.header.rcode = res.rcode
            for rr in res.answers:
                reply.add_answer(rr)
            if res.rcode != RCODE.SERVFAIL and self.validated(query, res):
                reply.header.ad = 1
            if res.rcode == RCODE.NXDOMAIN or (res.rcode == RCODE.NOERROR and not res.answers):
                reply.add_auth(soa_for(res.negative_owner or qname, res.negative_ttl))
            packed = reply.pack()
        except Exception as e:  # bad zone data for this answer
            sys.stderr.write("dns_server.py: %s %s: %s\n" % (qname, q.qtype, e))
            reply = DNSRecord(DNSHeader(id=query.header.id, qr=1, aa=1, ra=1,
                                        rd=query.header.rd, rcode=RCODE.SERVFAIL), q=q)
            packed = reply.pack()
        if max_size and len(packed) > max_size:
            # Keep the question: resolvers match it before retrying over TCP.
            reply = DNSRecord(DNSHeader(id=query.header.id, qr=1, aa=1, ra=1, tc=1,
                                        rd=query.header.rd, rcode=reply.header.rcode), q=q)
            packed = reply.pack()
        return packed

    def validated(self, query, res):
        """AD only for a query that asks (AD, or DO in its OPT RR) about secure names only."""
        asked = query.header.ad or any(ar.rtype == QTYPE.OPT and (ar.ttl & 0x8000) for ar in query.ar)
        return bool(asked) and all(n in self.zone and self.zone[n].secure for n in res.names)

    @staticmethod
    def udp_limit(data):
        """512, or the EDNS0 payload size the client advertised (RFC 6891 6.2.3)."""
        try:
            q = DNSRecord.parse(data)
            for ar in q.ar:
                if ar.rtype == QTYPE.OPT:
                    return max(MAX_UDP, min(ar.rclass, 4096))
        except Exception:
            pass
        return MAX_UDP

    def on_udp(self, sock):
        try:
            data, addr = sock.recvfrom(65535)
        except (BlockingIOError, InterruptedError):
            return
        out = self.answer(data, self.udp_limit(data))
        if out is None:
            return
        delay = self.delay_of(data)
        if delay > 0:
            self.sequence += 1
            heapq.heappush(self.delayed, (time.monotonic() + delay, self.sequence, out, addr))
            return
        try:
            sock.sendto(out, addr)
        except OSError:
            pass

    def delay_of(self, data):
        """The DELAY of the queried name (a query answer() took, so it parses)."""
        try:
            q = DNSRecord.parse(data).questions[0]
        except Exception:
            return 0.0
        entry = self.zone.get(norm_name(b".".join(q.qname.label)))
        return entry.delay if entry is not None else 0.0

    def send_due(self):
        now = time.monotonic()
        while self.delayed and self.delayed[0][0] <= now:
            _, _, out, addr = heapq.heappop(self.delayed)
            try:
                self.udp.sendto(out, addr)
            except OSError:
                pass

    def on_accept(self, sock):
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        self.tcp_buffers[conn] = b""
        self.sel.register(conn, selectors.EVENT_READ, self.on_tcp)

    def close_tcp(self, conn):
        self.sel.unregister(conn)
        self.tcp_buffers.pop(conn, None)
        conn.close()

    def on_tcp(self, conn):
        try:
            chunk = conn.recv(65535)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.close_tcp(conn)
            return
        buf = self.tcp_buffers[conn] + chunk
        if len(buf) > 70000:  # one message is at most 65535 + 2
            self.close_tcp(conn)
            return
        while len(buf) >= 2:
            n = int.from_bytes(buf[:2], "big")
            if len(buf) < 2 + n:
                break
            msg, buf = buf[2:2 + n], buf[2 + n:]
            out = self.answer(msg, 0)
            if out is not None:
                try:
                    conn.setblocking(True)
                    conn.settimeout(5)
                    conn.sendall(len(out).to_bytes(2, "big") + out)
                    conn.setblocking(False)
                except OSError:
                    self.close_tcp(conn)
                    return
        self.tcp_buffers[conn] = buf

    def serve(self):
        while not self.stopping:
            timeout = 0.5
            if self.delayed:
                timeout = max(0.0, min(timeout, self.delayed[0][0] - time.monotonic()))
            for key, _ in self.sel.select(timeout=timeout):
                key.data(key.fileobj)
            self.send_due()


def write_portfile(path, port):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
    os.rename(tmp, path)  # atomic: readers never see a half-written file


def main(argv=None):
    ap = argparse.ArgumentParser(description="Authoritative test DNS server on 127.0.0.1")
    ap.add_argument("--zone", required=True, help="YAML zone (SPF-suite zonedata format)")
    ap.add_argument("--scenario", type=int, default=None,
                    help="document index (0-based) of a multi-document YAML file")
    ap.add_argument("--port", type=int, default=0, help="UDP+TCP port; 0 picks a free one")
    ap.add_argument("--portfile", help="write the port here once listening")
    ap.add_argument("--querylog", help="append 'NAME TYPE' per query received")
    ap.add_argument("--no-chase", action="store_true",
                    help="answer a CNAME alone, without the target's records")
    args = ap.parse_args(argv)
    try:
        zone, default_ttl = load_zone(args.zone, args.scenario)
    except (OSError, yaml.YAMLError, ZoneError, ValueError) as e:
        sys.stderr.write("dns_server.py: %s\n" % e)
        return 2
    log = open(args.querylog, "a") if args.querylog else None
    server = Server(zone, default_ttl, log, chase=not args.no_chase)

    def stop(signum, frame):
        # Leave select() at once instead of waiting for its timeout.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    port = server.bind(args.port)
    if args.portfile:
        write_portfile(args.portfile, port)
    else:
        print(port, flush=True)
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
