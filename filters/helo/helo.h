// filters/helo/helo.h — checks of the name a client gives at HELO/EHLO ([helo]), as
// Postfix's reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname and
// reject_unknown_helo_hostname, and the check_helo_access entries admins write for a client
// that claims to be the gateway itself. Each is off unless configured.
//
// RFC 5321 §2.3.5 and §4.1.4: the EHLO argument is the client's fully-qualified primary
// host name, or an address literal when it has none. Spamware and infected desktops give
// bare words ("user-pc", "localhost"), malformed names, names that do not exist, or the
// name of the server they are talking to. §4.1.4 forbids refusing mail because the name does
// not match the client's address: nothing here compares the two.
//
// Run at MAIL FROM, not at HELO, so that clients in relay.networks, authenticated clients
// (AUTH comes after EHLO), [connection] allow and a client [dnsbl] allowlisted are never
// checked (filters::sparedBy);
// refused with the reply to MAIL (Postfix, with smtpd_delay_reject, refuses at RCPT):
//   invalid      501 5.5.2 <NAME>: Helo command rejected: Invalid name
//   not a FQDN   504 5.5.2 <NAME>: Helo command rejected: need fully-qualified hostname
//   own name     550 5.7.1 <NAME>: Helo command rejected: that is this gateway's name
//   unknown      450 4.7.1 <NAME>: Helo command rejected: Host not found
// (unknown: no MX, A or AAAA record; also 450 when DNS fails, with "(DNS lookup failed)").
// Untrusted input: the name and the DNS answers. Logs through the pipeline only: the `filter`
// line's summary says which check refused (invalid, not_fqdn, own_name, unknown, tempfail).
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "filters/filter.h"
#include "mta/runtime/ip.h"
#include "policy/config.h"
#include "policy/errors.h"

namespace moat::filters::helo {

enum class Form {
  Invalid,  // neither a host name nor an address literal
  Single,   // a valid name of one label ("localhost", "user-pc")
  Fqdn,     // a valid name of two labels or more
  Literal   // an address literal, [192.0.2.1] or [IPv6:2001:db8::1]
};
// What `name` is. A name is what Postfix's valid_hostname() takes: labels of letters,
// digits, hyphens and underscores (Windows hosts send those), 1-63 octets, at most 253
// in all; one trailing dot allowed (the absolute form); an internationalized name as its
// A-labels. A bare IPv4 address ("192.0.2.1") is taken as a name of four labels, as Postfix
// does for compatibility; an IPv6 one without its literal's brackets is invalid.
Form classify(std::string_view name);

// The names and addresses a client outside claims when it says it is this gateway:
// server.hostname, each [[route]] helo_name, each relay.domains name (not the `.domain`
// entries: a host under an accepted domain may well be a partner's), and the addresses of
// the listeners that are not wildcards.
struct OwnNames {
  std::vector<std::string> names;  // lower-case A-labels, no trailing dot
  std::vector<mta::IpAddress> addresses;
  static OwnNames of(const policy::Config& config);
  bool matches(std::string_view helo) const;
};

// nullptr when no check of [helo] is on (or the section has errors, reported in `errors`).
std::shared_ptr<const Filter> makeHeloFilter(const policy::Config& config, policy::Errors& errors);

}  // namespace moat::filters::helo
