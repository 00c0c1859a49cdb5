// mta/dns/client_name.h — a client's verified host name: forward-confirmed reverse DNS
// (FCrDNS, "iprev" of RFC 8601 §3), as Postfix's smtpd finds it for the Received header and
// its logs. The PTR names of the address (RFC 1035 §3.5, RFC 3596 §2.5) are each looked up
// (A for an IPv4 client, AAAA for IPv6), and a name counts only if one of its addresses is
// the client's. At most kMaxClientNames names are tried (RFC 7208 §4.6.4 and Postfix bound
// the PTR names looked at the same way): a PTR set of thousands costs nothing more.
//
// Untrusted input: the PTR names (whoever runs the reverse zone picks them, anything at all)
// and every answer. A name is used only as a valid host name (RFC 952, RFC 1123 §2.1: letters,
// digits and hyphens in labels of 1 to 63 octets, at most 253 octets in all, not all-numeric),
// lower-cased and without the trailing dot: nothing else reaches a header or a log.
// Logs: nothing (the session logs what it got).
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "mta/dns/resolver.h"
#include "mta/runtime/ip.h"

namespace moat::mta::dns {

constexpr size_t kMaxClientNames = 10;

// `name` lower-cased without one trailing dot, if it is a valid host name; else nullopt.
// An all-numeric name ("192.0.2.1") is refused: it would pass for an address (Postfix's
// valid_hostname does the same).
std::optional<std::string> normalizeHostname(std::string_view name);

// Calls `cb` exactly once on the loop thread (possibly before this returns, on cache hits)
// with the first PTR name, in the order of the answer, that resolves back to `client`;
// or "" when none does: no PTR record, no name pointing back, or a temporary failure of a
// lookup (Postfix's "unknown"). Each lookup ends within the resolver's own deadline; the
// forward lookups run together, so the whole takes at most two of them.
void verifyClientName(Resolver& resolver, const IpAddress& client, std::function<void(std::string)> cb);

// What the lookups found, for the checks that refuse a client without a name
// ([connection] reject_unknown_client: Postfix's reject_unknown_reverse_client_hostname and
// reject_unknown_client_hostname).
struct ClientName {
  enum class Status {
    Confirmed,     // `name` resolves back to the client
    NotConfirmed,  // PTR names, none of which resolves back to the client
    NoPtr,         // no PTR record (NXDOMAIN, no data), or none that is a valid host name
    TempFail       // the PTR lookup failed, or no name was confirmed and a forward lookup failed
  } status = Status::TempFail;
  std::string name;  // Confirmed: the first confirmed name in the answer's order; else ""
};
std::string_view clientNameStatusName(ClientName::Status s);  // "confirmed", "not_confirmed", "no_ptr", "tempfail"
// As verifyClientName, with what was found.
void lookUpClientName(Resolver& resolver, const IpAddress& client, std::function<void(ClientName)> cb);

}  // namespace moat::mta::dns
