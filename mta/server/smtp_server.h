// mta/server/smtp_server.h — the inbound side: listeners from the config, connection limits
// (in total and per client IP), the sessions, and graceful draining on SIGTERM.
#pragma once
#include <uv.h>

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "filters/filter.h"
#include "mta/dns/resolver.h"
#include "mta/net/connection.h"
#include "mta/net/proxy_header.h"
#include "mta/runtime/uv.h"
#include "mta/server/greylist.h"
#include "mta/server/metrics.h"
#include "mta/server/rate_counter.h"
#include "mta/server/recipient_verifier.h"
#include "mta/server/snapshot.h"
#include "queue/spool.h"

namespace moat::mta::server {

// queue.max_messages reached (0: no limit): MAIL FROM gets 452 4.3.1 until the queue shrinks.
inline bool queueFull(const policy::Config& c) { return c.maxQueued > 0 && metrics().queued() >= c.maxQueued; }

class SmtpSession;

// Who a session talks to: the TCP peer, or on a proxy_protocol listener the client its PROXY
// header names, with the balancer's address in `proxy`.
struct SessionPeer {
  IpAddress ip;
  uint16_t port = 0;
  std::optional<IpAddress> proxy;
};

// What every session of one server shares. Loop thread only.
struct ServerShared {
  uv_loop_t* loop = nullptr;
  std::shared_ptr<const Snapshot> snapshot;  // the current one; sessions copy it at start
  std::shared_ptr<queue::Spool> spool;
  dns::Resolver* resolver = nullptr;
  // A message is durable: schedule it (with its bytes, which the delivery may reuse).
  std::function<void(const queue::Envelope&, std::shared_ptr<const queue::MessageData>)> onQueued;
  // A message the DMARC filter evaluated was accepted or rejected ([dmarc_reports] counts it).
  std::function<void(const filters::MessageContext&)> onDmarc;
  bool draining = false;
  // [relay] verify_recipients: the probes and their cache, shared by every session (and
  // every snapshot: an answer outlives a reload).
  std::unique_ptr<RecipientVerifier> verifier;

  // SMTP AUTH's crypt(3) checks share the thread pool with the spool's writes and fsyncs and
  // the filters; clients that merely guess passwords must not hold all of it. At most half
  // the pool runs checks (and they count in the filters' share, filters::offloadFilterWork);
  // the rest wait here, in order. `start` runs when a slot is free and
  // returns whether it took it (false: its session is gone); a check that took one calls
  // releaseCrypt() when it is done.
  void acquireCrypt(std::function<bool()> start);
  void releaseCrypt();
  void startCrypts();
  unsigned cryptRunning_ = 0;
  std::deque<std::function<bool()>> cryptWaiting_;

  // [rate_limits]: what each limit has counted, for the whole process (every session, every
  // snapshot: the counts outlive a reload, which applies its new limits to them; saved to
  // SPOOL_DIR/rate_limit.state by the daemon).
  RateCounter rateMessagesPerClient, rateRecipientsPerClient, rateMessagesPerSender;
  // [greylist]: the triplets and client networks, for the whole process (kept across a
  // reload; saved to SPOOL_DIR/greylist.state by the daemon).
  Greylist greylist;

  // Free disk space, refreshed at most once a second (statvfs is cheap but not free).
  uint64_t freeDisk();
  uint64_t freeDiskCached_ = UINT64_MAX;
  uint64_t freeDiskCheckedMs_ = 0;
};

class SmtpServer {
 public:
  SmtpServer(uv_loop_t* loop, std::shared_ptr<queue::Spool> spool, dns::Resolver* resolver,
             std::function<void(const queue::Envelope&, std::shared_ptr<const queue::MessageData>)> onQueued);
  ~SmtpServer();

