// Tests for queue/envelope: the typed-record format round-trips every field (including
// peer-controlled bytes that would break a line-based format), and every single-byte
// corruption, truncation, newer version or unknown record is rejected.
#include "queue/envelope.h"

#include <catch2/catch.hpp>

using namespace moat::queue;

namespace {

Envelope sample() {
  Envelope e;
  e.id = "0ABCDEFGH1230000";
  e.mailFrom = "sender@example.test";
  e.arrivalMs = 1'700'000'000'123;
  e.clientIp = "192.0.2.7";
  e.clientName = "mail.example.test";
  e.helo = "evil\thelo\r\nX-Injected: yes %41";
  e.protocol = "ESMTPS";
  e.messageId = "<abc@example.test>";
  e.headers = {{"Received", "from x\r\n\tby y"}, {"Authentication-Results", "mx; spf=pass"}};
  e.eightBit = true;
  e.envid = "ENV1";
  e.ret = "HDRS";
  e.size = 4096;
  e.attempts = 3;
  e.nextAttemptMs = 1'700'000'600'000;
  e.delayWarned = true;
  e.area = Area::Quarantine;
  e.quarantineReason = "virus: Eicar-Test-Signature";
  e.generation = 7;
  Recipient a{
      "a@example.test", "rfc822;a@example.test", "FAILURE,DELAY", RcptStatus::Pending, 2, "451 4.7.1 later", "mx1"};
  Recipient b{"b@example.test", "", "", RcptStatus::Failed, 1, "550 5.1.1\nno such user", "mx2"};
  Recipient c{"c@example.test", "", "NEVER", RcptStatus::Delivered, 1, "250 ok", ""};
  e.rcpts = {a, b, c};
  return e;
}

}  // namespace

TEST_CASE("envelope round trip keeps every field, including control bytes") {
  Envelope e = sample();
  std::string text = serializeEnvelope(e);
  std::string error;
  auto back = parseEnvelope(text, error);
  REQUIRE(back.has_value());
  REQUIRE(error.empty());
  REQUIRE(*back == e);
  // Peer bytes never break the line structure: one record per line.
  REQUIRE(text.find("X-Injected") != std::string::npos);
  REQUIRE(text.find("\nX-Injected") == std::string::npos);
}

TEST_CASE("envelope fields holding every byte value, in runs and alone, round-trip in one line each") {
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  Envelope e = sample();
  e.helo = all;                                                 // every byte once
  e.messageId = "<" + std::string(300, 'x') + "%%\x7f%" + ">";  // a long plain run, then escapes
  e.headers.push_back({"X-Bytes", "%" + all + "\r\n" + all + "%"});
  std::string text = serializeEnvelope(e);
  std::string error;
  auto back = parseEnvelope(text, error);
  REQUIRE(back.has_value());
  REQUIRE(*back == e);
  // The fields' control bytes are all written escaped: the only ones left are the record
  // format's own line ends and field separators.
  for (char c : text) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) REQUIRE((c == '\n' || c == '\t'));
  }
  REQUIRE(text.find("%09") != std::string::npos);  // a tab inside a field is escaped
  // Plain bytes are kept as they are, each escaped byte as %XX in upper case.
  REQUIRE(text.find(std::string(300, 'x') + "%25%25%7F%25>") != std::string::npos);
}

TEST_CASE("envelope with the null sender and no optional fields round-trips") {
  Envelope e;
  e.id = "ID1";
  e.size = 0;
  std::string error;
  auto back = parseEnvelope(serializeEnvelope(e), error);
  REQUIRE(back.has_value());
  REQUIRE(back->mailFrom.empty());
  REQUIRE(*back == e);
}

TEST_CASE("envelope: every single-byte corruption is detected") {
  std::string text = serializeEnvelope(sample());
  size_t undetected = 0, tried = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    for (int v = 0; v < 256; ++v) {
      if (static_cast<char>(v) == text[i]) continue;
      std::string bad = text;
      bad[i] = static_cast<char>(v);
      std::string error;
      ++tried;
      if (parseEnvelope(bad, error).has_value()) ++undetected;
    }
  }
  REQUIRE(tried > 100000);
  REQUIRE(undetected == 0);
}

TEST_CASE("envelope: every truncation and any trailing byte is rejected") {
  std::string text = serializeEnvelope(sample());
  for (size_t n = 0; n < text.size(); ++n) {
    std::string error;
    REQUIRE_FALSE(parseEnvelope(std::string_view(text).substr(0, n), error).has_value());
    REQUIRE_FALSE(error.empty());
  }
  std::string error;
  REQUIRE_FALSE(parseEnvelope(text + "x", error).has_value());
  REQUIRE_FALSE(parseEnvelope(text + "\n", error).has_value());
}

