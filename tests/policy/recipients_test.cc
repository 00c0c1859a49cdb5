// Tests for policy/recipients.h: the [relay] recipients table, as the RCPT check asks it.
#include "policy/recipients.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>

#include "tests/support/temp_file.h"

using moat::policy::Errors;
using moat::policy::RecipientTable;

namespace {
std::string writeTemp(const std::string& text) { return moat::test::writeTempFile("recipients", text); }
}  // namespace

TEST_CASE("the recipient table takes listed addresses, whole domains and subaddresses") {
  auto path = writeTemp(
      "# who exists\nalice@example.test\n  Bob.Smith@Example.TEST  \r\n\n@catchall.test\n"
      "j\xc3\xb6rg@example.test\n");
  Errors errors;
  auto t = RecipientTable::load(path, errors);
  INFO(errors.str());
  REQUIRE(t);
  REQUIRE(t->size() == 4);
  REQUIRE(t->covers("example.test"));
  REQUIRE(t->covers("catchall.test"));
  REQUIRE_FALSE(t->covers("other.test"));
  REQUIRE(t->accepts("alice@example.test"));
  REQUIRE(t->accepts("ALICE@example.TEST"));
  REQUIRE(t->accepts("bob.smith@example.test"));
  REQUIRE(t->accepts("alice+lists@example.test"));  // RFC 5233 subaddress
  REQUIRE(t->accepts("j\xc3\xb6rg@example.test"));
  REQUIRE_FALSE(t->accepts("mallory@example.test"));
  REQUIRE_FALSE(t->accepts("mallory+alice@example.test"));
  REQUIRE(t->accepts("anyone@sub.example.test"));  // a subdomain is a domain of its own
  REQUIRE(t->accepts("anyone@catchall.test"));
  REQUIRE(t->accepts("anyone@other.test"));  // a domain the file does not name is not checked
  REQUIRE_FALSE(t->accepts("no-at-sign"));
  unlink(path.c_str());
}

TEST_CASE("a bad recipients file is refused with FILE:LINE for every bad line") {
  auto path = writeTemp("alice@example.test\nnot an address\nbob@\n<carol@example.test>\n@\n");
  Errors errors;
  REQUIRE_FALSE(RecipientTable::load(path, errors));
  std::string all = errors.str();
  INFO(all);
  REQUIRE(errors.all().size() == 4);
  REQUIRE(all.find(path + ":2: \"not an address\" is not an address or @domain") != std::string::npos);
  REQUIRE(all.find(path + ":3: \"bob@\"") != std::string::npos);
  REQUIRE(all.find(path + ":4: \"<carol@example.test>\"") != std::string::npos);
  REQUIRE(all.find(path + ":5: \"@\"") != std::string::npos);
  unlink(path.c_str());
}

TEST_CASE("a recipients file that cannot be read is refused with its path") {
  Errors errors;
  REQUIRE_FALSE(RecipientTable::load("/nonexistent/moat-recipients", errors));
  REQUIRE(errors.str().find("/nonexistent/moat-recipients: cannot read the recipients file") != std::string::npos);
}
