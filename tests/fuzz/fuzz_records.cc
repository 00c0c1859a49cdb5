// tests/fuzz/fuzz_records.cc — libFuzzer target for the parsers of what DNS and policy hosts
// send: the SPF record and macro expansion (filters/spf/record.h), the DMARC record and its
// report URIs (filters/dmarc/record.h), the TLS-RPT record and its rua URIs
// (mta/daemon/tlsrpt.h), the MTA-STS TXT record, policy file, policy cache file and the HTTP
// response of the policy fetch (mta/daemon/mta_sts_policy.h).
// Input layout: byte 0 picks the parser (modulo 9), byte 1 is a parameter where the parser
// has one, the rest is the record or body (several TXT strings: one per line).
// Checked:
//   - SPF: a parsed record's lengths are in range, its domain-specs expand and normalize to a
//     usable name, and the terms written back parse to the same record; a macro-string that
//     validates expands and vice versa, within a bound;
//   - DMARC: a parsed record's values are in range and write back to the same record; every
//     kept rua/ruf parses as a report URI whose size limit is the one written (saturated);
//   - TLS-RPT: 1 to kMaxRua trimmed rua URIs; a mailto: address and an https: host and
//     target carry nothing that could break the mail or the HTTP request built from them;
//   - MTA-STS: an id of 1 to 32 letters and digits; a parsed policy is in range, its mx
//     patterns match the hosts they name and it survives the cache file (RFC 8461 §5.1);
//     a cache file read back writes and reads back the same; the HTTP response reaches the
//     same state, status and body however the bytes are split, within its body limit.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "filters/dmarc/record.h"
#include "filters/spf/record.h"
#include "mta/daemon/mta_sts_policy.h"
#include "mta/daemon/tlsrpt.h"
#include "tests/fuzz/fuzz_check.h"

namespace spf = moat::filters::spf;
namespace dmarc = moat::filters::dmarc;
namespace sts = moat::mta::sts;
namespace tlsrpt = moat::mta::daemon::tlsrpt;

