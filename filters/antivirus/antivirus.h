// filters/antivirus/antivirus.h — the libclamav backend (backend.h), in process: one compiled engine (Engine) per
// signature database load, held by a Scanner that swaps in a new engine when the
// database directory changes (load in the background, swap under a lock with shared_ptr,
// keep the old engine when the new load fails). Scans run on any thread: a compiled
// cl_engine is read-only and thread-safe to scan with.
//
// What is scanned (backend.h, scanMessage): the whole message as one memory map (libclamav
// decodes MIME, base64, archives and nested messages itself, CL_SCAN_PARSE_MAIL and
// friends); when that is clean and a MIME tree is given, each decoded non-text leaf as
// well, so a structure libclamav reads differently from Moat's parser still gets its parts
// scanned.
// Untrusted input: the message. Scan limits (size, files, recursion, time) bound the work;
// a scan error or timeout is an Error, never a clean result.
// Logs: `reload` (component antivirus, backend libclamav, signatures, database_dir) after a (re)load,
// `antivirus_load_failed` (error) when a load fails.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "filters/antivirus/backend.h"

struct cl_engine;

namespace moat::filters::antivirus {

class Engine {
 public:
  // Loads every database in `dir` (CL_DB_STDOPT) and compiles the engine; nullptr with
  // `error` set on failure (missing directory, corrupt database, no signatures).
  static std::shared_ptr<const Engine> load(const std::string& dir, const ScanLimits& limits, std::string& error);
  ScanResult scan(std::string_view data, const char* name) const;
  unsigned signatures() const { return signatures_; }

 private:
  struct Free {
    void operator()(cl_engine* e) const;
  };
  std::unique_ptr<cl_engine, Free> engine_;
  unsigned signatures_ = 0;
};

// True if `dir` holds at least one file with a ClamAV database extension.
bool hasDatabaseFiles(const std::string& dir);

class Scanner final : public Backend {
 public:
  Scanner(std::string databaseDir, ScanLimits limits);
  ~Scanner() override;  // waits for a background load to end
  Scanner(const Scanner&) = delete;
  Scanner& operator=(const Scanner&) = delete;

  enum class Reload { Unchanged, Reloaded, Failed };
  // Loads a new engine on the calling thread if the database files changed since the
  // engine in use was loaded (or none is loaded yet), and swaps it in. A failed load
  // keeps the engine in use. Only one load runs at a time (a concurrent call returns
  // Unchanged).
  Reload reloadIfChanged(std::string* error = nullptr);
  // The same on a background thread (start-up, SIGHUP, the periodic check); returns at once.
  void reloadInBackground() override;
  // Starts a background check if `interval` passed since the last one.
  void maybeCheck(std::chrono::milliseconds interval) override;
  // Waits until no background load runs (tests, shutdown).
  void waitIdle() override;

  std::string_view name() const override { return "libclamav"; }
  std::shared_ptr<const Engine> engine() const;
  std::string lastError() const override;
  ScanResult scan(std::string_view raw, const mime::Message* mime) const override;
  const std::string& databaseDir() const { return dir_; }

 private:
  std::string fingerprint() const;

  std::string dir_;
  ScanLimits limits_;
  mutable std::mutex mu_;  // guards engine_, loadedFingerprint_, lastError_
  std::shared_ptr<const Engine> engine_;
  std::string loadedFingerprint_;
  bool attempted_ = false;  // a load was tried (loadedFingerprint_ is meaningful)
  std::string lastError_;   // of the last load tried; "" = it succeeded
  std::mutex loadMu_;  // one load at a time
  std::atomic<int64_t> lastCheckMs_{0};
  BackgroundTask loader_;  // last: joined before the members its job uses go
};

}  // namespace moat::filters::antivirus
