// tests/filters/dkim/memory_resolver.h — an in-memory mta::dns::Resolver for DKIM tests:
// TXT answers (or NXDOMAIN / TempFail) per name, answered on the loop thread through a
// zero-delay timer so callers see the same ordering as with the real resolver.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mta/dns/resolver.h"
#include "mta/runtime/uv.h"

namespace moat::test {

class MemoryResolver : public mta::dns::Resolver {
 public:
  explicit MemoryResolver(uv_loop_t* loop) : loop_(loop) {}

  void addTxt(const std::string& name, const std::string& txt) { zone_[lower(name)].txt.push_back(txt); }
  void setStatus(const std::string& name, mta::dns::Status s) { zone_[lower(name)].status = s; }

  void query(std::string_view name, mta::dns::RrType type, Callback cb) override {
    ++queries;
    mta::dns::Answer a;
    a.status = mta::dns::Status::NxDomain;
    std::string key = lower(std::string(name));
    if (!key.empty() && key.back() == '.') key.pop_back();
    auto it = zone_.find(key);
    if (it != zone_.end()) {
      a.status = it->second.status;
      if (a.status == mta::dns::Status::Ok && type == mta::dns::RrType::TXT) a.txt = it->second.txt;
      if (a.status == mta::dns::Status::Ok && a.txt.empty()) a.status = mta::dns::Status::NoData;
    }
    // Deliver on a later loop iteration through a timer owned by this resolver.
    auto timer = std::make_shared<mta::uv::Timer>(loop_);
    timers_.push_back(timer);
    timer->start(0, [cb, a] { cb(a); });
  }

  int queries = 0;

 private:
  struct Entry {
    mta::dns::Status status = mta::dns::Status::Ok;
    std::vector<std::string> txt;
  };
  static std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  }
  uv_loop_t* loop_;
  std::map<std::string, Entry> zone_;
  std::vector<std::shared_ptr<mta::uv::Timer>> timers_;
};

}  // namespace moat::test
