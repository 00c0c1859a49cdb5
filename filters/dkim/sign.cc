// filters/dkim/sign.cc — DKIM signing (RFC 6376 section 5), relaxed/relaxed: rsa-sha256 with
// libopendkim, ed25519-sha256 (RFC 8463) with Moat's own signer (ed25519_sign.cc); and
// `moat dkim keygen`.
//
// The message to sign comes from our own users but is still bounded and untrusted in form;
// keys come from the config (checked at load time). The signature is returned folded (CRLF
// TAB) to lines of at most 78 octets, the folding part of what is signed. Nothing is
// logged here.
#include <openssl/x509.h>

#include <cerrno>
#include <cstdio>

#include "filters/dkim/dkim.h"
#include "filters/dkim/internal.h"
#include "mta/runtime/durable_file.h"

namespace moat::filters::dkim {

using namespace detail;

namespace {

// RFC 6376 5.4.1: the fields a verifier and a reader care about; From is also oversigned so
// no second From can be added after signing.
const char* const kSignHeaders[] = {"from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
                                    "mime-version", "content-type", "content-transfer-encoding",
                                    "content-id", "content-description", "resent-date", "resent-from",
                                    "resent-sender", "resent-to", "resent-cc", "resent-message-id",
                                    "in-reply-to", "references", "list-id", "list-help", "list-unsubscribe",
                                    "list-subscribe", "list-post", "list-owner", "list-archive", nullptr};
const char* const kOversign[] = {"from", nullptr};

constexpr int kSignatureWidth = 78;  // RFC 5322 2.1.1: lines SHOULD be at most 78 octets

LibPtr makeSignLib() {
  LibPtr lib(dkim_init(nullptr, nullptr));
  if (!lib) return lib;
  dkim_options(lib.get(), DKIM_OP_SETOPT, DKIM_OPTS_SIGNHDRS, const_cast<char**>(kSignHeaders), sizeof(char**));
  dkim_options(lib.get(), DKIM_OP_SETOPT, DKIM_OPTS_OVERSIGNHDRS, const_cast<char**>(kOversign), sizeof(char**));
  return lib;
}

DKIM_LIB* signLib() {
  static LibPtr lib = makeSignLib();
  return lib.get();
}

bool hasFrom(const SplitMessage& split) {
  for (const auto& h : split.headers)
    if (iequals(h.name, "From")) return true;
  return false;
}

}  // namespace

std::vector<std::string> detail::signHeaderNames() {
  std::vector<std::string> out;
  for (const char* const* h = kSignHeaders; *h; ++h) out.emplace_back(*h);
  return out;
}

bool checkSignKey(const SignKey& key, std::string& error) {
  if (!validDomain(key.domain)) return error = "invalid domain \"" + key.domain + "\"", false;
  if (!validSelector(key.selector)) return error = "invalid selector \"" + key.selector + "\"", false;
  PkeyPtr pkey = loadPrivateKey(key.privateKeyPem_or_seed, error);
  if (!pkey) return false;
  int id = EVP_PKEY_get_base_id(pkey.get());
  if (key.algorithm == "rsa-sha256") {
    if (id != EVP_PKEY_RSA) return error = "rsa-sha256 needs an RSA key", false;
    if (EVP_PKEY_get_bits(pkey.get()) < 1024) return error = "RSA key under 1024 bits (RFC 8301)", false;
    return true;
  }
  if (key.algorithm == "ed25519-sha256") {
    if (id != EVP_PKEY_ED25519) return error = "ed25519-sha256 needs an ed25519 key", false;
    return true;
  }
  error = "unknown algorithm \"" + key.algorithm + "\" (rsa-sha256 or ed25519-sha256)";
  return false;
}

std::optional<std::string> signMessage(const SignKey& key, std::string_view message, std::string& error) {
  PkeyPtr pkey = loadPrivateKey(key.privateKeyPem_or_seed, error);
  if (!pkey) return std::nullopt;
  auto split = splitMessage(message);
  if (!hasFrom(split)) return error = "message has no From header (RFC 6376 5.4)", std::nullopt;
  if (key.algorithm == "ed25519-sha256") {
    if (EVP_PKEY_get_base_id(pkey.get()) != EVP_PKEY_ED25519) return error = "not an ed25519 key", std::nullopt;
    std::vector<std::string> sign, oversign;
    for (const char* const* h = kSignHeaders; *h; ++h) sign.emplace_back(*h);
    for (const char* const* h = kOversign; *h; ++h) oversign.emplace_back(*h);
    return signEd25519(pkey.get(), key.domain, key.selector, split, sign, oversign, error);
  }
  dkim_alg_t alg = DKIM_SIGN_RSASHA256;
  std::string pem = privateKeyPem(pkey.get());  // libopendkim reads PEM
  DKIM_STAT st = DKIM_STAT_OK;
  HandlePtr dkim(dkim_sign(signLib(), reinterpret_cast<const u_char*>("moat"), nullptr,
                           reinterpret_cast<dkim_sigkey_t>(pem.data()),
                           reinterpret_cast<const u_char*>(key.selector.c_str()),
                           reinterpret_cast<const u_char*>(key.domain.c_str()), DKIM_CANON_RELAXED,
                           DKIM_CANON_RELAXED, alg, -1, &st));
  if (!dkim) return error = std::string("dkim_sign: ") + dkim_getresultstr(st), std::nullopt;
  // RFC 6376 5.3: folded (libopendkim folds before it signs, so the signed header is the one
  // that goes out). Unfolded, a signature with a long h= passes 998 octets and the SMTP
  // client's line break (mta/runtime/data_lines.h) would then break it in transit.
  dkim_set_margin(dkim.get(), kSignatureWidth);
  for (const auto& h : split.headers) {
    if (h.raw.empty()) continue;  // a lone CR at the end: libopendkim asserts on length 0
    std::string raw(h.raw);
    if (dkim_header(dkim.get(), reinterpret_cast<u_char*>(raw.data()), raw.size()) != DKIM_STAT_OK)
      return error = "a header could not be processed", std::nullopt;
  }
  if ((st = dkim_eoh(dkim.get())) != DKIM_STAT_OK) return error = std::string("dkim_eoh: ") + dkim_getresultstr(st), std::nullopt;
  std::string body = completeBody(split.body);
  if (!body.empty() && (st = dkim_body(dkim.get(), reinterpret_cast<u_char*>(body.data()), body.size())) != DKIM_STAT_OK)
    return error = std::string("dkim_body: ") + dkim_getresultstr(st), std::nullopt;
  if ((st = dkim_eom(dkim.get(), nullptr)) != DKIM_STAT_OK) return error = std::string("dkim_eom: ") + dkim_getresultstr(st), std::nullopt;
  u_char* buf = nullptr;
  size_t len = 0;
  if ((st = dkim_getsighdr_d(dkim.get(), sizeof(DKIM_SIGNHEADER) + 1, &buf, &len)) != DKIM_STAT_OK || !buf)
    return error = std::string("dkim_getsighdr: ") + dkim_getresultstr(st), std::nullopt;
  return std::string(reinterpret_cast<const char*>(buf), len);
}

namespace {

// Written whole beside `path`, then put in place (mta::writeFileDurably): by link(2) when an
// existing key must not be replaced (it fails on an existing name, atomically), else by
// rename(2).
bool writeKeyFile(const std::string& path, const std::string& pem, bool replace, std::string& error) {
  mta::DurableWrite how;
  how.replace = replace;
  how.mode = 0600;
  mta::FileError e = mta::writeFileDurably(path, pem, how);
  if (!e) return true;
  if (!replace && e.code == EEXIST && e.what.starts_with("link "))
    return error = path + " exists: a published key would stop matching (--force replaces it)", false;
  return error = "cannot " + e.text(), false;
}

std::string publicKeyRecord(EVP_PKEY* key, bool ed25519) {
  if (ed25519) {
    unsigned char raw[32];
    size_t len = sizeof raw;
    if (EVP_PKEY_get_raw_public_key(key, raw, &len) != 1) return {};
    return "v=DKIM1; k=ed25519; p=" + base64Encode(std::string_view(reinterpret_cast<char*>(raw), len));
  }
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(key, &der);
  if (len <= 0) return {};
  std::string p = base64Encode(std::string_view(reinterpret_cast<char*>(der), static_cast<size_t>(len)));
  OPENSSL_free(der);
  return "v=DKIM1; k=rsa; p=" + p;
}

}  // namespace

bool keygen(const std::string& type, const std::string& outFile, bool replace, std::string& txtRecord,
            std::string& error) {
  bool ed = type == "ed25519";
  if (!ed && type != "rsa") return error = "unknown key type \"" + type + "\" (rsa or ed25519)", false;
  PkeyPtr key(ed ? EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519")
                 : EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(2048)));
  if (!key) return error = "key generation failed", false;
  std::string pem = privateKeyPem(key.get());
  txtRecord = publicKeyRecord(key.get(), ed);
  if (pem.empty() || txtRecord.empty()) return error = "key encoding failed", false;
  return writeKeyFile(outFile, pem, replace, error);
}

}  // namespace moat::filters::dkim
