// Tests for mta/dns/cares_resolver and resolve_host against a real authoritative server
// on loopback (tests/support/dns_server.py) and a real libuv loop: record types, the
// three kinds of outcome, caching by TTL, coalescing, bad names, safe destruction.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <memory>

#include "mta/dns/resolve_host.h"
#include "tests/dns/dns_test_util.h"
#include "tests/support/test_dns_server.h"

using namespace moat::mta;
using namespace moat::mta::dns;
using moat::test::ask;
using moat::test::optionsFor;
using moat::test::runFor;
using moat::test::TestDnsServer;

namespace {

const char* kZone = R"(zonedata:
  example.test:
    - A: 192.0.2.1
    - A: 192.0.2.2
    - AAAA: 2001:db8::1
    - MX: [20, MX2.example.test.]
    - MX: [10, mx1.example.test]
    - TXT: ["v=spf1 ", "ip4:192.0.2.0/24 ", "-all"]
    - TXT: second record
  nullmx.example.test:
    - MX: [0, "."]
  v4only.example.test:
    - A: 192.0.2.9
  alias.example.test:
    - CNAME: alias2.example.test
  alias2.example.test:
    - CNAME: example.test
  dangling.example.test:
    - CNAME: nowhere.example.test
  1.2.0.192.in-addr.arpa:
    - PTR: host.example.test
    - PTR: other.example.test
  slow.example.test:
    - TIMEOUT
  broken.example.test:
    - SERVFAIL: true
  loop1.example.test:
    - CNAME: loop2.example.test
  loop2.example.test:
    - CNAME: loop1.example.test
  short.example.test:
    - TTL: 1
    - A: 192.0.2.77
)";

struct Fixture {
  TestDnsServer server{kZone};
  uv::Loop loop;
  std::unique_ptr<CaresResolver> r;
  explicit Fixture(unsigned timeoutMs = 1000, unsigned tries = 2) {
    REQUIRE(server.ok());
    r = std::make_unique<CaresResolver>(loop.get(), optionsFor(server.nameserver(), timeoutMs, tries));
    REQUIRE(r->ok());
  }
  ~Fixture() { r.reset(); }  // before the loop
  Answer ask(const std::string& name, RrType t, uint64_t waitMs = 8000) {
    return moat::test::ask(loop, *r, name, t, waitMs);
  }
};

std::vector<std::string> strs(const std::vector<IpAddress>& v) {
  std::vector<std::string> out;
  for (const auto& ip : v) out.push_back(ip.str());
  return out;
}

}  // namespace

TEST_CASE("resolver: A and AAAA records with their TTL") {
  Fixture f;
  auto a = f.ask("example.test", RrType::A);
  REQUIRE(a.status == Status::Ok);
  REQUIRE(strs(a.addresses) == std::vector<std::string>{"192.0.2.1", "192.0.2.2"});
  REQUIRE(a.ttl == 300);
  auto aaaa = f.ask("Example.TEST.", RrType::AAAA);
  REQUIRE(aaaa.status == Status::Ok);
  REQUIRE(strs(aaaa.addresses) == std::vector<std::string>{"2001:db8::1"});
}

TEST_CASE("resolver: MX records sorted by preference, lower-case, null MX") {
  Fixture f;
  auto mx = f.ask("example.test", RrType::MX);
  REQUIRE(mx.status == Status::Ok);
  REQUIRE(mx.mx.size() == 2);
  REQUIRE(mx.mx[0].preference == 10);
  REQUIRE(mx.mx[0].exchange == "mx1.example.test");
  REQUIRE(mx.mx[1].exchange == "mx2.example.test");
  REQUIRE(mx.ttl == 300);
  auto null = f.ask("nullmx.example.test", RrType::MX);
  REQUIRE(null.status == Status::Ok);
  REQUIRE(null.mx.size() == 1);
  REQUIRE(null.mx[0].exchange.empty());
}

TEST_CASE("resolver: TXT strings of one record are joined, records stay apart") {
  Fixture f;
  auto t = f.ask("example.test", RrType::TXT);
  REQUIRE(t.status == Status::Ok);
  std::sort(t.txt.begin(), t.txt.end());
  REQUIRE(t.txt == std::vector<std::string>{"second record", "v=spf1 ip4:192.0.2.0/24 -all"});
  REQUIRE(t.ttl == 300);
}

TEST_CASE("resolver: PTR records") {
  Fixture f;
  auto p = f.ask(IpAddress::parse("192.0.2.1")->reverseName(), RrType::PTR);
  REQUIRE(p.status == Status::Ok);
  std::sort(p.names.begin(), p.names.end());
  REQUIRE(p.names == std::vector<std::string>{"host.example.test", "other.example.test"});
}

