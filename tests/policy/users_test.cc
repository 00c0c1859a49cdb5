// Tests for policy/users.h: the SMTP AUTH users file. Hashes are made by libcrypt itself
// (yescrypt, bcrypt, sha512crypt) so verify() runs the real crypt(3).
#include "policy/users.h"

#include <crypt.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <string>
#include <tuple>

#include "tests/support/temp_file.h"

using moat::policy::Errors;
using moat::policy::UserDb;

namespace {
std::string writeTemp(const std::string& text) { return moat::test::writeTempFile("users", text); }

// A crypt(3) hash of `password` with a fresh salt of the method `prefix` ("$y$", "$6$").
std::string hashOf(const std::string& password, const char* prefix) {
  char salt[CRYPT_GENSALT_OUTPUT_SIZE];
  REQUIRE(crypt_gensalt_rn(prefix, 0, nullptr, 0, salt, sizeof salt));
  crypt_data data{};
  const char* h = crypt_rn(password.c_str(), salt, &data, sizeof data);
  REQUIRE(h);
  REQUIRE(h[0] == '$');
  return h;
}
}  // namespace

TEST_CASE("verify accepts the right password for each hash method and nothing else") {
  std::string text = "# Moat submission users\n\n";
  text += "alice:" + hashOf("correct horse", "$y$") + "\n";
  text += "bob@example.test:" + hashOf("b0b", "$6$") + "\r\n";  // CRLF files work too
  text += "  # an indented comment\n";
  text += "\t dave:" + hashOf("d4ve", "$6$") + "  \n";  // blanks around a line are not part of it
  text += "j\xc3\xb6rg:" + hashOf("p\xc3\xa4ss", "$2b$") + "\n";
  auto path = writeTemp(text);
  Errors errors;
  auto db = UserDb::load(path, errors);
  INFO(errors.str());
  REQUIRE(db);
  REQUIRE(db->size() == 4);
  REQUIRE(db->verify("alice", "correct horse"));
  REQUIRE(db->verify("dave", "d4ve"));
  REQUIRE(db->verify("bob@example.test", "b0b"));
  REQUIRE(db->verify("j\xc3\xb6rg", "p\xc3\xa4ss"));
  REQUIRE_FALSE(db->verify("alice", "correct horsE"));
  REQUIRE_FALSE(db->verify("alice", ""));
  REQUIRE_FALSE(db->verify("Alice", "correct horse"));  // names are compared exactly
  REQUIRE_FALSE(db->verify("bob@example.test", "correct horse"));
  REQUIRE_FALSE(db->verify("mallory", "correct horse"));
  REQUIRE_FALSE(db->verify("", ""));
  unlink(path.c_str());
}

TEST_CASE("a bad users file is refused with FILE:LINE for every bad line") {
  std::string good = hashOf("pw", "$6$");
  auto path = writeTemp("alice:" + good + "\n" +                                // 1
                        "no colon here\n" +                                     // 2
                        "bob:not-a-hash\n" +                                    // 3
                        "carol:$1$saltsalt$abcdefghijklmnopqrstuv\n" +          // 4: md5crypt
                        "alice:" + good + "\n" +                                // 5: twice
                        ":" + good + "\n" +                                     // 6: empty name
                        "da\tve:" + good + "\n" +                               // 7: control character
                        "erin:" + good.substr(0, good.rfind('$') + 1) + "\n");  // 8: cut short
  Errors errors;
  REQUIRE_FALSE(UserDb::load(path, errors));
  std::string all = errors.str();
  INFO(all);
  REQUIRE(errors.all().size() == 7);
  REQUIRE(all.find(path + ":2: expected NAME:HASH or NAME:HASH:SENDERS") != std::string::npos);
  REQUIRE(all.find(path + ":3: \"bob\": not a crypt(3) hash") != std::string::npos);
  REQUIRE(all.find(path + ":4: \"carol\": a legacy hash method") != std::string::npos);
  REQUIRE(all.find(path + ":5: \"alice\" is listed twice") != std::string::npos);
  REQUIRE(all.find(path + ":6: the name must be") != std::string::npos);
  REQUIRE(all.find(path + ":7: the name must be") != std::string::npos);
  REQUIRE(all.find(path + ":8: \"erin\": not a crypt(3) hash") != std::string::npos);
  unlink(path.c_str());
}

