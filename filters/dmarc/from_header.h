// filters/dmarc/from_header.h — the RFC5322.From domain(s) a DMARC check is about
// (RFC 7489 §6.6.1, RFC 5322 §3.4, §3.6.2).
//
// Input is untrusted: the message's header section as received (CRLF or bare LF line
// endings, folded lines). Only the header section is read; quoted strings and comments in
// the From value are skipped so "Doe, John" or "(x@y)" never yield an address.
//
// Policy for the cases RFC 7489 §6.6.1 leaves to the receiver. The rule throughout: junk
// in the From fields can never hide a well-formed author domain from DMARC.
//  - several From fields, or one From with several mailboxes: every distinct author domain
//    is returned (in order of appearance), and evaluate() applies DMARC to each domain and
//    keeps the strictest outcome (fail with the strongest policy first), as §6.6.1 permits;
//    a forged second author cannot hide behind a passing first one.
//  - a mailbox without a usable domain ("x@", a domain literal, "bad..domain", 8-bit bytes
//    that are not an internationalized name), From text without any address, a second
//    From field of that kind: noted as `unusable`, and the usable domains beside it are
//    still all returned and evaluated (such a mailbox cannot carry a DMARC policy itself).
//  - an unbalanced quote or comment ('"CEO <ceo@bank.test>'): a mail client may well show
//    the address behind it, so the value is read again with quotes and comments ignored and
//    every domain after an "@" counts; `unusable` is set.
//  - more than kMaxFromDomains distinct domains: the first kMaxFromDomains are returned and
//    `tooMany` is set (evaluate() then cannot vouch for the rest: see evaluate.h).
//  - addresses, but no usable domain among them: nothing is returned; evaluate() reports
//    permerror with a malformed From (the filter's `malformed_from` action): the From
//    names something a mail client may show as a domain, and DMARC cannot check it.
//  - no From field, or From text without any "@": nothing is returned; evaluate() reports
//    permerror. No domain is named, so none can be impersonated: not a malformed From.
// Internationalized domains come back as A-labels (org_domain.h, RFC 8616).
// Nothing is logged here.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace moat::filters::dmarc {

constexpr size_t kMaxFromDomains = 16;  // bound on the author domains evaluated per message

struct FromAuthors {
  std::vector<std::string> domains;  // usable author domains: A-labels, lower-case, distinct, in order
  bool fieldFound = false;           // at least one From field
  bool addressFound = false;         // at least one "@" (outside quotes and comments)
  bool unusable = false;             // something in the From fields had no usable domain (see above)
  bool tooMany = false;              // more than kMaxFromDomains distinct domains; the rest not listed
  // The first problem, for logs only: it may quote the client's text (at most 80 bytes of
  // it), so it never goes into a header or an SMTP reply.
  std::string problem;
};

// The author domains of the From field(s) of `message`.
FromAuthors fromAuthors(std::string_view message);

// The same for one From field's value (after "From:"), for tests and `moat scan`.
FromAuthors fromValueAuthors(std::string_view value);

// The usable domains of the From field(s) of `message` (fromAuthors().domains). `error`
// is cleared, then set to the problem when there is one (the result may still hold domains).
std::vector<std::string> fromDomains(std::string_view message, std::string& error);

// The same for one From field's value.
std::vector<std::string> fromValueDomains(std::string_view value, std::string& error);

}  // namespace moat::filters::dmarc
