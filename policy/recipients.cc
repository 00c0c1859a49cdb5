// policy/recipients.cc — see recipients.h.
#include "policy/recipients.h"

#include <cerrno>
#include <cstring>
#include <fstream>

#include "mta/runtime/scan.h"

namespace moat::policy {

namespace {

constexpr size_t kMaxFile = 256ull << 20;
constexpr size_t kMaxAddress = 254;  // RFC 5321 §4.5.3.1.3 path, less the brackets

std::string lowerAscii(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::shared_ptr<const RecipientTable> RecipientTable::load(const std::string& path, Errors& errors) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    errors.error(path, 0, std::string("cannot read the recipients file: ") + std::strerror(errno));
    return nullptr;
  }
  auto t = std::make_shared<RecipientTable>();
  t->path_ = path;
  std::string line;
  int lineNo = 0;
  size_t total = 0;
  bool ok = true;
  while (std::getline(in, line)) {
    ++lineNo;
    total += line.size() + 1;
    if (total > kMaxFile) {
      errors.error(path, lineNo, "the recipients file is larger than 256 MB");
      return nullptr;
    }
    std::string_view entry = trim(line);
    if (entry.empty() || entry.front() == '#') continue;
    size_t at = entry.rfind('@');
    bool good = at != std::string_view::npos && at + 1 < entry.size() && entry.size() <= kMaxAddress &&
                entry.find_first_of(" \t<>,;") == std::string_view::npos && mta::isPrintableUtf8(entry);
    if (!good) {
      errors.error(path, lineNo, "\"" + std::string(entry) + "\" is not an address or @domain");
      ok = false;
      continue;
    }
    std::string lower = lowerAscii(entry);
    std::string domain = lower.substr(at + 1);
    t->domains_.insert(domain);
    if (at == 0)
      t->wholeDomains_.insert(domain);
    else
      t->addresses_.insert(std::move(lower));
  }
  if (in.bad()) {
    errors.error(path, lineNo, std::string("cannot read the recipients file: ") + std::strerror(errno));
    return nullptr;
  }
  if (!ok) return nullptr;
  return t;
}

bool RecipientTable::covers(std::string_view domain) const { return domains_.count(lowerAscii(domain)) > 0; }

bool RecipientTable::accepts(std::string_view address) const {
  size_t at = address.rfind('@');
  if (at == std::string_view::npos) return false;
  std::string lower = lowerAscii(address);
  std::string domain = lower.substr(at + 1);
  if (!domains_.count(domain) || wholeDomains_.count(domain) || addresses_.count(lower)) return true;
  // RFC 5233 subaddress: "user+tag@domain" is user@domain's.
  size_t plus = lower.find('+');
  return plus != std::string::npos && plus < at && addresses_.count(lower.substr(0, plus) + lower.substr(at));
}

}  // namespace moat::policy
