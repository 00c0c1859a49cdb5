// filters/dmarc/from_header.cc — see from_header.h.
#include "filters/dmarc/from_header.h"

#include <algorithm>
#include <cctype>
#include <string>

#include "filters/dmarc/org_domain.h"

namespace moat::filters::dmarc {

namespace {

bool iequalsPrefix(std::string_view line, std::string_view name) {
  if (line.size() < name.size()) return false;
  for (size_t i = 0; i < name.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(line[i])) != name[i]) return false;
  return true;
}

// The value of a From field (after the colon); false if `field` is another field.
bool fromValue(std::string_view field, std::string_view& value) {
  if (!iequalsPrefix(field, "from")) return false;
  auto rest = field.substr(4);
  while (!rest.empty() && (rest[0] == ' ' || rest[0] == '\t')) rest.remove_prefix(1);
  if (rest.empty() || rest[0] != ':') return false;
  value = rest.substr(1);
  return true;
}

// The From fields of the header section, unfolded (RFC 5322 §2.2.3), as "From: value"
// without CRLF. Only From fields are copied: the rest of the header is just scanned.
std::vector<std::string> fromFields(std::string_view message) {
  std::vector<std::string> fields;
  bool inFrom = false;
  size_t pos = 0;
  while (pos < message.size()) {
    auto eol = message.find('\n', pos);
    if (eol == std::string_view::npos) eol = message.size();
    auto line = message.substr(pos, eol - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    pos = eol + 1;
    if (line.empty()) break;  // end of the header section
    bool continuation = line[0] == ' ' || line[0] == '\t';
    if (!continuation) {
      std::string_view value;
      inFrom = fromValue(line, value);
      if (inFrom) fields.emplace_back(line);
    } else if (inFrom) {
      fields.back().append(line);
    }
  }
  return fields;
}

// Blanks out quoted strings and (nested) comments, so their commas and "@"s do not count.
// `balanced` is false when a quoted string or comment is still open at the end.
std::string blankQuotesAndComments(std::string_view v, bool& balanced) {
  std::string out(v);
  bool quoted = false;
  int depth = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    char c = out[i];
    bool inside = quoted || depth > 0;
    if (inside && c == '\\' && i + 1 < out.size()) {
      out[i] = out[i + 1] = ' ';
      ++i;
      continue;
    }
    if (!quoted && c == '(') ++depth;
    else if (!quoted && c == ')' && depth > 0) --depth;
    else if (depth == 0 && c == '"') quoted = !quoted;
    else if (!inside) continue;
    out[i] = ' ';
  }
  balanced = !quoted && depth == 0;
  return out;
}

bool domainChar(char c) {
  auto u = static_cast<unsigned char>(c);
  return std::isalnum(u) || c == '.' || c == '-' || c == '_' || u >= 0x80 || c == '[' || c == ']' || c == ':';
}

void note(FromAuthors& a, std::string problem) {
  a.unusable = true;
  if (a.problem.empty()) a.problem = std::move(problem);
}

void addDomain(FromAuthors& a, const std::string& domain) {
  if (std::find(a.domains.begin(), a.domains.end(), domain) != a.domains.end()) return;
  if (a.domains.size() == kMaxFromDomains) {
    a.tooMany = true;
    if (a.problem.empty()) a.problem = "more than " + std::to_string(kMaxFromDomains) + " From domains";
    return;
  }
  a.domains.push_back(domain);
}

// The domain after the "@" at `at` (after optional whitespace: CFWS is allowed there, and
// comments are blanked to spaces).
void takeDomain(std::string_view text, size_t at, FromAuthors& out) {
  size_t begin = at + 1;
  while (begin < text.size() && (text[begin] == ' ' || text[begin] == '\t')) ++begin;
  size_t end = begin;
  while (end < text.size() && domainChar(text[end])) ++end;
  auto raw = text.substr(begin, end - begin);
  auto domain = normalizeDomain(raw);
  if (validDomain(domain))
    addDomain(out, domain);
  else
    note(out, "unusable From domain \"" + std::string(raw.substr(0, 80)) + "\"");
}

// A well-formed value: one mailbox per top-level comma piece, its domain after the piece's
// last "@" (an obsolete route "<@relay:a@b>" has more). Pieces without "@" (an unquoted
// "Doe, John <j@x>", a group's "name:") are skipped. Returns whether there was any "@".
bool scanMailboxes(std::string_view clean, FromAuthors& out) {
  bool sawAt = false;
  size_t start = 0;
  for (size_t i = 0; i <= clean.size(); ++i) {
    if (i < clean.size() && clean[i] != ',') continue;
    auto piece = clean.substr(start, i - start);
    auto at = piece.rfind('@');
    if (at != std::string_view::npos) {
      sawAt = true;
      takeDomain(piece, at, out);
    }
    start = i + 1;
  }
  return sawAt;
}

// Text that does not parse: every "@" starts a domain.
bool scanEveryAt(std::string_view text, FromAuthors& out) {
  bool sawAt = false;
  for (size_t at = text.find('@'); at != std::string_view::npos; at = text.find('@', at + 1)) {
    sawAt = true;
    takeDomain(text, at, out);
  }
  return sawAt;
}

}  // namespace

FromAuthors fromValueAuthors(std::string_view value) {
  FromAuthors out;
  out.fieldFound = true;
  bool balanced = true;
  auto clean = blankQuotesAndComments(value, balanced);
  bool sawAt;
  if (balanced) {
    sawAt = scanMailboxes(clean, out);
  } else {
    // A mail client may show what follows an unclosed quote or comment as the address:
    // read the raw text, so no domain in it escapes the check.
    note(out, "unbalanced quote or comment in From");
    sawAt = scanEveryAt(value, out);
  }
  out.addressFound = sawAt;
  if (!sawAt) note(out, "no address in From:" + std::string(value.substr(0, 80)));
  return out;
}

FromAuthors fromAuthors(std::string_view message) {
  FromAuthors out;
  for (const auto& field : fromFields(message)) {
    std::string_view value;
    if (!fromValue(field, value)) continue;
    auto one = fromValueAuthors(value);
    out.fieldFound = true;
    out.addressFound = out.addressFound || one.addressFound;
    out.unusable = out.unusable || one.unusable;
    out.tooMany = out.tooMany || one.tooMany;
    if (out.problem.empty()) out.problem = one.problem;
    for (const auto& d : one.domains) addDomain(out, d);
  }
  if (!out.fieldFound) {
    out.unusable = true;
    out.problem = "no From header field";
  }
  return out;
}

std::vector<std::string> fromValueDomains(std::string_view value, std::string& error) {
  auto a = fromValueAuthors(value);
  error = a.problem;
  return a.domains;
}

std::vector<std::string> fromDomains(std::string_view message, std::string& error) {
  auto a = fromAuthors(message);
  error = a.problem;
  return a.domains;
}

}  // namespace moat::filters::dmarc
