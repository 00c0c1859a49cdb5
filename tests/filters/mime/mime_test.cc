// Tests for filters/mime: structure (RFC 2046), encodings (RFC 2045), encoded words
// (RFC 2047), parameter continuations (RFC 2231), broken input, limits, HTML and URIs,
// and the filter itself on a real libuv loop and thread pool.
#include <catch2/catch.hpp>

#include <fstream>
#include <functional>
#include <string>
#include <unistd.h>

#include "filters/mime/mime.h"
#include "filters/mime/mime_filter.h"
#include "filters/pipeline.h"
#include "mta/runtime/uv.h"
#include "tests/support/crlf.h"

using namespace moat::filters;
using namespace moat::filters::mime;

namespace {
// Test messages are written with \n and sent with CRLF, as on the wire.
using moat::test::crlf;

const char* kNested = R"(From: a@example.test
To: b@example.test
Subject: nested
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

preamble is ignored
--outer
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Caf=E9 au lait, soft=
 break and =3D sign
--inner
Content-Type: text/html; charset=utf-8

<html><body><p>Hello <b>HTML</b></p></body></html>
--inner--
--outer
Content-Type: application/octet-stream; name="data.bin"
Content-Disposition: attachment; filename="data.bin"
Content-Transfer-Encoding: base64

SGVsbG8gd29y
bGQh
--outer--
epilogue
)";
// `toml` after a listener, as a config file in a fresh temp dir (removed once loaded).
std::shared_ptr<const moat::policy::Config> configFrom(const std::string& toml, moat::policy::Errors& errors) {
  char dir[] = "/tmp/moat-mime-XXXXXX";
  REQUIRE(mkdtemp(dir));
  std::string path = std::string(dir) + "/moat.toml";
  std::ofstream(path) << "[[listener]]\naddress = \"127.0.0.1:2525\"\n" << toml;
  auto config = moat::policy::loadConfig(path, errors);
  unlink(path.c_str());
  rmdir(dir);
  REQUIRE(config);
  return config;
}

// `bytes` of 76-character lines ending in CRLF.
std::string longLines(size_t bytes) {
  std::string body(bytes, 'x');
  for (size_t i = 76; i + 1 < body.size(); i += 78) body.replace(i, 2, "\r\n");
  return body;
}
}  // namespace

TEST_CASE("nested multipart/mixed with multipart/alternative") {
  auto msg = parse(crlf(kNested), Limits{});
  REQUIRE_FALSE(msg->limitExceeded);
  REQUIRE(msg->root.contentType == "multipart/mixed");
  REQUIRE(msg->root.children.size() == 2);
  const Part& alt = msg->root.children[0];
  REQUIRE(alt.contentType == "multipart/alternative");
  REQUIRE(alt.children.size() == 2);
  REQUIRE(alt.children[0].text == "Caf\xC3\xA9 au lait, soft break and = sign");
  REQUIRE(alt.children[1].contentType == "text/html");
  REQUIRE(msg->partCount == 5);
  REQUIRE(msg->attachments.size() == 1);
  REQUIRE(msg->attachments[0].name == "data.bin");
  REQUIRE(msg->attachments[0].type == "application/octet-stream");
  REQUIRE(msg->attachments[0].size == 12);
  REQUIRE(msg->root.children[1].body == "Hello world!");
  // The plain alternative is the body text; the HTML one is not repeated.
  REQUIRE(msg->bodyText == "Caf\xC3\xA9 au lait, soft break and = sign");
  REQUIRE(msg->header("subject") == "nested");
}

TEST_CASE("base64 and quoted-printable decoding") {
  REQUIRE(decodeBase64("SGVsbG8=") == "Hello");
  REQUIRE(decodeBase64("SGVs\r\nbG8h") == "Hello!");
  REQUIRE(decodeBase64("S G V s b G 8 = junk") == "Hello");
  REQUIRE(decodeQuotedPrintable("a=3Db=\r\nc   \r\nd") == "a=bc\r\nd");
  REQUIRE(decodeQuotedPrintable("bad =ZZ and =4") == "bad =ZZ and =4");
  REQUIRE(decodeQuotedPrintable("=C3=A9") == "\xC3\xA9");
}

