// filters/dnsbl/dnsbl.h — DNS blocklists ([dnsbl]): the client's address looked up in each
// configured zone (RFC 5782: the address's reversed labels under the zone, A record), all
// zones at once on the async resolver, at MAIL FROM.
//
// Weighted, as Postfix's postscreen (postscreen_dnsbl_sites, postscreen_dnsbl_threshold,
// postscreen_dnsbl_allowlist_threshold): each `zones` entry is ZONE[=FILTER][*WEIGHT]; an
// entry matches when one of its zone's listing answers matches its FILTER (any listing
// answer without one) and then adds its WEIGHT (default 1, negative for an allowlist such
// as list.dnswl.org) to the client's score, once however many answers match. A score of at
// least `threshold` (default 1) lists the client:
//   554 5.7.1 Service unavailable; client [IP] blocked using ZONE[; TXT]
// (action "reject"; ZONE the matching entry of the largest weight), or a header
// X-Moat-DNSBL naming the zones (action "tag"). A score of at most `allowlist_threshold`
// (negative; 0 = off) allowlists the client: MessageContext::dnsblAllowlisted, which spares
// it greylisting at RCPT and the checks of its DNS and words at MAIL (filters::sparedBy). Each distinct zone is queried
// once.
//
// Checked at MAIL rather than at connect so that the relay networks and clients that have
// authenticated (a user on a dynamic address that a policy list names) are never looked up.
// Only answers in 127.0.0.0/8 count as listed (RFC 5782 §2.1); 127.255.255.0/24 is what
// some lists answer to refuse a query (a public resolver, over quota), and 127.0.0.1, which
// a list must never contain (RFC 5782 §5), what others answer for it: those and DNS failures
// are logged in the filter's detail, match no FILTER and never add weight. Logs nothing
// itself: the `filter` line's detail has `score` and `listed` (the matching entries),
// `refused` and `tempfail` (zones). Untrusted input: DNS answers.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
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

// One `zones` entry of [dnsbl], postscreen_dnsbl_sites' syntax: ZONE, ZONE*WEIGHT,
// ZONE=FILTER or ZONE=FILTER*WEIGHT. FILTER is an IPv4 address pattern whose octets are each
// a number, a range [a..b] or a list [a;b;c] (also [a..b;c]); WEIGHT an integer within
// +-kMaxWeight.
struct ZoneEntry {
  static constexpr int64_t kMaxWeight = 1000;
  std::string zone;    // lower-case, without a trailing dot
  std::string filter;  // as written; "" = any listing answer
  // Per octet, the closed ranges it may be in (empty when `filter` is "").
  std::array<std::vector<std::pair<uint8_t, uint8_t>>, 4> octets;
  int64_t weight = 1;

  // The entry as the log names it: ZONE, ZONE=FILTER, ZONE*WEIGHT, ZONE=FILTER*WEIGHT (the
  // weight only when it is not 1).
  std::string name() const;
  // Whether the answer lists the address for this entry: classify() says Listed and one of
  // the listing addresses (127/8, not a refusal code) matches the filter.
  bool matches(const mta::dns::Answer& a) const;
};
// The entry `text` means, or nullopt with the reason in `error`.
std::optional<ZoneEntry> parseZoneEntry(std::string_view text, std::string& error);

// [dnsbl]'s `zones` as entries; a bad one is reported at its line (FILE:LINE) and left out.
std::vector<ZoneEntry> readZoneEntries(policy::Section& sec);

// nullptr when [dnsbl] names no zones (or has errors, reported in `errors`).
std::shared_ptr<const Filter> makeDnsblFilter(const policy::Config& config, policy::Errors& errors);

}  // namespace moat::filters::dnsbl
