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

TEST_CASE("dane: a secure alias looks TLSA up at the expanded name first, an insecure one at the host name only") {
  // RFC 7672 §2.2.2.
  REQUIRE(tlsaBaseDomains("mx.alias.test", "mx.target.test", true) ==
          std::vector<std::string>{"mx.target.test", "mx.alias.test"});
  REQUIRE(tlsaBaseDomains("mx.alias.test", "mx.target.test", false) == std::vector<std::string>{"mx.alias.test"});
  REQUIRE(tlsaBaseDomains("mx.test", "", true) == std::vector<std::string>{"mx.test"});
  REQUIRE(tlsaBaseDomains("mx.test", "mx.test", true) == std::vector<std::string>{"mx.test"});
}

TEST_CASE("dane: only no records at the expanded name sends the lookup on to the host name") {
  REQUIRE_FALSE(tlsaTryHostName(tlsaAnswer(Status::Ok, true, {kEe})));
  REQUIRE_FALSE(tlsaTryHostName(tlsaAnswer(Status::Ok, true, {kPkixEe})));  // there, if unusable
  REQUIRE_FALSE(tlsaTryHostName(tlsaAnswer(Status::TempFail, false)));      // perhaps withheld (§2.2.1)
  REQUIRE(tlsaTryHostName(tlsaAnswer(Status::Ok, false, {kEe})));           // not authenticated: as none
  for (Status s : {Status::NoData, Status::NxDomain, Status::Malformed})
    for (bool ad : {true, false}) REQUIRE(tlsaTryHostName(tlsaAnswer(s, ad)));
}

TEST_CASE("dane: records at the expanded name decide, both names are reference identifiers") {
  auto there = tlsaAnswer(Status::Ok, true, {kEe});
  auto d = decideDaneAlias("mx.alias.test", "mx.target.test", 25, there, nullptr);
  REQUIRE(d.level == DaneLevel::Dane);
  REQUIRE(d.base == "mx.target.test");
  REQUIRE(d.names == std::vector<std::string>{"mx.target.test", "mx.alias.test"});
  REQUIRE(d.records == std::vector<TlsaRecord>{kEe});
  REQUIRE(d.reason.find("_25._tcp.mx.target.test") != std::string::npos);

  auto unusable = tlsaAnswer(Status::Ok, true, {kPkixEe});
  REQUIRE(decideDaneAlias("mx.alias.test", "mx.target.test", 25, unusable, nullptr).level == DaneLevel::Encrypt);
  auto fail = tlsaAnswer(Status::TempFail, false);
  auto df = decideDaneAlias("mx.alias.test", "mx.target.test", 25, fail, nullptr);
  REQUIRE(df.level == DaneLevel::Defer);
  REQUIRE(df.reason.find("_25._tcp.mx.target.test") != std::string::npos);
}

TEST_CASE("dane: no records at the expanded name: the host name's decide, its name the base") {
  auto none = tlsaAnswer(Status::NoData, true);
  auto atHost = tlsaAnswer(Status::Ok, true, {kTa});
  auto d = decideDaneAlias("mx.alias.test", "mx.target.test", 2525, none, &atHost);
  REQUIRE(d.level == DaneLevel::Dane);
  REQUIRE(d.base == "mx.alias.test");
  REQUIRE(d.names == std::vector<std::string>{"mx.alias.test", "mx.target.test"});
  REQUIRE(d.records == std::vector<TlsaRecord>{kTa});

  auto insecureThere = tlsaAnswer(Status::Ok, false, {kEe});
  auto nothing = tlsaAnswer(Status::NxDomain, true);
  auto dn = decideDaneAlias("mx.alias.test", "mx.target.test", 25, insecureThere, &nothing);
  REQUIRE(dn.level == DaneLevel::May);
  REQUIRE(dn.reason.find("_25._tcp.mx.alias.test") != std::string::npos);
  REQUIRE(dn.reason.find("_25._tcp.mx.target.test") != std::string::npos);
  auto hostFails = tlsaAnswer(Status::TempFail, false);
  REQUIRE(decideDaneAlias("mx.alias.test", "mx.target.test", 25, none, &hostFails).level == DaneLevel::Defer);
  REQUIRE(decideDaneAlias("mx.alias.test", "mx.target.test", 25, none, nullptr).level == DaneLevel::Defer);
}

TEST_CASE("dane: an unaliased host is its own only reference identifier") {
  auto a = tlsaAnswer(Status::Ok, true, {kTa});
  REQUIRE(decideDane("mx.test", 25, true, true, &a).names == std::vector<std::string>{"mx.test"});
}
