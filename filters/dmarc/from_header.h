// filters/dmarc/from_header.h — the RFC5322.From domain(s) a DMARC check is about
// (RFC 7489 §6.6.1, RFC 5322 §3.4, §3.6.2).
//
// Input is untrusted: the message's header section as received (CRLF or bare LF line
// endings, folded lines). Only the header section is read; quoted strings and comments in
// the From value are skipped so "Doe, John" or "(x@y)" never yield an address.
//
// Policy for the cases RFC 7489 §6.6.1 leaves to the receiver:
//  - no From field: an error ("no From header field"); evaluate() reports permerror
//    (RFC 5322 requires exactly one From; there is no author domain to evaluate).
//  - several From fields, or one From with several mailboxes: every distinct author domain
//    is returned (in order of appearance), and evaluate() applies DMARC to each domain and
//    keeps the strictest outcome (fail with the strongest policy first), as §6.6.1 permits;
//    a forged second author cannot hide behind a passing first one.
//  - a mailbox whose domain is unusable (domain literal, bad syntax), or a From with no
//    address at all: an error; evaluate() reports permerror.
// Pieces without "@" between top-level commas (an unquoted "Doe, John <j@x>") are skipped.
// Nothing is logged here.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace moat::filters::dmarc {

// The domains (lower-case, distinct) of the From field(s) of `message`. On a problem,
// `error` is set (and the result may be empty).
std::vector<std::string> fromDomains(std::string_view message, std::string& error);

// The domains of one From field's value (after "From:"), for tests and `moat scan`.
std::vector<std::string> fromValueDomains(std::string_view value, std::string& error);

}  // namespace moat::filters::dmarc
