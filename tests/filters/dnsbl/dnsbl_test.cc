// Tests for filters/dnsbl/dnsbl.h: the RFC 5782 query names, what an answer means, and the
// weighted `zones` entries (postscreen_dnsbl_sites' syntax) with their answer filters.
#include "filters/dnsbl/dnsbl.h"

#include <toml++/toml.h>

#include <catch2/catch.hpp>

#include "policy/errors.h"
#include "policy/section.h"

using moat::filters::dnsbl::classify;
using moat::filters::dnsbl::Listing;
using moat::filters::dnsbl::parseZoneEntry;
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

// postscreen_dnsbl_sites' syntax: ZONE, ZONE*WEIGHT, ZONE=FILTER, ZONE=FILTER*WEIGHT.
TEST_CASE("DNSBL zones entries carry an optional answer filter and weight") {
  std::string error;
  auto e = parseZoneEntry("Zen.Spamhaus.ORG.", error);
  REQUIRE(e);
  REQUIRE(e->zone == "zen.spamhaus.org");
  REQUIRE(e->filter.empty());
  REQUIRE(e->weight == 1);
  REQUIRE(e->name() == "zen.spamhaus.org");

  e = parseZoneEntry("zen.spamhaus.org*3", error);
  REQUIRE(e);
  REQUIRE(e->zone == "zen.spamhaus.org");
  REQUIRE(e->weight == 3);
  REQUIRE(e->name() == "zen.spamhaus.org*3");

  e = parseZoneEntry("zen.spamhaus.org=127.0.0.[2..11]*3", error);
  REQUIRE(e);
  REQUIRE(e->zone == "zen.spamhaus.org");
  REQUIRE(e->filter == "127.0.0.[2..11]");
  REQUIRE(e->weight == 3);
  REQUIRE(e->octets[0] == std::vector<std::pair<uint8_t, uint8_t>>{{127, 127}});
  REQUIRE(e->octets[3] == std::vector<std::pair<uint8_t, uint8_t>>{{2, 11}});
  REQUIRE(e->name() == "zen.spamhaus.org=127.0.0.[2..11]*3");

  e = parseZoneEntry("list.dnswl.org=127.0.[0..255].[1..3]*-5", error);
  REQUIRE(e);
  REQUIRE(e->zone == "list.dnswl.org");
  REQUIRE(e->weight == -5);
  REQUIRE(e->octets[2] == std::vector<std::pair<uint8_t, uint8_t>>{{0, 255}});

  e = parseZoneEntry("bl.example=127.0.0.[2;4;10..11]", error);
  REQUIRE(e);
  REQUIRE(e->weight == 1);
  REQUIRE(e->octets[3] == std::vector<std::pair<uint8_t, uint8_t>>{{2, 2}, {4, 4}, {10, 11}});
  REQUIRE(e->name() == "bl.example=127.0.0.[2;4;10..11]");

  e = parseZoneEntry("bl.example*+2", error);
  REQUIRE(e);
  REQUIRE(e->weight == 2);
  e = parseZoneEntry("bl.example*0", error);
  REQUIRE(e);
  REQUIRE(e->weight == 0);
}

TEST_CASE("bad DNSBL zones entries are refused with the reason") {
  auto bad = [](const char* text) {
    std::string error;
    auto e = parseZoneEntry(text, error);
    INFO(text);
    REQUIRE_FALSE(e);
    REQUIRE_FALSE(error.empty());
    return error;
  };
  REQUIRE(bad("") == "\"\" is not a DNS zone name");
  REQUIRE(bad("*3") == "\"\" is not a DNS zone name");
  REQUIRE(bad("=127.0.0.2") == "\"\" is not a DNS zone name");
  REQUIRE(bad("bad zone*2") == "\"bad zone\" is not a DNS zone name");
  REQUIRE(bad("bl.example*x") == "the weight after '*' must be an integer from -1000 to 1000");
  REQUIRE(bad("bl.example*") == "the weight after '*' must be an integer from -1000 to 1000");
  REQUIRE(bad("bl.example*1.5") == "the weight after '*' must be an integer from -1000 to 1000");
  REQUIRE(bad("bl.example*1001") == "the weight after '*' must be an integer from -1000 to 1000");
  REQUIRE(bad("bl.example*-1001") == "the weight after '*' must be an integer from -1000 to 1000");
  REQUIRE(bad("bl.example*99999999999999999999") == "the weight after '*' must be an integer from -1000 to 1000");
  REQUIRE(bad("bl.example=127.0.0.256") == "the filter \"127.0.0.256\": an octet must be a number from 0 to 255");
  REQUIRE(bad("bl.example=127.0.0.[2..300]") ==
          "the filter \"127.0.0.[2..300]\": an octet must be a number from 0 to 255");
  REQUIRE(bad("bl.example=127.0.0.[9..2]") == "the filter \"127.0.0.[9..2]\": range [9..2] ends before it starts");
  REQUIRE(bad("bl.example=127.0.0.[2..9") == "the filter \"127.0.0.[2..9\": expected ';', '..' or ']' in an octet");
  REQUIRE(bad("bl.example=127.0.0.[2,3]") == "the filter \"127.0.0.[2,3]\": expected ';', '..' or ']' in an octet");
  REQUIRE(bad("bl.example=127.0.0") == "the filter \"127.0.0\" must be an IPv4 address pattern of four octets");
  REQUIRE(bad("bl.example=127.0.0.2.1") == "the filter \"127.0.0.2.1\" must be an IPv4 address pattern of four octets");
  REQUIRE(bad("bl.example=") == "the filter \"\": an octet must be a number from 0 to 255");
  REQUIRE(bad("bl.example=127.0.0.[]") == "the filter \"127.0.0.[]\": an octet must be a number from 0 to 255");
}

