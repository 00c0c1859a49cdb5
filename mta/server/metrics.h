// mta/server/metrics.h — process-wide counters for /metrics (Prometheus text format). Only
// the loop thread writes them; the metrics endpoint runs on the same loop, so plain integers.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <string>

namespace moat::mta::server {

// Where a refusal happened, for moat_rejects_total{stage}.
enum class RejectStage { Connect, Mail, Rcpt, Data };

struct Metrics {
  uint64_t sessionsTotal = 0;
  uint64_t sessionsActive = 0;
  uint64_t sessionsRefused = 0;  // connection limits, draining
  uint64_t pregreets = 0;        // clients that talked before the greeting ([connection] pregreet_wait)
  uint64_t proxyHealthChecks = 0;           // proxy_protocol connections closed by a balancer without a byte
  uint64_t authPassed = 0, authFailed = 0;  // SMTP AUTH: credentials accepted / refused
  // relay.verify_recipients: RCPTs answered by a probe of the next hop, by its result, or
  // from the cache.
  uint64_t verifyValid = 0, verifyInvalid = 0, verifyUnknown = 0, verifyCached = 0;
  uint64_t messagesAccepted = 0;
  // [rate_limits]: commands refused with 450 4.7.1, by limit (messages_per_client,
  // recipients_per_client, messages_per_sender).
  std::array<uint64_t, 3> rateLimited{};
  static constexpr std::array<const char*, 3> kRateLimits = {"messages_per_client", "recipients_per_client",
                                                             "messages_per_sender"};
  // [greylist]: RCPTs deferred (450 4.7.1), passed (a known triplet), allowed (a client
  // network auto-allowed).
  uint64_t greylistDeferred = 0, greylistPassed = 0, greylistAllowed = 0;
  // Transactions refused as a whole (at MAIL FROM or at the end of DATA/BDAT), by class.
  uint64_t messagesRejected = 0;
  uint64_t messagesTempFailed = 0;
  // Every refusal written as a `reject` log line, by stage and reply class (4xx, 5xx).
  std::array<std::array<uint64_t, 2>, 4> rejects{};
  uint64_t messagesQuarantined = 0;
  uint64_t recipientsDelivered = 0;
  uint64_t recipientsDeferred = 0;
  uint64_t recipientsBounced = 0;
  uint64_t messagesExpired = 0;
  uint64_t dsnsGenerated = 0;
  uint64_t tlsrptReports = 0;  // RFC 8460 reports queued
  uint64_t dmarcReports = 0;   // RFC 7489 aggregate reports queued
  uint64_t queueActive = 0, queueHold = 0, queueQuarantine = 0;
  // Each TLS listener's certificate in force: its address → notAfter (Unix seconds).
  std::map<std::string, int64_t> certificateNotAfter;
  // The spool's free space (the reading the MAIL-time floor check uses) and the floor
  // (server.min_free_disk); read when /metrics is rendered. Unset: the gauges are left out.
  std::function<uint64_t()> spoolFreeBytes;
  std::function<uint64_t()> spoolMinFreeBytes;
  // Delivery latency (arrival to delivery), seconds; cumulative buckets as Prometheus wants.
  static constexpr std::array<double, 10> kBuckets = {0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300, 3600, 86400};
  std::array<uint64_t, kBuckets.size()> latencyBuckets{};
  uint64_t latencyCount = 0;
  double latencySum = 0;

  void observeLatency(double seconds);
  // Messages waiting in the queue (active and held: what queue.max_messages counts).
  uint64_t queued() const { return queueActive + queueHold; }
  // A refusal with reply `code` (4xx or 5xx) at `stage`: moat_rejects_total, and at MAIL or
  // at the end of DATA also moat_messages_rejected_total / moat_messages_tempfailed_total.
  void countReject(RejectStage stage, int code);
  std::string prometheus() const;
};

Metrics& metrics();

}  // namespace moat::mta::server
