// filters/spf/record.cc — SPF record parsing and macro expansion (RFC 7208 §4.6, §5, §6,
// §7). Input is DNS data from anyone: every loop is bounded by the input's length and
// every number is range-checked. Logs nothing.
#include "filters/spf/record.h"

#include <algorithm>
#include <cctype>

namespace moat::filters::spf {

namespace {

char lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }

std::string toLower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = lower(c);
  return out;
}

bool isAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool isDigit(char c) { return c >= '0' && c <= '9'; }
bool isAlnum(char c) { return isAlpha(c) || isDigit(c); }

// "0" or a number without leading zeros, at most `max`.
std::optional<int> parseCidr(std::string_view s, int max) {
  if (s.empty() || s.size() > 3) return std::nullopt;
  if (s.size() > 1 && s[0] == '0') return std::nullopt;
  int v = 0;
  for (char c : s) {
    if (!isDigit(c)) return std::nullopt;
    v = v * 10 + (c - '0');
  }
  if (v > max) return std::nullopt;
  return v;
}

// Splits a trailing "/n" and "//m" (dual-cidr-length, §5.6) off `rest`.
bool splitDualCidr(std::string_view& rest, int& cidr4, int& cidr6) {
  auto trailingDigits = [](std::string_view s) {
    size_t i = s.size();
    while (i > 0 && isDigit(s[i - 1])) --i;
    return i;
  };
  size_t d = trailingDigits(rest);
  if (d >= 2 && d < rest.size() && rest.substr(d - 2, 2) == "//") {
    auto v = parseCidr(rest.substr(d), 128);
    if (!v) return false;
    cidr6 = *v;
    rest = rest.substr(0, d - 2);
    d = trailingDigits(rest);
  }
  if (d >= 1 && d < rest.size() && rest[d - 1] == '/') {
    auto v = parseCidr(rest.substr(d), 32);
    if (!v) return false;
    cidr4 = *v;
    rest = rest.substr(0, d - 1);
  }
  // A slash left over is a malformed length ("/", "/x", "///24").
  return true;
}

bool isToplabel(std::string_view label) {
  if (label.empty() || label.size() > 63) return false;
  if (label.front() == '-' || label.back() == '-') return false;
  bool alpha = false;
  for (char c : label) {
    if (isAlpha(c)) alpha = true;
    else if (!isDigit(c) && c != '-') return false;
  }
  // All-numeric top labels would make an IP address look like a name.
  return alpha || label.find('-') != std::string_view::npos;
}

std::optional<Mechanism> parseMechanism(std::string_view term, std::string* error) {
  Mechanism m;
  m.text = std::string(term);
  if (!term.empty() && (term[0] == '+' || term[0] == '-' || term[0] == '~' || term[0] == '?')) {
    m.qualifier = static_cast<Qualifier>(term[0]);
    term.remove_prefix(1);
  }
  size_t n = 0;
  while (n < term.size() && term[n] != ':' && term[n] != '/') ++n;
  std::string name = toLower(term.substr(0, n));
  std::string_view rest = term.substr(n);
  auto fail = [&](const char* why) -> std::optional<Mechanism> {
    if (error) *error = std::string(why) + ": " + m.text;
    return std::nullopt;
  };
  auto argument = [&](std::string_view r) -> std::optional<std::string_view> {
    if (r.empty() || r[0] != ':') return std::nullopt;
    return r.substr(1);
  };
  if (name == "all") {
    if (!rest.empty()) return fail("all takes no argument");
    m.kind = MechKind::All;
  } else if (name == "include" || name == "exists") {
    m.kind = name == "include" ? MechKind::Include : MechKind::Exists;
    auto arg = argument(rest);
    if (!arg || !validDomainSpec(*arg)) return fail("bad domain-spec");
    m.domainSpec = std::string(*arg);
  } else if (name == "a" || name == "mx") {
    m.kind = name == "a" ? MechKind::A : MechKind::Mx;
    if (!splitDualCidr(rest, m.cidr4, m.cidr6)) return fail("bad cidr length");
    if (!rest.empty()) {
      auto arg = argument(rest);
      if (!arg || !validDomainSpec(*arg)) return fail("bad domain-spec");
      m.domainSpec = std::string(*arg);
    }
  } else if (name == "ptr") {
    m.kind = MechKind::Ptr;
    if (!rest.empty()) {
      auto arg = argument(rest);
      if (!arg || !validDomainSpec(*arg)) return fail("bad domain-spec");
      m.domainSpec = std::string(*arg);
    }
  } else if (name == "ip4" || name == "ip6") {
    bool v4 = name == "ip4";
    m.kind = v4 ? MechKind::Ip4 : MechKind::Ip6;
    auto arg = argument(rest);
    if (!arg) return fail("missing address");
    std::string_view addr = *arg;
    int prefix = v4 ? 32 : 128;
    if (auto slash = addr.find('/'); slash != std::string_view::npos) {
      auto v = parseCidr(addr.substr(slash + 1), prefix);
      if (!v) return fail("bad cidr length");
      prefix = *v;
      addr = addr.substr(0, slash);
    }
    if (v4 && addr.find(':') != std::string_view::npos) return fail("bad ip4");
    if (!v4 && addr.find(':') == std::string_view::npos) return fail("bad ip6");
    auto ip = mta::IpAddress::parse(addr);
    // ip6 of an IPv4-mapped address parses as IPv4; keep it as written.
    if (!ip) return fail("bad address");
    if (!v4 && ip->isV4()) prefix = std::max(0, prefix - 96);
    m.network = mta::Network(*ip, prefix);
  } else {
    return fail("unknown mechanism");
  }
  return m;
}

