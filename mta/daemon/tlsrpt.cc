// mta/daemon/tlsrpt.cc — see tlsrpt.h (RFC 8460).
#include "mta/daemon/tlsrpt.h"

#include <algorithm>
#include <cctype>

#include "mta/daemon/tiny_json.h"
#include "mta/runtime/base64.h"
#include "mta/runtime/json.h"
#include "policy/list_file.h"
#include "queue/dsn.h"

namespace moat::mta::daemon::tlsrpt {

namespace {

using report_mail::headerSafe;

bool contains(std::string_view hay, std::string_view needle) { return hay.find(needle) != std::string_view::npos; }

std::string trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return std::string(s);
}

void jsonStringArray(std::string& out, const std::vector<std::string>& items) {
  out += '[';
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += ',';
    appendJsonString(out, items[i]);
  }
  out += ']';
}

// The MX's greeting name, as far as a report may carry it: a host name or an address literal.
bool plausibleHelo(std::string_view h) {
  if (h.empty() || h.size() > 255) return false;
  if (h.front() == '[') {
    if (h.size() < 3 || h.back() != ']') return false;
    for (unsigned char c : h.substr(1, h.size() - 2))
      if (!std::isxdigit(c) && c != '.' && c != ':' && c != '-' && !std::isalpha(c)) return false;
    return true;
  }
  for (unsigned char c : h)
    if (!std::isalnum(c) && c != '-' && c != '.' && c != '_') return false;
  return true;
}

}  // namespace

std::string_view policyTypeName(PolicyType t) {
  switch (t) {
    case PolicyType::Sts: return "sts";
    case PolicyType::Tlsa: return "tlsa";
    case PolicyType::NoPolicyFound: break;
  }
  return "no-policy-found";
}

std::vector<std::string> stsPolicyLines(std::string_view mode, const std::vector<std::string>& mx, uint32_t maxAge) {
  std::vector<std::string> lines{"version: STSv1", "mode: " + std::string(mode)};
  for (const auto& m : mx) lines.push_back("mx: " + m);
  lines.push_back("max_age: " + std::to_string(maxAge));
  return lines;
}

std::string tlsaPresentation(uint8_t usage, uint8_t selector, uint8_t mtype, std::string_view data) {
  static const char* kHex = "0123456789ABCDEF";
  std::string s = std::to_string(usage) + " " + std::to_string(selector) + " " + std::to_string(mtype) + " ";
  for (unsigned char c : data) {
    s += kHex[c >> 4];
    s += kHex[c & 15];
  }
  return s;
}

std::string classifyTlsError(std::string_view error, bool dane) {
  if (contains(error, "STARTTLS not offered") || contains(error, "STARTTLS refused")) return "starttls-not-supported";
  if (!contains(error, "TLS") && !contains(error, "certificate")) return "";
  if (dane && contains(error, "TLSA")) return "tlsa-invalid";
  // OpenSSL's X509_verify_cert_error_string texts (mta/tls/tls.cc quotes them).
  if (contains(error, "hostname mismatch")) return "certificate-host-mismatch";
  if (contains(error, "certificate has expired") || contains(error, "certificate is not yet valid"))
    return "certificate-expired";
  if (contains(error, "certificate verify failed") || contains(error, "certificate not authenticated"))
    return dane ? "tlsa-invalid" : "certificate-not-trusted";
  return "validation-failure";
}

std::string classifyStsFetchError(std::string_view error) {
  if (error.rfind("invalid policy", 0) == 0 || contains(error, ": invalid policy")) return "sts-policy-invalid";
  if (contains(error, "certificate") || contains(error, "TLS")) return "sts-webpki-invalid";
  return "sts-policy-fetch-error";
}

PolicyResults* Aggregator::slot(const std::string& domain, const Policy& policy) {
  auto it = results_.find(domain);
  if (it == results_.end()) {
    if (results_.size() >= kMaxDomains) return nullptr;
    it = results_.emplace(domain, DomainResults{}).first;
  }
  auto& policies = it->second.policies;
  auto p = policies.find(policy);
  if (p == policies.end()) {
    if (policies.size() >= kMaxPoliciesPerDomain) return nullptr;
    p = policies.emplace(policy, PolicyResults{}).first;
  }
  return &p->second;
}