namespace {

bool printableNoSpace(std::string_view s) {
  for (unsigned char c : s)
    if (c <= 0x20 || c >= 0x7f) return false;
  return true;
}

spf::MacroContext macroContext(bool v6) {
  spf::MacroContext ctx;
  ctx.sender = "strong-bad@email.example.com";
  ctx.local = "strong-bad";
  ctx.senderDomain = "email.example.com";
  ctx.domain = "email.example.com";
  ctx.ip = *moat::mta::IpAddress::parse(v6 ? "2001:db8::cb01" : "192.0.2.3");
  ctx.pName = "mx.example.org";
  ctx.helo = "mx.example.org";
  ctx.receiver = "receiver.example.net";
  ctx.timestamp = 1700000000;
  return ctx;
}

void checkName(const std::optional<std::string>& name) {
  if (!name) return;
  FUZZ_CHECK(!name->empty() && name->size() <= 253 && name->back() != '.');
  size_t start = 0;
  for (size_t i = 0; i <= name->size(); ++i) {
    if (i == name->size() || (*name)[i] == '.') {
      FUZZ_CHECK(i - start >= 1 && i - start <= 63);
      start = i + 1;
    }
  }
  for (char c : *name) FUZZ_CHECK(!(c >= 'A' && c <= 'Z'));
}

void checkExpansion(std::string_view spec, bool explanation, bool v6) {
  std::string out;
  bool valid = spf::expandMacros(spec, macroContext(v6), explanation, nullptr);
  FUZZ_CHECK(spf::expandMacros(spec, macroContext(v6), explanation, &out) == valid);
  if (!valid) return;
  // No value is longer than 63 octets, and URL escaping at most triples it.
  FUZZ_CHECK(out.size() <= spec.size() * 3 * 64);
  if (!explanation) checkName(spf::normalizeDomain(out));
}

void fuzzSpf(std::string_view txt, uint8_t param) {
  std::string error;
  auto rec = spf::parseRecord(txt, &error);
  FUZZ_CHECK(rec.has_value() == error.empty());
  if (!rec) return;
  FUZZ_CHECK(spf::isSpfRecord(txt));
  std::string written = "v=spf1";
  for (const auto& m : rec->mechanisms) {
    FUZZ_CHECK(m.cidr4 >= 0 && m.cidr4 <= 32 && m.cidr6 >= 0 && m.cidr6 <= 128);
    bool ip = m.kind == spf::MechKind::Ip4 || m.kind == spf::MechKind::Ip6;
    FUZZ_CHECK(m.network.has_value() == ip);
    if (m.network) {
      FUZZ_CHECK(m.network->prefix() >= 0 && m.network->prefix() <= (m.network->address().isV4() ? 32 : 128));
      if (m.kind == spf::MechKind::Ip4) FUZZ_CHECK(m.network->address().isV4());
    }
    if (!m.domainSpec.empty()) {
      FUZZ_CHECK(spf::validDomainSpec(m.domainSpec));
      checkExpansion(m.domainSpec, false, param & 1);
    }
    written += " " + m.text;
  }
  if (rec->redirect) {
    FUZZ_CHECK(spf::validDomainSpec(*rec->redirect));
    checkExpansion(*rec->redirect, false, param & 1);
    written += " redirect=" + *rec->redirect;
  }
  if (rec->exp) {
    FUZZ_CHECK(spf::validDomainSpec(*rec->exp));
    written += " exp=" + *rec->exp;
  }
  auto again = spf::parseRecord(written);
  FUZZ_CHECK(again.has_value());
  FUZZ_CHECK(again->mechanisms.size() == rec->mechanisms.size());
  for (size_t i = 0; i < rec->mechanisms.size(); ++i) {
    const auto &a = rec->mechanisms[i], &b = again->mechanisms[i];
    FUZZ_CHECK(a.qualifier == b.qualifier && a.kind == b.kind && a.domainSpec == b.domainSpec);
    FUZZ_CHECK(a.cidr4 == b.cidr4 && a.cidr6 == b.cidr6 && a.network.has_value() == b.network.has_value());
    if (a.network)
      FUZZ_CHECK(a.network->address() == b.network->address() && a.network->prefix() == b.network->prefix());
  }
  FUZZ_CHECK(again->redirect == rec->redirect && again->exp == rec->exp);
}

void fuzzSpfMacro(std::string_view spec, uint8_t param) {
  checkExpansion(spec, param & 2, param & 1);
  if (spf::validDomainSpec(spec)) FUZZ_CHECK(spf::expandMacros(spec, macroContext(false), false, nullptr));
  (void)spf::usesPtrMacro(spec);
  checkName(spf::normalizeDomain(spec));
  (void)spf::validIdentityDomain(spec);
}

// The size limit a "!N[kmgt]" suffix names, in bytes, saturated; 0 without one.
uint64_t expectedMaxSize(std::string_view uri) {
  while (!uri.empty() && (uri.back() == ' ' || uri.back() == '\t' || uri.back() == '\r' || uri.back() == '\n'))
    uri.remove_suffix(1);
  size_t bang = uri.rfind('!');
  if (bang == std::string_view::npos) return 0;
  std::string_view size = uri.substr(bang + 1);
  unsigned __int128 unit = 1;
  if (!size.empty()) {
    switch (size.back() | 0x20) {
      case 'k': unit = 1ull << 10; break;
      case 'm': unit = 1ull << 20; break;
      case 'g': unit = 1ull << 30; break;
      case 't': unit = 1ull << 40; break;
      default: break;
    }
    if (unit != 1) size.remove_suffix(1);
  }
  unsigned __int128 n = 0;
  for (char c : size) n = n * 10 + static_cast<unsigned>(c - '0');
  unsigned __int128 bytes = n * unit;
  return bytes > UINT64_MAX ? UINT64_MAX : static_cast<uint64_t>(bytes);
}

void checkReportUri(std::string_view text) {
  dmarc::ReportUri uri;
  if (!dmarc::parseReportUri(text, uri)) return;
  FUZZ_CHECK(!uri.uri.empty() && !uri.scheme.empty() && uri.uri.find(':') != std::string::npos);
  for (char c : uri.scheme) FUZZ_CHECK(!(c >= 'A' && c <= 'Z'));
  FUZZ_CHECK(uri.maxSize == expectedMaxSize(text));
}

std::string joined(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ",") + s;
  return out;
}

