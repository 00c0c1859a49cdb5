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
//
// The counts outlive a restart, in SPOOL_DIR/rate_limit.state (mta/daemon/rate_limit_store.h):
// records() and restore() give and take them in the counter's clock, the store converts
// them to and from the wall clock, encode() and decode() are the file's text. Untrusted
// input there: the file (decode() bounds its size, its keys and their buckets; restore()
// bounds how long what it holds may count).
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
  // Longer keys are not saved (a sender is at most 256 bytes, RFC 5321 §4.5.3.1.3; a user
  // name is the admin's).
  static constexpr size_t kMaxKeyBytes = 1024;
  // rate_limit.state is at most this size: encode() leaves out the keys touched least
  // recently past it, decode() refuses a bigger file.
  static constexpr size_t kMaxStateBytes = 64u << 20;

  struct Bucket {
    int64_t endMs;  // the bucket holds events before this time
    uint64_t count;
  };
  // A key's counts as saved and restored.
  struct Record {
    std::string key;
    std::vector<Bucket> buckets;  // oldest first
  };

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
  // Whether anything was counted since the last records() (which clears it).
  bool dirty() const { return dirty_; }

  // The keys with counts (least recently touched first; those longer than kMaxKeyBytes
  // left out), for the state file: their times in the wall clock (ms since the epoch), which
  // reads `wallNowMs` at `nowMs`, so that they keep their age across a restart.
  std::vector<Record> records(int64_t nowMs, int64_t wallNowMs);
  // Counts from the state file (times in the wall clock, which reads `wallNowMs` at `nowMs`),
  // at start-up, under the window in force: buckets that expired are dropped, and one that
  // ends after the current bucket (the wall clock went back since the file was written)
  // counts as of now, so nothing restored counts longer than a window from now. Keys the
  // counter holds already keep their own counts; the others fill the room the cap leaves
  // beside them, the most recently touched first.
  void restore(const std::vector<Record>& records, int64_t nowMs, int64_t wallNowMs, int64_t windowMs);
  // The state file holds `counters.size()` counters ([rate_limits]' three), each line naming
  // its counter by its index: a version line, a line per key, an `end N` line (so a file cut
  // short is told from a whole one).
  static std::string encode(const std::vector<std::vector<Record>>& counters);
  // False for anything encode() did not write for `counters` counters (or wrote for another
  // version); at most kDefaultMaxKeys keys per counter, kMaxBuckets buckets per key.
  static bool decode(std::string_view text, size_t counters, std::vector<std::vector<Record>>& out);

 private:
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
  // `n` events before `endMs`, after the others (oldest first).
  static void append(std::vector<Bucket>& buckets, int64_t endMs, uint64_t n);
  void touch(Entry& e, int64_t windowMs);

  size_t maxKeys_;
  uint64_t evicted_ = 0;
  bool dirty_ = false;
  List lru_;                                                    // least recently touched first
  std::unordered_map<std::string_view, List::iterator> index_;  // views of the entries' keys
};

}  // namespace moat::mta::server
