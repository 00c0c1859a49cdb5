// policy/rewrite_map.cc — see rewrite_map.h.
#include "policy/rewrite_map.h"

#include <unordered_map>

#include "policy/list_file.h"

namespace moat::policy {

std::shared_ptr<const RewriteMap> RewriteMap::load(const std::string& path, Errors& errors, const Inspect& inspect) {
  auto m = std::make_shared<RewriteMap>();
  m->path_ = path;
  // The line of each key taken, per side, to name it in a duplicate's error.
  std::unordered_map<std::string, int> outLines, inLines;
  bool ok = readListFile(path, "address rewriting", 256ull << 20, errors, [&](int line, std::string_view text) {
    auto bad = [&](const std::string& why) {
      errors.error(path, line, why);
      return false;
    };
    auto f = lineFields(text);
    if (f.size() < 2 || f.size() > 3) return bad("expected \"INTERNAL EXTERNAL [outbound-only]\"");
    bool outboundOnly = f.size() == 3;
    if (outboundOnly && lowerAscii(f[2]) != "outbound-only")
      return bad("\"" + std::string(f[2]) + "\": the third field can only be outbound-only");
    std::string_view internal = f[0], external = f[1];
    EntryKind ki = entryKind(internal), ke = entryKind(external);
    if (ki == EntryKind::Bad) return bad("\"" + std::string(internal) + "\" is not an address, @domain or @.domain");
    if (ke == EntryKind::Bad) return bad("\"" + std::string(external) + "\" is not an address or @domain");
    if (ke == EntryKind::Subdomains)
      return bad("\"" + std::string(external) + "\": the external side is one address or one @domain");
    if ((ki == EntryKind::Address) != (ke == EntryKind::Address))
      return bad("\"" + std::string(internal) + "\" and \"" + std::string(external) +
                 "\": both sides must be addresses, or both @domains");
    // A reply to john@example.com cannot tell which subdomain of corp.internal it came from
    // (Exchange allows its *.domain wildcard only with -OutboundOnly, for the same reason).
    if (ki == EntryKind::Subdomains && !outboundOnly)
      return bad("\"" + std::string(internal) +
                 "\" stands for every subdomain: mail to its external side cannot be mapped back; mark the line "
                 "outbound-only");
    std::string keyIn = lowerAscii(internal), keyEx = lowerAscii(external);
    if (keyIn == keyEx) return bad("\"" + std::string(internal) + "\" is rewritten to itself");
    if (auto it = outLines.find(keyIn); it != outLines.end())
      return bad("\"" + std::string(internal) + "\" is already rewritten at line " + std::to_string(it->second));
    if (!outboundOnly)
      if (auto it = inLines.find(keyEx); it != inLines.end())
        return bad("\"" + std::string(external) + "\" is already mapped back to an internal address at line " +
                   std::to_string(it->second) + ": mark all but one of its lines outbound-only");
    outLines.emplace(keyIn, line);
    if (!outboundOnly) inLines.emplace(keyEx, line);
    auto put = [](Side& side, EntryKind kind, std::string_view key, std::string_view value) {
      side.insert(key, kind, std::string(kind == EntryKind::Address ? value : value.substr(1)));
    };
    put(m->out_, ki, internal, external);
    if (!outboundOnly) put(m->in_, ke, external, internal);
    ++m->entries_;
    if (inspect) inspect(line, internal, external, outboundOnly);
    return true;
  });
  return ok ? m : nullptr;
}

std::string RewriteMap::rewrite(const Side& side, std::string_view address) {
  auto m = side.find(address);
  if (!m) return "";
  const std::string& to = *m.value;
  size_t at = address.rfind('@');
  switch (m.by) {
    case Side::By::Address: return to;
    case Side::By::User: {  // "user+tag@": user@'s entry, the tag kept after the new local part
      size_t plus = address.find('+');
      size_t newAt = to.rfind('@');
      return to.substr(0, newAt) + std::string(address.substr(plus, at - plus)) + to.substr(newAt);
    }
    case Side::By::Domain:
    case Side::By::Subdomain: break;
  }
  return std::string(address.substr(0, at + 1)) + to;  // the local part as written, and the '@'
}

std::string RewriteMap::outbound(std::string_view address) const { return rewrite(out_, address); }

std::string RewriteMap::inbound(std::string_view address) const { return rewrite(in_, address); }

}  // namespace moat::policy
