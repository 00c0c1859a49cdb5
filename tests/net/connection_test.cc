// Tests for mta/net: real loopback sockets, plain and TLS, STARTTLS injection defence,
// implicit TLS, flow control and connect failures.
#include "mta/net/connection.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <thread>
#include <vector>

#include "mta/runtime/uv.h"
#include "tests/support/test_cert.h"

using namespace moat::mta;

namespace {

struct Peer {
  std::shared_ptr<net::Connection> conn;
  std::string received;
  std::vector<std::string> pieces;
  int closes = 0;
  std::string closeError;

  void attach(std::shared_ptr<net::Connection> c, std::function<void(Peer&, std::string_view)> extra = nullptr) {
    conn = std::move(c);
    net::Connection::Callbacks cb;
    cb.onData = [this, extra](std::string_view d) {
      received.append(d);
      pieces.emplace_back(d);
      if (extra) extra(*this, d);
    };
    cb.onClose = [this](const std::string& e) {
      ++closes;
      closeError = e;
    };
    conn->setCallbacks(std::move(cb));
    conn->startReading();
  }
};

IpAddress loopback() { return *IpAddress::parse("127.0.0.1"); }

std::shared_ptr<net::Connection> connectSync(uv::Loop& loop, uint16_t port, std::string* errOut = nullptr,
                                             uint64_t timeoutMs = 2000) {
  std::shared_ptr<net::Connection> out;
  bool done = false;
  net::connect(loop.get(), loopback(), port, timeoutMs, [&](std::shared_ptr<net::Connection> c, const std::string& e) {
    out = std::move(c);
    if (errOut) *errOut = e;
    done = true;
  });
  loop.runUntil([&] { return done; }, 5000);
  return out;
}

// A client connected to a line-mode server that stops reading after each line it is given.
struct PausingLinePair {
  uv::Loop loop;
  Peer server, client;
  std::unique_ptr<net::Listener> listener;
  PausingLinePair() {
    std::string error;
    listener = net::listen(
        loop.get(), "127.0.0.1", 0, false, nullptr,
        [this](std::shared_ptr<net::Connection> c) {
          c->setLineMode(true);
          server.attach(c, [](Peer& p, std::string_view) { p.conn->stopReading(); });
        },
        error);
    REQUIRE(listener);
    client.attach(connectSync(loop, listener->port()));
  }
};

}  // namespace

TEST_CASE("net: echo over plain TCP, close flushes and reports once") {
  uv::Loop loop;
  Peer server;
  std::string error;
  auto l = net::listen(loop.get(), "127.0.0.1", 0, false, nullptr,
                       [&](std::shared_ptr<net::Connection> c) {
                         server.attach(c, [](Peer& p, std::string_view d) { p.conn->write(std::string(d)); });
                       },
                       error);
  REQUIRE(l);
  REQUIRE(l->port() != 0);
  Peer client;
  client.attach(connectSync(loop, l->port()));
  REQUIRE(client.conn);
  REQUIRE(client.conn->peerPort() == l->port());
  REQUIRE(client.conn->peerAddress().str() == "127.0.0.1");
  client.conn->write("hello ");
  client.conn->write("world\r\n");
  REQUIRE(loop.runUntil([&] { return client.received == "hello world\r\n"; }, 3000));
  REQUIRE(server.conn->peerPort() == client.conn->localPort());
  REQUIRE(server.conn->localPort() == l->port());
  REQUIRE(server.conn->localAddress().str() == "127.0.0.1");
  REQUIRE(client.conn->localAddress().str() == "127.0.0.1");
  client.conn->write("bye\r\n");
  client.conn->close();
  client.conn->close();  // idempotent
  REQUIRE(loop.runUntil([&] { return server.closes == 1 && client.closes == 1; }, 3000));
  REQUIRE(server.received == "hello world\r\nbye\r\n");
  REQUIRE(client.closeError.empty());
  loop.runUntil([] { return false; }, 50);
  REQUIRE(client.closes == 1);
  REQUIRE(server.closes == 1);
  l->close();
}

