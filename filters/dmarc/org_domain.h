// filters/dmarc/org_domain.h — Organizational Domains and identifier alignment (RFC 7489
// §3.2, §3.1). The public suffix data is Debian's publicsuffix package read through libpsl
// (/usr/share/publicsuffix/public_suffix_list.dat, else libpsl's newest data): no suffix
// rules are written here. The list is loaded once, then only read (thread-safe).
//
// Inputs are untrusted domain names from message headers and SPF/DKIM results. Names are
// normalized first: lower-case, leading and trailing dots removed (a trailing dot is the
// absolute form; leading dots are junk some senders emit). Nothing is logged here.
#pragma once
#include <string>
#include <string_view>

namespace moat::filters::dmarc {

// Lower-case, without leading/trailing dots.
std::string normalizeDomain(std::string_view domain);

// The registrable domain (public suffix + one label). A name that is itself a public
// suffix (e.g. "co.uk", "gov") is its own Organizational Domain, so a record published
// there is found by the first lookup and never by an org-domain fallback.
std::string organizationalDomain(std::string_view domain);

// Identifier alignment: strict = the same name; relaxed = the same Organizational Domain.
bool aligned(std::string_view a, std::string_view b, bool strict);

// A syntactically usable domain name: 1-63 octet labels of letters, digits, hyphens (and
// UTF-8 for internationalized names), at most 253 octets, no empty label.
bool validDomain(std::string_view domain);

}  // namespace moat::filters::dmarc
