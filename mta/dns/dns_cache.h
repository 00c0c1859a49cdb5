// mta/dns/dns_cache.h — the resolver's answer cache: bounded in entries and in bytes
// (least recently used entry evicted first), every entry expiring after its TTL (RFC 1035
// 3.2.1; negative answers per RFC 2308). The byte bound matters because one answer can be
// 64 KiB (a TXT record over TCP): peers choose the names (SPF includes, MX domains), so
// entries alone would let them fill gigabytes. The clock is passed in (milliseconds, the loop's uv_now) so the cache is
// testable without waiting. Keys are the canonical name and the record type.
// Untrusted input: names and answers come from peers; memory is bounded by `capacity`
// entries and `maxBytes` (an estimate of each entry's heap use).
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
  explicit AnswerCache(size_t capacity, size_t maxBytes = kDefaultMaxBytes)
      : capacity_(capacity), maxBytes_(maxBytes) {}
  static constexpr size_t kDefaultMaxBytes = size_t{32} << 20;

  static std::string key(const std::string& canonicalName, RrType type);

  // The cached answer with `ttl` lowered to the seconds left, or nullopt if absent or
  // expired (an expired entry is dropped).
  std::optional<Answer> get(const std::string& key, uint64_t nowMs);
  // Stores `answer` for answer.ttl seconds. TempFail, Malformed and TTL 0 are not stored,
  // nor an answer bigger than a sixteenth of `maxBytes` (it would evict too much).
  void put(const std::string& key, const Answer& answer, uint64_t nowMs);
  size_t size() const { return index_.size(); }
  size_t bytes() const { return bytes_; }
  void clear();

 private:
  struct Entry {
    std::string key;
    Answer answer;
    uint64_t expiresMs = 0;
    size_t bytes = 0;
  };
  void evictOldest();
  size_t capacity_;
  size_t maxBytes_;
  size_t bytes_ = 0;
  std::list<Entry> lru_;  // front = most recently used
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;
};

}  // namespace moat::mta::dns
