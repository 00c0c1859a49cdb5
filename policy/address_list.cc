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
  EntryKind kind = entry.front() != '@' ? EntryKind::Address
                   : entry[1] == '.'    ? EntryKind::Subdomains
                                        : EntryKind::Domain;
  table_.insert(entry, kind, true);
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

bool AddressList::contains(std::string_view address) const { return static_cast<bool>(table_.find(address)); }

}  // namespace moat::policy
