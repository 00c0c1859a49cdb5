// filters/dmarc/record.cc — see record.h. RFC 7489 §6.3 (tags), §6.4 (grammar).
#include "filters/dmarc/record.h"

#include <algorithm>
#include <cctype>
#include <set>

#include "mta/runtime/scan.h"

namespace moat::filters::dmarc {

namespace {

using mta::isWhite;
using mta::trimWhite;

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == sep) {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return out;
}

bool allDigits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// tag-name per the DKIM-style tag-list DMARC borrows: ALPHA *ALNUMPUNC.
bool validTagName(std::string_view s) {
  if (s.empty() || !std::isalpha(static_cast<unsigned char>(s[0]))) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
}

struct Tag {
  std::string name;  // lower-case
  std::string_view value;
};

// Splits "name *WSP = *WSP value"; false if there is no "=" or the name is not a tag name.
bool splitTag(std::string_view piece, Tag& tag) {
  auto eq = piece.find('=');
  if (eq == std::string_view::npos) return false;
  auto name = trimWhite(piece.substr(0, eq));
  if (!validTagName(name)) return false;
  tag.name = lower(name);
  tag.value = trimWhite(piece.substr(eq + 1));
  return true;
}

bool parsePolicy(std::string_view v, std::string& out) {
  auto l = lower(v);
  if (l != "none" && l != "quarantine" && l != "reject") return false;
  out = l;
  return true;
}

bool parseMode(std::string_view v, std::string& out) {
  auto l = lower(v);
  if (l != "r" && l != "s") return false;
  out = l;
  return true;
}

// A colon-separated keyword list whose every item is in `allowed`; normalized to "a:b".
bool parseList(std::string_view v, const std::set<std::string>& allowed, std::string& out) {
  std::string joined;
  for (auto item : split(v, ':')) {
    auto l = lower(trimWhite(item));
    if (!allowed.count(l)) return false;
    if (!joined.empty()) joined += ':';
    joined += l;
  }
  out = joined;
  return true;
}

bool parseUris(std::string_view v, std::vector<std::string>& out) {
  out.clear();
  for (auto item : split(v, ',')) {
    ReportUri uri;
    if (parseReportUri(item, uri)) out.emplace_back(trimWhite(item));
  }
  return true;  // invalid URIs are dropped, not fatal (§6.3: receivers ignore what they cannot use)
}

bool parseNumber(std::string_view v, uint64_t max, uint64_t& out) {
  if (!allDigits(v) || v.size() > 10) return false;
  uint64_t n = 0;
  for (char c : v) n = n * 10 + static_cast<uint64_t>(c - '0');
  if (n > max) return false;
  out = n;
  return true;
}

// Applies one known tag; false if its value is invalid. Unknown tags are ignored (§6.3).
bool applyTag(const Tag& t, Record& r) {
  const auto& n = t.name;
  if (n == "p") return parsePolicy(t.value, r.p);
  if (n == "sp") return parsePolicy(t.value, r.sp);
  if (n == "np") return parsePolicy(t.value, r.np);
  if (n == "adkim") return parseMode(t.value, r.adkim);
  if (n == "aspf") return parseMode(t.value, r.aspf);
  if (n == "fo") return parseList(t.value, {"0", "1", "d", "s"}, r.fo);
  if (n == "rf") return parseList(t.value, {"afrf"}, r.rf);
  if (n == "rua") return parseUris(t.value, r.rua);
  if (n == "ruf") return parseUris(t.value, r.ruf);
  uint64_t num = 0;
  if (n == "pct") {
    if (!parseNumber(t.value, 100, num)) return false;
    r.pct = static_cast<int>(num);
    return true;
  }
  if (n == "ri") {
    if (!parseNumber(t.value, UINT32_MAX, num)) return false;
    r.ri = static_cast<uint32_t>(num);
    return true;
  }
  return true;
}

bool isPolicyTag(const std::string& name) { return name == "p" || name == "sp"; }

}  // namespace

std::string_view parseStatusName(ParseStatus s) {
  switch (s) {
    case ParseStatus::Ok: return "ok";
    case ParseStatus::NotDmarc: return "not-dmarc";
    case ParseStatus::BadVersion: return "bad-version";
    case ParseStatus::BadValue: return "bad-value";
    case ParseStatus::MissingP: return "missing-p";
    case ParseStatus::Empty: return "empty";
  }
  return "?";
}

