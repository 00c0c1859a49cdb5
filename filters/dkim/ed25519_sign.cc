// filters/dkim/ed25519_sign.cc — ed25519-sha256 DKIM signing (RFC 8463) done by Moat with
// OpenSSL, with RFC 6376 relaxed/relaxed canonicalization (sections 3.4.2, 3.4.4) and the
// header selection of section 5.4.2; those pieces (relaxedHeader, selectHeaders,
// bodyHashRelaxed) and an rsa-sha256 signer also serve the ARC sealer (filters/arc/seal.cc).
//
// Why not libopendkim: its 2.11.0~beta2 build verifies ed25519 correctly but leaks the
// private key (dkim_privkey_load) on every ed25519 signing handle, which a gateway signing
// every outbound message cannot afford. RSA signing and all verification stay in
// libopendkim. Input: our users' outbound message (untrusted in form, bounded by the
// message size limit). Nothing is logged here.
#include <openssl/evp.h>

#include <cctype>
#include <ctime>

#include "filters/dkim/internal.h"

namespace moat::filters::dkim::detail {

namespace {

bool isWsp(char c) { return c == ' ' || c == '\t'; }

std::string sha256(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<char*>(md), len);
}

}  // namespace

std::string relaxedHeader(std::string_view raw) {
  size_t colon = raw.find(':');
  // WSP before the colon goes, and so does a fold there (obs-optional, RFC 5322 4.5.3); the
  // name is the one splitMessage() matched, without white space at either end.
  std::string name = lower(raw.substr(0, colon));
  while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
  size_t first = 0;
  while (first < name.size() && std::isspace(static_cast<unsigned char>(name[first]))) ++first;
  name.erase(0, first);
  if (colon == std::string_view::npos) return name + ":";  // no value: nothing after the name
  std::string value;
  bool space = false;
  for (char c : raw.substr(colon + 1)) {
    if (c == '\r' || c == '\n') continue;
    if (isWsp(c)) {
      space = true;
      continue;
    }
    if (space && !value.empty()) value.push_back(' ');
    space = false;
    value.push_back(c);
  }
  return name + ":" + value;
}

std::pair<std::string, std::string> selectHeaders(const SplitMessage& m, const std::vector<std::string>& sign,
                                                  const std::vector<std::string>& oversign) {
  std::vector<std::string> names;
  for (const auto& h : m.headers)
    for (const auto& s : sign)
      if (iequals(h.name, s)) names.push_back(s);
  for (const auto& o : oversign) names.push_back(o);
  std::string hList, block;
  std::vector<bool> used(m.headers.size(), false);
  for (const auto& n : names) {
    hList += (hList.empty() ? "" : ":") + n;
    for (size_t i = m.headers.size(); i-- > 0;) {
      if (!used[i] && iequals(m.headers[i].name, n)) {
        used[i] = true;
        block += relaxedHeader(m.headers[i].raw) + "\r\n";
        break;
      }
    }
  }
  return {hList, block};
}

std::string bodyHashRelaxed(std::string_view body) { return base64Encode(sha256(canonicalBody(body, true))); }

std::optional<std::string> rsaSha256Sign(EVP_PKEY* key, std::string_view data, std::string& error) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  size_t len = 0;
  if (!ctx || EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA ||
      EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(data.data()), data.size()) != 1) {
    error = "rsa-sha256 signing failed";
    return std::nullopt;
  }
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                     reinterpret_cast<const unsigned char*>(data.data()), data.size()) != 1) {
    error = "rsa-sha256 signing failed";
    return std::nullopt;
  }
  sig.resize(len);
  return base64Encode(sig);
}

std::optional<std::string> signEd25519(EVP_PKEY* key, const std::string& domain, const std::string& selector,
                                       const SplitMessage& m, const std::vector<std::string>& sign,
                                       const std::vector<std::string>& oversign, std::string& error) {
  std::string bh = bodyHashRelaxed(m.body);
  auto [hList, block] = selectHeaders(m, sign, oversign);
  // Folded before signing (RFC 6376 5.3): relaxed canonicalization keeps the folding's
  // spaces, so the header the hash covers must be the one that goes out.
  std::string unfolded = "v=1; a=ed25519-sha256; c=relaxed/relaxed; d=" + domain + "; s=" + selector +
                         "; t=" + std::to_string(static_cast<long long>(std::time(nullptr))) + "; bh=" + bh +
                         "; h=" + hList + "; b=";
  std::string value = foldSignature(unfolded);
  // RFC 8463 section 3: Ed25519 signs the SHA-256 hash of the canonical data.
  std::string digest = sha256(block + relaxedHeader("DKIM-Signature: " + value));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  unsigned char sig[64];
  size_t sigLen = sizeof sig;
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key) != 1 ||
      EVP_DigestSign(ctx.get(), sig, &sigLen, reinterpret_cast<const unsigned char*>(digest.data()), digest.size()) != 1) {
    error = "ed25519 signing failed";
    return std::nullopt;
  }
  // The b= value is removed before verification (3.7), so folding it changes nothing signed;
  // folding the whole value again keeps every line the same up to b= and folds b= itself.
  std::string b = base64Encode(std::string_view(reinterpret_cast<char*>(sig), sigLen));
  std::string whole = foldSignature(unfolded + b);
  if (whole.compare(0, value.size(), value) != 0) {
    error = "folding the signature changed its signed part";
    return std::nullopt;
  }
  return whole;
}

}  // namespace moat::filters::dkim::detail
