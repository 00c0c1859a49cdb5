// mta/server/metrics.cc — see metrics.h.
#include "mta/server/metrics.h"

#include <cstdio>

namespace moat::mta::server {

Metrics& metrics() {
  static Metrics m;
  return m;
}

void Metrics::observeLatency(double seconds) {
  for (size_t i = 0; i < kBuckets.size(); ++i)
    if (seconds <= kBuckets[i]) ++latencyBuckets[i];
  ++latencyCount;
  latencySum += seconds;
}

void Metrics::countReject(RejectStage stage, int code) {
  bool permanent = code >= 500;
  ++rejects[static_cast<size_t>(stage)][permanent ? 1 : 0];
  if (stage == RejectStage::Mail || stage == RejectStage::Data) permanent ? ++messagesRejected : ++messagesTempFailed;
}

std::string Metrics::prometheus() const {
  std::string out;
  auto counter = [&](const char* name, const char* help, uint64_t v, const char* type = "counter") {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " +
           std::to_string(v) + "\n";
  };
  // A counter by one label: one line per value.
  auto labelled = [&](const char* name, const char* help, const char* label,
                      std::initializer_list<std::pair<const char*, uint64_t>> values) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n";
    for (const auto& [value, n] : values)
      out += std::string(name) + "{" + label + "=\"" + value + "\"} " + std::to_string(n) + "\n";
  };
  counter("moat_sessions_total", "SMTP sessions accepted.", sessionsTotal);
  counter("moat_sessions_active", "SMTP sessions open now.", sessionsActive, "gauge");
  counter("moat_sessions_refused_total",
          "Connections refused at connect (421 for limits or shutdown, 554 for connection.block).", sessionsRefused);
  counter("moat_pregreet_total", "Clients that talked before the greeting was complete ([connection] pregreet_wait).",
          pregreets);
  counter(
      "moat_proxy_health_checks_total",
      "Connections on proxy_protocol listeners that a balancer closed without sending anything (TCP health checks).",
      proxyHealthChecks);
  labelled("moat_auth_total", "SMTP AUTH attempts by outcome.", "result", {{"pass", authPassed}, {"fail", authFailed}});
  labelled("moat_verify_total",
           "RCPTs answered by recipient verification (relay.verify_recipients), by the probe's result or from the "
           "cache.",
           "result",
           {{"valid", verifyValid}, {"invalid", verifyInvalid}, {"unknown", verifyUnknown}, {"cached", verifyCached}});
  labelled("moat_greylist_total",
           "RCPTs greylisting decided: deferred (450 4.7.1), passed (a known triplet) or allowed (an auto-allowed "
           "client network).",
           "result", {{"deferred", greylistDeferred}, {"passed", greylistPassed}, {"allowed", greylistAllowed}});
  static_assert(kRateLimits.size() == 3);
  labelled("moat_rate_limited_total",
           "MAIL and RCPT commands refused with 450 4.7.1 for being over a [rate_limits] limit, by limit.", "limit",
           {{kRateLimits[0], rateLimited[0]}, {kRateLimits[1], rateLimited[1]}, {kRateLimits[2], rateLimited[2]}});
  counter("moat_messages_accepted_total", "Messages queued (250 after DATA).", messagesAccepted);
  counter("moat_messages_rejected_total",
          "Mail transactions refused with a 5xx at MAIL FROM or at the end of DATA/BDAT (single recipients "
          "refused at RCPT: moat_rejects_total{stage=\"rcpt\"}).",
          messagesRejected);
  counter("moat_messages_tempfailed_total",
          "Mail transactions refused with a 4xx at MAIL FROM or at the end of DATA/BDAT, spool write failures "
          "included (single recipients refused at RCPT: moat_rejects_total{stage=\"rcpt\"}).",
          messagesTempFailed);
  out +=
      "# HELP moat_rejects_total Refusals sent to SMTP clients (each reject log line), by stage and reply class.\n"
      "# TYPE moat_rejects_total counter\n";
  static constexpr const char* kStages[] = {"connect", "mail", "rcpt", "data"};
  for (size_t st = 0; st < rejects.size(); ++st)
    for (size_t cl = 0; cl < 2; ++cl)
      out += std::string("moat_rejects_total{stage=\"") + kStages[st] + "\",class=\"" + (cl ? "5xx" : "4xx") + "\"} " +
             std::to_string(rejects[st][cl]) + "\n";
  counter("moat_messages_quarantined_total", "Messages put in quarantine.", messagesQuarantined);
  counter("moat_recipients_delivered_total", "Recipients delivered.", recipientsDelivered);
  counter("moat_recipients_deferred_total", "Recipient delivery attempts deferred (4xx, network).", recipientsDeferred);
  counter("moat_recipients_bounced_total",
          "Recipients failed for good, whatever the reason (a next hop's 5xx, DNS, expiry, moat queue bounce), "
          "counted once their failure DSN is written or none is owed.",
          recipientsBounced);
  counter("moat_messages_expired_total",
          "Messages that reached queue.max_lifetime (their pending recipients count as bounced).", messagesExpired);
  counter("moat_dsns_total", "Delivery status notifications generated.", dsnsGenerated);
  counter("moat_tlsrpt_reports_total", "SMTP TLS reports (RFC 8460) queued.", tlsrptReports);
  counter("moat_dmarc_reports_total", "DMARC aggregate reports (RFC 7489) queued.", dmarcReports);
  out += "# HELP moat_queue_messages Messages in the queue by state.\n# TYPE moat_queue_messages gauge\n";
  out += "moat_queue_messages{state=\"active\"} " + std::to_string(queueActive) + "\n";
  out += "moat_queue_messages{state=\"hold\"} " + std::to_string(queueHold) + "\n";
  out += "moat_queue_messages{state=\"quarantine\"} " + std::to_string(queueQuarantine) + "\n";
  if (spoolFreeBytes)
    counter("moat_spool_free_bytes", "Free space on the spool's file system for unprivileged use (statvfs).",
            spoolFreeBytes(), "gauge");
  if (spoolMinFreeBytes)
    counter("moat_spool_min_free_bytes", "server.min_free_disk: under it MAIL FROM is refused with 452 4.3.1.",
            spoolMinFreeBytes(), "gauge");
  if (!certificateNotAfter.empty()) {
    out +=
        "# HELP moat_tls_certificate_expiry_timestamp_seconds When the certificate each TLS listener serves "
        "expires (its notAfter, Unix seconds), by listener address.\n"
        "# TYPE moat_tls_certificate_expiry_timestamp_seconds gauge\n";
    for (const auto& [listener, notAfter] : certificateNotAfter)
      out += "moat_tls_certificate_expiry_timestamp_seconds{listener=\"" + listener + "\"} " +
             std::to_string(notAfter) + "\n";
  }
  out += "# HELP moat_delivery_latency_seconds From arrival to delivery, per recipient.\n"
         "# TYPE moat_delivery_latency_seconds histogram\n";
  for (size_t i = 0; i < kBuckets.size(); ++i) {
    char le[32];
    std::snprintf(le, sizeof le, "%g", kBuckets[i]);
    out += std::string("moat_delivery_latency_seconds_bucket{le=\"") + le + "\"} " +
           std::to_string(latencyBuckets[i]) + "\n";
  }
  out += "moat_delivery_latency_seconds_bucket{le=\"+Inf\"} " + std::to_string(latencyCount) + "\n";
  char sum[64];
  std::snprintf(sum, sizeof sum, "%.6f", latencySum);
  out += std::string("moat_delivery_latency_seconds_sum ") + sum + "\n";
  out += "moat_delivery_latency_seconds_count " + std::to_string(latencyCount) + "\n";
  return out;
}

}  // namespace moat::mta::server