void fuzzDmarc(std::string_view txt) {
  dmarc::Record r;
  std::string error;
  dmarc::ParseDetail detail;
  auto status = dmarc::parseRecord(txt, r, error, detail);
  FUZZ_CHECK((status == dmarc::ParseStatus::Ok) == error.empty());
  for (const auto& u : r.rua) checkReportUri(u);
  for (const auto& u : r.ruf) checkReportUri(u);
  if (status != dmarc::ParseStatus::Ok) return;
  FUZZ_CHECK(dmarc::isDmarcRecord(txt));
  auto policy = [](const std::string& p) { return p == "none" || p == "quarantine" || p == "reject"; };
  FUZZ_CHECK(policy(r.p) && (r.sp.empty() || policy(r.sp)) && (r.np.empty() || policy(r.np)));
  FUZZ_CHECK(policy(r.effectiveSp()) && policy(r.effectiveNp()));
  FUZZ_CHECK((r.adkim == "r" || r.adkim == "s") && (r.aspf == "r" || r.aspf == "s"));
  FUZZ_CHECK(r.pct >= 0 && r.pct <= 100);
  std::string written = "v=DMARC1; p=" + r.p + (r.sp.empty() ? "" : "; sp=" + r.sp) +
                        (r.np.empty() ? "" : "; np=" + r.np) + "; adkim=" + r.adkim + "; aspf=" + r.aspf +
                        "; pct=" + std::to_string(r.pct) + "; fo=" + r.fo + "; rf=" + r.rf +
                        "; ri=" + std::to_string(r.ri) + "; rua=" + joined(r.rua) + "; ruf=" + joined(r.ruf);
  dmarc::Record again;
  FUZZ_CHECK(dmarc::parseRecord(written, again, error) == dmarc::ParseStatus::Ok);
  FUZZ_CHECK(again.p == r.p && again.sp == r.sp && again.np == r.np && again.adkim == r.adkim && again.aspf == r.aspf &&
             again.pct == r.pct && again.fo == r.fo && again.rf == r.rf && again.ri == r.ri && again.rua == r.rua &&
             again.ruf == r.ruf);
}

