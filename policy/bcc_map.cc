// policy/bcc_map.cc — see bcc_map.h.
#include "policy/bcc_map.h"

#include <unordered_map>

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
    lines.emplace(std::move(key), line);
    m->table_.insert(f[0], kind, std::string(f[1]));
    return true;
  });
  return ok ? m : nullptr;
}

std::string BccMap::find(std::string_view address) const {
  auto m = table_.find(address);
  return m ? *m.value : std::string();
}

}  // namespace moat::policy