ParseStatus parseRecord(std::string_view txt, Record& out, std::string& error) {
  ParseDetail detail;
  return parseRecord(txt, out, error, detail);
}

ParseStatus parseRecord(std::string_view txt, Record& out, std::string& error, ParseDetail& detail) {
  detail = {};
  out = Record{};
  auto body = trimWhite(txt);
  if (body.empty()) {
    error = "empty record";
    return ParseStatus::Empty;
  }
  auto pieces = split(body, ';');
  Tag first;
  if (!splitTag(trimWhite(pieces[0]), first) || first.name != "v") {
    error = "the first tag is not v=";
    return ParseStatus::NotDmarc;
  }
  if (first.value != "DMARC1") {  // %x44 %x4d %x41 %x52 %x43 %x31: case-sensitive
    error = "v=" + std::string(first.value) + " is not DMARC1";
    return ParseStatus::BadVersion;
  }
  std::set<std::string> seen{"v"};
  std::string firstBad;
  for (size_t i = 1; i < pieces.size(); ++i) {
    auto piece = trimWhite(pieces[i]);
    if (piece.empty()) continue;  // a trailing ";" (and, leniently, ";;")
    Tag tag;
    bool isTag = splitTag(piece, tag);
    bool ok = isTag && seen.insert(tag.name).second && applyTag(tag, out);
    if (ok) continue;
    if (!isTag) detail.syntaxError = true;
    if (tag.name.empty() || !isPolicyTag(tag.name)) detail.otherTagInvalid = true;
    else detail.policyTagInvalid = true;
    if (firstBad.empty()) firstBad = std::string(piece);
  }
  if (!firstBad.empty()) {
    error = "invalid tag \"" + firstBad + "\"";
    return ParseStatus::BadValue;
  }
  if (out.p.empty()) {
    detail.policyTagInvalid = true;
    error = "no p= tag";
    return ParseStatus::MissingP;
  }
  return ParseStatus::Ok;
}

bool isDmarcRecord(std::string_view txt) {
  Record r;
  std::string error;
  auto s = parseRecord(txt, r, error);
  return s != ParseStatus::NotDmarc && s != ParseStatus::BadVersion && s != ParseStatus::Empty;
}

bool parseReportUri(std::string_view text, ReportUri& out) {
  auto s = trimWhite(text);
  out = {};
  auto bang = s.rfind('!');
  if (bang != std::string_view::npos) {
    auto size = s.substr(bang + 1);
    uint64_t unit = 1;
    if (!size.empty()) {
      switch (std::tolower(static_cast<unsigned char>(size.back()))) {
        case 'k': unit = 1ull << 10; break;
        case 'm': unit = 1ull << 20; break;
        case 'g': unit = 1ull << 30; break;
        case 't': unit = 1ull << 40; break;
        default: break;
      }
      if (unit != 1) size.remove_suffix(1);
    }
    uint64_t n = 0;
    if (!allDigits(size) || size.size() > 9) return false;
    for (char c : size) n = n * 10 + static_cast<uint64_t>(c - '0');
    // Up to 999999999t does not fit in 64 bits: such a limit is no limit, not a wrapped one.
    out.maxSize = n > UINT64_MAX / unit ? UINT64_MAX : n * unit;
    s = s.substr(0, bang);
  }
  // URI = scheme ":" hier-part (RFC 3986): scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
  auto colon = s.find(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == s.size()) return false;
  auto scheme = s.substr(0, colon);
  if (!std::isalpha(static_cast<unsigned char>(scheme[0]))) return false;
  for (char c : scheme)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '-' && c != '.') return false;
  auto rest = s.substr(colon + 1);
  if (std::any_of(rest.begin(), rest.end(), [](char c) { return isWhite(c) || static_cast<unsigned char>(c) < 0x20; }))
    return false;
  out.uri = std::string(s);
  out.scheme = lower(scheme);
  out.address = std::string(out.scheme == "mailto" ? rest.substr(0, rest.find('?')) : rest);
  return true;
}

}  // namespace moat::filters::dmarc
