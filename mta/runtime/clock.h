// mta/runtime/clock.h — the wall clock, for what outlives a restart or is shown to people
// (state files, report periods, greylist triplets, certificate expiry). Intervals within one
// run use the loop's monotonic clock (uv_now) instead.
#pragma once
#include <chrono>
#include <cstdint>

namespace moat::mta {

// Unix time in milliseconds.
inline int64_t wallClockMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace moat::mta