// The fd of this process's TCP socket with these local and peer ports, or -1.
static int socketWithPorts(uint16_t local, uint16_t peer) {
  for (int fd = 0; fd < 1024; ++fd) {
    sockaddr_storage a{}, b{};
    socklen_t la = sizeof a, lb = sizeof b;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &la) != 0 || a.ss_family != AF_INET) continue;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&b), &lb) != 0) continue;
    if (ntohs(reinterpret_cast<sockaddr_in*>(&a)->sin_port) == local &&
        ntohs(reinterpret_cast<sockaddr_in*>(&b)->sin_port) == peer)
      return fd;
  }
  return -1;
}

static bool noDelay(int fd) {
  int on = 0;
  socklen_t len = sizeof on;
  return ::getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &len) == 0 && on != 0;
}

TEST_CASE("net: accepted and connected sockets have Nagle off") {
  uv::Loop loop;
  std::vector<std::shared_ptr<net::Connection>> accepted;
  std::string error;
  auto l = net::listen(
      loop.get(), "127.0.0.1", 0, false, nullptr, [&](std::shared_ptr<net::Connection> c) { accepted.push_back(c); },
      error);
  REQUIRE(l);
  // The listener sets TCP_NODELAY once; accepted sockets inherit it (checked on the first).
  std::vector<std::shared_ptr<net::Connection>> clients;
  for (int i = 0; i < 3; ++i) {
    clients.push_back(connectSync(loop, l->port()));
    REQUIRE(clients.back());
  }
  REQUIRE(loop.runUntil([&] { return accepted.size() == 3; }, 3000));
  for (auto& c : clients) {
    int server = socketWithPorts(l->port(), c->localPort());
    int client = socketWithPorts(c->localPort(), l->port());
    REQUIRE(server >= 0);
    REQUIRE(client >= 0);
    REQUIRE(noDelay(server));
    REQUIRE(noDelay(client));
  }
  for (auto& c : clients) c->abort();
  for (auto& c : accepted) c->abort();
  l->close();
  loop.runUntil([] { return false; }, 50);
}

TEST_CASE("net: listening twice on a port works only with SO_REUSEPORT") {
  uv::Loop loop;
  std::string error;
  auto a = net::listen(loop.get(), "127.0.0.1", 0, true, nullptr, [](auto c) { c->abort(); }, error);
  REQUIRE(a);
  auto b = net::listen(loop.get(), "127.0.0.1", a->port(), true, nullptr, [](auto c) { c->abort(); }, error);
  REQUIRE(b);
  auto c = net::listen(loop.get(), "127.0.0.1", a->port(), false, nullptr, [](auto c) { c->abort(); }, error);
  REQUIRE_FALSE(c);
  REQUIRE(error.find("listen") != std::string::npos);
  auto v6 = net::listen(loop.get(), "::1", 0, false, nullptr, [](auto c) { c->abort(); }, error);
  REQUIRE(v6);
  REQUIRE(v6->port() != 0);
}

