// filters/antivirus/backend.cc — see backend.h.
#include "filters/antivirus/backend.h"

namespace moat::filters::antivirus {

namespace {
void scanLeaves(const ScanOne& scanOne, const mime::Part& part, uint64_t& budget, ScanResult& out) {
  for (const auto& c : part.children) {
    if (out.status != ScanResult::Status::Clean) return;
    scanLeaves(scanOne, c, budget, out);
  }
  if (!part.children.empty() || part.body.empty() || out.status != ScanResult::Status::Clean) return;
  if (part.isText() && part.filename.empty()) return;  // message text: seen in the whole-message scan
  if (part.body.size() > budget) return;
  budget -= part.body.size();
  ScanResult r = scanOne(part.body, part.filename.empty() ? nullptr : part.filename.c_str());
  out.scans += r.scans;
  if (r.status != ScanResult::Status::Clean) {
    r.scans = out.scans;
    out = r;
  }
}
}  // namespace

ScanResult scanMessage(const ScanOne& scanOne, std::string_view raw, const mime::Message* mime, uint64_t budget) {
  ScanResult r = scanOne(raw, nullptr);
  if (r.status != ScanResult::Status::Clean || !mime) return r;
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
