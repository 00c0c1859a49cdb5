// Tests for mta/daemon/queue_select: the selectors of `moat queue` (an operator's --from/--to
// values, the control socket's tokens, matching envelopes) and the summary's counts.
#include "mta/daemon/queue_select.h"

#include <catch2/catch.hpp>
#include <string>

#include "mta/daemon/tiny_json.h"

using moat::mta::daemon::parseAddressSelector;
using moat::mta::daemon::QueueSelector;
using moat::mta::daemon::QueueSummary;
namespace queue = moat::queue;
namespace json = moat::mta::daemon::json;

namespace {

constexpr int64_t kNow = 1'700'000'000'000;
constexpr int64_t kMinute = 60'000;

queue::Envelope env(const std::string& from, std::vector<std::string> to, int64_t ageMs,
                    queue::Area area = queue::Area::Active) {
  queue::Envelope e;
  e.id = "ID";
  e.mailFrom = from;
  for (auto& t : to) e.rcpts.push_back(queue::Recipient{t, "", "", queue::RcptStatus::Pending, 0, "", ""});
  e.arrivalMs = kNow - ageMs;
  e.area = area;
  e.size = 100;
  return e;
}

QueueSelector decoded(const std::string& tokens) {
  QueueSelector s;
  std::string error;
  REQUIRE(QueueSelector::decode(tokens, s, error));
  return s;
}

}  // namespace

TEST_CASE("queue selectors: address values are checked and lowercased", "[queue_select]") {
  std::string out, error;
  CHECK(parseAddressSelector("Spammer@Example.COM", true, out, error));
  CHECK(out == "spammer@example.com");
  CHECK(parseAddressSelector("@Example.com", false, out, error));
  CHECK(out == "@example.com");
  CHECK(parseAddressSelector("<a@b.test>", false, out, error));
  CHECK(out == "a@b.test");
  CHECK(parseAddressSelector("<>", true, out, error));
  CHECK(out == "<>");
  CHECK_FALSE(parseAddressSelector("<>", false, out, error));  // the null sender is a sender only
  for (const char* bad : {"", "nodomain", "user@", "@", "a b@c.test", "a@b@c", "a@b\tc"})
    CHECK_FALSE(parseAddressSelector(bad, true, out, error));
}

TEST_CASE("queue selectors: tokens go over the control socket and back", "[queue_select]") {
  QueueSelector s;
  s.area = "all";
  s.from = "@example.com";
  s.to = "x@y.test";
  s.olderMs = 3600000;
  s.youngerMs = 0;
  s.reason = "spam 100% sure";
  std::string tokens = s.encode();
  CHECK(tokens == "area=all from=@example.com to=x@y.test older=3600000 younger=0 reason=spam%20100%25%20sure");
  QueueSelector back = decoded(tokens);
  CHECK(back.area == s.area);
  CHECK(back.from == s.from);
  CHECK(back.to == s.to);
  CHECK(back.olderMs == s.olderMs);
  CHECK(back.youngerMs == 0);
  CHECK(back.reason == s.reason);
  CHECK(decoded("").narrows() == false);
  CHECK(decoded("area=hold").narrows() == false);
  CHECK(decoded("older=1").narrows());
  std::string error;
  QueueSelector x;
  for (const char* bad :
       {"bogus=1", "area=nowhere", "older=-5", "older=1h", "from=nope", "reason=", "from", "reason=%4", "reason=%zz"}) {
    INFO(bad);
    CHECK_FALSE(QueueSelector::decode(bad, x, error));
  }
}

TEST_CASE("queue selectors: from matches the sender ignoring case, @domain the domain only", "[queue_select]") {
  auto e = env("Spammer@Example.COM", {"a@x.test"}, 0);
  CHECK(decoded("from=spammer@example.com").matches(e, kNow));
  CHECK(decoded("from=@example.com").matches(e, kNow));
  CHECK_FALSE(decoded("from=@sub.example.com").matches(e, kNow));
  CHECK_FALSE(decoded("from=@ample.com").matches(e, kNow));
  CHECK_FALSE(decoded("from=other@example.com").matches(e, kNow));
  CHECK_FALSE(decoded("from=<>").matches(e, kNow));
  auto dsn = env("", {"a@x.test"}, 0);
  CHECK(decoded("from=<>").matches(dsn, kNow));
  CHECK_FALSE(decoded("from=@example.com").matches(dsn, kNow));
}

TEST_CASE("queue selectors: to matches only recipients still pending", "[queue_select]") {
  auto e = env("s@a.test", {"one@X.test", "two@y.test"}, 0);
  CHECK(decoded("to=@x.test").matches(e, kNow));
  CHECK(decoded("to=two@Y.TEST").matches(e, kNow));
  e.rcpts[0].status = queue::RcptStatus::Delivered;
  CHECK_FALSE(decoded("to=@x.test").matches(e, kNow));
  e.rcpts[1].status = queue::RcptStatus::Failed;
  CHECK_FALSE(decoded("to=@y.test").matches(e, kNow));
}

