// Tests for policy/address_list.h: the lists of addresses and domains ([senders] block).
#include "policy/address_list.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>

#include "tests/support/temp_file.h"

using moat::policy::AddressList;
using moat::policy::Errors;

TEST_CASE("an address list matches addresses, subaddresses, domains and subdomains") {
  auto path = moat::test::writeTempFile("senders",
                                        "# refused senders\n"
                                        "Spammer@Example.TEST\n"
                                        "@bulk.test\n"
                                        "  @.junk.test  \r\n"
                                        "\n"
                                        "j\xc3\xb6rg@example.test\n");
  Errors errors;
  auto list = AddressList::load(path, "blocked senders", errors);
  unlink(path.c_str());
  INFO(errors.str());
  REQUIRE(list);
  REQUIRE(list->size() == 4);
  REQUIRE(list->contains("spammer@example.test"));
  REQUIRE(list->contains("SPAMMER@EXAMPLE.test"));
  REQUIRE(list->contains("spammer+promo@example.test"));  // RFC 5233
  REQUIRE_FALSE(list->contains("spammer2@example.test"));
  REQUIRE_FALSE(list->contains("alice@example.test"));
  REQUIRE(list->contains("j\xc3\xb6rg@example.test"));
  REQUIRE(list->contains("anyone@bulk.test"));
  REQUIRE(list->contains("anyone@BULK.TEST"));
  REQUIRE_FALSE(list->contains("anyone@mail.bulk.test"));  // @domain: that domain only
  REQUIRE_FALSE(list->contains("anyone@notbulk.test"));
  REQUIRE(list->contains("x@mail.junk.test"));  // @.domain: its subdomains
  REQUIRE(list->contains("x@a.b.junk.test"));
  REQUIRE_FALSE(list->contains("x@junk.test"));
  REQUIRE_FALSE(list->contains("x@notjunk.test"));
  REQUIRE_FALSE(list->contains(""));  // the null sender
  REQUIRE_FALSE(list->contains("postmaster"));
}

TEST_CASE("a broken address list is refused with FILE:LINE for every bad line") {
  auto path = moat::test::writeTempFile("senders", "ok@example.test\nno-at-sign\n<x@example.test>\n@.\n@\n");
  Errors errors;
  REQUIRE_FALSE(AddressList::load(path, "blocked senders", errors));
  std::string s = errors.str();
  INFO(s);
  for (int line : {2, 3, 4, 5}) REQUIRE(s.find(path + ":" + std::to_string(line) + ": \"") != std::string::npos);
  REQUIRE(s.find(path + ":1:") == std::string::npos);
  unlink(path.c_str());

  Errors missing;
  REQUIRE_FALSE(AddressList::load("/nonexistent/moat-senders", "blocked senders", missing));
  REQUIRE(missing.str().find("cannot read the blocked senders file") != std::string::npos);
}
