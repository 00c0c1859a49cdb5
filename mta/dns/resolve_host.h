// mta/dns/resolve_host.h — the addresses of one host name (an MX target, a smtp: route
// host): AAAA and A asked together (RFC 5321 5.1), or only the one of them that
// `[queue] ip_versions` leaves in. Untrusted input: the name (from DNS or config). Logs:
// nothing.
#pragma once
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "mta/dns/resolver.h"

namespace moat::mta::dns {

// The address families delivery uses (`[queue] ip_versions`, Postfix's inet_protocols).
struct Families {
  bool v4 = true;
  bool v6 = true;
  bool allows(const IpAddress& ip) const { return ip.isV4() ? v4 : v6; }
};

// Calls `cb` exactly once, after both lookups finished (possibly before this returns, on
// cache hits). A family `families` leaves out is not asked for: its lookup counts as NoData.
// The addresses are the IPv6 ones first, then the IPv4 ones, each in the
// order the server gave. Status: Ok if either lookup found addresses (a TempFail of the
// other is then ignored: the host is reachable on what was found); otherwise TempFail if
// either failed temporarily, Malformed for a bad name, NxDomain if the name does not
// exist, else NoData.
using HostCallback = std::function<void(Status, std::vector<IpAddress>)>;
void resolveHost(Resolver& resolver, std::string_view name, HostCallback cb, Families families = {});

// The same, also saying whether the addresses found are DNSSEC-authenticated (RFC 7672
// §2.2: DANE applies to a host only then): every lookup that found addresses had
// Answer::authenticated. False when nothing was found. `canonical`: the name the addresses
// are at when `name` is an alias (Answer::canonical; RFC 7672 §2.2.2 looks TLSA up there
// first); "" when it is none, or when the AAAA and A chains end at different names (no one
// expanded name to look up).
using SecureHostCallback =
    std::function<void(Status, std::vector<IpAddress>, bool authenticated, std::string canonical)>;
void resolveHostSecure(Resolver& resolver, std::string_view name, SecureHostCallback cb, Families families = {});

}  // namespace moat::mta::dns
