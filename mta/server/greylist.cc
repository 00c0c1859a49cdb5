// mta/server/greylist.cc — see greylist.h.
#include "mta/server/greylist.h"

#include <algorithm>
#include <cstring>
#include <iterator>

#include "mta/runtime/state_text.h"

namespace moat::mta::server {

namespace {

constexpr std::string_view kStateVersion = "moat-greylist 1";

char asciiLower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

void appendLower(std::string& out, std::string_view s) {
  for (char c : s) out += asciiLower(c);
}

}  // namespace

std::string Greylist::network(const IpAddress& ip, int ipv4Prefix, int ipv6Prefix) {
  const int prefix = std::clamp(ip.isV4() ? ipv4Prefix : ipv6Prefix, 0, ip.isV4() ? 32 : 128);
  uint8_t bytes[16] = {};
  std::memcpy(bytes, ip.bytes(), ip.size());
  for (int bit = prefix; bit < static_cast<int>(ip.size()) * 8; ++bit)
    bytes[bit / 8] = static_cast<uint8_t>(bytes[bit / 8] & ~(0x80 >> (bit % 8)));
  return Network(ip.isV4() ? IpAddress::v4(bytes) : IpAddress::v6(bytes), prefix).str();
}

void Greylist::prune(Table& t, int64_t nowMs) {
  // Touched order is nearly expiry order (a pending triplet's window and a passed one's
  // lifetime differ): one out of place waits for those before it, or for the cap.
  while (!t.lru.empty() && t.lru.front().expiresMs <= nowMs) {
    t.index.erase(t.lru.front().key);
    t.lru.pop_front();
  }
}

Greylist::Entry* Greylist::find(Table& t, std::string_view key, int64_t nowMs) {
  auto it = t.index.find(key);
  if (it == t.index.end()) return nullptr;
  if (it->second->expiresMs <= nowMs) {
    auto entry = it->second;
    t.index.erase(it);
    t.lru.erase(entry);
    return nullptr;
  }
  return &*it->second;
}

Greylist::Entry& Greylist::add(Table& t, std::string key) {
  if (t.index.size() >= maxEntries_ && !t.lru.empty()) {
    t.index.erase(t.lru.front().key);
    t.lru.pop_front();
    ++evicted_;
  }
  t.lru.push_back(Entry{std::move(key), 0, 0, 0});
  auto it = std::prev(t.lru.end());
  t.index.emplace(std::string_view(it->key), it);
  return *it;
}

void Greylist::touch(Table& t, Entry& e) {
  auto it = t.index.find(e.key);
  if (it != t.index.end()) t.lru.splice(t.lru.end(), t.lru, it->second);
}

std::string Greylist::tripletKey(std::string_view network, std::string_view sender, std::string_view recipient) {
  std::string key(network);
  key += '\0';
  appendLower(key, sender);
  key += '\0';
  appendLower(key, recipient);
  if (key.size() > kMaxKeyBytes) key.resize(kMaxKeyBytes);
  return key;
}

bool Greylist::wouldPass(std::string_view network, std::string_view sender, std::string_view recipient, int64_t nowMs,
                         const Settings& s) const {
  if (s.autoAllowAfter > 0) {
    auto c = clients_.index.find(network.substr(0, kMaxKeyBytes));
    if (c != clients_.index.end() && c->second->expiresMs > nowMs && c->second->passes >= s.autoAllowAfter) return true;
  }
  auto it = triplets_.index.find(tripletKey(network, sender, recipient));
  if (it == triplets_.index.end() || it->second->expiresMs <= nowMs) return false;
  return it->second->passes > 0 || nowMs - it->second->firstMs >= s.delayMs;
}

bool Greylist::exemptName(std::string_view name, const std::vector<std::string>& entries) {
  if (name.empty()) return false;
  for (const auto& e : entries) {
    if (e.empty()) continue;
    if (name == e) return true;
    if (e[0] == '.' && name.size() > e.size() && name.substr(name.size() - e.size()) == e) return true;
  }
  return false;
}

Greylist::Verdict Greylist::check(std::string_view network, std::string_view sender, std::string_view recipient,
                                  int64_t nowMs, const Settings& s) {
  prune(triplets_, nowMs);
  prune(clients_, nowMs);
  Verdict v;
  std::string_view clientKey = network.substr(0, kMaxKeyBytes);
  if (s.autoAllowAfter > 0) {
    if (Entry* c = find(clients_, clientKey, nowMs); c && c->passes >= s.autoAllowAfter) {
      c->expiresMs = nowMs + s.lifetimeMs;  // allowed while it keeps sending
      touch(clients_, *c);
      dirty_ = true;
      v.result = Result::Allowed;
      return v;
    }
  }
  std::string key = tripletKey(network, sender, recipient);
  Entry* t = find(triplets_, key, nowMs);
  if (!t) {
    Entry& e = add(triplets_, std::move(key));
    e.firstMs = nowMs;
    e.expiresMs = nowMs + std::max(s.retryWindowMs, s.delayMs + 1);
    dirty_ = true;
    v.waitMs = s.delayMs;
    v.firstSeen = true;
    return v;
  }
  if (t->passes > 0) {
    t->expiresMs = nowMs + s.lifetimeMs;
    touch(triplets_, *t);
    dirty_ = true;
    v.result = Result::Passed;
    return v;
  }
  // A retry: neither touched nor extended (its window counts from the first attempt).
  if (nowMs - t->firstMs < s.delayMs) {
    v.waitMs = t->firstMs + s.delayMs - nowMs;
    return v;
  }
  t->passes = 1;
  t->expiresMs = nowMs + s.lifetimeMs;
  touch(triplets_, *t);
  dirty_ = true;
  v.result = Result::Passed;
  v.firstPass = true;
  if (s.autoAllowAfter > 0) {
    Entry* c = find(clients_, clientKey, nowMs);
    if (!c) c = &add(clients_, std::string(clientKey));
    ++c->passes;
    c->expiresMs = nowMs + s.lifetimeMs;
    touch(clients_, *c);
  }
  return v;
}

std::vector<Greylist::Record> Greylist::records(int64_t nowMs) {
  prune(triplets_, nowMs);
  prune(clients_, nowMs);
  std::vector<Record> out;
  out.reserve(triplets_.lru.size() + clients_.lru.size());
  for (const auto& e : clients_.lru)
    if (e.expiresMs > nowMs) out.push_back(Record{true, e.key, e.firstMs, e.expiresMs, e.passes});
  for (const auto& e : triplets_.lru)
    if (e.expiresMs > nowMs) out.push_back(Record{false, e.key, e.firstMs, e.expiresMs, e.passes});
  dirty_ = false;
  return out;
}

void Greylist::restore(const std::vector<Record>& records, int64_t nowMs) {
  for (const auto& r : records) {
    if (r.expiresMs <= nowMs || r.key.empty() || r.key.size() > kMaxKeyBytes) continue;
    Table& t = r.client ? clients_ : triplets_;
    if (find(t, r.key, nowMs)) continue;  // the table's own is newer
    Entry& e = add(t, r.key);
    e.firstMs = r.firstMs;
    e.expiresMs = r.expiresMs;
    e.passes = r.client ? r.passes : std::min<uint32_t>(r.passes, 1);
  }
}

std::string Greylist::encode(const std::vector<Record>& records) {
  // Over the bound the entries touched least recently (the first ones) are left out.
  std::vector<std::string> lines;
  lines.reserve(records.size());
  for (const auto& r : records)
    lines.push_back(std::string(r.client ? "c " : "t ") + std::to_string(r.firstMs) + " " +
                    std::to_string(r.expiresMs) + " " + std::to_string(r.passes) + " " + state_text::escape(r.key) +
                    "\n");
  return state_text::frame(kStateVersion, lines, kMaxStateBytes);
}

bool Greylist::decode(std::string_view text, std::vector<Record>& records) {
  using state_text::number;
  records.clear();
  return state_text::unframe(text, kStateVersion, kMaxStateBytes, [&](std::string_view line) {
    auto f = state_text::fields(line);
    if (f.size() != 5 || (f[0] != "t" && f[0] != "c")) return false;
    Record r;
    r.client = f[0] == "c";
    if (!number(f[1], r.firstMs) || !number(f[2], r.expiresMs) || !number(f[3], r.passes)) return false;
    if (!state_text::unescape(f[4], r.key) || r.key.empty() || r.key.size() > kMaxKeyBytes) return false;
    if (records.size() >= 2 * kDefaultMaxEntries) return false;
    records.push_back(std::move(r));
    return true;
  });
}

}  // namespace moat::mta::server
