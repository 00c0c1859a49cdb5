// filters/spf/record.h — SPF record syntax (RFC 7208 §4.5, §4.6, §5, §6) and macro
// expansion (§7). Parsing is all-or-nothing: any syntax error anywhere makes the record a
// permerror before a single term is evaluated (§4.6). Records come from DNS: untrusted,
// bounded by the TXT size the resolver accepts. Logs nothing.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mta/runtime/ip.h"

namespace moat::filters::spf {

enum class Qualifier : char { Pass = '+', Fail = '-', SoftFail = '~', Neutral = '?' };

enum class MechKind { All, Include, A, Mx, Ptr, Ip4, Ip6, Exists };

struct Mechanism {
  Qualifier qualifier = Qualifier::Pass;
  MechKind kind = MechKind::All;
  std::string domainSpec;  // macro-string; empty = the current domain (a, mx, ptr)
  int cidr4 = 32;
  int cidr6 = 128;
  std::optional<mta::Network> network;  // ip4 / ip6
  std::string text;  // the term as written, for logs
};

struct Record {
  std::vector<Mechanism> mechanisms;
  std::optional<std::string> redirect;  // domain-spec
  std::optional<std::string> exp;       // domain-spec
};

// True if `txt` is an SPF version 1 record ("v=spf1" then a space or the end).
bool isSpfRecord(std::string_view txt);

// Parses a full record (starting with "v=spf1"). nullopt on any syntax error; `error`
// says why, for logs.
std::optional<Record> parseRecord(std::string_view txt, std::string* error = nullptr);

// The values macros expand to (§7.3).
struct MacroContext {
  std::string sender;        // %{s}: local-part@domain
  std::string local;         // %{l}
  std::string senderDomain;  // %{o}
  std::string domain;        // %{d}: the current domain
  mta::IpAddress ip;         // %{i} %{c} %{v}
  std::string pName;         // %{p}: validated name, or "unknown"
  std::string helo;          // %{h}
  std::string receiver;      // %{r}
  long long timestamp = 0;   // %{t}
};

// Expands `input` (a macro-string). `explanation` allows %{c} %{r} %{t} (§7.2). Returns
// false on a syntax error. `out` may be null to validate only.
bool expandMacros(std::string_view input, const MacroContext& ctx, bool explanation, std::string* out);

// True if the macro-string refers to %{p} (which needs DNS before expansion).
bool usesPtrMacro(std::string_view input);

// The domain-spec syntax (§7.1): a macro-string ending in "." toplabel or a macro.
bool validDomainSpec(std::string_view spec);

// A name usable as a DNS query after expansion (§4.3, §4.8): drops trailing dots, cuts
// the left-most labels to fit 253 octets. nullopt if a label is empty or over 63.
std::optional<std::string> normalizeDomain(std::string_view expanded);

// §4.3 check for the identity's domain: a fully qualified name of valid labels.
bool validIdentityDomain(std::string_view domain);

}  // namespace moat::filters::spf
