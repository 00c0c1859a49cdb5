// filters/dkim/dkim.h — DKIM verification and signing (RFC 6376, RFC 8301, RFC 8463 ed25519)
// built on libopendkim, with every key fetched by Moat's own asynchronous resolver first.
//
// Untrusted inputs: the message (its DKIM-Signature headers and body) and the key records
// served by DNS. libopendkim's own DNS code never runs: keys are prefetched on the loop and
// handed to the library through its key-lookup hook; the crypto runs on the thread pool.
// Logs: the `filter` event (through the pipeline) carries each signature's result; key load
// problems are reported at config load time as FILE:LINE errors.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "filters/filter.h"
#include "policy/config.h"

namespace moat::filters::dkim {

struct SigResult {
  std::string result;  // pass fail neutral temperror permerror policy (RFC 8601 names)
  std::string domain;     // d=
  std::string selector;   // s=
  std::string bPrefix;    // the first 8+ characters of b= (header.b, RFC 6008)
  std::string algorithm;  // a=
  std::string reason;     // why it is not pass
};

struct VerifyOptions {
  // At most this many signatures are checked, those whose d= aligns with a From domain
  // first; the rest are reported as one neutral result.
  size_t maxSignatures = 8;
  int64_t fixedTime = 0;     // verify "as of" this Unix time (tests of x=); 0 = now
};

// Verifies every signature (up to a limit) of a raw message (CRLF). Async: DNS on the loop,
// crypto on the pool. `message` must stay valid until `done` runs; `keepAlive` is held
// until then for that purpose. `done` runs on the loop thread.
void verifyMessage(const filters::Env& env, std::string_view message, std::shared_ptr<const void> keepAlive,
                   std::function<void(std::vector<SigResult>)> done);
void verifyMessage(const filters::Env& env, std::string_view message, std::shared_ptr<const void> keepAlive,
                   const VerifyOptions& options, std::function<void(std::vector<SigResult>)> done);

// The synchronous core (thread pool side): verifies with keys already fetched. `keys` maps
// "selector._domainkey.domain" (lower-case) to the DNS answer for it.
struct KeyAnswer {
  mta::dns::Status status = mta::dns::Status::NxDomain;
  std::vector<std::string> txt;
};
using KeyMap = std::vector<std::pair<std::string, KeyAnswer>>;

// The d= / s= pairs of the message's DKIM-Signature headers that need a key lookup,
// as "selector._domainkey.domain" names (deduplicated, of the signatures that are checked).
std::vector<std::string> keyNamesToFetch(std::string_view message, const VerifyOptions& options);
std::vector<SigResult> verifyWithKeys(std::string_view message, const KeyMap& keys, const VerifyOptions& options);

struct SignKey {
  std::string domain, selector;
  std::string algorithm;  // "rsa-sha256" | "ed25519-sha256"
  std::string privateKeyPem_or_seed;  // PEM (PKCS#1/PKCS#8), or base64 of a 32-byte ed25519 seed
};

// Checks that the key parses and suits the algorithm (RSA >= 1024 bits, or ed25519).
bool checkSignKey(const SignKey& key, std::string& error);

// Returns the DKIM-Signature header VALUE (without "DKIM-Signature: ", folded with CRLF TAB
// to lines of at most 78 octets) or nullopt with `error` set. relaxed/relaxed, a fixed list
// of headers with From oversigned, t= set. `message` is signed as given: the sign filter
// first gives it the SMTP client's line form (mta/runtime/data_lines.h).
std::optional<std::string> signMessage(const SignKey& key, std::string_view message, std::string& error);

// What a signer signs (the DKIM signer, the ARC sealer): the message as every next hop will
// get it. The edits of the filters before it (ctx.edits) applied; with `convert8Bit` (the
// DKIM signer), an 8-bit body converted to 7-bit MIME by delivery's converter first (RFC 6376
// section 5.3: otherwise a next hop without 8BITMIME, RFC 6152 section 3, converts it after
// signing), unless it cannot be (`conversionWhy`: 8-bit header fields, a refused structure,
// an earlier rewrite holding the 8-bit bytes, converted parts over 128 KiB, over
// `maxMessageSize` converted); and in the lines the SMTP client sends (over-long lines broken,
// mta/runtime/data_lines.h). `edits` (the conversion's, then the line breaks, as edits of
// ctx.message) make the stored message `message`: a signer that signed returns them in its
// Result with `convertedTo7Bit`; one that did not leaves the message as received. CPU work:
// the thread pool side.
struct Prepared {
  std::string message;
  std::vector<Edit> edits;
  bool convertedTo7Bit = false;
  std::string conversionWhy;
};
Prepared prepareForSigning(const MessageContext& ctx, uint64_t maxMessageSize, bool convert8Bit);
// A signer's Result: the edits and the 7-bit flag of `prepared`, and the `conversion` detail
// of its `filter` line ("7bit", or "none: WHY" for an 8-bit message left as it is).
void takePrepared(Prepared&& prepared, Result& out);

// `moat dkim keygen`: writes the private key (PEM, mode 0600) and returns the TXT record
// text "v=DKIM1; k=rsa; p=...". type: "rsa" (2048 bits) or "ed25519". An existing
// outFile is an error unless `replace`.
bool keygen(const std::string& type, const std::string& outFile, bool replace, std::string& txtRecord,
            std::string& error);

// Filters (Stage::Data). Config: [dkim] verify = true, max_signatures = 8;
// [[dkim.sign]] domain, selector, key_file, algorithm ("rsa-sha256" default | "ed25519-sha256").
std::shared_ptr<const Filter> makeDkimVerifyFilter(const policy::Config& config, policy::Errors& errors);
std::shared_ptr<const Filter> makeDkimSignFilter(const policy::Config& config, policy::Errors& errors);
// The [[dkim.sign]] keys, read and checked as makeDkimSignFilter reads them (the same
// errors, at the same lines), for mail Moat makes itself (TLS reports).
std::vector<SignKey> readSignKeys(const policy::Config& config, policy::Errors& errors);
// The text of a private key file named by config key `key` of `s` (readable, not empty);
// else nullopt with the error reported at that key's line. [[dkim.sign]] and [arc] use it.
std::optional<std::string> readKeyFile(policy::Section& s, const std::string& key, const std::string& file);

}  // namespace moat::filters::dkim
