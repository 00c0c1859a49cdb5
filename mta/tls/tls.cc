// mta/tls/tls.cc — TLS contexts and sessions on OpenSSL 3 memory BIOs (RFC 8446 / RFC 5246,
// used for RFC 3207 STARTTLS and RFC 8314 implicit TLS). TLS 1.2 is the minimum; SSLv3,
// TLS 1.0/1.1, compression and renegotiation are off.
//
// Untrusted input: every ciphertext byte fed to a session comes from the peer; OpenSSL
// parses it, and this file only moves bytes and maps errors to text. Certificate and key
// files come from the admin's config. Nothing here logs: callers log the error text.
#include "mta/tls/tls.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <ctime>

namespace moat::mta::tls {

namespace {

// Everything on OpenSSL's error queue, oldest first, then clears it so that a later
// failure does not report a stale reason.
std::string drainErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown TLS error" : out;
}

// TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 keeps OpenSSL's defaults.
constexpr const char* kCiphers12 =
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:"
    "ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "DHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES128-GCM-SHA256";

SslCtxPtr baseContext(bool server, std::string& error) {
  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()));
  if (!ctx) {
    error = "SSL_CTX_new: " + drainErrors();
    return nullptr;
  }
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                     (server ? SSL_OP_CIPHER_SERVER_PREFERENCE : 0));
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_RELEASE_BUFFERS);
  if (SSL_CTX_set_cipher_list(ctx.get(), kCiphers12) != 1) {
    error = "cipher list: " + drainErrors();
    return nullptr;
  }
  return ctx;
}

int64_t notAfterOf(X509* cert) {
  struct tm tm {};
  if (!cert || ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) != 1) return 0;
  return static_cast<int64_t>(::timegm(&tm));
}

}  // namespace

std::shared_ptr<const ClientCertificate> ClientCertificate::load(const std::string& certFile,
                                                                 const std::string& keyFile, std::string& error) {
  // An SSL_CTX is OpenSSL's own loader for a PEM chain and key (the same checks as a
  // listener's); sessions take the loaded objects from it (applyTo), never the files.
  auto ctx = baseContext(false, error);
  if (!ctx) return nullptr;
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), certFile.c_str()) != 1) {
    error = "cannot load certificate " + certFile + ": " + drainErrors();
    return nullptr;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), keyFile.c_str(), SSL_FILETYPE_PEM) != 1) {
    // OpenSSL checks the key against the certificate as it loads it: say which it was.
    const unsigned long e = ERR_peek_last_error();
    const bool mismatch = ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH;
    error = (mismatch ? "private key " + keyFile + " does not match certificate " + certFile + ": "
                      : "cannot load private key " + keyFile + ": ") +
            drainErrors();
    return nullptr;
  }
  if (SSL_CTX_check_private_key(ctx.get()) != 1) {
    error = "private key " + keyFile + " does not match certificate " + certFile + ": " + drainErrors();
    return nullptr;
  }
  X509* cert = SSL_CTX_get0_certificate(ctx.get());
  if (!cert) {
    error = "no certificate in " + certFile;
    return nullptr;
  }
  auto out = std::make_shared<ClientCertificate>();
  out->notAfter_ = notAfterOf(cert);
  if (BIO* b = BIO_new(BIO_s_mem())) {
    if (X509_NAME_print_ex(b, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) >= 0) {
      char* data = nullptr;
      long n = BIO_get_mem_data(b, &data);
      if (n > 0) out->subject_.assign(data, static_cast<size_t>(n));
    }
    BIO_free(b);
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdLen = 0;
  if (X509_digest(cert, EVP_sha256(), md, &mdLen) == 1) {
    static const char* kHex = "0123456789abcdef";
    for (unsigned int i = 0; i < mdLen; ++i) {
      out->fingerprint_ += kHex[md[i] >> 4];
      out->fingerprint_ += kHex[md[i] & 15];
    }
  }
  out->certFile_ = certFile;
  out->holder_ = std::move(ctx);
  return out;
}

bool ClientCertificate::applyTo(SSL* ssl) const {
  X509* cert = SSL_CTX_get0_certificate(holder_.get());
  EVP_PKEY* key = SSL_CTX_get0_privatekey(holder_.get());
  STACK_OF(X509)* chain = nullptr;
  SSL_CTX_get0_chain_certs(holder_.get(), &chain);
  // Takes its own references (the chain is copied with each certificate's count raised).
  return cert && key && SSL_use_cert_and_key(ssl, cert, key, chain, 1) == 1;
}

