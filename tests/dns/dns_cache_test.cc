// Tests for mta/dns/dns_cache and the name checks of dns_answer: expiry by TTL, LRU
// bound, what is never cached, canonical names.
#include <catch2/catch.hpp>

#include "mta/dns/dns_answer.h"
#include "mta/dns/dns_cache.h"

using namespace moat::mta::dns;

namespace {
Answer ok(uint32_t ttl, std::string txt = "x") {
  Answer a;
  a.status = Status::Ok;
  a.ttl = ttl;
  a.txt = {std::move(txt)};
  return a;
}
}  // namespace

TEST_CASE("cache entries expire after their TTL and report the time left") {
  AnswerCache c(10);
  c.put("a/16", ok(10), 1000);
  auto hit = c.get("a/16", 5500);
  REQUIRE(hit);
  REQUIRE(hit->ttl == 6);
  REQUIRE(hit->txt == std::vector<std::string>{"x"});
  REQUIRE_FALSE(c.get("a/16", 11000));
  REQUIRE(c.size() == 0);
}

TEST_CASE("cache is bounded and evicts the least recently used entry") {
  AnswerCache c(2);
  c.put("a/1", ok(60), 0);
  c.put("b/1", ok(60), 0);
  REQUIRE(c.get("a/1", 1));  // a is now more recent than b
  c.put("c/1", ok(60), 2);
  REQUIRE(c.size() == 2);
  REQUIRE(c.get("a/1", 3));
  REQUIRE_FALSE(c.get("b/1", 3));
  REQUIRE(c.get("c/1", 3));
}

TEST_CASE("cache is bounded in bytes: big answers for many names cannot fill memory") {
  // A peer's zone can answer any name with a 60 KB TXT record (over TCP); the entry bound
  // alone (10,000) would let that hold 600 MB.
  const size_t budget = size_t{4} << 20;
  AnswerCache c(10000, budget);
  const std::string big(60000, 'x');
  for (int i = 0; i < 1000; ++i) {
    c.put("big-" + std::to_string(i) + "/16", ok(3600, big), 0);
    REQUIRE(c.bytes() <= budget);
  }
  REQUIRE(c.bytes() >= 60000 * c.size());
  REQUIRE(c.size() < 70);
  REQUIRE(c.get("big-999/16", 1));  // the newest stay, the oldest went
  REQUIRE_FALSE(c.get("big-0/16", 1));
  // An answer bigger than a sixteenth of the budget is not kept at all (it would evict it all).
  AnswerCache small(100, 16 * 1024);
  small.put("a/16", ok(60, "short"), 0);
  small.put("huge/16", ok(60, std::string(2000, 'y')), 0);
  REQUIRE(small.size() == 1);
  REQUIRE(small.get("a/16", 1));
  // Replacing an entry does not count it twice; clear() returns every byte.
  const size_t before = c.bytes();
  c.put("big-999/16", ok(3600, big), 2);
  REQUIRE(c.bytes() == before);
  c.clear();
  REQUIRE(c.bytes() == 0);
}

TEST_CASE("temporary failures, malformed names and TTL 0 are never cached") {
  AnswerCache c(10);
  Answer tf;
  tf.status = Status::TempFail;
  tf.ttl = 300;
  c.put("t/1", tf, 0);
  Answer bad;
  bad.status = Status::Malformed;
  bad.ttl = 300;
  c.put("m/1", bad, 0);
  c.put("z/1", ok(0), 0);
  Answer nx;
  nx.status = Status::NxDomain;
  nx.ttl = 30;
  c.put("n/1", nx, 0);
  REQUIRE(c.size() == 1);
  REQUIRE(c.get("n/1", 10)->status == Status::NxDomain);
}

TEST_CASE("canonical names: lower-case, no trailing dot, RFC 1035 length limits") {
  REQUIRE(canonicalName("Mail.Example.TEST.") == "mail.example.test");
  REQUIRE_FALSE(canonicalName(""));
  REQUIRE_FALSE(canonicalName("."));
  REQUIRE_FALSE(canonicalName("a..b"));
  REQUIRE_FALSE(canonicalName(".a"));
  REQUIRE(canonicalName(std::string(63, 'a') + ".test"));
  REQUIRE_FALSE(canonicalName(std::string(64, 'a') + ".test"));
  std::string long254;
  while (long254.size() < 254) long254 += "abcdefghi.";
  long254.resize(254);
  REQUIRE_FALSE(canonicalName(long254));
  REQUIRE_FALSE(canonicalName(std::string("a\0b", 3)));
  REQUIRE(statusName(Status::NxDomain) == "nxdomain");
}
