// Tests for policy/client_credentials.h: the [[route]] auth_file that holds the one
// USERNAME:PASSWORD Moat gives a next hop's SMTP AUTH.
#include "policy/client_credentials.h"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>

#include "tests/support/temp_file.h"

using moat::policy::ClientCredentials;
using moat::policy::Errors;

TEST_CASE("the credentials line splits at the first colon, comments and blank lines are skipped") {
  Errors errors;
  auto c = ClientCredentials::parse("# relay.provider.test\n\n  relay-user@example.test:pa:ss w#rd  \r\n# end\n",
                                    "auth", errors);
  REQUIRE(c);
  CHECK_FALSE(errors.hasErrors());
  CHECK(c->username() == "relay-user@example.test");
  CHECK(c->password() == "pa:ss w#rd");
}

TEST_CASE("a bad credentials file is refused at FILE:LINE without showing the password") {
  struct Case {
    const char* text;
    int line;
    const char* says;
  };
  const Case cases[] = {
      {"# none\n\n", 2, "no USERNAME:PASSWORD line"},
      {"", 1, "no USERNAME:PASSWORD line"},
      {"# x\nuser-without-password-secret\n", 2, "expected USERNAME:PASSWORD"},
      {":secret\n", 1, "username"},
      {"user:\n", 1, "password"},
      {"user:sec\x01ret\n", 1, "password"},
      {"a:secret\n#\nb:secret\n", 3, "exactly one"},
  };
  for (const auto& c : cases) {
    INFO(c.text);
    Errors errors;
    CHECK_FALSE(ClientCredentials::parse(c.text, "/etc/moat/relay.auth", errors));
    REQUIRE(errors.all().size() == 1);
    const auto& e = errors.all().front();
    CHECK(e.file == "/etc/moat/relay.auth");
    CHECK(e.line == c.line);
    CHECK(e.message.find(c.says) != std::string::npos);
    CHECK(e.message.find("secret") == std::string::npos);
  }
}

TEST_CASE("load reads the file, worldReadable names a mode others can read") {
  std::string path = moat::test::writeTempFile("auth", "u:p\n");
  Errors errors;
  auto c = ClientCredentials::load(path, errors);
  REQUIRE(c);
  CHECK(c->username() == "u");
  CHECK(c->password() == "p");
  REQUIRE(chmod(path.c_str(), 0600) == 0);
  CHECK(ClientCredentials::worldReadable(path).empty());
  REQUIRE(chmod(path.c_str(), 0644) == 0);
  CHECK(ClientCredentials::worldReadable(path) == "0644");
  unlink(path.c_str());
  Errors missing;
  CHECK_FALSE(ClientCredentials::load(path, missing));
  REQUIRE(missing.all().size() == 1);
  CHECK(missing.all().front().file == path);
}