void Aggregator::success(const std::string& domain, const Policy& policy) {
  PolicyResults* r = slot(policy::lowerAscii(domain), policy);
  if (!r) return void(++dropped_);
  ++r->successes;
}

void Aggregator::failure(const std::string& domain, const Policy& policy, const std::string& resultType,
                         const std::string& mxHost, const std::string& ip, const std::string& sendingIp,
                         const std::string& helo) {
  PolicyResults* r = slot(policy::lowerAscii(domain), policy);
  if (!r) return void(++dropped_);
  ++r->failures;
  Failure f{resultType, policy::lowerAscii(mxHost), ip, sendingIp,
            plausibleHelo(helo) ? policy::lowerAscii(helo) : std::string()};
  auto it = r->details.find(f);
  if (it != r->details.end())
    ++it->second;
  else if (r->details.size() < kMaxDetailsPerPolicy)
    r->details.emplace(std::move(f), 1);
}

void Aggregator::add(const std::string& domain, const Policy& policy, const PolicyResults& r) {
  PolicyResults* p = slot(policy::lowerAscii(domain), policy);
  if (!p) return void(dropped_ += r.successes + r.failures);
  p->successes += r.successes;
  p->failures += r.failures;
  for (const auto& [f, n] : r.details) {
    auto it = p->details.find(f);
    if (it != p->details.end())
      it->second += n;
    else if (p->details.size() < kMaxDetailsPerPolicy)
      p->details.emplace(f, n);
  }
}

Results Aggregator::take() {
  Results out;
  out.swap(results_);
  dropped_ = 0;
  return out;
}

Record parseRecord(const std::vector<std::string>& txt) {
  Record r;
  const std::string* found = nullptr;
  size_t count = 0;
  for (const auto& t : txt) {
    // §3: "v=TLSRPTv1" first, then ";" (or the end); a record starting otherwise is ignored.
    std::string_view v = t;
    if (v.rfind("v=TLSRPTv1", 0) != 0) continue;
    std::string_view rest = v.substr(10);
    while (!rest.empty() && (rest.front() == ' ' || rest.front() == '\t')) rest.remove_prefix(1);
    if (!rest.empty() && rest.front() != ';') continue;
    ++count;
    found = &t;
  }
  if (count == 0) {
    r.error = "no v=TLSRPTv1 record";
    return r;
  }
  if (count > 1) {
    r.error = std::to_string(count) + " v=TLSRPTv1 records (exactly one is needed)";
    return r;
  }
  std::string_view rest = std::string_view(*found).substr(10);
  bool sawRua = false;
  while (!rest.empty()) {
    size_t semi = rest.find(';');
    std::string field = trim(rest.substr(0, semi));
    rest = semi == std::string_view::npos ? std::string_view() : rest.substr(semi + 1);
    if (field.empty()) continue;
    size_t eq = field.find('=');
    if (eq == std::string::npos) {
      r.error = "malformed field \"" + headerSafe(field.substr(0, 64)) + "\"";
      return r;
    }
    if (trim(std::string_view(field).substr(0, eq)) != "rua") continue;  // §3: other fields are ignored
    if (sawRua) {
      r.error = "more than one rua field";
      return r;
    }
    sawRua = true;
    std::string_view list = std::string_view(field).substr(eq + 1);
    while (!list.empty()) {
      size_t comma = list.find(',');
      std::string uri = trim(list.substr(0, comma));
      list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
      if (uri.empty()) continue;
      if (r.rua.size() >= kMaxRua) break;
      r.rua.push_back(std::move(uri));
    }
  }
  if (r.rua.empty()) {
    r.error = "no rua";
    return r;
  }
  r.ok = true;
  return r;
}

