// mta/dns/dns_cache.cc — see dns_cache.h.
#include "mta/dns/dns_cache.h"

namespace moat::mta::dns {

std::string AnswerCache::key(const std::string& canonicalName, RrType type) {
  return canonicalName + '/' + std::to_string(static_cast<unsigned>(type));
}

std::optional<Answer> AnswerCache::get(const std::string& key, uint64_t nowMs) {
  auto it = index_.find(key);
  if (it == index_.end()) return std::nullopt;
  auto entry = it->second;
  if (entry->expiresMs <= nowMs) {
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
  const uint64_t expires = nowMs + uint64_t{answer.ttl} * 1000;
  if (auto it = index_.find(key); it != index_.end()) {
    it->second->answer = answer;
    it->second->expiresMs = expires;
    lru_.splice(lru_.begin(), lru_, it->second);
    return;
  }
  while (index_.size() >= capacity_) {
    index_.erase(lru_.back().key);
    lru_.pop_back();
  }
  lru_.push_front(Entry{key, answer, expires});
  index_[key] = lru_.begin();
}

void AnswerCache::clear() {
  index_.clear();
  lru_.clear();
}

}  // namespace moat::mta::dns
