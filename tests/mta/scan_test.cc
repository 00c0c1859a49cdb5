// Tests for mta/runtime/scan.h: findLineBreak against a plain byte loop, and hasEightBit, at
// every position and length around the 16-byte steps, never reading past the end.
#include <catch2/catch.hpp>

#include <memory>
#include <string>

#include "mta/runtime/scan.h"

using moat::mta::findLineBreak;

namespace {
size_t reference(const char* p, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (p[i] == '\r' || p[i] == '\n') return i;
  return n;
}
}  // namespace

TEST_CASE("findLineBreak finds the first CR or LF at every position, or returns the length") {
  for (size_t n = 0; n <= 70; ++n) {
    // The bytes sit at the very end of their allocation, so AddressSanitizer reports any
    // read past n.
    auto buf = std::make_unique<char[]>(n + 1);
    char* p = buf.get() + 1;
    for (size_t i = 0; i < n; ++i) p[i] = static_cast<char>('a' + i % 26);
    REQUIRE(findLineBreak(p, n) == n);
    for (size_t at = 0; at < n; ++at) {
      for (char c : {'\r', '\n'}) {
        p[at] = c;
        INFO("n=" << n << " at=" << at);
        REQUIRE(findLineBreak(p, n) == at);
        if (at + 3 < n) {
          p[at + 3] = '\n';  // a later break never wins
          REQUIRE(findLineBreak(p, n) == reference(p, n));
          p[at + 3] = 'x';
        }
        p[at] = 'y';
      }
    }
  }
  // Bytes with the high bit set and NULs are ordinary bytes.
  std::string s("\x80\xff\0\x0b\x0c\x8d\x8a", 7);
  s += "\n";
  REQUIRE(findLineBreak(s.data(), s.size()) == 7);
}

TEST_CASE("hasEightBit sees a byte over 0x7f at every position, and none in ASCII") {
  for (size_t n = 0; n <= 70; ++n) {
    auto buf = std::make_unique<char[]>(n + 1);  // bytes at the end: ASan sees any over-read
    char* p = buf.get() + 1;
    for (size_t i = 0; i < n; ++i) p[i] = static_cast<char>(i % 128);  // all of ASCII, NUL and DEL too
    REQUIRE_FALSE(moat::mta::hasEightBit(std::string_view(p, n)));
    for (size_t at = 0; at < n; ++at) {
      for (unsigned char c : {0x80, 0xC3, 0xFF}) {
        char keep = p[at];
        p[at] = static_cast<char>(c);
        INFO("n=" << n << " at=" << at);
        REQUIRE(moat::mta::hasEightBit(std::string_view(p, n)));
        REQUIRE_FALSE(moat::mta::hasEightBit(std::string_view(p, at)));  // not before it
        p[at] = keep;
      }
    }
  }
}

TEST_CASE("isPrintableUtf8 takes UTF-8 text and refuses controls and broken sequences") {
  using moat::mta::isPrintableUtf8;
  REQUIRE(isPrintableUtf8(""));
  REQUIRE(isPrintableUtf8("alice@example.test"));
  REQUIRE(isPrintableUtf8("j\xc3\xb6rg \xe2\x82\xac \xf0\x9f\x93\xa7"));
  for (std::string bad : {std::string("a\0b", 3), std::string("tab\there"), std::string("del\x7f"), std::string("nl\n"),
                          std::string("\xc3"), std::string("\xc0\xaf"), std::string("\xed\xa0\x80"),
                          std::string("\xf4\x90\x80\x80"), std::string("\xff")}) {
    CAPTURE(bad);
    REQUIRE_FALSE(isPrintableUtf8(bad));
  }
}
