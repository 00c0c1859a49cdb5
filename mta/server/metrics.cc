// mta/server/metrics.cc — see metrics.h.
#include "mta/server/metrics.h"

#include <algorithm>
#include <cstdio>

#include "mta/dns/cares_resolver.h"

namespace moat::mta::server {

Metrics& metrics() {
  static Metrics m;
  return m;
}

void Histogram::observe(double value) {
  auto at = std::lower_bound(bounds_.begin(), bounds_.end(), value);  // the first bound >= value
  if (at != bounds_.end()) ++buckets_[static_cast<size_t>(at - bounds_.begin())];
  ++count_;
  sum_ += value;
}

void Histogram::render(std::string& out, std::string_view name, std::string_view labels) const {
  std::string prefix = std::string(name) + "_bucket{" + std::string(labels) + (labels.empty() ? "" : ",") + "le=\"";
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    char le[32];
    std::snprintf(le, sizeof le, "%g", bounds_[i]);
    cumulative += buckets_[i];
    out += prefix + le + "\"} " + std::to_string(cumulative) + "\n";
  }
  out += prefix + "+Inf\"} " + std::to_string(count_) + "\n";
  std::string braces = labels.empty() ? "" : "{" + std::string(labels) + "}";
  char sum[64];
  std::snprintf(sum, sizeof sum, "%.6f", sum_);
  out += std::string(name) + "_sum" + braces + " " + sum + "\n";
  out += std::string(name) + "_count" + braces + " " + std::to_string(count_) + "\n";
}

namespace {

// The index of `value` in `names`, whose last entry is "other" (for anything else).
template <size_t N>
size_t known(const std::array<const char*, N>& names, std::string_view value) {
  for (size_t i = 0; i + 1 < N; ++i)
    if (value == names[i]) return i;
  return N - 1;
}

// A label value in the text exposition format: backslash, double quote and line feed escaped.
std::string labelValue(std::string_view v) {
  std::string out;
  for (char ch : v) {
    if (ch == '\\' || ch == '"') out += '\\';
    if (ch == '\n') {
      out += "\\n";
      continue;
    }
    out += ch;
  }
  return out;
}
}  // namespace

void Metrics::registerFilter(std::string_view filter) {
  if (filters.find(filter) == filters.end() && filters.size() < kMaxFilters) filters.try_emplace(std::string(filter));
}

void Metrics::observeFilter(std::string_view filter, std::string_view verdict, double seconds) {
  auto it = filters.find(filter);
  if (it == filters.end()) it = filters.try_emplace(std::string(filters.size() < kMaxFilters ? filter : "other")).first;
  auto v = std::find(kVerdicts.begin(), kVerdicts.end(), verdict);
  if (v != kVerdicts.end()) ++it->second.verdicts[static_cast<size_t>(v - kVerdicts.begin())];
  it->second.duration.observe(seconds);
}

void Metrics::countSpf(std::string_view result) { ++spfResults[known(kSpfResults, result)]; }
void Metrics::countDkim(std::string_view result) { ++dkimResults[known(kDkimResults, result)]; }
void Metrics::countDmarc(std::string_view result, std::string_view disposition) {
  ++dmarcResults[known(kDmarcResults, result)];
  if (!disposition.empty()) ++dmarcDispositions[known(kDmarcDispositions, disposition)];
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
  if (!certificateNotAfter.empty() || !clientCertificateNotAfter.empty()) {
    out +=
        "# HELP moat_tls_certificate_expiry_timestamp_seconds When the certificate each TLS listener serves "
        "(by listener address), or each route presents as its client certificate (by client_cert file), "
        "expires (its notAfter, Unix seconds).\n"
        "# TYPE moat_tls_certificate_expiry_timestamp_seconds gauge\n";
    for (const auto& [listener, notAfter] : certificateNotAfter)
      out += "moat_tls_certificate_expiry_timestamp_seconds{listener=\"" + listener + "\"} " +
             std::to_string(notAfter) + "\n";
    for (const auto& [file, notAfter] : clientCertificateNotAfter)
      out += "moat_tls_certificate_expiry_timestamp_seconds{client_cert=\"" + labelValue(file) + "\"} " +
             std::to_string(notAfter) + "\n";
  }
  out += "# HELP moat_delivery_latency_seconds From arrival to delivery, per recipient.\n"
         "# TYPE moat_delivery_latency_seconds histogram\n";
  deliveryLatency.render(out, "moat_delivery_latency_seconds");
  if (!filters.empty()) {
    out +=
        "# HELP moat_filter_verdicts_total Filter runs by filter and verdict (every stage).\n"
        "# TYPE moat_filter_verdicts_total counter\n";
    for (const auto& [name, f] : filters)
      for (size_t v = 0; v < kVerdicts.size(); ++v)
        out += "moat_filter_verdicts_total{filter=\"" + name + "\",verdict=\"" + kVerdicts[v] + "\"} " +
               std::to_string(f.verdicts[v]) + "\n";
    out +=
        "# HELP moat_filter_duration_seconds Wall time of each filter run, from its start to its result (DNS "
        "and thread-pool waits included), by filter.\n"
        "# TYPE moat_filter_duration_seconds histogram\n";
    for (const auto& [name, f] : filters)
      f.duration.render(out, "moat_filter_duration_seconds", "filter=\"" + name + "\"");
  }
  auto byResult = [&](const char* name, const char* help, const char* label, const auto& names, const auto& counts) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n";
    for (size_t i = 0; i < names.size(); ++i)
      out += std::string(name) + "{" + label + "=\"" + names[i] + "\"} " + std::to_string(counts[i]) + "\n";
  };
  byResult("moat_spf_results_total", "SPF results (RFC 7208) of the MAIL FROM identity, one per transaction checked.",
           "result", kSpfResults, spfResults);
  byResult("moat_dkim_results_total",
           "DKIM verification results (RFC 8601 names), one per signature; none: a message without one.", "result",
           kDkimResults, dkimResults);
  byResult("moat_dmarc_results_total", "DMARC results (RFC 7489), one per message checked.", "result", kDmarcResults,
           dmarcResults);
  byResult("moat_dmarc_dispositions_total",
           "What Moat did with each message a DMARC record applied to (RFC 7489 Appendix C disposition).",
           "disposition", kDmarcDispositions, dmarcDispositions);
  if (dnsStats) {
    dns::ResolverStats st = dnsStats();
    out +=
        "# HELP moat_dns_queries_total DNS lookups sent to the nameservers (cache misses; identical lookups in "
        "flight count once), by type and final result.\n"
        "# TYPE moat_dns_queries_total counter\n";
    for (size_t t = 0; t < dns::kCountedTypes.size(); ++t)
      for (size_t r = 0; r < dns::kLookupResults.size(); ++r)
        out += std::string("moat_dns_queries_total{type=\"") + dns::kCountedTypeNames[t] + "\",result=\"" +
               dns::kLookupResults[r] + "\"} " + std::to_string(st.lookups[t][r]) + "\n";
    counter("moat_dns_cache_hits_total", "DNS lookups answered from the resolver's cache.", st.cacheHits);
  }
  return out;
}

}  // namespace moat::mta::server
