// mta/dns/resolver.h — the asynchronous DNS interface every lookup in Moat goes through
// (SPF, DKIM keys, DMARC records, MX routing, DNSBLs, reverse DNS). The daemon's
// implementation is CaresResolver (c-ares driven by the libuv loop, with a TTL cache);
// tests may implement this interface over in-memory zones.
//
// Lookups have three kinds of outcome and callers must keep them apart (DESIGN.md,
// decision 3): found (Ok), not found (NxDomain, NoData), and temporary failure
// (TempFail: timeout, SERVFAIL, refused, network error). A temporary failure never turns
// into "not found".
#pragma once
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "mta/runtime/ip.h"

namespace moat::mta::dns {

enum class RrType : uint16_t { A = 1, CNAME = 5, PTR = 12, MX = 15, TXT = 16, AAAA = 28, TLSA = 52 };

enum class Status {
  Ok,        // the name has records of this type (answer non-empty)
  NxDomain,  // the name does not exist (RCODE 3)
  NoData,    // the name exists but has no records of this type
  TempFail,  // timeout, SERVFAIL, REFUSED, network or resolver error
  Malformed  // the query name is not a valid domain name (e.g. a label over 63 octets)
};

std::string_view statusName(Status status);  // "ok", "nxdomain", "nodata", "tempfail", "malformed"
std::string_view rrTypeName(RrType type);    // "A", "AAAA", "MX", ...

struct MxRecord {
  uint16_t preference = 0;
  std::string exchange;  // lower-case, no trailing dot; "" for a null MX (RFC 7505, ".")
};

// RFC 6698 §2.1: one TLSA record. `data` is the certificate association data (binary).
struct TlsaRecord {
  uint8_t usage = 0;     // 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE (RFC 7218)
  uint8_t selector = 0;  // 0 full certificate, 1 SubjectPublicKeyInfo
  uint8_t mtype = 0;     // 0 exact, 1 SHA2-256, 2 SHA2-512
  std::string data;
  bool operator==(const TlsaRecord&) const = default;
};

struct Answer {
  Status status = Status::TempFail;
  std::vector<IpAddress> addresses;  // A or AAAA
  std::vector<MxRecord> mx;          // sorted by preference
  std::vector<std::string> txt;      // one entry per TXT record, its strings joined with no separator
  std::vector<std::string> names;    // PTR targets (lower-case, no trailing dot)
  std::vector<TlsaRecord> tlsa;      // TLSA (malformed records left out)
  // The nameserver set the AD bit (RFC 4035 §3.2.3) on every reply that made this answer
  // (the CNAME chain's too): it says it validated them with DNSSEC. Moat does not validate
  // itself; only a local validating resolver makes this worth trusting (README, dane).
  bool authenticated = false;
  // Ok: the name the records are at when the query name is an alias (the end of its CNAME
  // chain, lower-case, no trailing dot); "" when it is none. DANE looks TLSA up there first
  // (RFC 7672 §2.2.2).
  std::string canonical;
  uint32_t ttl = 0;   // the smallest TTL in the answer (or the negative TTL)
  std::string error;  // for TempFail/Malformed: a short reason for logs
};

// RFC 5321 §5.1: hosts of equal preference MUST be tried in random order, so load spreads
// over them. `mx` is sorted by preference (as in Answer); each run of equal preference is
// shuffled with `rng`, which callers own (tests seed it).
void shuffleEqualPreference(std::vector<MxRecord>& mx, std::mt19937_64& rng);

class Resolver {
 public:
  using Callback = std::function<void(const Answer&)>;
  virtual ~Resolver() = default;

  // Looks up `name` (with or without a trailing dot, any case) and calls `cb` exactly once
  // on the loop thread. `cb` may run before query() returns (cache hit), so callers must not
  // rely on the order. CNAME chains are followed by the resolver.
  virtual void query(std::string_view name, RrType type, Callback cb) = 0;
};

}  // namespace moat::mta::dns
