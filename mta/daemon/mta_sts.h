// mta/daemon/mta_sts.h — MTA-STS policy discovery, fetch and cache (RFC 8461 §3, §5.1) for
// delivery by MX. Everything runs on the loop: the TXT record and the policy host's
// addresses through the Resolver, the HTTPS GET on a net::Connection. Untrusted input: DNS
// answers and the policy host's response (bounded: 8 KiB of head, 64 KiB of body, one
// fetch_timeout for the whole fetch). Logs: `mta_sts` (warn) when a fetch fails.
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
#include "mta/dns/resolver.h"
#include "mta/tls/tls.h"

namespace moat::mta::sts {

class PolicyCache {
 public:
  // The policy for a domain; null when it has none (or none could be had and none is cached).
  using Done = std::function<void(std::shared_ptr<const Policy>)>;
  // `httpsPort`: 443 (§3.3); tests use a port of their own.
  PolicyCache(uv_loop_t* loop, dns::Resolver* resolver, uint16_t httpsPort = 443)
      : loop_(loop), resolver_(resolver), httpsPort_(httpsPort) {}
  ~PolicyCache();
  PolicyCache(const PolicyCache&) = delete;
  PolicyCache& operator=(const PolicyCache&) = delete;

  // Looks up the TXT id, then uses the cached policy if its id is the same and it has not
  // expired, else fetches (one fetch per domain at a time: later callers wait for it). A
  // failed fetch falls back to the unexpired cached policy (§5.1). `tls` verifies the policy
  // host (system store + [mta_sts] ca_file). `done` runs once, possibly before this returns.
  void get(const std::string& domain, std::shared_ptr<tls::TlsContext> tls, uint64_t timeoutMs, Done done);

 private:
  struct Entry {
    std::shared_ptr<const Policy> policy;
    std::chrono::steady_clock::time_point expires;
  };
  struct Fetch;
  std::shared_ptr<const Policy> cached(const std::string& domain) const;
  void finish(const std::string& domain, std::shared_ptr<const Policy> fetched, const std::string& error);
  uv_loop_t* loop_;
  dns::Resolver* resolver_;
  uint16_t httpsPort_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  std::map<std::string, Entry> cache_;
  std::map<std::string, std::vector<Done>> waiting_;  // domains with a fetch under way
};

// Fetches https://mta-sts.DOMAIN/.well-known/mta-sts.txt (§3.3) and parses it. `done(policy,
// error)` runs once on the loop; policy is null on failure.
void fetchPolicy(uv_loop_t* loop, dns::Resolver& resolver, const std::string& domain,
                 std::shared_ptr<tls::TlsContext> tls, uint64_t timeoutMs, uint16_t port,
                 std::function<void(std::shared_ptr<Policy>, const std::string& error)> done);

}  // namespace moat::mta::sts
