// policy/rewrite_map.h — address rewriting ([relay] rewrite), as Exchange Edge Transport's
// address rewriting entries and Postfix's canonical maps: a file of lines
//
//     jsmith@corp.internal  john.smith@example.com                 # one address, both ways
//     @corp.internal        @example.com                           # a domain: the local part stays
//     @.corp.internal       @example.com          outbound-only    # every subdomain of corp.internal
//     @lab.corp.internal    @example.com          outbound-only    # several to one: outbound only
//
// INTERNAL EXTERNAL [outbound-only]. Outbound mail (mail_rewrite.h) is rewritten INTERNAL to
// EXTERNAL; inbound recipients EXTERNAL to INTERNAL, except by outbound-only entries. Both
// sides are addresses or both domains. An exact address wins over its domain's entry, a
// domain's entry over a subdomain wildcard, a longer wildcard over a shorter one.
//
// Matching is ASCII case-insensitive; the local part keeps its case. "user+tag@domain"
// (RFC 5233) without an entry of its own takes user@domain's and keeps its "+tag"
// (Postfix's propagate_unmatched_extensions). Loaded whole into an immutable table per
// policy snapshot: SIGHUP rereads it, and a broken file (a malformed address, an address
// beside a domain, an INTERNAL side given twice, an EXTERNAL side two entries would map
// back) is refused with FILE:LINE while the running one stays.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "policy/address_table.h"
#include "policy/errors.h"

namespace moat::policy {

class RewriteMap {
 public:
  // Shown each entry of the file, in its order, as written: for `moat check`'s warnings.
  using Inspect =
      std::function<void(int line, std::string_view internal, std::string_view external, bool outboundOnly)>;
  // nullptr with `errors` filled (FILE:LINE) when the file cannot be read or a line is bad.
  static std::shared_ptr<const RewriteMap> load(const std::string& path, Errors& errors,
                                                const Inspect& inspect = nullptr);

  // The address `address` becomes, or "" when no entry matches it (nor the null sender "").
  // Outbound: INTERNAL to EXTERNAL, every entry.
  std::string outbound(std::string_view address) const;
  // Inbound: EXTERNAL to INTERNAL, the entries that are not outbound-only.
  std::string inbound(std::string_view address) const;

  size_t size() const { return entries_; }
  const std::string& path() const { return path_; }

 private:
  // The values as the file writes them: an address for an address, a domain (without its
  // '@') for @domain and @.domain.
  using Side = AddressTable<std::string>;
  static std::string rewrite(const Side& side, std::string_view address);

  std::string path_;
  size_t entries_ = 0;
  Side out_, in_;
};

}  // namespace moat::policy
