// Tests for mta/daemon/address_order: the family tried first among addresses of equal MX
// preference (Postfix's smtp_address_preference), the families used at all (inet_protocols,
// `[queue] ip_versions`) and the share of each family within the address limit (Postfix's
// smtp_balance_inet_protocols). A pure function: addresses in, indices out, no network.
#include "mta/daemon/address_order.h"

#include <algorithm>
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

// `n` addresses of one family, numbered from `first`: 2001:db8::N or 192.0.2.N, in group `group`.
std::vector<AddressCandidate> run(bool v4, int first, int n, uint32_t group) {
  std::vector<AddressCandidate> out;
  for (int i = first; i < first + n; ++i)
    out.push_back(c(((v4 ? "192.0.2." : "2001:db8::") + std::to_string(i)).c_str(), group));
  return out;
}

std::vector<std::string> names(bool v4, int first, int n) {
  std::vector<std::string> out;
  for (const auto& a : run(v4, first, n, 0)) out.push_back(a.ip.str());
  return out;
}

std::vector<std::string> operator+(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::vector<AddressCandidate> operator+(std::vector<AddressCandidate> a, const std::vector<AddressCandidate>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

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

TEST_CASE("Address order: cut to the limit, both families keep half of it (smtp_balance_inet_protocols)") {
  // 12 MX hosts with AAAA and A each, equal preference: found as v6, v4, v6, v4, ...
  std::vector<AddressCandidate> many;
  for (int i = 1; i <= 12; ++i) many = many + run(false, i, 1, 10) + run(true, i, 1, 10);
  // The preferred family's first five, then the other's first five.
  REQUIRE(ordered(many, Pref::Ipv6, {}, 10) == names(false, 1, 5) + names(true, 1, 5));
  REQUIRE(ordered(many, Pref::Ipv4, {}, 10) == names(true, 1, 5) + names(false, 1, 5));
  // An odd limit: the extra slot goes to the family of the first address.
  REQUIRE(ordered(many, Pref::Ipv6, {}, 5) == names(false, 1, 3) + names(true, 1, 2));
  REQUIRE(ordered(many, Pref::Ipv4, {}, 5) == names(true, 1, 3) + names(false, 1, 2));
  // A limit of one keeps the first address.
  REQUIRE(ordered(many, Pref::Ipv4, {}, 1) == names(true, 1, 1));
}

TEST_CASE("Address order: a family with up to half the limit keeps all of it, the other takes the rest") {
  // 15 AAAA at preference 10, a backup MX with 3 A at 20: the A addresses are worse, yet all
  // three are kept, and the IPv6 ones fill the other 7 slots.
  auto backup = run(false, 1, 15, 10) + run(true, 1, 3, 20);
  REQUIRE(ordered(backup, Pref::Ipv6, {}, 10) == names(false, 1, 7) + names(true, 1, 3));
  // One backup A: 9 and 1.
  backup = run(false, 1, 11, 10) + run(true, 99, 1, 20);
  REQUIRE(ordered(backup, Pref::Ipv6, {}, 10) == names(false, 1, 9) + names(true, 99, 1));
  // 3 AAAA and 12 A of one preference, IPv4 first: the three AAAA are kept, last.
  auto few6 = run(false, 1, 3, 10) + run(true, 1, 12, 10);
  REQUIRE(ordered(few6, Pref::Ipv4, {}, 10) == names(true, 1, 7) + names(false, 1, 3));
  // Both families already within the first 10, but the second A would be cut: it is kept,
  // an AAAA goes instead.
  auto two4 = run(false, 1, 9, 10) + run(true, 1, 2, 10);
  REQUIRE(ordered(two4, Pref::Ipv6, {}, 10) == names(false, 1, 8) + names(true, 1, 2));
}

TEST_CASE("Address order: balancing keeps the order found, across preferences") {
  // 6 AAAA at 10, 3 A at 20, 6 AAAA at 30, 3 A at 40: 12 and 6, so 5 each. The first five
  // of each family, in their places: the A addresses at 40 pass the AAAA at 10 and 30 that
  // are cut, never each other or the AAAA kept.
  auto cs = run(false, 1, 6, 10) + run(true, 1, 3, 20) + run(false, 7, 6, 30) + run(true, 4, 3, 40);
  REQUIRE(ordered(cs, Pref::Ipv6, {}, 10) == names(false, 1, 5) + names(true, 1, 5));
  // With any, mixed families of one preference are shuffled first, then balanced: 5 of each,
  // each family's first five of the shuffled order, in that order.
  std::vector<AddressCandidate> mixed;
  for (int i = 1; i <= 12; ++i) mixed = mixed + run(false, i, 1, 10) + run(true, i, 1, 10);
  for (uint64_t seed = 1; seed <= 16; ++seed) {
    auto all = ordered(mixed, Pref::Any, {}, SIZE_MAX, seed);
    auto cut = ordered(mixed, Pref::Any, {}, 10, seed);
    auto isV4 = [](const std::string& a) { return a.find(':') == std::string::npos; };
    std::vector<std::string> all4, all6, cut4, cut6;
    for (const auto& a : all) (isV4(a) ? all4 : all6).push_back(a);
    for (const auto& a : cut) (isV4(a) ? cut4 : cut6).push_back(a);
    REQUIRE(cut4 == std::vector<std::string>(all4.begin(), all4.begin() + 5));
    REQUIRE(cut6 == std::vector<std::string>(all6.begin(), all6.begin() + 5));
    // and in the shuffled order: `cut` is a subsequence of `all`
    auto at = all.begin();
    for (const auto& a : cut) {
      at = std::find(at, all.end(), a);
      REQUIRE(at != all.end());
    }
  }
}

TEST_CASE("Address order: the limit alone when the list fits, or only one family exists") {
  // Both within the limit: nothing is moved.
  auto fits = run(false, 1, 8, 10) + run(true, 1, 2, 10);
  REQUIRE(ordered(fits, Pref::Ipv6, {}, 10) == names(false, 1, 8) + names(true, 1, 2));
  // Only IPv6: the first 10, as before.
  REQUIRE(ordered(run(false, 1, 15, 10), Pref::Ipv4, {}, 10) == names(false, 1, 10));
  // IPv4 left out by ip_versions: no slot is kept for it.
  auto cs = run(false, 1, 9, 10) + run(true, 1, 2, 10) + run(false, 99, 1, 10);
  REQUIRE(ordered(cs, Pref::Ipv6, {.v4 = false, .v6 = true}, 10) == names(false, 1, 9) + names(false, 99, 1));
}
