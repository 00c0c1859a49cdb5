// Tests for mta/server/recipient_verifier: the decision on a probe's replies, the quoting of
// the next hop's words, the bounded cache, which recipients are verified at all, and probes
// against a scripted SMTP or LMTP server on loopback or a Unix socket
// (tests/client/smtp_server.py).
#include "mta/server/recipient_verifier.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "mta/runtime/uv.h"
#include "tests/support/temp_file.h"

using moat::mta::client::Reply;
using namespace moat::mta::server;
namespace uv = moat::mta::uv;

TEST_CASE("a probe's replies decide: 2xx valid, 5xx invalid, anything else unknown") {
  Reply mailOk{250, "250 2.1.0 ok"};
  auto o = decideProbe("", mailOk, {250, "250 2.1.5 ok"});
  CHECK(o.result == VerifyResult::Valid);
  CHECK(o.reply == "250 2.1.5 ok");

  o = decideProbe("", mailOk, {550, "550 5.1.1 no such user"});
  CHECK(o.result == VerifyResult::Invalid);
  CHECK(o.reply == "550 5.1.1 no such user");

  CHECK(decideProbe("", mailOk, {451, "451 4.3.0 try later"}).result == VerifyResult::Unknown);
  CHECK(decideProbe("", mailOk, {421, "421 4.3.2 closing"}).result == VerifyResult::Unknown);
  // A next hop that refuses the null sender says nothing about the recipient.
  o = decideProbe("", {550, "550 5.7.1 no bounces here"}, {550, "550 5.7.1 no bounces here"});
  CHECK(o.result == VerifyResult::Unknown);
  CHECK(o.reply == "550 5.7.1 no bounces here");
  // No connection, a timeout, a TLS failure: unknown, with why.
  o = decideProbe("127.0.0.1:2626: connection refused", {}, {});
  CHECK(o.result == VerifyResult::Unknown);
  CHECK(o.reply == "127.0.0.1:2626: connection refused");
}

TEST_CASE("the next hop's reply is quoted as one short printable line") {
  CHECK(quoteReply("550-5.1.1 no\n550 5.1.1 such user", 100) == "550-5.1.1 no 550 5.1.1 such user");
  CHECK(quoteReply("550 5.1.1 \x01\xff\r", 100) == "550 5.1.1 ??");
  CHECK(quoteReply(std::string(500, 'x'), 120).size() == 120);
  auto o = decideProbe("", {250, "250 ok"}, {550, "550 " + std::string(1000, 'y')});
  CHECK(o.reply.size() == RecipientVerifier::kQuotedReply);
}

TEST_CASE("the cache: keyed on the lower-cased address and the route, entries expire") {
  VerifyCache cache(10);
  auto k = VerifyCache::key("Bob@Example.TEST", "smtp:127.0.0.1:2626,tls=1");
  CHECK(k == VerifyCache::key("bob@example.test", "smtp:127.0.0.1:2626,tls=1"));
  CHECK(k != VerifyCache::key("bob@example.test", "smtp:127.0.0.1:2727,tls=1"));
  CHECK(cache.find(k, 0) == nullptr);
  cache.put(k, {VerifyResult::Invalid, "550 5.1.1 no", "127.0.0.1:2626", 1000});
  const auto* e = cache.find(k, 999);
  REQUIRE(e != nullptr);
  CHECK(e->result == VerifyResult::Invalid);
  CHECK(e->reply == "550 5.1.1 no");
  CHECK(cache.find(k, 1000) == nullptr);  // expired: dropped
  CHECK(cache.size() == 0);
  // A new answer replaces the old one.
  cache.put(k, {VerifyResult::Invalid, "550", "", 5000});
  cache.put(k, {VerifyResult::Valid, "250", "", 6000});
  CHECK(cache.size() == 1);
  CHECK(cache.find(k, 0)->result == VerifyResult::Valid);
}

