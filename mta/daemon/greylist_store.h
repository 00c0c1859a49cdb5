// mta/daemon/greylist_store.h — [greylist]'s table kept across restarts, in
// SPOOL_DIR/greylist.state (else every restart would greylist every sender again, and
// delay their mail once more).
//
// The file is read once at start-up, on the loop before any session, also while
// greylisting is off (a reload may turn it on: the senders the last run knew stay known;
// entries whose time ran out meanwhile are dropped as they are read) (at most
// Greylist::kMaxStateBytes; a file Moat did not write, or cut short, is logged and ignored:
// the table starts empty). It is written crash-atomically (mta::writeFileDurably: a new
// file, fsynced, renamed over the old) on the thread pool by a StateFile (state_file.h): every
// kSaveEveryMs when the table changed, and at a graceful stop. A crash loses at most the
// changes since the last write.
//
// Untrusted input: the file (a damaged disk, another program). Logs: greylist_error (warn)
// when the file cannot be read as Moat's or cannot be written.
#pragma once
#include <uv.h>

#include <functional>
#include <string>

#include "mta/daemon/state_file.h"
#include "mta/server/greylist.h"

namespace moat::mta::daemon {

class GreylistStore {
 public:
  static constexpr uint64_t kSaveEveryMs = 5 * 60 * 1000;

  GreylistStore(uv_loop_t* loop, server::Greylist& table, std::string path);
  GreylistStore(const GreylistStore&) = delete;
  GreylistStore& operator=(const GreylistStore&) = delete;

  // The saved table into `table` (blocking: start-up only).
  void load();
  // The periodic save.
  void start();
  // The last save, if the table changed since the one before; `done` once it is on disk
  // (or failed). The periodic saves stop.
  void stop(std::function<void()> done);

 private:
  server::Greylist& table_;
  StateFile file_;  // its "changed" is the table's own dirty flag, cleared by records()
};

}  // namespace moat::mta::daemon
