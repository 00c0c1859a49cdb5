// Tests for policy/rewrite_map.h: the [relay] rewrite table, its file's errors (each as
// FILE:LINE) and the lookups the session and the address_rewrite filter make.
#include "policy/rewrite_map.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>

#include "tests/support/temp_file.h"

using moat::policy::Errors;
using moat::policy::RewriteMap;

namespace {
std::string path_;

std::shared_ptr<const RewriteMap> load(const std::string& text, Errors& errors) {
  path_ = moat::test::writeTempFile("rewrite", text);
  auto m = RewriteMap::load(path_, errors);
  unlink(path_.c_str());
  return m;
}

// The one error a file with one bad line gets, as FILE:LINE: message.
std::string onlyError(const std::string& text) {
  Errors errors;
  auto m = load(text, errors);
  CHECK_FALSE(m);
  REQUIRE(errors.all().size() == 1);
  return errors.str();
}
}  // namespace

TEST_CASE("rewrite map: exact addresses, domains and subdomain wildcards, both ways") {
  Errors errors;
  auto m = load(
      "# internal            external\n"
      "JSmith@Corp.Internal  John.Smith@example.com\n"
      "@corp.internal        @example.com\r\n"
      "\n"
      "@.corp.internal       @example.com   outbound-only   # every subdomain\n"
      "@.lab.corp.internal   @lab.example.com  OUTBOUND-ONLY\n"
      "@old.internal         @example.com   outbound-only\n"
      "info@old.internal     hello@example.com outbound-only\n",
      errors);
  INFO(errors.str());
  REQUIRE(m);
  CHECK(m->size() == 6);

  // Outbound: exact wins over the domain; case-insensitive; the local part keeps its case.
  CHECK(m->outbound("jsmith@corp.internal") == "John.Smith@example.com");
  CHECK(m->outbound("JSMITH@CORP.INTERNAL") == "John.Smith@example.com");
  CHECK(m->outbound("Mary.Jones@CORP.internal") == "Mary.Jones@example.com");
  CHECK(m->outbound("jsmith+news@corp.internal") == "John.Smith+news@example.com");  // RFC 5233 tag kept
  CHECK(m->outbound("x@host.corp.internal") == "x@example.com");                     // a subdomain
  CHECK(m->outbound("x@a.b.corp.internal") == "x@example.com");
  CHECK(m->outbound("x@pc.lab.corp.internal") == "x@lab.example.com");  // the longer wildcard first
  CHECK(m->outbound("x@lab.corp.internal") == "x@example.com");         // lab itself: @.corp.internal's
  CHECK(m->outbound("x@old.internal") == "x@example.com");
  CHECK(m->outbound("info@old.internal") == "hello@example.com");
  CHECK(m->outbound("x@corp.internal.evil.test") == "");
  CHECK(m->outbound("x@internal") == "");
  CHECK(m->outbound("x@example.com") == "");
  CHECK(m->outbound("") == "");
  CHECK(m->outbound("nodomain") == "");
  CHECK(m->outbound("@corp.internal") == "");

  // Inbound: only the entries that are not outbound-only.
  CHECK(m->inbound("john.smith@example.com") == "JSmith@Corp.Internal");
  CHECK(m->inbound("John.Smith+x@EXAMPLE.com") == "JSmith+x@Corp.Internal");
  CHECK(m->inbound("Mary@example.com") == "Mary@corp.internal");
  CHECK(m->inbound("hello@example.com") == "hello@corp.internal");  // outbound-only: the domain's
  CHECK(m->inbound("x@lab.example.com") == "");                     // outbound-only
  CHECK(m->inbound("jsmith@corp.internal") == "");
}

