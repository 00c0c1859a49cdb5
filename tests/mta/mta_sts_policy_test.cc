// Tests for mta/daemon/mta_sts_policy: the MTA-STS TXT record and policy file (RFC 8461
// §3.1, §3.2), mx patterns (§4.1), and the bounded HTTP response parser of the policy fetch.
#include "mta/daemon/mta_sts_policy.h"

#include <catch2/catch.hpp>

using namespace moat::mta::sts;

namespace {
bool parses(const std::string& body, Policy& p) {
  std::string error;
  bool ok = parsePolicy(body, p, error);
  if (!ok) INFO(error);
  return ok;
}
// `raw` fed in two pieces, split after `at` octets (then the close when `close`).
HttpResponse::State feedSplit(HttpResponse& r, std::string_view raw, size_t at, bool close = false) {
  r.feed(raw.substr(0, at));
  r.feed(raw.substr(at));
  return close ? r.end() : r.state();
}
bool rejects(const std::string& body) {
  Policy p;
  std::string error;
  bool ok = parsePolicy(body, p, error);
  return !ok && !error.empty();
}
}  // namespace

TEST_CASE("MTA-STS policy: every field, LF and CRLF") {
  Policy p;
  REQUIRE(parses(
      "version: STSv1\r\nmode: enforce\r\nmx: MX1.Example.Test.\r\nmx: *.mail.example.test\r\nmax_age: 86400\r\n", p));
  CHECK(p.mode == Mode::Enforce);
  CHECK(p.maxAge == 86400);
  REQUIRE(p.mx.size() == 2);
  CHECK(p.mx[0] == "mx1.example.test");
  CHECK(p.mx[1] == "*.mail.example.test");
  REQUIRE(parses("version: STSv1\nmode: testing\nmx: mx.example.test\nmax_age: 0\nextension_key: whatever\n", p));
  CHECK(p.mode == Mode::Testing);
  CHECK(p.maxAge == 0);
  REQUIRE(parses("version: STSv1\nmode: none\nmax_age: 31557600", p));  // no final newline, no mx with none
  CHECK(p.mode == Mode::None);
  CHECK(p.maxAge == 31557600);
  CHECK(p.mx.empty());
}

TEST_CASE("MTA-STS policy: malformed ones are fetch failures") {
  CHECK(rejects(""));
  CHECK(rejects("mode: enforce\nmx: mx.example.test\nmax_age: 86400\n"));                     // no version
  CHECK(rejects("version: STSv2\nmode: enforce\nmx: mx.example.test\nmax_age: 86400\n"));     // wrong version
  CHECK(rejects("version: STSv1\nmx: mx.example.test\nmax_age: 86400\n"));                    // no mode
  CHECK(rejects("version: STSv1\nmode: strict\nmx: mx.example.test\nmax_age: 86400\n"));      // unknown mode
  CHECK(rejects("version: STSv1\nmode: enforce\nmode: testing\nmx: a.test\nmax_age: 1\n"));   // two modes
  CHECK(rejects("version: STSv1\nmode: enforce\nmx: mx.example.test\n"));                     // no max_age
  CHECK(rejects("version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 31557601\n"));  // over the limit
  CHECK(rejects("version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: -1\n"));
  CHECK(rejects("version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 1d\n"));
  CHECK(rejects("version: STSv1\nmode: enforce\nmax_age: 86400\n"));                         // no mx
  CHECK(rejects("version: STSv1\nmode: enforce\nmx: mx.*.example.test\nmax_age: 86400\n"));  // * not leftmost
  CHECK(rejects("version: STSv1\nmode: enforce\nmx: mx example\nmax_age: 86400\n"));
  CHECK(rejects("version: STSv1\nmode: enforce\nmx: \nmax_age: 86400\n"));
  CHECK(rejects("version: STSv1\nthis is not a key value line\nmode: enforce\nmx: a.test\nmax_age: 1\n"));
  CHECK(rejects("<html><body>Not Found</body></html>"));
}

