// filters/antivirus/antivirus.cc — see antivirus.h.
#include "filters/antivirus/antivirus.h"

#include <clamav.h>
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <vector>

#include "mta/runtime/log.h"

namespace moat::filters::antivirus {

namespace mlog = moat::mta::log;

namespace {

bool isDatabaseName(const std::string& n) {
  static const char* kExt[] = {".cvd", ".cld", ".cud", ".ndb", ".ndu", ".hdb", ".hsb", ".hdu", ".hsu", ".mdb",
                               ".mdu", ".msb", ".msu", ".ldb", ".ldu", ".idb", ".cdb", ".ndb", ".fp",  ".sfp",
                               ".db",  ".ign", ".ign2", ".crb", ".pdb", ".gdb", ".wdb", ".ftm", ".cbc", ".yar",
                               ".yara", ".pwdb", ".cat", ".info", ".cfg"};
  if (n.empty() || n[0] == '.') return false;
  for (const char* e : kExt) {
    size_t len = std::char_traits<char>::length(e);
    if (n.size() > len && n.compare(n.size() - len, len, e) == 0) return true;
  }
  return false;
}

// libclamav's own error messages go to the debug log instead of stderr. (Only errors: a
// field "level" for libclamav's severity would be the line's own `level` a second time.)
void clamavMessage(enum cl_msg severity, const char* fullmsg, const char* msg, void* context) {
  (void)fullmsg;
  (void)context;
  std::string text = msg ? msg : "";
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  if (severity == CL_MSG_ERROR) mlog::debug("clamav_message").add("message", text);
}

cl_error_t initOnce() {
  static std::once_flag once;
  static cl_error_t rc = CL_SUCCESS;
  std::call_once(once, [] {
    cl_set_clcb_msg(clamavMessage);
    rc = cl_init(CL_INIT_DEFAULT);
  });
  return rc;
}

int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The name libclamav reports, via the per-scan context: for a limit hit on the scanned
// buffer itself (a part over max_file_size) cl_scanmap_callback's virname can be null.
void virusFound(int fd, const char* virname, void* context) {
  (void)fd;
  auto* name = static_cast<std::string*>(context);
  if (name && virname && name->empty()) *name = virname;
}

struct FmapClose {
  void operator()(cl_fmap_t* m) const { cl_fmap_close(m); }
};

}  // namespace

void Engine::Free::operator()(cl_engine* e) const { cl_engine_free(e); }

bool hasDatabaseFiles(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (!d) return false;
  bool found = false;
  while (dirent* e = readdir(d)) {
    if (isDatabaseName(e->d_name)) {
      found = true;
      break;
    }
  }
  closedir(d);
  return found;
}

std::shared_ptr<const Engine> Engine::load(const std::string& dir, const ScanLimits& limits, std::string& error) {
  cl_error_t rc = initOnce();
  if (rc != CL_SUCCESS) {
    error = std::string("cl_init: ") + cl_strerror(rc);
    return nullptr;
  }
  auto engine = std::shared_ptr<Engine>(new Engine());
  engine->engine_.reset(cl_engine_new());
  cl_engine* e = engine->engine_.get();
  if (!e) {
    error = "cl_engine_new failed";
    return nullptr;
  }
  cl_engine_set_num(e, CL_ENGINE_MAX_SCANSIZE, static_cast<long long>(limits.maxScanSize));
  cl_engine_set_num(e, CL_ENGINE_MAX_FILESIZE, static_cast<long long>(limits.maxFileSize));
  cl_engine_set_num(e, CL_ENGINE_MAX_RECURSION, limits.maxRecursion);
  cl_engine_set_num(e, CL_ENGINE_MAX_FILES, limits.maxFiles);
  cl_engine_set_num(e, CL_ENGINE_MAX_SCANTIME, limits.maxScanTimeMs);
  cl_engine_set_clcb_virus_found(e, virusFound);
  unsigned sigs = 0;
  rc = cl_load(dir.c_str(), e, &sigs, CL_DB_STDOPT);
  if (rc != CL_SUCCESS) {
    error = std::string("cl_load ") + dir + ": " + cl_strerror(rc);
    return nullptr;
  }
  if (sigs == 0) {
    error = "no signatures in " + dir;
    return nullptr;
  }
  rc = cl_engine_compile(e);
  if (rc != CL_SUCCESS) {
    error = std::string("cl_engine_compile: ") + cl_strerror(rc);
    return nullptr;
  }
  engine->signatures_ = sigs;
  return engine;
}

ScanResult Engine::scan(std::string_view data, const char* name) const {
  ScanResult r;
  r.scans = 1;
  if (data.empty()) return r;
  std::unique_ptr<cl_fmap_t, FmapClose> map(cl_fmap_open_memory(data.data(), data.size()));
  if (!map) {
    r.status = ScanResult::Status::Error;
    r.error = "cl_fmap_open_memory failed";
    return r;
  }
  cl_scan_options options{};
  options.general = CL_SCAN_GENERAL_HEURISTICS;
  options.parse = ~0u;  // every parser: mail, archives, documents, executables
  // A limit hit (nesting, file count, sizes) is reported as Heuristics.Limits.Exceeded.X
  // instead of the default: skipping the rest and calling the message clean. A real
  // signature found elsewhere in the same scan still takes precedence over it.
  options.heuristic = CL_SCAN_HEURISTIC_EXCEEDS_MAX;
  const char* virname = nullptr;
  unsigned long scanned = 0;
  std::string found;
  cl_error_t rc = cl_scanmap_callback(map.get(), name, &virname, &scanned, engine_.get(), &options, &found);
  if (rc == CL_VIRUS) {
    if (virname && *virname) found = virname;
    unsigned scans = r.scans;
    r = foundResult(found.empty() ? "unknown" : found);
    r.scans = scans;
  } else if (rc != CL_CLEAN) {
    r.status = ScanResult::Status::Error;
    r.error = cl_strerror(rc);
  }
  return r;
}

Scanner::Scanner(std::string databaseDir, ScanLimits limits) : dir_(std::move(databaseDir)), limits_(limits) {}

Scanner::~Scanner() { waitIdle(); }

std::string Scanner::fingerprint() const {
  std::vector<std::string> entries;
  if (DIR* d = opendir(dir_.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (!isDatabaseName(n)) continue;
      struct stat st {};
      if (stat((dir_ + "/" + n).c_str(), &st) != 0) continue;
      entries.push_back(n + ":" + std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) +
                        ":" + std::to_string(st.st_size));
    }
    closedir(d);
  }
  std::sort(entries.begin(), entries.end());
  std::string fp;
  for (const auto& e : entries) fp += e + "\n";
  return fp;
}

