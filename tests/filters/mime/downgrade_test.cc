// Tests for filters/mime/downgrade.h: quoted-printable and base64 encoding (RFC 2045 §6.7,
// §6.8), the conversion of 8-bit messages to 7-bit MIME (RFC 6152 §3) leaf by leaf, composite
// labels (RFC 2045 §6.4), non-MIME messages (RFC 1428), and what must be refused. Every
// converted message is checked the same way: no byte over 0x7f, no line over 998, and every
// leaf decodes to the bytes it held before.
#include "filters/mime/downgrade.h"

#include <catch2/catch.hpp>
#include <random>
#include <string>

#include "filters/mime/mime.h"
#include "tests/support/crlf.h"

using namespace moat::filters::mime;
using moat::test::crlf;

namespace {

size_t longestLine(std::string_view s) {
  size_t longest = 0, start = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == '\n') {
      size_t len = i - start;
      if (len > 0 && s[start + len - 1] == '\r') --len;
      longest = std::max(longest, len);
      start = i + 1;
    }
  }
  return longest;
}

bool sevenBit(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) > 0x7f) return false;
  return true;
}

// The decoded leaves of a message, in tree order, with their types.
void leaves(const Part& p, std::vector<std::pair<std::string, std::string>>& out) {
  if (p.children.empty()) out.emplace_back(p.contentType, p.body);
  for (const auto& c : p.children) leaves(c, out);
}
std::vector<std::pair<std::string, std::string>> leavesOf(std::string_view message) {
  auto msg = parse(message, Limits{}, Depth::Bodies);
  std::vector<std::pair<std::string, std::string>> out;
  leaves(msg->root, out);
  return out;
}

// Converts `message` and checks what every conversion must give.
Downgraded convert(const std::string& message) {
  auto d = downgradeTo7Bit(message);
  INFO(d.reason);
  REQUIRE(d.ok);
  REQUIRE(d.reason.empty());
  REQUIRE(sevenBit(d.message));
  REQUIRE(longestLine(d.message) <= 998);
  REQUIRE(leavesOf(d.message) == leavesOf(message));
  return d;
}

const char* kMixed =
    "Received: by mx.moat.test\n"
    "From: a@example.test\n"
    "Subject: mixed\n"
    "MIME-Version: 1.0\n"
    "Content-Type: multipart/mixed; boundary=\"outer\"\n"
    "Content-Transfer-Encoding: 8bit\n"
    "\n"
    "preamble\n"
    "--outer\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: 8bit\n"
    "\n"
    "Caf\xC3\xA9 au lait = 1 \xE2\x82\xAC \n"
    "second line\n"
    "--outer\n"
    "Content-Type: text/plain; charset=us-ascii\n"
    "\n"
    "untouched 7-bit text\n"
    "--outer\n"
    "Content-Type: application/octet-stream; name=\"x.bin\"\n"
    "Content-Transfer-Encoding: 8bit\n"
    "\n"
    "\x80\x81\xFE\xFF binary-ish\n"
    "--outer\n"
    "Content-Type: image/png\n"
    "Content-Transfer-Encoding: base64\n"
    "\n"
    "iVBORw0KGgo=\n"
    "--outer--\n"
    "epilogue\n";

}  // namespace