TEST_CASE("MTA-STS policy: an mx the cache file cannot read back (an empty label, a hyphen at an end) is refused") {
  // Found by fuzz_records: "mx: .." was taken as the pattern ".", and "mx: -" as "-", which
  // the cache file (read back through parsePolicy, a trailing dot dropped, "-" meaning no mx)
  // refused: the whole file, every domain's policy with it, was lost at the next start.
  CHECK(rejects("version: STSv1\nmode: enforce\nmx: ..\nmax_age: 86400\n"));
  CHECK(rejects("version: STSv1\nmode: enforce\nmx: mx.example.test..\nmax_age: 86400\n"));
  CHECK(rejects("version: STSv1\nmode: enforce\nmx: .example.test\nmax_age: 86400\n"));
  CHECK(rejects("version: STSv1\nmode: enforce\nmx: mx..example.test\nmax_age: 86400\n"));
  CHECK(rejects("version: STSv1\nmode: enforce\nmx: *..example.test\nmax_age: 86400\n"));
  // "-", the cache file's "no mx", and other labels that start or end with '-'.
  CHECK(rejects("version: STSv1\nmode: enforce\nmx: -\nmax_age: 86400\n"));
  CHECK(rejects("version: STSv1\nmode: enforce\nmx: -mx.example.test\nmax_age: 86400\n"));
  CHECK(rejects("version: STSv1\nmode: enforce\nmx: mx-.example.test\nmax_age: 86400\n"));
  CHECK(rejects("version: STSv1\nmode: enforce\nmx: *.-\nmax_age: 86400\n"));
  Policy p;
  REQUIRE(parses(
      "version: STSv1\nmode: enforce\nmx: mx.example.test.\nmx: *.example.net\nmx: mx-2.a_b.test\nmax_age: 86400\n",
      p));
  p.id = "id1";
  std::string file = encodeCache({{"example.test", p, 2000}}, 10, 1 << 20);
  std::vector<CachedPolicy> back;
  std::string error;
  REQUIRE(decodeCache(file, 1000, 10, back, error));
  REQUIRE(back.size() == 1);
  CHECK(back[0].policy.mx == p.mx);
}

TEST_CASE("MTA-STS cache: a policy of max_age 0 read back is expired, so left out") {
  // Found by fuzz_records: the expiry was brought back to now + max_age after the check for
  // expired policies, so a max_age 0 policy came back already expired.
  std::string file =
      "moat-mta-sts-cache 1\nexample.test 2000 id1 enforce 0 mx.example.test\n"
      "example.org 2000 id2 enforce 500 mx.example.org\nend 2\n";
  std::vector<CachedPolicy> back;
  std::string error;
  REQUIRE(decodeCache(file, 1000, 10, back, error));
  REQUIRE(back.size() == 1);
  CHECK(back[0].domain == "example.org");
  CHECK(back[0].expires == 1500);
}

TEST_CASE("MTA-STS mx patterns: a wildcard takes one leftmost label") {
  CHECK(mxMatches("mx.example.test", "mx.example.test"));
  CHECK(mxMatches("mx.example.test", "MX.Example.Test."));
  CHECK_FALSE(mxMatches("mx.example.test", "mx2.example.test"));
  CHECK_FALSE(mxMatches("mx.example.test", "a.mx.example.test"));
  CHECK(mxMatches("*.example.test", "mx.example.test"));
  CHECK(mxMatches("*.example.test", "MX1.EXAMPLE.TEST"));
  CHECK_FALSE(mxMatches("*.example.test", "a.b.example.test"));
  CHECK_FALSE(mxMatches("*.example.test", "example.test"));
  CHECK_FALSE(mxMatches("*.example.test", ".example.test"));
  CHECK_FALSE(mxMatches("*.example.test", "mxexample.test"));
  Policy p;
  p.mx = {"mx1.example.test", "*.backup.example.test"};
  CHECK(p.allows("mx1.example.test"));
  CHECK(p.allows("b1.backup.example.test"));
  CHECK_FALSE(p.allows("mx2.example.test"));
}

TEST_CASE("MTA-STS TXT record: exactly one v=STSv1 record with an id") {
  std::string error;
  CHECK(parseTxt({"v=STSv1; id=20160831085700Z;"}, error) == "20160831085700Z");
  CHECK(parseTxt({"v=spf1 -all", "v=STSv1;id=abc123"}, error) == "abc123");
  CHECK(parseTxt({}, error).empty());
  CHECK(parseTxt({"v=spf1 -all"}, error).empty());
  CHECK(parseTxt({"v=STSv1; id=a", "v=STSv1; id=b"}, error).empty());  // two records: none
  CHECK(error.find("more than one") != std::string::npos);
  CHECK(parseTxt({"v=STSv1;"}, error).empty());  // no id
  CHECK(parseTxt({"v=STSv1; id=not-alnum"}, error).empty());
  CHECK(parseTxt({"v=STSv1; id=" + std::string(33, 'a')}, error).empty());
  CHECK(parseTxt({"v=STSv10; id=abc"}, error).empty());  // another version
}