TEST_CASE("a users file that cannot be read is refused with its path") {
  Errors errors;
  REQUIRE_FALSE(UserDb::load("/nonexistent/moat-users", errors));
  REQUIRE(errors.str().find("/nonexistent/moat-users: cannot read the users file") != std::string::npos);
}

TEST_CASE("an empty users file loads and lets nobody in") {
  auto path = writeTemp("# nobody yet\n");
  Errors errors;
  auto db = UserDb::load(path, errors);
  REQUIRE(db);
  REQUIRE(db->size() == 0);
  REQUIRE_FALSE(db->verify("alice", "anything"));
  unlink(path.c_str());
}

TEST_CASE("a user's senders limit the envelope senders that user may use") {
  std::string h = hashOf("pw", "$6$");
  auto path = writeTemp("alice:" + h + ":alice@example.test, Sales@Example.TEST\n" + "bob:" + h +
                        ":@example.test,@bob.test\n" + "carol:" + h + "\n" + "dave:" + h + ":\n");
  Errors errors;
  auto db = UserDb::load(path, errors);
  INFO(errors.str());
  REQUIRE(db);
  REQUIRE(db->verify("alice", "pw"));  // the senders are not part of the hash
  REQUIRE(db->maySendAs("alice", "alice@example.test"));
  REQUIRE(db->maySendAs("alice", "ALICE@EXAMPLE.test"));
  REQUIRE(db->maySendAs("alice", "sales@example.test"));
  REQUIRE_FALSE(db->maySendAs("alice", "ceo@example.test"));
  REQUIRE_FALSE(db->maySendAs("alice", "alice@example.test.evil"));
  REQUIRE(db->maySendAs("bob", "anyone@example.test"));
  REQUIRE(db->maySendAs("bob", "x@BOB.test"));
  REQUIRE_FALSE(db->maySendAs("bob", "x@sub.example.test"));
  REQUIRE_FALSE(db->maySendAs("bob", "x@example.test.evil"));
  REQUIRE(db->maySendAs("carol", "anyone@anywhere.test"));  // no list: any sender
  REQUIRE(db->maySendAs("dave", "anyone@anywhere.test"));   // an empty list too
  REQUIRE_FALSE(db->maySendAs("mallory", "anyone@anywhere.test"));
  unlink(path.c_str());
}

TEST_CASE("a sender that is neither an address nor @domain is refused with FILE:LINE") {
  std::string h = hashOf("pw", "$6$");
  auto path = writeTemp("alice:" + h + ":alice@example.test,not-an-address\nbob:" + h + ":bob@\n");
  Errors errors;
  REQUIRE_FALSE(UserDb::load(path, errors));
  std::string all = errors.str();
  INFO(all);
  REQUIRE(all.find(path + ":1: \"alice\": \"not-an-address\" is not an address or @domain") != std::string::npos);
  REQUIRE(all.find(path + ":2: \"bob\": \"bob@\" is not an address or @domain") != std::string::npos);
  unlink(path.c_str());
}

namespace {
// A sha512crypt hash with an explicit cost (rounds).
std::string sha512Of(const std::string& password, unsigned long rounds) {
  char salt[CRYPT_GENSALT_OUTPUT_SIZE];
  REQUIRE(crypt_gensalt_rn("$6$", rounds, nullptr, 0, salt, sizeof salt));
  crypt_data data{};
  const char* h = crypt_rn(password.c_str(), salt, &data, sizeof data);
  REQUIRE(h);
  REQUIRE(h[0] == '$');
  return h;
}
}  // namespace