namespace {
// Re-signs an edited body so that only the content check can reject it.
std::string resign(const std::string& body) {
  char buf[16];
  snprintf(buf, sizeof buf, "%08x", crc32(body));
  return body + "end\t" + buf + "\n";
}
std::string bodyOf(const std::string& text) { return text.substr(0, text.rfind("end\t")); }
}  // namespace

TEST_CASE("envelope: a newer version or an unknown record is an error, not dropped") {
  std::string body = bodyOf(serializeEnvelope(sample()));
  std::string error;
  REQUIRE(parseEnvelope(resign(body), error).has_value());

  std::string v5 = body;
  v5.replace(0, v5.find('\n'), "moat-envelope\t5");
  REQUIRE_FALSE(parseEnvelope(resign(v5), error).has_value());
  REQUIRE(error.find("version 5") != std::string::npos);

  REQUIRE_FALSE(parseEnvelope(resign(body + "dsn_state\tx\n"), error).has_value());
  REQUIRE(error.find("unknown record type 'dsn_state'") != std::string::npos);

  REQUIRE_FALSE(parseEnvelope(resign(body + "size\t1\n"), error).has_value());  // duplicate
  REQUIRE(error.find("duplicate") != std::string::npos);

  std::string noSize = body;
  size_t p = noSize.find("\nsize\t");
  noSize.erase(p + 1, noSize.find('\n', p + 1) - p);
  REQUIRE_FALSE(parseEnvelope(resign(noSize), error).has_value());
  REQUIRE(error.find("missing record 'size'") != std::string::npos);

  REQUIRE_FALSE(parseEnvelope(resign(body + "attempts\t-1\n"), error).has_value());
  REQUIRE_FALSE(parseEnvelope(resign("moat-envelope\t1\nid\tX\nfrom\t\narrival\t01\nsize\t0\n"), error).has_value());
}

TEST_CASE("crc32 matches the IEEE check value") {
  REQUIRE(crc32("123456789") == 0xCBF43926u);
  REQUIRE(crc32("") == 0u);
}

TEST_CASE("envelope with edits round-trips as version 2, arbitrary replacement bytes included") {
  Envelope e = sample();
  e.size = 100;
  e.edits = {{0, 0, "\t[SPAM]%41 ", "Subject prefix [SPAM]"},
             {40, 30, std::string("Content-Type: text/plain\r\n\r\nMoat removed \"x\x01\x7f\xff.exe\"\n\0z", 54),
              "stripped x.exe"},
             {100, 0, "", ""}};
  std::string text = serializeEnvelope(e);
  REQUIRE(text.rfind("moat-envelope\t2\n", 0) == 0);
  std::string error;
  auto back = parseEnvelope(text, error);
  REQUIRE(back.has_value());
  REQUIRE(*back == e);
  REQUIRE(back->edits[1].replacement.size() == 54);
  // One record per line: the CRLF and TAB of a replacement are escaped.
  size_t records = 0;
  for (size_t p = 0; (p = text.find("\nedit\t", p)) != std::string::npos; ++p) ++records;
  REQUIRE(records == 3);
  REQUIRE(text.find("\nMoat removed") == std::string::npos);
  REQUIRE(text.find("\n\nMoat") == std::string::npos);
}

TEST_CASE("an envelope without edits is still version 1, and version 1 files parse") {
  Envelope e = sample();
  std::string text = serializeEnvelope(e);
  REQUIRE(text.rfind("moat-envelope\t1\n", 0) == 0);
  std::string error;
  auto back = parseEnvelope(text, error);
  REQUIRE(back.has_value());
  REQUIRE(back->edits.empty());
  // A file written by the Moat before edits existed (version 1, no edit record): the
  // same bytes, since nothing else changed in the format.
  std::string body = bodyOf(text);
  REQUIRE(parseEnvelope(resign(body), error).has_value());
}

