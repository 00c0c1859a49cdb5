// mta/daemon/dmarc_report.cc — see dmarc_report.h (RFC 7489 §7.1, §7.2, Appendix C).
#include "mta/daemon/dmarc_report.h"

#include <algorithm>
#include <cctype>

#include "filters/dmarc/org_domain.h"
#include "filters/dmarc/record.h"
#include "mta/daemon/tiny_json.h"
#include "mta/runtime/base64.h"
#include "mta/runtime/json.h"
#include "policy/list_file.h"
#include "queue/dsn.h"

namespace moat::mta::daemon::dmarc_report {

namespace {

using report_mail::headerSafe;

// A peer's string as a row keeps it: at most kMaxField octets.
std::string field(std::string_view s) { return std::string(s.substr(0, kMaxField)); }

// XML 1.0 character data: the five specials escaped; bytes outside printable ASCII left out
// (a report is ASCII: every domain here is in A-labels, and nothing else needs more).
void xmlText(std::string& out, std::string_view s) {
  for (unsigned char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default:
        if (c >= 0x20 && c < 0x7f) out += static_cast<char>(c);
    }
  }
}

void element(std::string& out, std::string_view indent, std::string_view name, std::string_view value) {
  out += indent;
  out += '<';
  out += name;
  out += '>';
  xmlText(out, value);
  out += "</";
  out += name;
  out += ">\n";
}

}  // namespace

uint64_t DomainRows::messages() const {
  uint64_t n = 0;
  for (const auto& [row, count] : rows) n += count;
  return n;
}

std::optional<Entry> entryFor(const filters::MessageContext& ctx) {
  const auto& d = ctx.dmarc;
  if (!d.checked || d.policy.empty() || d.recordDomain.empty() || (d.result != "pass" && d.result != "fail"))
    return std::nullopt;
  Entry e;
  e.policy.domain = policy::lowerAscii(field(d.recordDomain));
  e.policy.adkim = d.adkim;
  e.policy.aspf = d.aspf;
  e.policy.p = d.p.empty() ? "none" : d.p;
  e.policy.sp = d.sp;
  e.policy.fo = field(d.fo);
  e.policy.pct = d.pct;
  Row& r = e.row;
  r.sourceIp = ctx.clientIp.str();
  r.disposition = d.disposition.empty() ? "none" : d.disposition;
  r.dkim = d.dkimAligned ? "pass" : "fail";
  r.spf = d.spfAligned ? "pass" : "fail";
  r.reason = d.overrideReason;
  r.comment = field(d.overrideComment);
  r.headerFrom = policy::lowerAscii(field(d.fromDomain));
  size_t at = ctx.mailFrom.rfind('@');
  r.envelopeFrom =
      at == std::string::npos ? "" : policy::lowerAscii(field(std::string_view(ctx.mailFrom).substr(at + 1)));
  for (const auto& k : ctx.dkim) {
    if (r.dkimResults.size() >= kMaxAuthResults) break;
    r.dkimResults.push_back({policy::lowerAscii(field(k.domain)), field(k.selector), k.result});
  }
  // The SPF result DMARC used (RFC 7489 §4.1): MAIL FROM's, or HELO's for the null sender.
  for (const auto* s : {&ctx.spfMailFrom, &ctx.spfHelo}) {
    if (!s->checked || s->domain.empty()) continue;
    r.spfResults.push_back({policy::lowerAscii(field(s->domain)), s->identity == "helo" ? "helo" : "mfrom", s->result});
    break;
  }
  return e;
}

void Aggregator::add(const PolicyPublished& policy, const Row& row, uint64_t count) {
  auto it = results_.find(policy.domain);
  if (it == results_.end()) {
    if (results_.size() >= kMaxDomains) return void(dropped_ += count);
    it = results_.emplace(policy.domain, DomainRows{}).first;
  }
  auto& d = it->second;
  auto r = d.rows.find(row);
  if (r == d.rows.end()) {
    if (d.rows.size() >= kMaxRowsPerDomain) return void(dropped_ += count);
    r = d.rows.emplace(row, 0).first;
  }
  d.policy = policy;  // the latest record seen stands for the period
  r->second += count;
}

Results Aggregator::take() {
  Results out;
  out.swap(results_);
  dropped_ = 0;
  return out;
}

