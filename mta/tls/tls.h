// mta/tls/tls.h — TLS for the SMTP server (STARTTLS, implicit TLS) and client, on OpenSSL
// memory BIOs so the transport stays libuv's. TLS 1.2 or newer only. The client side can
// present a certificate (ClientCertificate, [[route]] tls_cert) when a server asks for one.
//
// A TlsSession is a pure byte engine: the owner feeds it ciphertext from the network and
// plaintext from the application, and moves what it produces to the other side. It never
// touches a socket, which is what lets Connection (mta/net) run it on the event loop.
#pragma once
#include <openssl/ssl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moat::mta::tls {

// One TLSA record for DANE (RFC 6698 §2.1; RFC 7672 for SMTP: DANE-TA(2) and DANE-EE(3)).
struct DaneTlsa {
  uint8_t usage = 0, selector = 0, mtype = 0;
  std::string data;  // certificate association data (binary)
};

// What a session's peer must match: the TLSA base domain (SNI and, for DANE-TA, the name the
// certificate must carry: RFC 7672 §3.2.3, §8.1) and the records. `otherNames`: further names
// a DANE-TA certificate may carry instead (for a CNAME'd host, the other of the host name and
// its expanded name: RFC 7672 §2.2.2, §3.2.2).
struct DanePeer {
  std::string baseDomain;
  std::vector<DaneTlsa> records;
  std::vector<std::string> otherNames;
};

struct SslCtxDeleter { void operator()(SSL_CTX* c) const { SSL_CTX_free(c); } };
struct SslDeleter { void operator()(SSL* s) const { SSL_free(s); } };
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxDeleter>;
using SslPtr = std::unique_ptr<SSL, SslDeleter>;

// A client certificate chain and its private key ([[route]] tls_cert, tls_key: mutual TLS
// towards a next hop that asks for one). Loaded once per config snapshot and shared by the
// routes that name the same files; immutable after creation.
class ClientCertificate {
 public:
  // From PEM files: the certificate first, then its chain; the key. Returns nullptr and sets
  // `error` (naming the file and OpenSSL's reason) when they cannot be loaded, the first
  // block is not a certificate, or the key does not match it.
  static std::shared_ptr<const ClientCertificate> load(const std::string& certFile, const std::string& keyFile,
                                                       std::string& error);
  const std::string& certFile() const { return certFile_; }
  // The certificate's notAfter, Unix seconds; its subject, one line (RFC 2253).
  int64_t notAfter() const { return notAfter_; }
  const std::string& subject() const { return subject_; }
  // SHA-256 of the certificate (DER), lower-case hex: tells a renewed one from the old.
  const std::string& fingerprint() const { return fingerprint_; }
  // Makes `ssl` present this certificate when the server asks for one (RFC 8446 §4.4.2).
  bool applyTo(SSL* ssl) const;

 private:
  SslCtxPtr holder_;  // keeps the certificate, chain and key as OpenSSL loaded them
  std::string certFile_, subject_, fingerprint_;
  int64_t notAfter_ = 0;
};

// Shared, immutable after creation; one per listener (server) or one per process (client).
class TlsContext {
 public:
  // A server context from PEM certificate chain and key files. Returns nullptr and sets
  // `error` (naming the file and OpenSSL's reason) when they cannot be loaded or do not match.
  static std::shared_ptr<TlsContext> server(const std::string& certFile, const std::string& keyFile,
                                            std::string& error);
  // A client context. `verifyPeer`: check the chain against the system store (and
  // `caFile` if not empty) and the host name; off for opportunistic TLS (tls = "may").
  static std::shared_ptr<TlsContext> client(bool verifyPeer, const std::string& caFile, std::string& error);
  // A context for one DANE-authenticated connection: `base`'s OpenSSL context (a client one
  // from client(false, ...), shared, not copied) with `peer`'s records; sessions made from it
  // require the peer to match them. Null if `base` is null or no client context.
  static std::shared_ptr<TlsContext> withDane(const std::shared_ptr<TlsContext>& base, DanePeer peer);
  // `base` (a client context, shared, not copied, with its verification and DANE records)
  // whose sessions present `cert` when the server asks for a client certificate. Null if
  // `base` is null or not a client context, or `cert` is null.
  static std::shared_ptr<TlsContext> withClientCertificate(const std::shared_ptr<TlsContext>& base,
                                                           std::shared_ptr<const ClientCertificate> cert);

  SSL_CTX* get() const { return ctx_.get(); }
  bool isServer() const { return server_; }
  bool verifiesPeer() const { return verify_; }
  const DanePeer* dane() const { return dane_ ? dane_.get() : nullptr; }
  const ClientCertificate* clientCertificate() const { return clientCert_.get(); }
  // A server context's certificate's notAfter, Unix seconds (0 for a client context).
  int64_t notAfter() const { return notAfter_; }

 private:
  SslCtxPtr ctx_;
  int64_t notAfter_ = 0;
  std::shared_ptr<const DanePeer> dane_;
  std::shared_ptr<const ClientCertificate> clientCert_;
  bool server_ = false;
  bool verify_ = false;
};

class TlsSession {
 public:
  // `sni` (client only): the server name sent and, when the context verifies, checked.
  TlsSession(std::shared_ptr<TlsContext> ctx, const std::string& sni = "");
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  enum class State { Handshaking, Open, Closed, Failed };
  State state() const { return state_; }

  // Feeds bytes received from the network. Returns false on a fatal TLS error (see error()).
  bool feedCiphertext(std::string_view data);
  // Queues application bytes for encryption (valid once Open; queued until then).
  bool writePlaintext(std::string_view data);
  // Moves decrypted application bytes into `out` (appends). Returns false on fatal error.
  bool readPlaintext(std::string& out);
  // Moves bytes to send on the network into `out` (appends).
  void takeCiphertext(std::string& out);
  // Starts a clean shutdown (close_notify); its bytes come out of takeCiphertext().
  void shutdown();

  const std::string& error() const { return error_; }
  // After the handshake: "TLSv1.3", "TLS_AES_256_GCM_SHA384", bits, and whether the peer's
  // certificate verified (client side).
  std::string protocol() const;
  std::string cipher() const;
  int cipherBits() const;
  bool peerVerified() const;
  // The peer was authenticated by a TLSA record (the context had DanePeer records).
  bool daneAuthenticated() const;
  // Client side: the server asked for a client certificate (a CertificateRequest, RFC 8446
  // §4.3.2); and it was given the context's (TlsContext::withClientCertificate), when OpenSSL
  // found that usable with the signature algorithms the server named. A failure after a
  // request says which in error().
  bool clientCertificateRequested() const { return certRequested_; }
  bool clientCertificatePresented() const;
  // What error() ends with after a failure once the server asked for a client certificate:
  // " (client certificate presented: SUBJECT)" or " (the server asked for a client
  // certificate: none presented)"; "" when it did not ask.
  std::string clientCertificateNote() const;

 private:
  static int onCertificateRequest(SSL* ssl, void* arg);
  bool advance();
  bool enableDane(const DanePeer& dane);
  std::shared_ptr<TlsContext> ctx_;
  SslPtr ssl_;
  BIO* rbio_ = nullptr;  // owned by ssl_
  BIO* wbio_ = nullptr;  // owned by ssl_
  std::string pendingPlain_;
  State state_ = State::Handshaking;
  bool certRequested_ = false;
  std::string error_;
};

}  // namespace moat::mta::tls