TEST_CASE("envelope: edit records are checked (version, order, range, numbers)") {
  Envelope e = sample();
  e.size = 50;
  e.edits = {{10, 5, "x", "a"}};
  std::string body = bodyOf(serializeEnvelope(e));
  std::string error;
  REQUIRE(parseEnvelope(resign(body), error).has_value());
  // An edit record in a version-1 file is unknown there.
  std::string v1 = body;
  v1.replace(0, v1.find('\n'), "moat-envelope\t1");
  REQUIRE_FALSE(parseEnvelope(resign(v1), error).has_value());
  REQUIRE(error.find("unknown record type 'edit'") != std::string::npos);
  // Overlapping, out of range, malformed.
  REQUIRE_FALSE(parseEnvelope(resign(body + "edit\t12\t1\ty\tb\n"), error).has_value());
  REQUIRE(error.find("edits overlap") != std::string::npos);
  REQUIRE_FALSE(parseEnvelope(resign(body + "edit\t45\t6\ty\tb\n"), error).has_value());
  REQUIRE_FALSE(parseEnvelope(resign(body + "edit\t20\t-1\ty\tb\n"), error).has_value());
  REQUIRE_FALSE(parseEnvelope(resign(body + "edit\t20\t1\ty\n"), error).has_value());
  REQUIRE(parseEnvelope(resign(body + "edit\t20\t1\ty\tb\n"), error).has_value());
}

TEST_CASE("an envelope owing expanded reports round-trips as version 3, older versions refuse the record") {
  Envelope e = sample();
  e.expanded = {{"sales@example.test", "rfc822;sales@example.test", "SUCCESS,FAILURE"},
                {"team\t@example.test", "", "SUCCESS"}};
  std::string text = serializeEnvelope(e);
  REQUIRE(text.rfind("moat-envelope\t3\n", 0) == 0);
  std::string error;
  auto back = parseEnvelope(text, error);
  INFO(error);
  REQUIRE(back.has_value());
  REQUIRE(*back == e);
  // Once reported, the envelope goes back to the version older builds read.
  e.expanded.clear();
  REQUIRE(serializeEnvelope(e).rfind("moat-envelope\t1\n", 0) == 0);

  std::string body = bodyOf(text);
  for (const char* older : {"moat-envelope\t1", "moat-envelope\t2"}) {
    std::string old = body;
    old.replace(0, old.find('\n'), older);
    REQUIRE_FALSE(parseEnvelope(resign(old), error).has_value());
    REQUIRE(error.find("unknown record type 'expanded'") != std::string::npos);
  }
  REQUIRE_FALSE(parseEnvelope(resign(body + "expanded\tx@example.test\t\n"), error).has_value());  // two fields
  REQUIRE_FALSE(parseEnvelope(resign(body + "expanded\t\t\tSUCCESS\n"), error).has_value());       // no address
}

TEST_CASE("a REQUIRETLS envelope round-trips as version 4, older versions refuse the record") {
  Envelope e = sample();
  e.requireTls = true;
  e.expanded = {{"sales@example.test", "", "SUCCESS"}};
  std::string text = serializeEnvelope(e);
  REQUIRE(text.rfind("moat-envelope\t4\n", 0) == 0);
  REQUIRE(text.find("\nrequiretls\t1\n") != std::string::npos);
  std::string error;
  auto back = parseEnvelope(text, error);
  INFO(error);
  REQUIRE(back.has_value());
  REQUIRE(back->requireTls);
  REQUIRE(*back == e);
  // Without REQUIRETLS, nothing changes: no record, and the version older builds read.
  e.requireTls = false;
  std::string plain = serializeEnvelope(e);
  REQUIRE(plain.rfind("moat-envelope\t3\n", 0) == 0);
  REQUIRE(plain.find("requiretls") == std::string::npos);
  e.expanded.clear();
  REQUIRE(serializeEnvelope(e).rfind("moat-envelope\t1\n", 0) == 0);
  // A Moat before REQUIRETLS never wrote the record: its files load with requireTls false.
  for (const char* older : {"moat-envelope\t1", "moat-envelope\t2", "moat-envelope\t3"}) {
    std::string body = bodyOf(serializeEnvelope(sample()));
    body.replace(0, body.find('\n'), older);
    auto old = parseEnvelope(resign(body), error);
    INFO(older << ": " << error);
    REQUIRE(old.has_value());
    REQUIRE_FALSE(old->requireTls);
    // ...and a requiretls record in such a version is refused, not ignored.
    REQUIRE_FALSE(parseEnvelope(resign(body + "requiretls\t1\n"), error).has_value());
    REQUIRE(error.find("unknown record type 'requiretls'") != std::string::npos);
  }
  std::string body = bodyOf(text);
  REQUIRE_FALSE(parseEnvelope(resign(body + "requiretls\t1\n"), error).has_value());  // duplicate
  std::string bad = body;
  bad.replace(bad.find("\nrequiretls\t1\n"), 14, "\nrequiretls\t2\n");
  REQUIRE_FALSE(parseEnvelope(resign(bad), error).has_value());
}
