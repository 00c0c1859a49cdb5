// tests/mta/greylist_test.cc — mta/server/greylist ([greylist], RFC 6647): a first attempt
// deferred, an early retry deferred again, a retry in the window passing, a window that ran
// out starting over, a passed triplet kept `lifetime` after its last pass, automatic
// allow-listing of a client network, networks grouped by prefix, the cap on entries, and
// the state file (round trip, and broken files refused). The clock is the test's own.
#include "mta/server/greylist.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "mta/runtime/ip.h"

using moat::mta::IpAddress;
using moat::mta::server::Greylist;

namespace {

constexpr int64_t kSec = 1000;
constexpr int64_t kMin = 60 * kSec;
constexpr int64_t kDay = 86'400 * kSec;
constexpr int64_t kT0 = 1'700'000'000'000;  // a wall clock

Greylist::Settings settings(unsigned autoAllow = 0) {
  Greylist::Settings s;
  s.delayMs = 5 * kMin;
  s.retryWindowMs = 2 * kDay;
  s.lifetimeMs = 35 * kDay;
  s.autoAllowAfter = autoAllow;
  return s;
}

std::string net(const char* ip, int v4 = 24, int v6 = 64) { return Greylist::network(*IpAddress::parse(ip), v4, v6); }

using R = Greylist::Result;

}  // namespace

TEST_CASE("greylist defers a first attempt and passes a retry after the delay", "[greylist]") {
  Greylist g;
  auto s = settings();
  auto v = g.check("192.0.2.0/24", "a@sender.test", "b@example.test", kT0, s);
  CHECK(v.result == R::Deferred);
  CHECK(v.firstSeen);
  CHECK(v.waitMs == 5 * kMin);
  CHECK(g.triplets() == 1);

  // Early: deferred again, not a new triplet, the wait counted from the first attempt.
  v = g.check("192.0.2.0/24", "a@sender.test", "b@example.test", kT0 + 2 * kMin, s);
  CHECK(v.result == R::Deferred);
  CHECK_FALSE(v.firstSeen);
  CHECK(v.waitMs == 3 * kMin);

  // Another recipient, another sender: triplets of their own.
  CHECK(g.check("192.0.2.0/24", "a@sender.test", "c@example.test", kT0 + 3 * kMin, s).firstSeen);
  CHECK(g.check("192.0.2.0/24", "", "b@example.test", kT0 + 3 * kMin, s).firstSeen);

  v = g.check("192.0.2.0/24", "a@sender.test", "b@example.test", kT0 + 5 * kMin, s);
  CHECK(v.result == R::Passed);
  CHECK(v.firstPass);
  // From then on at once, not a first pass.
  v = g.check("192.0.2.0/24", "a@sender.test", "b@example.test", kT0 + 6 * kMin, s);
  CHECK(v.result == R::Passed);
  CHECK_FALSE(v.firstPass);
}

TEST_CASE("greylist keys fold the sender's and the recipient's case, and the null sender is its own", "[greylist]") {
  Greylist g;
  auto s = settings();
  g.check("192.0.2.0/24", "A@Sender.TEST", "B@Example.Test", kT0, s);
  CHECK(g.check("192.0.2.0/24", "a@sender.test", "b@example.test", kT0 + 5 * kMin, s).result == R::Passed);
  g.check("192.0.2.0/24", "", "b@example.test", kT0, s);
  CHECK(g.check("192.0.2.0/24", "", "b@example.test", kT0 + 5 * kMin, s).result == R::Passed);
  CHECK(g.triplets() == 2);
}

TEST_CASE("greylist starts over when the retry window ran out", "[greylist]") {
  Greylist g;
  auto s = settings();
  g.check("192.0.2.0/24", "a@s.test", "b@e.test", kT0, s);
  // The first attempt's window (2d) is over: a new first attempt.
  auto v = g.check("192.0.2.0/24", "a@s.test", "b@e.test", kT0 + 2 * kDay + 1, s);
  CHECK(v.result == R::Deferred);
  CHECK(v.firstSeen);
  CHECK(v.waitMs == 5 * kMin);
  CHECK(g.check("192.0.2.0/24", "a@s.test", "b@e.test", kT0 + 2 * kDay + 1 + 5 * kMin, s).result == R::Passed);
  // Just inside the window passes.
  g.check("192.0.2.0/24", "x@s.test", "b@e.test", kT0, s);
  CHECK(g.check("192.0.2.0/24", "x@s.test", "b@e.test", kT0 + 2 * kDay - 1, s).result == R::Passed);
}

