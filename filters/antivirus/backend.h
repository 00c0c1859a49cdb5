// filters/antivirus/backend.h — what the antivirus filter scans with, whatever does the
// scanning: libclamav in process (antivirus.h, Scanner) or a clamd over its socket
// (clamd.h, ClamdScanner). Both share the message walk here, so they scan the same things
// and count the same way: the whole message first (the scanner decodes MIME, base64,
// archives and nested messages itself), and when that is clean and a MIME tree is given,
// each decoded non-text leaf as well, within the per-message byte budget. What the scanner
// could not fully look at (libclamav's "Heuristics.Limits.Exceeded.*": nesting past
// max_recursion, more than max_files, over max_file_size/max_scan_size) is a Limit result,
// not a clean one: the filter's `limits_exceeded` decides what it means.
// Untrusted input: the message and its decoded parts (bounded by the budget). A scan
// error is an Error result, never a clean one. Logs nothing itself.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "filters/mime/mime.h"

namespace moat::filters::antivirus {

struct ScanLimits {
  uint64_t maxScanSize = 400ull << 20;  // bytes scanned per message (all parts together)
  uint64_t maxFileSize = 100ull << 20;  // largest single file/part scanned
  uint32_t maxRecursion = 16;           // archive/message nesting
  uint32_t maxFiles = 10000;            // files inside archives
  uint32_t maxScanTimeMs = 120000;      // per scan call
};

struct ScanResult {
  // Limit: nothing found, but part of the message was not scanned (a scan limit was hit).
  enum class Status { Clean, Found, Limit, Error } status = Status::Clean;
  std::string signature;  // Found: the signature name; Limit: the limit's name (MaxRecursion...)
  std::string error;      // Error: the scanner's message
  unsigned scans = 0;     // scan calls made (whole message + parts)
};

// A "FOUND" signature name as a result: libclamav's and clamd's "Heuristics.Limits.Exceeded.X"
// is a Limit named X (MaxScanTime, the scan running out of time, is an Error as a timeout
// is), anything else Found.
ScanResult foundResult(std::string signature);

// One scan of one buffer: the whole message, or a decoded part with its file name (or null).
using ScanOne = std::function<ScanResult(std::string_view data, const char* name)>;

// The whole message, then each decoded non-text leaf of `mime` (if given) while nothing is
// found and `budget` bytes last. The first Found or Error wins; a Limit does not stop the
// walk (a virus in another part still counts) and is the result if nothing else is. A
// message over `maxFileSize` is not scanned whole (the scanner skips it: its Limit is
// dropped) when its parts are.
ScanResult scanMessage(const ScanOne& scanOne, std::string_view raw, const mime::Message* mime, uint64_t budget,
                       uint64_t maxFileSize = UINT64_MAX);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;  // "libclamav" | "clamd", for logs
  // Any thread (the thread pool); may block for up to the scan timeout.
  virtual ScanResult scan(std::string_view raw, const mime::Message* mime) const = 0;
  // Start-up, SIGHUP: (re)load the database or check the daemon, on a background thread.
  virtual void reloadInBackground() = 0;
  // Called before each scan: starts a background check if `interval` passed since the last.
  virtual void maybeCheck(std::chrono::milliseconds interval) = 0;
  // Waits until no background work runs (tests, `moat scan`, shutdown).
  virtual void waitIdle() = 0;
  // Why the last database load (or clamd PING) failed; "" when it succeeded or none ended
  // yet (`moat check`, after waitIdle).
  virtual std::string lastError() const = 0;
};

// One background job at a time on a thread of its own (database loads, clamd PINGs).
class BackgroundTask {
 public:
  BackgroundTask() = default;
  ~BackgroundTask() { wait(); }
  BackgroundTask(const BackgroundTask&) = delete;
  BackgroundTask& operator=(const BackgroundTask&) = delete;
  // Starts `job` unless one still runs (then does nothing and returns false).
  bool start(std::function<void()> job);
  void wait();

 private:
  std::mutex mu_;  // guards thread_
  std::thread thread_;
  std::atomic<bool> running_{false};
};

}  // namespace moat::filters::antivirus
