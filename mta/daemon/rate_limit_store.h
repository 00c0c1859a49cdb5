// mta/daemon/rate_limit_store.h — [rate_limits]' counts kept across restarts, in
// SPOOL_DIR/rate_limit.state (else a restart, an upgrade, a crash, would let a client or a
// sender that reached its limit send a whole window more at once).
//
// The counters keep the loop's monotonic times; the file keeps wall-clock times (ms since
// the epoch), converted as it is written and read (RateCounter::records(), restore()), so a
// count keeps its age across the restart: what expired while Moat was down is dropped as it
// is read, and a wall clock that went back since cannot make a count last longer than one
// window from the start. The file is read once at start-up, on the loop before any session,
// also while every limit is off (a reload may turn one on), under the window of the
// starting config (at most RateCounter::kMaxStateBytes, kDefaultMaxKeys keys per limit; a
// file Moat did not write, or cut short, is logged and ignored: the counts start empty). It is
// written crash-atomically (mta::writeFileDurably: a new file, fsynced, renamed over the
// old) on the thread pool by a StateFile (state_file.h): every kSaveEveryMs when something
// was counted, and at a graceful stop. A crash loses at most what was counted since the last
// write.
//
// Untrusted input: the file (a damaged disk, another program). Logs: rate_limit_error
// (warn) when the file cannot be read as Moat's or cannot be written.
#pragma once
#include <uv.h>

#include <functional>
#include <string>
#include <vector>

#include "mta/daemon/state_file.h"
#include "mta/server/rate_counter.h"

namespace moat::mta::daemon {

class RateLimitStore {
 public:
  static constexpr uint64_t kSaveEveryMs = 5 * 60 * 1000;

  // `counters` in the file's order (each line names its counter by its index there).
  RateLimitStore(uv_loop_t* loop, std::vector<server::RateCounter*> counters, std::string path);
  RateLimitStore(const RateLimitStore&) = delete;
  RateLimitStore& operator=(const RateLimitStore&) = delete;

  // The saved counts into the counters, under `windowMs` (blocking: start-up only).
  void load(int64_t windowMs);
  // The periodic save.
  void start();
  // The last save, if something was counted since the one before; `done` once it is on disk
  // (or failed). The periodic saves stop.
  void stop(std::function<void()> done);

 private:
  uv_loop_t* loop_;
  std::vector<server::RateCounter*> counters_;
  StateFile file_;  // its "changed" is the counters' own dirty flags, cleared by records()
};

}  // namespace moat::mta::daemon
