// Tests for mta/net/proxy_header: the PROXY protocol parser (HAProxy's proxy-protocol.txt,
// v1 and v2), every malformed case, and the reader on real loopback sockets (the octets after
// the header stay the client's).
#include "mta/net/proxy_header.h"

#include <catch2/catch.hpp>
#include <optional>
#include <string>

#include "mta/runtime/uv.h"
#include "tests/support/test_cert.h"

using namespace moat::mta;
using net::ProxyParse;
using Status = ProxyParse::Status;

namespace {

const std::string kSig("\r\n\r\n\0\r\nQUIT\n", 12);

// A v2 header: version/command, family/transport, the address block (and TLVs) as given.
std::string v2(unsigned char verCmd, unsigned char famProto, const std::string& block) {
  std::string h = kSig;
  h.push_back(static_cast<char>(verCmd));
  h.push_back(static_cast<char>(famProto));
  h.push_back(static_cast<char>(block.size() >> 8));
  h.push_back(static_cast<char>(block.size() & 0xff));
  return h + block;
}

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int x : b) s.push_back(static_cast<char>(x));
  return s;
}

// 127.9.9.9:5678 -> 127.0.0.1:25
std::string inet4Block() { return bytes({127, 9, 9, 9, 127, 0, 0, 1, 0x16, 0x2e, 0, 25}); }

// ::2 port 5678 -> ::1 port 25
std::string inet6Block(bool mapped = false) {
  std::string src(16, '\0'), dst(16, '\0');
  if (mapped) {
    src[10] = src[11] = '\xff';
    src[12] = 127, src[13] = 9, src[14] = 9, src[15] = 9;
  } else {
    src[15] = 2;
  }
  dst[15] = 1;
  return src + dst + bytes({0x16, 0x2e, 0, 25});
}

ProxyParse parse(const std::string& s) { return net::parseProxyHeader(s); }

void requireInvalid(const std::string& input, const std::string& why) {
  INFO(why);
  auto p = parse(input);
  REQUIRE(p.status == Status::Invalid);
  REQUIRE(p.error.find(why) != std::string::npos);
}

}  // namespace

TEST_CASE("proxy header v1: TCP4 and TCP6, the octets after it kept", "[proxy]") {
  std::string line = "PROXY TCP4 127.9.9.9 127.0.0.1 5678 25\r\n";
  auto p = parse(line + "EHLO client.test\r\n");
  REQUIRE(p.status == Status::Done);
  REQUIRE(p.length == line.size());
  CHECK(p.header.version == 1);
  CHECK(p.header.proxied);
  CHECK(p.header.source.str() == "127.9.9.9");
  CHECK(p.header.destination.str() == "127.0.0.1");
  CHECK(p.header.sourcePort == 5678);
  CHECK(p.header.destinationPort == 25);

  auto p6 = parse("PROXY TCP6 ::2 ::1 65535 0\r\n");
  REQUIRE(p6.status == Status::Done);
  CHECK(!p6.header.source.isV4());
  CHECK(p6.header.source.str() == "::2");
  CHECK(p6.header.sourcePort == 65535);
  CHECK(p6.header.destinationPort == 0);

  // An IPv4-mapped IPv6 source is the IPv4 address, as on a [::] listener.
  auto mapped = parse("PROXY TCP6 ::ffff:127.9.9.9 ::1 1 25\r\n");
  REQUIRE(mapped.status == Status::Done);
  CHECK(mapped.header.source.isV4());
  CHECK(mapped.header.source.str() == "127.9.9.9");
}

TEST_CASE("proxy header v1: UNKNOWN keeps the connection's own address", "[proxy]") {
  for (std::string line : {"PROXY UNKNOWN\r\n", "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"}) {
    auto p = parse(line + "QUIT\r\n");
    REQUIRE(p.status == Status::Done);
    CHECK(p.length == line.size());
    CHECK(!p.header.proxied);
  }
}

