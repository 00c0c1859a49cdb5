// Tests for mta/dns/client_name: host name validation, and FCrDNS through the real c-ares
// resolver against a real authoritative server on loopback (tests/support/dns_server.py):
// a name counts only if it resolves back to the client, at most kMaxClientNames are asked
// about, bad PTR names are never used, and a silent server ends in "" within the deadline.
#include "mta/dns/client_name.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <optional>

#include "tests/dns/dns_test_util.h"
#include "tests/support/test_dns_server.h"

using namespace moat::mta;
using namespace moat::mta::dns;
using moat::test::optionsFor;
using moat::test::TestDnsServer;

namespace {

std::string manyNames() {
  std::string z;
  for (int i = 1; i <= 12; ++i) z += "    - PTR: n" + std::to_string(i) + ".example.test\n";
  return z;
}

const std::string kZone = R"(zonedata:
  1.2.0.192.in-addr.arpa:
    - PTR: Mail.Example.TEST.
  mail.example.test:
    - A: 192.0.2.1
    - AAAA: 2001:db8::1
  2.2.0.192.in-addr.arpa:
    - PTR: liar.example.test
  liar.example.test:
    - A: 192.0.2.99
  3.2.0.192.in-addr.arpa:
    - PTR: nowhere.example.test
    - PTR: second.example.test
  second.example.test:
    - A: 192.0.2.3
  4.2.0.192.in-addr.arpa:
    - PTR: "bad_name.example.test"
  bad_name.example.test:
    - A: 192.0.2.4
  5.2.0.192.in-addr.arpa:
    - TIMEOUT
  6.2.0.192.in-addr.arpa:
)" + manyNames() + R"(  n11.example.test:
    - A: 192.0.2.6
  n12.example.test:
    - A: 192.0.2.6
  1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa:
    - PTR: mail.example.test
  7.2.0.192.in-addr.arpa:
    - PTR: slow.example.test
  slow.example.test:
    - TIMEOUT
)";

struct Fixture {
  TestDnsServer server{kZone};
  uv::Loop loop;
  std::unique_ptr<CaresResolver> r;
  explicit Fixture(unsigned timeoutMs = 1000) {
    REQUIRE(server.ok());
    r = std::make_unique<CaresResolver>(loop.get(), optionsFor(server.nameserver(), timeoutMs, 2));
    REQUIRE(r->ok());
  }
  ~Fixture() { r.reset(); }  // before the loop
  std::string verify(const std::string& ip, uint64_t waitMs = 8000) {
    std::optional<std::string> got;
    verifyClientName(*r, *IpAddress::parse(ip), [&](std::string name) {
      REQUIRE_FALSE(got.has_value());  // exactly once
      got = std::move(name);
    });
    REQUIRE(loop.runUntil([&] { return got.has_value(); }, waitMs));
    return *got;
  }
  ClientName lookUp(const std::string& ip) {
    std::optional<ClientName> got;
    lookUpClientName(*r, *IpAddress::parse(ip), [&](ClientName n) {
      REQUIRE_FALSE(got.has_value());  // exactly once
      got = std::move(n);
    });
    REQUIRE(loop.runUntil([&] { return got.has_value(); }, 8000));
    return *got;
  }
};

}  // namespace

