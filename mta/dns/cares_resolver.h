// mta/dns/cares_resolver.h — the daemon's Resolver: c-ares (1.18) driven by the libuv
// loop, never blocking. c-ares tells us which sockets to watch (sock_state_cb): each gets a
// uv_poll_t; one uv timer fires at c-ares' next deadline (ares_timeout) so retries and
// timeouts run. Answers go through a TTL cache (dns_cache.h) and identical queries in
// flight share one network query. Every lookup ends within `timeoutMs` (a deadline of our
// own: c-ares 1.18 spends tries x nameservers x doubling waits, and CNAME follow-ups start anew). CNAME chains are
// followed (the server's chain first; if it stops at a name the reply has no data for, we ask again, at most 8 times).
// Follows RFC 1035 (messages), RFC 2308 (negative caching), RFC 2181 (TTLs).
//
// Untrusted input: query names (from peers, via SPF/DKIM/DMARC/MX) and every reply.
// Logs: `dns_error` (warn) when c-ares cannot start or a nameserver is invalid.
// Counts (stats(), read by /metrics): lookups sent to the nameservers by type and final
// result, cache hits, coalesced calls.
//
// Threading: one resolver per loop; every call on the loop thread.
// Lifetime: destroy the resolver before its loop. The destructor calls every callback
// still pending exactly once, with TempFail and error "resolver shut down" (answers
// already received but not yet delivered are delivered as they are), before it returns;
// a query() made from such a callback fails at once the same way.
#pragma once
#include <ares.h>
#include <uv.h>

#include <array>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "mta/dns/dns_answer.h"
#include "mta/dns/dns_cache.h"
#include "mta/dns/resolver.h"
#include "mta/runtime/uv.h"

namespace moat::mta::dns {

struct CaresOptions {
  // "IP", "IP:PORT" or "[IPv6]:PORT"; empty = the servers of /etc/resolv.conf.
  std::vector<std::string> nameservers;
  // The whole lookup's budget (retries, other nameservers and CNAME follow-ups included):
  // its callback has an answer or a TempFail by then. The tries share it (c-ares doubles
  // the wait on each round, so with one nameserver the first try gets a third of it).
  unsigned timeoutMs = 2000;
  unsigned tries = 2;
  size_t cacheEntries = 10000;  // 0 disables the cache
  size_t cacheBytes = AnswerCache::kDefaultMaxBytes;
  TtlPolicy ttl;
};

// What the resolver counts, for /metrics (moat_dns_*). `lookups`: the lookups that went to
// the nameservers (a cache miss; identical ones in flight together count once), by the type
// asked (kCountedTypes; others are not counted) and the final result (kLookupResults).
inline constexpr std::array<RrType, 6> kCountedTypes = {RrType::A,   RrType::AAAA, RrType::MX,
                                                        RrType::TXT, RrType::PTR,  RrType::TLSA};
inline constexpr std::array<const char*, 6> kCountedTypeNames = {"A", "AAAA", "MX", "TXT", "PTR", "TLSA"};
inline constexpr std::array<const char*, 5> kLookupResults = {"answer", "nxdomain", "nodata", "error", "timeout"};
struct ResolverStats {
  uint64_t queries = 0;  // query() calls
  uint64_t cacheHits = 0;
  uint64_t coalesced = 0;  // calls that joined a query already in flight
  uint64_t sent = 0;       // queries handed to c-ares (incl. CNAME follow-ups)
  std::array<std::array<uint64_t, kLookupResults.size()>, kCountedTypes.size()> lookups{};
};

class CaresResolver final : public Resolver {
 public:
  CaresResolver(uv_loop_t* loop, CaresOptions options);
  CaresResolver(uv_loop_t* loop, std::vector<std::string> nameservers, unsigned timeoutMs = 2000,
                unsigned tries = 2);
  ~CaresResolver() override;
  CaresResolver(const CaresResolver&) = delete;
  CaresResolver& operator=(const CaresResolver&) = delete;

  // False if c-ares could not start or a nameserver was invalid; every query then fails
  // with TempFail and initError() as the reason.
  bool ok() const { return channel_ != nullptr; }
  const std::string& initError() const { return initError_; }

  void query(std::string_view name, RrType type, Callback cb) override;

  const ResolverStats& stats() const { return stats_; }
  size_t cacheSize() const { return cache_.size(); }
  void clearCache() { cache_.clear(); }

 private:
  struct Inflight {
    std::string name;  // canonical query name
    RrType type;
    std::vector<Callback> waiters;
    std::unique_ptr<uv::Timer> deadline;  // fails the lookup at timeoutMs, whatever c-ares does
  };
  struct Delivery {
    std::shared_ptr<const Answer> answer;
    Callback cb;
  };
  struct Call;         // one c-ares query (the arg of its callback)
  struct SocketWatch;  // one uv_poll_t for one c-ares socket

  bool init(uv_loop_t* loop);
  bool setServers();
  void send(const std::string& key, const std::string& qname, RrType type, int depth, uint32_t chainTtl,
            bool chainAuthenticated);
  void onReply(const Call& call, int status, const unsigned char* abuf, int alen);
  // `timedOut`: the lookup's deadline passed or c-ares gave up waiting (counted apart).
  void finish(const std::string& key, Answer answer, bool timedOut = false);
  void count(RrType type, Status status, bool timedOut);  // stats_.lookups
  void process(ares_socket_t readFd, ares_socket_t writeFd);
  void rearmTimer();
  void deliver();
  void onSocketState(ares_socket_t fd, bool readable, bool writable);

  static void sockStateCb(void* data, ares_socket_t fd, int readable, int writable);
  static void aresCallback(void* arg, int status, int timeouts, unsigned char* abuf, int alen);
  static void sendCallback(void* arg, int status, int timeouts, unsigned char* abuf, int alen);

  uv_loop_t* loop_;
  CaresOptions options_;
  ares_channel channel_ = nullptr;
  std::string initError_;
  bool shuttingDown_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  uv::Timer timer_;
  std::unordered_map<ares_socket_t, std::unique_ptr<SocketWatch>> sockets_;
  std::unordered_map<std::string, Inflight> inflight_;
  std::deque<Delivery> completed_;
  AnswerCache cache_;
  ResolverStats stats_;
};

}  // namespace moat::mta::dns