TEST_CASE("greylist keeps a passed triplet lifetime after its last pass", "[greylist]") {
  Greylist g;
  auto s = settings();
  g.check("192.0.2.0/24", "a@s.test", "b@e.test", kT0, s);
  const int64_t pass = kT0 + 10 * kMin;
  REQUIRE(g.check("192.0.2.0/24", "a@s.test", "b@e.test", pass, s).result == R::Passed);
  // Each pass extends it: 30 days on, then 34 more, still known.
  CHECK(g.check("192.0.2.0/24", "a@s.test", "b@e.test", pass + 30 * kDay, s).result == R::Passed);
  CHECK(g.check("192.0.2.0/24", "a@s.test", "b@e.test", pass + 64 * kDay, s).result == R::Passed);
  // 35 days without mail: forgotten, greylisted again.
  auto v = g.check("192.0.2.0/24", "a@s.test", "b@e.test", pass + 99 * kDay, s);
  CHECK(v.result == R::Deferred);
  CHECK(v.firstSeen);
}

TEST_CASE("greylist auto-allows a client network that got enough triplets through", "[greylist]") {
  Greylist g;
  auto s = settings(3);
  int64_t t = kT0;
  for (int i = 0; i < 3; ++i) {
    std::string rcpt = "u" + std::to_string(i) + "@e.test";
    CHECK(g.check("192.0.2.0/24", "a@s.test", rcpt, t, s).result == R::Deferred);
    CHECK(g.check("192.0.2.0/24", "a@s.test", rcpt, t + 5 * kMin, s).result == R::Passed);
    // A triplet passing again does not count twice (after the third, the client is allowed).
    CHECK(g.check("192.0.2.0/24", "a@s.test", rcpt, t + 6 * kMin, s).result == (i < 2 ? R::Passed : R::Allowed));
    // Not yet enough: a new triplet is still greylisted.
    if (i < 2)
      CHECK(g.check("192.0.2.0/24", "new" + std::to_string(i) + "@s.test", "z@e.test", t + 6 * kMin, s).result ==
            R::Deferred);
    t += 10 * kMin;
  }
  // Now any sender and recipient from that network passes at once.
  CHECK(g.check("192.0.2.0/24", "other@s.test", "new@e.test", t, s).result == R::Allowed);
  // Another network is still greylisted.
  CHECK(g.check("198.51.100.0/24", "other@s.test", "new@e.test", t, s).result == R::Deferred);
  // The allowance lasts `lifetime` after the client last sent.
  CHECK(g.check("192.0.2.0/24", "x@s.test", "y@e.test", t + 30 * kDay, s).result == R::Allowed);
  CHECK(g.check("192.0.2.0/24", "x2@s.test", "y@e.test", t + 66 * kDay, s).result == R::Deferred);

  // auto_allow_after = 0: never.
  Greylist off;
  auto s0 = settings(0);
  for (int i = 0; i < 10; ++i) {
    std::string rcpt = "u" + std::to_string(i) + "@e.test";
    off.check("192.0.2.0/24", "a@s.test", rcpt, kT0, s0);
    off.check("192.0.2.0/24", "a@s.test", rcpt, kT0 + 5 * kMin, s0);
  }
  CHECK(off.clients() == 0);
  CHECK(off.check("192.0.2.0/24", "b@s.test", "x@e.test", kT0 + 6 * kMin, s0).result == R::Deferred);
}

