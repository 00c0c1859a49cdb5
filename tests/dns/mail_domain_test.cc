// Tests for mta/dns/mail_domain.h against a real authoritative server on loopback: an MX, or
// no MX and an address record, makes a domain one that mail can be sent to; a null MX and a
// failed lookup are told apart from a domain that does not exist.
#include "mta/dns/mail_domain.h"

#include <catch2/catch.hpp>
#include <memory>
#include <optional>

#include "tests/dns/dns_test_util.h"
#include "tests/support/test_dns_server.h"

using namespace moat::mta;
using namespace moat::mta::dns;

namespace {

const char* kZone = R"(zonedata:
  mx.example.test:
    - MX: [10, host.example.test]
  host.example.test:
    - A: 192.0.2.1
  v6.example.test:
    - AAAA: 2001:db8::1
  nullmx.example.test:
    - MX: [0, "."]
    - A: 192.0.2.2
  twomx.example.test:
    - MX: [0, "."]
    - MX: [10, host.example.test]
  txt.example.test:
    - TXT: v=spf1 -all
  slow.example.test:
    - TIMEOUT
  slowaddr.example.test:
    - MX: [10, host.example.test]
    - TIMEOUT
  noaddr.example.test:
    - TXT: only text
  broken.example.test:
    - SERVFAIL: true
)";

struct Fixture {
  moat::test::TestDnsServer server{kZone};
  uv::Loop loop;
  std::unique_ptr<CaresResolver> r;
  Fixture() {
    REQUIRE(server.ok());
    r = std::make_unique<CaresResolver>(loop.get(), moat::test::optionsFor(server.nameserver(), 500, 1));
    REQUIRE(r->ok());
  }
  ~Fixture() { r.reset(); }  // before the loop
  MailDomain find(const std::string& name) {
    std::optional<MailDomain> got;
    findMailDomain(*r, name, [&](MailDomain d) { got = d; });
    REQUIRE(loop.runUntil([&] { return got.has_value(); }, 8000));
    return *got;
  }
};

}  // namespace

TEST_CASE("a domain with an MX, or without one and with an A or AAAA record, exists for mail") {
  Fixture f;
  CHECK(f.find("mx.example.test") == MailDomain::Exists);
  CHECK(f.find("host.example.test") == MailDomain::Exists);
  CHECK(f.find("v6.example.test") == MailDomain::Exists);
  // An MX answer decides: its address records are not asked for.
  CHECK(f.find("slowaddr.example.test") == MailDomain::Exists);
  CHECK(f.server.queryCount("mx.example.test", "A") == 0);
  CHECK(f.server.queryCount("host.example.test", "A") == 1);
}

TEST_CASE("a null MX, a missing domain and a failed lookup are three outcomes") {
  Fixture f;
  CHECK(f.find("nullmx.example.test") == MailDomain::NullMx);
  // A null MX among other MX records is the domain's error: its other hosts take mail.
  CHECK(f.find("twomx.example.test") == MailDomain::Exists);
  CHECK(f.find("nowhere.example.test") == MailDomain::NotFound);  // NXDOMAIN
  CHECK(f.find("txt.example.test") == MailDomain::NotFound);      // neither MX nor addresses
  CHECK(f.find("slow.example.test") == MailDomain::TempFail);
  CHECK(f.find("broken.example.test") == MailDomain::TempFail);
  CHECK(f.find(std::string(64, 'a') + ".example.test") == MailDomain::NotFound);  // malformed
  CHECK(mailDomainName(MailDomain::NullMx) == "null_mx");
}
