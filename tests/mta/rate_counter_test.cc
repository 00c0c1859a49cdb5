// tests/mta/rate_counter_test.cc — mta/server/rate_counter ([rate_limits]): the sliding
// window's edges (an event counts for at least the window and at most a bucket more), the
// cap on keys (the stalest dropped), expired keys forgotten, one log mark per window, a
// window changed by a reload, and client keys folding an IPv6 /64 into one. The clock is
// the test's own.
#include "mta/server/rate_counter.h"

#include <catch2/catch.hpp>
#include <random>

#include "mta/runtime/ip.h"

using moat::mta::IpAddress;
using moat::mta::server::RateCounter;

namespace {

constexpr int64_t kHour = 3'600'000;
constexpr int64_t kBucket = kHour / RateCounter::kBuckets;

std::string key(const char* ip) { return moat::mta::clientKey(*IpAddress::parse(ip)); }

}  // namespace

TEST_CASE("rate counter counts events per key", "[rate_counter]") {
  RateCounter c;
  CHECK(c.count("a", 1000, kHour) == 0);
  CHECK(c.keys() == 0);  // asking makes no entry
  for (int i = 0; i < 3; ++i) c.add("a", 1000 + i, kHour);
  c.add("b", 2000, kHour);
  CHECK(c.count("a", 5000, kHour) == 3);
  CHECK(c.count("b", 5000, kHour) == 1);
  CHECK(c.count("c", 5000, kHour) == 0);
  CHECK(c.keys() == 2);
}

TEST_CASE("rate counter window edges", "[rate_counter]") {
  // An event counts for at least the window, so a limit holds over every span of it, and
  // for at most a window and one bucket (1/32 of it) more.
  RateCounter c;
  c.add("k", 0, kHour);
  CHECK(c.count("k", kHour - 1, kHour) == 1);
  CHECK(c.count("k", kHour, kHour) == 1);  // the bucket [0, kBucket) still reaches into the window
  CHECK(c.count("k", kHour + kBucket - 1, kHour) == 1);
  CHECK(c.count("k", kHour + kBucket, kHour) == 0);
  CHECK(c.keys() == 0);  // nothing left of it: forgotten

  std::mt19937_64 rng(7);
  for (int i = 0; i < 200; ++i) {
    int64_t t = static_cast<int64_t>(rng() % (10 * kHour));
    RateCounter r;
    r.add("k", t, kHour);
    INFO("event at " << t);
    CHECK(r.count("k", t + kHour - 1, kHour) == 1);
    CHECK(r.count("k", t + kHour + kBucket, kHour) == 0);
  }
}

TEST_CASE("rate counter error stays within one bucket", "[rate_counter]") {
  // A steady client: one event every 100 ms for 100 s, window 10 s (buckets of 312 ms).
  RateCounter c;
  const int64_t window = 10'000;
  int64_t t = 0;
  for (; t < 100'000; t += 100) c.add("k", t, window);
  t -= 100;
  // Exactly 100 events are younger than the window; at most 312 ms more may count (4 events).
  uint64_t n = c.count("k", t, window);
  CHECK(n >= 100);
  CHECK(n <= 104);
}

TEST_CASE("rate counter keeps at most max keys and drops the stalest", "[rate_counter]") {
  RateCounter c(3);
  c.add("a", 0, kHour);
  c.add("b", 1, kHour);
  c.add("c", 2, kHour);
  c.add("a", 3, kHour);  // a is now the freshest: b is the stalest
  c.add("d", 4, kHour);
  CHECK(c.keys() == 3);
  CHECK(c.evicted() == 1);
  CHECK(c.count("b", 5, kHour) == 0);
  CHECK(c.count("a", 5, kHour) == 2);
  CHECK(c.count("c", 5, kHour) == 1);
  CHECK(c.count("d", 5, kHour) == 1);

  // A flood of distinct keys: memory stays bounded whatever comes.
  RateCounter big(1000);
  for (int i = 0; i < 50'000; ++i) big.add("k" + std::to_string(i), i, kHour);
  CHECK(big.keys() == 1000);
  CHECK(big.count("k49999", 50'000, kHour) == 1);
  CHECK(big.count("k0", 50'000, kHour) == 0);
}

TEST_CASE("rate counter forgets keys whose events expired", "[rate_counter]") {
  RateCounter c;
  for (int i = 0; i < 100; ++i) c.add("k" + std::to_string(i), i * 1000, kHour);
  CHECK(c.keys() == 100);
  c.add("late", 2 * kHour, kHour);
  CHECK(c.keys() == 1);
}

TEST_CASE("rate counter logs once per key per window", "[rate_counter]") {
  RateCounter c;
  c.add("k", 0, kHour);
  CHECK(c.shouldLog("k", 10, kHour));
  CHECK_FALSE(c.shouldLog("k", 11, kHour));
  CHECK_FALSE(c.shouldLog("k", 10 + kHour - 1, kHour));
  CHECK(c.shouldLog("other", 12, kHour));  // per key
  CHECK(c.shouldLog("k", 10 + kHour, kHour));
  // The mark outlives the events: a key whose counts expired is not logged again early.
  RateCounter d;
  d.add("k", 0, 10'000);
  CHECK(d.shouldLog("k", 9'000, 10'000));
  CHECK(d.count("k", 12'000, 10'000) == 0);
  CHECK_FALSE(d.shouldLog("k", 12'000, 10'000));
  CHECK(d.shouldLog("k", 19'000, 10'000));
}

TEST_CASE("rate counter follows a window changed by a reload", "[rate_counter]") {
  RateCounter c;
  c.add("k", 0, kHour);
  c.add("k", 50 * 60'000, kHour);
  // A longer window: both count, and new events go on in its (longer) buckets.
  CHECK(c.count("k", 55 * 60'000, 2 * kHour) == 2);
  c.add("k", 56 * 60'000, 2 * kHour);
  CHECK(c.count("k", 56 * 60'000, 2 * kHour) == 3);
  // A shorter one: the event 56 minutes old no longer counts (and is forgotten).
  CHECK(c.count("k", 56 * 60'000, 10 * 60'000) == 2);
  CHECK(c.count("k", 56 * 60'000, kHour) == 2);
}

TEST_CASE("rate counter client keys fold IPv6 to its /64", "[rate_counter]") {
  RateCounter c;
  c.add(key("2001:db8:1:2::1"), 0, kHour);
  c.add(key("2001:db8:1:2:ffff:ffff:ffff:fffe"), 1, kHour);
  CHECK(key("2001:db8:1:2::1") == "2001:db8:1:2::/64");
  CHECK(c.count(key("2001:db8:1:2:abcd::9"), 2, kHour) == 2);
  CHECK(c.count(key("2001:db8:1:3::1"), 2, kHour) == 0);  // the next /64 is another client
  // IPv4 by address; an IPv4-mapped IPv6 address is its IPv4 address.
  c.add(key("192.0.2.1"), 3, kHour);
  CHECK(c.count(key("::ffff:192.0.2.1"), 4, kHour) == 1);
  CHECK(c.count(key("192.0.2.2"), 4, kHour) == 0);
}