// users.h promises that verify() costs for an unknown name what it costs for a known one. With
// users of different costs (a cheap hash first, an expensive one later, as happens when an
// admin raises the cost for new users, or mixes methods), an unknown name pays the cost of a
// user its keyed hash picks: every cost class in the file comes up, as often as among the
// users, and one name always pays the same, so neither one try nor many tell it apart.
// (Before, every unknown name paid the costliest class: slower than the cheap users.)
TEST_CASE("an unknown name costs what a user picked by the name costs, always the same one") {
  std::string cheap6 = sha512Of("pw", 1000), dear6 = sha512Of("pw", 2000);
  char salt[CRYPT_GENSALT_OUTPUT_SIZE];
  REQUIRE(crypt_gensalt_rn("$2b$", 4, nullptr, 0, salt, sizeof salt));  // bcrypt's least cost
  crypt_data data{};
  std::string cheap2 = crypt_rn("pw", salt, &data, sizeof data);
  auto [text, cheapUser, dearUser] =
      GENERATE_COPY(std::make_tuple("old:" + cheap6 + "\nnew:" + dear6 + "\n", std::string("old"), std::string("new")),
                    std::make_tuple("old:" + dear6 + "\nnew:" + cheap2 + "\n", std::string("new"), std::string("old")));
  auto path = writeTemp(text);
  Errors errors;
  auto db = UserDb::load(path, errors);
  REQUIRE(db);
  const size_t cheap = db->costClassOf(cheapUser), dear = db->costClassOf(dearUser);
  REQUIRE(cheap != dear);
  auto again = UserDb::load(path, errors);  // as at a SIGHUP: the same process key
  REQUIRE(again);
  size_t inCheap = 0, inDear = 0;
  for (int i = 0; i < 200; ++i) {
    std::string name = "nobody" + std::to_string(i);
    size_t c = db->costClassOf(name);
    INFO(name);
    REQUIRE((c == cheap || c == dear));
    REQUIRE(db->costClassOf(name) == c);
    REQUIRE(again->costClassOf(name) == c);
    (c == cheap ? inCheap : inDear)++;
  }
  INFO("cheap " << inCheap << ", dear " << inDear);
  REQUIRE(inCheap > 0);  // before the fix: 0, every unknown name paid the dearest class
  REQUIRE(inDear > 0);
  REQUIRE_FALSE(db->verify("nobody0", "pw"));
  REQUIRE_FALSE(db->verify("nobody1", "pw"));
  REQUIRE(db->verify(cheapUser, "pw"));
  REQUIRE(db->verify(dearUser, "pw"));
  unlink(path.c_str());
}

// The classes come up as often as among the users: three cheap users and one dear one send
// most unknown names to the cheap class (expected 300 of 400; failing by chance is below 1e-20).
TEST_CASE("unknown names spread over the cost classes as the users do") {
  std::string cheap6 = sha512Of("pw", 1000), dear6 = sha512Of("pw", 2000);
  auto path =
      writeTemp("a:" + cheap6 + "\nb:" + dear6 + "\nc:" + sha512Of("pw", 1000) + "\nd:" + sha512Of("pw", 1000) + "\n");
  Errors errors;
  auto db = UserDb::load(path, errors);
  REQUIRE(db);
  const size_t cheap = db->costClassOf("a");
  REQUIRE(db->costClassOf("c") == cheap);
  REQUIRE(db->costClassOf("d") == cheap);
  REQUIRE(db->costClassOf("b") != cheap);
  size_t inCheap = 0;
  for (int i = 0; i < 400; ++i) inCheap += db->costClassOf("x" + std::to_string(i)) == cheap;
  INFO(inCheap << " of 400 cheap");
  REQUIRE(inCheap > 200);
  REQUIRE(inCheap < 400);
  unlink(path.c_str());
}
