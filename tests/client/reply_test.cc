// Tests for mta/client/reply.h: the reply reader (bytes split anywhere, bounds, malformed
// lines), EHLO keywords, SIZE and AUTH, and the RFC 3463 status a stored reply gives a DSN.
#include "mta/client/reply.h"

#include <catch2/catch.hpp>

using namespace moat::mta::client;

namespace {

// Every reply in `bytes`, fed `step` bytes at a time; `error` gets the reader's error.
std::vector<Reply> readAll(std::string_view bytes, size_t step, std::string& error) {
  ReplyReader reader;
  std::vector<Reply> out;
  while (!bytes.empty() && reader.error().empty()) {
    std::string_view piece = bytes.substr(0, step);
    bytes.remove_prefix(piece.size());
    while (!piece.empty() && reader.error().empty())
      if (auto r = reader.feed(piece)) out.push_back(*r);
  }
  error = reader.error();
  return out;
}

}  // namespace

TEST_CASE("reply reader: multi-line replies, however the bytes are split") {
  std::string bytes =
      "220 mx.example.net ESMTP\r\n250-mx.example.net\r\n250-SIZE 10240000\r\n250 CHUNKING\r\n"
      "552-5.2.2 over quota\n552 5.2.2 see the help page\r\n";
  for (size_t step : {1, 2, 7, 64, 1000}) {
    std::string error;
    auto replies = readAll(bytes, step, error);
    INFO(step);
    REQUIRE(error.empty());
    REQUIRE(replies.size() == 3);
    REQUIRE(replies[0].code == 220);
    REQUIRE(replies[1].text == "250-mx.example.net\n250-SIZE 10240000\n250 CHUNKING");
    REQUIRE(replies[2].code == 552);
    REQUIRE(replies[2].text == "552-5.2.2 over quota\n552 5.2.2 see the help page");
  }
}

TEST_CASE("reply reader: codes outside 2xx to 5xx, changed codes and overlong lines are errors") {
  for (std::string bad :
       {"000 hi\r\n", "199 hi\r\n", "600 hi\r\n", "99 hi\r\n", "25x hi\r\n", "250x\r\n", "250-a\r\n251 b\r\n"}) {
    std::string error;
    auto replies = readAll(bad, 3, error);
    INFO(bad);
    REQUIRE(replies.empty());
    REQUIRE_FALSE(error.empty());
  }
  std::string error;
  REQUIRE(readAll("250 " + std::string(kMaxReplyLine - 4, 'x') + "\r\n", 100, error).size() == 1);
  REQUIRE(readAll("250 " + std::string(kMaxReplyLine - 3, 'x') + "\r\n", 100, error).empty());
  REQUIRE(error == "reply line too long");
  std::string many;
  for (size_t i = 0; i < kMaxReplyLines; ++i) many += "250-x\r\n";
  REQUIRE(readAll(many + "250 x\r\n", 50, error).empty());
  REQUIRE(error == "reply has too many lines");
}

TEST_CASE("reply reader: EHLO keywords, SIZE and AUTH mechanisms") {
  Reply r{250,
          "250-mx.example.net Hello\n250-size 35882577\n250-AUTH=PLAIN LOGIN\n250-AUTH login cram-md5\n250 8BITMIME"};
  auto ext = parseEhlo(r);
  REQUIRE(ext.count("SIZE") == 1);
  REQUIRE(ext.count("8BITMIME") == 1);
  REQUIRE(ext.count("MX.EXAMPLE.NET") == 0);  // the first line names the server
  REQUIRE(fixedMaxSize(ext) == 35882577);
  REQUIRE(authMechanisms(ext) == std::vector<std::string>{"LOGIN", "CRAM-MD5", "PLAIN", "LOGIN"});
  REQUIRE(fixedMaxSize(parseEhlo({250, "250-x\n250 SIZE"})) == 0);
  REQUIRE(fixedMaxSize(parseEhlo({250, "250-x\n250 SIZE 99999999999999999999999"})) == 0);
  REQUIRE(fixedMaxSize(parseEhlo({250, "250-x\n250 SIZE 12k"})) == 0);
}

TEST_CASE("reply status: the enhanced code when well formed and of the reply's class (RFC 3463)") {
  REQUIRE(replyStatus("550 5.1.1 <bob@example.net>: User unknown") == "5.1.1");
  REQUIRE(replyStatus("552-5.2.2 over quota 552 5.2.2 see the help page") == "5.2.2");
  REQUIRE(replyStatus("451 4.7.1 Greylisted") == "4.7.1");
  REQUIRE(replyStatus("5.4.4 no route to host") == "5.4.4");
  REQUIRE(replyStatus("554 Transaction failed") == "5.0.0");
  REQUIRE(replyStatus("connection refused") == "4.0.0");
  // A DSN's Status: never contradicts its action and is never malformed.
  REQUIRE(replyStatus("550 4.1.1 temporarily unavailable") == "5.0.0");
  REQUIRE(replyStatus("451 4.7n.1 Greylisted") == "4.0.0");
  REQUIRE(replyStatus("550 5.1234.1 odd") == "5.0.0");
  REQUIRE(replyStatus("550 5.1.1.1 odd") == "5.0.0");
  REQUIRE(replyStatus("550 5.1. odd") == "5.0.0");
  // Classes 2, 4 and 5 only (RFC 3463 §3.1), also when the reply's own code is another.
  REQUIRE(replyStatus("330 3.7.1 greylisted") == "4.0.0");
  REQUIRE(replyStatus("3.7.1 greylisted") == "4.0.0");
}
