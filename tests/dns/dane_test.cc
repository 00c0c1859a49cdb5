// Tests for mta/dns/dane: the per-host DANE decision of RFC 7672 §2.2 from the DNS answers.
#include "mta/dns/dane.h"

#include <catch2/catch.hpp>

using namespace moat::mta::dns;

namespace {
Answer tlsaAnswer(Status s, bool authenticated, std::vector<TlsaRecord> records = {}) {
  Answer a;
  a.status = s;
  a.authenticated = authenticated;
  a.tlsa = std::move(records);
  if (s == Status::TempFail) a.error = "SERVFAIL";
  return a;
}
const TlsaRecord kEe{3, 1, 1, std::string(32, 'x')};
const TlsaRecord kTa{2, 0, 2, std::string(64, 'y')};
const TlsaRecord kPkixEe{1, 1, 1, std::string(32, 'z')};
}  // namespace

TEST_CASE("dane: the TLSA name and the usable records") {
  REQUIRE(tlsaName("mx.example.test", 25) == "_25._tcp.mx.example.test");
  REQUIRE(tlsaName("relay.test", 2525) == "_2525._tcp.relay.test");
  REQUIRE(tlsaUsable(kEe));
  REQUIRE(tlsaUsable(kTa));
  REQUIRE(tlsaUsable({3, 0, 0, "cert"}));
  REQUIRE_FALSE(tlsaUsable(kPkixEe));                          // PKIX-EE: not for SMTP (§3.1.3)
  REQUIRE_FALSE(tlsaUsable({0, 0, 1, std::string(32, 'a')}));  // PKIX-TA
  REQUIRE_FALSE(tlsaUsable({3, 2, 1, std::string(32, 'a')}));  // unknown selector
  REQUIRE_FALSE(tlsaUsable({3, 1, 3, std::string(32, 'a')}));  // unknown matching type
  REQUIRE_FALSE(tlsaUsable({4, 1, 1, std::string(32, 'a')}));  // unknown usage
}

TEST_CASE("dane: authenticated usable TLSA records make the host a DANE one") {
  auto a = tlsaAnswer(Status::Ok, true, {kPkixEe, kEe, kTa});
  auto d = decideDane("mx.example.test", 25, true, true, &a);
  REQUIRE(d.level == DaneLevel::Dane);
  REQUIRE(d.base == "mx.example.test");
  REQUIRE(d.records == std::vector<TlsaRecord>{kEe, kTa});  // PKIX-EE left out
}

TEST_CASE("dane: authenticated TLSA records all unusable: TLS without authentication") {
  auto a = tlsaAnswer(Status::Ok, true, {kPkixEe});
  REQUIRE(decideDane("mx.test", 25, true, true, &a).level == DaneLevel::Encrypt);
  auto none = tlsaAnswer(Status::Ok, true, {});  // only malformed records were there
  REQUIRE(decideDane("mx.test", 25, true, true, &none).level == DaneLevel::Encrypt);
}

TEST_CASE("dane: anything not authenticated, or no TLSA, is opportunistic TLS") {
  auto good = tlsaAnswer(Status::Ok, true, {kEe});
  REQUIRE(decideDane("mx.test", 25, false, true, &good).level == DaneLevel::May);  // insecure MX
  REQUIRE(decideDane("mx.test", 25, true, false, &good).level == DaneLevel::May);  // insecure addresses
  REQUIRE(decideDane("mx.test", 25, false, false, nullptr).level == DaneLevel::May);
  auto insecure = tlsaAnswer(Status::Ok, false, {kEe});
  REQUIRE(decideDane("mx.test", 25, true, true, &insecure).level == DaneLevel::May);
  for (Status s : {Status::NoData, Status::NxDomain, Status::Malformed})
    for (bool ad : {true, false}) {
      auto a = tlsaAnswer(s, ad);
      REQUIRE(decideDane("mx.test", 25, true, true, &a).level == DaneLevel::May);
    }
}

TEST_CASE("dane: a failed TLSA lookup for a secure host defers that host, for an insecure one it does not matter") {
  auto fail = tlsaAnswer(Status::TempFail, false);
  auto d = decideDane("mx.test", 25, true, true, &fail);
  REQUIRE(d.level == DaneLevel::Defer);
  REQUIRE(d.reason.find("_25._tcp.mx.test") != std::string::npos);
  REQUIRE(decideDane("mx.test", 25, true, false, &fail).level == DaneLevel::May);
}
