// Tests for mta/daemon/address_order: the family tried first among addresses of equal MX
// preference (Postfix's smtp_address_preference), the families used at all (inet_protocols,
// `[queue] ip_versions`) and a slot for each family within the address limit (Postfix's
// smtp_balance_inet_protocols). A pure function: addresses in, indices out, no network.
#include "mta/daemon/address_order.h"

#include <catch2/catch.hpp>
#include <set>
#include <string>

using moat::mta::IpAddress;
using moat::mta::daemon::AddressCandidate;
using moat::mta::daemon::orderAddresses;
using moat::mta::dns::Families;
using Pref = moat::policy::AddressPreference;

namespace {

AddressCandidate c(const char* s, uint32_t group) { return {*IpAddress::parse(s), group}; }

// The addresses as text, in the order orderAddresses gives.
std::vector<std::string> ordered(const std::vector<AddressCandidate>& cs, Pref pref, Families fam = {},
                                 size_t limit = SIZE_MAX, uint64_t seed = 1) {
  std::mt19937_64 rng(seed);
  std::vector<std::string> out;
  for (size_t i : orderAddresses(cs, pref, fam, limit, rng)) out.push_back(cs[i].ip.str());
  return out;
}

// Two MX hosts at preference 10 (as found: each host's AAAA, then its A), one at 20.
const std::vector<AddressCandidate> kMx = {c("2001:db8::a", 10), c("192.0.2.10", 10),  c("2001:db8::b", 10),
                                           c("192.0.2.11", 10),  c("2001:db8::c", 20), c("192.0.2.20", 20)};

}  // namespace

TEST_CASE("Address order: ipv6 (the default) tries the AAAA addresses of a preference first") {
  REQUIRE(ordered(kMx, Pref::Ipv6) == std::vector<std::string>{"2001:db8::a", "2001:db8::b", "192.0.2.10", "192.0.2.11",
                                                               "2001:db8::c", "192.0.2.20"});
}

TEST_CASE("Address order: ipv4 tries the A addresses of a preference first, never across preferences") {
  REQUIRE(ordered(kMx, Pref::Ipv4) == std::vector<std::string>{"192.0.2.10", "192.0.2.11", "2001:db8::a", "2001:db8::b",
                                                               "192.0.2.20", "2001:db8::c"});
  // One host (a smtp: route target), AAAA and A: the A first.
  REQUIRE(ordered({c("::1", 0), c("127.0.0.1", 0)}, Pref::Ipv4) == std::vector<std::string>{"127.0.0.1", "::1"});
  // A route's targets stay in their order: the second target's A does not pass the first's AAAA.
  REQUIRE(ordered({c("::1", 0), c("127.0.0.2", 1)}, Pref::Ipv4) == std::vector<std::string>{"::1", "127.0.0.2"});
}

TEST_CASE("Address order: any shuffles within a preference, each attempt anew, never across") {
  std::set<std::vector<std::string>> seen;
  for (uint64_t seed = 1; seed <= 64; ++seed) {
    auto o = ordered(kMx, Pref::Any, {}, SIZE_MAX, seed);
    REQUIRE(o.size() == 6);
    std::set<std::string> first(o.begin(), o.begin() + 4), last(o.begin() + 4, o.end());
    REQUIRE(first == std::set<std::string>{"2001:db8::a", "192.0.2.10", "2001:db8::b", "192.0.2.11"});
    REQUIRE(last == std::set<std::string>{"2001:db8::c", "192.0.2.20"});
    seen.insert(o);
  }
  REQUIRE(seen.size() > 10);  // 4! * 2! = 48 orders; 64 seeds give many of them
  // Sometimes an IPv4 address is first: with ipv6 it never is.
  bool v4First = false;
  for (const auto& o : seen) v4First = v4First || o.front().find(':') == std::string::npos;
  REQUIRE(v4First);
}

TEST_CASE("Address order: a family ip_versions leaves out is dropped") {
  REQUIRE(ordered(kMx, Pref::Ipv6, {.v4 = true, .v6 = false}) ==
          std::vector<std::string>{"192.0.2.10", "192.0.2.11", "192.0.2.20"});
  REQUIRE(ordered(kMx, Pref::Ipv4, {.v4 = false, .v6 = true}) ==
          std::vector<std::string>{"2001:db8::a", "2001:db8::b", "2001:db8::c"});
  REQUIRE(ordered({c("::1", 0)}, Pref::Ipv6, {.v4 = true, .v6 = false}).empty());
}

TEST_CASE("Address order: within the limit, the last slot goes to the other family when it would be cut off") {
  // 12 MX hosts with AAAA and A each, equal preference: found as v6, v4, v6, v4, ...
  std::vector<AddressCandidate> many;
  for (int i = 0; i < 12; ++i) {
    many.push_back(c(("2001:db8::" + std::to_string(i + 1)).c_str(), 10));
    many.push_back(c(("192.0.2." + std::to_string(i + 1)).c_str(), 10));
  }
  auto o = ordered(many, Pref::Ipv6, {}, 10);
  REQUIRE(o.size() == 10);
  for (size_t i = 0; i < 9; ++i) REQUIRE(o[i] == "2001:db8::" + std::to_string(i + 1));
  REQUIRE(o[9] == "192.0.2.1");  // the best A address
  o = ordered(many, Pref::Ipv4, {}, 10);
  for (size_t i = 0; i < 9; ++i) REQUIRE(o[i] == "192.0.2." + std::to_string(i + 1));
  REQUIRE(o[9] == "2001:db8::1");
  // The other family is a worse preference (a backup MX with only an A): it still gets a slot.
  std::vector<AddressCandidate> backup;
  for (int i = 0; i < 11; ++i) backup.push_back(c(("2001:db8::" + std::to_string(i + 1)).c_str(), 10));
  backup.push_back(c("192.0.2.99", 20));
  o = ordered(backup, Pref::Ipv6, {}, 10);
  REQUIRE(o.size() == 10);
  REQUIRE(o[8] == "2001:db8::9");
  REQUIRE(o[9] == "192.0.2.99");
}

TEST_CASE("Address order: the limit alone when both families fit, or only one family exists") {
  // Both within the first 10: nothing is moved.
  std::vector<AddressCandidate> cs;
  for (int i = 0; i < 9; ++i) cs.push_back(c(("2001:db8::" + std::to_string(i + 1)).c_str(), 10));
  cs.push_back(c("192.0.2.1", 10));
  cs.push_back(c("192.0.2.2", 10));
  auto o = ordered(cs, Pref::Ipv6, {}, 10);
  REQUIRE(o.size() == 10);
  REQUIRE(o[9] == "192.0.2.1");
  // Only IPv6: the first 10, as before.
  std::vector<AddressCandidate> six;
  for (int i = 0; i < 15; ++i) six.push_back(c(("2001:db8::" + std::to_string(i + 1)).c_str(), 10));
  o = ordered(six, Pref::Ipv4, {}, 10);
  REQUIRE(o.size() == 10);
  REQUIRE(o.back() == "2001:db8::10");
  // IPv4 left out by ip_versions: no slot is kept for it.
  cs.push_back(c("2001:db8::99", 10));
  o = ordered(cs, Pref::Ipv6, {.v4 = false, .v6 = true}, 10);
  REQUIRE(o.size() == 10);
  REQUIRE(o.back() == "2001:db8::99");
}
