// mta/dns/dns_answer.h — turns one DNS reply (as c-ares hands it over) into an
// mta::dns::Answer: the records via c-ares' ares_parse_*_reply, the TTLs, the CNAME chain
// and the negative-caching TTL via a small bounded walk over the message's RRs (RFC 1035
// 4.1; RFC 2308 section 5 for the negative TTL: min(SOA TTL, SOA MINIMUM)), because the
// c-ares 1.18 parsers give no TTL for MX, TXT and PTR records.
//
// Untrusted input: the whole reply buffer (from the network). Every read is bounds-checked;
// a reply that does not walk cleanly is TempFail, never "not found".
// Logs: nothing (the resolver logs).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "mta/dns/resolver.h"

namespace moat::mta::dns {

struct TtlPolicy {
  uint32_t maxTtl = 3600;             // positive answers are cached at most this long
  uint32_t maxNegativeTtl = 900;      // NXDOMAIN / NoData at most this long
  uint32_t defaultNegativeTtl = 30;   // a negative answer without SOA (RFC 2308 5)
};

// What one reply says. An answer found through a CNAME chain names the chain's end in
// Answer::canonical. `follow` is set when the reply ended in a CNAME chain whose target
// has no data in this reply and no SOA says "no data" (an authoritative server that is not
// authoritative for the target): the caller asks again for that name.
struct ParsedReply {
  Answer answer;
  std::optional<std::string> follow;
  uint32_t chainTtl = UINT32_MAX;  // the smallest TTL of the CNAMEs crossed
};

// `aresStatus` is the status c-ares gave the query callback; `abuf` may be null.
ParsedReply parseReply(int aresStatus, const unsigned char* abuf, int alen, std::string_view qname,
                       RrType type, const TtlPolicy& policy);

// Maps a c-ares status to ours (ARES_SUCCESS -> Ok).
Status statusFromAres(int aresStatus);

// A query name in canonical form: lower-case (ASCII), no trailing dot. Returns nullopt
// for a name that is not a valid domain name: empty, an empty label, a label over 63
// octets, over 253 octets in all, or a NUL octet.
std::optional<std::string> canonicalName(std::string_view name);

}  // namespace moat::mta::dns
