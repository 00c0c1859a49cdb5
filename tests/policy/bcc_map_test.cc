// Tests for policy/bcc_map.h: blind-copy addresses by sender or recipient ([bcc] senders,
// recipients).
#include "policy/bcc_map.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>

#include "tests/support/temp_file.h"

using moat::policy::BccMap;
using moat::policy::Errors;

namespace {

std::shared_ptr<const BccMap> loadText(const std::string& text, Errors& errors) {
  auto path = moat::test::writeTempFile("bcc", text);
  auto map = BccMap::load(path, "sender BCC", errors);
  unlink(path.c_str());
  return map;
}

}  // namespace

TEST_CASE("a BCC map gives the most specific entry: address, then domain, then the longest subdomain entry") {
  Errors errors;
  auto map = loadText(
      "# archive copies\n"
      "CEO@Example.TEST      ceo-archive@Archive.test\n"
      "@example.test         journal@archive.test   # the whole domain\n"
      "  @.example.test      sub@archive.test  \r\n"
      "\n"
      "@.lab.example.test    lab@archive.test\n"
      "@lab.example.test     lab-itself@archive.test\n",
      errors);
  INFO(errors.str());
  REQUIRE(map);
  REQUIRE(map->size() == 5);
  REQUIRE(map->find("ceo@example.test") == "ceo-archive@Archive.test");  // as the file writes it
  REQUIRE(map->find("alice@example.test") == "journal@archive.test");
  REQUIRE(map->find("x@mail.example.test") == "sub@archive.test");
  REQUIRE(map->find("x@a.b.example.test") == "sub@archive.test");
  REQUIRE(map->find("x@lab.example.test") == "lab-itself@archive.test");  // the domain before a wildcard
  REQUIRE(map->find("x@pc1.lab.example.test") == "lab@archive.test");     // the longer wildcard first
  REQUIRE(map->find("x@a.pc1.lab.example.test") == "lab@archive.test");
  REQUIRE(map->find("x@notexample.test").empty());
  REQUIRE(map->find("x@other.test").empty());
}

TEST_CASE("a BCC map ignores ASCII case and a +tag, and never matches the null sender") {
  Errors errors;
  auto map = loadText("boss@corp.test  archive@archive.test\n@Sub.Corp.Test  sub@archive.test\n", errors);
  INFO(errors.str());
  REQUIRE(map);
  REQUIRE(map->find("BOSS@CORP.TEST") == "archive@archive.test");
  REQUIRE(map->find("boss+news@corp.test") == "archive@archive.test");  // RFC 5233
  REQUIRE(map->find("Boss+News@Corp.Test") == "archive@archive.test");
  REQUIRE(map->find("boss2@corp.test").empty());
  REQUIRE(map->find("anyone@SUB.corp.test") == "sub@archive.test");
  REQUIRE(map->find("").empty());  // the null sender
  REQUIRE(map->find("postmaster").empty());
  REQUIRE(map->find("@corp.test").empty());
}

TEST_CASE("an exact +tag entry wins over the address without it") {
  Errors errors;
  auto map = loadText("user@corp.test a@archive.test\nuser+legal@corp.test b@archive.test\n", errors);
  REQUIRE(map);
  REQUIRE(map->find("user+legal@corp.test") == "b@archive.test");
  REQUIRE(map->find("user+other@corp.test") == "a@archive.test");
}

TEST_CASE("a broken BCC map is refused with FILE:LINE for every bad line") {
  auto path = moat::test::writeTempFile("bcc",
                                        "ok@example.test archive@archive.test\n"  // 1
                                        "no-at-sign archive@archive.test\n"       // 2: not a key
                                        "@example.test\n"                         // 3: no BCC address
                                        "@example.test @archive.test\n"           // 4: a domain as BCC address
                                        "@.example.test not-an-address\n"         // 5
                                        "OK@example.test other@archive.test\n"    // 6: line 1's key again
                                        "a@example.test b@archive.test extra\n"   // 7: three fields
                                        "@. x@archive.test\n"                     // 8
                                        "<x@example.test> x@archive.test\n");     // 9
  Errors errors;
  REQUIRE_FALSE(BccMap::load(path, "sender BCC", errors));
  std::string s = errors.str();
  INFO(s);
  for (int line : {2, 3, 4, 5, 6, 7, 8, 9})
    REQUIRE(s.find(path + ":" + std::to_string(line) + ": ") != std::string::npos);
  REQUIRE(s.find(path + ":1:") == std::string::npos);
  REQUIRE(s.find("\"OK@example.test\" is already given at line 1") != std::string::npos);
  REQUIRE(s.find("\"@archive.test\" is not an address") != std::string::npos);
  REQUIRE(s.find("expected \"KEY BCC-ADDRESS\"") != std::string::npos);
  unlink(path.c_str());

  Errors missing;
  REQUIRE_FALSE(BccMap::load("/nonexistent/moat-bcc", "sender BCC", missing));
  REQUIRE(missing.str().find("cannot read the sender BCC file") != std::string::npos);
}
