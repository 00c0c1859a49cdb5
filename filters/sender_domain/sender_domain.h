// filters/sender_domain/sender_domain.h — the envelope sender's domain, at MAIL FROM:
// [senders] require_fqdn, as Postfix's reject_non_fqdn_sender: a domain of two labels or
// more ("user@localhost" and "root@server" are what misconfigured hosts and spamware send);
// [senders] reject_unknown_domain, as Postfix's reject_unknown_sender_domain: a domain that
// can receive mail, with an MX record, or none and an A or AAAA record
// (mta/dns/mail_domain.h). Bounces to a sender whose domain does not exist could never be
// delivered, and forged senders in made-up domains are a staple of spam.
//
// For mail from the internet only: the null sender, address literals (user@[192.0.2.1]),
// clients in relay.networks, authenticated clients and [connection] allow are never checked,
// nor a client [dnsbl] allowlisted (filters::sparedBy). Internationalized domains are looked
// up as their A-labels. Replies, the session going on:
//   one label           504 5.5.2 <ADDR>: Sender address rejected: need fully-qualified address
//   no MX, A or AAAA    550 5.1.8 <ADDR>: Sender address rejected: Domain not found
//   RFC 7505 null MX    550 5.7.27 <ADDR>: Sender address rejected: Domain has a null MX
//   DNS failure         450 4.1.8 <ADDR>: Sender address rejected: Domain not found (DNS lookup failed)
// (RFC 7505 §4.2 names 550 5.7.27 for a sender whose domain publishes a null MX: it has
// said that it sends no mail.) Untrusted input: the address and the DNS answers. Logs
// through the pipeline only: the `filter` line's summary (pass, not_fqdn, not_found, null_mx,
// tempfail, skipped, allowlisted) and `dns` in its detail.
#pragma once
#include <memory>

#include "filters/filter.h"
#include "policy/config.h"
#include "policy/errors.h"

namespace moat::filters::sender_domain {

// nullptr unless Config::requireFqdnSender or Config::rejectUnknownSenderDomain.
std::shared_ptr<const Filter> makeSenderDomainFilter(const policy::Config& config, policy::Errors& errors);

}  // namespace moat::filters::sender_domain