// The server answers STARTTLS and upgrades from inside onData; the client pipelined a
// plaintext RSET behind STARTTLS in the same packet, which must never reach the server.
TEST_CASE("net: STARTTLS upgrade discards plaintext pipelined after the trigger") {
  moat::test::TestCert cert;
  REQUIRE(cert.ok());
  std::string error;
  auto sctx = tls::TlsContext::server(cert.certFile(), cert.keyFile(), error);
  auto cctx = tls::TlsContext::client(true, cert.caFile(), error);
  REQUIRE(sctx);
  REQUIRE(cctx);
  uv::Loop loop;
  Peer server;
  bool serverTlsOk = false;
  auto l = net::listen(loop.get(), "127.0.0.1", 0, false, nullptr,
                       [&](std::shared_ptr<net::Connection> c) {
                         c->setLineMode(true);
                         server.attach(c, [&](Peer& p, std::string_view line) {
                           if (line == "STARTTLS\r\n") {
                             p.conn->write("220 Ready to start TLS\r\n");
                             p.conn->startTls(sctx, "", [&](bool ok, const std::string&) { serverTlsOk = ok; });
                           } else {
                             p.conn->write("250 got " + std::string(line));
                           }
                         });
                       },
                       error);
  REQUIRE(l);
  Peer client;
  bool clientTlsOk = false;
  client.attach(connectSync(loop, l->port()), [&](Peer& p, std::string_view d) {
    if (d.substr(0, 3) == "220" && !p.conn->tls()) {
      p.conn->startTls(cctx, "localhost", [&](bool ok, const std::string& e) {
        clientTlsOk = ok;
        if (ok) p.conn->write("EHLO client\r\n");
      });
    }
  });
  client.conn->write("STARTTLS\r\nRSET\r\n");
  REQUIRE(loop.runUntil([&] { return client.received.find("250 got EHLO") != std::string::npos; }, 5000));
  REQUIRE(serverTlsOk);
  REQUIRE(clientTlsOk);
  REQUIRE(server.pieces == std::vector<std::string>{"STARTTLS\r\n", "EHLO client\r\n"});
  REQUIRE(client.conn->tlsActive());
  REQUIRE(client.conn->tls()->peerVerified());
  REQUIRE(server.conn->tls()->protocol().rfind("TLSv1.", 0) == 0);
  client.conn->close();
  REQUIRE(loop.runUntil([&] { return server.closes == 1 && client.closes == 1; }, 3000));
  REQUIRE(server.closeError.empty());
}

TEST_CASE("net: implicit TLS listener hands plaintext to onData") {
  moat::test::TestCert cert;
  std::string error;
  auto sctx = tls::TlsContext::server(cert.certFile(), cert.keyFile(), error);
  auto cctx = tls::TlsContext::client(true, cert.caFile(), error);
  uv::Loop loop;
  Peer server;
  auto l = net::listen(loop.get(), "127.0.0.1", 0, false, sctx,
                       [&](std::shared_ptr<net::Connection> c) {
                         server.attach(c, [](Peer& p, std::string_view d) { p.conn->write("echo:" + std::string(d)); });
                       },
                       error);
  REQUIRE(l);
  Peer client;
  client.attach(connectSync(loop, l->port()));
  bool ok = false;
  client.conn->startTls(cctx, "localhost", [&](bool o, const std::string&) { ok = o; });
  client.conn->write("ping\r\n");  // queued until the handshake ends
  REQUIRE(loop.runUntil([&] { return client.received == "echo:ping\r\n"; }, 5000));
  REQUIRE(ok);
  REQUIRE(server.received == "ping\r\n");
  REQUIRE(server.conn->tlsActive());
  client.conn->abort();
  server.conn->abort();
  REQUIRE(loop.runUntil([&] { return client.closes == 1 && server.closes == 1; }, 3000));

  // A plaintext client gets nowhere: the handshake fails and the server closes.
  Peer plain;
  plain.attach(connectSync(loop, l->port()));
  plain.conn->write("EHLO plain\r\n");
  REQUIRE(loop.runUntil([&] { return plain.closes == 1; }, 5000));
  REQUIRE(server.received == "ping\r\n");
  REQUIRE(loop.runUntil([&] { return server.closes == 2; }, 3000));
}

TEST_CASE("net: stopReading stops onData until startReading") {
  PausingLinePair pair;
  auto& [loop, server, client, listener] = pair;
  client.conn->write("one\r\ntwo\r\n");
  REQUIRE(loop.runUntil([&] { return server.pieces.size() == 1; }, 3000));
  client.conn->write("three\r\n");
  loop.runUntil([] { return false; }, 200);
  REQUIRE(server.pieces.size() == 1);  // paused mid-read; "two" stays buffered
  server.conn->startReading();
  REQUIRE(server.pieces.size() == 1);  // never delivered from inside startReading
  REQUIRE(loop.runUntil([&] { return server.pieces.size() == 2; }, 3000));
  REQUIRE(server.pieces[1] == "two\r\n");
  server.conn->startReading();
  REQUIRE(loop.runUntil([&] { return server.pieces.size() == 3; }, 3000));
  REQUIRE(server.pieces[2] == "three\r\n");
  client.conn->abort();
  server.conn->abort();  // not reading, so it would not report the peer's close
  REQUIRE(loop.runUntil([&] { return server.closes == 1 && client.closes == 1; }, 3000));
}