TEST_CASE("resolver: CNAME chains are followed, and CNAME itself can be asked") {
  Fixture f;
  auto a = f.ask("alias.example.test", RrType::A);
  REQUIRE(a.status == Status::Ok);
  REQUIRE(strs(a.addresses) == std::vector<std::string>{"192.0.2.1", "192.0.2.2"});
  REQUIRE(a.canonical == "example.test");  // the chain's end (RFC 7672 §2.2.2 needs it)
  REQUIRE(f.ask("example.test", RrType::A).canonical.empty());
  auto mx = f.ask("alias.example.test", RrType::MX);
  REQUIRE(mx.mx.at(0).exchange == "mx1.example.test");
  auto c = f.ask("alias.example.test", RrType::CNAME);
  REQUIRE(c.status == Status::Ok);
  REQUIRE(c.names == std::vector<std::string>{"alias2.example.test"});
  REQUIRE(f.ask("dangling.example.test", RrType::A).status == Status::NxDomain);
  REQUIRE(f.ask("nullmx.example.test", RrType::CNAME).status == Status::NoData);
  REQUIRE(f.ask("loop1.example.test", RrType::A).status == Status::TempFail);
}

TEST_CASE("resolver: NXDOMAIN and NoData are told apart, with the SOA's negative TTL") {
  Fixture f;
  auto nx = f.ask("nope.example.test", RrType::A);
  REQUIRE(nx.status == Status::NxDomain);
  REQUIRE(nx.ttl == 300);
  auto nd = f.ask("v4only.example.test", RrType::AAAA);
  REQUIRE(nd.status == Status::NoData);
  REQUIRE(nd.ttl == 300);
  REQUIRE(f.ask("v4only.example.test", RrType::TXT).status == Status::NoData);
}

TEST_CASE("resolver: a timeout is TempFail within the configured time, and not cached") {
  Fixture f(300, 1);
  auto t0 = std::chrono::steady_clock::now();
  auto a = f.ask("slow.example.test", RrType::A);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  REQUIRE(a.status == Status::TempFail);
  REQUIRE_FALSE(a.error.empty());
  REQUIRE(ms >= 250);
  REQUIRE(ms < 2000);
  REQUIRE(f.ask("slow.example.test", RrType::A).status == Status::TempFail);
  REQUIRE(f.server.queryCount("slow.example.test", "A") == 2);
}

TEST_CASE("resolver: with retries, a lookup still ends within dns.timeout (not tries x doubling)") {
  // c-ares 1.18 waits the per-try timeout, then twice it, then four times: 1 s with three
  // tries would be 7 s. dns.timeout bounds the whole lookup (and the greeting, MX, SPF waits).
  Fixture f(1000, 3);
  auto t0 = std::chrono::steady_clock::now();
  auto a = f.ask("slow.example.test", RrType::A, 20000);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  REQUIRE(a.status == Status::TempFail);
  REQUIRE(ms >= 900);
  REQUIRE(ms < 3500);                                           // the old code took 7 s
  REQUIRE(f.server.queryCount("slow.example.test", "A") >= 2);  // the retries still happen
  // The late c-ares callback of the abandoned query must not disturb a later lookup.
  runFor(f.loop, 200);
  REQUIRE(f.ask("example.test", RrType::A).status == Status::Ok);
}

TEST_CASE("resolver: SERVFAIL is TempFail") {
  Fixture f;
  auto a = f.ask("broken.example.test", RrType::TXT);
  REQUIRE(a.status == Status::TempFail);
}

TEST_CASE("resolver: a cached answer needs no server and arrives synchronously") {
  Fixture f;
  REQUIRE(f.ask("example.test", RrType::MX).status == Status::Ok);
  REQUIRE(f.ask("nope.example.test", RrType::A).status == Status::NxDomain);
  f.server.stop();
  bool called = false;
  Answer got;
  f.r->query("EXAMPLE.test.", RrType::MX, [&](const Answer& a) {
    called = true;
    got = a;
  });
  REQUIRE(called);
  REQUIRE(got.status == Status::Ok);
  REQUIRE(got.mx.size() == 2);
  REQUIRE(got.ttl <= 300);
  REQUIRE(f.ask("nope.example.test", RrType::A).status == Status::NxDomain);
  REQUIRE(f.r->stats().cacheHits == 2);
  // Not cached, and nobody answers: a temporary failure, never "not found".
  REQUIRE(f.ask("v4only.example.test", RrType::A).status == Status::TempFail);
}