TEST_CASE("proxy header v1: a prefix needs more, at most 107 octets", "[proxy]") {
  std::string line = "PROXY TCP6 ::2 ::1 5678 25\r\n";
  for (size_t n = 1; n < line.size(); ++n) {
    INFO(n);
    CHECK(parse(line.substr(0, n)).status == Status::NeedMore);
  }
  // The longest valid line (TCP6, two full-length addresses, 5-digit ports) is 104 octets.
  std::string longest =
      "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
  CHECK(longest.size() <= net::kMaxProxyV1Line);
  CHECK(parse(longest).status == Status::Done);
  std::string unknown = "PROXY UNKNOWN " + std::string(net::kMaxProxyV1Line - 16, 'x') + "\r\n";
  REQUIRE(unknown.size() == net::kMaxProxyV1Line);
  CHECK(parse(unknown).status == Status::Done);
  requireInvalid("PROXY UNKNOWN " + std::string(net::kMaxProxyV1Line - 15, 'x') + "\r\n", "107 octets");
  requireInvalid("PROXY UNKNOWN " + std::string(200, 'x'), "107 octets");
}

TEST_CASE("proxy header v1: malformed lines", "[proxy]") {
  requireInvalid("EHLO client.test\r\n", "not a PROXY protocol header");
  requireInvalid("PROXX TCP4", "not a PROXY protocol header");
  requireInvalid("proxy TCP4 127.9.9.9 127.0.0.1 1 25\r\n", "not a PROXY protocol header");
  requireInvalid("PROXY TCP4 127.9.9.9 127.0.0.1 1 25\n", "bare LF");
  requireInvalid("PROXY TCP4 127.9.9.9\r127.0.0.1 1 25\r\n", "CR not followed by LF");
  requireInvalid("PROXY TCP4 127.9.9.9 127.0.0.1 1 25\t\r\n", "control");
  requireInvalid("PROXY UDP4 127.9.9.9 127.0.0.1 1 25\r\n", "unknown protocol");
  requireInvalid("PROXY TCP4 127.9.9.9 127.0.0.1 1\r\n", "5 fields");
  requireInvalid("PROXY TCP4 127.9.9.9 127.0.0.1 1 25 7\r\n", "5 fields");
  requireInvalid("PROXY TCP4  127.9.9.9 127.0.0.1 1 25\r\n", "5 fields");
  requireInvalid("PROXY TCP4 127.9.9.9 127.0.0.1 1 25 \r\n", "5 fields");
  requireInvalid("PROXY\r\n", "not a PROXY protocol header");
  requireInvalid("PROXY TCP4 ::2 127.0.0.1 1 25\r\n", "not an IPv4 address");
  requireInvalid("PROXY TCP6 127.9.9.9 ::1 1 25\r\n", "not an IPv6 address");
  requireInvalid("PROXY TCP4 127.9.9.256 127.0.0.1 1 25\r\n", "not an IPv4 address");
  requireInvalid("PROXY TCP4 mx.example.test 127.0.0.1 1 25\r\n", "not an IPv4 address");
  requireInvalid("PROXY TCP6 ::2 ::g 1 25\r\n", "not an IPv6 address");
  requireInvalid("PROXY TCP4 127.9.9.9 127.0.0.1 65536 25\r\n", "not a port");
  requireInvalid("PROXY TCP4 127.9.9.9 127.0.0.1 1 99999\r\n", "not a port");
  requireInvalid("PROXY TCP4 127.9.9.9 127.0.0.1 -1 25\r\n", "not a port");
  requireInvalid("PROXY TCP4 127.9.9.9 127.0.0.1 025 25\r\n", "not a port");
  requireInvalid("PROXY TCP4 127.9.9.9 127.0.0.1 1 \r\n", "not a port");
  requireInvalid(std::string("PROXY TCP4 127.9.9.9\0 127.0.0.1 1 25\r\n", 38), "control");
}