TEST_CASE("RFC 2231 filename continuation with charset") {
  auto msg = parse(crlf(R"(Content-Type: multipart/mixed; boundary=b

--b
Content-Type: application/pdf;
 name*0*=utf-8''R%C3%A9sum;
 name*1*=%C3%A9;
 name*2=".pdf"
Content-Disposition: attachment;
 filename*0*=iso-8859-1'fr'Caf%E9;
 filename*1="_menu.pdf"
Content-Transfer-Encoding: base64

JVBERi0=
--b--
)"),
                   Limits{});
  REQUIRE(msg->root.children.size() == 1);
  const Part& p = msg->root.children[0];
  REQUIRE(p.params.at("name") == "R\xC3\xA9sum\xC3\xA9.pdf");
  REQUIRE(p.filename == "Caf\xC3\xA9_menu.pdf");
  REQUIRE(p.body == "%PDF-");
  REQUIRE(msg->attachments.at(0).name == "Caf\xC3\xA9_menu.pdf");
}

TEST_CASE("RFC 2047 Q and B encoded words, adjacent words joined") {
  REQUIRE(decodeHeaderWords("=?utf-8?B?SGVsbG8=?=") == "Hello");
  REQUIRE(decodeHeaderWords("=?iso-8859-1?Q?Caf=E9_cr=E8me?=") == "Caf\xC3\xA9 cr\xC3\xA8me");
  // Blanks between encoded words vanish; plain text around them stays.
  REQUIRE(decodeHeaderWords("a =?utf-8?q?b?= =?utf-8?q?c?=  d") == "a bc  d");
  // A multibyte character split over two words survives.
  REQUIRE(decodeHeaderWords("=?utf-8?B?w6k=?= =?utf-8?Q?=C3?= =?utf-8?Q?=A9?=") == "\xC3\xA9\xC3\xA9");
  REQUIRE(decodeHeaderWords("=?UTF-8*en?Q?x?=") == "x");
  REQUIRE(decodeHeaderWords("=?bogus?Q?a?= not") == "a not");
  REQUIRE(decodeHeaderWords("=?utf-8?X?a?=") == "=?utf-8?X?a?=");
  auto msg = parse(crlf("Subject: =?utf-8?B?U3BhbQ==?=\n =?utf-8?Q?_offer?=\n\nbody\n"), Limits{});
  REQUIRE(msg->header("Subject") == "Spam offer");
  REQUIRE(msg->root.header("subject")->raw == "=?utf-8?B?U3BhbQ==?= =?utf-8?Q?_offer?=");
  // RFC 2047 inside a quoted filename, as common mailers write it.
  auto m2 = parse(crlf("Content-Type: application/zip; name=\"=?utf-8?Q?r=C3=A9sum=C3=A9.zip?=\"\n\nx\n"), Limits{});
  REQUIRE(m2->root.filename == "r\xC3\xA9sum\xC3\xA9.zip");
}

TEST_CASE("unknown charset keeps the bytes and is marked") {
  auto msg = parse(crlf("Content-Type: text/plain; charset=x-moat-unknown\n\nab\xE9\n"), Limits{});
  REQUIRE(msg->root.charsetUnknown);
  REQUIRE(msg->root.text == "ab\xE9\r\n");
  auto ok = parse(crlf("Content-Type: text/plain; charset=windows-1252\n\n\x80 5\n"), Limits{});
  REQUIRE_FALSE(ok->root.charsetUnknown);
  REQUIRE(ok->root.text == "\xE2\x82\xAC 5\r\n");
}

