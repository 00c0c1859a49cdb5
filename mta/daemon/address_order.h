// mta/daemon/address_order.h — which of a next hop's addresses one delivery attempt tries,
// and in what order: Postfix's smtp_address_preference (the family tried first among
// addresses of equal MX preference), inet_protocols (`[queue] ip_versions`: the families
// used at all) and smtp_balance_inet_protocols within smtp_mx_address_limit. RFC 5321 §5.1
// orders MX hosts by preference and leaves the order of a host's addresses to the client.
// Pure: no network, no clock; randomness comes from the caller's generator. Untrusted input:
// the addresses (from DNS). Logs: nothing.
#pragma once
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "mta/dns/resolve_host.h"
#include "mta/runtime/ip.h"
#include "policy/config.h"

namespace moat::mta::daemon {

struct AddressCandidate {
  IpAddress ip;
  // Addresses of one group are ordered among themselves, groups keep their order (lower
  // first): the MX preference, or the index of a route's smtp: target (tried in order).
  uint32_t group = 0;
};

// Indices into `candidates` (given in the order found: group by group, each host's addresses
// as the server gave them), in the order to try:
//  1. an address of a family `families` leaves out is dropped;
//  2. within a group, the `preference` family first, each family keeping its order found
//     (Ipv6, Ipv4), or the group shuffled with `rng` (Any);
//  3. at most `limit`; when the list holds both families and is longer, they are balanced
//     as Postfix's smtp_balance_inet_protocols does (so an unreachable family cannot use up
//     every slot): a family with at most limit/2 addresses keeps them all and the other gets
//     the rest; otherwise each gets limit/2, the odd slot to the first address's family. The
//     first of each family are kept, in the order of steps 1-2.
std::vector<size_t> orderAddresses(const std::vector<AddressCandidate>& candidates,
                                   policy::AddressPreference preference, dns::Families families, size_t limit,
                                   std::mt19937_64& rng);

}  // namespace moat::mta::daemon
