// policy/bcc_map.cc — see bcc_map.h.
#include "policy/bcc_map.h"

#include "policy/list_file.h"

namespace moat::policy {

std::shared_ptr<const BccMap> BccMap::load(const std::string& path, std::string_view what, Errors& errors) {
  auto m = std::make_shared<BccMap>();
  m->path_ = path;
  std::unordered_map<std::string, int> lines;  // each key's line, to name it in a duplicate's error
  bool ok = readListFile(path, what, 256ull << 20, errors, [&](int line, std::string_view text) {
    auto bad = [&](const std::string& why) {
      errors.error(path, line, why);
      return false;
    };
    auto f = lineFields(text);
    if (f.size() != 2) return bad("expected \"KEY BCC-ADDRESS\"");
    EntryKind kind = entryKind(f[0]);
    if (kind == EntryKind::Bad) return bad("\"" + std::string(f[0]) + "\" is not an address, @domain or @.domain");
    if (entryKind(f[1]) != EntryKind::Address) return bad("\"" + std::string(f[1]) + "\" is not an address");
    std::string key = lowerAscii(f[0]);
    if (auto it = lines.find(key); it != lines.end())
      return bad("\"" + std::string(f[0]) + "\" is already given at line " + std::to_string(it->second));
    lines.emplace(key, line);
    std::string bcc(f[1]);
    if (kind == EntryKind::Address)
      m->addresses_.emplace(std::move(key), std::move(bcc));
    else if (kind == EntryKind::Domain)
      m->domains_.emplace(key.substr(1), std::move(bcc));
    else
      m->subdomainsOf_.emplace(key.substr(2), std::move(bcc));
    return true;
  });
  return ok ? m : nullptr;
}

std::string BccMap::find(std::string_view address) const {
  size_t at = address.rfind('@');
  if (at == std::string_view::npos || at == 0 || at + 1 == address.size()) return "";
  std::string lower = lowerAscii(address);
  if (auto it = addresses_.find(lower); it != addresses_.end()) return it->second;
  if (std::string user = withoutSubaddress(lower); !user.empty())
    if (auto it = addresses_.find(user); it != addresses_.end()) return it->second;
  std::string_view domain = std::string_view(lower).substr(at + 1);
  if (auto it = domains_.find(std::string(domain)); it != domains_.end()) return it->second;
  // The longest suffix first: @.lab.example.test before @.example.test.
  for (size_t dot = domain.find('.'); dot != std::string_view::npos; dot = domain.find('.', dot + 1))
    if (auto it = subdomainsOf_.find(std::string(domain.substr(dot + 1))); it != subdomainsOf_.end()) return it->second;
  return "";
}

}  // namespace moat::policy
