// mta/server/rate_counter.cc — see rate_counter.h.
#include "mta/server/rate_counter.h"

#include <algorithm>
#include <iterator>
#include <utility>

#include "mta/runtime/state_text.h"

namespace moat::mta::server {

namespace {

constexpr std::string_view kStateVersion = "moat-ratelimit 1";
// Any limit is below it (limits are `unsigned`): a bigger count from the file counts as
// this, so the sums cannot overflow.
constexpr uint64_t kMaxRestoredCount = uint64_t{1} << 32;

int64_t bucketMs(int64_t windowMs) { return std::max<int64_t>(1, windowMs / RateCounter::kBuckets); }

// The end of the bucket `nowMs` falls in (floor division: a clock may start below zero).
int64_t bucketEnd(int64_t nowMs, int64_t windowMs) {
  int64_t len = bucketMs(windowMs);
  int64_t q = nowMs / len - (nowMs % len < 0 ? 1 : 0);
  return (q + 1) * len;
}

}  // namespace

void RateCounter::dropExpired(Entry& e, int64_t nowMs, int64_t windowMs) {
  // A bucket counts while any part of it lies within the window.
  auto live =
      std::find_if(e.buckets.begin(), e.buckets.end(), [&](const Bucket& b) { return b.endMs > nowMs - windowMs; });
  e.buckets.erase(e.buckets.begin(), live);
}

void RateCounter::touch(Entry& e, int64_t windowMs) {
  int64_t last = e.buckets.empty() ? std::numeric_limits<int64_t>::min() / 2 : e.buckets.back().endMs + windowMs;
  e.expiresMs = std::max(last, e.loggedUntilMs);
  auto it = index_.find(e.key);
  if (it != index_.end()) lru_.splice(lru_.end(), lru_, it->second);
}

void RateCounter::prune(int64_t nowMs) {
  // The list is in the order keys were touched, which is nearly the order they expire in
  // (a reload that changes the window, a log mark, can put one out of place: it then waits
  // for those before it, or for the cap).
  while (!lru_.empty() && lru_.front().expiresMs <= nowMs) {
    index_.erase(lru_.front().key);
    lru_.pop_front();
  }
}

RateCounter::Entry* RateCounter::find(std::string_view key, bool create) {
  if (auto it = index_.find(key); it != index_.end()) return &*it->second;
  if (!create) return nullptr;
  if (index_.size() >= maxKeys_ && !lru_.empty()) {
    index_.erase(lru_.front().key);
    lru_.pop_front();
    ++evicted_;
  }
  lru_.push_back(Entry{std::string(key), {}, std::numeric_limits<int64_t>::min(), 0});
  auto it = std::prev(lru_.end());
  index_.emplace(std::string_view(it->key), it);
  return &*it;
}

uint64_t RateCounter::count(std::string_view key, int64_t nowMs, int64_t windowMs) {
  prune(nowMs);
  Entry* e = find(key, false);
  if (!e) return 0;
  dropExpired(*e, nowMs, windowMs);
  uint64_t n = 0;
  for (const auto& b : e->buckets) n += b.count;
  return n;
}

void RateCounter::add(std::string_view key, int64_t nowMs, int64_t windowMs, uint64_t n) {
  prune(nowMs);
  Entry& e = *find(key, true);
  dropExpired(e, nowMs, windowMs);
  append(e.buckets, bucketEnd(nowMs, windowMs), n);
  touch(e, windowMs);
  dirty_ = true;
}

void RateCounter::append(std::vector<Bucket>& buckets, int64_t endMs, uint64_t n) {
  if (!buckets.empty() && buckets.back().endMs >= endMs) {
    buckets.back().count += n;  // the current bucket (or a longer one from before a reload)
    return;
  }
  buckets.push_back({endMs, n});
  if (buckets.size() > kMaxBuckets) {
    // Merged into the next: its events count a little longer, never shorter.
    buckets[1].count += buckets[0].count;
    buckets.erase(buckets.begin());
  }
}

bool RateCounter::shouldLog(std::string_view key, int64_t nowMs, int64_t windowMs) {
  prune(nowMs);
  Entry& e = *find(key, true);
  if (e.loggedUntilMs > nowMs) return false;
  e.loggedUntilMs = nowMs + windowMs;
  touch(e, windowMs);
  return true;
}

std::vector<RateCounter::Record> RateCounter::records(int64_t nowMs, int64_t wallNowMs) {
  prune(nowMs);
  std::vector<Record> out;
  out.reserve(lru_.size());
  for (const auto& e : lru_) {
    if (e.buckets.empty() || e.key.size() > kMaxKeyBytes) continue;  // a log mark only, or a key not saved
    Record r{e.key, e.buckets};
    for (auto& b : r.buckets) b.endMs = b.endMs - nowMs + wallNowMs;
    out.push_back(std::move(r));
  }
  dirty_ = false;
  return out;
}

void RateCounter::restore(const std::vector<Record>& records, int64_t nowMs, int64_t wallNowMs, int64_t windowMs) {
  prune(nowMs);
  const int64_t latest = bucketEnd(nowMs, windowMs);
  // The most recent records first, as many as there is room for beside the counter's own.
  std::vector<std::pair<const std::string*, std::vector<Bucket>>> kept;
  for (auto r = records.rbegin(); r != records.rend() && index_.size() + kept.size() < maxKeys_; ++r) {
    if (r->key.empty() || r->key.size() > kMaxKeyBytes || index_.count(r->key)) continue;
    std::vector<Bucket> buckets;
    for (const auto& b : r->buckets) {
      if (b.count == 0 || b.endMs <= wallNowMs - windowMs) continue;  // expired meanwhile
      // Bounded in the wall clock first, so no time from the file overflows the conversion.
      const int64_t end = std::min(std::min(b.endMs, wallNowMs + windowMs) - wallNowMs + nowMs, latest);
      append(buckets, end, std::min(b.count, kMaxRestoredCount));
    }
    if (!buckets.empty()) kept.emplace_back(&r->key, std::move(buckets));
  }
  for (auto k = kept.rbegin(); k != kept.rend(); ++k) {  // in the file's order: the stalest first
    Entry& e = *find(*k->first, true);
    e.buckets = std::move(k->second);
    touch(e, windowMs);
  }
}

std::string RateCounter::encode(const std::vector<std::vector<Record>>& counters) {
  // Over the bound the first lines (the first counter's stalest keys) are left out.
  std::vector<std::string> lines;
  for (size_t i = 0; i < counters.size(); ++i) {
    for (const auto& r : counters[i]) {
      std::string line = std::to_string(i) + " " + state_text::escape(r.key);
      for (const auto& b : r.buckets) line += " " + std::to_string(b.endMs) + " " + std::to_string(b.count);
      lines.push_back(std::move(line) + "\n");
    }
  }
  return state_text::frame(kStateVersion, lines, kMaxStateBytes);
}

bool RateCounter::decode(std::string_view text, size_t counters, std::vector<std::vector<Record>>& out) {
  using state_text::number;
  out.assign(counters, {});
  return state_text::unframe(text, kStateVersion, kMaxStateBytes, [&](std::string_view line) {
    // The counter, the key, then an end and a count per bucket: a line with more buckets
    // than a key holds has an odd number of fields here, and is refused.
    auto f = state_text::fields(line, 3 + 2 * kMaxBuckets);
    size_t counter = 0;
    if (f.size() < 4 || f.size() % 2 != 0 || !number(f[0], counter) || counter >= counters) return false;
    if (out[counter].size() >= kDefaultMaxKeys) return false;
    Record r;
    if (!state_text::unescape(f[1], r.key) || r.key.empty() || r.key.size() > kMaxKeyBytes) return false;
    for (size_t i = 2; i < f.size(); i += 2) {
      Bucket b{};
      if (!number(f[i], b.endMs) || !number(f[i + 1], b.count)) return false;
      r.buckets.push_back(b);
    }
    out[counter].push_back(std::move(r));
    return true;
  });
}

}  // namespace moat::mta::server
