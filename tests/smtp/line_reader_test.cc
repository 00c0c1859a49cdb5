// Tests for mta/smtp/protocol's LineReader: CRLF and bare-LF lines, pipelining, the maxLine
// bound (RFC 5321 §4.5.3.1.4) with recovery after a too-long line, longer lines for SASL
// (RFC 4954 §4), bounded memory, and the remainder handed over after DATA/BDAT/STARTTLS.
#include <catch2/catch.hpp>

#include <vector>

#include "mta/smtp/protocol.h"

using namespace moat::mta::smtp;
using Status = LineReader::Status;

namespace {

// Every line and TooLong the reader yields until it needs more input.
std::vector<std::string> drain(LineReader& r) {
  std::vector<std::string> out;
  std::string line;
  for (int guard = 0; guard < 100000; ++guard) {
    Status s = r.next(line);
    if (s == Status::NeedMore) break;
    out.push_back(s == Status::TooLong ? "<TOO LONG>" : line);
  }
  return out;
}

}  // namespace

TEST_CASE("line reader yields CRLF lines, pipelined or split") {
  LineReader r;
  r.feed("EHLO a\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDA");
  REQUIRE(drain(r) == std::vector<std::string>{"EHLO a", "MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>"});
  REQUIRE(r.buffered() == 2);
  r.feed("TA\r");
  REQUIRE(drain(r).empty());
  r.feed("\n");
  REQUIRE(drain(r) == std::vector<std::string>{"DATA"});
  REQUIRE(r.buffered() == 0);
  REQUIRE(r.bareLfLines() == 0);
}

TEST_CASE("bare LF ends a line and is counted, a bare CR stays in the line") {
  LineReader r;
  r.feed("NOOP\nQUIT\r\nNOOP a\rb\r\n\r\n");
  REQUIRE(drain(r) == std::vector<std::string>{"NOOP", "QUIT", "NOOP a\rb", ""});
  REQUIRE(r.bareLfLines() == 1);
  REQUIRE(std::holds_alternative<Reply>(parseCommand("NOOP a\rb", false)));
}

TEST_CASE("a 10 KB line is reported once as too long, then lines flow again") {
  const std::string huge(10 * 1024, 'A');
  SECTION("in one feed") {
    LineReader r;
    r.feed("NOOP\r\n" + huge + "\r\nQUIT\r\n");
    REQUIRE(drain(r) == std::vector<std::string>{"NOOP", "<TOO LONG>", "QUIT"});
    REQUIRE(r.tooLongLines() == 1);
  }
  SECTION("in small pieces, next() after each feed") {
    LineReader r;
    std::vector<std::string> got;
    const std::string input = "NOOP\r\n" + huge + "\r\nQUIT\r\n";
    size_t maxBuffered = 0;
    for (size_t i = 0; i < input.size(); i += 100) {
      r.feed(std::string_view(input).substr(i, 100));
      maxBuffered = std::max(maxBuffered, r.buffered());
      for (auto& l : drain(r)) got.push_back(l);
    }
    REQUIRE(got == std::vector<std::string>{"NOOP", "<TOO LONG>", "QUIT"});
    REQUIRE(maxBuffered <= 2048 + 100);
  }
}

TEST_CASE("the line limit counts the CRLF") {
  LineReader r(16);
  r.feed(std::string(14, 'x') + "\r\n");  // 16 octets: fits
  REQUIRE(drain(r) == std::vector<std::string>{std::string(14, 'x')});
  r.feed(std::string(15, 'x') + "\r\n");  // 17 octets
  REQUIRE(drain(r) == std::vector<std::string>{"<TOO LONG>"});
  r.feed(std::string(15, 'x') + "\n");  // 16 octets with a bare LF: fits
  REQUIRE(drain(r).size() == 1);
  r.feed(std::string(16, 'x'));  // no line end yet, already at the limit
  REQUIRE(drain(r) == std::vector<std::string>{"<TOO LONG>"});
  REQUIRE(r.buffered() == 0);
  r.feed("yyyy\r\nNOOP\r\n");  // the tail of the long line is dropped
  REQUIRE(drain(r) == std::vector<std::string>{"NOOP"});
}

