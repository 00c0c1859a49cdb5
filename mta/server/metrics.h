// mta/server/metrics.h — process-wide counters for /metrics (Prometheus text format). Only
// the loop thread writes them; the metrics endpoint runs on the same loop, so plain integers.
#pragma once
#include <array>
#include <cstdint>
#include <string>

namespace moat::mta::server {

struct Metrics {
  uint64_t sessionsTotal = 0;
  uint64_t sessionsActive = 0;
  uint64_t sessionsRefused = 0;  // connection limits, draining
  uint64_t authPassed = 0, authFailed = 0;  // SMTP AUTH: credentials accepted / refused
  uint64_t messagesAccepted = 0;
  uint64_t messagesRejected = 0;
  uint64_t messagesTempFailed = 0;
  uint64_t messagesQuarantined = 0;
  uint64_t recipientsDelivered = 0;
  uint64_t recipientsDeferred = 0;
  uint64_t recipientsBounced = 0;
  uint64_t messagesExpired = 0;
  uint64_t dsnsGenerated = 0;
  uint64_t queueActive = 0, queueHold = 0, queueQuarantine = 0;
  // Delivery latency (arrival to delivery), seconds; cumulative buckets as Prometheus wants.
  static constexpr std::array<double, 10> kBuckets = {0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300, 3600, 86400};
  std::array<uint64_t, kBuckets.size()> latencyBuckets{};
  uint64_t latencyCount = 0;
  double latencySum = 0;

  void observeLatency(double seconds);
  std::string prometheus() const;
};

Metrics& metrics();

}  // namespace moat::mta::server