TEST_CASE("rewrite map: every bad line is refused as FILE:LINE") {
  auto at = [](int line) { return path_ + ":" + std::to_string(line) + ": "; };
  std::string e = onlyError("# a comment\njsmith@corp.internal\n");
  CHECK(e.find(at(2) + "expected \"INTERNAL EXTERNAL [outbound-only]\"") != std::string::npos);
  e = onlyError("a@corp.internal b@example.com outbound-only extra\n");
  CHECK(e.find(at(1) + "expected") != std::string::npos);
  e = onlyError("a@corp.internal b@example.com both-ways\n");
  CHECK(e.find(at(1) + "\"both-ways\": the third field can only be outbound-only") != std::string::npos);
  // Malformed addresses and domains.
  for (const char* bad : {"a@", "a@@x", "@", "@.", "a..b@x", ".a@x", "a@x..y", "a@-x.test", "a@x_y.test", "<a@x>",
                          "a@x,y", "\"q\"@x.test", "plain"}) {
    INFO(bad);
    e = onlyError("ok@corp.internal ok@example.com\n" + std::string(bad) + " b@example.com\n");
    CHECK(e.find(at(2) + "\"" + bad + "\" is not an address, @domain or @.domain") != std::string::npos);
  }
  e = onlyError("a@corp.internal b@ex..com\n");
  CHECK(e.find(at(1) + "\"b@ex..com\" is not an address or @domain") != std::string::npos);
  // An address beside a domain.
  e = onlyError("jsmith@corp.internal @example.com\n");
  CHECK(
      e.find(at(1) + "\"jsmith@corp.internal\" and \"@example.com\": both sides must be addresses, or both @domains") !=
      std::string::npos);
  e = onlyError("@corp.internal john@example.com\n");
  CHECK(e.find(at(1) + "\"@corp.internal\" and \"john@example.com\": both sides") != std::string::npos);
  // Wildcards: only outbound-only, only on the internal side.
  e = onlyError("@.corp.internal @example.com\n");
  CHECK(e.find(at(1) + "\"@.corp.internal\" stands for every subdomain") != std::string::npos);
  e = onlyError("@corp.internal @.example.com outbound-only\n");
  CHECK(e.find(at(1) + "\"@.example.com\": the external side is one address or one @domain") != std::string::npos);
  // Duplicates and conflicts.
  e = onlyError("a@corp.internal a@corp.internal\n");
  CHECK(e.find(at(1) + "\"a@corp.internal\" is rewritten to itself") != std::string::npos);
  e = onlyError("a@corp.internal b@example.com\n\nA@CORP.internal c@example.com outbound-only\n");
  CHECK(e.find(at(3) + "\"A@CORP.internal\" is already rewritten at line 1") != std::string::npos);
  e = onlyError("@corp.internal @example.com\n@CORP.INTERNAL @example.com\n");
  CHECK(e.find(at(2) + "\"@CORP.INTERNAL\" is already rewritten at line 1") != std::string::npos);
  e = onlyError("a@corp.internal b@example.com\nc@corp.internal B@Example.com\n");
  CHECK(e.find(at(2) + "\"B@Example.com\" is already mapped back to an internal address at line 1") !=
        std::string::npos);
  e = onlyError("@corp.internal @example.com\n@other.internal @example.com\n");
  CHECK(e.find(at(2) + "\"@example.com\" is already mapped back") != std::string::npos);

  // Several bad lines: each reported, the file refused.
  Errors errors;
  auto m = load("x y\na@corp.internal @example.com\ngood@corp.internal good@example.com\n", errors);
  CHECK_FALSE(m);
  CHECK(errors.all().size() == 2);
  CHECK(errors.all()[0].line == 1);
  CHECK(errors.all()[1].line == 2);

  // A file that cannot be read.
  Errors missing;
  CHECK_FALSE(RewriteMap::load("/nonexistent/moat-rewrite", missing));
  CHECK(missing.str().find("/nonexistent/moat-rewrite") != std::string::npos);
}

TEST_CASE("rewrite map: several internal names may share an outbound-only external one") {
  Errors errors;
  auto m = load(
      "@corp.internal @example.com\n"
      "@branch.internal @example.com outbound-only\n"
      "a@branch.internal b@example.com outbound-only\n"
      "c@corp.internal b@example.com\n",  // the one that maps b@example.com back
      errors);
  INFO(errors.str());
  REQUIRE(m);
  CHECK(m->outbound("x@branch.internal") == "x@example.com");
  CHECK(m->outbound("a@branch.internal") == "b@example.com");
  CHECK(m->inbound("x@example.com") == "x@corp.internal");
  CHECK(m->inbound("b@example.com") == "c@corp.internal");
}
