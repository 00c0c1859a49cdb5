// mta/daemon/tlsrpt.h — SMTP TLS Reporting (RFC 8460) for delivery by MX: the per-policy-domain
// aggregate of the TLS sessions the queue manager opens (§4.3's result types), the
// _smtp._tls TXT record (§3), the JSON report (§4.4), its gzip (§5.3: application/tlsrpt+gzip),
// the multipart/report message that carries it (§5.3) and the HTTPS upload's URI and request
// (§5.2). Pure: no I/O and no logs; the queue manager feeds the aggregator on the loop, looks
// the record up through the resolver, builds and gzips the reports on the thread pool and
// posts them with https_client.h.
// Untrusted input: the TXT records (from DNS: rua URIs are bounded and checked), the MX host
// names and the MX's greeting name (kept only when it looks like a host name) and, through
// the aggregator, nothing else a peer sends (result types are Moat's own words). Memory is bounded: at most
// kMaxDomains domains, kMaxPoliciesPerDomain policies per domain and kMaxDetailsPerPolicy
// failure-detail rows per policy; what does not fit is counted in dropped() (a session of a
// domain over the cap) or in the policy's totals only (a failure row over the cap).
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "mta/daemon/report_mail.h"

namespace moat::mta::daemon::tlsrpt {

// §4.3.1-4.3.2's policy types.
enum class PolicyType { Sts, Tlsa, NoPolicyFound };
std::string_view policyTypeName(PolicyType t);  // "sts", "tlsa", "no-policy-found"

// One "policy" object of a report: what a session was held to.
struct Policy {
  PolicyType type = PolicyType::NoPolicyFound;
  std::vector<std::string> policyString;  // sts: the policy's lines; tlsa: the records, "3 1 1 HEX"
  std::vector<std::string> mxHost;        // sts: the policy's mx patterns
  auto operator<=>(const Policy&) const = default;
  bool operator==(const Policy&) const = default;
};

// The policy-string an MTA-STS policy is reported with (§4.4): its lines as the policy file
// gives them (version, mode, mx..., max_age).
std::vector<std::string> stsPolicyLines(std::string_view mode, const std::vector<std::string>& mx, uint32_t maxAge);
// A TLSA record in presentation form (RFC 6698 §2.2): "3 1 1 0123ABCD..." (data in upper hex).
std::string tlsaPresentation(uint8_t usage, uint8_t selector, uint8_t mtype, std::string_view data);

// The result type for a TLS failure the SMTP client or the policy fetch reported, from its
// error text (mta/tls, mta/client): "STARTTLS not offered" / "STARTTLS refused" →
// starttls-not-supported, an X.509 "hostname mismatch" → certificate-host-mismatch, an
// expired or not yet valid certificate → certificate-expired, another failed verification →
// certificate-not-trusted (tlsa-invalid when `dane`: the TLSA records did not match), any
// other TLS error → validation-failure. "" when the text names no TLS failure (a refused
// connection, a timeout before STARTTLS): such an attempt is no TLS session to report.
std::string classifyTlsError(std::string_view error, bool dane);
// A failed MTA-STS policy fetch (mta_sts.cc's error text): "invalid policy: ..." →
// sts-policy-invalid, a TLS/certificate failure of the policy host → sts-webpki-invalid,
// anything else → sts-policy-fetch-error.
std::string classifyStsFetchError(std::string_view error);

// One failure-details row (§4.4): result-type, receiving-mx-hostname, receiving-ip and, when
// the session got that far, sending-mta-ip (the local address of the outbound connection) and
// receiving-mx-helo (the name the MX gave in its greeting, or in its EHLO reply when one came).
struct Failure {
  std::string resultType, mxHost, ip, sendingIp, helo;
  auto operator<=>(const Failure&) const = default;
};
struct PolicyResults {
  uint64_t successes = 0, failures = 0;
  std::map<Failure, uint64_t> details;  // at most kMaxDetailsPerPolicy rows
};
struct DomainResults {
  std::map<Policy, PolicyResults> policies;
};
using Results = std::map<std::string, DomainResults>;  // by policy domain (lower case)

class Aggregator {
 public:
  static constexpr size_t kMaxDomains = 10000;
  static constexpr size_t kMaxPoliciesPerDomain = 16;
  static constexpr size_t kMaxDetailsPerPolicy = 100;
  void success(const std::string& domain, const Policy& policy);
  // `mxHost`, `ip`: the receiving MX's name and address ("" when not known, e.g. a policy fetch);
  // `sendingIp`, `helo`: Failure's, "" when not known. The MX's helo is untrusted: it is kept
  // only when it is a plausible host name (at most 255 octets of letters, digits, '-', '.',
  // '_', or an address literal in brackets), else left out.
  void failure(const std::string& domain, const Policy& policy, const std::string& resultType,
               const std::string& mxHost, const std::string& ip, const std::string& sendingIp = "",
               const std::string& helo = "");
  // Adds results gathered before (a restart's saved aggregate), within the same bounds.
  void add(const std::string& domain, const Policy& policy, const PolicyResults& r);
  // Hands over what was gathered (the period's results) and starts afresh.
  Results take();
  const Results& results() const { return results_; }
  uint64_t dropped() const { return dropped_; }

