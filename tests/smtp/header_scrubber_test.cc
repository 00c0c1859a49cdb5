// Tests for mta/smtp/header_scrubber: forged Authentication-Results claiming our own
// authserv-id are removed (RFC 8601 §5), in any chunking; everything else is untouched.
#include <catch2/catch.hpp>

#include "mta/smtp/header_scrubber.h"

using moat::mta::smtp::HeaderScrubber;

namespace {
std::string scrub(const std::string& msg, size_t chunk, unsigned* removed = nullptr) {
  HeaderScrubber s("MX.Moat.Test");
  std::string out;
  for (size_t i = 0; i < msg.size(); i += chunk) s.feed(std::string_view(msg).substr(i, chunk), out);
  s.finish(out);
  if (removed) *removed = s.removed();
  return out;
}
}  // namespace

TEST_CASE("forged Authentication-Results with our authserv-id are removed, others kept") {
  std::string msg =
      "Authentication-Results: mx.moat.test; spf=pass smtp.mailfrom=evil.test\r\n"
      "Authentication-Results: other.example; dkim=pass\r\n"
      "authentication-results: (comment) MX.MOAT.TEST 1;\r\n\tdmarc=pass header.from=bank.test\r\n"
      "Subject: hello\r\n"
      "\r\n"
      "Authentication-Results: mx.moat.test; in the body stays\r\n";
  std::string want =
      "Authentication-Results: other.example; dkim=pass\r\n"
      "Subject: hello\r\n"
      "\r\n"
      "Authentication-Results: mx.moat.test; in the body stays\r\n";
  for (size_t chunk : {1, 2, 3, 7, 64, 4096}) {
    unsigned removed = 0;
    INFO("chunk " << chunk);
    REQUIRE(scrub(msg, chunk, &removed) == want);
    REQUIRE(removed == 2);
  }
}

TEST_CASE("a name that only starts like ours is not ours") {
  std::string msg = "Authentication-Results: mx.moat.test.evil.example; spf=pass\r\n\r\nbody\r\n";
  REQUIRE(scrub(msg, 5) == msg);
}

TEST_CASE("messages without a header/body separator and over-long fields pass intact") {
  std::string headersOnly = "Subject: x\r\nAuthentication-Results: mx.moat.test; none\r\n";
  REQUIRE(scrub(headersOnly, 3) == "Subject: x\r\n");
  std::string longField = "X-Long: " + std::string(HeaderScrubber::kMaxField + 10, 'a') + "\r\n\r\nbody";
  REQUIRE(scrub(longField, 1000) == longField);
}

TEST_CASE("inBody turns true after the header section, the body may then bypass feed") {
  std::string head = "Authentication-Results: mx.moat.test; spf=pass\r\nSubject: s\r\n";
  std::string msg = head + "\r\nAuthentication-Results: mx.moat.test; body\r\n";
  for (size_t chunk : {1, 2, 5, 64}) {
    INFO("chunk " << chunk);
    HeaderScrubber s("mx.moat.test");
    std::string out;
    size_t bodyAt = std::string::npos;
    for (size_t i = 0; i < msg.size(); i += chunk) {
      std::string_view piece = std::string_view(msg).substr(i, chunk);
      if (s.inBody()) {
        if (bodyAt == std::string::npos) bodyAt = i;
        out.append(piece);  // what the session does once the headers are past
      } else {
        s.feed(piece, out);
      }
    }
    s.finish(out);
    REQUIRE(out == "Subject: s\r\n\r\nAuthentication-Results: mx.moat.test; body\r\n");
    REQUIRE(bodyAt != std::string::npos);
    REQUIRE(bodyAt >= head.size());  // never before the blank line was seen
  }
  HeaderScrubber fresh("mx.moat.test");
  REQUIRE_FALSE(fresh.inBody());
}