TEST_CASE("the cache is bounded: the least recently used entry goes first") {
  VerifyCache cache(3);
  auto key = [](int i) { return VerifyCache::key("u" + std::to_string(i) + "@example.test", "r"); };
  for (int i = 0; i < 3; ++i) cache.put(key(i), {VerifyResult::Valid, "250", "", 100});
  REQUIRE(cache.find(key(0), 0) != nullptr);  // used: now the most recent
  cache.put(key(3), {VerifyResult::Valid, "250", "", 100});
  CHECK(cache.size() == 3);
  CHECK(cache.find(key(1), 0) == nullptr);  // the least recently used
  CHECK(cache.find(key(0), 0) != nullptr);
  CHECK(cache.find(key(2), 0) != nullptr);
  CHECK(cache.find(key(3), 0) != nullptr);
  for (int i = 0; i < 1000; ++i) cache.put(key(100 + i), {VerifyResult::Invalid, "550", "", 100});
  CHECK(cache.size() == 3);
}

TEST_CASE("only relay domains routed to smtp: next hops are verified, and only with the key on") {
  moat::policy::Config c;
  c.relayDomains = {"example.test", "mx.test", "box.test", ".sub.test"};
  moat::policy::Route smtp;
  smtp.domains = {"example.test", ".sub.test", "outside.test"};
  smtp.to = {{moat::policy::RouteTarget::Kind::Smtp, "127.0.0.1", 2626, "", ""}};
  moat::policy::Route mx;
  mx.domains = {"mx.test"};
  mx.to = {{moat::policy::RouteTarget::Kind::Mx, "", 25, "", ""}};
  moat::policy::Route box;
  box.domains = {"box.test"};
  box.to = {{moat::policy::RouteTarget::Kind::Maildir, "", 25, "/var/mail", ""}};
  c.routes = {smtp, mx, box};
  CHECK(RecipientVerifier::routeToVerify(c, "example.test") == nullptr);  // off by default
  c.verifyRecipients = true;
  CHECK(RecipientVerifier::routeToVerify(c, "example.test") == &c.routes[0]);
  CHECK(RecipientVerifier::routeToVerify(c, "EXAMPLE.test") == &c.routes[0]);
  CHECK(RecipientVerifier::routeToVerify(c, "a.sub.test") == &c.routes[0]);
  CHECK(RecipientVerifier::routeToVerify(c, "mx.test") == nullptr);
  CHECK(RecipientVerifier::routeToVerify(c, "box.test") == nullptr);
  // Not a relay domain (mail a relay network sends out): never verified.
  CHECK(RecipientVerifier::routeToVerify(c, "outside.test") == nullptr);
}

TEST_CASE("relay domains routed to lmtp: next hops are verified too, over TCP and a Unix socket") {
  using Kind = moat::policy::RouteTarget::Kind;
  moat::policy::Config c;
  c.verifyRecipients = true;
  c.relayDomains = {"tcp.test", "sock.test", "mixed.test", "box.test"};
  moat::policy::Route tcp;
  tcp.domains = {"tcp.test"};
  tcp.to = {{Kind::Lmtp, "127.0.0.1", 24, "", ""}};
  moat::policy::Route sock;
  sock.domains = {"sock.test"};
  sock.to = {{Kind::Lmtp, "", 0, "", "/run/dovecot/lmtp"}};
  moat::policy::Route mixed;
  mixed.domains = {"mixed.test"};
  mixed.to = {{Kind::Smtp, "127.0.0.1", 2626, "", ""}, {Kind::Lmtp, "127.0.0.1", 24, "", ""}};
  moat::policy::Route box;
  box.domains = {"box.test"};
  box.to = {{Kind::Maildir, "", 25, "/var/mail", ""}};
  c.routes = {tcp, sock, mixed, box};
  CHECK(RecipientVerifier::routeToVerify(c, "tcp.test") == &c.routes[0]);
  CHECK(RecipientVerifier::routeToVerify(c, "sock.test") == &c.routes[1]);
  CHECK(RecipientVerifier::routeToVerify(c, "mixed.test") == &c.routes[2]);
  CHECK(RecipientVerifier::routeToVerify(c, "box.test") == nullptr);
}

