// Tests for filters/helo/helo.h: what a HELO/EHLO name is (Postfix's valid_hostname rules,
// address literals) and which names and literals are the gateway's own.
#include "filters/helo/helo.h"

#include <catch2/catch.hpp>
#include <fstream>

#include "policy/config.h"
#include "policy/errors.h"
#include "tests/support/temp_file.h"

using moat::filters::helo::classify;
using moat::filters::helo::Form;
using moat::filters::helo::OwnNames;

TEST_CASE("a HELO name is classified as invalid, a single label, a FQDN or an address literal") {
  CHECK(classify("mail.example.test") == Form::Fqdn);
  CHECK(classify("MAIL.Example.TEST.") == Form::Fqdn);   // the absolute form
  CHECK(classify("host_1.example.test") == Form::Fqdn);  // underscores, as Windows hosts send
  CHECK(classify("xn--bcher-kva.test") == Form::Fqdn);
  CHECK(classify("bücher.test") == Form::Fqdn);  // as its A-labels
  CHECK(classify("192.0.2.1") == Form::Fqdn);    // a bare address: Postfix takes it too
  CHECK(classify("localhost") == Form::Single);
  CHECK(classify("DESKTOP_7Q2") == Form::Single);
  CHECK(classify("[192.0.2.1]") == Form::Literal);
  CHECK(classify("[IPv6:2001:db8::1]") == Form::Literal);
  CHECK(classify("") == Form::Invalid);
  CHECK(classify(".") == Form::Invalid);
  CHECK(classify("bad..name.test") == Form::Invalid);
  CHECK(classify(".leading.test") == Form::Invalid);
  CHECK(classify("two.dots.test..") == Form::Invalid);
  CHECK(classify("-bad.test") == Form::Invalid);
  CHECK(classify("bad-.test") == Form::Invalid);
  CHECK(classify("bad!name.test") == Form::Invalid);
  CHECK(classify(std::string(64, 'a') + ".test") == Form::Invalid);  // a label over 63 octets
  CHECK(classify(std::string(63, 'a') + ".test") == Form::Fqdn);
  std::string long_name;
  for (int i = 0; i < 26; ++i) long_name += "abcdefghi.";  // 260 octets
  CHECK(classify(long_name + "test") == Form::Invalid);
  CHECK(classify("[1.2.3]") == Form::Invalid);
  CHECK(classify("[::1]") == Form::Invalid);  // an IPv6 literal needs its tag (RFC 5321 §4.1.3)
  CHECK(classify("[192.0.2.1") == Form::Invalid);
  CHECK(classify("b\xff\xfe.test") == Form::Invalid);  // not UTF-8
}

TEST_CASE("the gateway's own names are its hostname, routes' helo names, relay domains and listener addresses") {
  std::string path = moat::test::writeTempFile("helo-config", R"(
[server]
hostname = "MX.Example.Test"

[[listener]]
address = "192.0.2.25:25"

[[listener]]
address = "0.0.0.0:2587"

[relay]
domains = ["example.test", ".sub.example.test"]

[[route]]
domains = ["example.test"]
to = ["smtp:127.0.0.1:2526"]
helo_name = "out.example.test"
)",
                                               ".toml");
  moat::policy::Errors errors;
  auto config = moat::policy::loadConfig(path, errors);
  unlink(path.c_str());
  INFO(errors.str());
  REQUIRE(config);
  OwnNames own = OwnNames::of(*config);
  CHECK(own.matches("mx.example.test"));
  CHECK(own.matches("MX.EXAMPLE.TEST."));
  CHECK(own.matches("out.example.test"));
  CHECK(own.matches("example.test"));
  CHECK(own.matches("[192.0.2.25]"));
  CHECK_FALSE(own.matches("[0.0.0.0]"));         // a wildcard listener names no address
  CHECK_FALSE(own.matches("sub.example.test"));  // a `.domain` entry: its hosts may be anyone's
  CHECK_FALSE(own.matches("a.sub.example.test"));
  CHECK_FALSE(own.matches("[192.0.2.26]"));
  CHECK_FALSE(own.matches("client.example.net"));
  CHECK_FALSE(own.matches("192.0.2.25"));  // a name, not the literal
}
