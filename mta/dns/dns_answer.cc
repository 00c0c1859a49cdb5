// mta/dns/dns_answer.cc — see dns_answer.h. The walk reads the header, skips the
// question, then reads each answer and authority RR's owner (ares_expand_name, which
// bounds compression-pointer loops), type, class, TTL and rdata span, refusing any field
// that runs past the buffer.
#include "mta/dns/dns_answer.h"

#include <ares.h>
#include <netdb.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

namespace moat::mta::dns {
namespace {

constexpr uint16_t kTypeCname = 5;
constexpr uint16_t kTypeSoa = 6;
constexpr uint16_t kClassIn = 1;
constexpr int kMaxChain = 16;
constexpr size_t kMaxRrs = 1024;  // far above any sane reply; bounds the work per reply

struct Rr {
  std::string owner;  // canonical (lower-case, no trailing dot)
  uint16_t type = 0;
  uint16_t cls = 0;
  uint32_t ttl = 0;
  size_t rdata = 0;  // offset into the message
  uint16_t rdlen = 0;
  bool authority = false;
};

struct Message {
  const unsigned char* buf = nullptr;
  size_t len = 0;
  std::vector<Rr> rrs;
};

std::string lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

uint16_t get16(const unsigned char* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
uint32_t get32(const unsigned char* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | uint32_t{p[3]};
}

// Expands the (possibly compressed) name at `pos`; sets `used` to its length in place.
std::optional<std::string> expandName(const Message& m, size_t pos, long& used) {
  if (pos >= m.len) return std::nullopt;
  char* out = nullptr;
  if (ares_expand_name(m.buf + pos, m.buf, static_cast<int>(m.len), &out, &used) != ARES_SUCCESS)
    return std::nullopt;
  std::unique_ptr<char, decltype(&ares_free_string)> owned(out, &ares_free_string);
  if (used <= 0 || pos + static_cast<size_t>(used) > m.len) return std::nullopt;
  return lower(out);
}

bool walk(Message& m) {
  if (m.len < 12) return false;
  const size_t qd = get16(m.buf + 4), an = get16(m.buf + 6), ns = get16(m.buf + 8);
  if (an + ns > kMaxRrs) return false;
  size_t pos = 12;
  for (size_t i = 0; i < qd; ++i) {
    long used = 0;
    if (!expandName(m, pos, used)) return false;
    pos += static_cast<size_t>(used) + 4;
    if (pos > m.len) return false;
  }
  for (size_t i = 0; i < an + ns; ++i) {
    long used = 0;
    auto owner = expandName(m, pos, used);
    if (!owner) return false;
    pos += static_cast<size_t>(used);
    if (pos + 10 > m.len) return false;
    Rr rr;
    rr.owner = std::move(*owner);
    rr.type = get16(m.buf + pos);
    rr.cls = get16(m.buf + pos + 2);
    // RFC 2181 8: a TTL with the top bit set is treated as zero.
    uint32_t ttl = get32(m.buf + pos + 4);
    rr.ttl = (ttl & 0x80000000u) ? 0 : ttl;
    rr.rdlen = get16(m.buf + pos + 8);
    rr.rdata = pos + 10;
    rr.authority = i >= an;
    pos = rr.rdata + rr.rdlen;
    if (pos > m.len) return false;
    m.rrs.push_back(std::move(rr));
  }
  return true;
}

// The negative TTL of RFC 2308 5 from the first SOA in the authority section.
std::optional<uint32_t> soaNegativeTtl(const Message& m) {
  for (const Rr& rr : m.rrs) {
    if (!rr.authority || rr.type != kTypeSoa || rr.rdlen < 22) continue;
    uint32_t minimum = get32(m.buf + rr.rdata + rr.rdlen - 4);
    return std::min(rr.ttl, minimum);
  }
  return std::nullopt;
}

struct Chain {
  std::string target;      // the name at the end of the CNAME chain
  uint32_t ttl = UINT32_MAX;
  bool broken = false;     // longer than kMaxChain (a loop)
};

Chain followChain(const Message& m, const std::string& qname) {
  Chain c{qname};
  for (int hop = 0; hop <= kMaxChain; ++hop) {
    const Rr* next = nullptr;
    for (const Rr& rr : m.rrs)
      if (!rr.authority && rr.type == kTypeCname && rr.cls == kClassIn && rr.owner == c.target) next = &rr;
    if (!next) return c;
    long used = 0;
    auto target = expandName(m, next->rdata, used);
    if (!target) return c;
    c.ttl = std::min(c.ttl, next->ttl);
    c.target = std::move(*target);
  }
  c.broken = true;
  return c;
}

// The smallest TTL of the answer RRs of `type` (all owners: c-ares' parsers take them all).
std::optional<uint32_t> dataTtl(const Message& m, uint16_t type) {
  std::optional<uint32_t> ttl;
  for (const Rr& rr : m.rrs)
    if (!rr.authority && rr.type == type) ttl = std::min(ttl.value_or(UINT32_MAX), rr.ttl);
  return ttl;
}

// RFC 4035 §3.2.3: the AD bit, bit 5 of the header's fourth octet.
bool adBit(const Message& m) { return m.len >= 12 && (m.buf[3] & 0x20) != 0; }

bool hasData(const Message& m, uint16_t type, const std::string& owner) {
  return std::any_of(m.rrs.begin(), m.rrs.end(), [&](const Rr& rr) {
    return !rr.authority && rr.type == type && rr.owner == owner;
  });
}

std::string cleanName(const char* s) {
  std::string n = lower(s ? s : "");
  while (!n.empty() && n.back() == '.') n.pop_back();
  return n;
}

// ---- record extraction through c-ares' parsers; each returns an ares status ----

int parseAddresses(const unsigned char* abuf, int alen, RrType type, Answer& a) {
  hostent* host = nullptr;
  int rc = type == RrType::A ? ares_parse_a_reply(abuf, alen, &host, nullptr, nullptr)
                             : ares_parse_aaaa_reply(abuf, alen, &host, nullptr, nullptr);
  std::unique_ptr<hostent, decltype(&ares_free_hostent)> owned(host, &ares_free_hostent);
  if (rc != ARES_SUCCESS) return rc;
  const int want = type == RrType::A ? AF_INET : AF_INET6;
  if (host->h_addrtype != want) return ARES_ENODATA;
  for (char** p = host->h_addr_list; p && *p; ++p) {
    const auto* bytes = reinterpret_cast<const uint8_t*>(*p);
    a.addresses.push_back(type == RrType::A ? IpAddress::v4(bytes) : IpAddress::v6(bytes));
  }
  return a.addresses.empty() ? ARES_ENODATA : ARES_SUCCESS;
}

int parseMx(const unsigned char* abuf, int alen, Answer& a) {
  ares_mx_reply* mx = nullptr;
  int rc = ares_parse_mx_reply(abuf, alen, &mx);
  std::unique_ptr<ares_mx_reply, decltype(&ares_free_data)> owned(mx, &ares_free_data);
  if (rc != ARES_SUCCESS) return rc;
  for (auto* r = mx; r; r = r->next) a.mx.push_back({r->priority, cleanName(r->host)});
  std::stable_sort(a.mx.begin(), a.mx.end(),
                   [](const MxRecord& x, const MxRecord& y) { return x.preference < y.preference; });
  return a.mx.empty() ? ARES_ENODATA : ARES_SUCCESS;
}

// ares_parse_txt_reply_ext marks the first string of each record (record_start): strings
// of one record are joined, records stay apart (RFC 7208 3.3, RFC 6376 3.6.2.2).
int parseTxt(const unsigned char* abuf, int alen, Answer& a) {
  ares_txt_ext* txt = nullptr;
  int rc = ares_parse_txt_reply_ext(abuf, alen, &txt);
  std::unique_ptr<ares_txt_ext, decltype(&ares_free_data)> owned(txt, &ares_free_data);
  if (rc != ARES_SUCCESS) return rc;
  for (auto* r = txt; r; r = r->next) {
    if (r->record_start || a.txt.empty()) a.txt.emplace_back();
    a.txt.back().append(reinterpret_cast<const char*>(r->txt), r->length);
  }
  return a.txt.empty() ? ARES_ENODATA : ARES_SUCCESS;
}

int parsePtr(const unsigned char* abuf, int alen, Answer& a) {
  // The address only fills hostent fields we do not read; c-ares wants a valid buffer.
  const unsigned char dummy[4] = {0, 0, 0, 0};
  hostent* host = nullptr;
  int rc = ares_parse_ptr_reply(abuf, alen, dummy, sizeof dummy, AF_INET, &host);
  std::unique_ptr<hostent, decltype(&ares_free_hostent)> owned(host, &ares_free_hostent);
  if (rc != ARES_SUCCESS) return rc;
  // c-ares lists every PTR target in h_aliases (h_name is only the last one).
  for (char** p = host->h_aliases; p && *p; ++p) a.names.push_back(cleanName(*p));
  if (a.names.empty() && host->h_name) a.names.push_back(cleanName(host->h_name));
  return a.names.empty() ? ARES_ENODATA : ARES_SUCCESS;
}

int parseCname(const Message& m, const std::string& qname, Answer& a) {
  for (const Rr& rr : m.rrs) {
    if (rr.authority || rr.type != kTypeCname || rr.owner != qname) continue;
    long used = 0;
    if (auto t = expandName(m, rr.rdata, used)) a.names.push_back(*t);
  }
  return a.names.empty() ? ARES_ENODATA : ARES_SUCCESS;
}

// RFC 6698 §2.1: usage, selector, matching type (one octet each), then the association
// data. c-ares 1.18 has no TLSA parser, so the walk's spans are read here. A record too
// short to hold data, or a SHA2-256/512 digest of the wrong length, is left out (RFC 7671
// §5: such a record cannot match; Postfix drops it too): the others still count.
int parseTlsa(const Message& m, const std::string& owner, Answer& a) {
  constexpr uint16_t kTypeTlsa = static_cast<uint16_t>(RrType::TLSA);
  bool any = false;
  for (const Rr& rr : m.rrs) {
    if (rr.authority || rr.type != kTypeTlsa || rr.cls != kClassIn || rr.owner != owner) continue;
    any = true;
    if (rr.rdlen < 4) continue;
    const unsigned char* p = m.buf + rr.rdata;
    TlsaRecord t{p[0], p[1], p[2], std::string(reinterpret_cast<const char*>(p + 3), rr.rdlen - 3u)};
    if ((t.mtype == 1 && t.data.size() != 32) || (t.mtype == 2 && t.data.size() != 64)) continue;
    a.tlsa.push_back(std::move(t));
  }
  // Records that are all malformed are an RRset that is there but unusable: Ok, empty
  // list (the caller sees "no usable record"), not "no data".
  return any ? ARES_SUCCESS : ARES_ENODATA;
}

int extract(const Message& m, const std::string& qname, RrType type, Answer& a) {
  const auto* abuf = m.buf;
  const int alen = static_cast<int>(m.len);
  switch (type) {
    case RrType::A:
    case RrType::AAAA: return parseAddresses(abuf, alen, type, a);
    case RrType::MX: return parseMx(abuf, alen, a);
    case RrType::TXT: return parseTxt(abuf, alen, a);
    case RrType::PTR: return parsePtr(abuf, alen, a);
    case RrType::CNAME: return parseCname(m, qname, a);
    case RrType::TLSA: return ARES_ENODATA;  // parseReply reads TLSA at the chain's end
  }
  return ARES_ENODATA;
}

Answer failure(Status s, std::string why) {
  Answer a;
  a.status = s;
  a.error = std::move(why);
  return a;
}

Answer negative(Status s, const Message* m, const TtlPolicy& policy) {
  Answer a;
  a.status = s;
  auto soa = m ? soaNegativeTtl(*m) : std::nullopt;
  a.ttl = std::min(soa.value_or(policy.defaultNegativeTtl), policy.maxNegativeTtl);
  return a;
}

}  // namespace

Status statusFromAres(int rc) {
  switch (rc) {
    case ARES_SUCCESS: return Status::Ok;
    case ARES_ENOTFOUND: return Status::NxDomain;
    case ARES_ENODATA: return Status::NoData;
    case ARES_EBADNAME: return Status::Malformed;
    default: return Status::TempFail;  // ETIMEOUT, ESERVFAIL, EREFUSED, ECONNREFUSED, ...
  }
}

std::optional<std::string> canonicalName(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty() || name.size() > 253) return std::nullopt;
  size_t label = 0;
  for (char c : name) {
    if (c == '\0') return std::nullopt;
    if (c == '.') {
      if (label == 0) return std::nullopt;
      label = 0;
    } else if (++label > 63) {
      return std::nullopt;
    }
  }
  if (label == 0) return std::nullopt;
  return lower(std::string(name));
}

ParsedReply parseReply(int rc, const unsigned char* abuf, int alen, std::string_view qnameIn,
                       RrType type, const TtlPolicy& policy) {
  ParsedReply out;
  const Status st = statusFromAres(rc);
  if (st == Status::TempFail || st == Status::Malformed)
    return {failure(st, ares_strerror(rc)), std::nullopt};
  Message m{abuf, abuf && alen > 0 ? static_cast<size_t>(alen) : 0, {}};
  const bool walked = m.buf && walk(m);
  if (st == Status::NxDomain || st == Status::NoData) {
    out.answer = negative(st, walked ? &m : nullptr, policy);
    out.answer.authenticated = walked && adBit(m);  // a validated denial (RFC 4035 §5.4)
    return out;
  }
  if (!walked) return {failure(Status::TempFail, "malformed reply"), std::nullopt};

  const std::string qname = lower(std::string(qnameIn));
  const uint16_t wire = static_cast<uint16_t>(type);
  Chain chain;
  if (type != RrType::CNAME) {
    chain = followChain(m, qname);
    if (chain.broken) return {failure(Status::TempFail, "CNAME chain too long"), std::nullopt};
    out.chainTtl = chain.ttl;
    if (chain.target != qname && !hasData(m, wire, chain.target) && !soaNegativeTtl(m)) {
      out.follow = chain.target;
      out.answer.authenticated = adBit(m);  // this part of the chain; the caller ANDs the rest
      return out;
    }
  }
  Answer& a = out.answer;
  int xrc = type == RrType::TLSA ? parseTlsa(m, chain.target, a) : extract(m, qname, type, a);
  if (xrc == ARES_ENODATA) {
    Answer n = negative(Status::NoData, &m, policy);
    n.ttl = std::min(n.ttl, chain.ttl);
    n.authenticated = adBit(m);
    out.answer = std::move(n);
    return out;
  }
  if (xrc != ARES_SUCCESS) return {failure(Status::TempFail, ares_strerror(xrc)), std::nullopt};
  a.status = Status::Ok;
  a.authenticated = adBit(m);
  if (chain.target != qname && type != RrType::CNAME) a.canonical = chain.target;
  const uint16_t ttlType = type == RrType::CNAME ? kTypeCname : wire;
  a.ttl = std::min({dataTtl(m, ttlType).value_or(0), chain.ttl, policy.maxTtl});
  return out;
}

}  // namespace moat::mta::dns