TEST_CASE("net: the peer's close waits behind input held while the owner does not read") {
  PausingLinePair pair;
  auto& [loop, server, client, listener] = pair;
  client.conn->write("one\r\ntwo\r\nQUIT\r\n");
  client.conn->close();  // all of it, then the end of input, while the server is paused
  REQUIRE(loop.runUntil([&] { return server.pieces.size() == 1 && client.closes == 1; }, 3000));
  loop.runUntil([] { return false; }, 200);
  REQUIRE(server.pieces.size() == 1);
  REQUIRE(server.closes == 0);  // the close is not reported before "two" and "QUIT"
  for (const char* want : {"two\r\n", "QUIT\r\n"}) {
    server.conn->startReading();
    size_t n = server.pieces.size() + 1;
    REQUIRE(loop.runUntil([&] { return server.pieces.size() == n; }, 3000));
    REQUIRE(server.pieces.back() == want);
    REQUIRE(server.closes == 0);
  }
  server.conn->startReading();
  REQUIRE(loop.runUntil([&] { return server.closes == 1; }, 3000));
  REQUIRE(server.closeError.empty());
}

TEST_CASE("net: input held while the owner does not read is bounded, and none is lost") {
  uv::Loop loop;
  Peer server;
  bool pause = true;
  std::string error;
  auto l = net::listen(loop.get(), "127.0.0.1", 0, false, nullptr,
                       [&](std::shared_ptr<net::Connection> c) {
                         server.attach(c, [&](Peer& p, std::string_view) {
                           if (pause) p.conn->stopReading();
                         });
                       },
                       error);
  REQUIRE(l);
  Peer client;
  client.attach(connectSync(loop, l->port()));
  const size_t chunk = 1 << 20, total = 64 * chunk;
  auto piece = [&](size_t i) { return std::string(chunk, static_cast<char>('a' + i % 26)); };
  for (size_t i = 0; i < total / chunk; ++i) client.conn->write(piece(i));
  loop.runUntil([] { return false; }, 500);
  // The server stopped taking bytes off the socket: the kernel's buffers filled and most of
  // the 64 MiB is still queued at the client.
  REQUIRE(server.received.size() < total);
  REQUIRE(client.conn->pendingWriteBytes() > total / 2);
  pause = false;
  server.conn->startReading();
  REQUIRE(loop.runUntil([&] { return server.received.size() == total; }, 20000));
  bool same = true;
  for (size_t i = 0; i < total / chunk && same; ++i) same = server.received.compare(i * chunk, chunk, piece(i)) == 0;
  REQUIRE(same);
  client.conn->abort();
  server.conn->abort();
  REQUIRE(loop.runUntil([&] { return server.closes == 1 && client.closes == 1; }, 3000));
}

TEST_CASE("net: write-queue accounting grows while the peer does not read") {
  uv::Loop loop;
  std::shared_ptr<net::Connection> accepted;
  std::string error;
  auto l = net::listen(loop.get(), "127.0.0.1", 0, false, nullptr,
                       [&](std::shared_ptr<net::Connection> c) { accepted = c; }, error);
  Peer client;
  client.attach(connectSync(loop, l->port()));
  REQUIRE(loop.runUntil([&] { return accepted != nullptr; }, 3000));
  for (int i = 0; i < 64; ++i) client.conn->write(std::string(1 << 20, 'x'));
  loop.runUntil([] { return false; }, 100);
  REQUIRE(client.conn->pendingWriteBytes() > 0);
  client.conn->abort();  // drops queued writes at once
  REQUIRE(loop.runUntil([&] { return client.closes == 1; }, 3000));
  accepted->abort();
}

