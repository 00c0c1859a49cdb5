// filters/reverse_dns/reverse_dns.h — [connection] reject_unknown_client: a client from the
// internet must have a name in DNS, as Postfix's reject_unknown_reverse_client_hostname
// ("reverse": a PTR record that is a valid host name) and reject_unknown_client_hostname
// ("confirmed": a PTR name whose A or AAAA records include the client's address, FCrDNS,
// mta/dns/client_name.h). Mail servers have one; the botnets of infected home machines that
// send most spam mostly do not.
//
// At MAIL FROM, for mail from the internet only: clients in relay.networks, authenticated
// clients, [connection] allow and a client [dnsbl] allowlisted are never checked
// (filters::sparedBy). The lookups are the ones the
// session makes for the Received header ([server] reverse_dns), shared through the resolver's
// cache. The reply is a 450 whatever was found, DNS trouble included, so that a sender whose
// DNS is fixed gets through on its next try (RFC 7372 §3.3, 4.7.25):
//   reverse    450 4.7.25 Client host rejected: cannot find your reverse hostname, [IP]
//   confirmed  450 4.7.25 Client host rejected: cannot find your hostname, [IP]
// Untrusted input: the DNS answers. Logs through the pipeline only: the `filter` line's
// summary (pass, no_ptr, not_confirmed, tempfail, skipped) and the name found (`name`).
#pragma once
#include <memory>

#include "filters/filter.h"
#include "policy/config.h"
#include "policy/errors.h"

namespace moat::filters::reverse_dns {

// nullptr when Config::rejectUnknownClient is Off.
std::shared_ptr<const Filter> makeReverseDnsFilter(const policy::Config& config, policy::Errors& errors);

}  // namespace moat::filters::reverse_dns
