// tests/filters/dmarc/memory_resolver.h — an in-memory mta::dns::Resolver over a zone the
// test writes (COMMON.md allows this for DNS-using logic). Names are case-insensitive and
// without trailing dot; a name not in the zone is NXDOMAIN; a name present without records
// of the asked type is NODATA; names marked tempfail answer TempFail. Answers are given
// synchronously, or (deferred = true) queued until runPending(), to exercise callers that
// must not depend on the order. Used by the DMARC unit and conformance tests.
#pragma once
#include <cctype>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "mta/dns/resolver.h"

namespace moat::test {

class MemoryResolver : public mta::dns::Resolver {
 public:
  struct Node {
    std::vector<std::string> txt;
    std::vector<mta::IpAddress> a, aaaa;
    std::vector<mta::dns::MxRecord> mx;
    bool tempfail = false;
  };

  static std::string key(std::string_view name) {
    std::string k(name);
    while (!k.empty() && k.back() == '.') k.pop_back();
    for (auto& c : k) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return k;
  }

  Node& node(std::string_view name) { return zone_[key(name)]; }
  void addTxt(std::string_view name, std::string txt) { node(name).txt.push_back(std::move(txt)); }
  void addA(std::string_view name, const std::string& ip) { node(name).a.push_back(*mta::IpAddress::parse(ip)); }
  void exists(std::string_view name) { node(name); }  // present, no records: NODATA
  void tempfail(std::string_view name) { node(name).tempfail = true; }

  void query(std::string_view name, mta::dns::RrType type, Callback cb) override {
    queries.push_back(key(name));
    auto answer = lookup(key(name), type);
    if (deferred) pending_.push_back([cb, answer] { cb(answer); });
    else cb(answer);
  }

  // Runs queued answers (and those they queue), at most `limit` of them.
  size_t runPending(size_t limit = 1000) {
    size_t n = 0;
    while (!pending_.empty() && n < limit) {
      auto f = std::move(pending_.front());
      pending_.erase(pending_.begin());
      f();
      ++n;
    }
    return n;
  }

  bool deferred = false;
  std::vector<std::string> queries;

 private:
  mta::dns::Answer lookup(const std::string& k, mta::dns::RrType type) const {
    mta::dns::Answer a;
    auto it = zone_.find(k);
    if (it == zone_.end()) {
      a.status = mta::dns::Status::NxDomain;
      return a;
    }
    const Node& n = it->second;
    if (n.tempfail) {
      a.status = mta::dns::Status::TempFail;
      a.error = "timeout";
      return a;
    }
    using mta::dns::RrType;
    if (type == RrType::TXT) a.txt = n.txt;
    if (type == RrType::A) a.addresses = n.a;
    if (type == RrType::AAAA) a.addresses = n.aaaa;
    if (type == RrType::MX) a.mx = n.mx;
    bool any = !a.txt.empty() || !a.addresses.empty() || !a.mx.empty();
    a.status = any ? mta::dns::Status::Ok : mta::dns::Status::NoData;
    a.ttl = 300;
    return a;
  }

  std::map<std::string, Node> zone_;
  std::vector<std::function<void()>> pending_;
};

}  // namespace moat::test
