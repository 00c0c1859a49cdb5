// filters/antivirus/antivirus_filter.cc — see antivirus_filter.h.
#include "filters/antivirus/antivirus_filter.h"

#include <algorithm>
#include <map>
#include <mutex>

#include "mta/runtime/log.h"

namespace moat::filters::antivirus {

FilterConfig readConfig(const policy::Config& config, policy::Errors& errors) {
  FilterConfig fc;
  auto s = config.section("antivirus", errors);
  fc.backend = s.getEnum("backend", "libclamav", {"libclamav", "clamd"});
  fc.databaseDir = s.getPath("database_dir", "clamav");
  std::string socket = s.getString("clamd_socket", "/run/clamav/clamd.ctl");
  if (socket.find('/') != std::string::npos) socket = policy::resolvePath(s.baseDir(), socket);
  std::string error;
  if (auto address = parseClamdAddress(socket, error)) {
    fc.clamd = std::move(*address);
  } else {
    s.error("clamd_socket", error);
  }
  std::string action = s.getEnum("action", "reject", {"reject", "quarantine"});
  fc.quarantine = action == "quarantine";
  std::string onLimit = s.getEnum("limits_exceeded", action, {"reject", "quarantine", "tempfail", "pass"});
  if (onLimit == "quarantine") fc.onLimit = FilterConfig::OnLimit::Quarantine;
  if (onLimit == "tempfail") fc.onLimit = FilterConfig::OnLimit::TempFail;
  if (onLimit == "pass") fc.onLimit = FilterConfig::OnLimit::Pass;
  // ClamAV's own defaults: what a scan limit keeps from being scanned is refused (by
  // limits_exceeded), so lower ones would refuse ordinary mail, e.g. a zip of large logs.
  fc.limits.maxScanSize = s.getSize("max_scan_size", 400ull << 20);
  fc.limits.maxFileSize = s.getSize("max_file_size", 100ull << 20);
  fc.limits.maxRecursion = static_cast<uint32_t>(s.getInt("max_recursion", 16, 1, 64));
  fc.limits.maxFiles = static_cast<uint32_t>(s.getInt("max_files", 10000, 1, 1000000));
  fc.limits.maxScanTimeMs = static_cast<uint32_t>(s.getDuration("scan_timeout", std::chrono::minutes(2)).count());
  fc.reloadCheck = s.getDuration("reload_check", std::chrono::minutes(5));
  fc.scanParts = s.getBool("scan_parts", true);
  s.rejectUnknownKeys();
  return fc;
}

Result resultFor(const ScanResult& scan, const FilterConfig& config) {
  Result r;
  switch (scan.status) {
    case ScanResult::Status::Clean:
      r = Result::pass("clean");
      break;
    case ScanResult::Status::Found:
      if (config.quarantine) {
        r = Result::quarantine("virus " + scan.signature, "FOUND " + scan.signature);
      } else {
        r = Result::reject(554, "5.7.1", "Virus found: " + scan.signature, "FOUND " + scan.signature);
      }
      r.detail.add("signature", scan.signature);
      break;
    case ScanResult::Status::Limit: {
      std::string what = "limit " + scan.signature;
      switch (config.onLimit) {
        case FilterConfig::OnLimit::Reject:
          r = Result::reject(554, "5.7.1", "Message could not be fully scanned for viruses (" + scan.signature + ")",
                             what);
          break;
        case FilterConfig::OnLimit::Quarantine:
          r = Result::quarantine("not fully scanned for viruses: " + scan.signature, what);
          break;
        case FilterConfig::OnLimit::TempFail:
          r = Result::tempFail(451, "4.7.1", "Message could not be fully scanned for viruses, try again later", what);
          break;
        case FilterConfig::OnLimit::Pass: r = Result::pass(what); break;
      }
      r.detail.add("limit", scan.signature);
      break;
    }
    case ScanResult::Status::Error:
      r = Result::tempFail(451, "4.7.1", "Virus scan failed, try again later", "error");
      r.detail.add("error", scan.error);
      break;
  }
  r.detail.add("scans", scan.scans);
  r.detail.add("backend", config.backend);
  return r;
}

namespace {

// Scanners in use, by database folder and limits. A config reload (SIGHUP) with the same
// antivirus settings gets the running scanner back, engine loaded, instead of loading a
// new engine (seconds with the full ClamAV databases, with 451 replies until it is ready);
// the reload then only re-reads the databases if their files changed.
std::shared_ptr<Scanner> sharedScanner(const FilterConfig& c) {
  static std::mutex mu;
  static std::map<std::string, std::weak_ptr<Scanner>> live;
  const auto& l = c.limits;
  std::string key = c.databaseDir + "|" + std::to_string(l.maxScanSize) + "|" + std::to_string(l.maxFileSize) + "|" +
                    std::to_string(l.maxRecursion) + "|" + std::to_string(l.maxFiles) + "|" +
                    std::to_string(l.maxScanTimeMs);
  std::lock_guard<std::mutex> lock(mu);
  for (auto it = live.begin(); it != live.end();) it = it->second.expired() ? live.erase(it) : std::next(it);
  if (auto s = live[key].lock()) return s;
  auto s = std::make_shared<Scanner>(c.databaseDir, c.limits);
  live[key] = s;
  return s;
}

// clamd: nothing loaded to keep, so a new client per config; its PING logs whether clamd answers.
std::shared_ptr<Backend> makeBackend(const FilterConfig& c) {
  if (c.backend != "clamd") return sharedScanner(c);
  ClamdTimeouts t;
  t.exchange = std::chrono::milliseconds(c.limits.maxScanTimeMs);
  t.connect = std::min(t.connect, t.exchange);
  return std::make_shared<ClamdScanner>(c.clamd, t, c.limits.maxScanSize);
}

}  // namespace

AntivirusFilter::AntivirusFilter(FilterConfig config) : config_(std::move(config)), scanner_(makeBackend(config_)) {
  scanner_->reloadInBackground();  // the first load, a check for changed database files, or a clamd PING
}

void AntivirusFilter::run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const {
  auto result = std::make_shared<ScanResult>();
  auto scanner = scanner_;
  auto mime = config_.scanParts ? ctx->mime : nullptr;
  std::string_view raw = ctx->message;  // valid for the Data stage
  auto interval = config_.reloadCheck;
  env.offload(
      [result, scanner, mime, raw, interval] {
        scanner->maybeCheck(interval);
        *result = scanner->scan(raw, mime.get());
      },
      [ctx, result, done = std::move(done), config = config_] { done(resultFor(*result, config)); }, raw.size());
}

std::shared_ptr<const AntivirusFilter> makeAntivirusFilter(const policy::Config& config, policy::Errors& errors) {
  FilterConfig fc = readConfig(config, errors);
  if (fc.backend == "libclamav" && !hasDatabaseFiles(fc.databaseDir)) {
    mta::log::warn("antivirus_disabled")
        .add("database_dir", fc.databaseDir)
        .add("reason", "no signature databases: messages are NOT scanned for viruses");
    return nullptr;
  }
  return std::make_shared<AntivirusFilter>(std::move(fc));
}

void checkReady(const policy::Config& config, const AntivirusFilter* filter, policy::Errors& errors) {
  policy::Errors again;  // readConfig's own errors are in `errors` already
  auto s = config.section("antivirus", errors);
  if (!filter) {
    FilterConfig fc = readConfig(config, again);
    if (fc.backend == "libclamav" && !hasDatabaseFiles(fc.databaseDir))
      s.warning("database_dir",
                "no signature databases in " + fc.databaseDir + ": messages are NOT scanned for viruses");
    return;
  }
  std::string error = filter->scanner().lastError();
  if (error.empty()) return;
  if (filter->config().backend == "clamd")
    s.warning("clamd_socket",
              "clamd does not answer (" + error + "): every message is answered 451 4.7.1 until it does");
  else
    s.error("database_dir", error);
}

}  // namespace moat::filters::antivirus