TEST_CASE("proxy header v2: INET and INET6 over STREAM, TLVs skipped, the rest kept", "[proxy]") {
  std::string h = v2(0x21, 0x11, inet4Block());
  auto p = parse(h + "EHLO client.test\r\n");
  REQUIRE(p.status == Status::Done);
  CHECK(p.length == 16 + 12);
  CHECK(p.header.version == 2);
  CHECK(p.header.proxied);
  CHECK(p.header.source.str() == "127.9.9.9");
  CHECK(p.header.destination.str() == "127.0.0.1");
  CHECK(p.header.sourcePort == 5678);
  CHECK(p.header.destinationPort == 25);

  auto p6 = parse(v2(0x21, 0x21, inet6Block()));
  REQUIRE(p6.status == Status::Done);
  CHECK(p6.length == 16 + 36);
  CHECK(p6.header.source.str() == "::2");
  CHECK(p6.header.destination.str() == "::1");

  auto mapped = parse(v2(0x21, 0x21, inet6Block(true)));
  REQUIRE(mapped.status == Status::Done);
  CHECK(mapped.header.source.isV4());
  CHECK(mapped.header.source.str() == "127.9.9.9");

  // TLVs (here a NOOP and an AWS-style one) are counted in the length and skipped.
  std::string tlvs = bytes({0x04, 0, 3, 0, 0, 0, 0xEA, 0, 4, 'v', 'p', 'c', 'e'});
  std::string withTlvs = v2(0x21, 0x11, inet4Block() + tlvs);
  auto pt = parse(withTlvs + "\x16\x03\x01");
  REQUIRE(pt.status == Status::Done);
  CHECK(pt.length == withTlvs.size());
  CHECK(pt.header.source.str() == "127.9.9.9");
}

TEST_CASE("proxy header v2: LOCAL and UNSPEC keep the connection's own address", "[proxy]") {
  auto local = parse(v2(0x20, 0x00, ""));
  REQUIRE(local.status == Status::Done);
  CHECK(local.length == 16);
  CHECK(!local.header.proxied);
  // LOCAL ignores its address block, whatever the family says.
  auto localWithBlock = parse(v2(0x20, 0x11, inet4Block()));
  REQUIRE(localWithBlock.status == Status::Done);
  CHECK(localWithBlock.length == 28);
  CHECK(!localWithBlock.header.proxied);
  auto unspec = parse(v2(0x21, 0x00, ""));
  REQUIRE(unspec.status == Status::Done);
  CHECK(!unspec.header.proxied);
}

TEST_CASE("proxy header v2: a prefix needs more", "[proxy]") {
  std::string h = v2(0x21, 0x21, inet6Block());
  for (size_t n = 1; n < h.size(); ++n) {
    INFO(n);
    CHECK(parse(h.substr(0, n)).status == Status::NeedMore);
  }
}

TEST_CASE("proxy header v2: malformed headers", "[proxy]") {
  std::string badSig = v2(0x21, 0x11, inet4Block());
  badSig[7] = 'X';
  requireInvalid(badSig, "bad v2 signature");
  requireInvalid("\r\nHELO", "bad v2 signature");
  requireInvalid(v2(0x11, 0x11, inet4Block()), "version 1, not 2");
  requireInvalid(v2(0x31, 0x11, inet4Block()), "version 3, not 2");
  requireInvalid(v2(0x22, 0x11, inet4Block()), "unknown command 2");
  requireInvalid(v2(0x21, 0x12, inet4Block()), "not STREAM");  // DGRAM
  requireInvalid(v2(0x21, 0x10, inet4Block()), "not STREAM");  // UNSPEC transport
  requireInvalid(v2(0x21, 0x31, std::string(216, 'a')), "AF_UNIX");
  requireInvalid(v2(0x21, 0x41, inet4Block()), "unknown address family 4");
  requireInvalid(v2(0x21, 0x11, inet4Block().substr(0, 11)), "under the 12");
  requireInvalid(v2(0x21, 0x21, inet4Block()), "under the 36");
  // Over the cap: refused from the fixed part, before the rest is awaited.
  std::string big = v2(0x21, 0x11, inet4Block() + std::string(net::kMaxProxyV2Header - 16 - 12 + 1, '\0'));
  requireInvalid(big.substr(0, 16), "over 536");
  // At the cap: taken.
  std::string atCap = v2(0x21, 0x11,
                         inet4Block() + bytes({0x04}) +
                             bytes({static_cast<int>((net::kMaxProxyV2Header - 31) >> 8),
                                    static_cast<int>((net::kMaxProxyV2Header - 31) & 0xff)}) +
                             std::string(net::kMaxProxyV2Header - 31, '\0'));
  REQUIRE(atCap.size() == net::kMaxProxyV2Header);
  CHECK(parse(atCap).status == Status::Done);
}

