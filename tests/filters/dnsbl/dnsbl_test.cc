// Tests for filters/dnsbl/dnsbl.h: the RFC 5782 query names and what an answer means.
#include "filters/dnsbl/dnsbl.h"

#include <catch2/catch.hpp>

using moat::filters::dnsbl::classify;
using moat::filters::dnsbl::Listing;
using moat::filters::dnsbl::queryName;
using moat::mta::IpAddress;
namespace dns = moat::mta::dns;

TEST_CASE("DNSBL query names are the reversed address under the zone (RFC 5782 §2.1, §2.4)") {
  REQUIRE(queryName(*IpAddress::parse("127.0.0.2"), "bl.example") == "2.0.0.127.bl.example");
  REQUIRE(queryName(*IpAddress::parse("192.0.2.99"), "zen.example") == "99.2.0.192.zen.example");
  REQUIRE(queryName(*IpAddress::parse("2001:db8:1:2:3:4:567:89ab"), "bl.example") ==
          "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.example");
  // An IPv4-mapped client is looked up as the IPv4 address it is.
  REQUIRE(queryName(*IpAddress::parse("::ffff:192.0.2.1"), "bl.example") == "1.2.0.192.bl.example");
  // The reverse-DNS name is the same labels under arpa.
  REQUIRE(IpAddress::parse("192.0.2.99")->reverseName() == "99.2.0.192.in-addr.arpa");
}

namespace {
dns::Answer answer(dns::Status status, std::initializer_list<const char*> ips = {}) {
  dns::Answer a;
  a.status = status;
  for (const char* ip : ips) a.addresses.push_back(*IpAddress::parse(ip));
  return a;
}
}  // namespace

TEST_CASE("a DNSBL answer lists only with an address in 127/8 that is not a refusal code") {
  REQUIRE(classify(answer(dns::Status::Ok, {"127.0.0.2"})) == Listing::Listed);
  REQUIRE(classify(answer(dns::Status::Ok, {"127.0.0.10", "127.0.0.4"})) == Listing::Listed);
  REQUIRE(classify(answer(dns::Status::NxDomain)) == Listing::NotListed);
  REQUIRE(classify(answer(dns::Status::NoData)) == Listing::NotListed);
  // Some lists answer 127.255.255.x to refuse a query (public resolver, over quota).
  REQUIRE(classify(answer(dns::Status::Ok, {"127.255.255.254"})) == Listing::Refused);
  REQUIRE(classify(answer(dns::Status::Ok, {"127.255.255.254", "127.0.0.2"})) == Listing::Listed);
  // 127.0.0.1 is never a listing (RFC 5782 §5); lists answer it to refuse a query.
  REQUIRE(classify(answer(dns::Status::Ok, {"127.0.0.1"})) == Listing::Refused);
  REQUIRE(classify(answer(dns::Status::Ok, {"127.0.0.1", "127.0.0.3"})) == Listing::Listed);
  // A resolver that wildcards NXDOMAIN to an ad server must not block everyone.
  REQUIRE(classify(answer(dns::Status::Ok, {"192.0.2.1"})) == Listing::NotListed);
  REQUIRE(classify(answer(dns::Status::TempFail)) == Listing::TempFail);
  REQUIRE(classify(answer(dns::Status::Malformed)) == Listing::TempFail);
}

// The domain lists of [uribl] (RFC 5782 §2.2) answer with the same codes.
TEST_CASE("domain list answers list only in 127/8 and their refusal codes never list") {
  // Spamhaus DBL return codes: 127.0.1.x listings, 127.255.255.252-255 refusals.
  REQUIRE(classify(answer(dns::Status::Ok, {"127.0.1.2"})) == Listing::Listed);
  REQUIRE(classify(answer(dns::Status::Ok, {"127.255.255.254"})) == Listing::Refused);
  REQUIRE(classify(answer(dns::Status::Ok, {"127.255.255.252"})) == Listing::Refused);
  // URIBL and SURBL answer 127.0.0.1 to a resolver they block.
  REQUIRE(classify(answer(dns::Status::Ok, {"127.0.0.1"})) == Listing::Refused);
  // SURBL multi's bit mask.
  REQUIRE(classify(answer(dns::Status::Ok, {"127.0.0.64"})) == Listing::Listed);
  REQUIRE(classify(answer(dns::Status::NxDomain)) == Listing::NotListed);
  REQUIRE(classify(answer(dns::Status::Ok, {"198.51.100.7"})) == Listing::NotListed);
  REQUIRE(classify(answer(dns::Status::TempFail)) == Listing::TempFail);
}
