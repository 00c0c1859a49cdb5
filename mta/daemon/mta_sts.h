// mta/daemon/mta_sts.h — MTA-STS policy discovery, fetch and cache (RFC 8461 §3, §5.1) for
// delivery by MX. Everything runs on the loop: the TXT record and the policy host's
// addresses through the Resolver, the HTTPS GET on a net::Connection; only the cache file's
// write goes to the thread pool. Untrusted input: DNS answers, the policy host's response
// (bounded: 8 KiB of head, 64 KiB of body, one fetch_timeout for the whole fetch) and the
// cache file (bounded: kMaxFileBytes, kMaxEntries). Logs: `mta_sts` (warn) when a fetch or
// a refresh fails, a fetch is cancelled by stop(), or the cache file cannot be read or
// written.
#pragma once
#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

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
  // domains costs at most this much; the policies that expire soonest make room.
  static constexpr size_t kMaxEntries = 10000;
  static constexpr size_t kMaxFileBytes = 1 << 20;
  // A policy with less than this part of its max_age left is refreshed in the background
  // when a delivery uses it (§5.1: refresh before it expires).
  static constexpr uint32_t kRefreshDivisor = 4;
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

  // Shutdown: cancels every fetch under way (their callers get `stopped`) and starts no
  // more; cached policies are still answered. A cache file write under way finishes.
  void stop();

  bool fetching(const std::string& domain) const { return fetches_.count(domain) != 0; }
  size_t size() const { return cache_.size(); }
  bool writing() const { return writing_; }
  // Tests: moves this cache's clocks (both) forward, as if that much time had passed.
  void advanceClockForTest(std::chrono::seconds by) { skew_ += by; }

 private:
  struct Entry {
    std::shared_ptr<const Policy> policy;
    std::chrono::steady_clock::time_point expires;
  };
  struct Fetch {
    std::vector<Done> waiters;
    std::function<void()> cancel;
  };
  std::chrono::steady_clock::time_point now() const { return std::chrono::steady_clock::now() + skew_; }
  int64_t wallNow() const;
  const Entry* cached(const std::string& domain) const;
  void startFetch(const std::string& domain, const std::string& id, std::shared_ptr<tls::TlsContext> tls,
                  uint64_t timeoutMs, dns::Families families);
  void finish(const std::string& domain, std::shared_ptr<const Policy> fetched, const std::string& error, bool refresh);
  void put(const std::string& domain, std::shared_ptr<const Policy> policy);
  void save();
  uv_loop_t* loop_;
  dns::Resolver* resolver_;
  uint16_t httpsPort_;
  std::string file_;
  std::chrono::seconds skew_{0};
  bool stopped_ = false;
  bool writing_ = false;  // a write of the file is on the thread pool
  bool dirty_ = false;    // the cache changed since that write's contents were made
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  std::map<std::string, Entry> cache_;
  std::map<std::string, Fetch> fetches_;  // domains with a fetch under way, and who waits for it
};

// Fetches https://mta-sts.DOMAIN/.well-known/mta-sts.txt (§3.3) and parses it. The host's
// addresses (of `families`, at most kMaxPolicyAddresses) are tried in order until one gives
// an HTTP reply, each within what is left of `timeoutMs`. `done(policy, error)` runs once on
// the loop; policy is null on failure. The returned function cancels the fetch (`done` then
// runs at once with the error "cancelled"); it does nothing once `done` has run.
constexpr size_t kMaxPolicyAddresses = 10;
std::function<void()> fetchPolicy(uv_loop_t* loop, dns::Resolver& resolver, const std::string& domain,
                                  std::shared_ptr<tls::TlsContext> tls, uint64_t timeoutMs, uint16_t port,
                                  std::function<void(std::shared_ptr<Policy>, const std::string& error)> done,
                                  dns::Families families = {});

}  // namespace moat::mta::sts
