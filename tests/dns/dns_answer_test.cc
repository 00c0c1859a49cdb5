// Tests for mta/dns/dns_answer: replies built byte by byte (RFC 1035 4.1), including
// every truncation of a valid reply (a peer controls these bytes), TTL rules (RFC 2181 8,
// RFC 2308 5) and the c-ares status mapping.
#include "mta/dns/dns_answer.h"

#include <ares.h>

#include <catch2/catch.hpp>
#include <set>

using namespace moat::mta::dns;

namespace {

using Bytes = std::vector<unsigned char>;

void name(Bytes& b, const std::string& n) {
  size_t start = 0;
  while (start < n.size()) {
    size_t dot = n.find('.', start);
    if (dot == std::string::npos) dot = n.size();
    b.push_back(static_cast<unsigned char>(dot - start));
    b.insert(b.end(), n.begin() + start, n.begin() + dot);
    start = dot + 1;
  }
  b.push_back(0);
}
void u16(Bytes& b, unsigned v) {
  b.push_back(v >> 8 & 0xff);
  b.push_back(v & 0xff);
}
void u32(Bytes& b, uint32_t v) {
  u16(b, v >> 16);
  u16(b, v & 0xffff);
}

struct Rr {
  std::string owner;
  unsigned type;
  uint32_t ttl;
  Bytes rdata;
};

Bytes message(const std::string& q, unsigned qtype, unsigned rcode, const std::vector<Rr>& an,
              const std::vector<Rr>& ns = {}) {
  Bytes b;
  u16(b, 0x1234);
  u16(b, 0x8180 | rcode);
  u16(b, 1);
  u16(b, an.size());
  u16(b, ns.size());
  u16(b, 0);
  name(b, q);
  u16(b, qtype);
  u16(b, 1);
  for (const auto* list : {&an, &ns})
    for (const Rr& rr : *list) {
      name(b, rr.owner);
      u16(b, rr.type);
      u16(b, 1);
      u32(b, rr.ttl);
      u16(b, rr.rdata.size());
      b.insert(b.end(), rr.rdata.begin(), rr.rdata.end());
    }
  return b;
}

Bytes nameBytes(const std::string& n) {
  Bytes b;
  name(b, n);
  return b;
}
Bytes txt(std::initializer_list<std::string> strings) {
  Bytes b;
  for (const auto& s : strings) {
    b.push_back(static_cast<unsigned char>(s.size()));
    b.insert(b.end(), s.begin(), s.end());
  }
  return b;
}
Bytes soa(uint32_t minimum) {
  Bytes b = nameBytes("ns.example.test");
  Bytes r = nameBytes("hostmaster.example.test");
  b.insert(b.end(), r.begin(), r.end());
  for (uint32_t v : {1u, 3600u, 600u, 86400u, minimum}) u32(b, v);
  return b;
}

ParsedReply parse(const Bytes& b, const std::string& q, RrType t, int rc = ARES_SUCCESS) {
  return parseReply(rc, b.data(), static_cast<int>(b.size()), q, t, TtlPolicy{});
}

}  // namespace

TEST_CASE("answer: TXT TTL is the smallest of the records and capped") {
  auto m = message("t.test", 16, 0,
                   {{"t.test", 16, 500, txt({"a", "b"})}, {"t.test", 16, 200, txt({"c"})}});
  auto r = parse(m, "t.test", RrType::TXT);
  REQUIRE(r.answer.status == Status::Ok);
  REQUIRE(r.answer.txt == std::vector<std::string>{"ab", "c"});
  REQUIRE(r.answer.ttl == 200);
  auto big = message("t.test", 16, 0, {{"t.test", 16, 999999, txt({"x"})}});
  REQUIRE(parse(big, "t.test", RrType::TXT).answer.ttl == 3600);
  auto top = message("t.test", 16, 0, {{"t.test", 16, 0x80000001u, txt({"x"})}});
  REQUIRE(parse(top, "t.test", RrType::TXT).answer.ttl == 0);  // RFC 2181 8
}

TEST_CASE("answer: negative TTL is min(SOA TTL, SOA MINIMUM), else a short default") {
  auto nx = message("n.test", 1, 3, {}, {{"test", 6, 900, soa(120)}});
  auto r = parse(nx, "n.test", RrType::A, ARES_ENOTFOUND);
  REQUIRE(r.answer.status == Status::NxDomain);
  REQUIRE(r.answer.ttl == 120);
  auto nd = message("n.test", 1, 0, {}, {{"test", 6, 60, soa(120)}});
  REQUIRE(parse(nd, "n.test", RrType::A, ARES_ENODATA).answer.ttl == 60);
  auto bare = message("n.test", 1, 3, {});
  REQUIRE(parse(bare, "n.test", RrType::A, ARES_ENOTFOUND).answer.ttl == TtlPolicy{}.defaultNegativeTtl);
}

