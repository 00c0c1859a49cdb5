// filters/dmarc/evaluate.h — DMARC evaluation of one message (RFC 7489 §6.6): author
// domain(s) from the From field, policy discovery over the async Resolver (§6.6.3),
// identifier alignment of the SPF and DKIM results (§3.1, §4.2), and pct sampling (§6.6.4).
//
// Inputs are untrusted: the message headers, and the DNS answers (TXT at _dmarc.<domain>).
// Discovery: _dmarc.<from-domain>, then (when that name has no DMARC record, NXDOMAIN
// included) _dmarc.<organizational-domain>. TXT records not starting with v=DMARC1 are
// discarded; several DMARC records at the name chosen → result none. A DNS TempFail at any
// step → temperror (never none: DESIGN.md decision 3); a malformed name → permerror.
// A missing or invalid p= (or invalid sp=): a record with at least one valid rua= URI
// counts as p=none, one without is ignored (result none), per §6.6.3. Any other tag with
// an invalid value (pct=50.5, fo=2, ri=1d) is ignored and keeps its default, as unknown
// tags are (§6.6.3 discards a record only for p/sp; DMARCbis: ignore invalid tags). Text
// that is not a tag-list at all (a piece without "=") → permerror.
// Policy: p= when the record is the From domain's own; from the organizational domain's
// record, np= (RFC 9091) for a From domain that does not exist (A, AAAA and MX all NXDOMAIN
// or NODATA; a TempFail there counts as "exists"), otherwise sp= (default p=).
// SPF: the SPF result given is the RFC5321.MailFrom check (for the null sender RFC 7208 §2.4
// makes that the HELO domain); it counts when it is "pass" and its domain aligns.
// DKIM: every signature with result "pass" whose d= aligns.
// Author domains: see from_header.h. Each usable one is evaluated (at most kMaxFromDomains,
// internationalized ones as A-labels, RFC 8616), and the strictest outcome is kept;
// unusable mailboxes beside them cannot lower it. A From whose addresses have no usable
// domain → permerror with `malformedFrom`; so is a From with more than kMaxFromDomains
// domains, unless a domain evaluated fails with an enforced policy. No From field, or a
// From without any address → permerror (no domain named: nothing to protect).
// Nothing is logged here; the filter logs through the pipeline's `filter` event.
#pragma once
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "filters/dmarc/from_header.h"
#include "filters/dmarc/record.h"
#include "filters/filter.h"
#include "mta/dns/resolver.h"

namespace moat::filters::dmarc {

struct Evaluation {
  std::string result;      // none pass fail temperror permerror
  std::string fromDomain;  // the author domain this outcome is about ("" when none usable)
  std::string policy;      // none quarantine reject: p=, sp= or np= as applied to fromDomain ("" without a record)
  bool spfAligned = false, dkimAligned = false;
  Record record;
  bool pctSampledOut = false;  // a fail that the pct= draw left out: disposition is one step lower
  // Beyond the brief's fields:
  std::string disposition;   // none quarantine reject: what the policy asks for this message (after pct)
  std::string recordDomain;  // the domain whose _dmarc record was used
  bool orgRecord = false;    // the record came from the Organizational Domain
  std::string reason;        // why none / temperror / permerror: fixed text and checked names
                             // only (it goes into the A-R comment), never the client's text
  std::string problem;       // for logs only: the From text or record tag that was unusable
  bool malformedFrom = false;            // permerror because the From field(s) had no usable author
                                         // domain, or more than could be evaluated (§6.6.1)
  std::vector<std::string> fromDomains;  // every author domain found (A-labels)
};

// Returns an integer in [0, 100); a fail is sampled in when the draw is < pct.
using PctDraw = std::function<int()>;

// Evaluates `message` (its header section is enough). Calls `done` exactly once, on the
// thread the Resolver calls back on (maybe before evaluate() returns). An empty `draw`
// uses a thread-local random generator.
void evaluate(mta::dns::Resolver& resolver, std::string_view message, const SpfOutcome& spf,
              const std::vector<DkimOutcome>& dkim, std::function<void(Evaluation)> done, PctDraw draw = {});

// The same for From field(s) already read (fromAuthors(message)).
void evaluateAuthors(mta::dns::Resolver& resolver, const FromAuthors& authors, const SpfOutcome& spf,
                     const std::vector<DkimOutcome>& dkim, std::function<void(Evaluation)> done, PctDraw draw = {});

// The same for one author domain (already extracted).
void evaluateDomain(mta::dns::Resolver& resolver, std::string_view fromDomain, const SpfOutcome& spf,
                    const std::vector<DkimOutcome>& dkim, std::function<void(Evaluation)> done, PctDraw draw = {});

// The next-lower policy (§6.6.4): reject → quarantine → none.
std::string lowerPolicy(const std::string& policy);

// Orders outcomes for several author domains: higher = stricter.
int strictness(const Evaluation& e);

}  // namespace moat::filters::dmarc