  // Opens every [[listener]] of the snapshot; false with `error` if one cannot be bound.
  bool start(std::shared_ptr<const Snapshot> snapshot, std::string& error);
  // New sessions use the new snapshot; listeners stay as they are (a changed listener list
  // needs a restart, which reload() reports).
  void reload(std::shared_ptr<const Snapshot> snapshot);
  // Every message the DMARC filter evaluated, once it is accepted (queued or quarantined) or
  // rejected at the end of its data: `fn` runs on the loop.
  void onDmarcEvaluated(std::function<void(const filters::MessageContext&)> fn) { shared_.onDmarc = std::move(fn); }
  // Stops accepting; sessions finish their current transaction and close. `done` runs when
  // the last session is gone. A client must not hold the stop (and so the restart, while no
  // listener is open) for long: after kDrainGraceMs every session still open gets 421 and
  // is closed, but for those whose message is past the end of its data, which are answered.
  void drain(std::function<void()> done);
  // Ports actually bound, in listener order (for tests with port 0).
  std::vector<uint16_t> boundPorts() const;
  size_t sessionCount() const { return sessions_.size(); }
  // The spool's free space as the MAIL-time floor check sees it (cached for a second), and
  // the floor (server.min_free_disk of the current snapshot).
  uint64_t freeDisk();
  uint64_t minFreeDisk() const;
  // Why no mail can be taken now ("" when it can): draining, or the spool under the floor.
  std::string whyNoMail();
  // [greylist]'s table, which the daemon saves and restores.
  Greylist& greylist() { return shared_.greylist; }
  // [rate_limits]' counters, in RateLimit's order (Metrics::kRateLimits), which the daemon
  // saves and restores.
  std::vector<RateCounter*> rateCounters() {
    return {&shared_.rateMessagesPerClient, &shared_.rateRecipientsPerClient, &shared_.rateMessagesPerSender};
  }

 private:
  void accept(size_t listener, std::shared_ptr<net::Connection> conn);
  // A proxy_protocol listener: the PROXY header first, from a peer in proxy_networks.
  void acceptFromProxy(size_t listener, std::shared_ptr<net::Connection> conn);
  void proxyHeaderRead(size_t listener, net::ProxyHeaderReader* reader, std::shared_ptr<net::Connection> conn,
                       const std::optional<net::ProxyHeader>& header, const std::string& error);
  // The connection policy for `peer` (limits, rate, allow/block), then the session.
  void admit(size_t listener, std::shared_ptr<net::Connection> conn, const SessionPeer& peer);
  // The listener as the current snapshot has it (proxy_networks and proxy_timeout are
  // reloaded), else as it was started.
  const policy::Listener& currentListener(size_t listener) const;
  void sessionEnded(SmtpSession* session, const std::string& key);
  // [connection] max_rate_per_ip: whether the client `key` (runtime/ip.h clientKey: an IPv4
  // address, an IPv6 /64) may open one more connection this minute (and counts it if so).
  bool rateAllows(const std::string& key, unsigned perMinute);

  ServerShared shared_;
  std::vector<std::unique_ptr<net::Listener>> listeners_;
  std::vector<policy::Listener> listenerConfigs_;
  std::map<SmtpSession*, std::shared_ptr<SmtpSession>> sessions_;
  // smtps listeners' TLS contexts (null for other modes), by listener: set at start and by
  // each reload from its snapshot, so a new connection takes the certificate in force. A
  // reload whose config no longer has the listener keeps the last one (the listener runs until
  // the restart the reload's note asks for).
  std::vector<std::shared_ptr<tls::TlsContext>> implicitTls_;
  // Takes the snapshot's certificates: implicitTls_, and each TLS listener's expiry for
  // /metrics (moat_tls_certificate_expiry_timestamp_seconds).
  void applyCertificates();
  // Connections whose PROXY header is awaited (they count towards limits.max_connections).
  std::map<net::ProxyHeaderReader*, std::unique_ptr<net::ProxyHeaderReader>> proxyReaders_;
  std::vector<std::unique_ptr<net::ProxyHeaderReader>> proxyGraveyard_;
  std::map<std::string, unsigned> perIp_;  // open sessions by client key
  // The connections taken in the last minute, oldest first, and their count by client key:
  // at most max_rate_per_ip entries per key, whatever a client tries.
  std::deque<std::pair<int64_t, std::string>> rateEvents_;
  std::unordered_map<std::string, unsigned> rateCount_;
  std::function<void()> drained_;
  // As the queue manager's for deliveries: a stop stays well within systemd's
  // TimeoutStopSec (deploy/moat.service) with both.
  static constexpr uint64_t kDrainGraceMs = 20'000;
  uv::Timer drainTimer_;
  // Sessions that ended are released on the next loop turn, not inside their own callback.
  std::vector<std::shared_ptr<SmtpSession>> graveyard_;
  uv::Timer reaper_;
};

}  // namespace moat::mta::server
