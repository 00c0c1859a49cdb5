// policy/address_list.cc — see address_list.h.
#include "policy/address_list.h"

#include "policy/list_file.h"

namespace moat::policy {

std::shared_ptr<const AddressList> AddressList::load(const std::string& path, std::string_view what, Errors& errors) {
  auto list = std::make_shared<AddressList>();
  list->path_ = path;
  bool ok = readListFile(path, what, 256ull << 20, errors, [&](int line, std::string_view entry) {
    if (!isAddressOrDomain(entry) || entry == "@.") {
      errors.error(path, line, "\"" + std::string(entry) + "\" is not an address, @domain or @.domain");
      return false;
    }
    std::string lower = lowerAscii(entry);
    if (lower.front() != '@')
      list->addresses_.insert(std::move(lower));
    else if (lower[1] == '.')
      list->subdomainsOf_.insert(lower.substr(2));
    else
      list->domains_.insert(lower.substr(1));
    return true;
  });
  return ok ? list : nullptr;
}

bool AddressList::contains(std::string_view address) const {
  size_t at = address.rfind('@');
  if (at == std::string_view::npos || at == 0) return false;
  std::string lower = lowerAscii(address);
  if (addresses_.count(lower)) return true;
  std::string user = withoutSubaddress(lower);
  if (!user.empty() && addresses_.count(user)) return true;
  std::string_view domain = std::string_view(lower).substr(at + 1);
  if (domains_.count(std::string(domain))) return true;
  for (size_t dot = domain.find('.'); dot != std::string_view::npos; dot = domain.find('.', dot + 1))
    if (subdomainsOf_.count(std::string(domain.substr(dot + 1)))) return true;
  return false;
}

}  // namespace moat::policy
