// mta/daemon/mta_sts.h — MTA-STS policy discovery, fetch and cache (RFC 8461 §3, §5.1) for
// delivery by MX. Everything runs on the loop: the TXT record and the policy host's
// addresses through the Resolver, the HTTPS GET on a net::Connection; only the cache file's
// write goes to the thread pool. Untrusted input: DNS answers, the policy host's response
// (bounded: 8 KiB of head, 64 KiB of body, one fetch_timeout for the whole fetch) and the
// cache file (bounded: kMaxFileBytes, kMaxEntries); the cache in memory holds no more than
// the file can (kMaxEntries, kMaxBytes). §5.1, §10.2: sweep() refreshes the policies near
// their expiry without waiting for mail to their domain. Logs: `mta_sts` (warn) when a fetch
// or a refresh fails, a fetch is cancelled by stop(), or the cache file cannot be read or
// written.
#pragma once
#include <uv.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mta/daemon/https_client.h"
#include "mta/daemon/mta_sts_policy.h"
#include "mta/dns/resolve_host.h"
#include "mta/dns/resolver.h"
#include "mta/tls/tls.h"

namespace moat::mta::sts {

class PolicyCache {
 public:
  // The policy for a domain; null when it has none (or none could be had and none is cached).
  // `stopped`: stop() cut the fetch short and nothing was decided; the caller defers.
  using Done = std::function<void(std::shared_ptr<const Policy>, bool stopped)>;
  // Policies kept (in memory and in the file) and the file's size: a flood of recipient
  // domains costs at most this much. In memory a policy counts as the octets of its line in
  // the file (cacheLineBytes), at most kMaxBytes in all (the file's bound less room for its
  // first and last lines), so all the cache holds fits the file. The least recently used
  // (fetched, or answered to a delivery) make room; expired ones first.
  static constexpr size_t kMaxEntries = 10000;
  static constexpr size_t kMaxFileBytes = 1 << 20;
  static constexpr size_t kMaxBytes = kMaxFileBytes - 64;
  // A policy with less than this part of its max_age left is refreshed in the background
  // when a delivery uses it, or by the next sweep() (§5.1: refresh before it expires).
  static constexpr uint32_t kRefreshDivisor = 4;
  // Refreshes a sweep has under way at once (TXT lookup and fetch); the rest wait their turn.
  static constexpr size_t kMaxSweepFetches = 8;
  // `httpsPort`: 443 (§3.3); tests use a port of their own. `file`: where policies outlive a
  // restart (the spool's mta-sts.cache), "" for none.
  PolicyCache(uv_loop_t* loop, dns::Resolver* resolver, uint16_t httpsPort = 443, std::string file = "");
  ~PolicyCache();
  PolicyCache(const PolicyCache&) = delete;
  PolicyCache& operator=(const PolicyCache&) = delete;

  // Reads the file (at start-up, before the loop runs: one bounded read). A file that cannot
  // be read or is broken is logged and ignored (a fresh one replaces it at the next fetch);
  // a missing one is the first start. Returns the number of unexpired policies taken.
  size_t load();

  // Looks up the TXT id, then uses the cached policy if its id is the same and it has not
  // expired (refreshing it in the background when little of its max_age is left), else
  // fetches (one fetch per domain at a time: later callers wait for it). A failed fetch, or
  // a failed TXT lookup, falls back to the unexpired cached policy (§5.1). `tls` verifies
  // the policy host (system store + [mta_sts] ca_file); `families`: the address families
  // the fetch may use. `done` runs once, possibly before this returns.
  void get(const std::string& domain, std::shared_ptr<tls::TlsContext> tls, uint64_t timeoutMs, dns::Families families,
           Done done);
  void get(const std::string& domain, std::shared_ptr<tls::TlsContext> tls, uint64_t timeoutMs, Done done) {
    get(domain, std::move(tls), timeoutMs, dns::Families{}, std::move(done));
  }

  // The periodic sweep ([mta_sts] refresh_interval): drops the expired policies (rewriting
  // the file when there were any) and refreshes, in the background and at most
  // kMaxSweepFetches at a time, each cached policy with less than 1/kRefreshDivisor of its
  // max_age left, by the rule a delivery follows: its TXT record is looked up; the same id,
  // a new one, or a failed lookup fetches the policy (a failed fetch leaves the cached one in
  // force); no record any more (§8.3) does not. A null `tls` only drops the expired. Returns
  // the number of policies it found due.
  size_t sweep(std::shared_ptr<tls::TlsContext> tls, uint64_t timeoutMs, dns::Families families);