TEST_CASE("broken boundaries and a missing final boundary") {
  SECTION("missing final boundary: the last part runs to the end") {
    auto msg = parse(crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--b\n\ntwo\nlast line\n"), Limits{});
    REQUIRE(msg->root.children.size() == 2);
    REQUIRE(msg->root.children[0].text == "one");
    REQUIRE(msg->root.children[1].text == "two\r\nlast line\r\n");
  }
  SECTION("boundary never appears: the body is text") {
    auto msg = parse(crlf("Content-Type: multipart/mixed; boundary=nothere\n\nhello there\n"), Limits{});
    REQUIRE(msg->root.children.empty());
    REQUIRE(msg->bodyText == "hello there\r\n");
  }
  SECTION("no boundary parameter") {
    auto msg = parse(crlf("Content-Type: multipart/mixed\n\nplain\n"), Limits{});
    REQUIRE(msg->root.contentType == "text/plain");
    REQUIRE(msg->bodyText == "plain\r\n");
  }
  SECTION("a longer boundary that starts with the real one is not a delimiter") {
    auto msg = parse(crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--bx\nstill one\n--b--\n"), Limits{});
    REQUIRE(msg->root.children.size() == 1);
    REQUIRE(msg->root.children[0].text == "one\r\n--bx\r\nstill one");
  }
  SECTION("no headers, bare LF, garbage") {
    auto msg = parse("just text\nno headers\n", Limits{});
    REQUIRE(msg->bodyText == "just text\nno headers\n");
    auto empty = parse("", Limits{});
    REQUIRE(empty->partCount == 1);
  }
}

TEST_CASE("message/rfc822 is parsed as a nested message") {
  auto msg = parse(crlf(R"(Content-Type: multipart/mixed; boundary=b

--b
Content-Type: message/rfc822

Subject: inner
Content-Type: text/plain

inner body http://inner.example.test/x
--b--
)"),
                   Limits{});
  const Part& m = msg->root.children.at(0);
  REQUIRE(m.isMessage());
  REQUIRE(m.children.size() == 1);
  REQUIRE(m.children[0].header("Subject")->decoded == "inner");
  REQUIRE(msg->uris == std::vector<std::string>{"http://inner.example.test/x"});
}

TEST_CASE("depth and part-count limits set the flag, never crash") {
  std::string deep;
  for (int i = 0; i < 50; ++i) deep += "Content-Type: multipart/mixed; boundary=b" + std::to_string(i) + "\n\n--b" + std::to_string(i) + "\n";
  deep += "\nleaf\n";
  Limits limits;
  auto msg = parse(crlf(deep), limits);
  REQUIRE(msg->limitExceeded);
  REQUIRE(msg->limitReason == "max_depth");

  limits.maxDepth = 60;
  auto ok = parse(crlf(deep), limits);
  REQUIRE_FALSE(ok->limitExceeded);
  REQUIRE(ok->partCount == 51);

  std::string many = "Content-Type: multipart/mixed; boundary=b\n\n";
  for (int i = 0; i < 1000; ++i) many += "--b\n\npart\n";
  many += "--b--\n";
  auto m2 = parse(crlf(many), Limits{});
  REQUIRE(m2->limitExceeded);
  REQUIRE(m2->limitReason == "max_parts");
  REQUIRE(m2->partCount == 500);

  Limits small;
  small.maxDecodedSize = 10;
  auto m3 = parse(crlf("Content-Transfer-Encoding: base64\n\nSGVsbG8gd29ybGQhIEhlbGxvIHdvcmxkIQ==\n"), small);
  REQUIRE(m3->limitExceeded);
  REQUIRE(m3->limitReason == "max_decoded_size");
  REQUIRE(m3->root.body == "Hello worl");
  REQUIRE(m3->root.truncated);
}

TEST_CASE("a shallower parse keeps the structure, sizes and limits, and copies no body") {
  std::string raw = crlf(kNested);
  auto full = parse(raw, Limits{}, Depth::Text);
  auto bodies = parse(raw, Limits{}, Depth::Bodies);
  auto structure = parse(raw, Limits{}, Depth::Structure);
  for (const auto& m : {bodies, structure}) {
    REQUIRE(m->partCount == full->partCount);
    REQUIRE(m->decodedSize == full->decodedSize);
    REQUIRE(m->attachments.size() == 1);
    REQUIRE(m->attachments[0].name == "data.bin");
    REQUIRE(m->attachments[0].size == 12);
    REQUIRE(m->root.children[0].children[0].size == full->root.children[0].children[0].size);
    REQUIRE(m->header("subject") == "nested");
    REQUIRE(m->bodyText.empty());
    REQUIRE(m->uris.empty());
    REQUIRE(m->root.children[0].children[0].text.empty());
  }
  REQUIRE(bodies->root.children[1].body == "Hello world!");
  REQUIRE(structure->root.children[1].body.empty());
  // The decoded-size limit counts the same without keeping the bytes.
  Limits small;
  small.maxDecodedSize = 10;
  auto m = parse(crlf("Content-Transfer-Encoding: base64\n\nSGVsbG8gd29ybGQhIEhlbGxvIHdvcmxkIQ==\n"), small, Depth::Structure);
  REQUIRE(m->limitExceeded);
  REQUIRE(m->limitReason == "max_decoded_size");
  REQUIRE(m->root.size == 10);
  REQUIRE(m->root.body.empty());
}

TEST_CASE("the pipeline parses MIME only as deep as its filters read it") {
  char dir[] = "/tmp/moat-mime-XXXXXX";
  REQUIRE(mkdtemp(dir));
  std::string path = std::string(dir) + "/moat.toml";
  auto mimeOf = [&](const std::string& extra) {
    std::ofstream(path) << "[[listener]]\naddress = \"127.0.0.1:2525\"\n" << extra;
    moat::policy::Errors errors;
    auto config = moat::policy::loadConfig(path, errors);
    REQUIRE(config);
    auto pipeline = Pipeline::build(*config, errors);
    INFO(errors.str());
    REQUIRE_FALSE(errors.hasErrors());
    moat::mta::uv::Loop loop;
    Env env;
    env.loop = loop.get();
    auto ctx = std::make_shared<MessageContext>();
    std::string raw = crlf(kNested);
    ctx->message = raw;
    bool done = false;
    pipeline->run(Stage::Data, ctx, env, [&](StageOutcome) { done = true; });
    REQUIRE(loop.runUntil([&] { return done; }, 10000));
    REQUIRE(ctx->mime);
    return ctx->mime;
  };
  // No filter reads bodies: the limits are checked, nothing is copied.
  auto bare = mimeOf("");
  REQUIRE(bare->partCount == 5);
  REQUIRE(bare->root.children[1].body.empty());
  // The attachments filter reads decoded bodies (zip directories).
  auto withAttachments = mimeOf("[attachments]\nblock_extensions = [\"exe\"]\n");
  REQUIRE(withAttachments->root.children[1].body == "Hello world!");
  REQUIRE(withAttachments->bodyText.empty());
  unlink(path.c_str());
  rmdir(dir);
}

TEST_CASE("HTML to text and URI extraction") {
  std::vector<std::string> links;
  std::string text = htmlToText(
      "<html><head><title>T</title><style>p{color:red}</style><script>var x='<p>';</script></head>"
      "<body><p>Caf&eacute; &amp; cr&#232;me &#x263A; &lt;tag&gt;</p><!-- hidden -->"
      "<a href=\"http://click.example.test/?a=1&amp;b=2\">click&nbsp;here</a><br>"
      "<img src='http://img.example.test/p.gif'></body></html>",
      &links);
  REQUIRE(text == "\nT\n\nCaf\xC3\xA9 & cr\xC3\xA8me \xE2\x98\xBA <tag>\nclick here\n");
  REQUIRE(links == std::vector<std::string>{"http://click.example.test/?a=1&b=2", "http://img.example.test/p.gif"});

  std::vector<std::string> uris;
  extractUris("see https://a.example.test/x?y=1, or www.b.example.test. Mail mailto:c@example.test "
              "ftp://f.example.test/file (http://d.example.test/) notwww.x",
              uris);
  REQUIRE(uris == std::vector<std::string>{"https://a.example.test/x?y=1", "http://www.b.example.test",
                                           "mailto:c@example.test", "ftp://f.example.test/file",
                                           "http://d.example.test/"});

  auto msg = parse(crlf("Content-Type: text/html\n\n<p>Buy <a href=\"http://spam.example.test/\">now</a> "
                        "at http://spam.example.test/ or http://other.example.test</p>\n"),
                   Limits{});
  REQUIRE(msg->bodyText == "\nBuy now at http://spam.example.test/ or http://other.example.test\n");
  REQUIRE(msg->uris == std::vector<std::string>{"http://spam.example.test/", "http://other.example.test"});
}

TEST_CASE("URI extraction does work linear in the text, whatever the URIs") {
  // The audit's F1 body: short lines with one URI each. Four of the five schemes never
  // appear; each scheme used to be searched for from every URI to the end of the text.
  const std::string line = "see http://evil.test/ now\r\n";
  std::string text;
  while (text.size() < (1u << 20)) text += line;
  const size_t lines = text.size() / line.size();
  std::vector<std::string> uris;
  UriScanStats stats;
  extractUris(text, uris, &stats);
  REQUIRE(uris.size() == lines);  // duplicates are the caller's to drop
  REQUIRE(uris.front() == "http://evil.test/");
  // One search per URI found and one per scheme that runs out, each over bytes not
  // searched before (but the few a match spans): about the text's length per scheme.
  CHECK(stats.searches <= lines + 5);
  CHECK(stats.bytesSearched <= 5 * text.size() + 8 * stats.searches);

  // Every scheme in turn, www. inside words, upper case: the same bound, the same URIs.
  std::string mixed;
  size_t n = 0;
  for (; mixed.size() < (1u << 20); ++n)
    mixed += "a HTTPS://s" + std::to_string(n) + ".test/ xwww.no www.w.test ftp://f/ mailto:m@x <http://h/>\n";
  uris.clear();
  stats = {};
  extractUris(mixed, uris, &stats);
  REQUIRE(uris.size() == 5 * n);
  REQUIRE(uris[0] == "HTTPS://s0.test/");
  REQUIRE(uris[1] == "http://www.w.test");
  REQUIRE(uris[4] == "http://h/");
  CHECK(stats.bytesSearched <= 5 * mixed.size() + 8 * stats.searches);

  // Many distinct URIs through the parser: all kept, in order, once each.
  std::string body;
  for (int i = 0; i < 5000; ++i) body += "http://h" + std::to_string(i) + ".test/ http://h0.test/\n";
  auto msg = parse("Subject: many\r\n\r\n" + body, Limits{});
  REQUIRE(msg->uris.size() == 5000);
  REQUIRE(msg->uris[4999] == "http://h4999.test/");
  REQUIRE_FALSE(msg->urisTruncated);
}

TEST_CASE("past max_uris the first ones are kept, the message is not refused") {
  Limits limits;
  limits.maxUris = 3;
  // Duplicates do not count; the HTML part's links and text count with the plain part's.
  std::string raw = crlf(
      "Content-Type: multipart/mixed; boundary=b\n\n--b\n\nhttp://a.test/ http://a.test/ http://b.test/\n"
      "--b\nContent-Type: text/html\n\n<a href=\"http://c.test/\">http://b.test/</a> http://d.test/ "
      "http://e.test/\n--b--\n");
  auto msg = parse(raw, limits);
  REQUIRE(msg->uris == std::vector<std::string>{"http://a.test/", "http://b.test/", "http://c.test/"});
  REQUIRE(msg->urisTruncated);
  REQUIRE_FALSE(msg->limitExceeded);
  FilterConfig config;
  Result r = resultFor(*msg, config);
  REQUIRE(r.verdict == Verdict::Continue);
  REQUIRE(r.detail.str().find("\"uris_truncated\":true") != std::string::npos);

  // Exactly at the cap, with duplicates after it: nothing was dropped.
  auto exact = parse("\r\nhttp://a.test/ http://b.test/ http://c.test/ http://a.test/\r\n", limits);
  REQUIRE(exact->uris.size() == 3);
  REQUIRE_FALSE(exact->urisTruncated);
  REQUIRE(resultFor(*exact, config).detail.str().find("uris_truncated") == std::string::npos);

  // The default, and the config key.
  REQUIRE(Limits{}.maxUris == 10000);
  moat::policy::Errors errors;
  auto cfg = configFrom("[mime]\nmax_uris = 7\n", errors);
  REQUIRE(readConfig(*cfg, errors).limits.maxUris == 7);
  REQUIRE_FALSE(errors.hasErrors());
}

TEST_CASE("hostile HTML and header shapes still render as before") {
  // Many short scripts (each once copied the rest of the page), '&' without ';' (each once
  // searched to the end), "=?" words that never close (each once searched to the end).
  std::string scripts, expected;
  for (int i = 0; i < 200; ++i) scripts += "<SCRIPT>x</sCrIpT>t";
  REQUIRE(htmlToText(scripts, nullptr) == std::string(200, 't'));
  REQUIRE(htmlToText("a<style>b</styl</STYLE >c<script>never closed", nullptr) == "ac");
  // A reference spans at most 12 bytes from '&' to ';': the longer ones stay text.
  REQUIRE(htmlToText("&&&&amp;&&#65;&#0000000065;&#00000000065;&verylongname;", nullptr) ==
          "&&&&&AA&#00000000065;&verylongname;");
  std::string words;
  for (int i = 0; i < 200; ++i) words += "=?a?b?x ";
  REQUIRE(decodeHeaderWords(words) == words);
  REQUIRE(decodeHeaderWords("=?utf-8?q?a?= =?utf-8?q?b?= =?x?q?c d?= =?utf-8?b?w6k=?=") == "ab =?x?q?c d?= \xC3\xA9");
}

TEST_CASE("the MIME filter parses on the thread pool and sets ctx->mime") {
  moat::policy::Errors errors;
  auto config = configFrom("[mime]\nmax_parts = 3\non_limit = \"reject\"\n", errors);
  auto filter = makeMimeFilter(*config, errors);
  REQUIRE_FALSE(errors.hasErrors());
  REQUIRE(filter->stage() == Stage::Data);

  moat::mta::uv::Loop loop;
  Env env;
  env.loop = loop.get();
  auto runOn = [&](const std::string& raw) {
    auto ctx = std::make_shared<MessageContext>();
    ctx->message = raw;
    std::optional<Result> result;
    filter->run(ctx, env, [&](Result r) { result = std::move(r); });
    REQUIRE(loop.runUntil([&] { return result.has_value(); }, 10000));
    REQUIRE(ctx->mime);
    return *result;
  };
  std::string five = crlf(kNested);  // 5 parts: over max_parts = 3
  auto small = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--b\nContent-Disposition: attachment; filename=a.txt\n\ntwo\n--b--\n");
  Result r = runOn(small);
  REQUIRE(r.verdict == Verdict::Continue);
  REQUIRE(r.summary == "parts=3 attachments=1");
  Result over = runOn(five);
  REQUIRE(over.verdict == Verdict::Reject);
  REQUIRE(over.code == 554);
  REQUIRE(over.enhanced == "5.6.0");
  REQUIRE(over.summary.find("limit=max_parts") != std::string::npos);
}

TEST_CASE("parseWork counts the body only where the parse reads it") {
  std::string body = longLines(200 << 10);
  std::string plain = "From: a@example.test\r\nSubject: plain\r\n\r\n" + body;
  size_t bodySize = body.size();
  REQUIRE(parseWork(plain, Depth::Structure) == 0);
  REQUIRE(parseWork(plain, Depth::Bodies) == bodySize);  // the body is copied into the part
  REQUIRE(parseWork(plain, Depth::Text) == bodySize);    // and converted to UTF-8
  std::string lf = "Subject: bare LF\n\n" + body;
  REQUIRE(parseWork(lf, Depth::Structure) == 0);
  REQUIRE(parseWork("\r\n" + body, Depth::Structure) == 0);  // no header block: one text part
  std::string eightBit = "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + body;
  REQUIRE(parseWork(eightBit, Depth::Structure) == 0);
  std::string b64 = "Content-Type: application/pdf\r\nContent-Transfer-Encoding: BASE64\r\n\r\n" + body;
  REQUIRE(parseWork(b64, Depth::Structure) == bodySize);
  std::string multi = "Content-Type: multipart/mixed;\r\n boundary=\"b\"\r\n\r\n--b\r\n\r\n" + body + "\r\n--b--\r\n";
  REQUIRE(parseWork(multi, Depth::Structure) == multi.size() - multi.find("\r\n\r\n") - 4);
  std::string inner = "Content-Type: message/rfc822\r\n\r\n" + plain;
  REQUIRE(parseWork(inner, Depth::Structure) == plain.size());
  // A header block longer than the limit is not read to its end: all of it counts.
  std::string longHead = "Subject: " + std::string(100 << 10, 'h') + "\r\n\r\nbody\r\n";
  REQUIRE(parseWork(longHead, Depth::Structure) == longHead.size());
  REQUIRE(parseWork(longHead, Depth::Structure, 200 << 10) == 0);
  // Where it says 0, the parse copies no body.
  auto parsed = parse(plain, Limits{}, Depth::Structure);
  REQUIRE(parsed->root.body.empty());
  REQUIRE(parsed->root.size == bodySize);
}

TEST_CASE("the MIME filter parses a large message on the loop only when its body needs no work") {
  moat::policy::Errors errors;
  auto config = configFrom("", errors);
  moat::mta::uv::Loop loop;
  Env env;
  env.loop = loop.get();
  std::string body = longLines(200 << 10);
  std::string plain = "Subject: plain\r\n\r\n" + body;
  std::string b64 = "Content-Transfer-Encoding: base64\r\n\r\n" + body;
  // Whether `done` ran before run() returned (on the loop) or only later (from the pool).
  auto inlineRun = [&](const std::shared_ptr<const Filter>& filter, const std::string& raw) {
    auto ctx = std::make_shared<MessageContext>();
    ctx->message = raw;
    bool done = false;
    filter->run(ctx, env, [&](Result) { done = true; });
    bool atOnce = done;
    REQUIRE(loop.runUntil([&] { return done; }, 10000));
    REQUIRE(ctx->mime);
    return atOnce;
  };
  auto structure = makeMimeFilter(*config, errors, Depth::Structure);
  auto text = makeMimeFilter(*config, errors, Depth::Text);
  REQUIRE_FALSE(errors.hasErrors());
  REQUIRE(inlineRun(structure, plain));
  REQUIRE_FALSE(inlineRun(structure, b64));
  REQUIRE_FALSE(inlineRun(text, plain));
  REQUIRE(inlineRun(text, "Subject: small\r\n\r\nhi\r\n"));
}

TEST_CASE("bad [mime] config is reported") {
  moat::policy::Errors errors;
  auto config = configFrom("[mime]\non_limit = \"maybe\"\nmax_depht = 3\n", errors);
  makeMimeFilter(*config, errors);
  REQUIRE(errors.hasErrors());
  REQUIRE(errors.str().find(":4:") != std::string::npos);
  REQUIRE(errors.str().find(":5:") != std::string::npos);
}

TEST_CASE("truncated and random input never breaks the parser") {
  std::string full = crlf(kNested);
  for (size_t n = 0; n <= full.size(); ++n) {
    auto msg = parse(std::string_view(full).substr(0, n), Limits{});
    REQUIRE(msg->partCount >= 1);
  }
  uint32_t seed = 12345;
  auto next = [&] { return seed = seed * 1103515245u + 12345u; };
  const std::string alphabet = "=?-\r\n:;\"\\<>/&#bB qQ*'%ab09";
  for (int round = 0; round < 300; ++round) {
    std::string junk = "Content-Type: multipart/mixed; boundary=\"b\"\r\nSubject: =?utf-8?q?x?=\r\n\r\n--b\r\n";
    size_t len = next() % 400;
    for (size_t i = 0; i < len; ++i)
      junk += (next() % 4 == 0) ? static_cast<char>(next() % 256) : alphabet[next() % alphabet.size()];
    auto msg = parse(junk, Limits{});
    REQUIRE(msg->partCount >= 1);
    htmlToText(junk, nullptr);
  }
}

TEST_CASE("byte offsets of parts and header fields point into the raw message") {
  std::string raw = crlf(kNested);
  auto msg = parse(raw, Limits{});
  const Part& root = msg->root;
  REQUIRE(root.offset == 0);
  REQUIRE(root.endOffset == raw.size());
  REQUIRE(raw.substr(root.headerEnd - 2, 4) == "\r\n\r\n");
  REQUIRE(raw.substr(root.bodyOffset, 8) == "preamble");
  const HeaderField* subject = root.header("Subject");
  REQUIRE(subject);
  REQUIRE(raw.substr(subject->offset, subject->endOffset - subject->offset) == "Subject: nested\r\n");
  REQUIRE(raw.substr(subject->valueOffset, 7) == " nested");
  // Every body part runs from the line after its delimiter to the line break before the
  // next one: the delimiters are outside every part.
  std::function<void(const Part&)> check = [&](const Part& p) {
    REQUIRE(p.hasOffsets());
    REQUIRE(p.offset <= p.headerEnd);
    REQUIRE(p.headerEnd <= p.bodyOffset);
    REQUIRE(p.bodyOffset <= p.endOffset);
    REQUIRE(p.endOffset <= raw.size());
    if (p.depth > 0) {
      REQUIRE(raw.substr(p.offset - 2, 2) == "\r\n");
      REQUIRE(raw.substr(p.endOffset, 4) == "\r\n--");
      REQUIRE(raw.substr(p.offset, 13) == "Content-Type:");
    }
    for (const auto& h : p.headers) REQUIRE(raw.substr(h.offset, h.name.size()) == h.name);
    for (const auto& c : p.children) check(c);
  };
  check(root);
  REQUIRE(root.children.size() >= 2);

  // A base64-encoded attached message: the inner parts are not in the raw bytes.
  std::string encoded = crlf("Subject: outer\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
                             "Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
                             "U3ViamVjdDogaW5uZXINCg0KaGVsbG8NCg==\n--b--\n");
  auto m2 = parse(encoded, Limits{});
  const Part& attached = m2->root.children.at(0);
  REQUIRE(attached.hasOffsets());
  REQUIRE(attached.children.at(0).header("Subject")->raw == "inner");
  REQUIRE_FALSE(attached.children.at(0).hasOffsets());
  REQUIRE(attached.children.at(0).header("Subject")->offset == kNoOffset);
}
