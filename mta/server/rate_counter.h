// mta/server/rate_counter.h — events per key over a sliding window, for [rate_limits]
// (messages and recipients per client, messages per sender; Postfix's anvil, Exchange's
// per-sender message rate limit).
//
// The window is counted in kBuckets buckets of window/kBuckets each: an event counts from
// the moment it is added until at least `window` and at most window + window/kBuckets
// (3.2 %) later. So a limit is never exceeded over any span of `window`, and a key that
// stops is let through again at most 3.2 % of a window late.
//
// Keys come from peers (client addresses, envelope senders, user names): memory is bounded
// by maxKeys, the key counted least recently dropped for a new one, and by the buckets a
// key holds (at most kMaxBuckets). Keys whose events have all expired are dropped as the
// counter is used. Time is the caller's (milliseconds of any monotonic clock: the loop's
// uv_now, a test's own), so the counter is pure. Loop thread only; logs nothing.
#pragma once
#include <cstdint>
#include <limits>
#include <list>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace moat::mta::server {

class RateCounter {
 public:
  static constexpr int64_t kBuckets = 32;
  // The live buckets of one window; more only after a reload changed it: then merged.
  static constexpr size_t kMaxBuckets = kBuckets + 2;  // window/kBuckets is rounded down
  static constexpr size_t kDefaultMaxKeys = 100'000;

  explicit RateCounter(size_t maxKeys = kDefaultMaxKeys) : maxKeys_(maxKeys == 0 ? 1 : maxKeys) {}
  RateCounter(const RateCounter&) = delete;
  RateCounter& operator=(const RateCounter&) = delete;

  // The events counted for `key` in the window ending at `nowMs`.
  uint64_t count(std::string_view key, int64_t nowMs, int64_t windowMs);
  // Counts `n` events for `key` at `nowMs`.
  void add(std::string_view key, int64_t nowMs, int64_t windowMs, uint64_t n = 1);
  // Whether a refusal for `key` at `nowMs` should be logged: true at most once per window
  // per key, so a client that keeps trying writes one line, not one per command.
  bool shouldLog(std::string_view key, int64_t nowMs, int64_t windowMs);
  size_t keys() const { return index_.size(); }
  uint64_t evicted() const { return evicted_; }

 private:
  struct Bucket {
    int64_t endMs;  // the bucket holds events before this time
    uint64_t count;
  };
  struct Entry {
    std::string key;
    std::vector<Bucket> buckets;  // oldest first
    int64_t loggedUntilMs = std::numeric_limits<int64_t>::min();
    int64_t expiresMs = 0;  // nothing of the entry matters from then on
  };
  using List = std::list<Entry>;

  // Drops expired keys from the front of the list (least recently touched first).
  void prune(int64_t nowMs);
  // The entry of `key`, made (dropping the stalest key at the cap) if `create`.
  Entry* find(std::string_view key, bool create);
  static void dropExpired(Entry& e, int64_t nowMs, int64_t windowMs);
  void touch(Entry& e, int64_t windowMs);

  size_t maxKeys_;
  uint64_t evicted_ = 0;
  List lru_;                                                    // least recently touched first
  std::unordered_map<std::string_view, List::iterator> index_;  // views of the entries' keys
};

}  // namespace moat::mta::server
