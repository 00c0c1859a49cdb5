// Tests for mta/daemon/mta_sts: the policy cache (RFC 8461 §5.1) and the HTTPS fetch (§3.3),
// on a real loop, with a TLS server on 127.0.0.1 (a port of its own, not 443) whose
// certificate a test CA signed, and an in-memory resolver for the TXT and address records.
#include <catch2/catch.hpp>

#include "mta/daemon/mta_sts.h"
#include "mta/net/connection.h"
#include "mta/runtime/uv.h"
#include "tests/support/test_cert.h"

using namespace moat::mta;

namespace {

constexpr const char* kDomain = "example.test";
constexpr const char* kPolicy = "version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 86400\r\n";

// TXT and A answers per name; NXDOMAIN for the rest. Answers from a zero-delay timer, as a
// real resolver answers later on the loop.
class ZoneResolver : public dns::Resolver {
 public:
  explicit ZoneResolver(uv_loop_t* loop) : loop_(loop) {}
  std::map<std::string, std::vector<std::string>> txt;
  std::map<std::string, std::string> a;
  int txtQueries = 0;
  void query(std::string_view name, dns::RrType type, Callback cb) override {
    dns::Answer ans;
    ans.status = dns::Status::NxDomain;
    std::string n(name);
    if (type == dns::RrType::TXT) {
      ++txtQueries;
      if (auto it = txt.find(n); it != txt.end()) {
        ans.status = dns::Status::Ok;
        ans.txt = it->second;
      }
    } else if (type == dns::RrType::A) {
      if (auto it = a.find(n); it != a.end()) {
        ans.status = dns::Status::Ok;
        ans.addresses.push_back(*IpAddress::parse(it->second));
      }
    } else if (a.count(n)) {
      ans.status = dns::Status::NoData;
    }
    auto t = std::make_shared<uv::Timer>(loop_);
    timers_.push_back(t);
    t->start(0, [cb, ans] { cb(ans); });
  }

 private:
  uv_loop_t* loop_;
  std::vector<std::shared_ptr<uv::Timer>> timers_;
};

// An HTTPS server on 127.0.0.1: answers each request with `reply` (or never, when `silent`)
// and closes.
struct PolicyServer {
  std::unique_ptr<net::Listener> listener;
  std::vector<std::shared_ptr<net::Connection>> conns;
  std::string reply;
  std::vector<std::string> requests;
  bool silent = false;
  PolicyServer(uv_loop_t* loop, std::shared_ptr<tls::TlsContext> ctx) {
    std::string error;
    listener = net::listen(
        loop, "127.0.0.1", 0, false, ctx,
        [this](std::shared_ptr<net::Connection> c) {
          conns.push_back(c);
          auto buf = std::make_shared<std::string>();
          std::weak_ptr<net::Connection> weak = c;
          c->setCallbacks({[this, buf, weak](std::string_view d) {
                             buf->append(d);
                             auto conn = weak.lock();
                             if (!conn || buf->find("\r\n\r\n") == std::string::npos) return;
                             requests.push_back(*buf);
                             buf->clear();
                             if (silent) return;
                             conn->write(reply);
                             conn->close();
                           },
                           [](const std::string&) {}, nullptr});
          c->startReading();
        },
        error);
    REQUIRE(listener);
  }
  uint16_t port() const { return listener->port(); }
};

std::string ok(const std::string& body) {
  return "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\nConnection: close\r\n\r\n" + body;
}

struct Fixture {
  moat::test::TestCert cert{"mta-sts.example.test"};
  uv::Loop loop;
  ZoneResolver resolver{loop.get()};
  std::shared_ptr<tls::TlsContext> serverTls, clientTls;
  std::unique_ptr<PolicyServer> server;
  std::unique_ptr<sts::PolicyCache> cache;
  Fixture() {
    REQUIRE(cert.ok());
    std::string error;
    serverTls = tls::TlsContext::server(cert.certFile(), cert.keyFile(), error);
    clientTls = tls::TlsContext::client(true, cert.caFile(), error);
    REQUIRE(serverTls);
    REQUIRE(clientTls);
    server = std::make_unique<PolicyServer>(loop.get(), serverTls);
    server->reply = ok(kPolicy);
    resolver.txt["_mta-sts.example.test"] = {"v=STSv1; id=one"};
    resolver.a["mta-sts.example.test"] = "127.0.0.1";
    cache = std::make_unique<sts::PolicyCache>(loop.get(), &resolver, server->port());
  }
  // One get(), run to its answer. `answered` says whether it came in time.
  std::shared_ptr<const sts::Policy> get(bool& answered, uint64_t timeoutMs = 3000) {
    std::shared_ptr<const sts::Policy> out;
    answered = false;
    cache->get(kDomain, clientTls, timeoutMs, [&](std::shared_ptr<const sts::Policy> p) {
      out = std::move(p);
      answered = true;
    });
    loop.runUntil([&] { return answered; }, timeoutMs + 2000);
    return out;
  }
};

}  // namespace