// RFC 8601 §2.2: the authserv-id is a `value`, so a quoted-string names us just as well.
TEST_CASE("a quoted authserv-id naming us is removed") {
  std::string msg =
      "Authentication-Results: \"mx.moat.test\"; dkim=pass header.d=bank.test\r\n"
      "Authentication-Results: (c) \"MX.Moat.Test\" 1; spf=pass\r\n"
      "Authentication-Results: \"mx\\.moat.test\"; dmarc=pass\r\n"
      "Authentication-Results: \"other.example\"; dkim=pass\r\n"
      "Subject: q\r\n\r\nbody\r\n";
  for (size_t chunk : {1, 3, 4096}) {
    INFO("chunk " << chunk);
    unsigned removed = 0;
    REQUIRE(scrub(msg, chunk, &removed) ==
            "Authentication-Results: \"other.example\"; dkim=pass\r\nSubject: q\r\n\r\nbody\r\n");
    REQUIRE(removed == 3);
  }
}

// RFC 5322 §4.5.8 (obs-optional): white space before the colon still names the field.
TEST_CASE("Authentication-Results with white space before the colon is removed") {
  std::string msg =
      "Authentication-Results : mx.moat.test; dkim=pass\r\n"
      "Authentication-Results\t \t: mx.moat.test; spf=pass\r\n"
      "Authentication-Results-X: mx.moat.test; kept, another field\r\n"
      "\r\nbody\r\n";
  unsigned removed = 0;
  REQUIRE(scrub(msg, 2, &removed) == "Authentication-Results-X: mx.moat.test; kept, another field\r\n\r\nbody\r\n");
  REQUIRE(removed == 2);
}

TEST_CASE("an Authentication-Results field too long to judge is removed, other long fields pass") {
  std::string pad(HeaderScrubber::kMaxField + 10, 'a');
  // The forged id on the first line, a long fold after it
  std::string forged = "Authentication-Results: mx.moat.test; dkim=pass\r\n\treason=\"" + pad + "\"\r\n";
  // ...or hidden after a comment longer than what the scrubber holds
  std::string hidden = "Authentication-Results: (" + pad + ") mx.moat.test; spf=pass\r\n";
  std::string other = "X-Long: " + pad + "\r\n";
  std::string msg = forged + "Subject: a\r\n" + hidden + other + "\r\nbody\r\n";
  for (size_t chunk : {1000, 70000}) {
    INFO("chunk " << chunk);
    unsigned removed = 0;
    REQUIRE(scrub(msg, chunk, &removed) == "Subject: a\r\n" + other + "\r\nbody\r\n");
    REQUIRE(removed == 2);
  }
}

TEST_CASE("a control character after our authserv-id does not hide it") {
  // A reader that drops the NUL would see "mx.moat.test; dkim=pass".
  using namespace std::string_literals;
  std::string msg = "Authentication-Results: mx.moat.test\0; dkim=pass\r\nSubject: s\r\n\r\nb\r\n"s;
  unsigned removed = 0;
  REQUIRE(scrub(msg, 4, &removed) == "Subject: s\r\n\r\nb\r\n");
  REQUIRE(removed == 1);
}

TEST_CASE("a line that is no header field starts the body after an inserted empty line") {
  struct Case {
    std::string in, want;
  } cases[] = {
      {"just body\r\nline two\r\n", "\r\njust body\r\nline two\r\n"},
      {"Subject: s\r\nno colon here\r\nX-Not: a field now\r\n",
       "Subject: s\r\n\r\nno colon here\r\nX-Not: a field now\r\n"},
      {" starts with a space\r\n", "\r\n starts with a space\r\n"},
      {"From alice@example.test Mon Jan 1\r\nSubject: s\r\n\r\nb\r\n",
       "\r\nFrom alice@example.test Mon Jan 1\r\nSubject: s\r\n\r\nb\r\n"},
      {"Subject: s\r\nlast line without its end", "Subject: s\r\n\r\nlast line without its end"},
      // Not changed: fields with white space before the colon, folded fields, a proper end.
      {"Subject : s\r\nX-Folded: a\r\n b\r\n\r\nbody\r\n", "Subject : s\r\nX-Folded: a\r\n b\r\n\r\nbody\r\n"},
  };
  for (const auto& c : cases) {
    for (size_t chunk : {1, 2, 3, 7, 64}) {
      INFO(c.in << " chunk " << chunk);
      REQUIRE(scrub(c.in, chunk) == c.want);
    }
  }
}

