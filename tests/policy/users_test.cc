// Tests for policy/users.h: the SMTP AUTH users file. Hashes are made by libcrypt itself
// (yescrypt, bcrypt, sha512crypt) so verify() runs the real crypt(3).
#include "policy/users.h"

#include <crypt.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>

using moat::policy::Errors;
using moat::policy::UserDb;

namespace {
std::string writeTemp(const std::string& text) {
  char path[] = "/tmp/moat-users-XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  REQUIRE(write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
  close(fd);
  return path;
}

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
  text += "j\xc3\xb6rg:" + hashOf("p\xc3\xa4ss", "$2b$") + "\n";
  auto path = writeTemp(text);
  Errors errors;
  auto db = UserDb::load(path, errors);
  INFO(errors.str());
  REQUIRE(db);
  REQUIRE(db->size() == 3);
  REQUIRE(db->verify("alice", "correct horse"));
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
