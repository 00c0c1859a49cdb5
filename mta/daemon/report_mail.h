// mta/daemon/report_mail.h — what Moat's aggregate reports have in common: SMTP TLS reports
// (RFC 8460, tlsrpt.h) and DMARC aggregate reports (RFC 7489 §7.2, dmarc_report.h). Their
// periods are aligned UTC intervals, their dates RFC 3339, their attachments gzipped
// (RFC 1952), and each report is a mail of Moat's own that the queue manager builds on the
// thread pool, DKIM-signs with the [[dkim.sign]] key of its From domain and queues like a
// DSN (QueueManager::queueReport). Pure: no I/O and no logs.
// Untrusted input: none here beyond what callers pass to headerSafe() (domains and addresses
// from DNS), which keeps header fields to one line of printable ASCII.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "mta/daemon/tiny_json.h"

namespace moat::mta::daemon::report_mail {

// The start of the aligned UTC period of `intervalMs` that holds `nowMs` (both Unix ms).
int64_t periodStart(int64_t nowMs, int64_t intervalMs);
// "2026-11-24T00:00:00Z".
std::string rfc3339(int64_t unixSeconds);

// gzip (RFC 1952) of `data` with zlib; nullopt only if zlib fails.
std::optional<std::string> gzip(std::string_view data);
// The inverse, refusing more than `maxBytes` of output: for tests and checks.
std::optional<std::string> gunzip(std::string_view data, size_t maxBytes = 16u << 20);

// A header field value made safe: printable ASCII only (a domain or an address from DNS
// cannot add header lines).
std::string headerSafe(std::string_view s);

// A report aggregate saved across a restart (tlsrpt.state, dmarc_report.state) is one JSON
// object, {"TAG":1,"start":MS,"interval":MS,"domains":[...]}: stateHead() opens it (the
// caller writes the domains and closes it with "]}\n"), stateDomains() reads its head back and
// gives the domains array (null when `v` is no such object: another tag or version, a zero
// interval, no domains array).
std::string stateHead(std::string_view tag, int64_t startMs, int64_t intervalMs);
const json::Value* stateDomains(const json::Value& v, std::string_view tag, uint64_t& startMs, uint64_t& intervalMs);
// A JSON number that is a whole count (0 to 9e15) into `out`; false for anything else.
bool jsonCount(const json::Value* v, uint64_t& out);

// One report mail on its way to the spool. The caller fills the envelope part, the builder
// (on the pool) `text` or `error`; the queue manager signs it and fills `queueId` or `error`.
struct Mail {
  std::string from;       // the header From (its domain picks the DKIM key)
  std::string to;         // the one recipient
  std::string messageId;  // without the angle brackets
  std::string what;       // for the Received comment: "TLS report for example.test"
  std::string text;       // the message, CRLF line endings
  std::string error;      // why it was not queued
  std::string signError;  // queued, but not DKIM-signed: why
  std::string queueId;    // set once it is queued
};

}  // namespace moat::mta::daemon::report_mail
