// Tests for mta/runtime/json: peer-controlled strings must always produce valid JSON.
#include "mta/runtime/json.h"

#include <catch2/catch.hpp>
#include <cstdio>
#include <random>

using moat::mta::JsonObject;

TEST_CASE("json escapes quotes, backslashes and control characters") {
  JsonObject o;
  o.add("k", std::string_view("a\"b\\c\r\n\t\x01", 9));
  REQUIRE(o.str() == R"({"k":"a\"b\\c\r\n\t\u0001"})");
}

TEST_CASE("json replaces invalid UTF-8 with U+FFFD and keeps valid sequences") {
  JsonObject o;
  o.add("ok", "caf\xC3\xA9");
  o.add("bad", "x\xFFy");
  o.add("overlong", "\xC0\xAF");
  o.add("truncated", "\xE2\x82");
  o.add("surrogate", "\xED\xA0\x80");
  REQUIRE(o.str() ==
          "{\"ok\":\"caf\xC3\xA9\",\"bad\":\"x\xEF\xBF\xBDy\",\"overlong\":\"\xEF\xBF\xBD\xEF\xBF\xBD\","
          "\"truncated\":\"\xEF\xBF\xBD\xEF\xBF\xBD\",\"surrogate\":\"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\"}");
}

TEST_CASE("json numbers, booleans, arrays and nesting") {
  JsonObject inner;
  inner.add("n", 3);
  JsonObject o;
  o.add("i", int64_t{-5}).add("u", uint64_t{7}).add("d", 1.5).add("b", true);
  o.add("a", std::vector<std::string>{"x", "y"}).addRaw("o", inner.str());
  REQUIRE(o.str() == R"({"i":-5,"u":7,"d":1.5,"b":true,"a":["x","y"],"o":{"n":3}})");
}

namespace {
// The escaping one byte at a time, as the writer did before it copied plain runs whole:
// the reference the faster one must agree with.
std::string referenceEscape(std::string_view s) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {  // one whole valid UTF-8 sequence, else U+FFFD for this byte
      size_t need = c >= 0xC2 && c <= 0xDF ? 1 : c >= 0xE0 && c <= 0xEF ? 2 : c >= 0xF0 && c <= 0xF4 ? 3 : 0;
      uint32_t cp = need == 1 ? c & 0x1F : need == 2 ? c & 0x0F : c & 0x07;
      bool ok = need > 0 && i + need < s.size();
      for (size_t k = 1; ok && k <= need; ++k) {
        unsigned char d = static_cast<unsigned char>(s[i + k]);
        ok = (d & 0xC0) == 0x80;
        cp = (cp << 6) | (d & 0x3F);
      }
      ok = ok && !((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) || cp > 0x10FFFF ||
                   (cp >= 0xD800 && cp <= 0xDFFF));
      if (ok) {
        out.append(s.substr(i, need + 1));
        i += need;
      } else {
        out += "\xEF\xBF\xBD";
      }
    } else if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n' || c == '\r' || c == '\t') {
      out += c == '\n' ? "\\n" : c == '\r' ? "\\r" : "\\t";
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}
}  // namespace

TEST_CASE("json escaping copies plain runs whole and agrees with the byte-at-a-time reference") {
  // Every byte alone, between plain runs, and at either end.
  for (int b = 0; b < 256; ++b) {
    std::string c(1, static_cast<char>(b));
    for (const std::string& s : {c, "abc" + c, c + "xyz", "queue id " + c + " of " + c + c + " end"}) {
      std::string got;
      moat::mta::appendJsonString(got, s);
      INFO("byte " << b);
      REQUIRE(got == referenceEscape(s));
    }
  }
  // Random mixtures, weighted towards the bytes that end a run.
  std::mt19937 rng(20261123);
  const char kAlphabet[] = "aZ09 @.<>\"\\\n\r\t\x01\x1f\x7f\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\xFF\xED\xA0\x80";
  const std::string alphabet(kAlphabet, sizeof kAlphabet - 1);
  for (int round = 0; round < 2000; ++round) {
    std::string s;
    size_t len = rng() % 40;
    for (size_t i = 0; i < len; ++i) s += alphabet[rng() % alphabet.size()];
    std::string got;
    moat::mta::appendJsonString(got, s);
    REQUIRE(got == referenceEscape(s));
  }
  // DEL and the last control are escaped, the first printable byte is not.
  std::string got;
  moat::mta::appendJsonString(got, std::string_view("\x1f \x7f~", 4));
  REQUIRE(got == R"("\u001f \u007f~")");
}