TEST_CASE("resolver: an answer is asked again once its TTL has run out") {
  Fixture f;
  REQUIRE(f.ask("short.example.test", RrType::A).ttl == 1);
  REQUIRE(f.ask("short.example.test", RrType::A).status == Status::Ok);
  REQUIRE(f.server.queryCount("short.example.test", "A") == 1);
  runFor(f.loop, 1500);
  auto again = f.ask("short.example.test", RrType::A);
  REQUIRE(again.status == Status::Ok);
  REQUIRE(f.server.queryCount("short.example.test", "A") == 2);
}

TEST_CASE("resolver: identical queries in flight share one network query") {
  Fixture f;
  int done = 0;
  for (int i = 0; i < 5; ++i)
    f.r->query("example.test", RrType::TXT, [&](const Answer& a) {
      if (a.status == Status::Ok && a.txt.size() == 2) ++done;
    });
  REQUIRE(f.loop.runUntil([&] { return done == 5; }, 5000));
  REQUIRE(f.server.queryCount("example.test", "TXT") == 1);
  REQUIRE(f.r->stats().coalesced == 4);
}

TEST_CASE("resolver: malformed names fail at once without a query") {
  Fixture f;
  for (std::string bad : {std::string(64, 'a') + ".example.test", std::string("a..example.test"), std::string("")}) {
    bool called = false;
    f.r->query(bad, RrType::TXT, [&](const Answer& a) {
      called = true;
      REQUIRE(a.status == Status::Malformed);
    });
    REQUIRE(called);
  }
  REQUIRE(f.server.queries().empty());
  REQUIRE(f.ask(std::string(63, 'a') + ".example.test", RrType::TXT).status == Status::NxDomain);
}

TEST_CASE("resolver: destroyed with queries in flight, every callback gets TempFail once") {
  TestDnsServer server(kZone);
  REQUIRE(server.ok());
  uv::Loop loop;
  auto r = std::make_unique<CaresResolver>(loop.get(), optionsFor(server.nameserver(), 5000, 3));
  int calls = 0;
  int shutdownCalls = 0;
  for (const char* name : {"slow.example.test", "slow.example.test", "example.test"})
    r->query(name, RrType::A, [&](const Answer& a) {
      ++calls;
      if (a.status == Status::TempFail && a.error == "resolver shut down") ++shutdownCalls;
    });
  runFor(loop, 50);
  r.reset();
  REQUIRE(calls == 3);
  REQUIRE(shutdownCalls >= 2);
  runFor(loop, 100);  // the loop closes the resolver's handles cleanly
  REQUIRE(calls == 3);
}

TEST_CASE("resolver: a callback may destroy the resolver") {
  TestDnsServer server(kZone);
  REQUIRE(server.ok());
  uv::Loop loop;
  auto r = std::make_unique<CaresResolver>(loop.get(), optionsFor(server.nameserver(), 5000, 3));
  int calls = 0;
  Status second = Status::Ok;
  r->query("example.test", RrType::A, [&](const Answer& a) {
    ++calls;
    r.reset();  // another query is still in flight
  });
  r->query("slow.example.test", RrType::A, [&](const Answer& a) {
    ++calls;
    second = a.status;
  });
  REQUIRE(loop.runUntil([&] { return calls == 2; }, 5000));
  REQUIRE(second == Status::TempFail);
}

TEST_CASE("resolver: invalid nameserver config fails every query temporarily") {
  uv::Loop loop;
  CaresResolver r(loop.get(), std::vector<std::string>{"not-an-ip:53"});
  REQUIRE_FALSE(r.ok());
  bool called = false;
  r.query("example.test", RrType::A, [&](const Answer& a) {
    called = true;
    REQUIRE(a.status == Status::TempFail);
  });
  REQUIRE(called);
  CaresResolver v6(loop.get(), std::vector<std::string>{"[::1]:5353", "127.0.0.1"});
  REQUIRE(v6.ok());
}

TEST_CASE("resolveHost: AAAA and A together") {
  Fixture f;
  auto host = [&](const std::string& name) {
    std::optional<std::pair<Status, std::vector<IpAddress>>> got;
    resolveHost(*f.r, name, [&](Status s, std::vector<IpAddress> ips) { got.emplace(s, std::move(ips)); });
    REQUIRE(f.loop.runUntil([&] { return got.has_value(); }, 5000));
    return *got;
  };
  auto both = host("example.test");
  REQUIRE(both.first == Status::Ok);
  REQUIRE(strs(both.second) == std::vector<std::string>{"2001:db8::1", "192.0.2.1", "192.0.2.2"});
  auto v4 = host("v4only.example.test");
  REQUIRE(v4.first == Status::Ok);
  REQUIRE(strs(v4.second) == std::vector<std::string>{"192.0.2.9"});
  REQUIRE(host("nope.example.test").first == Status::NxDomain);
  REQUIRE(host("nullmx.example.test").first == Status::NoData);
}

