// filters/spf/spf.h — Sender Policy Framework (RFC 7208): check_host() for the MAIL FROM and
// HELO identities, evaluated asynchronously over mta::dns::Resolver, and the Mail-stage
// filter that turns the result into a verdict, Authentication-Results (RFC 8601 §2.7.2)
// and the replies of RFC 7372 (5.7.23 fail, 5.7.24 permerror / 4.7.24 temperror).
//
// Untrusted inputs: the client IP, HELO name and MAIL FROM address (from the peer) and
// every DNS answer (SPF records, MX/PTR/A data). All are bounded by the RFC's lookup
// limits; nothing here blocks. The filter logs one `filter` event through the pipeline.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "filters/filter.h"
#include "mta/dns/resolver.h"
#include "mta/runtime/ip.h"
#include "policy/config.h"
#include "policy/errors.h"

namespace moat::filters::spf {

enum class SpfResult { None, Neutral, Pass, Fail, SoftFail, TempError, PermError };

// "none" "neutral" "pass" "fail" "softfail" "temperror" "permerror"
std::string_view resultName(SpfResult result);

struct SpfAnswer {
  SpfResult result = SpfResult::None;
  std::string explanation;  // exp= text (macro-expanded) or the default, for fail; else empty
  std::string domain;       // the domain checked
  std::string mechanism;    // what decided, for logs ("-all", "default", "include:x" ...)
  int lookups = 0;          // DNS-querying terms evaluated (RFC 7208 §4.6.4)
};

struct CheckParams {
  mta::IpAddress ip;
  std::string helo;
  std::string mailFrom;  // "" = null sender
  std::string receiver = "unknown";  // %{r}
  std::string defaultExplanation;    // macro-expanded like an exp= text; "" = built-in text
};

// check_host() (RFC 7208 §4) for the MAIL FROM identity, or postmaster@helo for the null
// sender (§2.4). `done` is called exactly once, possibly before checkHost returns.
void checkHost(mta::dns::Resolver& resolver, const CheckParams& params, std::function<void(SpfAnswer)> done);

// The HELO identity (§2.3): check_host(ip, helo, postmaster@helo).
void checkHelo(mta::dns::Resolver& resolver, const CheckParams& params, std::function<void(SpfAnswer)> done);

// The [spf] filter (Stage::Mail); nullptr when `enabled = false` or the section has errors
// (reported to `errors` as FILE:LINE).
std::shared_ptr<const Filter> makeSpfFilter(const policy::Config& config, policy::Errors& errors);

}  // namespace moat::filters::spf