TEST_CASE("answer: a CNAME without target data and without SOA asks to follow") {
  auto m = message("a.test", 15, 0, {{"a.test", 5, 100, nameBytes("b.other")}});
  auto r = parse(m, "A.TEST", RrType::MX);
  REQUIRE(r.follow == std::optional<std::string>("b.other"));
  REQUIRE(r.chainTtl == 100);
  auto withSoa = message("a.test", 15, 0, {{"a.test", 5, 100, nameBytes("b.other")}},
                         {{"other", 6, 50, soa(50)}});
  auto nd = parse(withSoa, "a.test", RrType::MX);
  REQUIRE_FALSE(nd.follow);
  REQUIRE(nd.answer.status == Status::NoData);
  REQUIRE(nd.answer.ttl == 50);
}

TEST_CASE("answer: c-ares statuses map to the three kinds of outcome") {
  REQUIRE(statusFromAres(ARES_ENOTFOUND) == Status::NxDomain);
  REQUIRE(statusFromAres(ARES_ENODATA) == Status::NoData);
  for (int rc : {ARES_ETIMEOUT, ARES_ESERVFAIL, ARES_EREFUSED, ARES_ECONNREFUSED, ARES_EBADRESP})
    REQUIRE(statusFromAres(rc) == Status::TempFail);
  REQUIRE(statusFromAres(ARES_EBADNAME) == Status::Malformed);
  REQUIRE(parseReply(ARES_ETIMEOUT, nullptr, 0, "x.test", RrType::A, TtlPolicy{}).answer.status ==
          Status::TempFail);
}

TEST_CASE("answer: every truncation of a reply is handled without reading past it") {
  auto m = message("t.test", 15, 0,
                   {{"t.test", 5, 100, nameBytes("u.test")},
                    {"u.test", 15, 100, [] {
                       Bytes b;
                       u16(b, 10);
                       name(b, "mx.u.test");
                       return b;
                     }()}},
                   {{"test", 6, 60, soa(60)}});
  REQUIRE(parse(m, "t.test", RrType::MX).answer.mx.at(0).exchange == "mx.u.test");
  for (size_t len = 0; len < m.size(); ++len) {
    Bytes cut(m.begin(), m.begin() + len);  // exact size: ASan sees any over-read
    auto r = parse(cut, "t.test", RrType::MX);
    REQUIRE(r.answer.status != Status::Ok);
  }
}

// RFC 5321 §5.1: equal-preference MX hosts MUST be tried in random order; preferences stay
// in order. A seeded source makes the test deterministic.
TEST_CASE("answer: MX hosts of equal preference are shuffled, preferences kept in order") {
  std::mt19937_64 rng(42);
  std::set<std::string> orders;
  for (int i = 0; i < 200; ++i) {
    std::vector<MxRecord> mx = {{5, "first"}, {10, "a"}, {10, "b"}, {10, "c"}, {20, "last"}};
    shuffleEqualPreference(mx, rng);
    REQUIRE(mx.size() == 5);
    REQUIRE(mx.front().exchange == "first");
    REQUIRE(mx.back().exchange == "last");
    std::string order;
    for (size_t k = 1; k < 4; ++k) {
      REQUIRE(mx[k].preference == 10);
      order += mx[k].exchange;
    }
    orders.insert(order);
  }
  REQUIRE(orders.size() == 6);  // every order of a, b, c shows up
}

namespace {
Bytes tlsaRdata(unsigned usage, unsigned selector, unsigned mtype, size_t len, unsigned char fill = 0xab) {
  Bytes b(3 + len, fill);
  b[0] = static_cast<unsigned char>(usage);
  b[1] = static_cast<unsigned char>(selector);
  b[2] = static_cast<unsigned char>(mtype);
  return b;
}
Bytes withAd(Bytes m) {
  m[3] |= 0x20;  // RFC 4035 §3.2.3
  return m;
}
}  // namespace

TEST_CASE("answer: TLSA records are read, malformed ones left out") {
  const std::string q = "_25._tcp.mx.test";
  auto m = message(q, 52, 0,
                   {{q, 52, 600, tlsaRdata(3, 1, 1, 32)},
                    {q, 52, 300, tlsaRdata(2, 0, 2, 64, 0x01)},
                    {q, 52, 300, tlsaRdata(3, 1, 1, 31)},  // a SHA2-256 digest of the wrong length
                    {q, 52, 300, tlsaRdata(3, 1, 2, 32)},  // a SHA2-512 digest of the wrong length
                    {q, 52, 300, Bytes{3, 1, 0}},          // no association data
                    {q, 52, 300, tlsaRdata(0, 0, 0, 5)},   // PKIX-TA, exact: parsed (unusable later)
                    {"other.test", 52, 300, tlsaRdata(3, 1, 1, 32)}});
  auto r = parse(m, q, RrType::TLSA);
  REQUIRE(r.answer.status == Status::Ok);
  REQUIRE(r.answer.tlsa.size() == 3);
  REQUIRE(r.answer.tlsa[0] == TlsaRecord{3, 1, 1, std::string(32, '\xab')});
  REQUIRE(r.answer.tlsa[1] == TlsaRecord{2, 0, 2, std::string(64, '\x01')});
  REQUIRE(r.answer.tlsa[2] == TlsaRecord{0, 0, 0, std::string(5, '\xab')});
  REQUIRE(r.answer.ttl == 300);
  REQUIRE_FALSE(r.answer.authenticated);

  // An RRset of malformed records only is there (Ok) but has nothing in it.
  auto bad = message(q, 52, 0, {{q, 52, 300, Bytes{3, 1}}});
  auto rb = parse(bad, q, RrType::TLSA);
  REQUIRE(rb.answer.status == Status::Ok);
  REQUIRE(rb.answer.tlsa.empty());

  // Reached through a CNAME: the records of the chain's target.
  auto viaCname =
      message(q, 52, 0, {{q, 5, 100, nameBytes("tlsa.other")}, {"tlsa.other", 52, 300, tlsaRdata(3, 0, 1, 32)}});
  auto rc = parse(viaCname, q, RrType::TLSA);
  REQUIRE(rc.answer.tlsa.size() == 1);
  REQUIRE(rc.answer.ttl == 100);
}

