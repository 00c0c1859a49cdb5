// filters/uribl/uribl.h — URI blocklists ([uribl]): the domains a message's links point to,
// looked up in domain-based blocklists (RFC 5782 §2.2: the name under the zone, A record),
// as SpamAssassin's URIDNSBL and Rspamd's SURBL module do (Spamhaus DBL, SURBL, URIBL).
// Spam from clean, rotating addresses still gives itself away by where its links lead.
//
// At the Data stage, after the MIME filter, for inbound mail only: clients in
// relay.networks, authenticated clients and [connection] allow are never looked up (as
// [dnsbl]). The hosts of the MIME filter's URIs (http, https, ftp, mailto's domains,
// bare www.) are reduced to their registered domain by the public suffix list (the one DMARC
// uses); IPv4 literals are looked up as reversed octets (RFC 5782 §2.1); IPv6 literals,
// public suffixes, single labels, numeric names that are not dotted quads and syntactically
// broken hosts are skipped; internationalized hosts are looked up as A-labels. The accepted
// domains (relay.domains) and `exempt_domains`, with their subdomains, are never looked up:
// a link to the organisation's own site or a partner's must not depend on a third party's
// list. Distinct names in order of appearance, at most `max_lookups`, each in every zone,
// all at once on the async resolver with its timeout.
//
// Only answers in 127.0.0.0/8 list; 127.0.0.1 and 127.255.255.0/24 are a list's refusals
// (dnsbl::classify); refusals and DNS failures are named in the filter's log detail and
// never hold mail. A listed domain: `554 5.7.1 Message refused: URI DOMAIN listed by ZONE`
// (action "reject"), quarantine, or an `X-Moat-URIBL: ZONE=DOMAIN, ...` header ("tag").
// Untrusted input: the message's URIs and the DNS answers. Logs through the pipeline only.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "filters/filter.h"
#include "policy/config.h"
#include "policy/errors.h"

namespace moat::filters::uribl {

// The host of a URI the MIME filter found ("http://user@Host.Example:80/x" -> "Host.Example";
// "mailto:a@x.test,b@y.test?subject=s" -> "x.test" and "y.test"), as written; none for
// other schemes and for relative links.
std::vector<std::string> uriHosts(std::string_view uri);

// What one host is looked up as.
struct Target {
  std::string name;   // shown in logs and replies: "example.test", "192.0.2.1"
  std::string label;  // what goes under the zone: "example.test", "1.2.0.192"
};
// A host reduced to its registered domain, or an IPv4 literal reversed; name empty when the
// host is not looked up (see the file's header).
Target targetOf(std::string_view host);

struct Targets {
  std::vector<Target> list;  // distinct, in order of appearance, at most `max`
  bool truncated = false;    // more names were found than `max`
};
// The names to look up for `uris`. `exempt`: normalized domains skipped with their subdomains.
Targets targets(const std::vector<std::string>& uris, const std::vector<std::string>& exempt, size_t max);

// nullptr when [uribl] names no zones (or has errors, reported in `errors`).
std::shared_ptr<const Filter> makeUriblFilter(const policy::Config& config, policy::Errors& errors);

}  // namespace moat::filters::uribl
