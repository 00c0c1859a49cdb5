// tests/mta/envelope_recipients_test.cc — mta/server/envelope_recipients (the session's
// recipients at RCPT and from milters, [relay] aliases' targets): each address once by
// recipientKey (the local part's case kept, the domain's folded), the first one's DSN
// parameters standing; an alias's targets with NOTIFY minus SUCCESS and an ORCPT naming the
// alias (or the one given), NOTIFY=SUCCESS answered by one "expanded" report; the bound on
// recipients leaving the list as it was; [bcc]'s copies (always, by sender, by each
// recipient) with NOTIFY=NEVER, each once, within the bound.
#include "mta/server/envelope_recipients.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "tests/support/temp_file.h"

using moat::mta::server::addAliasTargets;
using moat::mta::server::addBccRecipients;
using moat::mta::server::addRecipientOnce;
using moat::mta::server::BccSources;
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

std::shared_ptr<const moat::policy::BccMap> bccMap(const std::string& text) {
  auto path = moat::test::writeTempFile("bcc", text);
  moat::policy::Errors errors;
  auto map = moat::policy::BccMap::load(path, "BCC", errors);
  unlink(path.c_str());
  INFO(errors.str());
  REQUIRE(map);
  return map;
}

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

TEST_CASE("bcc copies: always, the sender's, each recipient's, in that order, each once, NOTIFY=NEVER",
          "[envelope_recipients]") {
  auto senders = bccMap("ceo@sender.test ceo-archive@archive.test\n@sender.test journal@archive.test\n");
  auto recipients = bccMap("legal@example.test legal-archive@archive.test\n@partner.test partner@archive.test\n");
  BccSources bcc{"journal@archive.test", senders.get(), recipients.get()};
  Tx tx;
  addRecipientOnce(tx.list(), "carol@partner.test", {"FAILURE", ""});
  addRecipientOnce(tx.list(), "legal@example.test", {});
  addRecipientOnce(tx.list(), "dave@PARTNER.test", {});
  auto added = addBccRecipients(tx.list(), bcc, "CEO+x@Sender.test", 100);
  // The sender's entry is the most specific one; journal@ from the always copy is not added twice.
  CHECK(added == std::vector<std::string>{"journal@archive.test", "ceo-archive@archive.test", "partner@archive.test",
                                          "legal-archive@archive.test"});
  REQUIRE(tx.addresses.size() == 7);
  REQUIRE(tx.dsns.size() == 7);
  CHECK(tx.dsns[0].notify == "FAILURE");  // the client's recipients keep theirs
  for (size_t i = 3; i < 7; ++i) {
    CHECK(tx.dsns[i].notify == "NEVER");
    CHECK(tx.dsns[i].orcpt.empty());
  }
  CHECK(tx.expanded.empty());

  // A copy already a recipient (its domain's case aside) is not added; the null sender matches nothing.
  Tx already;
  addRecipientOnce(already.list(), "journal@ARCHIVE.test", {"SUCCESS", ""});
  CHECK(addBccRecipients(already.list(), bcc, "", 100).empty());
  CHECK(already.dsns[0].notify == "SUCCESS");

  // Nothing configured: nothing added, the list untouched.
  Tx none;
  addRecipientOnce(none.list(), "bob@example.test", {});
  CHECK(addBccRecipients(none.list(), BccSources{}, "ceo@sender.test", 100).empty());
  CHECK(none.addresses.size() == 1);
}

TEST_CASE("bcc copies stop at the bound on recipients", "[envelope_recipients]") {
  Tx tx;
  addRecipientOnce(tx.list(), "a@example.test", {});
  auto senders = bccMap("@sender.test s@archive.test\n");
  auto added = addBccRecipients(tx.list(), {"j@archive.test", senders.get(), nullptr}, "x@sender.test", 2);
  CHECK(added == std::vector<std::string>{"j@archive.test"});
  CHECK(tx.addresses.size() == 2);
}
