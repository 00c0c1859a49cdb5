// mta/daemon/state_file.h — one small file under SPOOL_DIR that keeps an in-memory table
// across restarts (greylist.state, rate_limit.state, tlsrpt.state, dmarc_report.state),
// written the same way for each of them.
//
// The owner supplies two functions: `snapshot`, on the loop, copies the contents (bounded by
// the owner's own caps) and returns the encoder, which runs on the thread pool and gives the
// file's text; and `failed`, on the loop, told the error of a write that failed, so that each
// owner logs its own event. The file is written crash-atomically (mta::writeFileDurably:
// a new file, fsynced, renamed over the old) on the pool, never on the loop; one write at a
// time: a write asked for while one is under way begins when it is done, with the contents
// as they are then (any number of asks meanwhile give exactly one more write). A periodic
// checkpoint (a uv timer, unref'd) writes when the contents changed since the last
// snapshot; flush() is the graceful stop's last write. A failed write leaves the contents
// dirty: the next checkpoint tries again. A crash loses at most the changes since the last
// write that succeeded.
//
// Untrusted input: none (the owner reads the file back, through read(), bounded, and checks
// it). Logs: nothing itself; the owner's `failed` logs (greylist_error, rate_limit_error,
// tlsrpt_error, dmarc_report_error).
#pragma once
#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mta/runtime/uv.h"

namespace moat::mta::daemon {

class StateFile {
 public:
  // On the loop: the contents copied, as the function that encodes them on the pool.
  using Snapshot = std::function<std::function<std::string()>()>;
  // On the loop: a write failed with this error (the contents stay dirty).
  using Failed = std::function<void(const std::string& error)>;

  StateFile(uv_loop_t* loop, std::string path, Snapshot snapshot, Failed failed);
  StateFile(const StateFile&) = delete;
  StateFile& operator=(const StateFile&) = delete;
  ~StateFile();

  const std::string& path() const { return path_; }

  // The file as saved, at most `maxBytes` + 1 bytes of it (so that a bigger one is told
  // apart); blocking: start-up only. False when there is none.
  bool read(size_t maxBytes, std::string& text) const;
  // Why `text`, which read() gave, is not the owner's: too big, or anything else.
  static const char* unreadable(const std::string& text, size_t maxBytes);

  // The owner's own "changed" flag, when it keeps one (the greylist table and the rate
  // counters do, cleared by their snapshot): the contents are dirty when it says so too.
  void setChanged(std::function<bool()> changed) { changed_ = std::move(changed); }
  void markDirty() { dirty_ = true; }
  // What changed is not to be written (the table was dropped).
  void markClean() { dirty_ = false; }
  bool dirty() const { return dirty_ || (changed_ && changed_()); }
  bool writing() const { return writing_; }

  // The periodic checkpoint, every `everyMs` when dirty. Again with the same period while it
  // runs: nothing changes; with another: started anew.
  void start(uint64_t everyMs);
  // The periodic checkpoint stops (a write under way goes on).
  void stop();
  bool started() const { return timer_.active(); }

  // A write of the contents as they are when it begins, dirty or not (after the one under
  // way, if any); `then` runs once that write is done (or failed).
  void write(std::function<void()> then = nullptr);
  // The graceful stop's last write: the checkpoint stops; the write under way, if any, is
  // waited for; then, if the contents are dirty, they are written. `done` runs once the latest
  // contents are on disk, or the write failed (at once when there is nothing to write).
  void flush(std::function<void()> done);

 private:
  void begin();
  void written(const std::string& error, std::vector<std::function<void()>> thens);

  uv_loop_t* loop_;
  std::string path_;
  Snapshot snapshot_;
  Failed failed_;
  std::function<bool()> changed_;
  uv::Timer timer_;
  uint64_t everyMs_ = 0;
  bool dirty_ = false;
  bool writing_ = false;
  bool again_ = false;                          // another write after the one under way
  std::vector<std::function<void()>> next_;     // run after the next write begun
  std::vector<std::function<void()>> flushes_;  // flush() during a write: decided when it ends
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace moat::mta::daemon
