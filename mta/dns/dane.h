// mta/dns/dane.h — what DANE for SMTP (RFC 7672) asks of one next-hop host, decided from
// the DNS answers about it: whether its MX RRset and address records are DNSSEC-
// authenticated (Answer::authenticated, the AD bit of a local validating resolver), and
// its TLSA RRset at _PORT._tcp.HOST, or first at the name HOST is a secure alias of (§2.2.2)
// (RFC 6698, usages per RFC 7671 and RFC 7672 §3.1).
// Pure: no I/O, so the rules can be tested on their own; the queue manager makes the
// lookups and applies the result. Untrusted input: the TLSA records (from DNS). Logs: nothing.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mta/dns/resolver.h"

namespace moat::mta::dns {

enum class DaneLevel {
  May,      // DANE does not apply (something is not authenticated, or no TLSA): opportunistic TLS
  Encrypt,  // authenticated TLSA RRset, but no usable record: TLS required, unauthenticated (§2.2)
  Dane,     // usable records: TLS required and the peer authenticated by them
  Defer,    // the TLSA lookup failed for a host with authenticated addresses (§2.2.1): not this host
};

struct DaneHost {
  DaneLevel level = DaneLevel::May;
  // The TLSA base domain (RFC 7672 §2.2.2): the host name, or its CNAME-expanded name when
  // the records are there. It is the SNI (RFC 7672 §8.1).
  std::string base;
  // The reference identifiers a DANE-TA(2) certificate must name one of (RFC 7672 §3.2.2):
  // `base`, and for an alias also the other of the host name and its expanded name.
  std::vector<std::string> names;
  std::vector<TlsaRecord> records;  // Dane: the usable records
  std::string reason;               // why this level, for defers and logs
};

// "_25._tcp.mx.example.test" (RFC 6698 §3).
std::string tlsaName(std::string_view host, uint16_t port);

// RFC 7672 §3.1: DANE-TA(2) and DANE-EE(3), selector 0 or 1, matching type 0, 1 or 2. PKIX-TA(0)
// and PKIX-EE(1) are unusable for SMTP (§3.1.3): MX hosts have no agreed-upon trust anchors.
bool tlsaUsable(const TlsaRecord& r);

// `mxSecure`: the MX RRset that named the host was authenticated (true for a host a route
// names itself). `addressesSecure`: its address records were. `tlsa`: the TLSA lookup's answer,
// null when not made (it is not needed unless both are true).
DaneHost decideDane(std::string_view host, uint16_t port, bool mxSecure, bool addressesSecure, const Answer* tlsa);

// RFC 7672 §2.2.2: the TLSA base domains to look up for `host`, in order. `expanded` is the
// name its address records are at after a CNAME chain ("" for no alias); `chainSecure`: that
// chain was DNSSEC-authenticated. A secure alias: the expanded name first, then `host`;
// otherwise `host` alone (an insecure chain cannot say which name is the server's).
std::vector<std::string> tlsaBaseDomains(std::string_view host, std::string_view expanded, bool chainSecure);

// Whether the TLSA answer at the expanded name leaves the choice to the host name (§2.2.2:
// "no TLSA records there"): no records, or none DNSSEC-authenticated. Not a failed lookup:
// records withheld by an attacker must not be bypassed (§2.2.1).
bool tlsaTryHostName(const Answer& atExpanded);

// The decision for a secure alias (`host` -> `expanded`, its MX RRset and addresses
// authenticated): `atExpanded` is the TLSA answer at _PORT._tcp.EXPANDED, `atHost` the one at
// _PORT._tcp.HOST (null when not asked: it is asked only if tlsaTryHostName(*atExpanded)).
// The base is the name whose records decide; both names are reference identifiers.
DaneHost decideDaneAlias(std::string_view host, std::string_view expanded, uint16_t port, const Answer& atExpanded,
                         const Answer* atHost);

}  // namespace moat::mta::dns
