// Tests for policy/batv.h: BATV "prvs" tags (draft-levine-smtp-batv-01 §4) made and checked,
// their expiry, the key file. The expected tags were computed apart from Moat, with Python:
//   hmac.new(KEY, (K + DDD + mailbox.lower()).encode(), hashlib.sha1).hexdigest()[:6]
#include "policy/batv.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>

#include "tests/support/temp_file.h"

namespace batv = moat::policy::batv;
using moat::policy::Errors;

namespace {
const std::string kKey = "0123456789abcdef-moat-test-secret";
const std::string kOldKey = "old-secret-of-the-year-before-0123";  // before a rotation
}  // namespace

TEST_CASE("batv: the day number counts whole UTC days since 1970") {
  CHECK(batv::dayNumber(0) == 0);
  CHECK(batv::dayNumber(86399) == 0);
  CHECK(batv::dayNumber(86400) == 1);
  CHECK(batv::dayNumber(1'728'000'000) == 20000);  // 2024-10-04
}

TEST_CASE("batv: tags match independently computed HMAC-SHA1 vectors") {
  // Day 20000 + 7 = 20007: DDD 007.
  CHECK(batv::tag("jsmith@example.com", kKey, 20000, 7) == "prvs=00079276b6=jsmith@example.com");
  CHECK(batv::tag("jsmith@example.com", kKey, 20420, 7) == "prvs=0427f8cda9=jsmith@example.com");
  // The mailbox is lower-cased for the HMAC, and kept as written in the address; the
  // expiry day wraps modulo 1000 (20997 + 7 = 21004: 004).
  CHECK(batv::tag("Mary.Jones@Example.COM", kKey, 20997, 7) == "prvs=0004bbba88=Mary.Jones@Example.COM");
}

TEST_CASE("batv: a tag verifies, untagged, until its expiry day and not after") {
  std::string tagged = batv::tag("jsmith@example.com", kKey, 20000, 7);
  for (int64_t day = 20000; day <= 20007; ++day) {
    INFO("day " << day);
    auto c = batv::verify(tagged, kKey, day, 7);
    CHECK(c.result == batv::Result::Valid);
    CHECK(c.address == "jsmith@example.com");
  }
  CHECK(batv::verify(tagged, kKey, 20008, 7).result == batv::Result::Expired);
  CHECK(batv::verify(tagged, kKey, 20100, 7).result == batv::Result::Expired);
  // Across the modulo-1000 wrap: made on day 20997, expiring 21004 (written 004).
  std::string wrapped = batv::tag("jsmith@example.com", kKey, 20997, 7);
  CHECK(batv::verify(wrapped, kKey, 20999, 7).result == batv::Result::Valid);
  CHECK(batv::verify(wrapped, kKey, 21004, 7).result == batv::Result::Valid);
  CHECK(batv::verify(wrapped, kKey, 21005, 7).result == batv::Result::Expired);
  // A tag from further ahead than max_age allows is not believed either.
  CHECK(batv::verify(batv::tag("jsmith@example.com", kKey, 20000, 30), kKey, 20000, 7).result == batv::Result::Expired);
}

TEST_CASE("batv: a wrong key, an altered address or signature is invalid") {
  std::string tagged = batv::tag("jsmith@example.com", kKey, 20000, 7);
  auto wrongKey = batv::verify(tagged, "another-secret-of-32-bytes-length", 20001, 7);
  CHECK(wrongKey.result == batv::Result::Invalid);
  CHECK(wrongKey.address == "jsmith@example.com");
  CHECK(batv::verify("prvs=00079276b6=mary@example.com", kKey, 20001, 7).result == batv::Result::Invalid);
  CHECK(batv::verify("prvs=00089276b6=jsmith@example.com", kKey, 20001, 7).result == batv::Result::Invalid);
  CHECK(batv::verify("prvs=00079276b7=jsmith@example.com", kKey, 20001, 7).result == batv::Result::Invalid);
  CHECK(batv::verify("prvs=10079276b6=jsmith@example.com", kKey, 20001, 7).result == batv::Result::Invalid);
  // Malformed tags: invalid, and the address stays as given.
  for (const char* bad : {"prvs=@example.com", "prvs=0007=jsmith@example.com", "prvs=x0079276b6=jsmith@example.com",
                          "prvs=00079276b6jsmith@example.com", "prvs=00079276b6=@example.com"}) {
    INFO(bad);
    auto c = batv::verify(bad, kKey, 20001, 7);
    CHECK(c.result == batv::Result::Invalid);
    CHECK(c.address == bad);
  }
}

TEST_CASE("batv: PRVS= and the hex digits are read without case") {
  auto c = batv::verify("PRVS=00079276B6=JSmith@Example.com", kKey, 20001, 7);
  CHECK(c.result == batv::Result::Valid);
  CHECK(c.address == "JSmith@Example.com");
  CHECK(batv::looksTagged("Prvs=x=y@z"));
  CHECK_FALSE(batv::looksTagged("jsmith@example.com"));
  CHECK_FALSE(batv::looksTagged("prv@example.com"));
  auto none = batv::verify("jsmith@example.com", kKey, 20001, 7);
  CHECK(none.result == batv::Result::NotTagged);
  CHECK(none.address == "jsmith@example.com");
}

TEST_CASE("batv: untagged gives the address a tag is in front of, without asking a key") {
  CHECK(batv::untagged("prvs=00079276b6=jsmith@example.com") == "jsmith@example.com");
  CHECK(batv::untagged("PRVS=1999ffffff=JSmith@Example.com") == "JSmith@Example.com");  // need not verify
  CHECK(batv::untagged("jsmith@example.com") == "jsmith@example.com");
  CHECK(batv::untagged("prvs=short=jsmith@example.com") == "prvs=short=jsmith@example.com");  // not a tag's form
  CHECK(batv::untagged("prvs=00079276b6=@example.com") == "prvs=00079276b6=@example.com");
  CHECK(batv::untagged("") == "");
}

TEST_CASE("batv: the key file must hold at least 16 bytes") {
  Errors errors;
  std::string path = moat::test::writeTempFile("batv-key", kKey + "\n");
  auto key = batv::loadKey(path, "/etc/moat.toml", 12, errors);
  REQUIRE(key);
  CHECK(*key == kKey);  // the trailing newline is not part of the secret
  CHECK_FALSE(errors.hasErrors());
  unlink(path.c_str());

  path = moat::test::writeTempFile("batv-key", "short secret\n");
  CHECK_FALSE(batv::loadKey(path, "/etc/moat.toml", 12, errors));
  REQUIRE(errors.all().size() == 1);
  CHECK(errors.str().rfind("/etc/moat.toml:12: bounce_verification.key_file: " + path + " holds 12 bytes", 0) == 0);
  unlink(path.c_str());

  Errors missing;
  CHECK_FALSE(batv::loadKey(path, "/etc/moat.toml", 12, missing));
  REQUIRE(missing.all().size() == 1);
  CHECK(missing.str().rfind("/etc/moat.toml:12: bounce_verification.key_file: cannot read " + path, 0) == 0);
}

TEST_CASE("batv: a tag made under a previous key verifies only while that key is listed") {
  const std::string old = "prvs=00075ffe56=jsmith@example.com";  // kOldKey, K 0, made on day 20000
  batv::Keys rotated;
  rotated.current = kKey;
  rotated.previous = {"a-third-secret-retired-long-ago-00", kOldKey};
  auto c = batv::verify(old, rotated, 20003, 7);
  CHECK(c.result == batv::Result::Valid);
  CHECK(c.address == "jsmith@example.com");
  CHECK(c.key == 2);                                     // the second of previous_key_files
  CHECK(batv::verify(old, rotated, 20008, 7).key == 2);  // expired, but made with it
  // Still within its expiry only: the old key does not lengthen a tag's life.
  CHECK(batv::verify(old, rotated, 20008, 7).result == batv::Result::Expired);
  CHECK(batv::verify("prvs=09973db4c6=jsmith@example.com", rotated, 20000, 7).result == batv::Result::Expired);
  // The current key's tags verify beside it.
  auto current = batv::verify(batv::tag("jsmith@example.com", kKey, 20000, 7), rotated, 20001, 7);
  CHECK(current.result == batv::Result::Valid);
  CHECK(current.key == 0);

  batv::Keys dropped;
  dropped.current = kKey;
  auto gone = batv::verify(old, dropped, 20003, 7);
  CHECK(gone.result == batv::Result::Invalid);
  CHECK(gone.key == -1);
  CHECK(batv::verify(old, kKey, 20003, 7).result == batv::Result::Invalid);
}

TEST_CASE("batv: the key number is written into tags and signed with them") {
  CHECK(batv::tag("jsmith@example.com", kKey, 20000, 7, 4) == "prvs=400701715b=jsmith@example.com");
  CHECK(batv::tag("jsmith@example.com", kOldKey, 20000, 7, 3) == "prvs=300782d794=jsmith@example.com");
  batv::Keys keys;
  keys.current = kKey;
  keys.number = 4;
  keys.previous = {kOldKey};
  // A tag of the current number, one of an old number under the old key, and one of the old
  // number under the current key (K is tried first, never the only one): all valid.
  CHECK(batv::verify("prvs=400701715b=jsmith@example.com", keys, 20001, 7).result == batv::Result::Valid);
  CHECK(batv::verify("prvs=300782d794=jsmith@example.com", keys, 20001, 7).result == batv::Result::Valid);
  CHECK(batv::verify("prvs=00079276b6=jsmith@example.com", keys, 20001, 7).result == batv::Result::Valid);
  CHECK(batv::verify("prvs=00075ffe56=jsmith@example.com", keys, 20001, 7).result == batv::Result::Valid);
  // Which key made each, whatever its K says.
  CHECK(batv::verify("prvs=400701715b=jsmith@example.com", keys, 20001, 7).key == 0);
  CHECK(batv::verify("prvs=300782d794=jsmith@example.com", keys, 20001, 7).key == 1);
  CHECK(batv::verify("prvs=00079276b6=jsmith@example.com", keys, 20001, 7).key == 0);
  CHECK(batv::verify("prvs=00075ffe56=jsmith@example.com", keys, 20001, 7).key == 1);
  CHECK(batv::verify("prvs=000701715b=jsmith@example.com", keys, 20001, 7).key == -1);
  // K is part of what is signed: another digit in front of the same signature is invalid.
  CHECK(batv::verify("prvs=000701715b=jsmith@example.com", keys, 20001, 7).result == batv::Result::Invalid);
  CHECK(batv::verify("prvs=400782d794=jsmith@example.com", keys, 20001, 7).result == batv::Result::Invalid);
}

TEST_CASE("batv: a short previous key file is named as previous_key_files") {
  Errors errors;
  std::string path = moat::test::writeTempFile("batv-key", "0123456789abcde\n");
  CHECK_FALSE(batv::loadKey(path, "/etc/moat.toml", 14, errors, "bounce_verification.previous_key_files"));
  INFO(errors.str());
  CHECK(errors.str().rfind("/etc/moat.toml:14: bounce_verification.previous_key_files: " + path + " holds 15 bytes",
                           0) == 0);
  unlink(path.c_str());
}
