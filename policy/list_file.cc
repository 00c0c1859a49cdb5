// policy/list_file.cc — see list_file.h.
#include "policy/list_file.h"

#include <cerrno>
#include <cstring>
#include <fstream>

#include "mta/runtime/scan.h"

namespace moat::policy {

bool readListFile(const std::string& path, std::string_view what, size_t maxBytes, Errors& errors,
                  const std::function<bool(int line, std::string_view text)>& entry) {
  std::ifstream in(path, std::ios::binary);
  auto cannotRead = [&](int line) {
    errors.error(path, line, "cannot read the " + std::string(what) + " file: " + std::strerror(errno));
    return false;
  };
  if (!in) return cannotRead(0);
  std::string line;
  int lineNo = 0;
  size_t total = 0;
  bool ok = true;
  while (std::getline(in, line)) {
    ++lineNo;
    total += line.size() + 1;
    if (total > maxBytes) {
      errors.error(path, lineNo,
                   "the " + std::string(what) + " file is larger than " + std::to_string(maxBytes >> 20) + " MB");
      return false;
    }
    std::string_view text = line;
    while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
    while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r')) text.remove_suffix(1);
    if (text.empty() || text.front() == '#') continue;
    if (!entry(lineNo, text)) ok = false;
  }
  if (in.bad()) return cannotRead(lineNo);
  return ok;
}

bool isAddressOrDomain(std::string_view s) {
  size_t at = s.rfind('@');
  return at != std::string_view::npos && at + 1 < s.size() && s.size() <= 254 &&
         s.find_first_of(" \t<>,;") == std::string_view::npos && mta::isPrintableUtf8(s);
}

namespace {

// A host name as relay.domains takes it: labels of letters, digits and hyphens (8-bit
// octets for internationalized names), not beginning or ending with a hyphen.
bool domainOk(std::string_view d) {
  if (d.empty() || d.size() > 253) return false;
  size_t start = 0;
  while (start <= d.size()) {
    size_t end = d.find('.', start);
    if (end == std::string_view::npos) end = d.size();
    std::string_view label = d.substr(start, end - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') return false;
    for (unsigned char c : label)
      if (!(std::isalnum(c) || c == '-' || c >= 0x80)) return false;
    start = end + 1;
  }
  return true;
}

// A dot-atom local part (RFC 5322 §3.2.3; UTF-8 allowed, RFC 6531), at most 64 octets.
bool localOk(std::string_view l) {
  if (l.empty() || l.size() > 64 || l.front() == '.' || l.back() == '.' || l.find("..") != std::string_view::npos)
    return false;
  for (unsigned char c : l)
    if (c <= 0x20 || c == 0x7f ||
        std::string_view("()<>[]:;@\\,\"").find(static_cast<char>(c)) != std::string_view::npos)
      return false;
  return true;
}

}  // namespace

std::vector<std::string_view> lineFields(std::string_view s) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
    size_t start = i;
    while (i < s.size() && s[i] != ' ' && s[i] != '\t') ++i;
    if (i == start) break;
    if (s[start] == '#') break;  // a comment at the end of the line
    out.push_back(s.substr(start, i - start));
  }
  return out;
}

EntryKind entryKind(std::string_view s) {
  if (s.size() > 254) return EntryKind::Bad;
  if (s.starts_with("@.")) return domainOk(s.substr(2)) ? EntryKind::Subdomains : EntryKind::Bad;
  if (s.starts_with("@")) return domainOk(s.substr(1)) ? EntryKind::Domain : EntryKind::Bad;
  size_t at = s.find('@');
  if (at == std::string_view::npos) return EntryKind::Bad;
  return localOk(s.substr(0, at)) && domainOk(s.substr(at + 1)) ? EntryKind::Address : EntryKind::Bad;
}

std::string lowerAscii(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  return out;
}

std::string withoutSubaddress(std::string_view address) {
  size_t at = address.rfind('@');
  size_t plus = address.find('+');
  if (at == std::string_view::npos || plus == 0 || plus >= at) return "";
  return std::string(address.substr(0, plus)).append(address.substr(at));
}

}  // namespace moat::policy
