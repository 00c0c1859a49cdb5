// filters/dmarc/from_header.cc — see from_header.h.
#include "filters/dmarc/from_header.h"

#include <algorithm>
#include <cctype>

#include "filters/dmarc/org_domain.h"

namespace moat::filters::dmarc {

namespace {

constexpr size_t kMaxDomains = 16;  // bound on the author domains of one message

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
std::string blankQuotesAndComments(std::string_view v) {
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
  return out;
}

bool domainChar(char c) {
  auto u = static_cast<unsigned char>(c);
  return std::isalnum(u) || c == '.' || c == '-' || c == '_' || u >= 0x80 || c == '[' || c == ']' || c == ':';
}

// The domain after the last "@" of one mailbox; "" if the mailbox has no "@".
std::string mailboxDomain(std::string_view mailbox) {
  auto at = mailbox.rfind('@');
  if (at == std::string_view::npos) return "";
  size_t end = at + 1;
  while (end < mailbox.size() && domainChar(mailbox[end])) ++end;
  return normalizeDomain(mailbox.substr(at + 1, end - at - 1));
}

}  // namespace

std::vector<std::string> fromValueDomains(std::string_view value, std::string& error) {
  std::vector<std::string> out;
  auto clean = blankQuotesAndComments(value);
  bool sawAt = false;
  size_t start = 0;
  for (size_t i = 0; i <= clean.size(); ++i) {
    if (i < clean.size() && clean[i] != ',') continue;
    std::string_view mailbox(clean.data() + start, i - start);
    start = i + 1;
    if (mailbox.find('@') == std::string_view::npos) continue;
    sawAt = true;
    auto domain = mailboxDomain(mailbox);
    if (!validDomain(domain)) {
      error = "unusable From domain \"" + domain + "\"";
      continue;
    }
    if (std::find(out.begin(), out.end(), domain) == out.end()) {
      if (out.size() == kMaxDomains) {
        error = "too many From domains";
        break;
      }
      out.push_back(domain);
    }
  }
  if (!sawAt && error.empty()) {
    auto shown = std::string(value.substr(0, 80));
    error = "no address in From:" + shown;
  }
  return out;
}

std::vector<std::string> fromDomains(std::string_view message, std::string& error) {
  error.clear();
  std::vector<std::string> out;
  bool found = false;
  for (const auto& field : fromFields(message)) {
    std::string_view value;
    if (!fromValue(field, value)) continue;
    found = true;
    for (auto& d : fromValueDomains(value, error))
      if (std::find(out.begin(), out.end(), d) == out.end() && out.size() < kMaxDomains) out.push_back(d);
  }
  if (!found) error = "no From header field";
  return out;
}

}  // namespace moat::filters::dmarc