TEST_CASE("MTA-STS cache: fetched once, then served from the cache while the id is the same") {
  Fixture f;
  bool answered = false;
  auto p = f.get(answered);
  REQUIRE(answered);
  REQUIRE(p);
  CHECK(p->mode == sts::Mode::Enforce);
  CHECK(p->id == "one");
  CHECK(p->allows("mx.example.test"));
  REQUIRE(f.server->requests.size() == 1);
  // §3.3: the well-known path, the policy host, HTTP/1.1, no keep-alive.
  CHECK(f.server->requests[0].rfind("GET /.well-known/mta-sts.txt HTTP/1.1\r\n", 0) == 0);
  CHECK(f.server->requests[0].find("\r\nHost: mta-sts.example.test\r\n") != std::string::npos);
  CHECK(f.server->requests[0].find("\r\nConnection: close\r\n") != std::string::npos);
  auto again = f.get(answered);
  REQUIRE(answered);
  CHECK(again == p);
  CHECK(f.server->requests.size() == 1);
}

TEST_CASE("MTA-STS cache: concurrent lookups share one fetch") {
  Fixture f;
  std::vector<std::shared_ptr<const sts::Policy>> got;
  for (int i = 0; i < 3; ++i)
    f.cache->get(kDomain, f.clientTls, 3000, [&](std::shared_ptr<const sts::Policy> p) { got.push_back(p); });
  REQUIRE(f.loop.runUntil([&] { return got.size() == 3; }, 5000));
  CHECK(f.server->requests.size() == 1);
  for (const auto& p : got) CHECK((p && p->mode == sts::Mode::Enforce));
}

TEST_CASE("MTA-STS cache: a new id refetches, a failed refetch keeps the unexpired policy") {
  Fixture f;
  bool answered = false;
  auto first = f.get(answered);
  REQUIRE(first);
  f.resolver.txt["_mta-sts.example.test"] = {"v=STSv1; id=two"};
  f.server->reply = ok("version: STSv1\r\nmode: testing\r\nmx: *.example.test\r\nmax_age: 600\r\n");
  auto second = f.get(answered);
  REQUIRE(second);
  CHECK(f.server->requests.size() == 2);
  CHECK(second->mode == sts::Mode::Testing);
  CHECK(second->id == "two");
  // §5.1: the id changes again but the fetch fails (a 404): the cached policy still applies.
  f.resolver.txt["_mta-sts.example.test"] = {"v=STSv1; id=three"};
  f.server->reply = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
  auto third = f.get(answered);
  REQUIRE(answered);
  CHECK(f.server->requests.size() == 3);
  CHECK(third == second);
  // No TXT record any more: the cached policy still applies until it expires (§5.1 keeps the
  // policy; the record only says when to look for a new one).
  f.resolver.txt.erase("_mta-sts.example.test");
  auto fourth = f.get(answered);
  REQUIRE(answered);
  CHECK(fourth == second);
  CHECK(f.server->requests.size() == 3);
}

TEST_CASE("MTA-STS fetch failures give no policy when none is cached") {
  Fixture f;
  bool answered = false;
  SECTION("no TXT record: nothing fetched") {
    f.resolver.txt.clear();
    CHECK_FALSE(f.get(answered));
    CHECK(answered);
    CHECK(f.server->requests.empty());
  }
  SECTION("a redirect is not followed") {
    f.server->reply = "HTTP/1.1 301 Moved\r\nLocation: https://elsewhere.test/\r\nContent-Length: 0\r\n\r\n";
    CHECK_FALSE(f.get(answered));
    CHECK(answered);
  }
  SECTION("a malformed policy") {
    f.server->reply = ok("version: STSv1\r\nmode: enforce\r\n");
    CHECK_FALSE(f.get(answered));
    CHECK(answered);
  }
  SECTION("a body over 64 KiB") {
    f.server->reply = "HTTP/1.1 200 OK\r\n\r\n" + std::string(kPolicy) + std::string(70000, '#');
    CHECK_FALSE(f.get(answered));
    CHECK(answered);
  }
  SECTION("a certificate that does not name mta-sts.DOMAIN") {
    moat::test::TestCert other("other.example.test");
    REQUIRE(other.ok());
    std::string error;
    auto ctx = tls::TlsContext::server(other.certFile(), other.keyFile(), error);
    REQUIRE(ctx);
    PolicyServer wrong(f.loop.get(), ctx);
    wrong.reply = ok(kPolicy);
    // The client trusts the other CA too, so only the name is wrong.
    auto client = tls::TlsContext::client(true, other.caFile(), error);
    REQUIRE(client);
    sts::PolicyCache cache(f.loop.get(), &f.resolver, wrong.port());
    std::shared_ptr<const sts::Policy> out;
    answered = false;
    cache.get(kDomain, client, 3000, [&](std::shared_ptr<const sts::Policy> p) {
      out = p;
      answered = true;
    });
    REQUIRE(f.loop.runUntil([&] { return answered; }, 5000));
    CHECK_FALSE(out);
    CHECK(wrong.requests.empty());  // the request never went
  }
  SECTION("a server that never answers: the fetch times out") {
    f.server->silent = true;
    CHECK_FALSE(f.get(answered, 300));
    CHECK(answered);
    CHECK(f.server->requests.size() == 1);
  }
  SECTION("no address for the policy host") {
    f.resolver.a.clear();
    CHECK_FALSE(f.get(answered));
    CHECK(answered);
  }
}