 private:
  PolicyResults* slot(const std::string& domain, const Policy& policy);
  Results results_;
  uint64_t dropped_ = 0;
};

// The aggregate as a file (SPOOL_DIR/tlsrpt.state, the checkpoint the queue manager writes
// periodically, at a period's end and at a graceful stop, and reads at the next start), so a
// restart or a crash does not lose the period under way: one JSON object,
// {"moat-tlsrpt":1,"start":MS,"interval":MS,"domains":[...]}. decodeState is false for any
// text encodeState did not write (the file is Moat's own, but read within bounds all the same:
// the caller reads at most kMaxStateBytes, and `into` keeps its caps).
constexpr size_t kMaxStateBytes = 64u << 20;
std::string encodeState(int64_t startMs, int64_t intervalMs, const Results& results);
bool decodeState(std::string_view text, int64_t& startMs, int64_t& intervalMs, Aggregator& into);

// The period's start and the report's dates (report_mail.h, shared with DMARC reports).
using report_mail::periodStart;
using report_mail::rfc3339;

// RFC 8460 §3: of the TXT records at _smtp._tls.DOMAIN, those that begin "v=TLSRPTv1" count;
// exactly one must, or there is no reporting. Its rua= is a comma-separated list of URIs.
struct Record {
  bool ok = false;
  std::vector<std::string> rua;  // as written, at most kMaxRua (mailto: and https: both)
  std::string error;             // !ok: why, for the log
};
constexpr size_t kMaxRua = 10;
Record parseRecord(const std::vector<std::string>& txt);
// The address of a "mailto:" URI (RFC 6068: %-decoded, anything after '?' left out); "" when
// the URI is not mailto: or its address is not one Moat could send to (no '@', a control
// character, a space, a comma).
std::string mailtoAddress(std::string_view uri);

// An https: rua (§3, §5.2): the host (a DNS name, lower case; address literals are not
// taken), the port (443 unless the URI names one) and the request target (path and query,
// "/" when the URI has none; the fragment left out). nullopt for anything else: another
// scheme, user information, a URI over kMaxUriBytes, a byte outside printable ASCII.
struct HttpsUri {
  std::string host;
  uint16_t port = 443;
  std::string target;
};
constexpr size_t kMaxUriBytes = 2048;
std::optional<HttpsUri> httpsUri(std::string_view uri);
// The §5.2 upload: POST of the gzipped report as application/tlsrpt+gzip, "Connection: close".
std::string httpsReportRequest(const HttpsUri& uri, std::string_view gzipped);

// One report (§4.4).
struct ReportInfo {
  std::string organization, contact, reportId, domain;
  int64_t startSeconds = 0, endSeconds = 0;  // the period [start, end)
};
std::string reportJson(const ReportInfo& info, const DomainResults& results);

// gzip (RFC 1952) and its inverse (report_mail.h).
using report_mail::gunzip;
using report_mail::gzip;

// The report mail (§5.3): multipart/report; report-type="tlsrpt", a text/plain part and the
// gzipped JSON as application/tlsrpt+gzip (base64), with TLS-Report-Domain,
// TLS-Report-Submitter, the §5.3 Subject and the file name
// "submitter!domain!start!end!id.json.gz". CRLF line endings, 7-bit.
struct MessageInfo {
  std::string from, to, submitter, messageId;  // messageId without the angle brackets
  int64_t dateMs = 0;
  ReportInfo report;
};
std::string reportMessage(const MessageInfo& info, std::string_view gzipped);

}  // namespace moat::mta::daemon::tlsrpt
