// tests/mta/envelope_recipients_test.cc — mta/server/envelope_recipients (the session's
// recipients at RCPT and from milters, [relay] aliases' targets): each address once by
// recipientKey (the local part's case kept, the domain's folded), the first one's DSN
// parameters standing; an alias's targets with NOTIFY minus SUCCESS and an ORCPT naming the
// alias (or the one given), NOTIFY=SUCCESS answered by one "expanded" report; the bound on
// recipients leaving the list as it was.
#include "mta/server/envelope_recipients.h"

#include <catch2/catch.hpp>
#include <string>
#include <unordered_set>
#include <vector>

using moat::mta::server::addAliasTargets;
using moat::mta::server::addRecipientOnce;
using moat::mta::server::RcptDsn;
using moat::mta::server::RecipientList;

namespace {

struct Tx {
  std::vector<std::string> addresses;
  std::vector<RcptDsn> dsns;
  std::unordered_set<std::string> keys;
  std::vector<moat::queue::ExpandedRecipient> expanded;
  RecipientList list() { return {addresses, dsns, keys, expanded}; }
};

}  // namespace

TEST_CASE("a recipient goes in once, the first one's DSN parameters standing", "[envelope_recipients]") {
  Tx tx;
  CHECK(addRecipientOnce(tx.list(), "bob@example.test", {"FAILURE", "rfc822;bob@example.test"}));
  CHECK_FALSE(addRecipientOnce(tx.list(), "bob@EXAMPLE.test", {"NEVER", ""}));
  CHECK(addRecipientOnce(tx.list(), "Bob@example.test", {}));  // the local part is case-sensitive
  REQUIRE(tx.addresses == std::vector<std::string>{"bob@example.test", "Bob@example.test"});
  REQUIRE(tx.dsns.size() == 2);
  CHECK(tx.dsns[0].notify == "FAILURE");
  CHECK(tx.dsns[0].orcpt == "rfc822;bob@example.test");
  CHECK(tx.keys.size() == 2);
  CHECK(tx.expanded.empty());
}

TEST_CASE("alias targets take the alias's DSN parameters, its ORCPT by default", "[envelope_recipients]") {
  Tx tx;
  addRecipientOnce(tx.list(), "alice@example.test", {});
  auto added = addAliasTargets(tx.list(), "sales@example.test", {"FAILURE,DELAY", ""},
                               {"alice@EXAMPLE.test", "bob@example.test", "carol@example.test"}, 100);
  REQUIRE(added);
  CHECK(*added == 2);  // alice was a recipient already
  REQUIRE(tx.addresses == std::vector<std::string>{"alice@example.test", "bob@example.test", "carol@example.test"});
  CHECK(tx.dsns[0].orcpt.empty());  // alice's own stand
  for (size_t i = 1; i < 3; ++i) {
    CHECK(tx.dsns[i].notify == "FAILURE,DELAY");
    CHECK(tx.dsns[i].orcpt == "rfc822;sales@example.test");
  }
  CHECK(tx.expanded.empty());  // no SUCCESS asked for

  // An ORCPT given stays the targets'.
  Tx given;
  REQUIRE(
      addAliasTargets(given.list(), "info@example.test", {"", "rfc822;info@example.com"}, {"dan@example.test"}, 100));
  CHECK(given.dsns[0].orcpt == "rfc822;info@example.com");
  CHECK(given.dsns[0].notify.empty());
}

TEST_CASE("NOTIFY=SUCCESS of an alias is one expanded report, the targets go on without it", "[envelope_recipients]") {
  Tx tx;
  REQUIRE(addAliasTargets(tx.list(), "sales@example.test", {"SUCCESS,FAILURE", ""},
                          {"bob@example.test", "carol@example.test"}, 100));
  REQUIRE(tx.expanded.size() == 1);
  CHECK(tx.expanded[0].address == "sales@example.test");
  CHECK(tx.expanded[0].orcpt == "rfc822;sales@example.test");
  CHECK(tx.expanded[0].notify == "SUCCESS,FAILURE");
  for (const auto& d : tx.dsns) CHECK(d.notify == "FAILURE");

  Tx only;
  REQUIRE(addAliasTargets(only.list(), "sales@example.test", {"SUCCESS", ""}, {"bob@example.test"}, 100));
  CHECK(only.dsns[0].notify == "NEVER");
  CHECK(only.expanded.size() == 1);
}

TEST_CASE("alias targets past the bound leave the list as it was", "[envelope_recipients]") {
  Tx tx;
  addRecipientOnce(tx.list(), "a@example.test", {});
  addRecipientOnce(tx.list(), "b@example.test", {});
  // Counted before duplicates are dropped, as at RCPT.
  CHECK_FALSE(addAliasTargets(tx.list(), "l@example.test", {"SUCCESS", ""}, {"a@example.test", "c@example.test"}, 3));
  CHECK(tx.addresses.size() == 2);
  CHECK(tx.dsns.size() == 2);
  CHECK(tx.keys.size() == 2);
  CHECK(tx.expanded.empty());
  auto added = addAliasTargets(tx.list(), "l@example.test", {}, {"c@example.test"}, 3);
  REQUIRE(added);
  CHECK(*added == 1);
  CHECK(tx.addresses.back() == "c@example.test");
}
