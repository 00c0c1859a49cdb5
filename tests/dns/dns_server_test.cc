// Tests for tests/support/dns_server.py through the real resolver: the zone semantics of
// the public SPF suite (conformance/README.md "Format") that the SPF, DKIM and DMARC
// end-to-end tests rely on.
#include <catch2/catch.hpp>

#include <algorithm>

#include "tests/dns/dns_test_util.h"
#include "tests/support/test_dns_server.h"

using namespace moat::mta;
using namespace moat::mta::dns;
using moat::test::ask;
using moat::test::optionsFor;
using moat::test::TestDnsServer;
using moat::test::TestDnsServerOptions;

TEST_CASE("dns_server: SPF entries are also TXT unless the name has explicit TXT") {
  TestDnsServer server(R"(zonedata:
  spfonly.example.net:
    - SPF: v=spf1 +all
  both.example.net:
    - SPF: v=spf1 -all
    - TXT: v=spf1 ~all
  none.example.net:
    - SPF: v=spf1 -all
    - TXT: NONE
)");
  REQUIRE(server.ok());
  uv::Loop loop;
  CaresResolver r(loop.get(), optionsFor(server.nameserver()));
  auto a = ask(loop, r, "spfonly.example.net", RrType::TXT);
  REQUIRE(a.status == Status::Ok);
  REQUIRE(a.txt == std::vector<std::string>{"v=spf1 +all"});
  REQUIRE(ask(loop, r, "both.example.net", RrType::TXT).txt == std::vector<std::string>{"v=spf1 ~all"});
  REQUIRE(ask(loop, r, "none.example.net", RrType::TXT).status == Status::NoData);
}

TEST_CASE("dns_server: TIMEOUT answers only the types listed before it, and SERVFAIL forms") {
  TestDnsServer server(R"(zonedata:
  partial.example.net:
    - TXT: v=spf1 -all
    - TIMEOUT
    - A: 192.0.2.1
  all.example.net:
    - TIMEOUT: true
  sf.example.net:
    - SERVFAIL: true
)");
  REQUIRE(server.ok());
  uv::Loop loop;
  CaresResolver r(loop.get(), optionsFor(server.nameserver(), 200, 1));
  REQUIRE(ask(loop, r, "partial.example.net", RrType::TXT).status == Status::Ok);
  REQUIRE(ask(loop, r, "partial.example.net", RrType::A).status == Status::TempFail);
  REQUIRE(ask(loop, r, "all.example.net", RrType::TXT).status == Status::TempFail);
  REQUIRE(ask(loop, r, "sf.example.net", RrType::A).status == Status::TempFail);
}

TEST_CASE("dns_server: a scenario of the SPF suite file is served as the suite means it") {
  TestDnsServerOptions o;
  o.zoneFile = std::string(MOAT_SHARED_DIR) + "/conformance/spf/rfc7208-tests.yml";
  o.scenario = 1;  // "Record lookup"
  TestDnsServer server(o);
  REQUIRE(server.ok());
  uv::Loop loop;
  CaresResolver r(loop.get(), optionsFor(server.nameserver(), 200, 1));
  auto both = ask(loop, r, "both.example.net", RrType::TXT);
  REQUIRE(both.txt == std::vector<std::string>{"v=spf1 -all"});
  REQUIRE(ask(loop, r, "spftimeout.example.net", RrType::TXT).status == Status::Ok);
  REQUIRE(ask(loop, r, "txttimeout.example.net", RrType::TXT).status == Status::TempFail);
  REQUIRE(ask(loop, r, "spfonly.example.net", RrType::TXT).status == Status::NoData);
  REQUIRE(ask(loop, r, "unlisted.example.net", RrType::TXT).status == Status::NxDomain);
}

TEST_CASE("dns_server: a multi-document file without --scenario is refused") {
  TestDnsServerOptions o;
  o.zoneFile = std::string(MOAT_SHARED_DIR) + "/conformance/spf/rfc7208-tests.yml";
  o.startTimeoutMs = 5000;
  TestDnsServer server(o);
  REQUIRE_FALSE(server.ok());
  REQUIRE_THAT(server.error(), Catch::Contains("--scenario"));
}

TEST_CASE("dns_server: TXT strings over 255 octets are split, answers too big for UDP go over TCP") {
  std::string big(300, 'k');
  std::string zone = "zonedata:\n  big.example.net:\n";
  for (int i = 0; i < 6; ++i) zone += "    - TXT: " + std::to_string(i) + big + "\n";
  TestDnsServer server(zone);
  REQUIRE(server.ok());
  uv::Loop loop;
  CaresResolver r(loop.get(), optionsFor(server.nameserver()));
  auto a = ask(loop, r, "big.example.net", RrType::TXT);
  REQUIRE(a.status == Status::Ok);
  REQUIRE(a.txt.size() == 6);
  for (const auto& t : a.txt) REQUIRE(t.size() == 301);
  std::sort(a.txt.begin(), a.txt.end());
  REQUIRE(a.txt[0] == "0" + big);
}

TEST_CASE("dns_server: restart serves again on the same port") {
  TestDnsServer server("zonedata:\n  x.example.net:\n    - A: 192.0.2.7\n");
  REQUIRE(server.ok());
  uint16_t port = server.port();
  server.stop();
  REQUIRE(server.restart());
  REQUIRE(server.port() == port);
  uv::Loop loop;
  CaresResolver r(loop.get(), optionsFor(server.nameserver()));
  REQUIRE(ask(loop, r, "x.example.net", RrType::A).addresses.at(0).str() == "192.0.2.7");
}