// A peer that asks for a TLS 1.3 KeyUpdate back with every record and reads nothing: OpenSSL
// queues each answer with no owner to bound it, so the connection itself must stop reading.
TEST_CASE("net: a TLS peer that makes OpenSSL answer and reads nothing cannot grow the write queue") {
  moat::test::TestCert cert;
  REQUIRE(cert.ok());
  std::string error;
  auto sctx = tls::TlsContext::server(cert.certFile(), cert.keyFile(), error);
  REQUIRE(sctx);
  uv::Loop loop;
  Peer server;
  auto l = net::listen(
      loop.get(), "127.0.0.1", 0, false, sctx, [&](std::shared_ptr<net::Connection> c) { server.attach(c); }, error);
  REQUIRE(l);
  uint16_t port = l->port();
  std::atomic<bool> handshaken{false}, finished{false}, stalled{false};
  std::atomic<size_t> sent{0};
  std::thread flooder([&] {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);  // a receive window that fills at once
    timeval tv{0, 300 * 1000};  // a send that blocks this long means the server stopped reading
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL* ssl = SSL_new(ctx);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && SSL_set_fd(ssl, fd) == 1 &&
        SSL_connect(ssl) == 1) {
      handshaken = true;
      // KeyUpdates made in memory, sent in batches: far more than the kernel's buffers hold.
      BIO* mem = BIO_new(BIO_s_mem());
      SSL_set0_wbio(ssl, mem);
      for (int batch = 0; batch < 640; ++batch) {  // 27 octets each: 17 MB
        for (int i = 0; i < 1000; ++i) {
          if (SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED) != 1 || SSL_do_handshake(ssl) != 1) break;
        }
        char* data = nullptr;
        long n = BIO_get_mem_data(mem, &data);
        bool blocked = false;
        for (long off = 0; off < n;) {
          ssize_t w = ::send(fd, data + off, static_cast<size_t>(n - off), MSG_NOSIGNAL);
          if (w <= 0) {
            blocked = true;
            break;
          }
          off += w;
          sent += static_cast<size_t>(w);
        }
        (void)BIO_reset(mem);
        if (blocked) {
          stalled = true;
          break;
        }
      }
    }
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    finished = true;
    ::close(fd);  // after `finished`: the server's pending bytes are looked at before the close
  });
  size_t maxPending = 0;
  loop.runUntil(
      [&] {
        if (server.conn) maxPending = std::max(maxPending, server.conn->pendingWriteBytes());
        return finished.load();
      },
      60000);
  flooder.join();
  REQUIRE(handshaken);
  INFO("sent " << sent << " bytes, server write queue peaked at " << maxPending);
  REQUIRE(sent > 4u * 1024 * 1024);         // the flood was big enough to matter
  REQUIRE(maxPending <= 3u * 1024 * 1024);  // 2 MiB and at most one read's answers
  REQUIRE(stalled);                         // the server stopped reading the flood
  loop.runUntil([&] { return server.closes == 1; }, 5000);
  if (server.conn) server.conn->abort();
}

TEST_CASE("net: connect to a closed port fails, and the timeout fires") {
  uv::Loop loop;
  std::string error;
  uint16_t port;
  {
    auto l = net::listen(loop.get(), "127.0.0.1", 0, false, nullptr, [](auto c) { c->abort(); }, error);
    port = l->port();
  }
  loop.runUntil([] { return false; }, 20);
  auto c = connectSync(loop, port, &error);
  REQUIRE_FALSE(c);
  REQUIRE(error.find("connect") != std::string::npos);

  auto l = net::listen(loop.get(), "127.0.0.1", 0, false, nullptr, [](auto c) { c->abort(); }, error);
  c = connectSync(loop, l->port(), &error, 0);  // due before the connect can complete
  REQUIRE_FALSE(c);
  REQUIRE(error == "connect timeout");
}