Scanner::Reload Scanner::reloadIfChanged(std::string* error) {
  std::unique_lock<std::mutex> one(loadMu_, std::try_to_lock);
  if (!one.owns_lock()) return Reload::Unchanged;
  std::string fp = fingerprint();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (attempted_ && fp == loadedFingerprint_) return Reload::Unchanged;
  }
  std::string err;
  auto fresh = Engine::load(dir_, limits_, err);
  std::lock_guard<std::mutex> lock(mu_);
  // Remember what was tried, so a broken database is not reloaded again until it changes.
  loadedFingerprint_ = fp;
  attempted_ = true;
  lastError_ = fresh ? "" : err;
  if (!fresh) {
    mlog::error("antivirus_load_failed").add("database_dir", dir_).add("error", err).add("kept_old", engine_ != nullptr);
    if (error) *error = err;
    return Reload::Failed;
  }
  engine_ = std::move(fresh);
  mlog::info("reload")
      .add("component", "antivirus")
      .add("backend", name())
      .add("database_dir", dir_)
      .add("signatures", engine_->signatures());
  return Reload::Reloaded;
}

void Scanner::reloadInBackground() {
  loader_.start([this] { reloadIfChanged(); });
}

void Scanner::maybeCheck(std::chrono::milliseconds interval) {
  int64_t now = nowMs(), last = lastCheckMs_.load();
  if (now - last < interval.count()) return;
  if (!lastCheckMs_.compare_exchange_strong(last, now)) return;  // another thread checks
  reloadInBackground();
}

void Scanner::waitIdle() { loader_.wait(); }

std::string Scanner::lastError() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lastError_;
}

std::shared_ptr<const Engine> Scanner::engine() const {
  std::lock_guard<std::mutex> lock(mu_);
  return engine_;
}

ScanResult Scanner::scan(std::string_view raw, const mime::Message* mime) const {
  auto engine = this->engine();
  if (!engine) {
    ScanResult r;
    r.status = ScanResult::Status::Error;
    r.error = "no antivirus engine loaded";
    return r;
  }
  return scanMessage([&engine](std::string_view data, const char* name) { return engine->scan(data, name); }, raw, mime,
                     limits_.maxScanSize, limits_.maxFileSize);
}

}  // namespace moat::filters::antivirus
