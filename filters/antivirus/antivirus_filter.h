// filters/antivirus/antivirus_filter.h — the antivirus filter (Data stage, thread pool).
//
// Config [antivirus]:
//   backend = "libclamav"      libclamav (in process, antivirus.h) | clamd (a running
//                              clamd over its socket, INSTREAM, clamd.h)
//   database_dir = "clamav"    libclamav databases (.cvd .cld .ndb .hdb ...), relative to
//                              the config file; reloaded when its files change (libclamav only)
//   clamd_socket = "/run/clamav/clamd.ctl"   clamd only: a unix socket path or HOST:PORT
//   action = "reject"          reject (554 5.7.1 naming the signature) | quarantine
//   limits_exceeded = action   what a message that could not be fully scanned gets (a
//                              limit below hit: nesting past max_recursion, an archive with
//                              more than max_files files, a file over max_file_size,
//                              more than max_scan_size in all): reject (554 5.7.1) |
//                              quarantine | tempfail (451 4.7.1) | pass (delivered; the
//                              filter line still says which limit). Default: as `action`.
//   max_scan_size = "400M"     bytes scanned per message (ClamAV's own default)
//   max_file_size = "100M"     largest file or part scanned (ClamAV's own default)
//   max_recursion = 16         archive / message nesting
//   max_files = 10000          files inside archives
//   scan_timeout = "2m"        per scan call (clamd: the whole exchange; connecting at most 5s of it)
//   reload_check = "5m"        how often the database directory is checked for changes
//   scan_parts = true          also scan each decoded MIME leaf (needs the MIME filter)
// A scan error or timeout, or no engine loaded yet, is 451 4.7.1 (never a silent pass).
// libclamav with no database files turns the filter off: makeAntivirusFilter returns
// nullptr and logs `antivirus_disabled` at warn level. A limit hit is never reported as
// clean: summary "limit <Name>" (MaxRecursion, MaxFiles, MaxFileSize, MaxScanSize), detail
// `limit`, and the verdict `limits_exceeded` says. clamd is always on: an unreachable
// clamd is logged at start-up and reload (clamd.h) and every scan is then 451 4.7.1.
// Untrusted input: the message. Logs through the pipeline's `filter` event (summary
// "clean", "FOUND <sig>", "error"; detail `backend`), plus the backends' events
// (antivirus.h, clamd.h).
#pragma once
#include <chrono>
#include <memory>

#include "filters/antivirus/antivirus.h"
#include "filters/antivirus/clamd.h"
#include "filters/filter.h"
#include "policy/config.h"

namespace moat::filters::antivirus {

struct FilterConfig {
  std::string backend = "libclamav";  // libclamav | clamd
  std::string databaseDir;
  ClamdAddress clamd;       // backend = clamd
  bool quarantine = false;  // action = "quarantine"
  enum class OnLimit { Reject, Quarantine, TempFail, Pass } onLimit = OnLimit::Reject;
  ScanLimits limits;
  std::chrono::milliseconds reloadCheck{std::chrono::minutes(5)};
  bool scanParts = true;
};

FilterConfig readConfig(const policy::Config& config, policy::Errors& errors);

// The verdict for a scan result (exposed for tests).
Result resultFor(const ScanResult& scan, const FilterConfig& config);

class AntivirusFilter final : public Filter {
 public:
  // Starts loading the engine on a background thread.
  explicit AntivirusFilter(FilterConfig config);
  std::string_view name() const override { return "antivirus"; }
  Stage stage() const override { return Stage::Data; }
  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override;
  mime::Depth mimeDepth() const override { return config_.scanParts ? mime::Depth::Bodies : mime::Depth::Structure; }

  // For SIGHUP and tests: check the database (or PING clamd) now, on a background thread.
  void reloadIfChanged() const { scanner_->reloadInBackground(); }
  Backend& scanner() const { return *scanner_; }
  const FilterConfig& config() const { return config_; }

 private:
  FilterConfig config_;
  std::shared_ptr<Backend> scanner_;
};

// libclamav: nullptr (and a warning log) when the database directory has no databases.
std::shared_ptr<const AntivirusFilter> makeAntivirusFilter(const policy::Config& config, policy::Errors& errors);

// `moat check`, once `filter`'s first load or PING ended (scanner().waitIdle(); null =
// makeAntivirusFilter turned the filter off): reports at the [antivirus] key concerned
// what the daemon would only log. A libclamav load failure is an error at database_dir
// (the daemon would answer 451 4.7.1 to every message); no database files (the filter is
// off) and a clamd that does not answer (it may simply not run yet) are warnings.
void checkReady(const policy::Config& config, const AntivirusFilter* filter, policy::Errors& errors);

}  // namespace moat::filters::antivirus
