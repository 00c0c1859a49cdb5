// mta/dns/dns_cache.h — the resolver's answer cache: bounded (least recently used entry
// evicted first), every entry expiring after its TTL (RFC 1035 3.2.1; negative answers
// per RFC 2308). The clock is passed in (milliseconds, the loop's uv_now) so the cache is
// testable without waiting. Keys are the canonical name and the record type.
// Untrusted input: names come from peers (keys only; memory is bounded by `capacity`).
// Logs: nothing.
#pragma once
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include "mta/dns/resolver.h"

namespace moat::mta::dns {

class AnswerCache {
 public:
  explicit AnswerCache(size_t capacity) : capacity_(capacity) {}

  static std::string key(const std::string& canonicalName, RrType type);

  // The cached answer with `ttl` lowered to the seconds left, or nullopt if absent or
  // expired (an expired entry is dropped).
  std::optional<Answer> get(const std::string& key, uint64_t nowMs);
  // Stores `answer` for answer.ttl seconds. TempFail, Malformed and TTL 0 are not stored.
  void put(const std::string& key, const Answer& answer, uint64_t nowMs);
  size_t size() const { return index_.size(); }
  void clear();

 private:
  struct Entry {
    std::string key;
    Answer answer;
    uint64_t expiresMs = 0;
  };
  size_t capacity_;
  std::list<Entry> lru_;  // front = most recently used
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;
};

}  // namespace moat::mta::dns