// A modifier name followed by '=' (§4.6.1).
bool isModifier(std::string_view term, size_t& eq) {
  eq = term.find('=');
  if (eq == std::string_view::npos || eq == 0 || !isAlpha(term[0])) return false;
  for (size_t i = 1; i < eq; ++i) {
    char c = term[i];
    if (!isAlnum(c) && c != '-' && c != '_' && c != '.') return false;
  }
  return true;
}

constexpr std::string_view kDelimiters = ".-+,/_=";

std::string urlEscape(std::string_view s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (isAlnum(static_cast<char>(c)) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string dottedIp(const mta::IpAddress& ip) {
  if (ip.isV4()) return ip.str();
  // Upper-case nibbles, as the OpenSPF suite expects in exp= text (v-macro-ip6); in
  // domain names case does not matter and normalizeDomain lower-cases them.
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (size_t i = 0; i < 16; ++i) {
    uint8_t b = ip.bytes()[i];
    if (!out.empty()) out += '.';
    out += hex[b >> 4];
    out += '.';
    out += hex[b & 15];
  }
  return out;
}

std::string macroValue(char letter, const MacroContext& ctx) {
  switch (letter) {
    case 's': return ctx.sender;
    case 'l': return ctx.local;
    case 'o': return ctx.senderDomain;
    case 'd': return ctx.domain;
    case 'i': return dottedIp(ctx.ip);
    case 'p': return ctx.pName.empty() ? "unknown" : ctx.pName;
    case 'v': return ctx.ip.isV4() ? "in-addr" : "ip6";
    case 'h': return ctx.helo;
    case 'c': return ctx.ip.str();
    case 'r': return ctx.receiver;
    case 't': return std::to_string(ctx.timestamp);
  }
  return "";
}

// Applies the transformers (§7.3): split on the delimiters, optionally reverse, keep the
// right-most `keep` parts, join with dots.
std::string transform(std::string_view value, int keep, bool reverse, std::string_view delims) {
  if (delims.empty()) delims = ".";
  std::vector<std::string_view> parts;
  size_t start = 0;
  for (size_t i = 0; i <= value.size(); ++i) {
    if (i == value.size() || delims.find(value[i]) != std::string_view::npos) {
      parts.push_back(value.substr(start, i - start));
      start = i + 1;
    }
  }
  if (reverse) std::reverse(parts.begin(), parts.end());
  size_t from = (keep > 0 && static_cast<size_t>(keep) < parts.size()) ? parts.size() - keep : 0;
  std::string out;
  for (size_t i = from; i < parts.size(); ++i) {
    if (i > from) out += '.';
    out += parts[i];
  }
  return out;
}

// One "%{...}" at input[pos] (pos at '{'); advances pos past '}'.
bool expandOne(std::string_view input, size_t& pos, const MacroContext& ctx, bool explanation, std::string* out) {
  ++pos;  // '{'
  if (pos >= input.size()) return false;
  char raw = input[pos++];
  char letter = lower(raw);
  if (std::string_view("slodipvh").find(letter) == std::string_view::npos) {
    if (!explanation || std::string_view("crt").find(letter) == std::string_view::npos) return false;
  }
  int keep = 0;
  size_t digits = 0;
  while (pos < input.size() && isDigit(input[pos])) {
    if (keep < 1000) keep = keep * 10 + (input[pos] - '0');
    ++pos;
    ++digits;
  }
  if (digits > 0 && keep == 0) return false;
  bool reverse = false;
  if (pos < input.size() && lower(input[pos]) == 'r') {
    reverse = true;
    ++pos;
  }
  size_t dstart = pos;
  while (pos < input.size() && kDelimiters.find(input[pos]) != std::string_view::npos) ++pos;
  std::string_view delims = input.substr(dstart, pos - dstart);
  if (pos >= input.size() || input[pos] != '}') return false;
  ++pos;
  if (!out) return true;
  std::string value = transform(macroValue(letter, ctx), keep, reverse, delims);
  *out += (raw != letter) ? urlEscape(value) : value;
  return true;
}

}  // namespace

bool isSpfRecord(std::string_view txt) {
  if (txt.size() < 6) return false;
  if (toLower(txt.substr(0, 6)) != "v=spf1") return false;
  return txt.size() == 6 || txt[6] == ' ';
}

std::optional<Record> parseRecord(std::string_view txt, std::string* error) {
  if (!isSpfRecord(txt)) {
    if (error) *error = "not an SPF record";
    return std::nullopt;
  }
  Record rec;
  std::string_view rest = txt.substr(6);
  for (unsigned char c : rest) {
    if (c < 0x20 || c > 0x7e) {
      if (error) *error = "non-ASCII or control character in record";
      return std::nullopt;
    }
  }
  size_t pos = 0;
  while (pos < rest.size()) {
    if (rest[pos] == ' ') {
      ++pos;
      continue;
    }
    size_t end = rest.find(' ', pos);
    if (end == std::string_view::npos) end = rest.size();
    std::string_view term = rest.substr(pos, end - pos);
    pos = end;
    size_t eq = 0;
    if (isModifier(term, eq)) {
      std::string name = toLower(term.substr(0, eq));
      std::string_view value = term.substr(eq + 1);
      if (name == "redirect" || name == "exp") {
        auto& slot = name == "redirect" ? rec.redirect : rec.exp;
        if (slot) {
          if (error) *error = "duplicate " + name + " modifier";
          return std::nullopt;
        }
        if (!validDomainSpec(value)) {
          if (error) *error = "bad domain-spec in " + name;
          return std::nullopt;
        }
        slot = std::string(value);
      } else if (!expandMacros(value, MacroContext{}, true, nullptr)) {
        // Unknown modifiers are ignored, but must still be valid macro-strings (§6).
        if (error) *error = "bad macro-string in modifier " + name;
        return std::nullopt;
      }
      continue;
    }
    auto mech = parseMechanism(term, error);
    if (!mech) return std::nullopt;
    rec.mechanisms.push_back(std::move(*mech));
  }
  return rec;
}

bool expandMacros(std::string_view input, const MacroContext& ctx, bool explanation, std::string* out) {
  size_t pos = 0;
  while (pos < input.size()) {
    char c = input[pos];
    if (c != '%') {
      // macro-literal: visible ASCII except '%' (§7.1); exp text may carry spaces.
      if (static_cast<unsigned char>(c) < 0x21 || static_cast<unsigned char>(c) > 0x7e) {
        if (!(explanation && c == ' ')) return false;
      }
      if (out) *out += c;
      ++pos;
      continue;
    }
    if (pos + 1 >= input.size()) return false;
    char n = input[pos + 1];
    if (n == '{') {
      ++pos;
      if (!expandOne(input, pos, ctx, explanation, out)) return false;
      continue;
    }
    if (n == '%') { if (out) *out += '%'; }
    else if (n == '_') { if (out) *out += ' '; }
    else if (n == '-') { if (out) *out += "%20"; }
    else return false;
    pos += 2;
  }
  return true;
}

bool usesPtrMacro(std::string_view input) {
  for (size_t i = 0; i + 2 < input.size(); ++i) {
    if (input[i] == '%' && input[i + 1] == '%') { ++i; continue; }
    if (input[i] == '%' && input[i + 1] == '{' && lower(input[i + 2]) == 'p') return true;
  }
  return false;
}

bool validDomainSpec(std::string_view spec) {
  if (spec.empty() || !expandMacros(spec, MacroContext{}, false, nullptr)) return false;
  if (spec.back() == '.') spec.remove_suffix(1);
  if (spec.empty()) return false;
  if (spec.back() == '}') return true;  // ends in a macro-expand
  if (spec.size() >= 2 && spec[spec.size() - 2] == '%') {
    // "%%", "%_", "%-" are macro-expands, unless the '%' is itself escaped.
    size_t percents = 0;
    for (size_t i = spec.size() - 1; i-- > 0 && spec[i] == '%';) ++percents;
    if (percents % 2 == 1) return true;
  }
  size_t dot = spec.rfind('.');
  if (dot == std::string_view::npos) return false;
  return isToplabel(spec.substr(dot + 1));
}

std::optional<std::string> normalizeDomain(std::string_view expanded) {
  while (!expanded.empty() && expanded.back() == '.') expanded.remove_suffix(1);
  while (expanded.size() > 253) {
    size_t dot = expanded.find('.');
    if (dot == std::string_view::npos) return std::nullopt;
    expanded.remove_prefix(dot + 1);
  }
  if (expanded.empty()) return std::nullopt;
  size_t start = 0;
  for (size_t i = 0; i <= expanded.size(); ++i) {
    if (i == expanded.size() || expanded[i] == '.') {
      size_t len = i - start;
      if (len == 0 || len > 63) return std::nullopt;
      start = i + 1;
    }
  }
  return toLower(expanded);
}

bool validIdentityDomain(std::string_view domain) {
  if (!domain.empty() && domain.back() == '.') domain.remove_suffix(1);
  if (domain.empty() || domain.size() > 253) return false;
  if (domain.find('.') == std::string_view::npos) return false;
  size_t start = 0;
  for (size_t i = 0; i <= domain.size(); ++i) {
    if (i == domain.size() || domain[i] == '.') {
      std::string_view label = domain.substr(start, i - start);
      if (label.empty() || label.size() > 63) return false;
      for (char c : label) {
        if (!isAlnum(c) && c != '-' && c != '_' && static_cast<unsigned char>(c) < 0x80) return false;
      }
      start = i + 1;
    }
  }
  return true;
}

}  // namespace moat::filters::spf
