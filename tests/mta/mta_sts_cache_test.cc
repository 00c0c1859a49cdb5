// Tests for mta/daemon/mta_sts: the policy cache (RFC 8461 §5.1) and the HTTPS fetch (§3.3),
// on a real loop, with a TLS server on 127.0.0.1 (a port of its own, not 443) whose
// certificate a test CA signed, and an in-memory resolver for the TXT and address records.
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>

#include "mta/daemon/https_client.h"
#include "mta/daemon/mta_sts.h"
#include "mta/net/connection.h"
#include "mta/runtime/uv.h"
#include "tests/support/temp_file.h"
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
  std::map<std::string, std::string> a, aaaa;
  bool txtServfail = false;  // the TXT lookup fails (TempFail)
  int txtQueries = 0, aaaaQueries = 0;
  void query(std::string_view name, dns::RrType type, Callback cb) override {
    dns::Answer ans;
    ans.status = dns::Status::NxDomain;
    std::string n(name);
    if (type == dns::RrType::TXT) {
      ++txtQueries;
      if (txtServfail) {
        ans.status = dns::Status::TempFail;
      } else if (auto it = txt.find(n); it != txt.end()) {
        ans.status = dns::Status::Ok;
        ans.txt = it->second;
      }
    } else {
      if (type == dns::RrType::AAAA) ++aaaaQueries;
      const auto& zone = type == dns::RrType::A ? a : aaaa;
      if (auto it = zone.find(n); it != zone.end()) {
        ans.status = dns::Status::Ok;
        ans.addresses.push_back(*IpAddress::parse(it->second));
      } else if (a.count(n) || aaaa.count(n)) {
        ans.status = dns::Status::NoData;
      }
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
                             size_t head = buf->find("\r\n\r\n");
                             if (!conn || head == std::string::npos) return;
                             // A request with a body (a POST): wait for all of it.
                             if (size_t cl = buf->find("\r\nContent-Length: ");
                                 cl != std::string::npos && cl < head &&
                                 buf->size() < head + 4 + std::stoul(buf->substr(cl + 18)))
                               return;
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
  std::string cacheFile() const { return cert.dir() + "/mta-sts.cache"; }
  // A cache as after a restart: the same file, nothing in memory.
  void restart(const std::string& file) {
    cache = std::make_unique<sts::PolicyCache>(loop.get(), &resolver, server->port(), file);
  }
  // One get(), run to its answer. `answered` says whether it came in time.
  std::shared_ptr<const sts::Policy> get(bool& answered, uint64_t timeoutMs = 3000) {
    std::shared_ptr<const sts::Policy> out;
    answered = false;
    cache->get(kDomain, clientTls, timeoutMs, [&](std::shared_ptr<const sts::Policy> p, bool stopped) {
      CHECK_FALSE(stopped);
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
    f.cache->get(kDomain, f.clientTls, 3000, [&](std::shared_ptr<const sts::Policy> p, bool) { got.push_back(p); });
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
    cache.get(kDomain, client, 3000, [&](std::shared_ptr<const sts::Policy> p, bool) {
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

namespace {
using moat::test::readFile;
void writeFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}
}  // namespace

TEST_CASE("MTA-STS cache file: a policy outlives a restart, a fetch blocked after it does not downgrade") {
  Fixture f;
  f.restart(f.cacheFile());
  CHECK(f.cache->load() == 0);  // no file yet: the first start
  bool answered = false;
  auto p = f.get(answered);
  REQUIRE(p);
  // The write goes to the thread pool; wait for it.
  REQUIRE(f.loop.runUntil([&] { return !f.cache->writing(); }, 5000));
  std::string text = readFile(f.cacheFile());
  CHECK(text.rfind("moat-mta-sts-cache 1\n", 0) == 0);
  CHECK(text.find("example.test ") != std::string::npos);
  CHECK(text.find(" one enforce 86400 mx.example.test\n") != std::string::npos);
  // Restart; the policy host is now unreachable (an attacker drops the fetch).
  f.resolver.a.clear();
  f.restart(f.cacheFile());
  CHECK(f.cache->load() == 1);
  SECTION("the same id: the cached policy, nothing fetched") {
    auto again = f.get(answered);
    REQUIRE(answered);
    REQUIRE(again);
    CHECK(again->mode == sts::Mode::Enforce);
    CHECK(again->id == "one");
    CHECK(again->allows("mx.example.test"));
    CHECK(f.server->requests.size() == 1);
  }
  SECTION("a new id whose fetch fails: the cached policy still applies") {
    f.resolver.txt["_mta-sts.example.test"] = {"v=STSv1; id=two"};
    auto again = f.get(answered);
    REQUIRE(answered);
    REQUIRE(again);
    CHECK(again->mode == sts::Mode::Enforce);
    CHECK(again->id == "one");
  }
  SECTION("the TXT lookup fails: the cached policy still applies") {
    f.resolver.txtServfail = true;
    auto again = f.get(answered);
    REQUIRE(answered);
    REQUIRE(again);
    CHECK(again->id == "one");
  }
  SECTION("expired while Moat was down: dropped at load") {
    f.restart(f.cacheFile());
    f.cache->advanceClockForTest(std::chrono::seconds(86401));
    CHECK(f.cache->load() == 0);
    CHECK(f.cache->size() == 0);
    CHECK_FALSE(f.get(answered));
    CHECK(answered);
  }
}

TEST_CASE("MTA-STS cache file: a broken or unreadable file is ignored, never fatal") {
  Fixture f;
  const std::string file = f.cacheFile();
  SECTION("garbage") { writeFile(file, "\x01\x02 not a cache\n"); }
  SECTION("cut short (no end line)") {
    writeFile(file, "moat-mta-sts-cache 1\nexample.test 99999999999 one enforce 86400 mx.example.test\n");
  }
  SECTION("a count that does not match") {
    writeFile(file, "moat-mta-sts-cache 1\nexample.test 99999999999 one enforce 86400 mx.example.test\nend 2\n");
  }
  SECTION("a policy the policy rules refuse (enforce without mx)") {
    writeFile(file, "moat-mta-sts-cache 1\nexample.test 99999999999 one enforce 86400 -\nend 1\n");
  }
  SECTION("over the size bound") {
    std::string big = "moat-mta-sts-cache 1\n";
    while (big.size() <= sts::PolicyCache::kMaxFileBytes) big += "# padding padding padding padding padding\n";
    writeFile(file, big);
  }
  SECTION("a directory, not a file") { REQUIRE(::mkdir(file.c_str(), 0700) == 0); }
  f.restart(file);
  CHECK(f.cache->load() == 0);
  CHECK(f.cache->size() == 0);
  // The cache works on: the policy is fetched.
  bool answered = false;
  auto p = f.get(answered);
  REQUIRE(p);
  CHECK(p->id == "one");
  CHECK(f.server->requests.size() == 1);
}

TEST_CASE("MTA-STS cache file format: bounded, expired policies dropped, every field checked") {
  sts::CachedPolicy a{"a.test", {}, 1000}, b{"b.test", {}, 3000}, c{"c.test", {}, 2000}, bad{"bad domain", {}, 5000};
  for (auto* e : {&a, &b, &c, &bad}) {
    e->policy.mode = sts::Mode::Testing;
    e->policy.mx = {"*.mx.test", "mx.other.test"};
    e->policy.maxAge = 604800;
    e->policy.id = "id1";
  }
  c.policy.mode = sts::Mode::None;
  c.policy.mx.clear();
  std::string text = sts::encodeCache({a, b, c, bad}, 10, 1 << 20);
  CHECK(text ==
        "moat-mta-sts-cache 1\n"
        "b.test 3000 id1 testing 604800 *.mx.test,mx.other.test\n"
        "c.test 2000 id1 none 604800 -\n"
        "a.test 1000 id1 testing 604800 *.mx.test,mx.other.test\n"
        "end 3\n");  // the domain with a space is left out
  std::vector<sts::CachedPolicy> out;
  std::string error;
  REQUIRE(sts::decodeCache(text, 1500, 10, out, error));
  REQUIRE(out.size() == 2);  // a.test expired at 1000
  CHECK(out[0].domain == "b.test");
  CHECK(out[0].policy.mode == sts::Mode::Testing);
  CHECK(out[0].policy.mx == std::vector<std::string>{"*.mx.test", "mx.other.test"});
  CHECK(out[0].policy.id == "id1");
  CHECK(out[1].domain == "c.test");
  CHECK(out[1].policy.mode == sts::Mode::None);
  // An expiry further off than max_age (the clock went back): no more than max_age from now.
  REQUIRE(sts::decodeCache("moat-mta-sts-cache 1\nd.test 99999999 x none 60 -\nend 1\n", 1000, 10, out, error));
  REQUIRE(out.size() == 1);
  CHECK(out[0].expires == 1060);
  // Bounds: entries and bytes, the policies that expire last kept.
  CHECK(sts::encodeCache({a, b, c}, 1, 1 << 20) ==
        "moat-mta-sts-cache 1\nb.test 3000 id1 testing 604800 *.mx.test,mx.other.test\nend 1\n");
  CHECK(sts::encodeCache({a, b, c}, 10, 100).size() <= 100);
  CHECK_FALSE(sts::decodeCache(text, 0, 2, out, error));  // more than maxEntries
  // Each field.
  for (const char* line : {"x.test 12a id1 none 60 -", "x.test 100 bad-id none 60 -", "x.test 100 id1 sometimes 60 -",
                           "x.test 100 id1 none 31557601 -", "x.test 100 id1 testing 60 bad/mx",
                           "x.test 100 id1 none 60", "x.test 100 id1 none 60 - extra"}) {
    INFO(line);
    CHECK_FALSE(sts::decodeCache(std::string("moat-mta-sts-cache 1\n") + line + "\nend 1\n", 0, 10, out, error));
    CHECK_FALSE(error.empty());
  }
}

TEST_CASE("MTA-STS cache: a policy near its expiry is refreshed in the background") {
  Fixture f;
  bool answered = false;
  auto first = f.get(answered);
  REQUIRE(first);
  CHECK(first->mode == sts::Mode::Enforce);
  // More than a quarter of max_age (86400) left: 26400 s. No refresh.
  f.cache->advanceClockForTest(std::chrono::seconds(60000));
  CHECK(f.get(answered) == first);
  CHECK_FALSE(f.cache->fetching(kDomain));
  SECTION("the record is gone: no refresh (RFC 8461 §8.3), the policy runs out") {
    f.cache->advanceClockForTest(std::chrono::seconds(20000));
    f.resolver.txt.clear();
    CHECK(f.get(answered) == first);
    CHECK_FALSE(f.cache->fetching(kDomain));
    CHECK(f.server->requests.size() == 1);
    f.cache->advanceClockForTest(std::chrono::seconds(6400));
    CHECK_FALSE(f.get(answered));
    return;
  }
  // The same id, with less than a quarter left: 6400 s.
  f.cache->advanceClockForTest(std::chrono::seconds(20000));
  f.server->reply = ok("version: STSv1\r\nmode: testing\r\nmx: *.example.test\r\nmax_age: 604800\r\n");
  f.server->silent = true;  // the refresh hangs: the delivery must not wait for it
  auto second = f.get(answered, 3000);
  REQUIRE(answered);
  CHECK(second == first);  // answered with the cached policy at once
  CHECK(f.cache->fetching(kDomain));
  REQUIRE(f.loop.runUntil([&] { return !f.cache->fetching(kDomain); }, 5000));  // timed out
  CHECK(f.server->requests.size() == 2);
  // It failed: the cached policy stays in force. The next use refreshes again, and this time
  // the host answers.
  f.server->silent = false;
  auto third = f.get(answered);
  CHECK(third == first);
  REQUIRE(f.loop.runUntil([&] { return !f.cache->fetching(kDomain); }, 5000));
  CHECK(f.server->requests.size() == 3);
  auto fourth = f.get(answered);
  REQUIRE(fourth);
  CHECK(fourth->mode == sts::Mode::Testing);
  CHECK(fourth->id == "one");
  CHECK(fourth->maxAge == 604800);
  // Fresh again: no further refresh.
  auto fifth = f.get(answered);
  CHECK(fifth == fourth);
  CHECK_FALSE(f.cache->fetching(kDomain));
  CHECK(f.server->requests.size() == 3);
}

TEST_CASE("MTA-STS fetch: every address of the policy host is tried in order") {
  Fixture f;
  // [::1] first (resolveHost puts IPv6 first); nothing listens there on the server's port.
  f.resolver.aaaa["mta-sts.example.test"] = "::1";
  SECTION("the next address answers") {
    bool answered = false;
    auto p = f.get(answered);
    REQUIRE(answered);
    REQUIRE(p);
    CHECK(p->mode == sts::Mode::Enforce);
    CHECK(f.resolver.aaaaQueries == 1);
  }
  SECTION("queue.ip_versions leaves IPv6 out: not asked for") {
    bool answered = false;
    std::shared_ptr<const sts::Policy> out;
    f.cache->get(kDomain, f.clientTls, 3000, dns::Families{true, false}, [&](auto p, bool) {
      out = p;
      answered = true;
    });
    REQUIRE(f.loop.runUntil([&] { return answered; }, 5000));
    CHECK(out);
    CHECK(f.resolver.aaaaQueries == 0);
  }
  SECTION("all fail: each one's error") {
    std::string error;
    bool done = false;
    sts::fetchPolicy(f.loop.get(), f.resolver, kDomain, f.clientTls, 3000, 1,  // port 1: nothing listens
                     [&](std::shared_ptr<sts::Policy> p, const std::string& e) {
                       CHECK_FALSE(p);
                       error = e;
                       done = true;
                     });
    REQUIRE(f.loop.runUntil([&] { return done; }, 5000));
    CHECK(error.find("[::1]:1: ") != std::string::npos);
    CHECK(error.find("127.0.0.1:1: ") != std::string::npos);
  }
}

TEST_CASE("MTA-STS cache: stop() cancels a fetch at once, its callers are told") {
  Fixture f;
  f.server->silent = true;
  std::vector<bool> stopped;
  for (int i = 0; i < 2; ++i)
    f.cache->get(kDomain, f.clientTls, 60'000, [&](std::shared_ptr<const sts::Policy> p, bool s) {
      CHECK_FALSE(p);
      stopped.push_back(s);
    });
  REQUIRE(f.loop.runUntil([&] { return f.server->requests.size() == 1; }, 5000));
  CHECK(stopped.empty());
  f.cache->stop();
  CHECK(stopped == std::vector<bool>{true, true});
  CHECK_FALSE(f.cache->fetching(kDomain));
  // Nothing more is fetched; what needs a fetch is answered `stopped` too.
  bool answered = false, wasStopped = false;
  f.cache->get(kDomain, f.clientTls, 60'000, [&](std::shared_ptr<const sts::Policy>, bool s) {
    answered = true;
    wasStopped = s;
  });
  REQUIRE(f.loop.runUntil([&] { return answered; }, 5000));
  CHECK(wasStopped);
  CHECK(f.server->requests.size() == 1);
}

namespace {
// A policy whose line in the cache file takes about 24 KiB: 100 mx patterns (the most
// parsePolicy takes) of 240 octets.
std::string bigPolicy() {
  std::string body = "version: STSv1\r\nmode: testing\r\nmax_age: 86400\r\n";
  for (int i = 0; i < 100; ++i) {
    std::string label = "mx" + std::to_string(i) + ".";
    body += "mx: " + label + std::string(240 - label.size() - 5, 'a') + ".test\r\n";
  }
  return body;
}
}  // namespace

TEST_CASE("MTA-STS cache: bounded by the octets the file holds, the least recently used evicted") {
  Fixture f;
  f.server->reply = ok(bigPolicy());
  // The certificate names mta-sts.example.test only: these domains' hosts go unverified.
  std::string error;
  auto noVerify = tls::TlsContext::client(false, "", error);
  REQUIRE(noVerify);
  auto domain = [](int i) { return "d" + std::to_string(i) + ".test"; };
  constexpr int kDomains = 60;  // 60 x 24 KiB: well over the file's 1 MiB, far under 10,000 policies
  for (int i = 0; i < kDomains; ++i) {
    f.resolver.txt["_mta-sts." + domain(i)] = {"v=STSv1; id=one"};
    f.resolver.a["mta-sts." + domain(i)] = "127.0.0.1";
  }
  auto get = [&](int i) {
    std::shared_ptr<const sts::Policy> out;
    bool answered = false;
    f.cache->get(domain(i), noVerify, 3000, [&](std::shared_ptr<const sts::Policy> p, bool) {
      out = std::move(p);
      answered = true;
    });
    REQUIRE(f.loop.runUntil([&] { return answered; }, 5000));
    return out;
  };
  // About 40 fit: half of them first, all kept.
  constexpr int kHalf = kDomains / 2;
  for (int i = 0; i < kHalf; ++i) REQUIRE(get(i));
  REQUIRE(f.server->requests.size() == kHalf);
  CHECK(f.cache->size() == kHalf);
  REQUIRE(get(0));  // used again: from the cache, and now the most recently used
  CHECK(f.server->requests.size() == kHalf);
  for (int i = kHalf; i < kDomains; ++i) {
    auto p = get(i);
    REQUIRE(p);
    CHECK(p->mx.size() == 100);
  }
  CHECK(f.server->requests.size() == kDomains);
  // Fewer policies than were fetched, and what is left would fit the file.
  CHECK(f.cache->size() < static_cast<size_t>(kDomains));
  CHECK(f.cache->size() * sts::cacheLineBytes(domain(kDomains - 1), *get(kDomains - 1)) <=
        sts::PolicyCache::kMaxFileBytes);
  CHECK(f.server->requests.size() == kDomains);  // the last one is still cached
  // d0 was used after d1..d29: d1 made room, d0 did not.
  const size_t before = f.server->requests.size();
  REQUIRE(get(0));
  CHECK(f.server->requests.size() == before);
  REQUIRE(get(1));
  CHECK(f.server->requests.size() == before + 1);  // fetched again
}

TEST_CASE("MTA-STS cache: the sweep refreshes policies near their expiry and drops the expired") {
  Fixture f;
  bool answered = false;
  auto first = f.get(answered);
  REQUIRE(first);
  REQUIRE(f.server->requests.size() == 1);
  // More than a quarter of max_age (86400) left: the sweep leaves it alone.
  f.cache->advanceClockForTest(std::chrono::seconds(60000));
  CHECK(f.cache->sweep(f.clientTls, 3000, {}) == 0);
  CHECK_FALSE(f.cache->sweeping());
  // Less than a quarter left, and no mail to the domain: the sweep refreshes it.
  f.cache->advanceClockForTest(std::chrono::seconds(20000));
  f.server->reply = ok("version: STSv1\r\nmode: testing\r\nmx: *.example.test\r\nmax_age: 604800\r\n");
  CHECK(f.cache->sweep(f.clientTls, 3000, {}) == 1);
  REQUIRE(f.loop.runUntil([&] { return !f.cache->sweeping(); }, 5000));
  CHECK(f.server->requests.size() == 2);
  // The next delivery finds the fresh policy, under the same id, and fetches nothing.
  auto second = f.get(answered);
  REQUIRE(second);
  CHECK(second->mode == sts::Mode::Testing);
  CHECK(second->id == "one");
  CHECK(f.server->requests.size() == 2);
  SECTION("no record any more (RFC 8461 §8.3): not refreshed, dropped once expired") {
    f.resolver.txt.clear();
    f.cache->advanceClockForTest(std::chrono::seconds(604800 - 3600));
    CHECK(f.cache->sweep(f.clientTls, 3000, {}) == 1);
    REQUIRE(f.loop.runUntil([&] { return !f.cache->sweeping(); }, 5000));
    CHECK(f.server->requests.size() == 2);
    CHECK(f.cache->size() == 1);
    f.cache->advanceClockForTest(std::chrono::seconds(3600));
    CHECK(f.cache->sweep(f.clientTls, 3000, {}) == 0);
    CHECK(f.cache->size() == 0);
    CHECK(f.cache->bytes() == 0);
  }
  SECTION("a failed refresh keeps the policy in force until it expires") {
    f.server->silent = true;
    f.cache->advanceClockForTest(std::chrono::seconds(604800 - 3600));
    CHECK(f.cache->sweep(f.clientTls, 300, {}) == 1);
    REQUIRE(f.loop.runUntil([&] { return !f.cache->sweeping(); }, 5000));
    CHECK(f.server->requests.size() == 3);
    CHECK(f.cache->size() == 1);
    f.server->silent = false;
    f.resolver.a.clear();  // the delivery's own refresh fails too
    auto third = f.get(answered);
    CHECK(third == second);
  }
  SECTION("many due at once: a few at a time, all of them in the end") {
    std::string error;
    auto noVerify = tls::TlsContext::client(false, "", error);
    REQUIRE(noVerify);
    constexpr int kDomains = 20;  // over kMaxSweepFetches
    for (int i = 0; i < kDomains; ++i) {
      std::string d = "s" + std::to_string(i) + ".test";
      f.resolver.txt["_mta-sts." + d] = {"v=STSv1; id=one"};
      f.resolver.a["mta-sts." + d] = "127.0.0.1";
      bool got = false;
      f.cache->get(d, noVerify, 3000, [&](std::shared_ptr<const sts::Policy> p, bool) {
        CHECK(p);
        got = true;
      });
      REQUIRE(f.loop.runUntil([&] { return got; }, 5000));
    }
    REQUIRE(f.server->requests.size() == 2 + kDomains);
    f.cache->advanceClockForTest(std::chrono::seconds(604800 - 3600));
    CHECK(f.cache->sweep(noVerify, 3000, {}) == kDomains + 1);
    size_t most = 0;  // fetches under way at once, as seen between loop turns
    REQUIRE(f.loop.runUntil(
        [&] {
          size_t now = f.cache->fetching(kDomain);
          for (int i = 0; i < kDomains; ++i) now += f.cache->fetching("s" + std::to_string(i) + ".test");
          most = std::max(most, now);
          return !f.cache->sweeping();
        },
        10000));
    CHECK(most <= sts::PolicyCache::kMaxSweepFetches);
    CHECK(f.server->requests.size() == 2 + 2 * kDomains + 1);
    CHECK(f.cache->sweep(noVerify, 3000, {}) == 0);  // all fresh again
  }
}

TEST_CASE("HTTPS exchange: a POST with its body, the reply's status, TLS and time bounds") {
  Fixture f;
  f.resolver.a["reports.example.test"] = "127.0.0.1";
  auto run = [&](const std::string& host, uint64_t timeoutMs, int& status, std::string& error) {
    https::Request r;
    r.host = host;
    r.port = f.server->port();
    r.what = "report upload";
    r.text = "POST /v1 HTTP/1.1\r\nHost: " + host +
             "\r\nContent-Type: application/tlsrpt+gzip\r\n"
             "Content-Length: 5\r\nConnection: close\r\n\r\n" +
             std::string("ab\0cd", 5);
    bool done = false;
    https::exchange(f.loop.get(), f.resolver, f.clientTls, timeoutMs, r,
                    [&](const sts::HttpResponse* resp, const std::string& e) {
                      status = resp ? resp->status() : 0;
                      error = e;
                      done = true;
                    });
    f.loop.runUntil([&] { return done; }, timeoutMs + 2000);
    REQUIRE(done);
  };
  int status = 0;
  std::string error;
  f.server->reply = "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
  // The test certificate names mta-sts.example.test: that name verifies.
  f.resolver.a["mta-sts.example.test"] = "127.0.0.1";
  run("mta-sts.example.test", 3000, status, error);
  CHECK(error.empty());
  CHECK(status == 202);
  REQUIRE(f.server->requests.size() == 1);
  const std::string& got = f.server->requests[0];
  CHECK(got.rfind("POST /v1 HTTP/1.1\r\n", 0) == 0);
  CHECK(got.substr(got.size() - 5) == std::string("ab\0cd", 5));
  // A 500 is a whole response too: the caller decides.
  f.server->reply = "HTTP/1.1 500 Oops\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno";
  run("mta-sts.example.test", 3000, status, error);
  CHECK(status == 500);
  // A certificate that does not name the host fails in TLS, before anything is sent.
  const size_t before = f.server->requests.size();
  run("reports.example.test", 3000, status, error);
  CHECK(status == 0);
  CHECK(error.find("TLS") != std::string::npos);
  CHECK(f.server->requests.size() == before);
  // A server that never answers: one bound for the whole exchange.
  f.server->silent = true;
  run("mta-sts.example.test", 300, status, error);
  CHECK(status == 0);
  CHECK(error.rfind("report upload timed out", 0) == 0);
  // No address: said so.
  run("nowhere.example.test", 3000, status, error);
  CHECK(error.find("nowhere.example.test: no address") == 0);
}