TEST_CASE("HTTP response: status, headers, Content-Length, in pieces") {
  HttpResponse r;
  std::string raw = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
  for (char c : raw.substr(0, 20)) REQUIRE(r.feed(std::string_view(&c, 1)) == HttpResponse::State::Incomplete);
  CHECK(r.feed(raw.substr(20)) == HttpResponse::State::Done);
  CHECK(r.status() == 200);
  CHECK(r.header("CONTENT-TYPE") == "text/plain");
  CHECK(r.body() == "hello");  // bytes past Content-Length are not the body
}

TEST_CASE("HTTP response: read to close, and other statuses") {
  HttpResponse r;
  CHECK(r.feed("HTTP/1.0 200 OK\r\nServer: x\r\n\r\nversion: STSv1\n") == HttpResponse::State::Incomplete);
  CHECK(r.feed("mode: none\n") == HttpResponse::State::Incomplete);
  CHECK(r.end() == HttpResponse::State::Done);
  CHECK(r.body() == "version: STSv1\nmode: none\n");
  HttpResponse redirect;
  CHECK(redirect.feed("HTTP/1.1 301 Moved\r\nLocation: https://elsewhere/\r\nContent-Length: 0\r\n\r\n") ==
        HttpResponse::State::Done);
  CHECK(redirect.status() == 301);
}

TEST_CASE("HTTP response: size caps and bad input") {
  HttpResponse big(16);
  CHECK(big.feed("HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n") == HttpResponse::State::Error);
  HttpResponse bigClose(16);
  CHECK(bigClose.feed("HTTP/1.1 200 OK\r\n\r\n0123456789") == HttpResponse::State::Incomplete);
  CHECK(bigClose.feed("0123456789") == HttpResponse::State::Error);
  HttpResponse head;
  CHECK(head.feed("HTTP/1.1 200 OK\r\nX: " + std::string(HttpResponse::kMaxHead, 'a')) == HttpResponse::State::Error);
  HttpResponse gzip;
  CHECK(gzip.feed("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n") ==
        HttpResponse::State::Error);
  CHECK(gzip.error().find("Transfer-Encoding") != std::string::npos);
  HttpResponse notHttp;
  CHECK(notHttp.feed("220 mail.example.test ESMTP\r\n\r\n") == HttpResponse::State::Error);
  HttpResponse badStatus;
  CHECK(badStatus.feed("HTTP/1.1 2x0 OK\r\n\r\n") == HttpResponse::State::Error);
  HttpResponse badHeader;
  CHECK(badHeader.feed("HTTP/1.1 200 OK\r\nno colon here\r\n\r\n") == HttpResponse::State::Error);
  HttpResponse badLength;
  CHECK(badLength.feed("HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n") == HttpResponse::State::Error);
  HttpResponse shortBody;
  CHECK(shortBody.feed("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc") == HttpResponse::State::Incomplete);
  CHECK(shortBody.end() == HttpResponse::State::Error);
  HttpResponse noHead;
  CHECK(noHead.feed("HTTP/1.1 200 OK\r\n") == HttpResponse::State::Incomplete);
  CHECK(noHead.end() == HttpResponse::State::Error);
}

