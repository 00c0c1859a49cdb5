// policy/aliases.cc — see aliases.h.
#include "policy/aliases.h"

#include <algorithm>
#include <functional>
#include <unordered_set>

#include "policy/list_file.h"

namespace moat::policy {

namespace {

// Splits "a, b  c" into its targets.
std::vector<std::string_view> splitTargets(std::string_view s) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ',' || s[i] == ' ' || s[i] == '\t')) ++i;
    size_t start = i;
    while (i < s.size() && s[i] != ',' && s[i] != ' ' && s[i] != '\t') ++i;
    if (i > start) out.push_back(s.substr(start, i - start));
  }
  return out;
}

// One recipient's walk through the table.
class Expander {
 public:
  explicit Expander(const std::function<const AliasTable::Entry*(const std::string&)>& find) : find_(find) {}

  void walk(const std::string& address, int depth) {
    if (!out.error.empty()) return;
    std::string lower = lowerAscii(address);
    if (expanded_.count(lower)) return;     // met before by another way: its targets are in
    bool again = onPath_.count(lower) > 0;  // a loop back to itself: final here
    const AliasTable::Entry* entry = again ? nullptr : find_(lower);
    std::string viaDomain;  // a domain entry's rewrite: the local part at the other domain
    if (!again && !entry) {
      size_t at = lower.rfind('@');
      if (auto e = find_(lower.substr(at))) viaDomain = address.substr(0, at) + e->targets.front();
    }
    if (!entry && viaDomain.empty()) {
      emit(address, lower);
      return;
    }
    if (depth >= AliasTable::kMaxDepth) {
      out.error = "alias expansion of more than " + std::to_string(AliasTable::kMaxDepth) + " levels";
      return;
    }
    out.aliased = true;
    onPath_.insert(lower);
    if (entry)
      for (const auto& t : entry->targets) walk(t, depth + 1);
    else
      walk(viaDomain, depth + 1);
    onPath_.erase(lower);
    expanded_.insert(std::move(lower));
  }

  AliasTable::Expansion out;

 private:
  void emit(const std::string& address, const std::string& lower) {
    if (!emitted_.insert(lower).second) return;
    if (out.targets.size() == AliasTable::kMaxTargets) {
      out.error = "alias expansion to more than " + std::to_string(AliasTable::kMaxTargets) + " addresses";
      return;
    }
    out.targets.push_back(address);
  }

  const std::function<const AliasTable::Entry*(const std::string&)>& find_;
  std::unordered_set<std::string> onPath_;    // the aliases being expanded, down to here
  std::unordered_set<std::string> expanded_;  // the aliases expanded: each once a walk
  std::unordered_set<std::string> emitted_;
};

}  // namespace

std::shared_ptr<const AliasTable> AliasTable::load(const std::string& path, Errors& errors, const Inspect& inspect) {
  auto t = std::make_shared<AliasTable>();
  t->path_ = path;
  bool ok = readListFile(path, "aliases", 256ull << 20, errors, [&](int line, std::string_view text) {
    auto bad = [&](const std::string& why) {
      errors.error(path, line, why);
      return false;
    };
    size_t colon = text.find(':');
    if (colon == std::string_view::npos) return bad("expected \"ADDRESS: TARGET, ...\" or \"@DOMAIN: @DOMAIN\"");
    std::string_view source = text.substr(0, colon);
    while (!source.empty() && (source.back() == ' ' || source.back() == '\t')) source.remove_suffix(1);
    if (!isAddressOrDomain(source)) return bad("\"" + std::string(source) + "\" is not an address or @domain");
    auto targets = splitTargets(text.substr(colon + 1));
    if (targets.empty()) return bad("\"" + std::string(source) + "\" has no target");
    if (targets.size() > kMaxTargets)
      return bad("more than " + std::to_string(kMaxTargets) + " targets for \"" + std::string(source) + "\"");
    bool domainEntry = source.front() == '@';
    Entry entry;
    entry.line = line;
    for (auto target : targets) {
      if (!isAddressOrDomain(target)) return bad("\"" + std::string(target) + "\" is not an address or @domain");
      if (domainEntry != (target.front() == '@'))
        return bad(domainEntry ? "a domain alias takes one @domain: \"" + std::string(source) + ": @other.example\""
                               : "\"" + std::string(target) + "\" is a domain: an address takes addresses");
      entry.targets.emplace_back(target);
    }
    std::string key = lowerAscii(source);
    if (domainEntry && (entry.targets.size() != 1 || lowerAscii(entry.targets[0]) == key))
      return bad("a domain alias takes one other @domain");
    if (!t->entries_.emplace(key, std::move(entry)).second)
      return bad("\"" + std::string(source) + "\" is listed twice");
    return true;
  });
  if (!ok) return nullptr;
  // Each entry once, in the file's order: one that would fail every message for it is
  // refused now, not at RCPT; the others are shown to `inspect`.
  std::vector<std::pair<int, const std::string*>> byLine;
  for (const auto& [source, entry] : t->entries_) byLine.emplace_back(entry.line, &source);
  std::sort(byLine.begin(), byLine.end());
  for (const auto& [line, source] : byLine) {
    if (source->front() == '@') {
      if (inspect) inspect(*source, line, Expansion{});
      continue;
    }
    auto e = t->expand(*source);
    if (!e.error.empty()) {
      errors.error(path, line, "\"" + *source + "\": " + e.error);
      ok = false;
    } else if (inspect) {
      inspect(*source, line, e);
    }
  }
  return ok ? t : nullptr;
}

const AliasTable::Entry* AliasTable::find(const std::string& lowerAddress) const {
  auto it = entries_.find(lowerAddress);
  if (it != entries_.end()) return &it->second;
  // "user+tag@domain" without an entry of its own is user@domain's.
  std::string user = withoutSubaddress(lowerAddress);
  if (user.empty()) return nullptr;
  it = entries_.find(user);
  return it != entries_.end() ? &it->second : nullptr;
}

AliasTable::Expansion AliasTable::expand(std::string_view address) const {
  std::function<const Entry*(const std::string&)> find = [this](const std::string& a) { return this->find(a); };
  Expander x(find);
  if (address.rfind('@') == std::string_view::npos) {
    x.out.targets.emplace_back(address);
    return std::move(x.out);
  }
  x.walk(std::string(address), 0);
  return std::move(x.out);
}

}  // namespace moat::policy