// RFC 4954 §4: a SASL response may be far longer than a command line; the session raises
// the limit for the line after a 334 and lowers it again after.
TEST_CASE("the limit can change between lines, a partly read line included") {
  LineReader r(16);
  r.feed(std::string(20, 'x'));  // no line end yet; raised before next() sees it
  r.setMaxLine(32);
  REQUIRE(drain(r).empty());
  r.feed("\r\n" + std::string(20, 'y') + "\r\n");
  REQUIRE(drain(r) == std::vector<std::string>{std::string(20, 'x'), std::string(20, 'y')});
  r.feed(std::string(30, 'z') + "\r\n");  // 32 octets: fits
  REQUIRE(drain(r).size() == 1);
  r.setMaxLine(16);
  r.feed(std::string(20, 'w') + "\r\nNOOP\r\n");
  REQUIRE(drain(r) == std::vector<std::string>{"<TOO LONG>", "NOOP"});
}

// AUTH with an initial response: a line with the prefix may be longer, every other keeps the
// limit, and an endless one under the prefix still keeps memory bounded.
TEST_CASE("a line starting with the prefix may be longer, any case, others may not") {
  LineReader r(16);
  r.allowLongerLines("AUTH ", 40);
  r.feed("auth " + std::string(33, 'a') + "\r\n");  // 40 octets: fits
  r.feed("NOOP " + std::string(33, 'n') + "\r\n");
  r.feed("AUTH " + std::string(34, 'a') + "\r\n");  // 41
  r.feed("AUTHX" + std::string(20, 'a') + "\r\n");
  REQUIRE(drain(r) ==
          std::vector<std::string>{"auth " + std::string(33, 'a'), "<TOO LONG>", "<TOO LONG>", "<TOO LONG>"});
  SECTION("split so the prefix arrives in pieces") {
    for (const std::string piece : {"AU", "TH ", "bbbbbbbbbbbbbbbbbbbb", "\r\n"}) {
      r.feed(piece);
      auto got = drain(r);
      if (piece != "\r\n")
        REQUIRE(got.empty());
      else
        REQUIRE(got == std::vector<std::string>{"AUTH " + std::string(20, 'b')});
    }
  }
  SECTION("endless") {
    size_t tooLong = 0;
    for (int i = 0; i < 100; ++i) {
      r.feed(i == 0 ? "AUTH " + std::string(95, 'c') : std::string(100, 'c'));
      for (auto& l : drain(r)) tooLong += l == "<TOO LONG>";
      REQUIRE(r.buffered() < 40 + 100);
    }
    REQUIRE(tooLong == 1);
    r.feed("\r\nQUIT\r\n");
    REQUIRE(drain(r) == std::vector<std::string>{"QUIT"});
  }
}

TEST_CASE("an endless line keeps memory bounded") {
  LineReader r(512);
  const std::string chunk(4096, 'z');
  size_t tooLong = 0;
  for (int i = 0; i < 256; ++i) {  // 1 MiB without a line end
    r.feed(chunk);
    for (auto& l : drain(r)) tooLong += l == "<TOO LONG>";
    REQUIRE(r.buffered() < 512);
  }
  REQUIRE(tooLong == 1);
  r.feed("\r\nQUIT\r\n");
  REQUIRE(drain(r) == std::vector<std::string>{"QUIT"});
}

TEST_CASE("the remainder after a command is returned intact") {
  LineReader r;
  const std::string chunk = "BDAT 3000 LAST\r\n" + std::string(3000, 'b');  // no line end, > maxLine
  r.feed(chunk + "QUIT\r\n");
  std::string line;
  REQUIRE(r.next(line) == Status::Line);
  REQUIRE(line == "BDAT 3000 LAST");
  REQUIRE(r.takeRemainder() == std::string(3000, 'b') + "QUIT\r\n");
  REQUIRE(r.buffered() == 0);
  REQUIRE(r.next(line) == Status::NeedMore);
  r.feed("RSET\r\n");
  REQUIRE(drain(r) == std::vector<std::string>{"RSET"});
}
