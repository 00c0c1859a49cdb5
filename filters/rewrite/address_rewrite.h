// filters/rewrite/address_rewrite.h — outbound and inbound address rewriting in a message's
// header fields ([relay] rewrite, policy/rewrite_map.h), as Exchange Edge Transport's
// address rewriting agents and Postfix's canonical maps do.
//
// Outbound mail (from relay.networks or an authenticated client, with a recipient outside
// relay.domains): the envelope sender and the addresses of From, Sender, Reply-To, To, Cc,
// Resent-From, Resent-Sender, Resent-To and Resent-Cc (RFC 5322 §3.6.6) go from their
// INTERNAL form to the EXTERNAL one. Any other message is inbound: the addresses of To, Cc,
// Resent-To and Resent-Cc go from EXTERNAL to INTERNAL (the envelope recipients were
// rewritten at RCPT, by the session, or by `moat scan`). Header changes are byte edits (filters/edit.h): the spool file
// keeps the message as received, `moat queue show` lists them, and the DKIM signer, after this filter, signs the
// rewritten fields.
//
// RFC 5322 §3.4 address lists: only the addr-spec is replaced; display names, comments,
// groups and folding around it stay byte for byte. Untrusted input: the header section as
// received. A field whose address list cannot be read (an unbalanced quote, comment or
// angle bracket, two addresses in one mailbox, a comment inside an angle-addr) is left
// alone and logged (`rewrite_skipped`, warn); nothing else is logged here.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "filters/filter.h"
#include "policy/rewrite_map.h"

namespace moat::filters::rewrite {

// [start, end) of each address (addr-spec) of an RFC 5322 address list, in `value`'s
// bytes; an empty angle-addr ("<>") and empty list members have none. nullopt when the
// list cannot be read (see above).
std::optional<std::vector<std::pair<size_t, size_t>>> addressSpans(std::string_view value);

struct HeaderRewrites {
  std::vector<Edit> edits;               // sorted, apart, offsets into the message
  std::vector<AddressRewrite> rewrites;  // where: "header:From"...
  std::vector<std::string> skipped;      // the names of fields left alone, as written
};

// The edits that put map(address) in place of each address of the header fields named in
// `fields` (case-insensitive; `where` gets the spelling given there) that `map` rewrites
// (a non-empty result).
HeaderRewrites rewriteHeaderFields(std::string_view message, const std::vector<std::string_view>& fields,
                                   const std::function<std::string(std::string_view)>& map);

// The fields the filter rewrites, outbound and inbound (see above).
extern const std::vector<std::string_view> kOutboundFields;
extern const std::vector<std::string_view> kInboundFields;

// The filter, or null without a map.
std::shared_ptr<const Filter> makeRewriteFilter(std::shared_ptr<const policy::RewriteMap> map);

}  // namespace moat::filters::rewrite