TEST_CASE("HTTP response: chunked body decoded, split at every octet boundary") {
  // Two chunks (one with extensions, upper-case hex, leading zeros), the last chunk with an
  // extension, a trailer field; then bytes past the message, which are not the body.
  const std::string raw =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nContent-Type: text/plain\r\n\r\n"
      "0F ; name=\"v a l\" ;x\r\nversion: STSv1\n\r\n"
      "00e\r\nmode: testing\n\r\n"
      "1c\r\n\nmx: *.example.test\nmax_age:\r\n"
      "5\r\n 600\n\r\n"
      "0;last\r\nExpires: never\r\n\r\n"
      "HTTP/1.1 400 junk";
  const std::string body = "version: STSv1\nmode: testing\n\nmx: *.example.test\nmax_age: 600\n";
  for (size_t at = 0; at <= raw.size(); ++at) {
    INFO("split at " << at);
    HttpResponse r;
    REQUIRE(feedSplit(r, raw, at) == HttpResponse::State::Done);
    CHECK(r.body() == body);
    CHECK(r.status() == 200);
  }
  HttpResponse bytes;
  for (char c : raw) bytes.feed(std::string_view(&c, 1));
  REQUIRE(bytes.state() == HttpResponse::State::Done);
  CHECK(bytes.body() == body);
  Policy p;
  REQUIRE(parses(bytes.body(), p));
  CHECK(p.mode == Mode::Testing);
  // An empty body: only the last chunk.
  HttpResponse empty;
  CHECK(empty.feed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n") == HttpResponse::State::Done);
  CHECK(empty.body().empty());
}

TEST_CASE("HTTP response: chunked body within 64 KiB, every chunk-size line bounded") {
  const std::string head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
  // Exactly the cap, in 1 KiB chunks: taken. One octet more, in a further chunk: refused.
  std::string atCap = head;
  for (int i = 0; i < 64; ++i) atCap += "400\r\n" + std::string(1024, 'a') + "\r\n";
  HttpResponse ok;
  CHECK(ok.feed(atCap + "0\r\n\r\n") == HttpResponse::State::Done);
  CHECK(ok.body().size() == 65536);
  HttpResponse over;
  CHECK(over.feed(atCap + "1\r\nb\r\n0\r\n\r\n") == HttpResponse::State::Error);
  CHECK(over.error().find("over 65536") != std::string::npos);
  // A chunk size over the cap is refused at its line, before any of its data; a huge one
  // does not overflow.
  for (const char* size : {"10001", "ffffffffffffffffffffffff1"}) {
    HttpResponse big;
    CHECK(big.feed(head + size + "\r\n") == HttpResponse::State::Error);
    CHECK(big.error().find("over 65536") != std::string::npos);
  }
  // A chunk-size line (extensions included) longer than kMaxChunkLine, even without its end.
  HttpResponse longLine;
  CHECK(longLine.feed(head + "5;" + std::string(HttpResponse::kMaxChunkLine, 'x')) == HttpResponse::State::Error);
  CHECK(longLine.error().find("chunk-size line") != std::string::npos);
  HttpResponse longTrailer;
  CHECK(longTrailer.feed(head + "0\r\nX: " + std::string(HttpResponse::kMaxHead, 'x')) == HttpResponse::State::Error);
}

TEST_CASE("HTTP response: malformed chunking is an error, however it is split") {
  const std::string head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
  const std::vector<std::string> bad = {
      head + "x\r\nhello\r\n0\r\n\r\n",         // not hex
      head + "\r\nhello\r\n0\r\n\r\n",          // no size
      head + "-5\r\nhello\r\n0\r\n\r\n",        // a sign
      head + "5 x\r\nhello\r\n0\r\n\r\n",       // junk after the size
      head + "5\nhello\r\n0\r\n\r\n",           // a bare LF
      head + "5\r\nhello!\r\n0\r\n\r\n",        // more data than the size
      head + "5\r\nhelloXY0\r\n\r\n",           // no CRLF after the data
      head + "5;a\x01b\r\nhello\r\n0\r\n\r\n",  // a control character in an extension
      head + "0\r\nno colon\r\n\r\n",           // a malformed trailer field
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
  };
  for (const auto& raw : bad) {
    for (size_t at = 0; at <= raw.size(); ++at) {
      INFO(raw << " split at " << at);
      HttpResponse r;
      CHECK(feedSplit(r, raw, at, true) == HttpResponse::State::Error);
      CHECK_FALSE(r.error().empty());
    }
  }
  // The close before the last chunk (or before the trailer section ended) is an error.
  for (const std::string& cut : {head + "5\r\nhel", head + "5\r\nhello\r\n", head + "0\r\n", head + "0\r\nA: b\r\n"}) {
    HttpResponse r;
    CHECK(r.feed(cut) == HttpResponse::State::Incomplete);
    CHECK(r.end() == HttpResponse::State::Error);
    CHECK(r.error().find("chunked") != std::string::npos);
  }
}
