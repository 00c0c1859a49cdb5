// Tests for queue/scheduler: due-order index, retry waits (the last repeats) with bounded
// jitter from an injected RNG, expiry and the one-time delay warning.
#include "queue/scheduler.h"

#include <catch2/catch.hpp>

using namespace moat::queue;

namespace {
RetryPolicy policy() {
  RetryPolicy p;
  p.waitsMs = {60'000, 300'000, 900'000};
  p.maxLifetimeMs = 86'400'000;
  p.delayWarningMs = 3'600'000;
  return p;
}
}  // namespace

TEST_CASE("scheduler pops due ids in due order, bounded by max") {
  Scheduler s(policy(), [] { return 0.5; });
  s.add("C", 300);
  s.add("A", 100);
  s.add("B", 200);
  s.add("D", 100);  // same time as A: ties by id
  s.add("E", 900);
  REQUIRE(s.nextDue() == 100);
  REQUIRE(s.popDue(50, 10).empty());
  REQUIRE(s.popDue(250, 2) == std::vector<std::string>{"A", "D"});
  REQUIRE(s.popDue(250, 10) == std::vector<std::string>{"B"});
  REQUIRE(s.size() == 2);
  s.reschedule("E", 150);
  REQUIRE(s.nextDue() == 150);
  REQUIRE(s.dueOf("E") == 150);
  REQUIRE(s.remove("C"));
  REQUIRE_FALSE(s.remove("C"));
  REQUIRE(s.popDue(1000, 10) == std::vector<std::string>{"E"});
  REQUIRE_FALSE(s.nextDue().has_value());
  REQUIRE(s.size() == 0);
}

TEST_CASE("scheduler rebuild schedules active envelopes only") {
  Envelope a, h, q;
  a.id = "A", a.nextAttemptMs = 10;
  h.id = "H", h.area = Area::Hold;
  q.id = "Q", q.area = Area::Quarantine;
  Scheduler s(policy());
  s.add("stale", 1);
  s.rebuild({a, h, q});
  REQUIRE(s.size() == 1);
  REQUIRE(s.contains("A"));
  REQUIRE(s.dueOf("A") == 10);
}

TEST_CASE("retry waits follow the list, the last one repeats, jitter stays within 10%") {
  double r = 0.0;
  Scheduler s(policy(), [&] { return r; });
  REQUIRE(s.baseWait(0) == 60'000);
  REQUIRE(s.baseWait(1) == 60'000);
  REQUIRE(s.baseWait(2) == 300'000);
  REQUIRE(s.baseWait(3) == 900'000);
  REQUIRE(s.baseWait(4) == 900'000);
  REQUIRE(s.baseWait(100) == 900'000);
  r = 0.0;
  REQUIRE(s.retryWait(1) == 54'000);
  r = 0.5;
  REQUIRE(s.retryWait(1) == 60'000);
  r = 0.999999;
  REQUIRE(s.retryWait(1) <= 66'000);
  REQUIRE(s.retryWait(1) > 65'990);
  r = 7.0;  // a broken RNG does not escape the bounds
  REQUIRE(s.retryWait(2) == 300'000);

  Scheduler real(policy());
  int64_t lo = INT64_MAX, hi = 0;
  for (int i = 0; i < 10000; ++i) {
    int64_t w = real.retryWait(5);
    lo = std::min(lo, w), hi = std::max(hi, w);
  }
  REQUIRE(lo >= 810'000);
  REQUIRE(hi <= 990'000);
  REQUIRE(hi - lo > 100'000);  // it does spread
  REQUIRE(real.nextAttemptAt(1000, 1) >= 1000 + 54'000);
}

TEST_CASE("expiry and the once-only delay warning") {
  Scheduler s(policy());
  Envelope e;
  e.mailFrom = "s@example.test";
  e.arrivalMs = 1'000'000;
  REQUIRE_FALSE(s.expired(e, 1'000'000 + 86'399'999));
  REQUIRE(s.expired(e, 1'000'000 + 86'400'000));
  REQUIRE(s.expiresAt(e) == 87'400'000);
  REQUIRE_FALSE(s.delayWarningDue(e, 1'000'000 + 3'599'999));
  REQUIRE(s.delayWarningDue(e, 1'000'000 + 3'600'000));
  e.delayWarned = true;
  REQUIRE_FALSE(s.delayWarningDue(e, 1'000'000 + 3'600'000));
  e.delayWarned = false;
  e.mailFrom = "";  // never to the null sender
  REQUIRE_FALSE(s.delayWarningDue(e, 9'000'000));
  e.mailFrom = "s@example.test";
  e.isBounce = true;
  REQUIRE_FALSE(s.delayWarningDue(e, 9'000'000));
  RetryPolicy off = policy();
  off.delayWarningMs = 0;
  Scheduler s2(off);
  e.isBounce = false;
  REQUIRE_FALSE(s2.delayWarningDue(e, 9'000'000));
}