std::string encodeState(int64_t startMs, int64_t intervalMs, const Results& results) {
  std::string j = report_mail::stateHead("moat-dmarc-report", startMs, intervalMs);
  bool firstDomain = true;
  for (const auto& [domain, d] : results) {
    if (!firstDomain) j += ',';
    firstDomain = false;
    const auto& p = d.policy;
    j += "{\"policy\":[";
    for (const auto* s : {&p.domain, &p.adkim, &p.aspf, &p.p, &p.sp, &p.fo}) {
      appendJsonString(j, *s);
      j += ',';
    }
    j += std::to_string(p.pct) + "],\"rows\":[";
    bool first = true;
    for (const auto& [r, n] : d.rows) {
      if (!first) j += ',';
      first = false;
      j += "{\"row\":[";
      // The comment goes last: a state file written before it existed has seven strings.
      for (const auto* s :
           {&r.sourceIp, &r.disposition, &r.dkim, &r.spf, &r.reason, &r.headerFrom, &r.envelopeFrom, &r.comment}) {
        if (s != &r.sourceIp) j += ',';
        appendJsonString(j, *s);
      }
      // Each DKIM and SPF result as an array of its three strings.
      auto triples = [&j](const auto& items, auto first, auto second, auto third) {
        for (size_t i = 0; i < items.size(); ++i) {
          j += i ? ",[" : "[";
          appendJsonString(j, items[i].*first);
          j += ',';
          appendJsonString(j, items[i].*second);
          j += ',';
          appendJsonString(j, items[i].*third);
          j += ']';
        }
      };
      j += "],\"dkim\":[";
      triples(r.dkimResults, &DkimAuth::domain, &DkimAuth::selector, &DkimAuth::result);
      j += "],\"spf\":[";
      triples(r.spfResults, &SpfAuth::domain, &SpfAuth::scope, &SpfAuth::result);
      j += "],\"count\":" + std::to_string(n) + "}";
    }
    j += "]}";
  }
  j += "]}\n";
  return j;
}

namespace {
using json::Value;
bool count(const Value* v, uint64_t& out) { return report_mail::jsonCount(v, out); }
// An array of exactly `n` strings (and, when `number` is given, one more: a count).
bool strings(const Value* v, std::vector<std::string>& out, size_t n) {
  if (!v || v->type != Value::Type::Array || v->array.size() < n) return false;
  for (size_t i = 0; i < n; ++i) {
    if (v->array[i].type != Value::Type::String) return false;
    out.push_back(field(v->array[i].str));
  }
  return true;
}
}  // namespace

bool decodeState(std::string_view input, int64_t& startMs, int64_t& intervalMs, Aggregator& into) {
  if (input.size() > kMaxStateBytes) return false;
  auto v = json::parse(input);
  uint64_t start = 0, interval = 0;
  const Value* domains = v ? report_mail::stateDomains(*v, "moat-dmarc-report", start, interval) : nullptr;
  if (!domains) return false;
  Aggregator read;
  for (const auto& d : domains->array) {
    std::vector<std::string> p;
    const Value* pv = d.get("policy");
    uint64_t pct = 0;
    const Value* rows = d.get("rows");
    if (!strings(pv, p, 6) || pv->array.size() != 7 || !count(&pv->array[6], pct) || pct > 100 || !rows ||
        rows->type != Value::Type::Array)
      return false;
    PolicyPublished policy{p[0], p[1], p[2], p[3], p[4], p[5], static_cast<int>(pct)};
    for (const auto& rv : rows->array) {
      std::vector<std::string> f;
      uint64_t n = 0;
      const Value* dkim = rv.get("dkim");
      const Value* spf = rv.get("spf");
      if (!strings(rv.get("row"), f, 7) || !count(rv.get("count"), n) || !dkim || dkim->type != Value::Type::Array ||
          !spf || spf->type != Value::Type::Array)
        return false;
      Row r{f[0], f[1], f[2], f[3], f[4], {}, f[5], f[6], {}, {}};
      if (const Value* row = rv.get("row"); row->array.size() > 7 && row->array[7].type == Value::Type::String)
        r.comment = field(row->array[7].str);
      for (const auto& k : dkim->array) {
        std::vector<std::string> x;
        if (!strings(&k, x, 3)) return false;
        if (r.dkimResults.size() < kMaxAuthResults) r.dkimResults.push_back({x[0], x[1], x[2]});
      }
      for (const auto& s : spf->array) {
        std::vector<std::string> x;
        if (!strings(&s, x, 3)) return false;
        if (r.spfResults.size() < kMaxAuthResults) r.spfResults.push_back({x[0], x[1], x[2]});
      }
      read.add(policy, r, n);
    }
  }
  for (const auto& [domain, d] : read.results())
    for (const auto& [r, n] : d.rows) into.add(d.policy, r, n);
  startMs = static_cast<int64_t>(start);
  intervalMs = static_cast<int64_t>(interval);
  return true;
}