namespace {

using moat::test::readFile;

// tests/client/smtp_server.py in a child process of its own, stopped by its PID.
class ScriptedServer {
 public:
  // `unixName`: listen on a Unix socket of that name in the server's own temp dir (socket()),
  // not on 127.0.0.1.
  explicit ScriptedServer(const std::string& extraJson, const std::string& unixName = "") {
    dir_ = (std::filesystem::temp_directory_path() / "moat-verify-XXXXXX").string();
    REQUIRE(mkdtemp(dir_.data()));
    if (!unixName.empty()) socket_ = dir_ + "/" + unixName;
    std::string cfg =
        "{\"out\": \"" + dir_ + "\", " + extraJson + (socket_.empty() ? "" : ", \"unix\": \"" + socket_ + "\"") + "}";
    pid_ = fork();
    if (pid_ == 0) {
      execlp("python3", "python3", MOAT_SOURCE_DIR "/tests/client/smtp_server.py", cfg.c_str(), nullptr);
      _exit(127);
    }
    for (int i = 0; i < 500 && !std::filesystem::exists(dir_ + "/port"); ++i) usleep(10000);
    port_ = static_cast<uint16_t>(std::stoi("0" + readFile(dir_ + "/port")));
    REQUIRE((port_ != 0 || (!socket_.empty() && std::filesystem::exists(socket_))));
  }
  ~ScriptedServer() {
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  ScriptedServer(const ScriptedServer&) = delete;
  ScriptedServer& operator=(const ScriptedServer&) = delete;
  uint16_t port() const { return port_; }
  const std::string& socket() const { return socket_; }
  std::string commands() const { return readFile(dir_ + "/commands.log"); }

 private:
  std::string dir_, socket_;
  pid_t pid_ = -1;
  uint16_t port_ = 0;
};

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// Route hosts here are addresses: nothing is looked up.
struct NoResolver : moat::mta::dns::Resolver {
  void query(std::string_view, moat::mta::dns::RrType, Callback cb) override { cb({}); }
};

std::shared_ptr<const Snapshot> snapshotFor(std::vector<moat::policy::RouteTarget> to) {
  auto c = std::make_shared<moat::policy::Config>();
  c->hostname = "mx.moat.test";
  c->relayDomains = {"example.test"};
  c->verifyRecipients = true;
  c->verifyTimeout = std::chrono::seconds(10);
  moat::policy::Route r;
  r.domains = {"example.test"};
  r.to = std::move(to);
  r.tls = moat::policy::TlsPolicy::None;
  c->routes = {r};
  auto snap = std::make_shared<Snapshot>();
  snap->config = c;
  return snap;
}

std::shared_ptr<const Snapshot> snapshotFor(uint16_t port) {
  return snapshotFor({{moat::policy::RouteTarget::Kind::Smtp, "127.0.0.1", port, "", ""}});
}

// Asks `v` about each address in turn, one probe at a time: the outcomes, in order.
std::vector<VerifyOutcome> askEach(uv::Loop& loop, RecipientVerifier& v, const std::shared_ptr<const Snapshot>& snap,
                                   const std::vector<std::string>& addresses) {
  std::vector<VerifyOutcome> got;
  for (const auto& a : addresses) {
    size_t before = got.size();
    auto cached = v.verify(snap, snap->config->routes[0], a, [&got](const VerifyOutcome& o) { got.push_back(o); });
    if (cached) {
      got.push_back(*cached);
      continue;
    }
    REQUIRE(loop.runUntil([&] { return got.size() == before + 1; }, 15000));
  }
  return got;
}

}  // namespace

TEST_CASE("RCPTs for an address being asked share its probe, the answer is then cached") {
  ScriptedServer server("\"pipelining\": true, \"reject_rcpt\": {\"bad@example.test\": \"550 5.1.1 No such user\"}");
  uv::Loop loop;
  NoResolver resolver;
  auto snap = snapshotFor(server.port());
  const auto& route = snap->config->routes[0];
  std::vector<VerifyOutcome> got;
  {
    RecipientVerifier v(loop.get(), &resolver);
    auto ask = [&](const std::string& address) {
      // Never answered before verify() returns: the session pauses first.
      auto cached = v.verify(snap, route, address, [&got](const VerifyOutcome& o) { got.push_back(o); });
      REQUIRE_FALSE(cached);
    };
    for (const char* a :
         {"Same@example.test", "same@EXAMPLE.test", "SAME@example.test", "bad@example.test", "bad@example.test"})
      ask(a);
    for (int i = 0; i < 8; ++i) ask("u" + std::to_string(i) + "@example.test");  // more than a hop's slots
    REQUIRE(got.empty());
    REQUIRE(loop.runUntil([&] { return got.size() == 13; }, 20000));
    size_t valid = 0, invalid = 0;
    for (const auto& o : got) {
      CHECK_FALSE(o.cached);
      CHECK(o.relay == "127.0.0.1:" + std::to_string(server.port()));
      valid += o.result == VerifyResult::Valid;
      invalid += o.result == VerifyResult::Invalid;
    }
    CHECK(valid == 11);
    CHECK(invalid == 2);
    auto cmds = server.commands();
    INFO(cmds);
    CHECK(count(cmds, "MAIL FROM:<>") == 10);  // one probe per address: 1 + 1 + 8
    CHECK(count(cmds, "RCPT TO:<Same@example.test>") == 1);
    CHECK(count(cmds, "RCPT TO:<bad@example.test>") == 1);
    CHECK(count(cmds, "DATA") == 0);

    // Now known: answered at once, without a probe.
    bool called = false;
    auto cached = v.verify(snap, route, "same@example.test", [&called](const VerifyOutcome&) { called = true; });
    REQUIRE(cached);
    CHECK(cached->cached);
    CHECK(cached->result == VerifyResult::Valid);
    cached = v.verify(snap, route, "BAD@example.test", [&called](const VerifyOutcome&) { called = true; });
    REQUIRE(cached);
    CHECK(cached->result == VerifyResult::Invalid);
    CHECK(cached->reply == "550 5.1.1 No such user");
    CHECK_FALSE(called);
    CHECK(v.cacheSize() == 10);
  }
  loop.run();  // the closed handles (timers, QUITs) go
}

TEST_CASE("a next hop that cannot be reached gives unknown, within verify_timeout") {
  uv::Loop loop;
  NoResolver resolver;
  uint16_t port = 0;
  {
    // A port nobody listens on: bound, then closed.
    ScriptedServer gone("\"pipelining\": true");
    port = gone.port();
  }
  auto snap = snapshotFor(port);
  std::vector<VerifyOutcome> got;
  {
    RecipientVerifier v(loop.get(), &resolver);
    REQUIRE_FALSE(v.verify(snap, snap->config->routes[0], "a@example.test",
                           [&got](const VerifyOutcome& o) { got.push_back(o); }));
    REQUIRE(loop.runUntil([&] { return got.size() == 1; }, 15000));
    CHECK(got[0].result == VerifyResult::Unknown);
    CHECK(got[0].reply.find("127.0.0.1:" + std::to_string(port)) != std::string::npos);
    CHECK(got[0].relay.empty());
  }
  loop.run();
}

TEST_CASE("at most kMaxProbesPerHop probes run at once per next hop, the others wait their turn") {
  // A next hop that takes connections (the kernel's backlog) and says nothing until the test
  // closes one: the probes stay under way for as long as the test wants.
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(listener >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(listen(listener, 64) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  std::vector<int> accepted;
  auto acceptAll = [&] {
    for (int fd; (fd = accept4(listener, nullptr, nullptr, SOCK_NONBLOCK)) >= 0;) accepted.push_back(fd);
    return accepted.size();
  };
  REQUIRE(fcntl(listener, F_SETFL, O_NONBLOCK) == 0);

  uv::Loop loop;
  NoResolver resolver;
  auto snap = snapshotFor(ntohs(addr.sin_port));
  const auto& route = snap->config->routes[0];
  std::vector<VerifyOutcome> got;
  const unsigned n = RecipientVerifier::kMaxProbesPerHop + 3;
  {
    RecipientVerifier v(loop.get(), &resolver);
    for (unsigned i = 0; i < n; ++i)
      REQUIRE_FALSE(v.verify(snap, route, "u" + std::to_string(i) + "@example.test",
                             [&got](const VerifyOutcome& o) { got.push_back(o); }));
    CHECK(v.load(route).active == RecipientVerifier::kMaxProbesPerHop);
    CHECK(v.load(route).waiting == 3);
    REQUIRE(loop.runUntil([&] { return acceptAll() == RecipientVerifier::kMaxProbesPerHop; }, 10000));
    CHECK(v.load(route).active == RecipientVerifier::kMaxProbesPerHop);
    CHECK(v.load(route).waiting == 3);
    CHECK(got.empty());
    // One probe ends (its connection closed): the first one waiting takes its slot.
    close(accepted.front());
    accepted.erase(accepted.begin());
    REQUIRE(
        loop.runUntil([&] { return got.size() == 1 && acceptAll() == RecipientVerifier::kMaxProbesPerHop; }, 10000));
    CHECK(got[0].result == VerifyResult::Unknown);
    CHECK(v.load(route).active == RecipientVerifier::kMaxProbesPerHop);
    CHECK(v.load(route).waiting == 2);
  }
  for (int fd : accepted) close(fd);
  close(listener);
  loop.run();
}

TEST_CASE("an lmtp: next hop is asked with LHLO, over TCP") {
  ScriptedServer server(
      "\"lmtp\": true, \"pipelining\": true, "
      "\"reject_rcpt\": {\"bad@example.test\": \"550 5.1.1 <bad@example.test> User doesn't exist\"}");
  uv::Loop loop;
  NoResolver resolver;
  auto snap = snapshotFor({{moat::policy::RouteTarget::Kind::Lmtp, "127.0.0.1", server.port(), "", ""}});
  {
    RecipientVerifier v(loop.get(), &resolver);
    auto got = askEach(loop, v, snap, {"good@example.test", "bad@example.test"});
    REQUIRE(got.size() == 2);
    const std::string relay = "lmtp:127.0.0.1:" + std::to_string(server.port());
    CHECK(got[0].result == VerifyResult::Valid);
    CHECK(got[0].relay == relay);
    CHECK(got[1].result == VerifyResult::Invalid);
    CHECK(got[1].reply == "550 5.1.1 <bad@example.test> User doesn't exist");
    CHECK(got[1].relay == relay);
    auto cmds = server.commands();
    INFO(cmds);
    CHECK(count(cmds, "LHLO mx.moat.test") == 2);
    CHECK(count(cmds, "EHLO") == 0);
    CHECK(count(cmds, "HELO") == 0);
    CHECK(count(cmds, "MAIL FROM:<>") == 2);
    CHECK(count(cmds, "RCPT TO:<good@example.test>") == 1);
    CHECK(count(cmds, "RCPT TO:<bad@example.test>") == 1);
    CHECK(count(cmds, "RSET") == 2);
    CHECK(count(cmds, "DATA") == 0);
  }
  loop.run();
}

TEST_CASE("an lmtp:unix: next hop is asked over its socket, after the targets before it fail") {
  ScriptedServer server(
      "\"lmtp\": true, \"pipelining\": true, "
      "\"reject_rcpt\": {\"bad@example.test\": \"550 5.1.1 no such user\"}",
      "lmtp.sock");
  uint16_t deadPort = 0;
  {
    ScriptedServer gone("\"pipelining\": true");  // bound, then closed: nobody listens there
    deadPort = gone.port();
  }
  using Kind = moat::policy::RouteTarget::Kind;
  uv::Loop loop;
  NoResolver resolver;
  // A dead TCP LMTP target, a socket that is not there, then the server's socket: tried in order.
  auto snap = snapshotFor({{Kind::Lmtp, "127.0.0.1", deadPort, "", ""},
                           {Kind::Lmtp, "", 0, "", server.socket() + ".missing"},
                           {Kind::Lmtp, "", 0, "", server.socket()}});
  {
    RecipientVerifier v(loop.get(), &resolver);
    auto got = askEach(loop, v, snap, {"good@example.test", "bad@example.test", "Good@Example.test"});
    REQUIRE(got.size() == 3);
    CHECK(got[0].result == VerifyResult::Valid);
    CHECK(got[0].relay == "lmtp:unix:" + server.socket());
    CHECK(got[1].result == VerifyResult::Invalid);
    CHECK(got[1].reply == "550 5.1.1 no such user");
    CHECK(got[2].cached);  // the same address: the cache answers
    CHECK(got[2].result == VerifyResult::Valid);
    auto cmds = server.commands();
    INFO(cmds);
    CHECK(count(cmds, "LHLO mx.moat.test") == 2);
    CHECK(count(cmds, "MAIL FROM:<>") == 2);
    CHECK(count(cmds, "RSET") == 2);
    CHECK(count(cmds, "DATA") == 0);
  }
  loop.run();
}

TEST_CASE("lmtp: next hops that cannot be reached give unknown, naming them") {
  ScriptedServer gone("\"lmtp\": true", "gone.sock");
  std::string missing = gone.socket() + ".missing";
  uint16_t deadPort = 0;
  {
    ScriptedServer closed("\"pipelining\": true");
    deadPort = closed.port();
  }
  using Kind = moat::policy::RouteTarget::Kind;
  uv::Loop loop;
  NoResolver resolver;
  auto snap = snapshotFor({{Kind::Lmtp, "127.0.0.1", deadPort, "", ""}, {Kind::Lmtp, "", 0, "", missing}});
  {
    RecipientVerifier v(loop.get(), &resolver);
    auto got = askEach(loop, v, snap, {"a@example.test"});
    REQUIRE(got.size() == 1);
    CHECK(got[0].result == VerifyResult::Unknown);
    CHECK(got[0].relay.empty());
    // The last one tried says why.
    CHECK(got[0].reply.find("lmtp:unix:" + missing) != std::string::npos);
  }
  loop.run();
}

TEST_CASE("a route whose client certificate the snapshot did not load is not asked without it") {
  ScriptedServer server("\"pipelining\": true");
  uv::Loop loop;
  NoResolver resolver;
  auto base = snapshotFor(server.port());
  auto c = std::make_shared<moat::policy::Config>(*base->config);
  c->routes[0].tls = moat::policy::TlsPolicy::Require;
  c->routes[0].tlsCert = "/nonexistent/client.pem";
  c->routes[0].tlsKey = "/nonexistent/client.key";
  auto snap = std::make_shared<Snapshot>();
  snap->config = c;
  std::vector<VerifyOutcome> got;
  {
    RecipientVerifier v(loop.get(), &resolver);
    REQUIRE_FALSE(v.verify(snap, c->routes[0], "a@example.test", [&got](const VerifyOutcome& o) { got.push_back(o); }));
    REQUIRE(loop.runUntil([&] { return got.size() == 1; }, 15000));
    CHECK(got[0].result == VerifyResult::Unknown);
    CHECK(got[0].reply == "no client certificate loaded for the route's tls_cert");
  }
  loop.run();
  CHECK(server.commands().empty());  // never connected: no EHLO, no MAIL
}