TEST_CASE("a DNSBL entry matches a listing answer its filter allows, never a refusal code") {
  std::string error;
  auto any = *parseZoneEntry("bl.example", error);
  REQUIRE(any.matches(answer(dns::Status::Ok, {"127.0.0.10"})));
  REQUIRE_FALSE(any.matches(answer(dns::Status::NxDomain)));
  REQUIRE_FALSE(any.matches(answer(dns::Status::TempFail)));
  REQUIRE_FALSE(any.matches(answer(dns::Status::Ok, {"127.255.255.254"})));
  REQUIRE_FALSE(any.matches(answer(dns::Status::Ok, {"192.0.2.1"})));

  auto range = *parseZoneEntry("zen.example=127.0.0.[2..9]*3", error);
  REQUIRE(range.matches(answer(dns::Status::Ok, {"127.0.0.2"})));
  REQUIRE(range.matches(answer(dns::Status::Ok, {"127.0.0.9"})));
  REQUIRE_FALSE(range.matches(answer(dns::Status::Ok, {"127.0.0.10"})));
  REQUIRE_FALSE(range.matches(answer(dns::Status::Ok, {"127.0.1.2"})));
  // One matching answer among several is enough.
  REQUIRE(range.matches(answer(dns::Status::Ok, {"127.0.0.10", "127.0.0.4"})));
  // A filter never lets a refusal code, or an address outside 127/8, count.
  auto wide = *parseZoneEntry("bl.example=[0..255].[0..255].[0..255].[0..255]", error);
  REQUIRE_FALSE(wide.matches(answer(dns::Status::Ok, {"127.0.0.1"})));
  REQUIRE_FALSE(wide.matches(answer(dns::Status::Ok, {"127.255.255.252"})));
  REQUIRE_FALSE(wide.matches(answer(dns::Status::Ok, {"198.51.100.7"})));
  REQUIRE(wide.matches(answer(dns::Status::Ok, {"127.1.2.3"})));

  auto list = *parseZoneEntry("bl.example=127.0.[0;2].[2;4;10..11]", error);
  REQUIRE(list.matches(answer(dns::Status::Ok, {"127.0.2.4"})));
  REQUIRE(list.matches(answer(dns::Status::Ok, {"127.0.0.11"})));
  REQUIRE_FALSE(list.matches(answer(dns::Status::Ok, {"127.0.0.3"})));
  REQUIRE_FALSE(list.matches(answer(dns::Status::Ok, {"127.0.1.2"})));

  auto dnswl = *parseZoneEntry("list.dnswl.org=127.0.[0..255].[1..3]*-5", error);
  REQUIRE(dnswl.matches(answer(dns::Status::Ok, {"127.0.15.2"})));
  REQUIRE_FALSE(dnswl.matches(answer(dns::Status::Ok, {"127.0.15.0"})));
}

namespace {
// [dnsbl] read from `toml` (as the file "moat.toml"); the errors' text, one a line.
std::string readEntries(const std::string& toml, std::vector<moat::filters::dnsbl::ZoneEntry>& out) {
  auto table = toml::parse(toml);
  moat::policy::Errors errors;
  moat::policy::Section sec(table["dnsbl"].as_table(), "dnsbl", "moat.toml", ".", errors);
  out = moat::filters::dnsbl::readZoneEntries(sec);
  sec.rejectUnknownKeys();
  return errors.str();
}
}  // namespace

TEST_CASE("a bad DNSBL zones entry is reported at its own line and the others are kept") {
  std::vector<moat::filters::dnsbl::ZoneEntry> entries;
  std::string errors = readEntries(
      "[dnsbl]\n"
      "zones = [\n"
      "  \"zen.example=127.0.0.[2..11]*3\",\n"
      "  \"bl.example=127.0.0.[2..300]\",\n"
      "  \"zen.example=127.0.0.[10;11]*-1\",\n"
      "  \"dnswl.example*many\",\n"
      "]\n",
      entries);
  REQUIRE(errors.find("moat.toml:4: dnsbl.zones: the filter \"127.0.0.[2..300]\"") != std::string::npos);
  REQUIRE(errors.find("moat.toml:6: dnsbl.zones: the weight after '*'") != std::string::npos);
  REQUIRE(entries.size() == 2);
  // The same zone twice, with different filters.
  REQUIRE(entries[0].name() == "zen.example=127.0.0.[2..11]*3");
  REQUIRE(entries[1].name() == "zen.example=127.0.0.[10;11]*-1");
}

// [uribl] reads its zones with readZones, which knows no weights or filters.
TEST_CASE("readZones still refuses a weight or a filter") {
  auto table = toml::parse("[uribl]\nzones = [\"dbl.example*2\", \"multi.example=127.0.0.2\", \"ok.example\"]\n");
  moat::policy::Errors errors;
  moat::policy::Section sec(table["uribl"].as_table(), "uribl", "moat.toml", ".", errors);
  auto zones = moat::filters::dnsbl::readZones(sec);
  REQUIRE(zones == std::vector<std::string>{"ok.example"});
  REQUIRE(errors.str().find("\"dbl.example*2\" is not a DNS zone name") != std::string::npos);
  REQUIRE(errors.str().find("\"multi.example=127.0.0.2\" is not a DNS zone name") != std::string::npos);
}
