// Tests for mta/tls: contexts from files, and two sessions handshaking through memory only.
#include "mta/tls/tls.h"

#include <catch2/catch.hpp>
#include <ctime>

#include "tests/support/test_cert.h"

using namespace moat::mta::tls;

namespace {

// Moves bytes both ways until neither side produces more (bounded).
void pump(TlsSession& a, TlsSession& b) {
  for (int i = 0; i < 20; ++i) {
    std::string ab, ba;
    a.takeCiphertext(ab);
    b.takeCiphertext(ba);
    if (ab.empty() && ba.empty()) return;
    if (!ab.empty()) b.feedCiphertext(ab);
    if (!ba.empty()) a.feedCiphertext(ba);
  }
}

}  // namespace

TEST_CASE("tls: a server context names the file that does not load or match") {
  moat::test::TestCert cert;
  moat::test::TestCert other;
  REQUIRE(cert.ok());
  std::string error;
  REQUIRE(TlsContext::server(cert.certFile(), cert.keyFile(), error));
  REQUIRE_FALSE(TlsContext::server(cert.dir() + "/missing.pem", cert.keyFile(), error));
  REQUIRE(error.find("missing.pem") != std::string::npos);
  REQUIRE_FALSE(TlsContext::server(cert.certFile(), other.keyFile(), error));
  REQUIRE(error.find(other.keyFile()) != std::string::npos);
  REQUIRE_FALSE(TlsContext::client(true, cert.dir() + "/nope.pem", error));
  REQUIRE(error.find("nope.pem") != std::string::npos);
}

TEST_CASE("tls: sessions handshake over memory and carry data both ways") {
  moat::test::TestCert cert;
  std::string error;
  auto sctx = TlsContext::server(cert.certFile(), cert.keyFile(), error);
  auto cctx = TlsContext::client(true, cert.caFile(), error);
  REQUIRE(sctx);
  REQUIRE(cctx);
  TlsSession server(sctx);
  TlsSession client(cctx, "localhost");
  REQUIRE(client.writePlaintext("early"));  // queued until the handshake ends
  pump(client, server);
  REQUIRE(client.state() == TlsSession::State::Open);
  REQUIRE(server.state() == TlsSession::State::Open);
  REQUIRE(client.peerVerified());
  REQUIRE(client.protocol() == "TLSv1.3");
  REQUIRE(client.cipherBits() >= 128);
  pump(client, server);
  std::string got;
  REQUIRE(server.readPlaintext(got));
  REQUIRE(got == "early");
  server.writePlaintext("reply");
  pump(client, server);
  got.clear();
  REQUIRE(client.readPlaintext(got));
  REQUIRE(got == "reply");
}

TEST_CASE("tls: verification fails for an untrusted CA or a wrong host name") {
  moat::test::TestCert cert;
  std::string error;
  auto sctx = TlsContext::server(cert.certFile(), cert.keyFile(), error);
  auto untrusting = TlsContext::client(true, "", error);
  auto trusting = TlsContext::client(true, cert.caFile(), error);
  auto lax = TlsContext::client(false, "", error);
  {
    TlsSession server(sctx), client(untrusting, "localhost");
    pump(client, server);
    REQUIRE(client.state() == TlsSession::State::Failed);
    REQUIRE(client.error().find("verify") != std::string::npos);
  }
  {
    TlsSession server(sctx), client(trusting, "mx.wrong.example");
    pump(client, server);
    REQUIRE(client.state() == TlsSession::State::Failed);
  }
  {
    TlsSession server(sctx), client(lax, "mx.wrong.example");
    pump(client, server);
    REQUIRE(client.state() == TlsSession::State::Open);
    REQUIRE_FALSE(client.peerVerified());
  }
}

TEST_CASE("tls: garbage from the peer fails the handshake") {
  moat::test::TestCert cert;
  std::string error;
  auto sctx = TlsContext::server(cert.certFile(), cert.keyFile(), error);
  TlsSession server(sctx);
  REQUIRE_FALSE(server.feedCiphertext("RSET\r\nMAIL FROM:<a@b>\r\n"));
  REQUIRE(server.state() == TlsSession::State::Failed);
  REQUIRE_FALSE(server.error().empty());
}

