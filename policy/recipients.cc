// policy/recipients.cc — see recipients.h.
#include "policy/recipients.h"

#include "policy/list_file.h"

namespace moat::policy {

std::shared_ptr<const RecipientTable> RecipientTable::load(const std::string& path, Errors& errors) {
  auto t = std::make_shared<RecipientTable>();
  t->path_ = path;
  bool ok = readListFile(path, "recipients", 256ull << 20, errors, [&](int line, std::string_view entry) {
    if (!isAddressOrDomain(entry)) {
      errors.error(path, line, "\"" + std::string(entry) + "\" is not an address or @domain");
      return false;
    }
    std::string lower = lowerAscii(entry);
    size_t at = lower.rfind('@');
    std::string domain = lower.substr(at + 1);
    t->domains_.insert(domain);
    if (at == 0)
      t->wholeDomains_.insert(domain);
    else
      t->addresses_.insert(std::move(lower));
    return true;
  });
  return ok ? t : nullptr;
}

bool RecipientTable::covers(std::string_view domain) const { return domains_.count(lowerAscii(domain)) > 0; }

bool RecipientTable::accepts(std::string_view address) const {
  size_t at = address.rfind('@');
  if (at == std::string_view::npos) return false;
  std::string lower = lowerAscii(address);
  std::string domain = lower.substr(at + 1);
  if (!domains_.count(domain) || wholeDomains_.count(domain) || addresses_.count(lower)) return true;
  std::string user = withoutSubaddress(lower);
  return !user.empty() && addresses_.count(user);
}

}  // namespace moat::policy