TEST_CASE("resolver: a CNAME answered without its target is followed by the resolver") {
  moat::test::TestDnsServerOptions o;
  o.zoneText = kZone;
  o.chaseCnames = false;
  TestDnsServer server(o);
  REQUIRE(server.ok());
  uv::Loop loop;
  CaresResolver r(loop.get(), optionsFor(server.nameserver()));
  auto a = ask(loop, r, "alias.example.test", RrType::A);
  REQUIRE(a.status == Status::Ok);
  REQUIRE(strs(a.addresses) == std::vector<std::string>{"192.0.2.1", "192.0.2.2"});
  REQUIRE(server.queryCount("alias2.example.test", "A") == 1);
  REQUIRE(server.queryCount("example.test", "A") == 1);
  REQUIRE(a.canonical == "example.test");  // the name asked last: its reply had the records
  REQUIRE(ask(loop, r, "alias.example.test", RrType::A).canonical == "example.test");  // cached too
  REQUIRE(ask(loop, r, "dangling.example.test", RrType::TXT).status == Status::NxDomain);
  REQUIRE(ask(loop, r, "alias.example.test", RrType::AAAA).status == Status::Ok);
  REQUIRE(ask(loop, r, "alias.example.test", RrType::PTR).status == Status::NoData);
  auto loopAnswer = ask(loop, r, "loop1.example.test", RrType::A);
  REQUIRE(loopAnswer.status == Status::TempFail);
  REQUIRE(loopAnswer.error == "CNAME chain too long");
}

TEST_CASE("resolver: the AD bit of a validating server's reply is kept, TLSA records are read") {
  // The test server sets AD, as a validating resolver would, only for names declared
  // SECURE and only when the query asks (AD or DO): the resolver must ask for it.
  TestDnsServer server(R"(zonedata:
  mx.signed.test:
    - SECURE: true
    - A: 192.0.2.1
  _25._tcp.mx.signed.test:
    - SECURE: true
    - TLSA: [3, 1, 1, "0c72ac70b745ac19998811b131d662c9ac69dbdbe7cb23e5b514b56664c5d3d6"]
    - TLSA: [2, 0, 1, "00"]
  nodata.signed.test:
    - SECURE: true
  alias.signed.test:
    - SECURE: true
    - CNAME: mx.plain.test
  mx.plain.test:
    - A: 192.0.2.2
  _25._tcp.mx.plain.test:
    - TLSA: [3, 1, 1, "0c72ac70b745ac19998811b131d662c9ac69dbdbe7cb23e5b514b56664c5d3d6"]
)");
  REQUIRE(server.ok());
  uv::Loop loop;
  CaresResolver r(loop.get(), optionsFor(server.nameserver()));
  auto a = ask(loop, r, "mx.signed.test", RrType::A);
  REQUIRE(a.status == Status::Ok);
  REQUIRE(a.authenticated);
  auto t = ask(loop, r, "_25._tcp.mx.signed.test", RrType::TLSA);
  REQUIRE(t.status == Status::Ok);
  REQUIRE(t.authenticated);
  REQUIRE(t.tlsa.size() == 1);  // "2 0 1 00" is a SHA2-256 digest of one octet: left out
  REQUIRE(t.tlsa[0].usage == 3);
  REQUIRE(t.tlsa[0].selector == 1);
  REQUIRE(t.tlsa[0].mtype == 1);
  REQUIRE(t.tlsa[0].data.size() == 32);
  REQUIRE(static_cast<unsigned char>(t.tlsa[0].data[0]) == 0x0c);
  auto cached = ask(loop, r, "_25._tcp.mx.signed.test", RrType::TLSA);  // the cache keeps the flag
  REQUIRE(cached.authenticated);
  REQUIRE(server.queryCount("_25._tcp.mx.signed.test", "TLSA") == 1);
  auto nd = ask(loop, r, "nodata.signed.test", RrType::TLSA);
  REQUIRE(nd.status == Status::NoData);
  REQUIRE(nd.authenticated);
  auto plain = ask(loop, r, "_25._tcp.mx.plain.test", RrType::TLSA);
  REQUIRE(plain.status == Status::Ok);
  REQUIRE_FALSE(plain.authenticated);
  REQUIRE_FALSE(ask(loop, r, "mx.plain.test", RrType::A).authenticated);
  // A secure alias to an insecure name is not authenticated.
  auto alias = ask(loop, r, "alias.signed.test", RrType::A);
  REQUIRE(alias.status == Status::Ok);
  REQUIRE_FALSE(alias.authenticated);
  REQUIRE_FALSE(ask(loop, r, "nope.signed.test", RrType::A).authenticated);

  // resolveHostSecure: the addresses found are authenticated only if every lookup that found some was.
  std::string canonical;
  auto secure = [&](const std::string& name) {
    std::optional<bool> got;
    resolveHostSecure(r, name, [&](Status, std::vector<IpAddress>, bool s, std::string c) {
      got = s;
      canonical = std::move(c);
    });
    REQUIRE(loop.runUntil([&] { return got.has_value(); }, 5000));
    return *got;
  };
  REQUIRE(secure("mx.signed.test"));
  REQUIRE(canonical.empty());
  REQUIRE_FALSE(secure("mx.plain.test"));
  REQUIRE_FALSE(secure("nope.signed.test"));
  REQUIRE_FALSE(secure("alias.signed.test"));
  REQUIRE(canonical == "mx.plain.test");  // the expanded name, secure or not
}