TEST_CASE("proxy header: neither v1 nor v2", "[proxy]") {
  CHECK(parse("").status == Status::NeedMore);
  requireInvalid("\x16\x03\x01\x02\x00", "not a PROXY protocol header");  // a TLS ClientHello
  requireInvalid("GET / HTTP/1.0\r\n", "not a PROXY protocol header");
}

namespace {

// A listener whose connections go through a ProxyHeaderReader; `onDone` gets the outcome.
struct ProxyServer {
  uv::Loop loop;
  std::unique_ptr<net::Listener> listener;
  std::unique_ptr<net::ProxyHeaderReader> reader;
  std::shared_ptr<net::Connection> conn;
  std::optional<net::ProxyHeader> header;
  std::string error;
  bool done = false;
  bool silent = false;   // the reader's closedSilently() when it finished
  std::string received;  // what the connection delivers after the hand-over

  explicit ProxyServer(uint64_t timeoutMs = 2000, std::shared_ptr<tls::TlsContext> tlsAfter = nullptr) {
    std::string err;
    listener = net::listen(
        loop.get(), "127.0.0.1", 0, false, nullptr,
        [this, timeoutMs, tlsAfter](std::shared_ptr<net::Connection> c) {
          reader = std::make_unique<net::ProxyHeaderReader>(loop.get(), std::move(c));
          reader->start(timeoutMs, [this, tlsAfter](std::shared_ptr<net::Connection> c,
                                                    std::optional<net::ProxyHeader> h, const std::string& e) {
            conn = std::move(c);
            header = h;
            error = e;
            silent = reader->closedSilently();
            done = true;
            if (!h) return conn->close();
            if (tlsAfter) conn->startImplicitTls(tlsAfter);
            net::Connection::Callbacks cb;
            cb.onData = [this](std::string_view d) {
              received.append(d);
              conn->write("echo:" + std::string(d));
            };
            conn->setCallbacks(std::move(cb));
            conn->startReading();
          });
        },
        err);
    REQUIRE(listener);
  }

  std::shared_ptr<net::Connection> connect(std::string* received) {
    std::shared_ptr<net::Connection> out;
    bool connected = false;
    net::connect(loop.get(), *IpAddress::parse("127.0.0.1"), listener->port(), 2000,
                 [&](std::shared_ptr<net::Connection> c, const std::string&) {
                   out = std::move(c);
                   connected = true;
                 });
    REQUIRE(loop.runUntil([&] { return connected; }, 5000));
    REQUIRE(out);
    net::Connection::Callbacks cb;
    cb.onData = [received](std::string_view d) { received->append(d); };
    cb.onClose = [received](const std::string&) { received->append("<closed>"); };
    out->setCallbacks(std::move(cb));
    out->startReading();
    return out;
  }

  // Closes the client and waits for its close to be reported (into `received`, which the
  // test owns: nothing may report into it after the test).
  void finish(std::shared_ptr<net::Connection>& client, const std::string& received) {
    client->abort();
    REQUIRE(loop.runUntil([&] { return received.ends_with("<closed>"); }, 3000));
  }
};

}  // namespace

