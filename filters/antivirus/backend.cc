// filters/antivirus/backend.cc — see backend.h.
#include "filters/antivirus/backend.h"

namespace moat::filters::antivirus {

namespace {
constexpr std::string_view kLimitPrefix = "Heuristics.Limits.Exceeded.";

// Found and Error end the walk; Clean and Limit go on.
bool settled(const ScanResult& r) {
  return r.status == ScanResult::Status::Found || r.status == ScanResult::Status::Error;
}

// Keeps the first Limit unless `r` is Found or Error.
void merge(ScanResult& out, ScanResult r) {
  r.scans += out.scans;
  if (settled(r) || (r.status == ScanResult::Status::Limit && out.status == ScanResult::Status::Clean)) {
    out = std::move(r);
  } else {
    out.scans = r.scans;
  }
}

void scanLeaves(const ScanOne& scanOne, const mime::Part& part, uint64_t& budget, ScanResult& out) {
  for (const auto& c : part.children) {
    if (settled(out)) return;
    scanLeaves(scanOne, c, budget, out);
  }
  if (!part.children.empty() || part.body.empty() || settled(out)) return;
  if (part.isText() && part.filename.empty()) return;  // message text: seen in the whole-message scan
  if (part.body.size() > budget) return;
  budget -= part.body.size();
  merge(out, scanOne(part.body, part.filename.empty() ? nullptr : part.filename.c_str()));
}
}  // namespace

ScanResult foundResult(std::string signature) {
  ScanResult r;
  r.status = ScanResult::Status::Found;
  if (signature.rfind(kLimitPrefix, 0) == 0) {
    std::string limit = signature.substr(kLimitPrefix.size());
    r.status = limit == "MaxScanTime" ? ScanResult::Status::Error : ScanResult::Status::Limit;
    if (r.status == ScanResult::Status::Error) r.error = "scan time limit exceeded (" + signature + ")";
    signature = limit.empty() ? "unknown" : limit;
  }
  r.signature = std::move(signature);
  return r;
}

ScanResult scanMessage(const ScanOne& scanOne, std::string_view raw, const mime::Message* mime, uint64_t budget,
                       uint64_t maxFileSize) {
  ScanResult r = scanOne(raw, nullptr);
  if (settled(r) || !mime) return r;
  // Too big to be scanned whole: the parts are, one by one, and their limits count.
  if (r.status == ScanResult::Status::Limit && raw.size() > maxFileSize) {
    r.status = ScanResult::Status::Clean;
    r.signature.clear();
  }
  scanLeaves(scanOne, mime->root, budget, r);
  return r;
}

bool BackgroundTask::start(std::function<void()> job) {
  std::lock_guard<std::mutex> lock(mu_);
  if (running_.exchange(true)) return false;
  if (thread_.joinable()) thread_.join();  // the previous job has finished (running_ was false)
  thread_ = std::thread([this, job = std::move(job)] {
    job();
    running_ = false;
  });
  return true;
}

void BackgroundTask::wait() {
  std::thread t;
  {
    std::lock_guard<std::mutex> lock(mu_);
    t = std::move(thread_);
  }
  if (t.joinable()) t.join();
}

}  // namespace moat::filters::antivirus
