// filters/dmarc/dmarc_filter.h — the DMARC filter (RFC 7489 §6.6, §6.7, §11.2): a Data-stage
// filter that runs after DKIM verification, reads ctx->spfMailFrom and ctx->dkim, writes
// ctx->dmarc, adds the dmarc resinfo of Authentication-Results (RFC 8601) and acts on the
// published policy as the [dmarc] section says.
//
// Config ([dmarc], every key optional):
//   enabled = true                      false: no DMARC filter at all
//   reject_action = "reject"            fail under p=reject: reject (550 5.7.1) | quarantine | tag
//   quarantine_action = "quarantine"    fail under p=quarantine: quarantine | tag
//   temperror = "tempfail"              DNS trouble finding the policy: tempfail (451 4.4.3) | tag
//   malformed_from = "reject"           a From whose addresses have no usable domain, or with more
//                                       than kMaxFromDomains domains: reject (550 5.7.1)
//                                       | quarantine | tag
//   trusted_forwarders = []             IP networks ("192.0.2.0/24") or domain names whose mail
//                                       is reported but never acted on (mailing lists, forwarders)
// Reply codes: DMARC reject is 550 5.7.1 (CONTRACT.md; RFC 7489 §6.7 suggests 5.7.1). A
// temperror is 451 4.4.3: RFC 3463 X.4.3 "directory server failure" is the code for a DNS
// lookup that failed for now; RFC 7372 registers only SPF/DKIM-specific codes (X.7.20-X.7.26),
// none for DMARC, and X.7.5 means a cryptographic failure.
// A trusted forwarder matches by client IP (a network entry), or for a domain entry by an
// SPF pass for the MAIL FROM or HELO domain (the name or a subdomain of it), or by the
// client's verified reverse-DNS name (ctx.clientName: forward-confirmed, mta/dns/client_name.h)
// where the session has one: with [server] reverse_dns on (the default) and the name
// verified by the end of the data (the session waits for it until dns.timeout after the
// connect). A bare HELO never matches: the client picks it freely.
// A DMARC fail under p=reject or p=quarantine is also overridden when the ARC filter found a
// passing chain whose latest ARC-Seal is from one of [arc] trusted_sealers (ctx.arc.trusted;
// filters/arc/arc.h): the `filter` line says override "arc" and arc_sealer, an aggregate
// report row carries the comment "arc=pass sealer=D".
// An override is reported as "reason=trusted_forwarder" (the RFC 7489 §7.2 override name).
// Malformed From (evaluate.h): RFC 7489 §6.6.1 lets a receiver reject a From it cannot
// use as malformed. Treating addresses whose domains cannot be checked (a domain that is
// not a valid IDN, only literals, more domains than are evaluated) as "no policy" would
// let a sender hide a forged author from DMARC behind text a mail client still displays,
// so the default is to reject them; "tag" delivers with dmarc=permerror. A message with no
// From field or no address in it names no domain to impersonate: dmarc=permerror and
// delivered, whatever malformed_from says. Trusted forwarders are exempt.
// Mail from relay.networks or from authenticated clients (outbound) is not checked.
//
// Authentication-Results resinfo (the form the conformance suite uses):
//   dmarc=fail (p=reject dis=reject) header.from=example.test policy.dmarc=reject
//   dmarc=permerror (no usable author domain in From dis=reject)
// `dis` is what Moat did (none, quarantine, reject); policy.dmarc the policy that applied
// to the From domain (p=, sp= or np=), only when a record was found.
// Untrusted input: the message, the DNS answers. Neither's text is copied into the
// Authentication-Results comment or a reply (only fixed wording and checked domain names);
// the offending text goes to the log. Logs: through the pipeline's `filter` event (summary
// = the DMARC result; detail: from, policy, applied, reason, problem, malformed_from,
// pct_sampled_out).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "filters/dmarc/evaluate.h"
#include "filters/filter.h"
#include "mta/runtime/ip.h"
#include "policy/config.h"

namespace moat::filters::dmarc {

struct FilterConfig {
  bool enabled = true;
  std::string rejectAction = "reject";          // reject | quarantine | tag
  std::string quarantineAction = "quarantine";  // quarantine | tag
  std::string temperror = "tempfail";           // tempfail | tag
  std::string malformedFrom = "reject";         // reject | quarantine | tag
  std::vector<mta::Network> forwarderNetworks;
  std::vector<std::string> forwarderDomains;  // normalized
};

// Reads [dmarc]; problems go to `errors` as FILE:LINE: message.
FilterConfig readConfig(const policy::Config& config, policy::Errors& errors);

// The filter, or nullptr when [dmarc] enabled = false or the section has errors.
std::shared_ptr<const Filter> makeDmarcFilter(const policy::Config& config, policy::Errors& errors);
// The same with an injected pct= draw (tests).
std::shared_ptr<const Filter> makeDmarcFilter(const policy::Config& config, policy::Errors& errors, PctDraw draw);
std::shared_ptr<const Filter> makeDmarcFilter(FilterConfig config, PctDraw draw = {});

// True when the client is a configured trusted forwarder.
bool isTrustedForwarder(const FilterConfig& config, const MessageContext& ctx);

// What the filter does with one evaluation (also fills ctx.dmarc).
Result act(const FilterConfig& config, MessageContext& ctx, const Evaluation& e);

// The dmarc resinfo for Authentication-Results; `dis` is the disposition Moat applied,
// `reason` an optional override reason.
std::string authResult(const Evaluation& e, const std::string& dis, const std::string& reason = "");

}  // namespace moat::filters::dmarc