TEST_CASE("downgrade: quoted-printable lines, soft breaks and escapes (RFC 2045 6.7)") {
  REQUIRE(encodeQuotedPrintable("") == "");
  REQUIRE(encodeQuotedPrintable("plain text\r\n") == "plain text\r\n");
  REQUIRE(encodeQuotedPrintable("a=b") == "a=3Db");
  REQUIRE(encodeQuotedPrintable("caf\xC3\xA9\r\nno break at the end") == "caf=C3=A9\r\nno break at the end");
  // Blanks are escaped only where they end a line; a bare LF or CR is a hard break too.
  REQUIRE(encodeQuotedPrintable("a b \r\nc\t\nd\re ") == "a b=20\r\nc=09\r\nd\r\ne=20");
  REQUIRE(encodeQuotedPrintable(std::string("\x00\x7f~!", 4)) == "=00=7F~!");
  // 76 characters fit on a line; the 77th needs a soft break after 75 (the '=' is the 76th).
  REQUIRE(encodeQuotedPrintable(std::string(76, 'a')) == std::string(76, 'a'));
  REQUIRE(encodeQuotedPrintable(std::string(77, 'a')) == std::string(75, 'a') + "=\r\naa");
  // An escape is never split by a soft break.
  REQUIRE(encodeQuotedPrintable(std::string(74, 'a') + "\xC3\xA9") == std::string(74, 'a') + "=\r\n=C3=A9");
  REQUIRE(encodeQuotedPrintable(std::string(73, 'a') + "\xC3") == std::string(73, 'a') + "=C3");
  // A blank before a soft break stays (it no longer ends the line).
  REQUIRE(encodeQuotedPrintable(std::string(74, 'a') + " bc") == std::string(74, 'a') + " =\r\nbc");

  std::mt19937 rng(6152);
  for (int round = 0; round < 50; ++round) {
    std::string text;
    size_t lines = rng() % 20;
    for (size_t l = 0; l < lines; ++l) {
      size_t len = rng() % 300;
      for (size_t i = 0; i < len; ++i) {
        char c = static_cast<char>(rng() % 256);
        text += c == '\r' || c == '\n' ? ' ' : c;
      }
      if (l + 1 < lines || rng() % 2) text += "\r\n";
    }
    std::string qp = encodeQuotedPrintable(text);
    INFO("round " << round);
    REQUIRE(sevenBit(qp));
    REQUIRE(longestLine(qp) <= 76);
    REQUIRE(decodeQuotedPrintable(qp) == text);
    for (size_t i = 0; i + 2 < qp.size(); ++i)  // no blank right before a hard break
      if (qp[i + 1] == '\r' && qp[i + 2] == '\n') REQUIRE((qp[i] != ' ' && qp[i] != '\t'));
  }
}

TEST_CASE("downgrade: base64 in lines of 76 (RFC 2045 6.8)") {
  REQUIRE(encodeBase64("") == "");
  REQUIRE(encodeBase64("f") == "Zg==");
  REQUIRE(encodeBase64("fo") == "Zm8=");
  REQUIRE(encodeBase64("foobar") == "Zm9vYmFy");
  std::string bytes;
  for (int i = 0; i < 1000; ++i) bytes += static_cast<char>(i * 7);
  std::string b64 = encodeBase64(bytes);
  REQUIRE(b64.substr(76, 2) == "\r\n");
  REQUIRE(longestLine(b64) == 76);
  REQUIRE(b64.back() != '\n');
  REQUIRE(decodeBase64(b64) == bytes);
}

TEST_CASE("downgrade: 8-bit text becomes quoted-printable, other 8-bit leaves base64, the rest stays") {
  std::string in = crlf(kMixed);
  auto d = convert(in);
  REQUIRE(d.changed);
  const std::string& out = d.message;
  // The text part: re-labelled, body quoted-printable (the trailing blank escaped).
  REQUIRE(out.find(crlf("Content-Type: text/plain; charset=utf-8\n"
                        "Content-Transfer-Encoding: quoted-printable\n"
                        "\n"
                        "Caf=C3=A9 au lait =3D 1 =E2=82=AC=20\n"
                        "second line\n"
                        "--outer\n")) != std::string::npos);
  // The octet-stream: base64 of its bytes, the line break before the delimiter kept.
  REQUIRE(out.find(crlf("Content-Type: application/octet-stream; name=\"x.bin\"\n"
                        "Content-Transfer-Encoding: base64\n\ngIH+/yBiaW5hcnktaXNo\n--outer\n")) != std::string::npos);
  // The multipart itself is never encoded: 8bit becomes 7bit (RFC 2045 6.4).
  REQUIRE(out.find("\r\nContent-Transfer-Encoding: 7bit\r\n\r\npreamble\r\n") != std::string::npos);
  // Headers, preamble, the 7-bit text, the base64 image, delimiters and epilogue: byte for byte.
  REQUIRE(out.rfind(crlf("Received: by mx.moat.test\nFrom: a@example.test\nSubject: mixed\nMIME-Version: 1.0\n"
                         "Content-Type: multipart/mixed; boundary=\"outer\"\n"),
                    0) == 0);
  size_t tail = in.find("--outer\r\nContent-Type: image/png");
  REQUIRE(out.substr(out.size() - (in.size() - tail)) == in.substr(tail));
  std::string plain = crlf("--outer\nContent-Type: text/plain; charset=us-ascii\n\nuntouched 7-bit text\n--outer\n");
  REQUIRE(out.find(plain) != std::string::npos);
  REQUIRE(out.find("MIME-Version") == out.rfind("MIME-Version"));  // a MIME message: none added
  // Converting again finds nothing to do.
  auto again = downgradeTo7Bit(out);
  REQUIRE(again.ok);
  REQUIRE_FALSE(again.changed);
  REQUIRE(again.message == out);
}