namespace {

// A server context that requires a client certificate chaining to `clientCa` (mutual TLS).
std::shared_ptr<TlsContext> requiringServer(const moat::test::TestCert& server, const std::string& clientCa) {
  std::string error;
  auto ctx = TlsContext::server(server.certFile(), server.keyFile(), error);
  REQUIRE(ctx);
  REQUIRE(SSL_CTX_load_verify_locations(ctx->get(), clientCa.c_str(), nullptr) == 1);
  SSL_CTX_set_verify(ctx->get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  return ctx;
}

// Handshakes, then the client writes and reads once more: with TLS 1.3 a server that refuses
// the client's certificate says so after the client has finished its part.
void exchange(TlsSession& client, TlsSession& server) {
  pump(client, server);
  client.writePlaintext("EHLO x\r\n");
  pump(client, server);
  std::string got;
  server.readPlaintext(got);
  if (server.state() == TlsSession::State::Open) server.writePlaintext("250 ok\r\n");
  pump(client, server);
  got.clear();
  client.readPlaintext(got);
}

}  // namespace

TEST_CASE("tls: a client certificate loads from its files and names what does not load or match") {
  moat::test::TestCert client("gateway.moat.test");
  moat::test::TestCert other("other.moat.test");
  REQUIRE(client.ok());
  REQUIRE(other.ok());
  std::string error;
  auto cert = ClientCertificate::load(client.certFile(), client.keyFile(), error);
  REQUIRE(cert);
  CHECK(cert->certFile() == client.certFile());
  CHECK(cert->subject() == "CN=gateway.moat.test,O=Moat tests");
  CHECK(cert->fingerprint().size() == 64);
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  CHECK(cert->notAfter() > now + 6 * 86400);
  CHECK(cert->notAfter() <= now + 7 * 86400);
  auto same = ClientCertificate::load(client.certFile(), client.keyFile(), error);
  REQUIRE(same);
  CHECK(same->fingerprint() == cert->fingerprint());
  auto another = ClientCertificate::load(other.certFile(), other.keyFile(), error);
  REQUIRE(another);
  CHECK(another->fingerprint() != cert->fingerprint());

  CHECK_FALSE(ClientCertificate::load(client.dir() + "/missing.pem", client.keyFile(), error));
  CHECK(error.find("cannot load certificate " + client.dir() + "/missing.pem") != std::string::npos);
  CHECK_FALSE(ClientCertificate::load(client.certFile(), client.dir() + "/missing.key", error));
  CHECK(error.find("cannot load private key " + client.dir() + "/missing.key") != std::string::npos);
  CHECK_FALSE(ClientCertificate::load(client.certFile(), other.keyFile(), error));
  CHECK(error.find("private key " + other.keyFile() + " does not match certificate") != std::string::npos);
  CHECK_FALSE(ClientCertificate::load(client.keyFile(), client.keyFile(), error));  // a key, no certificate
  CHECK(error.find("cannot load certificate " + client.keyFile()) != std::string::npos);

  auto lax = TlsContext::client(false, "", error);
  auto verifying = TlsContext::client(true, other.caFile(), error);
  REQUIRE(lax);
  REQUIRE(verifying);
  CHECK_FALSE(TlsContext::withClientCertificate(nullptr, cert));
  CHECK_FALSE(TlsContext::withClientCertificate(lax, nullptr));
  auto serverCtx = TlsContext::server(other.certFile(), other.keyFile(), error);
  CHECK_FALSE(TlsContext::withClientCertificate(serverCtx, cert));
  auto withCert = TlsContext::withClientCertificate(verifying, cert);
  REQUIRE(withCert);
  CHECK(withCert->get() == verifying->get());  // the same OpenSSL context, shared
  CHECK(withCert->verifiesPeer());
  CHECK(withCert->clientCertificate() == cert.get());
  CHECK_FALSE(verifying->clientCertificate());
  // DANE on top keeps the certificate (and the other way round keeps the records).
  auto dane = TlsContext::withDane(withCert, DanePeer{"mx.moat.test", {}, {}});
  REQUIRE(dane);
  CHECK(dane->clientCertificate() == cert.get());
  auto daneFirst = TlsContext::withClientCertificate(TlsContext::withDane(lax, DanePeer{"mx.moat.test", {}, {}}), cert);
  REQUIRE(daneFirst);
  REQUIRE(daneFirst->dane());
  CHECK(daneFirst->dane()->baseDomain == "mx.moat.test");
}

TEST_CASE("tls: a session presents the client certificate when the server asks for one") {
  moat::test::TestCert server;
  moat::test::TestCert client("gateway.moat.test");
  moat::test::TestCert rogue("rogue.moat.test");
  std::string error;
  auto cert = ClientCertificate::load(client.certFile(), client.keyFile(), error);
  auto rogueCert = ClientCertificate::load(rogue.certFile(), rogue.keyFile(), error);
  REQUIRE(cert);
  REQUIRE(rogueCert);
  auto requiring = requiringServer(server, client.caFile());
  for (bool verify : {false, true}) {
    auto base = TlsContext::client(verify, server.caFile(), error);
    REQUIRE(base);
    // Presented and accepted, with a verifying context as with a lax one.
    TlsSession s(requiring), c(TlsContext::withClientCertificate(base, cert), "localhost");
    exchange(c, s);
    INFO("verify " << verify << ": " << c.error() << " / " << s.error());
    REQUIRE(c.state() == TlsSession::State::Open);
    REQUIRE(s.state() == TlsSession::State::Open);
    CHECK(s.peerVerified());  // the server verified the client's certificate
    CHECK(c.clientCertificateRequested());
    CHECK(c.clientCertificatePresented());
    CHECK(c.peerVerified() == verify);
  }
  SECTION("none configured: the server refuses, the client says it was asked") {
    auto base = TlsContext::client(false, "", error);
    TlsSession s(requiring), c(base, "localhost");
    exchange(c, s);
    CHECK(s.state() == TlsSession::State::Failed);
    REQUIRE(c.state() == TlsSession::State::Failed);
    CHECK(c.clientCertificateRequested());
    CHECK_FALSE(c.clientCertificatePresented());
    CHECK(c.error().find("(the server asked for a client certificate: none presented)") != std::string::npos);
  }
  SECTION("one of another CA: refused, the error names the subject presented") {
    auto base = TlsContext::client(false, "", error);
    TlsSession s(requiring), c(TlsContext::withClientCertificate(base, rogueCert), "localhost");
    exchange(c, s);
    CHECK(s.state() == TlsSession::State::Failed);
    REQUIRE(c.state() == TlsSession::State::Failed);
    CHECK(c.error().find("(client certificate presented: CN=rogue.moat.test,O=Moat tests)") != std::string::npos);
  }
  SECTION("a server that does not ask gets none, and the session says so") {
    std::string e;
    auto plain = TlsContext::server(server.certFile(), server.keyFile(), e);
    auto base = TlsContext::client(false, "", error);
    TlsSession s(plain), c(TlsContext::withClientCertificate(base, cert), "localhost");
    exchange(c, s);
    REQUIRE(c.state() == TlsSession::State::Open);
    CHECK_FALSE(c.clientCertificateRequested());
    CHECK_FALSE(c.clientCertificatePresented());
    CHECK_FALSE(s.peerVerified());
  }
}
