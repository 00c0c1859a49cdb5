// Tests for the filters' share of the libuv thread pool (filters/filter.h, offloadFilterWork):
// however much filter work is queued, threads stay for other pool work (the spool's commits
// and deliveries), and light jobs are not queued behind heavy ones. Real loop, real pool.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <thread>

#include "filters/filter.h"
#include "mta/runtime/uv.h"

using namespace moat::filters;

namespace {

// Pool jobs that hold their thread until released (or 20 s pass, so nothing hangs).
struct Blockers {
  std::atomic<bool> release{false};
  std::atomic<int> running{0}, maxRunning{0}, finished{0};

  std::function<void()> job() {
    return [this] {
      int now = ++running;
      for (int seen = maxRunning.load(); now > seen && !maxRunning.compare_exchange_weak(seen, now);) {
      }
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      while (!release && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      --running;
      ++finished;
    };
  }
  ~Blockers() { release = true; }
};

}  // namespace

TEST_CASE("filter work leaves pool threads to other work, and light jobs pass heavy ones") {
  const unsigned pool = moat::mta::uv::threadPoolSize();
  const unsigned slots = filterWorkSlots();
  REQUIRE(slots == (pool > 3 ? pool - 2 : 1));
  REQUIRE(pool >= 4);  // the test needs a light slot and two spare threads (libuv's default is 4)

  moat::mta::uv::Loop loop;
  Blockers heavy;
  int heavyDone = 0;
  Env env;
  env.loop = loop.get();
  // Twice the pool of heavy jobs (big messages): only slots - 1 of them may run.
  for (unsigned i = 0; i < 2 * pool; ++i)
    env.offload(
        heavy.job(), [&] { ++heavyDone; }, 10 << 20);
  REQUIRE(loop.runUntil([&] { return heavy.running == static_cast<int>(slots - 1); }, 10000));
  auto state = filterWorkState();
  CHECK(state.running == slots - 1);
  CHECK(state.heavyRunning == slots - 1);
  CHECK(state.waiting == 2 * pool - (slots - 1));

  // A light job (a small message) runs at once, in the slot kept for it.
  bool lightDone = false;
  env.offload([] {}, [&] { lightDone = true; }, 2000);
  REQUIRE(loop.runUntil([&] { return lightDone; }, 10000));

  // Work outside the filters (as the spool's commits are) still gets threads while the
  // filters' share is full: several at once, not one after another behind the filters.
  Blockers other;
  for (int i = 0; i < 2; ++i) moat::mta::uv::queueWork(loop.get(), other.job(), nullptr);
  REQUIRE(loop.runUntil([&] { return other.running == 2; }, 10000));
  other.release = true;
  REQUIRE(loop.runUntil([&] { return other.finished == 2; }, 10000));

  // Released, every queued job runs, never more than the heavy share at once.
  heavy.release = true;
  REQUIRE(loop.runUntil([&] { return heavyDone == static_cast<int>(2 * pool); }, 20000));
  CHECK(heavy.maxRunning == static_cast<int>(slots - 1));
  state = filterWorkState();
  CHECK(state.running == 0);
  CHECK(state.waiting == 0);
}
