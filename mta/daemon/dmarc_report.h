// mta/daemon/dmarc_report.h — DMARC aggregate reports (RFC 7489 §7.2, Appendix C): the
// per-policy-domain aggregate of the inbound messages Moat evaluated against a DMARC record
// (one row per source IP, disposition, aligned results, override reason, identifiers and
// authentication results, with a count), the rua= destinations of the record and their
// External Destination Verification (§7.1), the XML report, its state file across a restart,
// and the report mail (§7.2.1.1). Pure: no I/O and no logs; DmarcReporter
// (dmarc_reporter.h) feeds the aggregate on the loop, looks the records up through the
// resolver and builds the reports on the thread pool.
// Untrusted input: everything in a row came from a peer (the client's address aside): the
// header From domain, the envelope sender's domain, the DKIM d= and s=, the SPF domains; and
// the TXT records (from DNS). Strings are bounded (kMaxField octets) and XML-escaped in the
// report; memory is bounded: at most kMaxDomains policy domains, kMaxRowsPerDomain rows per
// domain and kMaxAuthResults DKIM results per row; a message that fits nowhere is counted
// in dropped().
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "filters/filter.h"
#include "mta/daemon/report_mail.h"

namespace moat::mta::daemon::dmarc_report {

// policy_published: the record that applied (the last one seen in the period).
struct PolicyPublished {
  std::string domain, adkim = "r", aspf = "r", p = "none", sp, fo = "0";
  int pct = 100;
  auto operator<=>(const PolicyPublished&) const = default;
};

struct DkimAuth {
  std::string domain, selector, result;
  auto operator<=>(const DkimAuth&) const = default;
};
struct SpfAuth {
  std::string domain, scope, result;  // scope: "mfrom" or "helo"
  auto operator<=>(const SpfAuth&) const = default;
};

// One record's key (Appendix C RowType, PolicyEvaluatedType, IdentifierType, AuthResultType).
struct Row {
  std::string sourceIp;
  std::string disposition;  // none quarantine reject
  std::string dkim, spf;    // the DMARC-aligned results: pass | fail
  std::string reason;       // "" or a PolicyOverrideType
  std::string comment;      // the reason's comment: the trusted ARC sealer ("arc=pass sealer=D"), or ""
  std::string headerFrom, envelopeFrom;
  std::vector<DkimAuth> dkimResults;
  std::vector<SpfAuth> spfResults;
  auto operator<=>(const Row&) const = default;
};

struct DomainRows {
  PolicyPublished policy;
  std::map<Row, uint64_t> rows;  // at most kMaxRowsPerDomain
  uint64_t messages() const;
};
using Results = std::map<std::string, DomainRows>;  // by policy domain (lower case)

constexpr size_t kMaxField = 255;
constexpr size_t kMaxAuthResults = 8;

// The policy domain, policy and row of one evaluated message; nullopt when DMARC found no
// record for it (not checked, none, or an error before a policy applied).
struct Entry {
  PolicyPublished policy;
  Row row;
};
std::optional<Entry> entryFor(const filters::MessageContext& ctx);

class Aggregator {
 public:
  static constexpr size_t kMaxDomains = 10000;
  static constexpr size_t kMaxRowsPerDomain = 1000;
  void add(const PolicyPublished& policy, const Row& row, uint64_t count = 1);
  void add(const Entry& e) { add(e.policy, e.row); }
  // Hands over what was gathered (the period's results) and starts afresh.
  Results take();
  const Results& results() const { return results_; }
  uint64_t dropped() const { return dropped_; }

 private:
  Results results_;
  uint64_t dropped_ = 0;
};

// SPOOL_DIR/dmarc_report.state: {"moat-dmarc-report":1,"start":MS,"interval":MS,"domains":[...]}.
// decodeState is false for any text encodeState did not write; `into` keeps its caps.
constexpr size_t kMaxStateBytes = 64u << 20;
std::string encodeState(int64_t startMs, int64_t intervalMs, const Results& results);
bool decodeState(std::string_view text, int64_t& startMs, int64_t& intervalMs, Aggregator& into);

// The report destinations of a DMARC record (the TXT records at _dmarc.DOMAIN): of those
// starting v=DMARC1 exactly one must be there (§6.6.3); its rua= mailto: URIs (at most
// kMaxRua), each with its size limit (0 = none). Other schemes are listed in `skipped`.
struct Destination {
  std::string uri;      // as written, the size suffix included
  std::string address;  // the mailto: address
  std::string domain;   // its domain, lower case
  uint64_t maxSize = 0;
};
struct Rua {
  bool ok = false;
  std::vector<Destination> mailto;
  std::vector<std::string> skipped;  // URIs Moat does not send to (https:, malformed)
  std::string error;                 // !ok: why, for the log
};
constexpr size_t kMaxRua = 10;
Rua ruaOf(const std::vector<std::string>& txt);

// §7.1 External Destination Verification: needed when the rua domain's Organizational Domain
// is not the policy domain's. Then POLICYDOMAIN._report._dmarc.RUADOMAIN must hold a TXT
// record starting "v=DMARC1".
bool needsVerification(std::string_view policyDomain, std::string_view ruaDomain);
std::string verificationName(std::string_view policyDomain, std::string_view ruaDomain);
bool verified(const std::vector<std::string>& txt);

struct ReportInfo {
  std::string organization, email, extraContact, reportId, domain;
  int64_t beginSeconds = 0, endSeconds = 0;  // the period [begin, end)
};
// Appendix C's <feedback> document. Every string is XML-escaped; text that is not printable
// ASCII is left out character by character (a hostile header From cannot add elements).
std::string reportXml(const ReportInfo& info, const DomainRows& rows);

// The report mail (§7.2.1.1): From, To, Date, Subject "Report Domain: D Submitter: S
// Report-ID: <ID>", Message-ID, a text/plain part and the gzipped XML as application/gzip
// named "receiver!policydomain!begin!end.xml.gz" (base64). CRLF line endings, 7-bit.
struct MessageInfo {
  std::string from, to, submitter, messageId;  // messageId without the angle brackets
  int64_t dateMs = 0;
  ReportInfo report;
};
std::string fileName(const MessageInfo& info);
std::string reportMessage(const MessageInfo& info, std::string_view gzipped);

}  // namespace moat::mta::daemon::dmarc_report