TEST_CASE("net: client TLS verification fails against an untrusted certificate") {
  moat::test::TestCert cert;
  std::string error;
  auto sctx = tls::TlsContext::server(cert.certFile(), cert.keyFile(), error);
  auto untrusting = tls::TlsContext::client(true, "", error);
  auto trusting = tls::TlsContext::client(true, cert.caFile(), error);
  uv::Loop loop;
  std::vector<std::shared_ptr<net::Connection>> accepted;
  auto l = net::listen(loop.get(), "127.0.0.1", 0, false, sctx,
                       [&](std::shared_ptr<net::Connection> c) { accepted.push_back(c); c->startReading(); }, error);
  Peer bad;
  bad.attach(connectSync(loop, l->port()));
  int badDone = 0;
  std::string badErr;
  bad.conn->startTls(untrusting, "localhost", [&](bool ok, const std::string& e) {
    badDone = ok ? 1 : 2;
    badErr = e;
  });
  REQUIRE(loop.runUntil([&] { return badDone != 0 && bad.closes == 1; }, 5000));
  REQUIRE(badDone == 2);
  REQUIRE(badErr.find("verify") != std::string::npos);
  REQUIRE(bad.closeError == badErr);

  Peer good;
  good.attach(connectSync(loop, l->port()));
  int goodDone = 0;
  good.conn->startTls(trusting, "localhost", [&](bool ok, const std::string&) { goodDone = ok ? 1 : 2; });
  REQUIRE(loop.runUntil([&] { return goodDone != 0; }, 5000));
  REQUIRE(goodDone == 1);
  REQUIRE(good.conn->tls()->peerVerified());
  good.conn->close();
  REQUIRE(loop.runUntil([&] { return good.closes == 1; }, 3000));
}

TEST_CASE("net: dropping the last reference closes the socket") {
  uv::Loop loop;
  std::string error;
  int accepted = 0;
  auto l = net::listen(loop.get(), "127.0.0.1", 0, false, nullptr, [&](auto) { ++accepted; }, error);
  REQUIRE(l);
  Peer client;
  client.attach(connectSync(loop, l->port()));
  REQUIRE(loop.runUntil([&] { return client.closes == 1; }, 3000));
  REQUIRE(accepted == 1);
  REQUIRE(client.closeError.empty());
}

TEST_CASE("net: connect binds a source address of the destination's family, and a missing one fails the connect") {
  uv::Loop loop;
  std::vector<std::shared_ptr<net::Connection>> accepted;
  std::string error;
  auto l = net::listen(
      loop.get(), "127.0.0.1", 0, false, nullptr, [&](std::shared_ptr<net::Connection> c) { accepted.push_back(c); },
      error);
  REQUIRE(l);
  auto connectFrom = [&](const std::string& source, std::string& err) {
    std::shared_ptr<net::Connection> out;
    bool done = false;
    net::connect(
        loop.get(), loopback(), l->port(), 2000,
        [&](std::shared_ptr<net::Connection> c, const std::string& e) {
          out = std::move(c);
          err = e;
          done = true;
        },
        IpAddress::parse(source));
    REQUIRE(loop.runUntil([&] { return done; }, 5000));
    return out;
  };
  // 127.0.0.0/8 is all this host's on Linux: the server sees the bound source as the peer.
  std::string err;
  auto c = connectFrom("127.0.0.2", err);
  REQUIRE(c);
  CHECK(err.empty());
  CHECK(c->localAddress().str() == "127.0.0.2");
  REQUIRE(loop.runUntil([&] { return accepted.size() == 1; }, 3000));
  CHECK(accepted[0]->peerAddress().str() == "127.0.0.2");
  // A source of the other family is not used: the kernel picks.
  auto other = connectFrom("::1", err);
  REQUIRE(other);
  CHECK(other->localAddress().str() == "127.0.0.1");
  // An address this host does not have (TEST-NET-1): no connection, an error naming it.
  auto none = connectFrom("192.0.2.7", err);
  CHECK_FALSE(none);
  CHECK(err.rfind("cannot bind source address 192.0.2.7: ", 0) == 0);
  REQUIRE(loop.runUntil([&] { return accepted.size() == 2; }, 3000));
  loop.runUntil([] { return false; }, 50);
  CHECK(accepted.size() == 2);  // the failed one never connected
  c->close();
  other->close();
  for (auto& a : accepted) a->close();
  l->close();
  loop.runUntil([] { return false; }, 50);
}