TEST_CASE("downgrade: nested multipart and message/rfc822 are fixed up, not encoded") {
  std::string in = crlf(
      "From: a@example.test\n"
      "MIME-Version: 1.0\n"
      "Content-Type: multipart/mixed; boundary=a\n"
      "Content-Transfer-Encoding: 8bit\n"
      "\n"
      "--a\n"
      "Content-Type: multipart/alternative; boundary=untouched\n"
      "Content-Transfer-Encoding: 8bit\n"
      "\n"
      "--untouched\n"
      "Content-Type: text/plain\n"
      "\n"
      "ascii only\n"
      "--untouched--\n"
      "--a\n"
      "Content-Type: message/rfc822\n"
      "Content-Transfer-Encoding: 8bit\n"
      "\n"
      "From: inner@example.test\n"
      "Subject: forwarded\n"
      "MIME-Version: 1.0\n"
      "Content-Type: multipart/alternative; boundary=b\n"
      "Content-Transfer-Encoding: binary\n"
      "\n"
      "--b\n"
      "Content-Type: text/plain; charset=iso-8859-1\n"
      "\n"
      "gr\xFC\xDF Gott\n"
      "--b\n"
      "Content-Type: text/html; charset=utf-8\n"
      "Content-Transfer-Encoding: 8bit\n"
      "\n"
      "<p>gr\xC3\xBC\xC3\x9F</p>\n"
      "--b--\n"
      "--a--\n");
  auto d = convert(in);
  const std::string& out = d.message;
  // Outer multipart, the message/rfc822 and the inner multipart: 7bit now.
  REQUIRE(out.find("boundary=a\r\nContent-Transfer-Encoding: 7bit\r\n\r\n--a\r\n") != std::string::npos);
  REQUIRE(out.find("message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\nFrom: inner") != std::string::npos);
  REQUIRE(out.find("boundary=b\r\nContent-Transfer-Encoding: 7bit\r\n\r\n--b\r\n") != std::string::npos);
  // A composite whose children needed nothing keeps its label, and the children their bytes.
  REQUIRE(out.find(crlf("boundary=untouched\nContent-Transfer-Encoding: 8bit\n\n--untouched\nContent-Type: "
                        "text/plain\n\nascii only\n--untouched--\n")) != std::string::npos);
  // The leaves: a CTE field added where there was none, replaced where there was one.
  REQUIRE(out.find(crlf("charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\ngr=FC=DF Gott\n--b\n")) !=
          std::string::npos);
  REQUIRE(
      out.find(crlf("charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n<p>gr=C3=BC=C3=9F</p>\n--b--")) !=
      std::string::npos);
  REQUIRE(out.find("8bit") == out.rfind("8bit"));  // only the untouched alternative's label
  auto tree = parse(out, Limits{}, Depth::Text);
  REQUIRE(tree->root.children[1].children[0].children[0].text == "gr\xC3\xBC\xC3\x9F Gott");
}