  // The local address policy fetches leave from ([queue] source_ipv4 / source_ipv6), from
  // the next fetch on.
  void setSource(https::Source source) { source_ = std::move(source); }

  // Shutdown: cancels every fetch under way (their callers get `stopped`) and starts no
  // more; cached policies are still answered. A cache file write under way finishes.
  void stop();

  bool fetching(const std::string& domain) const { return fetches_.count(domain) != 0; }
  // While a fetch's waiters are being answered: its error when it failed ("" otherwise, and
  // outside those calls). For TLS reporting (RFC 8460 §4.3.2), which tells a failed fetch
  // from a domain without a policy.
  const std::string& answeringFailure() const { return answeringFailure_; }
  size_t size() const { return cache_.size(); }
  size_t bytes() const { return bytes_; }  // the cached policies' cacheLineBytes, summed
  bool sweeping() const { return sweepActive_ != 0 || !sweepQueue_.empty(); }
  bool writing() const { return writing_; }
  // Tests: moves this cache's clocks (both) forward, as if that much time had passed.
  void advanceClockForTest(std::chrono::seconds by) { skew_ += by; }

 private:
  struct Entry {
    std::shared_ptr<const Policy> policy;
    std::chrono::steady_clock::time_point expires;
    size_t bytes = 0;                       // cacheLineBytes
    std::list<std::string>::iterator used;  // its place in lru_
  };
  struct Fetch {
    std::vector<Done> waiters;
    std::function<void()> cancel;
    std::function<void()> ended;  // a sweep's refresh: its turn is over
  };
  std::chrono::steady_clock::time_point now() const { return std::chrono::steady_clock::now() + skew_; }
  int64_t wallNow() const;
  const Entry* cached(const std::string& domain) const;
  bool due(const Entry& e) const {
    return e.expires - now() < std::chrono::seconds(e.policy->maxAge / kRefreshDivisor);
  }
  void store(const std::string& domain, std::shared_ptr<const Policy> policy,
             std::chrono::steady_clock::time_point expires);
  void erase(std::map<std::string, Entry>::iterator it);
  size_t dropExpired();
  void touch(const std::string& domain);
  void pumpSweep();
  void sweepRefresh(const std::string& domain);
  void startFetch(const std::string& domain, const std::string& id, std::shared_ptr<tls::TlsContext> tls,
                  uint64_t timeoutMs, dns::Families families);
  void finish(const std::string& domain, std::shared_ptr<const Policy> fetched, const std::string& error, bool refresh);
  void put(const std::string& domain, std::shared_ptr<const Policy> policy);
  void save();
  uv_loop_t* loop_;
  dns::Resolver* resolver_;
  uint16_t httpsPort_;
  https::Source source_;
  std::string file_;
  std::chrono::seconds skew_{0};
  bool stopped_ = false;
  std::string answeringFailure_;
  bool writing_ = false;  // a write of the file is on the thread pool
  bool dirty_ = false;    // the cache changed since that write's contents were made
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  std::map<std::string, Entry> cache_;
  std::list<std::string> lru_;  // cache_'s domains, the most recently used first
  size_t bytes_ = 0;
  std::map<std::string, Fetch> fetches_;  // domains with a fetch under way, and who waits for it
  // The sweep: the domains waiting for their refresh, how many are under way, and with what.
  std::deque<std::string> sweepQueue_;
  size_t sweepActive_ = 0;
  bool pumping_ = false;
  std::shared_ptr<tls::TlsContext> sweepTls_;
  uint64_t sweepTimeoutMs_ = 0;
  dns::Families sweepFamilies_;
};

// Fetches https://mta-sts.DOMAIN/.well-known/mta-sts.txt (§3.3) and parses it. The host's
// addresses (of `families`, at most kMaxPolicyAddresses) are tried in order until one gives
// an HTTP reply, each within what is left of `timeoutMs` (https::exchange, https_client.h).
// `done(policy, error)` runs once on the loop; policy is null on failure. The returned
// function cancels the fetch (`done` then runs at once with the error "cancelled"); it does
// nothing once `done` has run.
constexpr size_t kMaxPolicyAddresses = 10;  // https::kMaxAddresses
std::function<void()> fetchPolicy(uv_loop_t* loop, dns::Resolver& resolver, const std::string& domain,
                                  std::shared_ptr<tls::TlsContext> tls, uint64_t timeoutMs, uint16_t port,
                                  std::function<void(std::shared_ptr<Policy>, const std::string& error)> done,
                                  dns::Families families = {}, https::Source source = {});

}  // namespace moat::mta::sts