void checkRua(std::string_view uri) {
  std::string to = tlsrpt::mailtoAddress(uri);
  if (!to.empty()) {
    FUZZ_CHECK(to.size() <= 254);
    size_t at = to.rfind('@');
    FUZZ_CHECK(at != std::string::npos && at > 0 && at + 1 < to.size());
    for (unsigned char c : to) FUZZ_CHECK(c > 0x20 && c != 0x7f && c != ',' && c != '<' && c != '>');
  }
  if (auto https = tlsrpt::httpsUri(uri)) {
    FUZZ_CHECK(!https->host.empty() && https->host.size() <= 253 && https->port != 0);
    FUZZ_CHECK(https->host.front() != '.' && https->host.back() != '.' && https->host.find("..") == std::string::npos);
    for (char c : https->host) FUZZ_CHECK((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.');
    FUZZ_CHECK(!https->target.empty() && https->target.front() == '/' && printableNoSpace(https->target));
    std::string request = tlsrpt::httpsReportRequest(*https, "");
    // The head is the request line and five fields: nothing from the URI adds a line.
    size_t crlf = 0;
    for (size_t p = request.find("\r\n"); p != std::string::npos; p = request.find("\r\n", p + 2)) ++crlf;
    FUZZ_CHECK(crlf == 7 && request.find('\n') == request.find("\r\n") + 1);
  }
}

void fuzzTlsrpt(std::string_view txt) {
  auto records = fuzz::lines(txt);
  auto r = tlsrpt::parseRecord(records);
  FUZZ_CHECK(r.ok == r.error.empty());
  if (r.ok) {
    FUZZ_CHECK(!r.rua.empty() && r.rua.size() <= tlsrpt::kMaxRua);
    for (const auto& u : r.rua) {
      FUZZ_CHECK(!u.empty() && u.front() != ' ' && u.front() != '\t' && u.back() != ' ' && u.back() != '\t');
      FUZZ_CHECK(u.find(',') == std::string::npos && u.find(';') == std::string::npos);
      checkRua(u);
    }
  }
  checkRua(records.front());
}

void fuzzStsTxt(std::string_view txt) {
  std::string error;
  std::string id = sts::parseTxt(fuzz::lines(txt), error);
  FUZZ_CHECK(id.empty() != error.empty());
  FUZZ_CHECK(id.size() <= 32);
  for (char c : id) FUZZ_CHECK((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'));
}

constexpr int64_t kNow = 1'700'000'000;

void checkPolicy(const sts::Policy& p) {
  FUZZ_CHECK(p.maxAge <= 31557600);
  FUZZ_CHECK(p.mode == sts::Mode::None || !p.mx.empty());
  FUZZ_CHECK(p.mx.size() <= 100);
  for (const auto& m : p.mx) {
    FUZZ_CHECK(!m.empty());
    for (char c : m) FUZZ_CHECK(!(c >= 'A' && c <= 'Z'));
    // A pattern matches the host it names: itself, or one more label for a wildcard.
    std::string host = m.rfind("*.", 0) == 0 ? "mx" + m.substr(1) : m;
    FUZZ_CHECK(sts::mxMatches(m, host) && p.allows(host));
  }
}

void samePolicy(const sts::Policy& a, const sts::Policy& b) {
  FUZZ_CHECK(a.mode == b.mode && a.mx == b.mx && a.maxAge == b.maxAge && a.id == b.id);
}

void fuzzStsPolicy(std::string_view body) {
  sts::Policy p;
  std::string error;
  bool ok = sts::parsePolicy(body, p, error);
  FUZZ_CHECK(ok == error.empty());
  if (!ok) return;
  checkPolicy(p);
  // What the policy cache writes it reads back the same (a restart keeps it).
  p.id = "fuzz1";
  sts::CachedPolicy e{"example.test", p, kNow + 1000};
  std::string file = sts::encodeCache({e}, 1, 1 << 20);
  FUZZ_CHECK(file.size() - std::string_view("moat-mta-sts-cache 1\nend 1\n").size() <=
             sts::cacheLineBytes(e.domain, p));
  std::vector<sts::CachedPolicy> back;
  FUZZ_CHECK(sts::decodeCache(file, kNow, 1, back, error));
  if (p.maxAge == 0) {  // expired at once: left out
    FUZZ_CHECK(back.empty());
    return;
  }
  FUZZ_CHECK(back.size() == 1 && back[0].domain == e.domain);
  FUZZ_CHECK(back[0].expires == kNow + std::min<int64_t>(1000, p.maxAge));
  samePolicy(back[0].policy, p);
}

void fuzzStsCache(std::string_view text) {
  std::vector<sts::CachedPolicy> got;
  std::string error;
  if (!sts::decodeCache(text, kNow, 4, got, error)) return;
  FUZZ_CHECK(got.size() <= 4);
  for (const auto& e : got) {
    FUZZ_CHECK(e.expires > kNow && e.expires <= kNow + static_cast<int64_t>(e.policy.maxAge));
    checkPolicy(e.policy);
  }
  std::string file = sts::encodeCache(got, 4, 1 << 20);
  std::vector<sts::CachedPolicy> again;
  FUZZ_CHECK(sts::decodeCache(file, kNow, 4, again, error));
  FUZZ_CHECK(again.size() == got.size());
}

struct Fed {
  sts::HttpResponse::State state, atEnd;
  int status;
  std::string body;
  bool headDone;
};

// Feeds `bytes` in pieces of the sizes `step` gives (0: all at once), then end().
template <typename Step>
Fed feedAll(std::string_view bytes, size_t maxBody, Step step) {
  sts::HttpResponse r(maxBody);
  size_t pos = 0, i = 0;
  while (pos < bytes.size() && r.state() == sts::HttpResponse::State::Incomplete) {
    size_t n = step(i++);
    if (n == 0) n = bytes.size();
    n = std::min(n, bytes.size() - pos);
    auto s = r.feed(bytes.substr(pos, n));
    FUZZ_CHECK(s == r.state());
    pos += n;
  }
  Fed f{r.state(), sts::HttpResponse::State::Incomplete, r.status(), r.body(), r.headDone()};
  f.atEnd = r.end();
  FUZZ_CHECK(r.body().size() <= maxBody);
  FUZZ_CHECK(f.status >= 0 && f.status <= 999);
  FUZZ_CHECK(f.atEnd != sts::HttpResponse::State::Incomplete);
  FUZZ_CHECK((f.atEnd == sts::HttpResponse::State::Error) == !r.error().empty());
  if (f.atEnd == sts::HttpResponse::State::Done) {
    FUZZ_CHECK(r.headDone());
    std::string cl = r.header("content-length");
    if (!cl.empty()) FUZZ_CHECK(std::stoull(cl) == r.body().size());
  }
  f.body = r.body();
  return f;
}

void fuzzHttp(std::string_view bytes, uint8_t param) {
  size_t maxBody = size_t{16} << (param % 8);
  Fed whole = feedAll(bytes, maxBody, [](size_t) { return size_t{0}; });
  Fed single = feedAll(bytes, maxBody, [](size_t) { return size_t{1}; });
  uint32_t seed = param;
  Fed pieces = feedAll(bytes, maxBody, [&seed](size_t) {
    seed = seed * 1103515245u + 12345u;
    return size_t{1} + (seed >> 16) % 23;
  });
  for (const Fed* f : {&single, &pieces}) {
    FUZZ_CHECK(f->state == whole.state && f->atEnd == whole.atEnd && f->status == whole.status &&
               f->headDone == whole.headDone);
    if (whole.atEnd != sts::HttpResponse::State::Error) FUZZ_CHECK(f->body == whole.body);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  uint8_t param = data[1];
  std::string_view rest(reinterpret_cast<const char*>(data) + 2, size - 2);
  switch (data[0] % 9) {
    case 0: fuzzSpf(rest, param); break;
    case 1: fuzzSpfMacro(rest, param); break;
    case 2: fuzzDmarc(rest); break;
    case 3: checkReportUri(rest); break;
    case 4: fuzzTlsrpt(rest); break;
    case 5: fuzzStsTxt(rest); break;
    case 6: fuzzStsPolicy(rest); break;
    case 7: fuzzStsCache(rest); break;
    case 8: fuzzHttp(rest, param); break;
  }
  return 0;
}