std::string mailtoAddress(std::string_view uri) {
  if (uri.size() < 7 || policy::lowerAscii(uri.substr(0, 7)) != "mailto:") return "";
  std::string_view rest = uri.substr(7);
  rest = rest.substr(0, rest.find('?'));
  std::string out;
  for (size_t i = 0; i < rest.size(); ++i) {
    char c = rest[i];
    if (c == '%' && i + 2 < rest.size() && std::isxdigit(static_cast<unsigned char>(rest[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(rest[i + 2]))) {
      c = static_cast<char>(std::stoi(std::string(rest.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    }
    out += c;
  }
  if (out.size() > 254) return "";
  for (unsigned char c : out)
    if (c <= 0x20 || c == 0x7f || c == ',' || c == '<' || c == '>') return "";
  size_t at = out.rfind('@');
  if (at == std::string::npos || at == 0 || at + 1 == out.size()) return "";
  return out;
}

std::optional<HttpsUri> httpsUri(std::string_view uri) {
  if (uri.size() > kMaxUriBytes || uri.size() < 9 || policy::lowerAscii(uri.substr(0, 8)) != "https://")
    return std::nullopt;
  for (unsigned char c : uri)
    if (c <= 0x20 || c >= 0x7f) return std::nullopt;
  std::string_view rest = uri.substr(8);
  rest = rest.substr(0, rest.find('#'));
  size_t end = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, end);
  HttpsUri out;
  out.target = end == std::string_view::npos ? "/" : std::string(rest.substr(end));
  if (out.target.front() == '?') out.target.insert(0, "/");
  if (authority.find('@') != std::string_view::npos || authority.empty() || authority.front() == '[')
    return std::nullopt;
  if (size_t colon = authority.find(':'); colon != std::string_view::npos) {
    std::string_view port = authority.substr(colon + 1);
    authority = authority.substr(0, colon);
    if (port.empty() || port.size() > 5) return std::nullopt;
    unsigned n = 0;
    for (char c : port) {
      if (!std::isdigit(static_cast<unsigned char>(c))) return std::nullopt;
      n = n * 10 + static_cast<unsigned>(c - '0');
    }
    if (n == 0 || n > 65535) return std::nullopt;
    out.port = static_cast<uint16_t>(n);
  }
  if (authority.empty() || authority.size() > 253) return std::nullopt;
  bool allDigits = true;
  for (unsigned char c : authority) {
    if (!std::isalnum(c) && c != '-' && c != '.') return std::nullopt;
    if (std::isalpha(c) || c == '-') allDigits = false;
  }
  if (allDigits) return std::nullopt;  // an IPv4 literal: not taken
  out.host = policy::lowerAscii(authority);
  if (out.host.back() == '.') out.host.pop_back();
  // No empty label: "a..", whose one trailing dot is dropped, included.
  if (out.host.empty() || out.host.front() == '.' || out.host.back() == '.' || out.host.find("..") != std::string::npos)
    return std::nullopt;
  return out;
}

std::string httpsReportRequest(const HttpsUri& uri, std::string_view gzipped) {
  std::string r = "POST " + uri.target + " HTTP/1.1\r\nHost: " + uri.host +
                  (uri.port == 443 ? "" : ":" + std::to_string(uri.port)) +
                  "\r\nUser-Agent: Moat\r\nContent-Type: application/tlsrpt+gzip\r\nContent-Length: " +
                  std::to_string(gzipped.size()) + "\r\nConnection: close\r\n\r\n";
  r.append(gzipped);
  return r;
}

std::string reportJson(const ReportInfo& info, const DomainResults& results) {
  std::string j = "{\"organization-name\":";
  appendJsonString(j, info.organization);
  j += ",\"date-range\":{\"start-datetime\":";
  appendJsonString(j, rfc3339(info.startSeconds));
  // The example in RFC 8460 §4.4 ends the day at 23:59:59Z: the last second it covers.
  j += ",\"end-datetime\":";
  appendJsonString(j, rfc3339(info.endSeconds - 1));
  j += "},\"contact-info\":";
  appendJsonString(j, info.contact);
  j += ",\"report-id\":";
  appendJsonString(j, info.reportId);
  j += ",\"policies\":[";
  bool first = true;
  for (const auto& [policy, r] : results.policies) {
    if (!first) j += ',';
    first = false;
    j += "{\"policy\":{\"policy-type\":";
    appendJsonString(j, policyTypeName(policy.type));
    if (!policy.policyString.empty()) {
      j += ",\"policy-string\":";
      jsonStringArray(j, policy.policyString);
    }
    j += ",\"policy-domain\":";
    appendJsonString(j, info.domain);
    if (!policy.mxHost.empty()) {
      j += ",\"mx-host\":";
      jsonStringArray(j, policy.mxHost);
    }
    j += "},\"summary\":{\"total-successful-session-count\":" + std::to_string(r.successes) +
         ",\"total-failure-session-count\":" + std::to_string(r.failures) + "}";
    if (!r.details.empty()) {
      j += ",\"failure-details\":[";
      bool firstRow = true;
      for (const auto& [f, n] : r.details) {
        if (!firstRow) j += ',';
        firstRow = false;
        j += "{\"result-type\":";
        appendJsonString(j, f.resultType);
        if (!f.sendingIp.empty()) {
          j += ",\"sending-mta-ip\":";
          appendJsonString(j, f.sendingIp);
        }
        if (!f.ip.empty()) {
          j += ",\"receiving-ip\":";
          appendJsonString(j, f.ip);
        }
        if (!f.mxHost.empty()) {
          j += ",\"receiving-mx-hostname\":";
          appendJsonString(j, f.mxHost);
        }
        if (!f.helo.empty()) {
          j += ",\"receiving-mx-helo\":";
          appendJsonString(j, f.helo);
        }
        j += ",\"failed-session-count\":" + std::to_string(n) + "}";
      }
      j += ']';
    }
    j += '}';
  }
  j += "]}";
  return j;
}

std::string encodeState(int64_t startMs, int64_t intervalMs, const Results& results) {
  std::string j = report_mail::stateHead("moat-tlsrpt", startMs, intervalMs);
  bool firstDomain = true;
  for (const auto& [domain, d] : results) {
    if (!firstDomain) j += ',';
    firstDomain = false;
    j += "{\"domain\":";
    appendJsonString(j, domain);
    j += ",\"policies\":[";
    bool first = true;
    for (const auto& [p, r] : d.policies) {
      if (!first) j += ',';
      first = false;
      j += "{\"type\":";
      appendJsonString(j, policyTypeName(p.type));
      j += ",\"strings\":";
      jsonStringArray(j, p.policyString);
      j += ",\"mx\":";
      jsonStringArray(j, p.mxHost);
      j += ",\"successes\":" + std::to_string(r.successes) + ",\"failures\":" + std::to_string(r.failures) +
           ",\"details\":[";
      bool firstRow = true;
      for (const auto& [f, n] : r.details) {
        if (!firstRow) j += ',';
        firstRow = false;
        j += "{\"type\":";
        appendJsonString(j, f.resultType);
        j += ",\"mx\":";
        appendJsonString(j, f.mxHost);
        j += ",\"ip\":";
        appendJsonString(j, f.ip);
        j += ",\"sip\":";
        appendJsonString(j, f.sendingIp);
        j += ",\"helo\":";
        appendJsonString(j, f.helo);
        j += ",\"count\":" + std::to_string(n) + "}";
      }
      j += "]}";
    }
    j += "]}";
  }
  j += "]}\n";
  return j;
}

namespace {
using json::Value;
bool count(const Value* v, uint64_t& out) { return report_mail::jsonCount(v, out); }
bool strings(const Value* v, std::vector<std::string>& out) {
  if (!v || v->type != Value::Type::Array) return false;
  for (const auto& x : v->array) {
    if (x.type != Value::Type::String) return false;
    out.push_back(x.str);
  }
  return true;
}
bool text(const Value* v, std::string& out) {
  if (!v || v->type != Value::Type::String) return false;
  out = v->str;
  return true;
}
}  // namespace

bool decodeState(std::string_view input, int64_t& startMs, int64_t& intervalMs, Aggregator& into) {
  if (input.size() > kMaxStateBytes) return false;
  auto v = json::parse(input);
  uint64_t start = 0, interval = 0;
  const Value* domains = v ? report_mail::stateDomains(*v, "moat-tlsrpt", start, interval) : nullptr;
  if (!domains) return false;
  for (const auto& d : domains->array) {
    std::string domain;
    const Value* policies = d.get("policies");
    if (!text(d.get("domain"), domain) || !policies || policies->type != Value::Type::Array) return false;
    for (const auto& p : policies->array) {
      Policy policy;
      PolicyResults r;
      std::string type;
      const Value* details = p.get("details");
      if (!text(p.get("type"), type) || !strings(p.get("strings"), policy.policyString) ||
          !strings(p.get("mx"), policy.mxHost) || !count(p.get("successes"), r.successes) ||
          !count(p.get("failures"), r.failures) || !details || details->type != Value::Type::Array)
        return false;
      if (type == "sts")
        policy.type = PolicyType::Sts;
      else if (type == "tlsa")
        policy.type = PolicyType::Tlsa;
      else if (type != "no-policy-found")
        return false;
      for (const auto& row : details->array) {
        Failure f;
        uint64_t n = 0;
        if (!text(row.get("type"), f.resultType) || !text(row.get("mx"), f.mxHost) || !text(row.get("ip"), f.ip) ||
            !count(row.get("count"), n))
          return false;
        // Absent from a file an older Moat wrote.
        if (const Value* sip = row.get("sip"); sip && !text(sip, f.sendingIp)) return false;
        if (const Value* helo = row.get("helo"); helo && !text(helo, f.helo)) return false;
        r.details[f] += n;
      }
      into.add(domain, policy, r);
    }
  }
  startMs = static_cast<int64_t>(start);
  intervalMs = static_cast<int64_t>(interval);
  return true;
}

std::string reportMessage(const MessageInfo& info, std::string_view gzipped) {
  const auto& r = info.report;
  const std::string domain = headerSafe(r.domain), submitter = headerSafe(info.submitter);
  const std::string reportId = headerSafe(r.reportId);
  std::string unique;  // §5.3: unique-id = 1*(ALPHA / DIGIT)
  for (char c : reportId.substr(0, reportId.find('@')))
    if (std::isalnum(static_cast<unsigned char>(c))) unique += c;
  const std::string fileName = submitter + "!" + domain + "!" + std::to_string(r.startSeconds) + "!" +
                               std::to_string(r.endSeconds) + (unique.empty() ? "" : "!" + unique) + ".json.gz";
  const std::string boundary = "=_moat_tlsrpt_" + unique;
  std::string m;
  m += queue::foldHeader("From", headerSafe(info.from));
  m += queue::foldHeader("To", headerSafe(info.to));
  m += queue::foldHeader("Date", queue::rfc5322Date(info.dateMs));
  m += queue::foldHeader("Subject",
                         "Report Domain: " + domain + " Submitter: " + submitter + " Report-ID: <" + reportId + ">");
  m += queue::foldHeader("Message-ID", "<" + headerSafe(info.messageId) + ">");
  m += queue::foldHeader("TLS-Report-Domain", domain);
  m += queue::foldHeader("TLS-Report-Submitter", submitter);
  m += "MIME-Version: 1.0\r\n";
  m += "Auto-Submitted: auto-generated\r\n";  // RFC 3834: not to be answered automatically
  m += "Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n\tboundary=\"" + boundary + "\"\r\n";
  m += "\r\nThis is a multipart message in MIME format.\r\n\r\n";
  m += "--" + boundary + "\r\n";
  m += "Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n";
  m += "This is an aggregate TLS report (RFC 8460) from " + submitter + " for " + domain + ",\r\n";
  m += "covering " + rfc3339(r.startSeconds) + " to " + rfc3339(r.endSeconds) + ".\r\n\r\n";
  m += "--" + boundary + "\r\n";
  m += "Content-Type: application/tlsrpt+gzip\r\n";
  m += "Content-Transfer-Encoding: base64\r\n";
  m += "Content-Disposition: attachment;\r\n\tfilename=\"" + fileName + "\"\r\n\r\n";
  m += base64EncodeLines(gzipped);
  m += "\r\n\r\n--" + boundary + "--\r\n";
  return m;
}

}  // namespace moat::mta::daemon::tlsrpt