TEST_CASE("resolveHostSecure: the expanded name of an aliased host") {
  TestDnsServer server(R"(zonedata:
  mx.alias.test:
    - SECURE: true
    - CNAME: mx.target.test
  mx.target.test:
    - SECURE: true
    - A: 192.0.2.1
    - AAAA: 2001:db8::1
  mx.v4.test:
    - SECURE: true
    - CNAME: mx.v4target.test
  mx.v4target.test:
    - SECURE: true
    - A: 192.0.2.2
)");
  REQUIRE(server.ok());
  uv::Loop loop;
  CaresResolver r(loop.get(), optionsFor(server.nameserver()));
  auto host = [&](const std::string& name) {
    std::optional<std::pair<bool, std::string>> got;
    resolveHostSecure(r, name, [&](Status s, std::vector<IpAddress> ips, bool secure, std::string c) {
      REQUIRE(s == Status::Ok);
      REQUIRE_FALSE(ips.empty());
      got.emplace(secure, std::move(c));
    });
    REQUIRE(loop.runUntil([&] { return got.has_value(); }, 5000));
    return *got;
  };
  REQUIRE(host("mx.alias.test") == std::make_pair(true, std::string("mx.target.test")));
  REQUIRE(host("mx.v4.test") == std::make_pair(true, std::string("mx.v4target.test")));  // AAAA: no data
  REQUIRE(host("mx.target.test") == std::make_pair(true, std::string()));
}

TEST_CASE("resolver: lookups sent to the nameservers are counted by type and result") {
  Fixture f(300, 1);
  auto count = [&](RrType type, size_t result) {
    size_t t = static_cast<size_t>(std::find(kCountedTypes.begin(), kCountedTypes.end(), type) - kCountedTypes.begin());
    REQUIRE(t < kCountedTypes.size());
    return f.r->stats().lookups[t][result];
  };
  enum { kAnswer, kNxDomain, kNoData, kError, kTimeout };
  REQUIRE(std::string(kLookupResults[kTimeout]) == "timeout");
  REQUIRE(f.ask("example.test", RrType::MX).status == Status::Ok);
  REQUIRE(f.ask("example.test", RrType::MX).status == Status::Ok);  // cached: not a lookup again
  REQUIRE(f.ask("nope.example.test", RrType::TXT).status == Status::NxDomain);
  REQUIRE(f.ask("v4only.example.test", RrType::AAAA).status == Status::NoData);
  REQUIRE(f.ask("broken.example.test", RrType::TXT).status == Status::TempFail);
  REQUIRE(f.ask("slow.example.test", RrType::A).status == Status::TempFail);
  REQUIRE(f.ask("1.2.0.192.in-addr.arpa", RrType::PTR).status == Status::Ok);
  REQUIRE(f.ask("bad..name", RrType::A).status == Status::Malformed);  // never sent: not counted
  CHECK(count(RrType::MX, kAnswer) == 1);
  CHECK(count(RrType::TXT, kNxDomain) == 1);
  CHECK(count(RrType::AAAA, kNoData) == 1);
  CHECK(count(RrType::TXT, kError) == 1);
  CHECK(count(RrType::A, kTimeout) == 1);
  CHECK(count(RrType::A, kError) == 0);
  CHECK(count(RrType::PTR, kAnswer) == 1);
  CHECK(f.r->stats().cacheHits == 1);
  uint64_t all = 0;
  for (const auto& byType : f.r->stats().lookups)
    for (uint64_t n : byType) all += n;
  CHECK(all == 6);
}
