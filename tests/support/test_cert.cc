// tests/support/test_cert.cc — see test_cert.h. Uses OpenSSL 3 EVP and X509 APIs directly so
// tests need no openssl binary.
#include "tests/support/test_cert.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>

namespace moat::test {

namespace {

struct KeyFree { void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); } };
struct CertFree { void operator()(X509* x) const { X509_free(x); } };
struct FileClose { void operator()(FILE* f) const { std::fclose(f); } };
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyFree>;
using CertPtr = std::unique_ptr<X509, CertFree>;
using FilePtr = std::unique_ptr<FILE, FileClose>;

bool addExt(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (!ext) return false;
  bool ok = X509_add_ext(cert, ext, -1) == 1;
  X509_EXTENSION_free(ext);
  return ok;
}

// issuer/issuerKey null: self-signed.
CertPtr makeCert(EVP_PKEY* key, const std::string& cn, X509* issuer, EVP_PKEY* issuerKey, bool ca,
                 const std::string& san, long serial) {
  CertPtr cert(X509_new());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 7L * 24 * 3600);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("Moat tests"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509* iss = issuer ? issuer : cert.get();
  X509_set_issuer_name(cert.get(), X509_get_subject_name(iss));
  bool ok = addExt(cert.get(), iss, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE") &&
            addExt(cert.get(), iss, NID_key_usage, ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature") &&
            addExt(cert.get(), iss, NID_subject_key_identifier, "hash") &&
            (ca || (addExt(cert.get(), iss, NID_ext_key_usage, "serverAuth,clientAuth") &&
                    addExt(cert.get(), iss, NID_subject_alt_name, san.c_str())));
  if (!ok || X509_sign(cert.get(), issuerKey ? issuerKey : key, EVP_sha256()) == 0) return nullptr;
  return cert;
}

bool writeKey(const std::string& path, EVP_PKEY* key) {
  FilePtr f(std::fopen(path.c_str(), "w"));
  return f && PEM_write_PrivateKey(f.get(), key, nullptr, nullptr, 0, nullptr, nullptr) == 1;
}

bool writeCerts(const std::string& path, X509* first, X509* second) {
  FilePtr f(std::fopen(path.c_str(), "w"));
  if (!f || PEM_write_X509(f.get(), first) != 1) return false;
  return !second || PEM_write_X509(f.get(), second) == 1;
}

}  // namespace

TestCert::TestCert(const std::string& hostname) {
  std::string tmpl = (std::filesystem::temp_directory_path() / "moat-cert-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) {
    error_ = "mkdtemp failed";
    return;
  }
  dir_ = tmpl;
  KeyPtr caKey(EVP_EC_gen("P-256"));
  KeyPtr key(EVP_EC_gen("P-256"));
  if (!caKey || !key) {
    error_ = "key generation failed";
    return;
  }
  CertPtr ca = makeCert(caKey.get(), "Moat Test CA", nullptr, nullptr, true, "", 1);
  std::string san = "DNS:" + hostname + ",IP:127.0.0.1,IP:::1";
  CertPtr leaf = ca ? makeCert(key.get(), hostname, ca.get(), caKey.get(), false, san, 2) : nullptr;
  if (!leaf) {
    error_ = "certificate creation failed";
    return;
  }
  caFile_ = dir_ + "/ca.pem";
  caKeyFile_ = dir_ + "/ca.key";
  certFile_ = dir_ + "/server.pem";
  keyFile_ = dir_ + "/server.key";
  if (!writeCerts(caFile_, ca.get(), nullptr) || !writeKey(caKeyFile_, caKey.get()) ||
      !writeCerts(certFile_, leaf.get(), ca.get()) || !writeKey(keyFile_, key.get())) {
    error_ = "cannot write certificate files in " + dir_;
  }
}

TestCert::~TestCert() {
  if (dir_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

}  // namespace moat::test
