// Tests for mta/tls: contexts from files, and two sessions handshaking through memory only.
#include <catch2/catch.hpp>

#include "mta/tls/tls.h"
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