std::shared_ptr<TlsContext> TlsContext::server(const std::string& certFile, const std::string& keyFile,
                                               std::string& error) {
  auto ctx = baseContext(true, error);
  if (!ctx) return nullptr;
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), certFile.c_str()) != 1) {
    error = "cannot load certificate " + certFile + ": " + drainErrors();
    return nullptr;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), keyFile.c_str(), SSL_FILETYPE_PEM) != 1) {
    error = "cannot load private key " + keyFile + ": " + drainErrors();
    return nullptr;
  }
  if (SSL_CTX_check_private_key(ctx.get()) != 1) {
    error = "private key " + keyFile + " does not match certificate " + certFile + ": " + drainErrors();
    return nullptr;
  }
  auto out = std::make_shared<TlsContext>();
  out->notAfter_ = notAfterOf(SSL_CTX_get0_certificate(ctx.get()));
  out->ctx_ = std::move(ctx);
  out->server_ = true;
  return out;
}

std::shared_ptr<TlsContext> TlsContext::client(bool verifyPeer, const std::string& caFile, std::string& error) {
  auto ctx = baseContext(false, error);
  if (!ctx) return nullptr;
  if (verifyPeer) {
    // A missing system store is not fatal when a CA file is given; the handshake will
    // fail verification if neither knows the issuer.
    SSL_CTX_set_default_verify_paths(ctx.get());
    ERR_clear_error();
    if (!caFile.empty() && SSL_CTX_load_verify_locations(ctx.get(), caFile.c_str(), nullptr) != 1) {
      error = "cannot load CA file " + caFile + ": " + drainErrors();
      return nullptr;
    }
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  } else {
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  }
  // Lets withDane() sessions use OpenSSL's DANE verification (RFC 7671); sessions without
  // SSL_dane_enable are untouched by it.
  if (SSL_CTX_dane_enable(ctx.get()) <= 0) {
    error = "SSL_CTX_dane_enable: " + drainErrors();
    return nullptr;
  }
  auto out = std::make_shared<TlsContext>();
  out->ctx_ = std::move(ctx);
  out->verify_ = verifyPeer;
  return out;
}

std::shared_ptr<TlsContext> TlsContext::withDane(const std::shared_ptr<TlsContext>& base, DanePeer peer) {
  if (!base || !base->get() || base->isServer()) return nullptr;
  SSL_CTX_up_ref(base->get());  // released by this context's SslCtxPtr
  auto out = std::make_shared<TlsContext>();
  out->ctx_.reset(base->get());
  out->verify_ = true;
  out->dane_ = std::make_shared<const DanePeer>(std::move(peer));
  out->clientCert_ = base->clientCert_;
  return out;
}

std::shared_ptr<TlsContext> TlsContext::withClientCertificate(const std::shared_ptr<TlsContext>& base,
                                                              std::shared_ptr<const ClientCertificate> cert) {
  if (!base || !base->get() || base->isServer() || !cert) return nullptr;
  SSL_CTX_up_ref(base->get());  // released by this context's SslCtxPtr
  auto out = std::make_shared<TlsContext>();
  out->ctx_.reset(base->get());
  out->verify_ = base->verify_;
  out->dane_ = base->dane_;
  out->clientCert_ = std::move(cert);
  return out;
}