TEST_CASE("queue selectors: older and younger bound the age, and all selectors must match", "[queue_select]") {
  auto e = env("s@a.test", {"r@x.test"}, 10 * kMinute);
  CHECK(decoded("older=600000").matches(e, kNow));  // exactly that old
  CHECK_FALSE(decoded("older=600001").matches(e, kNow));
  CHECK(decoded("younger=600001").matches(e, kNow));
  CHECK_FALSE(decoded("younger=600000").matches(e, kNow));
  CHECK(decoded("older=60000 younger=3600000 from=@a.test to=@x.test").matches(e, kNow));
  CHECK_FALSE(decoded("older=60000 younger=3600000 from=@b.test to=@x.test").matches(e, kNow));
  CHECK_FALSE(decoded("older=60000 from=@a.test to=@z.test").matches(e, kNow));
}

TEST_CASE("queue selectors: reason is a substring of the quarantine reason or a last reply", "[queue_select]") {
  auto e = env("s@a.test", {"r@x.test"}, 0);
  e.rcpts[0].lastReply = "451 4.4.1 connection refused";
  CHECK(decoded("reason=Connection%20REFUSED").matches(e, kNow));
  CHECK_FALSE(decoded("reason=timed%20out").matches(e, kNow));
  e.quarantineReason = "virus: Eicar-Test-Signature";
  CHECK(decoded("reason=eicar").matches(e, kNow));
}

TEST_CASE("queue selectors: the area as list takes it", "[queue_select]") {
  auto active = env("s@a.test", {"r@x.test"}, 0);
  auto held = env("s@a.test", {"r@x.test"}, 0, queue::Area::Hold);
  auto quarantined = env("s@a.test", {"r@x.test"}, 0, queue::Area::Quarantine);
  QueueSelector def;
  CHECK(def.matches(active, kNow));
  CHECK(def.matches(held, kNow));
  CHECK_FALSE(def.matches(quarantined, kNow));
  CHECK(decoded("area=all").matches(quarantined, kNow));
  CHECK_FALSE(decoded("area=hold").matches(active, kNow));
  CHECK(decoded("area=hold").matches(held, kNow));
  CHECK(decoded("area=quarantine").matches(quarantined, kNow));
  CHECK_FALSE(decoded("area=active").matches(held, kNow));
}

TEST_CASE("queue summary: counts by area, age bucket and recipient domain", "[queue_select]") {
  QueueSummary s;
  s.add(env("a@s.test", {"1@x.test", "2@X.test", "3@y.test"}, 1 * kMinute), kNow);  // <5m, x and y
  s.add(env("a@s.test", {"1@x.test"}, 30 * kMinute), kNow);                         // <1h
  s.add(env("a@s.test", {"1@y.test"}, 2 * 60 * kMinute, queue::Area::Hold), kNow);  // <4h
  s.add(env("a@s.test", {"1@z.test"}, 5 * 60 * kMinute), kNow);                     // <1d
  auto old = env("a@s.test", {"1@x.test", "2@z.test"}, 3 * 24 * 60 * kMinute, queue::Area::Quarantine);
  old.rcpts[1].status = queue::RcptStatus::Delivered;
  s.add(old, kNow);  // older; z.test no longer pending
  CHECK(QueueSummary::bucket(5 * kMinute - 1) == 0);
  CHECK(QueueSummary::bucket(5 * kMinute) == 1);
  CHECK(QueueSummary::bucket(24 * 60 * kMinute) == 4);
  auto v = json::parse(s.json());
  REQUIRE(v);
  CHECK(v->get("messages")->number == 5);
  CHECK(v->get("recipients")->number == 7);
  CHECK(v->get("areas")->get("active")->number == 3);
  CHECK(v->get("areas")->get("hold")->number == 1);
  CHECK(v->get("areas")->get("quarantine")->number == 1);
  auto ages = [](const json::Value* a) {
    std::vector<int> out;
    for (const auto& x : a->array) out.push_back(static_cast<int>(x.number));
    return out;
  };
  CHECK(ages(v->get("ages")) == std::vector<int>{1, 1, 1, 1, 1});
  const auto& d = v->get("domains")->array;
  REQUIRE(d.size() == 3);
  CHECK(d[0].get("domain")->str == "x.test");  // most messages first
  CHECK(d[0].get("messages")->number == 3);
  CHECK(ages(d[0].get("ages")) == std::vector<int>{1, 1, 0, 0, 1});
  CHECK(d[1].get("domain")->str == "y.test");
  CHECK(ages(d[1].get("ages")) == std::vector<int>{1, 0, 1, 0, 0});
  CHECK(d[2].get("domain")->str == "z.test");
  CHECK(ages(d[2].get("ages")) == std::vector<int>{0, 0, 0, 1, 0});
}
