// filters/dmarc/org_domain.h — Organizational Domains and identifier alignment (RFC 7489
// §3.2, §3.1). The public suffix data is Debian's publicsuffix package read through libpsl
// (/usr/share/publicsuffix/public_suffix_list.dat, else libpsl's newest data): no suffix
// rules are written here. The list is loaded once, then only read (thread-safe).
//
// Inputs are untrusted domain names from message headers and SPF/DKIM results. Names are
// normalized first: leading and trailing dots removed (a trailing dot is the absolute form;
// leading dots are junk some senders emit), internationalized names converted to A-labels
// (RFC 8616 §4-5: a From domain "bücher.test" is looked up, aligned and matched against the
// public suffix list as "xn--bcher-kva.test", the form DNS and DKIM d= use), lower-case.
// Nothing is logged here.
#pragma once
#include <string>
#include <string_view>

namespace moat::filters::dmarc {

// Without leading/trailing dots, U-labels converted to A-labels (IDNA2008 with UTS #46
// non-transitional mapping and NFC, libidn2), lower-case. "" when the name has 8-bit bytes
// that are not a valid internationalized name (bad UTF-8, disallowed code points): such a
// name is unusable, never looked up or compared as it is.
std::string normalizeDomain(std::string_view domain);

// The registrable domain (public suffix + one label). A name that is itself a public
// suffix (e.g. "co.uk", "gov") is its own Organizational Domain, so a record published
// there is found by the first lookup and never by an org-domain fallback.
std::string organizationalDomain(std::string_view domain);

// Whether a (normalized) name is itself a public suffix ("com", "co.uk"): nobody registers
// it, so it names no organisation. false when no suffix list could be loaded.
bool isPublicSuffix(std::string_view domain);

// Identifier alignment: strict = the same name; relaxed = the same Organizational Domain.
bool aligned(std::string_view a, std::string_view b, bool strict);

// A syntactically usable (normalized) domain name: 1-63 octet labels of ASCII letters,
// digits, hyphens and underscores, at most 253 octets, no empty label. Internationalized
// names qualify once normalizeDomain() has made them A-labels; raw 8-bit bytes never do.
bool validDomain(std::string_view domain);

}  // namespace moat::filters::dmarc