TEST_CASE("downgrade: a message that is not MIME becomes MIME (RFC 1428 unknown-8bit)") {
  auto d = convert(crlf("From: a@example.test\nSubject: old style\n\nna\xEFve caf\xE9\n"));
  REQUIRE(d.message == crlf("From: a@example.test\nSubject: old style\nMIME-Version: 1.0\n"
                            "Content-Type: text/plain; charset=unknown-8bit\n"
                            "Content-Transfer-Encoding: quoted-printable\n\nna=EFve caf=E9\n"));
  // A Content-Type it already has is kept; only MIME-Version and the encoding are added.
  d = convert(crlf("Subject: html\nContent-Type: text/html; charset=windows-1252\n\n<b>\x93quoted\x94</b>\n"));
  REQUIRE(d.message == crlf("Subject: html\nContent-Type: text/html; charset=windows-1252\nMIME-Version: 1.0\n"
                            "Content-Transfer-Encoding: quoted-printable\n\n<b>=93quoted=94</b>\n"));
  // No header block at all: the new fields come with the blank line that ends them.
  d = convert("caf\xE9 and nothing else\r\n");
  REQUIRE(d.message == crlf("MIME-Version: 1.0\nContent-Type: text/plain; charset=unknown-8bit\n"
                            "Content-Transfer-Encoding: quoted-printable\n\ncaf=E9 and nothing else\n"));
  // So does a forwarded message that is not MIME (RFC 2045 §4: MIME-Version in its own header).
  d = convert(crlf("MIME-Version: 1.0\nContent-Type: message/rfc822\n\nSubject: fwd\n\nna\xEFve\n"));
  REQUIRE(d.message == crlf("MIME-Version: 1.0\nContent-Type: message/rfc822\n\nSubject: fwd\nMIME-Version: 1.0\n"
                            "Content-Type: text/plain; charset=unknown-8bit\n"
                            "Content-Transfer-Encoding: quoted-printable\n\nna=EFve\n"));
  // A body part without headers in a MIME message gets the same two fields.
  d = convert(crlf("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=z\n\n--z\n\n\xE9t\xE9\n--z--\n"));
  REQUIRE(d.message.find(crlf("--z\nContent-Type: text/plain; charset=unknown-8bit\nContent-Transfer-Encoding: "
                              "quoted-printable\n\n=E9t=E9\n--z--\n")) != std::string::npos);
}

TEST_CASE("downgrade: binary is always base64, broken encodings are re-encoded from what readers decode") {
  std::string bin = std::string("\x00\x01\r\x89PNG\n", 8);
  auto d = convert("MIME-Version: 1.0\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: binary\r\n\r\n" + bin);
  REQUIRE(d.message == "MIME-Version: 1.0\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
                           encodeBase64(bin) + "\r\n");
  // Literal 8-bit bytes inside quoted-printable (RFC 2045 6.7 forbids them; readers keep them).
  d =
      convert(crlf("MIME-Version: 1.0\nContent-Type: text/plain; charset=latin1\n"
                   "Content-Transfer-Encoding: Quoted-Printable\n\nsoft=\nbreak caf\xE9 =3D\n"));
  REQUIRE(d.message.find("Content-Transfer-Encoding: Quoted-Printable\r\n\r\nsoftbreak caf=E9 =3D\r\n") !=
          std::string::npos);
  // 8-bit junk in base64: RFC 2045 6.8, readers ignore it.
  d =
      convert(crlf("MIME-Version: 1.0\nContent-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n"
                   "JVBE\xFFRi0=\n"));
  REQUIRE(d.message.find("base64\r\n\r\nJVBERi0=\r\n") != std::string::npos);
}

