// mta/server/rate_counter.cc — see rate_counter.h.
#include "mta/server/rate_counter.h"

#include <algorithm>
#include <iterator>

namespace moat::mta::server {

namespace {

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
  int64_t end = bucketEnd(nowMs, windowMs);
  if (!e.buckets.empty() && e.buckets.back().endMs >= end) {
    e.buckets.back().count += n;  // the current bucket (or a longer one from before a reload)
  } else {
    e.buckets.push_back({end, n});
    if (e.buckets.size() > kMaxBuckets) {
      // Merged into the next: its events count a little longer, never shorter.
      e.buckets[1].count += e.buckets[0].count;
      e.buckets.erase(e.buckets.begin());
    }
  }
  touch(e, windowMs);
}

bool RateCounter::shouldLog(std::string_view key, int64_t nowMs, int64_t windowMs) {
  prune(nowMs);
  Entry& e = *find(key, true);
  if (e.loggedUntilMs > nowMs) return false;
  e.loggedUntilMs = nowMs + windowMs;
  touch(e, windowMs);
  return true;
}

}  // namespace moat::mta::server
