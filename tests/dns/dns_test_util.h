// tests/dns/dns_test_util.h — helpers shared by the DNS tests: ask one question on a real
// loop and wait (bounded) for the answer.
#pragma once
#include <catch2/catch.hpp>

#include <optional>
#include <string>

#include "mta/dns/cares_resolver.h"
#include "mta/runtime/uv.h"

namespace moat::test {

inline mta::dns::Answer ask(mta::uv::Loop& loop, mta::dns::Resolver& r, const std::string& name,
                            mta::dns::RrType type, uint64_t timeoutMs = 8000) {
  std::optional<mta::dns::Answer> got;
  r.query(name, type, [&](const mta::dns::Answer& a) { got = a; });
  REQUIRE(loop.runUntil([&] { return got.has_value(); }, timeoutMs));
  return *got;
}

// Runs the loop for `ms` (timers and sockets keep working meanwhile).
inline void runFor(mta::uv::Loop& loop, uint64_t ms) {
  bool done = false;
  mta::uv::Timer t(loop.get());
  t.start(ms, [&] { done = true; });
  loop.runUntil([&] { return done; }, ms + 1000);
}

inline mta::dns::CaresOptions optionsFor(const std::string& nameserver, unsigned timeoutMs = 1000,
                                         unsigned tries = 2) {
  mta::dns::CaresOptions o;
  o.nameservers = {nameserver};
  o.timeoutMs = timeoutMs;
  o.tries = tries;
  return o;
}

}  // namespace moat::test
