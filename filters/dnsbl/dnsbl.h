// filters/dnsbl/dnsbl.h — DNS blocklists ([dnsbl]): the client's address looked up in each
// configured zone (RFC 5782: the address's reversed labels under the zone, A record), all
// zones at once on the async resolver, at MAIL FROM. A listed client gets
//   554 5.7.1 Service unavailable; client [IP] blocked using ZONE[; TXT]
// (action "reject"), or a header X-Moat-DNSBL naming the zones (action "tag").
//
// Checked at MAIL rather than at connect so that the relay networks and clients that have
// authenticated (a user on a dynamic address that a policy list names) are never looked up.
// Only answers in 127.0.0.0/8 count as listed (RFC 5782 §2.1); 127.255.255.0/24 is what
// some lists answer to refuse a query (a public resolver, over quota), and 127.0.0.1, which
// a list must never contain (RFC 5782 §5), what others answer for it: those and DNS failures
// are logged in the filter's detail and never block mail. Untrusted input: DNS answers.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "filters/filter.h"
#include "mta/dns/resolver.h"
#include "mta/runtime/ip.h"
#include "policy/config.h"
#include "policy/errors.h"
#include "policy/section.h"

namespace moat::filters::dnsbl {

// "2.0.0.127.bl.example" for 127.0.0.2; the nibble form for IPv6 (RFC 5782 §2.1, §2.4).
std::string queryName(const mta::IpAddress& ip, std::string_view zone);

enum class Listing { NotListed, Listed, Refused, TempFail };
// What an A answer for the query name says: Listed for 127.0.0.0/8 outside
// 127.255.255.0/24 and 127.0.0.1, Refused for those, NotListed for NXDOMAIN/NODATA or addresses
// outside 127/8 (a wildcarding resolver), TempFail for DNS failures.
Listing classify(const mta::dns::Answer& a);

// The section's `zones` (a list of DNS zones: RFC 5782 IP- or domain-based lists), lower-case,
// without a trailing dot; a name that is not a zone is reported at its line and left out.
// [dnsbl] and [uribl] read their lists the same way.
std::vector<std::string> readZones(policy::Section& sec);

// Whether a client's mail is looked up in blocklists: not outbound (relay.networks, an
// authenticated client) and not in [connection] allow (`allow`). [dnsbl] and [uribl] agree.
bool looksUp(const MessageContext& ctx, const std::vector<mta::Network>& allow);

// nullptr when [dnsbl] names no zones (or has errors, reported in `errors`).
std::shared_ptr<const Filter> makeDnsblFilter(const policy::Config& config, policy::Errors& errors);

}  // namespace moat::filters::dnsbl
