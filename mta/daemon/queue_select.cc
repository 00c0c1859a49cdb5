// mta/daemon/queue_select.cc — see queue_select.h.
#include "mta/daemon/queue_select.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <vector>

#include "mta/runtime/json.h"
#include "mta/runtime/scan.h"
#include "policy/list_file.h"

namespace moat::mta::daemon {
namespace {

using mta::iequalsAscii;
using policy::lowerAscii;

// `pattern` lowercased ("user@domain" or "@domain"); `address` as stored.
bool addressMatches(std::string_view pattern, std::string_view address) {
  if (pattern.front() == '@') {
    auto at = address.rfind('@');
    return at != std::string_view::npos && iequalsAscii(pattern.substr(1), address.substr(at + 1));
  }
  return iequalsAscii(pattern, address);
}

bool containsNoCase(std::string_view haystack, std::string_view lowerNeedle) {
  if (lowerNeedle.size() > haystack.size()) return false;
  auto it = std::search(haystack.begin(), haystack.end(), lowerNeedle.begin(), lowerNeedle.end(),
                        [](char h, char n) { return std::tolower(static_cast<unsigned char>(h)) == n; });
  return it != haystack.end();
}

bool parseMs(std::string_view s, int64_t& out) {
  int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v < 0) return false;
  out = v;
  return true;
}

}  // namespace

bool QueueSelector::areaMatches(queue::Area a) const {
  if (area == "all") return true;
  if (area.empty()) return a != queue::Area::Quarantine;
  if (area == "active") return a == queue::Area::Active;
  if (area == "hold") return a == queue::Area::Hold;
  if (area == "quarantine") return a == queue::Area::Quarantine;
  return false;
}

bool QueueSelector::matches(const queue::Envelope& env, int64_t nowMs) const {
  if (!areaMatches(env.area)) return false;
  if (!from.empty()) {
    if (from == "<>") {
      if (!env.mailFrom.empty()) return false;
    } else if (env.mailFrom.empty() || !addressMatches(from, env.mailFrom)) {
      return false;
    }
  }
  int64_t age = nowMs - env.arrivalMs;
  if (olderMs >= 0 && age < olderMs) return false;
  if (youngerMs >= 0 && age >= youngerMs) return false;
  if (!to.empty()) {
    bool any = std::any_of(env.rcpts.begin(), env.rcpts.end(), [&](const queue::Recipient& r) {
      return r.status == queue::RcptStatus::Pending && addressMatches(to, r.address);
    });
    if (!any) return false;
  }
  if (!reason.empty()) {
    bool any = containsNoCase(env.quarantineReason, reason) ||
               std::any_of(env.rcpts.begin(), env.rcpts.end(), [&](const queue::Recipient& r) {
                 return r.status == queue::RcptStatus::Pending && containsNoCase(r.lastReply, reason);
               });
    if (!any) return false;
  }
  return true;
}

size_t QueueSummary::bucket(int64_t ageMs) {
  for (size_t i = 0; i < kBucketEndsMs.size(); ++i)
    if (ageMs < kBucketEndsMs[i]) return i;
  return kBuckets - 1;
}

void QueueSummary::add(const queue::Envelope& env, int64_t nowMs) {
  size_t b = bucket(nowMs - env.arrivalMs);
  ++messages;
  bytes += env.size;
  ++areas[std::string(env.area == queue::Area::Active ? "active" : queue::areaName(env.area))];
  ++ages[b];
  std::vector<std::string> seen;
  for (const auto& r : env.rcpts) {
    if (r.status != queue::RcptStatus::Pending) continue;
    ++recipients;
    auto at = r.address.rfind('@');
    std::string domain = at == std::string::npos ? "" : lowerAscii(std::string_view(r.address).substr(at + 1));
    if (std::find(seen.begin(), seen.end(), domain) != seen.end()) continue;
    seen.push_back(domain);
    ++domains[domain][b];
  }
}