TlsSession::TlsSession(std::shared_ptr<TlsContext> ctx, const std::string& sni) : ctx_(std::move(ctx)) {
  ERR_clear_error();
  if (!ctx_ || !ctx_->get()) {
    state_ = State::Failed;
    error_ = "no TLS context";
    return;
  }
  ssl_.reset(SSL_new(ctx_->get()));
  BIO* r = BIO_new(BIO_s_mem());
  BIO* w = BIO_new(BIO_s_mem());
  if (!ssl_ || !r || !w) {
    BIO_free(r);
    BIO_free(w);
    state_ = State::Failed;
    error_ = "SSL_new: " + drainErrors();
    return;
  }
  // An empty read BIO means "retry later", not end of file.
  BIO_set_mem_eof_return(r, -1);
  SSL_set_bio(ssl_.get(), r, w);
  rbio_ = r;
  wbio_ = w;
  if (ctx_->isServer()) {
    SSL_set_accept_state(ssl_.get());
    return;
  }
  SSL_set_connect_state(ssl_.get());
  if (const ClientCertificate* cert = ctx_->clientCertificate()) {
    if (!cert->applyTo(ssl_.get())) {
      state_ = State::Failed;
      error_ = "cannot use client certificate " + cert->certFile() + ": " + drainErrors();
      return;
    }
  }
  // Called on the client only when the server sends a CertificateRequest.
  SSL_set_cert_cb(ssl_.get(), &TlsSession::onCertificateRequest, this);
  if (const DanePeer* dane = ctx_->dane()) {
    if (!enableDane(*dane)) {
      state_ = State::Failed;
      return;
    }
  } else if (!sni.empty()) {
    // An address is checked against the certificate's IP SANs and never sent as SNI
    // (RFC 6066 §3: literal addresses are not permitted in HostName).
    unsigned char addr[16];
    bool literal = inet_pton(AF_INET, sni.c_str(), addr) == 1 || inet_pton(AF_INET6, sni.c_str(), addr) == 1;
    if (!literal) SSL_set_tlsext_host_name(ssl_.get(), sni.c_str());
    if (ctx_->verifiesPeer()) {
      X509_VERIFY_PARAM* param = SSL_get0_param(ssl_.get());
      if (literal) {
        X509_VERIFY_PARAM_set1_ip_asc(param, sni.c_str());
      } else {
        SSL_set_hostflags(ssl_.get(), X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        SSL_set1_host(ssl_.get(), sni.c_str());
      }
    }
  }
  advance();  // produces the ClientHello for takeCiphertext()
}

TlsSession::~TlsSession() = default;

// RFC 7672: SNI is the TLSA base domain (§8.1); the records go to OpenSSL's DANE verifier
// (RFC 7671), which matches DANE-EE(3) against the leaf alone, with no name or expiry
// checks (§3.1.1; DANE_FLAG_NO_DANE_EE_NAMECHECKS), and DANE-TA(2) against the chain, then
// checks the leaf's names against the base domain (or DanePeer::otherNames) without partial
// wildcards (§3.2.3). A mismatch fails the handshake (SSL_VERIFY_PEER): a DANE peer is never
// used unauthenticated.
bool TlsSession::enableDane(const DanePeer& dane) {
  SSL* ssl = ssl_.get();
  SSL_set_tlsext_host_name(ssl, dane.baseDomain.c_str());
  if (SSL_dane_enable(ssl, dane.baseDomain.c_str()) <= 0) {
    error_ = "DANE: SSL_dane_enable: " + drainErrors();
    return false;
  }
  SSL_dane_set_flags(ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);
  SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  // SSL_dane_enable made the base domain the reference identifier; a certificate naming any
  // of the others matches as well.
  for (const auto& name : dane.otherNames) {
    if (!name.empty() && name != dane.baseDomain && SSL_add1_host(ssl, name.c_str()) != 1) {
      error_ = "DANE: SSL_add1_host: " + drainErrors();
      return false;
    }
  }
  int usable = 0;
  for (const auto& r : dane.records) {
    const auto* data = reinterpret_cast<const unsigned char*>(r.data.data());
    int rc = SSL_dane_tlsa_add(ssl, r.usage, r.selector, r.mtype, data, r.data.size());
    if (rc > 0) ++usable;  // 0: unusable (an unknown digest, say); < 0: malformed, skipped too
  }
  ERR_clear_error();
  if (usable == 0) {
    error_ = "DANE: no usable TLSA record for " + dane.baseDomain;
    return false;
  }
  SSL_set_verify(ssl, SSL_VERIFY_PEER, nullptr);
  return true;
}

int TlsSession::onCertificateRequest(SSL*, void* arg) {
  static_cast<TlsSession*>(arg)->certRequested_ = true;
  return 1;  // go on with the certificate already set
}

bool TlsSession::clientCertificatePresented() const {
  return certRequested_ && ssl_ && ctx_->clientCertificate() && SSL_get_certificate(ssl_.get()) != nullptr;
}

// For a failure after the server asked for a client certificate (a server that requires one
// and refuses ours, or got none, ends the handshake, or with TLS 1.3 the first read).
std::string TlsSession::clientCertificateNote() const {
  if (!certRequested_) return "";
  if (clientCertificatePresented())
    return " (client certificate presented: " + ctx_->clientCertificate()->subject() + ")";
  return " (the server asked for a client certificate: none presented)";
}

bool TlsSession::advance() {
  if (state_ != State::Handshaking) return state_ != State::Failed;
  int rc = SSL_do_handshake(ssl_.get());
  if (rc == 1) {
    state_ = State::Open;
    if (!pendingPlain_.empty()) {
      std::string p;
      p.swap(pendingPlain_);
      return writePlaintext(p);
    }
    return true;
  }
  int err = SSL_get_error(ssl_.get(), rc);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return true;
  state_ = State::Failed;
  std::string reason = drainErrors();
  long vr = SSL_get_verify_result(ssl_.get());
  if (vr != X509_V_OK && ctx_->dane())
    reason = std::string("certificate not authenticated by the TLSA records: ") + X509_verify_cert_error_string(vr);
  else if (vr != X509_V_OK && ctx_->verifiesPeer())
    reason = std::string("certificate verify failed: ") + X509_verify_cert_error_string(vr);
  error_ = "TLS handshake failed: " + reason + clientCertificateNote();
  return false;
}

bool TlsSession::feedCiphertext(std::string_view data) {
  if (state_ == State::Failed) return false;
  if (!rbio_ || state_ == State::Closed) return true;
  if (!data.empty() && BIO_write(rbio_, data.data(), static_cast<int>(data.size())) != static_cast<int>(data.size())) {
    state_ = State::Failed;
    error_ = "BIO_write failed";
    return false;
  }
  return advance();
}

bool TlsSession::writePlaintext(std::string_view data) {
  if (state_ == State::Failed || state_ == State::Closed) return false;
  if (state_ == State::Handshaking) {
    pendingPlain_.append(data);
    return true;
  }
  ERR_clear_error();
  while (!data.empty()) {
    size_t written = 0;
    int rc = SSL_write_ex(ssl_.get(), data.data(), data.size(), &written);
    if (rc != 1) {
      state_ = State::Failed;
      error_ = "TLS write failed: " + drainErrors();
      return false;
    }
    data.remove_prefix(written);
  }
  return true;
}

bool TlsSession::readPlaintext(std::string& out) {
  if (state_ != State::Open) return state_ != State::Failed;
  ERR_clear_error();
  char buf[16384];
  for (;;) {
    size_t got = 0;
    int rc = SSL_read_ex(ssl_.get(), buf, sizeof buf, &got);
    if (rc == 1) {
      out.append(buf, got);
      continue;
    }
    int err = SSL_get_error(ssl_.get(), rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return true;
    if (err == SSL_ERROR_ZERO_RETURN) {
      state_ = State::Closed;  // the peer's close_notify
      return true;
    }
    state_ = State::Failed;
    error_ = "TLS read failed: " + drainErrors() + clientCertificateNote();
    return false;
  }
}

void TlsSession::takeCiphertext(std::string& out) {
  if (!wbio_) return;
  char* data = nullptr;
  long n = BIO_get_mem_data(wbio_, &data);
  if (n > 0) {
    out.append(data, static_cast<size_t>(n));
    (void)BIO_reset(wbio_);
  }
}

void TlsSession::shutdown() {
  if (state_ != State::Open) return;
  ERR_clear_error();
  SSL_shutdown(ssl_.get());
  ERR_clear_error();
  state_ = State::Closed;
}

std::string TlsSession::protocol() const { return ssl_ ? SSL_get_version(ssl_.get()) : ""; }

std::string TlsSession::cipher() const {
  const char* c = ssl_ ? SSL_get_cipher_name(ssl_.get()) : nullptr;
  return c ? c : "";
}

int TlsSession::cipherBits() const { return ssl_ ? SSL_get_cipher_bits(ssl_.get(), nullptr) : 0; }

bool TlsSession::peerVerified() const {
  if (!ssl_ || state_ == State::Handshaking || state_ == State::Failed) return false;
  return SSL_get0_peer_certificate(ssl_.get()) != nullptr && SSL_get_verify_result(ssl_.get()) == X509_V_OK;
}

bool TlsSession::daneAuthenticated() const {
  if (!ctx_ || !ctx_->dane() || !peerVerified()) return false;
  return SSL_get0_dane_authority(ssl_.get(), nullptr, nullptr) >= 0;
}

}  // namespace moat::mta::tls
