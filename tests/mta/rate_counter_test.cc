// tests/mta/rate_counter_test.cc — mta/server/rate_counter ([rate_limits]): the sliding
// window's edges (an event counts for at least the window and at most a bucket more), the
// cap on keys (the stalest dropped), expired keys forgotten, one log mark per window, a
// window changed by a reload, client keys folding an IPv6 /64 into one, and the state file
// (rate_limit.state): a round trip that keeps each count's age across clocks, what expired
// meanwhile dropped, a wall clock gone back bounded by the window, damaged, truncated and
// foreign text refused. The clocks are the test's own.
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

// The end of the bucket an event at `t` (>= 0) is counted in.
int64_t bucketEndOf(int64_t t) { return (t / kBucket + 1) * kBucket; }

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

namespace {

constexpr int64_t kWall = 1'760'000'000'000;  // the wall clock at the save (ms since the epoch)

// Three counters' records as the state file holds them, saved at monotonic `now`.
std::vector<std::vector<RateCounter::Record>> saved(RateCounter& a, RateCounter& b, RateCounter& c, int64_t now) {
  return {a.records(now, kWall), b.records(now, kWall), c.records(now, kWall)};
}

}  // namespace

TEST_CASE("rate counter state file round trip keeps the counts and their age", "[rate_counter]") {
  // The first run's monotonic clock is far from the next one's, and from the wall clock:
  // only the age of each count crosses the restart.
  RateCounter a, b, c;
  const int64_t t0 = 5 * kHour;
  a.add("192.0.2.1", t0, kHour, 3);
  a.add("a b%\n@odd", t0 + 10 * 60'000, kHour);  // bytes that must be escaped
  c.add("alice", t0 + 20 * 60'000, kHour, 2);
  b.shouldLog("only-logged", t0, kHour);  // a log mark without counts is not saved
  CHECK(a.dirty());
  CHECK_FALSE(b.dirty());
  const int64_t save = t0 + 30 * 60'000;
  auto recs = saved(a, b, c, save);
  CHECK_FALSE(a.dirty());
  CHECK_FALSE(c.dirty());
  REQUIRE(recs[0].size() == 2);
  CHECK(recs[1].empty());
  REQUIRE(recs[2].size() == 1);
  CHECK(recs[0][0].buckets.front().endMs == bucketEndOf(t0) - save + kWall);  // wall-clock times
  std::string text = RateCounter::encode(recs);

  std::vector<std::vector<RateCounter::Record>> back;
  REQUIRE(RateCounter::decode(text, 3, back));
  REQUIRE(back.size() == 3);
  CHECK(back[0].size() == 2);
  CHECK(back[0][1].key == "a b%\n@odd");
  // Restarted 5 minutes later (wall clock), with a monotonic clock that starts near 0.
  const int64_t now = 1000, wallNow = kWall + 5 * 60'000;
  RateCounter a2, c2;
  a2.restore(back[0], now, wallNow, kHour);
  c2.restore(back[2], now, wallNow, kHour);
  CHECK_FALSE(a2.dirty());
  CHECK(a2.count("192.0.2.1", now, kHour) == 3);
  CHECK(a2.count("a b%\n@odd", now, kHour) == 1);
  CHECK(c2.count("alice", now, kHour) == 2);
  // The 3 events from t0 (35 minutes before the restart) expire 25 minutes after it, to
  // within a bucket, as they would have without the restart.
  const int64_t left = kHour - 35 * 60'000;
  CHECK(a2.count("192.0.2.1", now + left - kBucket - 1, kHour) == 3);
  CHECK(a2.count("192.0.2.1", now + left + kBucket, kHour) == 0);
  CHECK(c2.count("alice", now + left + kBucket, kHour) == 2);  // 20 minutes younger
}

TEST_CASE("rate counter restore drops what expired while stopped", "[rate_counter]") {
  RateCounter a;
  a.add("old", 0, kHour);
  a.add("young", 50 * 60'000, kHour);
  auto recs = a.records(55 * 60'000, kWall);
  RateCounter r;
  // Restarted 30 minutes later: "old" (from 85 minutes before) is gone, "young" is not.
  r.restore(recs, 7, kWall + 30 * 60'000, kHour);
  CHECK(r.keys() == 1);
  CHECK(r.count("old", 7, kHour) == 0);
  CHECK(r.count("young", 7, kHour) == 1);
  // A day later nothing is left; a shorter window in the new config drops more.
  RateCounter later;
  later.restore(recs, 7, kWall + 24 * kHour, kHour);
  CHECK(later.keys() == 0);
  RateCounter shorter;
  shorter.restore(recs, 7, kWall, 4 * 60'000);
  CHECK(shorter.count("young", 7, 4 * 60'000) == 0);
}

TEST_CASE("rate counter restore bounds counts from a wall clock that went back", "[rate_counter]") {
  // Saved with the wall clock a day ahead (then set right), or a file from the future: the
  // counts count as of the restart, never longer than a window and a bucket from it.
  RateCounter a;
  a.add("k", 0, kHour, 4);
  auto recs = a.records(0, kWall + 24 * kHour);
  RateCounter r;
  r.restore(recs, 0, kWall, kHour);
  CHECK(r.count("k", kHour - 1, kHour) == 4);
  CHECK(r.count("k", kHour + kBucket, kHour) == 0);
  CHECK(r.keys() == 0);
  // Times at the ends of int64 neither overflow nor live on.
  std::vector<RateCounter::Record> wild{{"max", {{INT64_MAX, 2}}}, {"min", {{INT64_MIN, 2}}}};
  RateCounter w;
  w.restore(wild, 100, kWall, kHour);
  CHECK(w.count("max", 100, kHour) == 2);
  CHECK(w.count("min", 100, kHour) == 0);
  CHECK(w.count("max", 100 + kHour + kBucket, kHour) == 0);
}

TEST_CASE("rate counter restore keeps the counter's own keys and its cap", "[rate_counter]") {
  RateCounter a;
  for (int i = 0; i < 5; ++i) a.add("k" + std::to_string(i), i, kHour, 10);
  auto recs = a.records(10, kWall);
  RateCounter r(3);
  r.add("k4", 10, kHour);  // counted since the start: its own count stands
  r.restore(recs, 10, kWall, kHour);
  CHECK(r.keys() == 3);
  CHECK(r.count("k4", 10, kHour) == 1);
  CHECK(r.count("k3", 10, kHour) == 10);  // the most recent of the file's
  CHECK(r.count("k0", 10, kHour) == 0);   // the stalest dropped at the cap
  // A count bigger than any limit stays over it, without overflowing the sum.
  std::vector<RateCounter::Record> huge{{"h", {{kWall + 1, UINT64_MAX}, {kWall + 2 * kBucket, UINT64_MAX}}}};
  RateCounter h;
  h.restore(huge, 0, kWall, kHour);
  CHECK(h.count("h", 0, kHour) > UINT32_MAX);
}

TEST_CASE("rate counter state file refuses damaged, truncated and foreign input", "[rate_counter]") {
  RateCounter a, b, c;
  a.add("192.0.2.1", 0, kHour, 2);
  a.add("192.0.2.2", kBucket, kHour);
  c.add("alice", 0, kHour);
  std::string text = RateCounter::encode(saved(a, b, c, kBucket));
  std::vector<std::vector<RateCounter::Record>> back;
  REQUIRE(RateCounter::decode(text, 3, back));

  CHECK_FALSE(RateCounter::decode("", 3, back));
  CHECK_FALSE(RateCounter::decode("moat-greylist 1\nend 0\n", 3, back));            // another file
  CHECK_FALSE(RateCounter::decode(text.substr(0, text.size() - 8), 3, back));       // cut short
  CHECK_FALSE(RateCounter::decode(text.substr(0, text.size() - 1), 3, back));       // the end line cut
  CHECK_FALSE(RateCounter::decode(text.substr(0, text.find('\n') + 10), 3, back));  // mid-record
  CHECK_FALSE(RateCounter::decode(text + "0 k 1 1\n", 3, back));                    // after the end line
  CHECK_FALSE(RateCounter::decode(text, 2, back));                                  // a counter it has not
  std::string wrongCount = text;
  wrongCount.replace(wrongCount.rfind("end 3"), 5, "end 2");
  CHECK_FALSE(RateCounter::decode(wrongCount, 3, back));
  const std::string v = "moat-ratelimit 1\n";
  CHECK(RateCounter::decode(v + "end 0\n", 3, back));
  CHECK(back.size() == 3);
  REQUIRE(RateCounter::decode(v + "2 k 1 1 5 2\nend 1\n", 3, back));
  CHECK((back[0].empty() && back[1].empty() && back[2].size() == 1));
  CHECK(back[2][0].buckets.size() == 2);
  CHECK((back[2][0].buckets[1].endMs == 5 && back[2][0].buckets[1].count == 2));
  CHECK_FALSE(RateCounter::decode(v + "3 k 1 1\nend 1\n", 3, back));  // counter out of range
  CHECK_FALSE(RateCounter::decode(v + "x k 1 1\nend 1\n", 3, back));
  CHECK_FALSE(RateCounter::decode(v + "0 k\nend 1\n", 3, back));       // no bucket
  CHECK_FALSE(RateCounter::decode(v + "0 k 1\nend 1\n", 3, back));     // an end without its count
  CHECK_FALSE(RateCounter::decode(v + "0 k 1 -1\nend 1\n", 3, back));  // a negative count
  CHECK_FALSE(RateCounter::decode(v + "0 k 1x 1\nend 1\n", 3, back));
  CHECK_FALSE(RateCounter::decode(v + "0  1 1\nend 1\n", 3, back));        // an empty key
  CHECK_FALSE(RateCounter::decode(v + "0 bad%zz 1 1\nend 1\n", 3, back));  // a bad escape
  CHECK_FALSE(
      RateCounter::decode(v + "0 " + std::string(RateCounter::kMaxKeyBytes + 1, 'k') + " 1 1\nend 1\n", 3, back));
  std::string many = "0 k";
  for (size_t i = 0; i <= RateCounter::kMaxBuckets; ++i) many += " " + std::to_string(i) + " 1";
  CHECK_FALSE(RateCounter::decode(v + many + "\nend 1\n", 3, back));  // more buckets than a key holds
  CHECK_FALSE(RateCounter::decode(std::string(RateCounter::kMaxStateBytes + 1, 'x'), 3, back));
  // At most a counter's cap of keys per counter.
  std::string full = v;
  for (size_t i = 0; i <= RateCounter::kDefaultMaxKeys; ++i) full += "1 k" + std::to_string(i) + " 1 1\n";
  CHECK_FALSE(RateCounter::decode(full + "end " + std::to_string(RateCounter::kDefaultMaxKeys + 1) + "\n", 3, back));
}