Rua ruaOf(const std::vector<std::string>& txt) {
  Rua out;
  const std::string* found = nullptr;
  size_t n = 0;
  for (const auto& t : txt)
    if (filters::dmarc::isDmarcRecord(t)) {
      ++n;
      found = &t;
    }
  if (n == 0) {
    out.error = "no DMARC record";
    return out;
  }
  if (n > 1) {
    out.error = std::to_string(n) + " DMARC records (exactly one is needed)";
    return out;
  }
  filters::dmarc::Record rec;
  std::string error;
  filters::dmarc::ParseDetail detail;
  filters::dmarc::parseRecord(*found, rec, error, detail);
  if (detail.syntaxError) {
    out.error = "the DMARC record is not a valid tag list";
    return out;
  }
  for (const auto& uri : rec.rua) {
    if (out.mailto.size() + out.skipped.size() >= kMaxRua) break;
    filters::dmarc::ReportUri u;
    if (!filters::dmarc::parseReportUri(uri, u) || u.scheme != "mailto") {
      out.skipped.push_back(uri);
      continue;
    }
    std::string address = u.address;
    size_t at = address.rfind('@');
    bool usable = at != std::string::npos && at > 0 && at + 1 < address.size() && address.size() <= 254;
    for (unsigned char c : address)
      if (c <= 0x20 || c >= 0x7f || c == ',' || c == '<' || c == '>' || c == '"') usable = false;
    std::string domain = usable ? filters::dmarc::normalizeDomain(address.substr(at + 1)) : "";
    if (!usable || !filters::dmarc::validDomain(domain)) {
      out.skipped.push_back(uri);
      continue;
    }
    out.mailto.push_back({uri, address, domain, u.maxSize});
  }
  if (out.mailto.empty() && out.skipped.empty()) {
    out.error = "no rua";
    return out;
  }
  out.ok = true;
  return out;
}

bool needsVerification(std::string_view policyDomain, std::string_view ruaDomain) {
  return filters::dmarc::organizationalDomain(policy::lowerAscii(ruaDomain)) !=
         filters::dmarc::organizationalDomain(policy::lowerAscii(policyDomain));
}

std::string verificationName(std::string_view policyDomain, std::string_view ruaDomain) {
  return policy::lowerAscii(policyDomain) + "._report._dmarc." + policy::lowerAscii(ruaDomain);
}

bool verified(const std::vector<std::string>& txt) {
  // §7.1: "v=DMARC1" first; the record's other tags do not matter here.
  return std::any_of(txt.begin(), txt.end(), [](const std::string& t) { return filters::dmarc::isDmarcRecord(t); });
}