TEST_CASE("answer: the AD bit of the header becomes Answer::authenticated") {
  const std::string q = "_25._tcp.mx.test";
  auto tlsa = message(q, 52, 0, {{q, 52, 300, tlsaRdata(3, 1, 1, 32)}});
  REQUIRE_FALSE(parse(tlsa, q, RrType::TLSA).answer.authenticated);
  REQUIRE(parse(withAd(tlsa), q, RrType::TLSA).answer.authenticated);
  auto a = message("h.test", 1, 0, {{"h.test", 1, 300, Bytes{192, 0, 2, 1}}});
  REQUIRE(parse(withAd(a), "h.test", RrType::A).answer.authenticated);
  REQUIRE_FALSE(parse(a, "h.test", RrType::A).answer.authenticated);
  // A validated denial: NoData and NXDOMAIN keep the bit too.
  auto nd = message(q, 52, 0, {}, {{"test", 6, 60, soa(60)}});
  auto ndr = parse(withAd(nd), q, RrType::TLSA, ARES_ENODATA);
  REQUIRE(ndr.answer.status == Status::NoData);
  REQUIRE(ndr.answer.authenticated);
  REQUIRE_FALSE(parse(nd, q, RrType::TLSA, ARES_ENODATA).answer.authenticated);
  auto nx = message(q, 52, 3, {}, {{"test", 6, 60, soa(60)}});
  REQUIRE(parse(withAd(nx), q, RrType::TLSA, ARES_ENOTFOUND).answer.authenticated);
  // A temporary failure is never authenticated.
  REQUIRE_FALSE(
      parseReply(ARES_ESERVFAIL, withAd(tlsa).data(), static_cast<int>(tlsa.size()), q, RrType::TLSA, TtlPolicy{})
          .answer.authenticated);
}

TEST_CASE("answer: an address answer through a CNAME chain names the chain's end") {
  // RFC 7672 §2.2.2: DANE looks TLSA up at the fully expanded name first, so the answer says it.
  auto chain = message("mx.alias.test", 1, 0,
                       {{"mx.alias.test", 5, 300, nameBytes("Step.Other.test")},
                        {"step.other.test", 5, 300, nameBytes("mx.target.test")},
                        {"mx.target.test", 1, 300, Bytes{192, 0, 2, 7}}});
  auto r = parse(withAd(chain), "MX.Alias.test", RrType::A);
  REQUIRE(r.answer.status == Status::Ok);
  REQUIRE(r.answer.canonical == "mx.target.test");  // lower-case, however the reply spelled it
  REQUIRE(r.answer.authenticated);
  REQUIRE_FALSE(parse(chain, "mx.alias.test", RrType::A).answer.authenticated);
  REQUIRE(parse(chain, "mx.alias.test", RrType::A).answer.canonical == "mx.target.test");
  // No alias: no canonical name.
  auto direct = message("h.test", 1, 0, {{"h.test", 1, 300, Bytes{192, 0, 2, 1}}});
  REQUIRE(parse(direct, "h.test", RrType::A).answer.canonical.empty());
  // A CNAME query answers the alias itself: nothing was expanded.
  auto cname = message("mx.alias.test", 5, 0, {{"mx.alias.test", 5, 300, nameBytes("mx.target.test")}});
  REQUIRE(parse(cname, "mx.alias.test", RrType::CNAME).answer.canonical.empty());
  // A chain whose end has no data in the reply is followed; the part seen names nothing yet.
  auto partial = message("mx.alias.test", 1, 0, {{"mx.alias.test", 5, 300, nameBytes("mx.target.test")}});
  auto pr = parse(partial, "mx.alias.test", RrType::A);
  REQUIRE(pr.follow == std::optional<std::string>("mx.target.test"));
  REQUIRE(pr.answer.canonical.empty());
}
