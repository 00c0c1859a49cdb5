// mta/dns/dane.h — what DANE for SMTP (RFC 7672) asks of one next-hop host, decided from
// the DNS answers about it: whether its MX RRset and address records are DNSSEC-
// authenticated (Answer::authenticated, the AD bit of a local validating resolver), and
// its TLSA RRset at _PORT._tcp.HOST (RFC 6698, usages per RFC 7671 and RFC 7672 §3.1).
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
  std::string base;                 // the TLSA base domain: the host name (RFC 7672 §2.2.2)
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

}  // namespace moat::mta::dns
