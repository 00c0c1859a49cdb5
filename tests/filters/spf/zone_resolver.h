// tests/filters/spf/zone_resolver.h — an in-memory mta::dns::Resolver over zone data, for
// the SPF unit and conformance tests. It follows CNAMEs, answers NXDOMAIN for unknown
// names, NoData for names without the type, TempFail for names marked TIMEOUT (except for
// types listed before the mark, as the OpenSPF suite's driver does) and Malformed for
// names with bad labels. Answers are synchronous by default (like cache hits); in deferred
// mode they wait for runPending(), like a real network. Counts every query.
#pragma once
#include <algorithm>
#include <cctype>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "mta/dns/resolver.h"

namespace moat::testing {

class ZoneResolver : public mta::dns::Resolver {
 public:
  using RrType = mta::dns::RrType;
  using Status = mta::dns::Status;
  using Answer = mta::dns::Answer;

  static std::optional<RrType> typeFromName(const std::string& t) {
    if (t == "A") return RrType::A;
    if (t == "AAAA") return RrType::AAAA;
    if (t == "MX") return RrType::MX;
    if (t == "TXT") return RrType::TXT;
    if (t == "PTR") return RrType::PTR;
    if (t == "CNAME") return RrType::CNAME;
    return std::nullopt;
  }

  void add(const std::string& name, RrType type, const std::string& value) {
    zone_[norm(name)].push_back(Entry{Entry::Record, type, value});
  }
  // The name exists without records of `type` ("TXT: NONE"); unlike a record, it does not
  // keep `type` answering when a TIMEOUT mark follows.
  void addEmpty(const std::string& name, RrType type) { zone_[norm(name)].push_back(Entry{Entry::Empty, type, ""}); }
  void addTimeout(const std::string& name) { zone_[norm(name)].push_back(Entry{Entry::Timeout, RrType::A, ""}); }

  void setDeferred(bool deferred) { deferred_ = deferred; }
  // Runs deferred answers (and those they cause) up to `max` of them; returns how many.
  size_t runPending(size_t max = 10000) {
    size_t n = 0;
    while (!pending_.empty() && n < max) {
      auto p = std::move(pending_.front());
      pending_.erase(pending_.begin());
      p();
      ++n;
    }
    return n;
  }

  int queries = 0;
  std::vector<std::string> log;  // "TYPE name" per query

  void query(std::string_view name, RrType type, Callback cb) override {
    ++queries;
    Answer a = lookup(std::string(name), type);
    log.push_back(std::to_string(static_cast<int>(type)) + " " + std::string(name));
    if (deferred_) {
      pending_.push_back([cb, a] { cb(a); });
      return;
    }
    cb(a);
  }

 private:
  struct Entry {
    enum Kind { Record, Empty, Timeout } kind;
    RrType type;
    std::string value;
  };

  static std::string norm(std::string s) {
    while (!s.empty() && s.back() == '.') s.pop_back();
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  }

  static bool wellFormed(const std::string& n) {
    if (n.empty() || n.size() > 253) return false;
    size_t start = 0;
    for (size_t i = 0; i <= n.size(); ++i) {
      if (i == n.size() || n[i] == '.') {
        if (i == start || i - start > 63) return false;
        start = i + 1;
      }
    }
    return true;
  }

  Answer lookup(std::string name, RrType type) const {
    Answer a;
    name = norm(name);
    if (!wellFormed(name)) {
      a.status = Status::Malformed;
      a.error = "bad name";
      return a;
    }
    for (int hop = 0; hop < 8; ++hop) {
      auto it = zone_.find(name);
      if (it == zone_.end()) {
        a.status = Status::NxDomain;
        return a;
      }
      std::set<RrType> before;
      bool timeout = false;
      for (const auto& e : it->second) {
        if (e.kind == Entry::Timeout) {
          timeout = true;
          break;
        }
        // "TXT: NONE" does not shield the type from a later TIMEOUT (suite: txttimeout).
        if (e.kind == Entry::Record) before.insert(e.type);
      }
      if (timeout && !before.count(type) && !before.count(RrType::CNAME)) {
        a.status = Status::TempFail;
        a.error = "timeout";
        return a;
      }
      std::string cname;
      for (const auto& e : it->second) {
        if (e.kind != Entry::Record) continue;
        if (e.type == RrType::CNAME && type != RrType::CNAME) cname = norm(e.value);
        if (e.type != type) continue;
        fill(a, type, e.value);
      }
      if (a.status == Status::Ok) return a;
      if (!cname.empty()) {
        name = cname;
        continue;
      }
      a.status = Status::NoData;
      return a;
    }
    a.status = Status::TempFail;
    a.error = "CNAME loop";
    return a;
  }

  static void fill(Answer& a, RrType type, const std::string& value) {
    switch (type) {
      case RrType::A:
      case RrType::AAAA: {
        auto ip = mta::IpAddress::parse(value);
        if (!ip) return;
        a.addresses.push_back(*ip);
        break;
      }
      case RrType::TXT: a.txt.push_back(value); break;
      case RrType::PTR: a.names.push_back(norm(value)); break;
      case RrType::MX: {
        auto sp = value.find(' ');
        mta::dns::MxRecord mx;
        mx.preference = static_cast<uint16_t>(std::stoi(value.substr(0, sp)));
        mx.exchange = sp == std::string::npos ? "" : norm(value.substr(sp + 1));
        a.mx.push_back(mx);
        std::stable_sort(a.mx.begin(), a.mx.end(),
                         [](const auto& x, const auto& y) { return x.preference < y.preference; });
        break;
      }
      default: return;
    }
    a.status = Status::Ok;
  }

  std::map<std::string, std::vector<Entry>> zone_;
  bool deferred_ = false;
  std::vector<std::function<void()>> pending_;
};

}  // namespace moat::testing
