// filters/dkim/internal.h — pieces shared by the DKIM verifier, signer and filters: RAII for
// libopendkim handles, the header-field splitter, the DKIM-Signature tag reader (RFC 6376
// section 3.2 tag-lists) and base64. Everything here reads untrusted message bytes and is
// bounded by the input it is given. Nothing here logs.
#pragma once
#include <openssl/evp.h>
#include <sys/types.h>

// dkim.h is a C header that spells its boolean type _Bool, which C++ does not have.
#define _Bool bool
#include <opendkim/dkim.h>
#undef _Bool

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "filters/dkim/dkim.h"
#include "mta/runtime/base64.h"

namespace moat::filters::dkim::detail {

struct LibDeleter {
  void operator()(DKIM_LIB* lib) const {
    if (lib) dkim_close(lib);
  }
};
struct HandleDeleter {
  void operator()(DKIM* d) const {
    if (d) dkim_free(d);
  }
};
struct PkeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using LibPtr = std::unique_ptr<DKIM_LIB, LibDeleter>;
using HandlePtr = std::unique_ptr<DKIM, HandleDeleter>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;

// One header field of the message: its raw text (with folding, without the final CRLF).
struct HeaderField {
  std::string_view name;
  std::string_view raw;
};
struct SplitMessage {
  std::vector<HeaderField> headers;
  std::string_view body;  // after the empty line; empty when there is none
};
SplitMessage splitMessage(std::string_view message);

// The body as handed to libopendkim: a last line without CRLF gets one. Both
// canonicalizations add it anyway (RFC 6376 3.4.4, and 3.4.3 with erratum 3964), but
// libopendkim reports a syntax error for a body that ends mid-line.
std::string completeBody(std::string_view body);

// RFC 6376 3.4.3 and 3.4.4: the canonical form of a body (a last line without CRLF is taken
// as ended). `relaxed` false: simple.
std::string canonicalBody(std::string_view body, bool relaxed);

// RFC 6376 5.3: the DKIM-Signature header value folded with CRLF TAB before a tag, and inside
// the h= list after a ':' and inside base64 values, so no line passes `width` octets (the
// first line counts the "DKIM-Signature: " in front of it). The tag-list stays valid (FWS
// is allowed at those places, 3.2 and 3.5) and relaxed canonicalization reads the same
// header, so it must be folded before its b= is computed; b= itself may be folded after.
std::string foldSignature(std::string_view value, size_t width = 78);

bool iequals(std::string_view a, std::string_view b);
std::string lower(std::string_view s);

// tag=value pairs of a tag-list; values with surrounding whitespace trimmed. Returns
// nullopt for a tag-list that is not well formed (duplicate tag, missing '=').
using TagList = std::vector<std::pair<std::string, std::string>>;
std::optional<TagList> parseTagList(std::string_view text);
const std::string* findTag(const TagList& tags, std::string_view name);
std::string stripWhitespace(std::string_view s);

// RFC 6376 3.5: d= is a domain-name, s= a selector (dot-separated sub-domains).
bool validDomain(std::string_view d);
bool validSelector(std::string_view s);

using mta::base64Decode;  // whitespace ignored, as in key records and key files
using mta::base64Encode;

// Key records (RFC 6376 3.6), for the DKIM verifier and the ARC verifier (RFC 8617 uses
// DKIM's keys). fetchKeys looks up each name's TXT record through env.resolver on the loop
// and calls `done` on the loop with every answer (TempFail for one not answered), in the
// order of `names`. env.resolver must be set.
void fetchKeys(const filters::Env& env, const std::vector<std::string>& names, std::function<void(KeyMap)> done);
// Several TXT records at one name: the first that carries a key (RFC 6376 3.6.2.2).
// `answer.txt` must not be empty.
const std::string& keyRecord(const KeyAnswer& answer);
// The RSA public key of a key record (p= as SubjectPublicKeyInfo or, as commonly published,
// a bare PKCS#1 RSAPublicKey), refused with `error` set when the record is not a DKIM1 RSA
// key (v=, k=), is revoked (empty p=), or is under `minBits` (RFC 8301 3.2).
PkeyPtr rsaPublicKey(const std::string& record, int minBits, std::string& error);

// RFC 6376 3.6.1 allows only SubjectPublicKeyInfo in p=, but keys published as a bare
// PKCS#1 RSAPublicKey are common: such a record comes back with p= re-encoded as
// SubjectPublicKeyInfo (its tags written out again) so libopendkim can read it; any other
// record comes back as it is.
std::string normalizeKeyRecord(const std::string& record);
// RFC 6376 6.1.2: a key whose k= (default rsa, 3.6.1) is not the a= algorithm's key type is
// PERMFAIL "inappropriate key algorithm". libopendkim reads the p= data by a= alone, so an
// RSA key published as k=ed25519 would verify an rsa-sha256 signature. Empty when suitable
// (or when the record is no tag-list: libopendkim reports that).
std::string keyTypeMismatch(const std::string& algorithm, const std::string& record);

// Parses a private key: PEM (any OpenSSL form), base64 DER, or base64 of a 32-byte ed25519
// seed. Returns nullptr with `error` set.
PkeyPtr loadPrivateKey(std::string_view text, std::string& error);
std::string privateKeyPem(EVP_PKEY* key);

// ed25519-sha256 signing done by Moat (ed25519_sign.cc explains why): relaxed/relaxed, h=
// the `sign` names present in message order plus one more of each `oversign` name.
std::optional<std::string> signEd25519(EVP_PKEY* key, const std::string& domain, const std::string& selector,
                                       const SplitMessage& message, const std::vector<std::string>& sign,
                                       const std::vector<std::string>& oversign, std::string& error);

// RFC 6376 3.4.2: a raw field (folded, without CRLF) in relaxed form: lower-case name,
// unfolded value with WSP runs as one SP, no WSP at the ends of the value or around the
// colon; without CRLF.
std::string relaxedHeader(std::string_view raw);
// RFC 6376 5.4.2: h= (the `sign` names present, in message order, then each `oversign` name
// once more) and the relaxed header block it covers, each name's fields from the bottom up.
std::pair<std::string, std::string> selectHeaders(const SplitMessage& m, const std::vector<std::string>& sign,
                                                  const std::vector<std::string>& oversign);
// bh= of a body, relaxed canonicalization, sha256, base64.
std::string bodyHashRelaxed(std::string_view body);
// The rsa-sha256 signature (RFC 8017 PKCS#1 v1.5 over SHA-256) of `data`, base64; nullopt
// with `error` set when `key` is not RSA or signing fails.
std::optional<std::string> rsaSha256Sign(EVP_PKEY* key, std::string_view data, std::string& error);
// The header names the DKIM signer signs (kSignHeaders of sign.cc), lower-case.
std::vector<std::string> signHeaderNames();

}  // namespace moat::filters::dkim::detail