std::string reportXml(const ReportInfo& info, const DomainRows& d) {
  std::string x = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<feedback>\n  <version>1.0</version>\n";
  x += "  <report_metadata>\n";
  element(x, "    ", "org_name", info.organization);
  element(x, "    ", "email", info.email);
  if (!info.extraContact.empty()) element(x, "    ", "extra_contact_info", info.extraContact);
  element(x, "    ", "report_id", info.reportId);
  x += "    <date_range>\n";
  element(x, "      ", "begin", std::to_string(info.beginSeconds));
  // The last second the period covers, as most reporters write it.
  element(x, "      ", "end", std::to_string(info.endSeconds - 1));
  x += "    </date_range>\n  </report_metadata>\n  <policy_published>\n";
  const auto& p = d.policy;
  element(x, "    ", "domain", p.domain);
  element(x, "    ", "adkim", p.adkim);
  element(x, "    ", "aspf", p.aspf);
  element(x, "    ", "p", p.p);
  element(x, "    ", "sp", p.sp.empty() ? p.p : p.sp);
  element(x, "    ", "pct", std::to_string(p.pct));
  element(x, "    ", "fo", p.fo);
  x += "  </policy_published>\n";
  for (const auto& [r, n] : d.rows) {
    x += "  <record>\n    <row>\n";
    element(x, "      ", "source_ip", r.sourceIp);
    element(x, "      ", "count", std::to_string(n));
    x += "      <policy_evaluated>\n";
    element(x, "        ", "disposition", r.disposition);
    element(x, "        ", "dkim", r.dkim);
    element(x, "        ", "spf", r.spf);
    if (!r.reason.empty()) {
      x += "        <reason>\n";
      element(x, "          ", "type", r.reason);
      if (!r.comment.empty()) element(x, "          ", "comment", r.comment);
      x += "        </reason>\n";
    }
    x += "      </policy_evaluated>\n    </row>\n    <identifiers>\n";
    if (!r.envelopeFrom.empty()) element(x, "      ", "envelope_from", r.envelopeFrom);
    element(x, "      ", "header_from", r.headerFrom);
    x += "    </identifiers>\n    <auth_results>\n";
    for (const auto& k : r.dkimResults) {
      x += "      <dkim>\n";
      element(x, "        ", "domain", k.domain);
      if (!k.selector.empty()) element(x, "        ", "selector", k.selector);
      element(x, "        ", "result", k.result);
      x += "      </dkim>\n";
    }
    for (const auto& s : r.spfResults) {
      x += "      <spf>\n";
      element(x, "        ", "domain", s.domain);
      element(x, "        ", "scope", s.scope);
      element(x, "        ", "result", s.result);
      x += "      </spf>\n";
    }
    // Appendix C wants one spf result at least: "none" when SPF was not checked.
    if (r.spfResults.empty()) {
      x += "      <spf>\n";
      element(x, "        ", "domain", r.envelopeFrom.empty() ? r.headerFrom : r.envelopeFrom);
      element(x, "        ", "result", "none");
      x += "      </spf>\n";
    }
    x += "    </auth_results>\n  </record>\n";
  }
  x += "</feedback>\n";
  return x;
}

std::string fileName(const MessageInfo& info) {
  // §7.2.1.1: filename = receiver "!" policy-domain "!" begin-timestamp "!" end-timestamp "." extension
  return headerSafe(info.submitter) + "!" + headerSafe(info.report.domain) + "!" +
         std::to_string(info.report.beginSeconds) + "!" + std::to_string(info.report.endSeconds - 1) + ".xml.gz";
}

std::string reportMessage(const MessageInfo& info, std::string_view gzipped) {
  const auto& r = info.report;
  const std::string domain = headerSafe(r.domain), submitter = headerSafe(info.submitter);
  const std::string reportId = headerSafe(r.reportId);
  std::string unique;
  for (char c : reportId)
    if (std::isalnum(static_cast<unsigned char>(c))) unique += c;
  const std::string boundary = "=_moat_dmarc_" + unique.substr(0, 40);
  std::string m;
  m += queue::foldHeader("From", headerSafe(info.from));
  m += queue::foldHeader("To", headerSafe(info.to));
  m += queue::foldHeader("Date", queue::rfc5322Date(info.dateMs));
  m += queue::foldHeader("Subject",
                         "Report Domain: " + domain + " Submitter: " + submitter + " Report-ID: <" + reportId + ">");
  m += queue::foldHeader("Message-ID", "<" + headerSafe(info.messageId) + ">");
  m += "MIME-Version: 1.0\r\n";
  m += "Auto-Submitted: auto-generated\r\n";  // RFC 3834: not to be answered automatically
  m += "Content-Type: multipart/mixed;\r\n\tboundary=\"" + boundary + "\"\r\n";
  m += "\r\nThis is a multipart message in MIME format.\r\n\r\n";
  m += "--" + boundary + "\r\n";
  m += "Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n";
  m += "This is a DMARC aggregate report (RFC 7489) from " + submitter + " for " + domain + ",\r\n";
  m += "covering " + report_mail::rfc3339(r.beginSeconds) + " to " + report_mail::rfc3339(r.endSeconds) + ".\r\n\r\n";
  m += "--" + boundary + "\r\n";
  m += "Content-Type: application/gzip\r\n";
  m += "Content-Transfer-Encoding: base64\r\n";
  m += "Content-Disposition: attachment;\r\n\tfilename=\"" + fileName(info) + "\"\r\n\r\n";
  m += base64EncodeLines(gzipped);
  m += "\r\n\r\n--" + boundary + "--\r\n";
  return m;
}

}  // namespace moat::mta::daemon::dmarc_report
