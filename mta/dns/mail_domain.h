// mta/dns/mail_domain.h — whether a domain can send and receive mail, as Postfix's
// reject_unknown_sender_domain and reject_unknown_helo_hostname ask it: an MX record, else
// an address record (RFC 5321 §5.1's implicit MX). Used by [senders] reject_unknown_domain
// and [helo] reject_unknown. Untrusted input: the name (from a client) and the answers.
// Logs: nothing.
#pragma once
#include <functional>
#include <string_view>

#include "mta/dns/resolver.h"

namespace moat::mta::dns {

enum class MailDomain {
  Exists,    // MX records with a host, or no MX and an A or AAAA record
  NullMx,    // RFC 7505: the one MX record is "." (the domain accepts, and so sends, no mail)
  NotFound,  // NXDOMAIN, or neither MX nor address records; a malformed name
  TempFail   // a lookup that decides it failed (timeout, SERVFAIL): ask again later
};
std::string_view mailDomainName(MailDomain d);  // "exists", "null_mx", "not_found", "tempfail"

// Asks MX first; only when there is none, AAAA and A together (resolveHost). Calls `cb`
// exactly once, on the loop thread (possibly before this returns, from the cache). `name`:
// an A-label domain without a trailing dot.
void findMailDomain(Resolver& resolver, std::string_view name, std::function<void(MailDomain)> cb);

}  // namespace moat::mta::dns
