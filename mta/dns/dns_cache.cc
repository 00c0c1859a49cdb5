// mta/dns/dns_cache.cc — see dns_cache.h.
#include "mta/dns/dns_cache.h"

namespace moat::mta::dns {
namespace {

// What an entry costs on the heap, roughly: the strings' bytes and each element's own size
// plus allocator and node overhead.
size_t footprint(const std::string& key, const Answer& a) {
  constexpr size_t kNode = 64;  // list node, hash node, bucket, allocator headers
  size_t n = sizeof(Answer) + kNode + key.size() + a.error.size() + a.canonical.size();
  n += a.addresses.size() * sizeof(IpAddress);
  for (const auto& m : a.mx) n += sizeof(MxRecord) + m.exchange.size() + 16;
  for (const auto& t : a.txt) n += sizeof(std::string) + t.size() + 16;
  for (const auto& s : a.names) n += sizeof(std::string) + s.size() + 16;
  for (const auto& t : a.tlsa) n += sizeof(TlsaRecord) + t.data.size() + 16;
  return n;
}

}  // namespace

std::string AnswerCache::key(const std::string& canonicalName, RrType type) {
  return canonicalName + '/' + std::to_string(static_cast<unsigned>(type));
}

std::optional<Answer> AnswerCache::get(const std::string& key, uint64_t nowMs) {
  auto it = index_.find(key);
  if (it == index_.end()) return std::nullopt;
  auto entry = it->second;
  if (entry->expiresMs <= nowMs) {
    bytes_ -= entry->bytes;
    lru_.erase(entry);
    index_.erase(it);
    return std::nullopt;
  }
  lru_.splice(lru_.begin(), lru_, entry);
  Answer a = entry->answer;
  // Round up so a live entry never reports TTL 0 (which would mean "do not cache").
  a.ttl = static_cast<uint32_t>((entry->expiresMs - nowMs + 999) / 1000);
  return a;
}

void AnswerCache::put(const std::string& key, const Answer& answer, uint64_t nowMs) {
  if (capacity_ == 0 || answer.ttl == 0) return;
  if (answer.status == Status::TempFail || answer.status == Status::Malformed) return;
  const size_t cost = footprint(key, answer);
  if (cost > maxBytes_ / 16) return;
  const uint64_t expires = nowMs + uint64_t{answer.ttl} * 1000;
  if (auto it = index_.find(key); it != index_.end()) {
    bytes_ -= it->second->bytes;
    lru_.erase(it->second);
    index_.erase(it);
  }
  while (!lru_.empty() && (index_.size() >= capacity_ || bytes_ + cost > maxBytes_)) evictOldest();
  lru_.push_front(Entry{key, answer, expires, cost});
  index_[key] = lru_.begin();
  bytes_ += cost;
}

void AnswerCache::evictOldest() {
  bytes_ -= lru_.back().bytes;
  index_.erase(lru_.back().key);
  lru_.pop_back();
}

void AnswerCache::clear() {
  index_.clear();
  lru_.clear();
  bytes_ = 0;
}

}  // namespace moat::mta::dns
