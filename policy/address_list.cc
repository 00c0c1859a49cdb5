// policy/address_list.cc — see address_list.h.
#include "policy/address_list.h"

#include "policy/list_file.h"

namespace moat::policy {

std::string AddressList::entryProblem(std::string_view entry) {
  if (!isAddressOrDomain(entry) || entry == "@.")
    return "\"" + std::string(entry) + "\" is not an address, @domain or @.domain";
  return "";
}

void AddressList::insert(std::string_view entry) {
  std::string lower = lowerAscii(entry);
  if (lower.front() != '@')
    addresses_.insert(std::move(lower));
  else if (lower[1] == '.')
    subdomainsOf_.insert(lower.substr(2));
  else
    domains_.insert(lower.substr(1));
}

std::shared_ptr<const AddressList> AddressList::load(const std::string& path, std::string_view what, Errors& errors) {
  auto list = std::make_shared<AddressList>();
  list->path_ = path;
  bool ok = readListFile(path, what, 256ull << 20, errors, [&](int line, std::string_view entry) {
    if (std::string problem = entryProblem(entry); !problem.empty()) {
      errors.error(path, line, problem);
      return false;
    }
    list->insert(entry);
    return true;
  });
  return ok ? list : nullptr;
}

std::shared_ptr<const AddressList> AddressList::fromEntries(const std::vector<std::string>& entries) {
  auto list = std::make_shared<AddressList>();
  for (const auto& e : entries)
    if (entryProblem(e).empty()) list->insert(e);
  return list;
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