TEST_CASE("client name: host names are LDH labels, lower-cased, without the trailing dot") {
  CHECK(normalizeHostname("Mail.Example.TEST.") == "mail.example.test");
  CHECK(normalizeHostname("mx-1.example.test") == "mx-1.example.test");
  CHECK(normalizeHostname("localhost") == "localhost");
  CHECK(normalizeHostname("1.2.3.example") == "1.2.3.example");
  CHECK(normalizeHostname(std::string(63, 'a') + ".test") == std::string(63, 'a') + ".test");
  // 253 octets, the most a name has in text form (RFC 1035 §2.3.4's 255 in the wire form):
  // three labels of 63, one of 61, three dots.
  const std::string longest =
      std::string(63, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') + "." + std::string(61, 'd');
  REQUIRE(longest.size() == 253);
  CHECK(normalizeHostname(longest) == longest);
  CHECK(normalizeHostname(longest + ".") == longest);

  CHECK_FALSE(normalizeHostname(""));
  CHECK_FALSE(normalizeHostname("."));
  CHECK_FALSE(normalizeHostname(longest + "x"));                   // 254 octets
  CHECK_FALSE(normalizeHostname(std::string(64, 'a') + ".test"));  // a label over 63
  CHECK_FALSE(normalizeHostname("a..test"));                       // an empty label
  CHECK_FALSE(normalizeHostname(".a.test"));
  CHECK_FALSE(normalizeHostname("a.test.."));
  CHECK_FALSE(normalizeHostname("-a.test"));  // hyphen at a label's edge
  CHECK_FALSE(normalizeHostname("a-.test"));
  CHECK_FALSE(normalizeHostname("a.test-"));
  CHECK_FALSE(normalizeHostname("bad_name.test"));
  CHECK_FALSE(normalizeHostname("a b.test"));
  CHECK_FALSE(normalizeHostname("a\\032b.test"));  // c-ares' escape of a space
  CHECK_FALSE(normalizeHostname("a\\.b.test"));    // a dot inside a label
  CHECK_FALSE(normalizeHostname("(forged) [192.0.2.1]"));
  CHECK_FALSE(normalizeHostname("caf\xc3\xa9.test"));  // 8-bit
  CHECK_FALSE(normalizeHostname(std::string_view("a\0b.test", 8)));
  CHECK_FALSE(normalizeHostname("a.test\r\nX-Injected: yes"));
  CHECK_FALSE(normalizeHostname("192.0.2.1"));  // numeric: looks like an address
  CHECK_FALSE(normalizeHostname("192.0.2.1."));
}

TEST_CASE("client name: a PTR name whose address is the client's is verified, lower-cased") {
  Fixture f;
  CHECK(f.verify("192.0.2.1") == "mail.example.test");
  CHECK(f.verify("2001:db8::1") == "mail.example.test");       // AAAA for an IPv6 client
  CHECK(f.verify("::ffff:192.0.2.1") == "mail.example.test");  // IPv4-mapped: the IPv4 address
  CHECK(f.server.queryCount("mail.example.test", "AAAA") == 1);
}

TEST_CASE("client name: a name that does not point back, or none at all, is not verified") {
  Fixture f;
  CHECK(f.verify("192.0.2.2") == "");                     // liar.example.test has another address
  CHECK(f.verify("192.0.2.77") == "");                    // no PTR record
  CHECK(f.verify("192.0.2.3") == "second.example.test");  // the first name that points back
  CHECK(f.verify("192.0.2.4") == "");                     // an invalid name is never looked up nor used
  CHECK(f.server.queryCount("bad_name.example.test", "A") == 0);
}

TEST_CASE("client name: at most kMaxClientNames PTR names are looked up") {
  Fixture f;
  CHECK(f.verify("192.0.2.6") == "");  // only n11 and n12 point back: past the bound
  CHECK(f.server.queryCount("n10.example.test", "A") == 1);
  CHECK(f.server.queryCount("n11.example.test", "A") == 0);
  CHECK(f.server.queryCount("n12.example.test", "A") == 0);
}

TEST_CASE("client name: a server that does not answer ends in no name, within the deadline") {
  Fixture f(500);
  auto t0 = std::chrono::steady_clock::now();
  CHECK(f.verify("192.0.2.5", 3000) == "");
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(1500));
}

TEST_CASE("client name: the resolver going away calls back once, with no name") {
  Fixture f(5000);
  std::optional<std::string> got;
  verifyClientName(*f.r, *IpAddress::parse("192.0.2.5"), [&](std::string name) { got = std::move(name); });
  f.r.reset();
  REQUIRE(got.has_value());
  CHECK(*got == "");
}

TEST_CASE("client name: the lookup says why there is no name, a DNS failure apart") {
  Fixture f(500);
  using S = ClientName::Status;
  auto n = f.lookUp("192.0.2.1");
  CHECK(n.status == S::Confirmed);
  CHECK(n.name == "mail.example.test");
  CHECK(f.lookUp("192.0.2.2").status == S::NotConfirmed);  // a name elsewhere
  CHECK(f.lookUp("192.0.2.77").status == S::NoPtr);        // NXDOMAIN
  CHECK(f.lookUp("192.0.2.4").status == S::NoPtr);         // only an invalid name
  CHECK(f.lookUp("192.0.2.5").status == S::TempFail);      // the PTR lookup times out
  CHECK(f.lookUp("192.0.2.7").status == S::TempFail);      // the name's lookup times out
  // A name that points back wins over one that does not exist.
  CHECK(f.lookUp("192.0.2.3").status == S::Confirmed);
  CHECK(f.lookUp("192.0.2.2").name.empty());
  CHECK(clientNameStatusName(S::NotConfirmed) == "not_confirmed");
}
