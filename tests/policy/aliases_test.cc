// Tests for policy/aliases.h: the [relay] aliases table, as the RCPT step asks it.
#include "policy/aliases.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "tests/support/temp_file.h"

using moat::policy::AliasTable;
using moat::policy::Errors;
using Targets = std::vector<std::string>;

namespace {
std::string writeTemp(const std::string& text) { return moat::test::writeTempFile("aliases", text); }

std::shared_ptr<const AliasTable> load(const std::string& text, Errors& errors) {
  auto path = writeTemp(text);
  auto t = AliasTable::load(path, errors);
  unlink(path.c_str());
  return t;
}
}  // namespace

TEST_CASE("aliases expand to their targets, through chains, lists and domain aliases") {
  Errors errors;
  auto t = load(
      "# who gets what\n"
      "Sales@Example.TEST: alice@example.test, Bob@corp.example.test\n"
      "info@example.test:\tsales@example.test  carol@example.test\r\n"
      "\n"
      "@old.example.test: @example.test\n"
      "keep@example.test: keep@example.test, copy@example.test\n",
      errors);
  INFO(errors.str());
  REQUIRE(t);
  REQUIRE(t->entries().size() == 4);

  auto e = t->expand("sales@example.test");
  REQUIRE(e.aliased);
  REQUIRE(e.error.empty());
  REQUIRE(e.targets == Targets{"alice@example.test", "Bob@corp.example.test"});  // targets keep their case

  e = t->expand("INFO@example.test");  // sales@ expands again; order follows the file
  REQUIRE(e.targets == Targets{"alice@example.test", "Bob@corp.example.test", "carol@example.test"});

  e = t->expand("sales+q4@example.test");  // RFC 5233: the user's entry
  REQUIRE(e.targets == Targets{"alice@example.test", "Bob@corp.example.test"});

  e = t->expand("Dave@OLD.example.test");  // the domain changes, the local part stays
  REQUIRE(e.aliased);
  REQUIRE(e.targets == Targets{"Dave@example.test"});
  e = t->expand("+x@old.example.test");  // no user before the tag: not the domain's entry itself
  REQUIRE(e.targets == Targets{"+x@example.test"});
  e = t->expand("sales@old.example.test");  // and the new address expands in turn
  REQUIRE(e.targets == Targets{"alice@example.test", "Bob@corp.example.test"});

  e = t->expand("keep@example.test");  // met again: final, so the address keeps its copy
  REQUIRE(e.targets == Targets{"keep@example.test", "copy@example.test"});

  e = t->expand("nobody@example.test");
  REQUIRE_FALSE(e.aliased);
  REQUIRE(e.targets == Targets{"nobody@example.test"});
}

TEST_CASE("alias loops end, duplicates go once, and the limits are refused at load") {
  Errors errors;
  auto t = load(
      "a@x.test: b@x.test, shared@x.test\n"
      "b@x.test: a@x.test, shared@x.test, SHARED@x.test\n"
      "@p.test: @q.test\n"
      "@q.test: @p.test\n",
      errors);
  INFO(errors.str());
  REQUIRE(t);
  auto e = t->expand("a@x.test");  // a -> b -> a (final again), shared once
  REQUIRE(e.error.empty());
  REQUIRE(e.targets == Targets{"a@x.test", "shared@x.test"});
  e = t->expand("u@p.test");  // u@p -> u@q -> u@p (final)
  REQUIRE(e.targets == Targets{"u@p.test"});

  // An alias reached a second way is expanded once, not taken for an address the second time.
  Errors again;
  auto lists = load("all@x.test: a@x.test, b@x.test\nb@x.test: a@x.test, c@x.test\na@x.test: d@x.test\n", again);
  INFO(again.str());
  REQUIRE(lists);
  REQUIRE(lists->expand("all@x.test").targets == Targets{"d@x.test", "c@x.test"});

  // A chain of 17 entries is one level too deep: refused with the entry's line.
  std::string chain;
  for (int i = 0; i <= AliasTable::kMaxDepth; ++i)
    chain.append("c").append(std::to_string(i)).append("@x.test: c").append(std::to_string(i + 1)).append("@x.test\n");
  Errors deep;
  REQUIRE_FALSE(load(chain, deep));
  REQUIRE(deep.str().find(":1: \"c0@x.test\": alias expansion of more than 16 levels") != std::string::npos);
  Errors shallow;  // one level fewer loads
  REQUIRE(load(chain.substr(chain.find('\n') + 1), shallow));

  // Two lists of 600 under one name: 1,200 addresses, wider than 1,000.
  std::string wide = "all@x.test: one@x.test two@x.test\n";
  for (int list = 0; list < 2; ++list) {
    wide += (list ? "two@x.test:" : "one@x.test:");
    for (int i = 0; i < 600; ++i)
      wide.append(" m").append(std::to_string(list)).append("-").append(std::to_string(i)).append("@y.test");
    wide += "\n";
  }
  Errors tooWide;
  REQUIRE_FALSE(load(wide, tooWide));
  REQUIRE(tooWide.str().find(":1: \"all@x.test\": alias expansion to more than 1000 addresses") != std::string::npos);
}

TEST_CASE("a broken aliases file is refused with FILE:LINE for every bad line") {
  Errors errors;
  auto path = writeTemp(
      "ok@example.test: fine@example.test\n"
      "no colon here\n"                        // 2
      "empty@example.test:\n"                  // 3
      "bad@example.test: not-an-address\n"     // 4
      "@dom.test: a@b.test\n"                  // 5: a domain takes a domain
      "user@example.test: @example.test\n"     // 6: and an address addresses
      "@one.test: @two.test @three.test\n"     // 7: one domain only
      "ok@example.test: again@example.test\n"  // 8: listed twice
      "<x@example.test>: y@example.test\n");   // 9
  REQUIRE_FALSE(AliasTable::load(path, errors));
  std::string s = errors.str();
  INFO(s);
  for (int line : {2, 3, 4, 5, 6, 7, 8, 9})
    REQUIRE(s.find(path + ":" + std::to_string(line) + ":") != std::string::npos);
  REQUIRE(s.find(path + ":1:") == std::string::npos);
  unlink(path.c_str());

  Errors missing;
  REQUIRE_FALSE(AliasTable::load("/nonexistent/moat-aliases", missing));
  REQUIRE(missing.str().find("cannot read the aliases file") != std::string::npos);
}