std::string QueueSummary::json() const {
  auto row = [](const Row& r) {
    JsonArray a;
    for (auto n : r) a.addRaw(std::to_string(n));
    return a.str();
  };
  auto total = [](const Row& r) {
    uint64_t n = 0;
    for (auto x : r) n += x;
    return n;
  };
  std::vector<std::pair<uint64_t, const std::string*>> order;
  for (const auto& [d, r] : domains) order.emplace_back(total(r), &d);
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  JsonArray list;
  for (const auto& [n, d] : order)
    list.addRaw(JsonObject().add("domain", *d).add("messages", n).addRaw("ages", row(domains.at(*d))).str());
  JsonArray names;
  for (const char* n : kBucketNames) names.add(n);
  JsonObject a;
  for (const char* k : {"active", "hold", "quarantine"}) {
    auto it = areas.find(k);
    a.add(k, it == areas.end() ? uint64_t{0} : it->second);
  }
  return JsonObject()
      .add("ok", true)
      .add("messages", messages)
      .add("recipients", recipients)
      .add("bytes", bytes)
      .addRaw("areas", a.str())
      .addRaw("buckets", names.str())
      .addRaw("ages", row(ages))
      .addRaw("domains", list.str())
      .str();
}

std::string escapeToken(std::string_view value) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : value) {
    if (c <= 0x20 || c == 0x7f || c == '%') {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

bool unescapeToken(std::string_view value, std::string& out) {
  out.clear();
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (size_t i = 0; i < value.size(); ++i) {
    if (value[i] != '%') {
      out.push_back(value[i]);
      continue;
    }
    if (i + 2 >= value.size()) return false;  // "%" or "%X" at the end
    int h = hex(value[i + 1]), l = hex(value[i + 2]);
    if (h < 0 || l < 0) return false;
    out.push_back(static_cast<char>(h * 16 + l));
    i += 2;
  }
  return true;
}

bool parseAddressSelector(std::string_view text, bool allowNull, std::string& out, std::string& error) {
  if (text == "<>") {
    if (!allowNull) {
      error = "<> (the null sender) is a sender only";
      return false;
    }
    out = "<>";
    return true;
  }
  if (text.size() >= 2 && text.front() == '<' && text.back() == '>') text = text.substr(1, text.size() - 2);
  auto at = text.rfind('@');
  bool bad = text.empty() || text.size() > 320 || at == std::string_view::npos || at + 1 == text.size() ||
             std::any_of(text.begin(), text.end(),
                         [](unsigned char c) { return c <= 0x20 || c == 0x7f || c == '<' || c == '>'; });
  if (!bad && text.find('@') != at && text.front() != '"') bad = true;  // an '@' in a local part only when quoted
  if (bad) {
    error = "not an address or @domain: " + std::string(text);
    return false;
  }
  out = lowerAscii(text);
  return true;
}

std::string QueueSelector::encode() const {
  std::string out;
  auto add = [&out](const char* key, const std::string& value) {
    if (!out.empty()) out.push_back(' ');
    out.append(key).push_back('=');
    out += escapeToken(value);
  };
  if (!area.empty()) add("area", area);
  if (!from.empty()) add("from", from);
  if (!to.empty()) add("to", to);
  if (olderMs >= 0) add("older", std::to_string(olderMs));
  if (youngerMs >= 0) add("younger", std::to_string(youngerMs));
  if (!reason.empty()) add("reason", reason);
  return out;
}

bool QueueSelector::decode(std::string_view tokens, QueueSelector& out, std::string& error) {
  out = QueueSelector{};
  size_t i = 0;
  while (i < tokens.size()) {
    size_t end = tokens.find(' ', i);
    if (end == std::string_view::npos) end = tokens.size();
    std::string_view tok = tokens.substr(i, end - i);
    i = end + 1;
    if (tok.empty()) continue;
    auto eq = tok.find('=');
    std::string value;
    if (eq == std::string_view::npos || !unescapeToken(tok.substr(eq + 1), value)) {
      error = "bad selector: " + std::string(tok);
      return false;
    }
    std::string_view key = tok.substr(0, eq);
    bool ok = true;
    if (key == "area") {
      ok = value == "active" || value == "hold" || value == "quarantine" || value == "all";
      out.area = value;
    } else if (key == "from") {
      ok = parseAddressSelector(value, true, out.from, error);
    } else if (key == "to") {
      ok = parseAddressSelector(value, false, out.to, error);
    } else if (key == "older") {
      ok = parseMs(value, out.olderMs);
    } else if (key == "younger") {
      ok = parseMs(value, out.youngerMs);
    } else if (key == "reason") {
      ok = !value.empty();
      out.reason = lowerAscii(value);
    } else {
      error = "unknown selector: " + std::string(key);
      return false;
    }
    if (!ok) {
      if (error.empty()) error = "bad selector: " + std::string(tok);
      return false;
    }
  }
  return true;
}

}  // namespace moat::mta::daemon
