// mta/server/metrics.h — process-wide counters for /metrics (Prometheus text format). Only
// the loop thread writes them; the metrics endpoint runs on the same loop, so plain integers.
// They live for the process: a SIGHUP reload swaps the policy, the counts carry on.
//
// Label values are never a peer's choice: filter names are the filters' own constants (and
// at most kMaxFilters of them), results outside the known RFC 7208 / RFC 8601 sets are
// counted as "other".
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moat::mta::dns {
struct ResolverStats;  // mta/dns/cares_resolver.h
}

namespace moat::mta::server {

// A Prometheus histogram over fixed upper bounds: per-bucket counts, rendered cumulative
// with the +Inf bucket, _sum and _count as the text format wants.
class Histogram {
 public:
  explicit Histogram(std::span<const double> bounds) : bounds_(bounds), buckets_(bounds.size()) {}
  void observe(double value);
  uint64_t count() const { return count_; }
  double sum() const { return sum_; }
  // The sample lines of `name` (no HELP/TYPE); `labels` (e.g. `filter="spf"`) go before le.
  void render(std::string& out, std::string_view name, std::string_view labels = {}) const;

 private:
  std::span<const double> bounds_;  // static storage
  std::vector<uint64_t> buckets_;   // not cumulative: one per bound
  uint64_t count_ = 0;
  double sum_ = 0;
};

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
  // Each [[route]] tls_cert in force (client certificates): its path → notAfter.
  std::map<std::string, int64_t> clientCertificateNotAfter;
  // The spool's free space (the reading the MAIL-time floor check uses) and the floor
  // (server.min_free_disk); read when /metrics is rendered. Unset: the gauges are left out.
  std::function<uint64_t()> spoolFreeBytes;
  std::function<uint64_t()> spoolMinFreeBytes;
  // Delivery latency (arrival to delivery), seconds.
  static constexpr std::array<double, 10> kBuckets = {0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300, 3600, 86400};
  Histogram deliveryLatency{kBuckets};

  // Each filter run (every stage): its verdict and its wall time from run() to done(), DNS
  // and thread-pool waits included.
  static constexpr std::array<const char*, 6> kVerdicts = {"continue", "tag",      "quarantine",
                                                           "reject",   "tempfail", "disconnect"};
  static constexpr std::array<double, 14> kFilterBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                            0.25,  0.5,    1,     2.5,  5,     10,   30};
  static constexpr size_t kMaxFilters = 32;  // more names than Moat has filters: the rest is "other"
  struct FilterStats {
    std::array<uint64_t, kVerdicts.size()> verdicts{};
    Histogram duration{kFilterBuckets};
  };
  std::map<std::string, FilterStats, std::less<>> filters;
  // `verdict`: filters::verdictName(); `seconds`: the filter's wall time.
  void observeFilter(std::string_view filter, std::string_view verdict, double seconds);
  // Shows `filter`'s series at zero before its first run (at start and at each reload, for
  // the filters the config turns on), so rate() and absent() work from the first scrape.
  void registerFilter(std::string_view filter);

  // Authentication results. SPF: the MAIL FROM identity's result (RFC 7208 §2.6), once per
  // transaction checked. DKIM: one per signature (RFC 8601 §2.7.1 names; "none" for a
  // message without one). DMARC: the result, and what Moat did (the disposition) when a
  // record applied (`disposition` empty: none did, not counted).
  static constexpr std::array<const char*, 8> kSpfResults = {"none",     "neutral",   "pass",      "fail",
                                                             "softfail", "temperror", "permerror", "other"};
  static constexpr std::array<const char*, 8> kDkimResults = {"none",    "pass",      "fail",      "policy",
                                                              "neutral", "temperror", "permerror", "other"};
  static constexpr std::array<const char*, 6> kDmarcResults = {"none",      "pass",      "fail",
                                                               "temperror", "permerror", "other"};
  static constexpr std::array<const char*, 4> kDmarcDispositions = {"none", "quarantine", "reject", "other"};
  std::array<uint64_t, kSpfResults.size()> spfResults{};
  std::array<uint64_t, kDkimResults.size()> dkimResults{};
  std::array<uint64_t, kDmarcResults.size()> dmarcResults{};
  std::array<uint64_t, kDmarcDispositions.size()> dmarcDispositions{};
  void countSpf(std::string_view result);
  void countDkim(std::string_view result);
  void countDmarc(std::string_view result, std::string_view disposition);

  // The daemon's resolver's counts, read when /metrics is rendered. Unset: left out.
  std::function<dns::ResolverStats()> dnsStats;

  void observeLatency(double seconds) { deliveryLatency.observe(seconds); }
  // Messages waiting in the queue (active and held: what queue.max_messages counts).
  uint64_t queued() const { return queueActive + queueHold; }
  // A refusal with reply `code` (4xx or 5xx) at `stage`: moat_rejects_total, and at MAIL or
  // at the end of DATA also moat_messages_rejected_total / moat_messages_tempfailed_total.
  void countReject(RejectStage stage, int code);
  std::string prometheus() const;
};

Metrics& metrics();

}  // namespace moat::mta::server