TEST_CASE("downgrade: what cannot be converted is refused") {
  auto refused = [](const std::string& message) {
    auto d = downgradeTo7Bit(message);
    REQUIRE_FALSE(d.ok);
    REQUIRE(d.message.empty());
    REQUIRE_FALSE(d.reason.empty());
    REQUIRE(sevenBit(d.reason));
    return d.reason;
  };
  // 8-bit headers need SMTPUTF8 (RFC 6532), at the top or in a part.
  REQUIRE(refused(crlf("Subject: caf\xC3\xA9\n\nbody caf\xC3\xA9\n")) == "8-bit bytes in a header");
  REQUIRE(refused(crlf("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
                       "Content-Type: application/pdf; name=\"r\xC3\xA9sum\xC3\xA9.pdf\"\n"
                       "Content-Transfer-Encoding: base64\n\nJVBERi0=\n--b--\n")) == "8-bit bytes in a header");
  REQUIRE(refused(crlf("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
                       "Content-Type: message/rfc822\n\nSubject: \xE9\n\nx\n--b--\n")) == "8-bit bytes in a header");
  // In a preamble there is no part to encode.
  REQUIRE(refused(crlf("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\npr\xE9\n--b\n\nx\n--b--\n"))
              .find("outside") != std::string::npos);
  // A transfer encoding nobody can re-encode.
  REQUIRE(refused(crlf("MIME-Version: 1.0\nContent-Transfer-Encoding: x-uuencode\n\n\xE9\n")) ==
          "8-bit data under Content-Transfer-Encoding x-uuencode");
  // Past the parser's limits the structure is not known well enough to edit.
  Limits tight;
  tight.maxParts = 2;
  auto d = downgradeTo7Bit(crlf("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
                                "--b\n\n\xE9\n--b\n\nb\n--b\n\nc\n--b--\n"),
                           tight);
  REQUIRE_FALSE(d.ok);
  REQUIRE(d.reason.find("max_parts") != std::string::npos);
}

TEST_CASE("downgrade: a 7-bit message comes back as it was") {
  std::string in =
      crlf("Subject: hi\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nhi\n");
  auto d = downgradeTo7Bit(in);
  REQUIRE(d.ok);
  REQUIRE_FALSE(d.changed);
  REQUIRE(d.message == in);
}

TEST_CASE("downgrade: long 8-bit lines and a big body round-trip within the line limits") {
  std::string body;
  for (int i = 0; body.size() < 300000; ++i)
    body += std::string(static_cast<size_t>(i % 1500), static_cast<char>(i % 2 ? 'a' : '\xE9')) + "\r\n";
  auto d = convert("Subject: big\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=latin1\r\n\r\n" + body);
  REQUIRE(longestLine(d.message) <= 76);
}

TEST_CASE("downgrade: as edits, for the DKIM signer, the same bytes as the converted message") {
  // The signer stores the conversion as edits of the message (filters/edit.h): applied, they
  // must give what delivery's converter gives, byte for byte.
  const std::string cases[] = {
      crlf(kMixed),
      crlf("From: a@example.test\nSubject: plain\n\ncaf\xC3\xA9\n"),  // not MIME: becomes MIME
      crlf("Subject: hi\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nhi\n"),
  };
  for (const auto& in : cases) {
    auto whole = downgradeTo7Bit(in);
    auto edits = downgradeEdits(in);
    REQUIRE(whole.ok);
    REQUIRE(edits.ok);
    REQUIRE(moat::filters::editsValid(edits.edits, in.size()));
    REQUIRE(edits.edits.empty() == !whole.changed);
    REQUIRE(moat::filters::applyEdits(in, edits.edits) == whole.message);
  }
  // Refused alike, with no edits: 8-bit in a header, 8-bit outside every part.
  for (const std::string& in : {crlf("Subject: caf\xC3\xA9\n\nbody caf\xC3\xA9\n"),
                                crlf("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\npr\xE9\n--b\n\n"
                                     "x\xE9\n--b--\n")}) {
    auto edits = downgradeEdits(in);
    REQUIRE_FALSE(edits.ok);
    REQUIRE(edits.edits.empty());
    REQUIRE(edits.reason == downgradeTo7Bit(in).reason);
  }
}