namespace {
std::string strip(const std::string& msg, size_t chunk, HeaderScrubber& s) {
  std::string out;
  for (size_t i = 0; i < msg.size(); i += chunk) s.feed(std::string_view(msg).substr(i, chunk), out);
  s.finish(out);
  return out;
}
}  // namespace

TEST_CASE("fields named by strip_inbound are removed by name or prefix, folded or not, any case") {
  std::string msg =
      "X-Spam-Status: No, score=-10\r\n"
      "Subject: hello\r\n"
      "x-spam-score:\r\n\t-10\r\n"
      "X-Spamd-Result: kept, not under the x-spam- prefix\r\n"
      "X-MOAT-URIBL : forged\r\n"
      "X-Moat: exact name only\r\n"
      "X-Other: kept\r\n"
      "\r\n"
      "X-Spam-Status: in the body stays\r\n";
  std::string want =
      "Subject: hello\r\n"
      "X-Spamd-Result: kept, not under the x-spam- prefix\r\n"
      "X-Other: kept\r\n"
      "\r\n"
      "X-Spam-Status: in the body stays\r\n";
  for (size_t chunk : {1, 2, 5, 64, 4096}) {
    INFO("chunk " << chunk);
    HeaderScrubber s("mx.moat.test", {"x-spam-*", "x-moat-*", "x-moat"});
    REQUIRE(strip(msg, chunk, s) == want);
    CHECK(s.stripped() == 4);
    CHECK(s.removed() == 0);
    CHECK(s.strippedNames() == std::vector<std::string>{"X-Spam-Status", "x-spam-score", "X-MOAT-URIBL", "X-Moat"});
  }
}

TEST_CASE("without strip patterns the same fields pass, and the forged Authentication-Results rule still holds") {
  std::string msg =
      "X-Spam-Status: No\r\n"
      "Authentication-Results: mx.moat.test; dkim=pass\r\n"
      "\r\nbody\r\n";
  HeaderScrubber s("mx.moat.test");
  CHECK(strip(msg, 3, s) == "X-Spam-Status: No\r\n\r\nbody\r\n");
  CHECK(s.stripped() == 0);
  CHECK(s.removed() == 1);
}

TEST_CASE("a stripped field too long to hold is removed whole, continuation lines too") {
  std::string longValue(HeaderScrubber::kMaxField + 100, 'a');
  std::string msg = "X-Spam-Report: " + longValue + "\r\n\t" + longValue + "\r\nSubject: s\r\n\r\nbody\r\n";
  for (size_t chunk : {7, 4096, 1 << 20}) {
    INFO("chunk " << chunk);
    HeaderScrubber s("mx.moat.test", {"x-spam-*"});
    CHECK(strip(msg, chunk, s) == "Subject: s\r\n\r\nbody\r\n");
    CHECK(s.stripped() == 1);
  }
}

TEST_CASE("the names logged are distinct and at most kMaxNames") {
  std::string msg;
  for (int i = 0; i < 20; ++i) msg += "X-Spam-F" + std::to_string(i) + ": v\r\nx-spam-f0: again\r\n";
  msg += "\r\nbody\r\n";
  HeaderScrubber s("mx.moat.test", {"x-spam-*"});
  CHECK(strip(msg, 4096, s) == "\r\nbody\r\n");
  CHECK(s.stripped() == 40);
  CHECK(s.strippedNames().size() == HeaderScrubber::kMaxNames);
  CHECK(s.strippedNames().front() == "X-Spam-F0");
}
