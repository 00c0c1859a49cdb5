// filters/arc/arc.h — ARC chain validation (RFC 8617 section 5.2) and the `arc` filter.
//
// A forwarder that changes a message (a mailing list's footer, a gateway's rewriting) breaks
// its DKIM signatures and so its DMARC; ARC lets it vouch for what it saw: each hop adds a set
// of ARC-Authentication-Results, ARC-Message-Signature (a DKIM signature of the message as
// it left) and ARC-Seal (a signature over the ARC sets so far), instance i=1..N. Moat checks
// the chain and reports arc=pass|fail|none (RFC 8617 section 10.2); a passing chain whose
// latest ARC-Seal is from one of [arc] trusted_sealers overrides a DMARC reject or quarantine
// (the DMARC filter reads ctx.arc). With [arc] seal_domain, seal_selector and seal_key_file
// set, the `arc_seal` filter (seal.cc) adds Moat's own ARC set to the inbound mail it accepts.
//
// Checked: instances 1..N contiguous with N <= 50 and exactly one field of each kind per
// instance (at most kMaxArcFields ARC fields, kMaxArcBytes of them); the latest seal's cv=
// is not fail; instance 1 has cv=none and the others cv=pass; the ARC-Message-Signature of
// instance N verifies (its c=, h=, bh=; l= is refused, as is an h= naming ARC-Seal or not
// naming From, as DKIM requires); every ARC-Seal from N down to 1 verifies over the ARC
// sets 1..i (AAR, AMS, AS each, relaxed header canonicalization, the seal itself with b=
// empty). rsa-sha256 only (RFC 8617 defines no other), keys of at least 1024 bits (RFC 8301), from the DKIM key records
// (SELECTOR._domainkey.DOMAIN) fetched through Moat's resolver on the loop; the crypto runs
// on the thread pool. A key that cannot be had (not found, DNS trouble) fails the chain:
// RFC 8617 defines only none, pass and fail.
// Untrusted: the whole message and every key record. Nothing is logged here: the filter
// reports through the pipeline's `filter` event (result; detail: instances, sealer, reason,
// trusted_sealer).
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "filters/dkim/dkim.h"
#include "filters/filter.h"
#include "policy/config.h"

namespace moat::filters::arc {

constexpr int kMaxInstances = 50;                    // RFC 8617 section 4.2.1
constexpr size_t kMaxArcFields = 3 * kMaxInstances;  // more ARC fields than that: fail
constexpr size_t kMaxArcBytes = 256 * 1024;          // all ARC fields together; more: fail

struct ChainResult {
  std::string result = "none";  // none pass fail
  std::string reason;           // why not pass (fixed wording, numbers and checked names only)
  int instances = 0;            // N, the latest instance, when the structure could be read
  std::string sealer;           // d= of the latest ARC-Seal, lower-case, when valid
};

// One ARC set's raw fields (with folding, without the final CRLF).
struct ArcSet {
  std::string_view aar, ams, seal;
};

// The chain as read from the header section (RFC 8617 5.2 steps 1 to 4, no crypto): either
// decided (none, or a fail of form or structure) or the sets 1..N with the key names
// (SELECTOR._domainkey.DOMAIN, lower-case, deduplicated) the crypto needs.
struct Chain {
  bool decided = false;
  ChainResult out;
  std::vector<ArcSet> sets;  // sets[i - 1] is instance i
  std::vector<std::string> keyNames;
};
Chain readChain(std::string_view message);

// RFC 6376 3.4.2 (relaxed) or 3.4.1 (simple) canonical form of one raw header field, with
// the CRLF after it.
std::string canonicalHeader(std::string_view raw, bool relaxed);
// A signature field with the value of its b= tag removed (RFC 6376 3.7): the text between
// "b=" and the next ';' (or the end) goes, everything else stays as it is.
std::string withoutSignature(std::string_view raw);
// What the ARC-Seal of instance `upTo` (1-based) signs (RFC 8617 5.1.1): the ARC sets 1..upTo
// in order, each as ARC-Authentication-Results, ARC-Message-Signature, ARC-Seal in relaxed
// canonical form, the last seal with b= empty and without its CRLF.
std::string sealInput(const std::vector<ArcSet>& sets, size_t upTo);

// The whole check with the keys fetched (thread pool side).
ChainResult verifyWithKeys(std::string_view message, const dkim::KeyMap& keys);

// The whole check: reading on the loop (the pool for a large header section), keys through
// env.resolver, crypto on the pool; `done` on the loop. `message` must stay valid until
// `done` runs; `keepAlive` is held until then.
void verifyMessage(const filters::Env& env, std::string_view message, std::shared_ptr<const void> keepAlive,
                   std::function<void(ChainResult)> done);

// The filter (Stage::Data, between DKIM and DMARC). Config [arc]: verify = true,
// trusted_sealers = [] (domain names). Null when verify = false.
std::shared_ptr<const Filter> makeArcFilter(const policy::Config& config, policy::Errors& errors);

// Sealing (seal.cc): [arc] seal_domain, seal_selector, seal_key_file (RSA PEM, checked as the
// DKIM signer's keys are). nullopt when none is set or on an error (reported at FILE:LINE).
struct SealConfig {
  std::string domain, selector, keyPem;
};
std::optional<SealConfig> readSealConfig(policy::Section& section, bool verify);
std::shared_ptr<const Filter> makeSealFilter(SealConfig config);

// Both [arc] filters from one reading of the section: the checker (null when verify =
// false) and the sealer (null when sealing is not configured), which runs last.
struct ArcFilters {
  std::shared_ptr<const Filter> verify, seal;
};
ArcFilters makeArcFilters(const policy::Config& config, policy::Errors& errors);

}  // namespace moat::filters::arc