TEST_CASE("greylist groups clients by network prefix", "[greylist]") {
  CHECK(net("192.0.2.1") == "192.0.2.0/24");
  CHECK(net("192.0.2.254") == "192.0.2.0/24");
  CHECK(net("192.0.3.1") == "192.0.3.0/24");
  CHECK(net("192.0.2.77", 32) == "192.0.2.77/32");
  CHECK(net("192.0.2.77", 28) == "192.0.2.64/28");
  CHECK(net("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64");
  CHECK(net("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64");
  CHECK(net("2001:db8:1:3::1") == "2001:db8:1:3::/64");
  CHECK(net("2001:db8:1:2:aaaa::1", 24, 48) == "2001:db8:1::/48");
  CHECK(net("::ffff:192.0.2.9") == "192.0.2.0/24");  // a mapped address is the IPv4 one

  // A retry from another host of the sender's /24 passes.
  Greylist g;
  auto s = settings();
  g.check(net("192.0.2.1"), "a@s.test", "b@e.test", kT0, s);
  CHECK(g.check(net("192.0.2.200"), "a@s.test", "b@e.test", kT0 + 5 * kMin, s).result == R::Passed);
  g.check(net("192.0.2.1", 32), "c@s.test", "b@e.test", kT0, s);
  CHECK(g.check(net("192.0.2.200", 32), "c@s.test", "b@e.test", kT0 + 5 * kMin, s).result == R::Deferred);
}

TEST_CASE("greylist holds at most its cap of entries, the stalest dropped", "[greylist]") {
  Greylist g(3);
  auto s = settings();
  for (int i = 0; i < 3; ++i) g.check("192.0.2.0/24", "a@s.test", "u" + std::to_string(i) + "@e.test", kT0 + i, s);
  // u0 is touched by passing: u1 is then the stalest.
  REQUIRE(g.check("192.0.2.0/24", "a@s.test", "u0@e.test", kT0 + 5 * kMin, s).result == R::Passed);
  g.check("192.0.2.0/24", "a@s.test", "u3@e.test", kT0 + 5 * kMin, s);
  CHECK(g.triplets() == 3);
  CHECK(g.evicted() == 1);
  CHECK(g.check("192.0.2.0/24", "a@s.test", "u0@e.test", kT0 + 6 * kMin, s).result == R::Passed);
  // u1 was dropped: greylisted from the start.
  auto v = g.check("192.0.2.0/24", "a@s.test", "u1@e.test", kT0 + 6 * kMin, s);
  CHECK(v.result == R::Deferred);
  CHECK(v.firstSeen);
  CHECK(g.triplets() == 3);

  // Keys a peer makes long are cut: the memory per entry is bounded.
  Greylist big(10);
  big.check("192.0.2.0/24", std::string(5000, 'a'), std::string(5000, 'b'), kT0, s);
  auto recs = big.records(kT0);
  REQUIRE(recs.size() == 1);
  CHECK(recs[0].key.size() == Greylist::kMaxKeyBytes);
}

TEST_CASE("greylist state file round trip, and broken files refused", "[greylist]") {
  Greylist g;
  auto s = settings(1);
  g.check("192.0.2.0/24", "a b%@s.test", "b@e.test", kT0, s);  // bytes that must be escaped
  g.check("192.0.2.0/24", "", "pending@e.test", kT0, s);
  REQUIRE(g.check("192.0.2.0/24", "a b%@s.test", "b@e.test", kT0 + 5 * kMin, s).result == R::Passed);
  CHECK(g.dirty());
  auto recs = g.records(kT0 + 5 * kMin);
  CHECK_FALSE(g.dirty());
  REQUIRE(recs.size() == 3);  // two triplets, one client network
  std::string text = Greylist::encode(recs);

  std::vector<Greylist::Record> back;
  REQUIRE(Greylist::decode(text, back));
  REQUIRE(back.size() == 3);
  Greylist h;
  h.restore(back, kT0 + 6 * kMin);
  CHECK(h.triplets() == 2);
  CHECK(h.clients() == 1);
  CHECK_FALSE(h.dirty());
  // The passed one passes; the pending one keeps its first attempt; the client is allowed.
  Greylist h2;
  h2.restore(back, kT0 + 6 * kMin);
  auto v = h2.check("192.0.2.0/24", "a b%@s.test", "b@e.test", kT0 + 6 * kMin, settings(0));
  CHECK(v.result == R::Passed);
  CHECK_FALSE(v.firstPass);
  CHECK(h2.check("192.0.2.0/24", "", "pending@e.test", kT0 + 6 * kMin, settings(0)).result == R::Passed);
  CHECK(h2.check("192.0.2.0/24", "n@s.test", "n@e.test", kT0 + 6 * kMin, s).result == R::Allowed);
  // Entries that expired while Moat was stopped are not restored.
  Greylist late;
  late.restore(back, kT0 + 40 * kDay);
  CHECK(late.triplets() == 0);
  CHECK(late.clients() == 0);

  CHECK_FALSE(Greylist::decode("", back));
  CHECK_FALSE(Greylist::decode("something else\nend 0\n", back));
  CHECK_FALSE(Greylist::decode(text.substr(0, text.size() - 8), back));  // cut short: no end line
  CHECK_FALSE(Greylist::decode(text.substr(0, text.size() - 1), back));  // the end line cut
  std::string wrongCount = text;
  wrongCount.replace(wrongCount.rfind("end 3"), 5, "end 2");
  CHECK_FALSE(Greylist::decode(wrongCount, back));
  std::string badField = text;
  badField.replace(badField.find("\nt ") + 3, 1, "x");
  CHECK_FALSE(Greylist::decode(badField, back));
  CHECK_FALSE(Greylist::decode(text + "t 1 2 3 k\n", back));  // after the end line
  CHECK_FALSE(Greylist::decode("moat-greylist 1\nt 1 2 0 bad%zzescape\nend 1\n", back));
  CHECK(Greylist::decode("moat-greylist 1\nend 0\n", back));
  CHECK(back.empty());
}

TEST_CASE("greylist exempt names match the verified name exactly or below a leading dot", "[greylist]") {
  const std::vector<std::string> entries{".google.com", "mx1.example.test", ".big.example.test"};
  CHECK(Greylist::exemptName("mail-wr1-f41.google.com", entries));
  CHECK(Greylist::exemptName("a.b.google.com", entries));
  CHECK(Greylist::exemptName("mx1.example.test", entries));
  CHECK(Greylist::exemptName("mx1.big.example.test", entries));
  // ".google.com" is the subdomains only; a name that merely ends in the same letters is not.
  CHECK_FALSE(Greylist::exemptName("google.com", entries));
  CHECK_FALSE(Greylist::exemptName("evilgoogle.com", entries));
  CHECK_FALSE(Greylist::exemptName("google.com.evil.test", entries));
  // An entry without the dot is the name itself, not its subdomains.
  CHECK_FALSE(Greylist::exemptName("a.mx1.example.test", entries));
  CHECK_FALSE(Greylist::exemptName("mx2.example.test", entries));
  // No verified name, no list.
  CHECK_FALSE(Greylist::exemptName("", entries));
  CHECK_FALSE(Greylist::exemptName("", {""}));
  CHECK_FALSE(Greylist::exemptName("mx1.example.test", {}));
}

TEST_CASE("greylist wouldPass says what check would, and records nothing", "[greylist]") {
  Greylist g;
  auto s = settings(1);
  const std::string n = "192.0.2.0/24";
  CHECK_FALSE(g.wouldPass(n, "a@sender.test", "b@example.test", kT0, s));
  CHECK(g.triplets() == 0);
  CHECK_FALSE(g.dirty());
  CHECK(g.check(n, "a@sender.test", "b@example.test", kT0, s).result == R::Deferred);
  CHECK_FALSE(g.wouldPass(n, "a@sender.test", "b@example.test", kT0 + kMin, s));
  CHECK(g.wouldPass(n, "A@Sender.test", "b@EXAMPLE.test", kT0 + 5 * kMin, s));  // due: the retry passes
  CHECK(g.triplets() == 1);
  // Its window ran out: it would start over.
  CHECK_FALSE(g.wouldPass(n, "a@sender.test", "b@example.test", kT0 + 3 * kDay, s));
  CHECK(g.check(n, "a@sender.test", "b@example.test", kT0 + 5 * kMin, s).result == R::Passed);
  CHECK(g.wouldPass(n, "a@sender.test", "b@example.test", kT0 + 6 * kMin, s));
  CHECK_FALSE(g.wouldPass(n, "a@sender.test", "b@example.test", kT0 + 5 * kMin + 35 * kDay, s));
  // auto_allow_after = 1: the network got a triplet through, so any triplet from it passes.
  CHECK(g.wouldPass(n, "other@sender.test", "c@example.test", kT0 + 6 * kMin, s));
  CHECK_FALSE(g.wouldPass("198.51.100.0/24", "other@sender.test", "c@example.test", kT0 + 6 * kMin, s));
  CHECK(g.triplets() == 1);
}
