// Tests for policy/users.h: the SMTP AUTH users file. Hashes are made by libcrypt itself
// (yescrypt, bcrypt, sha512crypt) so verify() runs the real crypt(3).
#include "policy/users.h"

#include <crypt.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <string>

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

// The fastest of three calls to verify(), in seconds: the least disturbed by other load.
double verifySeconds(const UserDb& db, const std::string& name) {
  double best = 1e9;
  for (int i = 0; i < 3; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    REQUIRE_FALSE(db.verify(name, "a wrong password"));
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}
}  // namespace

// users.h promises that verify() costs the same for an unknown name as for a known one. With
// users of different costs (a cheap hash first, an expensive one later, as happens when an
// admin raises the cost for new users, or mixes methods), the dummy must cost what the most
// expensive user costs, or a name's existence shows in the time a wrong password takes.
TEST_CASE("an unknown name costs as much as the most expensive user, whatever the order") {
  std::string cheap6 = sha512Of("pw", 1000), dear6 = sha512Of("pw", 400000);
  SECTION("one method, two costs") {
    auto path = writeTemp("old:" + cheap6 + "\nnew:" + dear6 + "\n");
    Errors errors;
    auto db = UserDb::load(path, errors);
    REQUIRE(db);
    double known = verifySeconds(*db, "new"), unknown = verifySeconds(*db, "nobody");
    INFO("known " << known << "s, unknown " << unknown << "s");
    REQUIRE(unknown > known / 10);  // before the fix: a 500th
    unlink(path.c_str());
  }
  SECTION("a cheap bcrypt and an expensive sha512crypt") {
    char salt[CRYPT_GENSALT_OUTPUT_SIZE];
    REQUIRE(crypt_gensalt_rn("$2b$", 4, nullptr, 0, salt, sizeof salt));  // bcrypt's least cost
    crypt_data data{};
    std::string cheap2 = crypt_rn("pw", salt, &data, sizeof data);
    auto path = writeTemp("old:" + dear6 + "\nnew:" + cheap2 + "\n");
    Errors errors;
    auto db = UserDb::load(path, errors);
    REQUIRE(db);
    double known = verifySeconds(*db, "old"), unknown = verifySeconds(*db, "nobody");
    INFO("known " << known << "s, unknown " << unknown << "s");
    REQUIRE(unknown > known / 10);  // before the fix: a 500th
    unlink(path.c_str());
  }
}