TEST_CASE("proxy reader: the client's octets sent with the header reach the owner", "[proxy]") {
  ProxyServer server;
  std::string got;
  auto client = server.connect(&got);
  // One write: header and pipelined commands arrive in one segment.
  client->write("PROXY TCP4 127.9.9.9 127.0.0.1 5678 25\r\nEHLO client.test\r\nQUIT\r\n");
  REQUIRE(server.loop.runUntil([&] { return got == "echo:EHLO client.test\r\nQUIT\r\n"; }, 5000));
  REQUIRE(server.header);
  CHECK(server.header->source.str() == "127.9.9.9");
  CHECK(server.received == "EHLO client.test\r\nQUIT\r\n");
  server.finish(client, got);
}

TEST_CASE("proxy reader: a v2 header in pieces, then more", "[proxy]") {
  ProxyServer server;
  std::string got;
  auto client = server.connect(&got);
  std::string h = v2(0x21, 0x21, inet6Block()) + "NOOP\r\n";
  client->write(h.substr(0, 5));
  server.loop.runUntil([] { return false; }, 50);
  client->write(h.substr(5));
  REQUIRE(server.loop.runUntil([&] { return got == "echo:NOOP\r\n"; }, 5000));
  REQUIRE(server.header);
  CHECK(server.header->source.str() == "::2");
  server.finish(client, got);
}

TEST_CASE("proxy reader: garbage, a timeout and an early close are errors", "[proxy]") {
  {
    ProxyServer server;
    std::string got;
    auto client = server.connect(&got);
    client->write("EHLO client.test\r\n");
    REQUIRE(server.loop.runUntil([&] { return got == "<closed>"; }, 5000));
    CHECK(!server.header);
    CHECK(server.error.find("not a PROXY protocol header") != std::string::npos);
  }
  {
    ProxyServer server(200);
    std::string got;
    auto client = server.connect(&got);
    client->write("PROXY TCP4 127.9.9.9");
    REQUIRE(server.loop.runUntil([&] { return got == "<closed>"; }, 5000));
    CHECK(server.error == "timeout");
  }
  {
    ProxyServer server;
    std::string got;
    auto client = server.connect(&got);
    client->write("PROXY TCP4");
    client->close();
    REQUIRE(server.loop.runUntil([&] { return server.done && got == "<closed>"; }, 5000));
    CHECK(!server.header);
    CHECK(server.error == "closed before the header ended");
    CHECK(!server.silent);
  }
}

TEST_CASE("proxy reader: a close without a single octet is a health check", "[proxy]") {
  for (bool reset : {false, true}) {
    ProxyServer server;
    std::string got;
    auto client = server.connect(&got);
    if (reset)
      client->abort();  // an RST, as some balancers' checks end
    else
      client->close();
    REQUIRE(server.loop.runUntil([&] { return server.done; }, 5000));
    CHECK(!server.header);
    CHECK(server.silent);
    if (!reset) CHECK(server.error == "closed without sending anything");
  }
}

TEST_CASE("proxy reader: implicit TLS after the header keeps the ClientHello", "[proxy]") {
  moat::test::TestCert cert;
  std::string error;
  auto sctx = tls::TlsContext::server(cert.certFile(), cert.keyFile(), error);
  auto cctx = tls::TlsContext::client(true, cert.caFile(), error);
  REQUIRE(sctx);
  ProxyServer server(2000, sctx);
  std::string got;
  auto client = server.connect(&got);
  // The header is queued, and the ClientHello right behind it: one segment, most likely.
  client->write("PROXY TCP6 ::2 ::1 5678 465\r\n");
  bool ok = false;
  client->startTls(cctx, "localhost", [&](bool o, const std::string&) { ok = o; });
  client->write("EHLO client.test\r\n");
  REQUIRE(server.loop.runUntil([&] { return got == "echo:EHLO client.test\r\n"; }, 5000));
  CHECK(ok);
  CHECK(server.conn->tlsActive());
  REQUIRE(server.header);
  CHECK(server.header->source.str() == "::2");
  server.finish(client, got);
}
