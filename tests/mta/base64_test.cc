// Tests for mta/runtime/base64.h: the RFC 4648 §10 vectors both ways, the lenient decoder
// that key records need and the strict one that SASL lines (RFC 4954) need.
#include "mta/runtime/base64.h"

#include <catch2/catch.hpp>
#include <string>

using moat::mta::base64Decode;
using moat::mta::base64DecodeStrict;
using moat::mta::base64Encode;

TEST_CASE("base64 encodes and decodes the RFC 4648 test vectors") {
  const std::pair<const char*, const char*> vectors[] = {
      {"", ""},
      {"f", "Zg=="},
      {"fo", "Zm8="},
      {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="},
      {"fooba", "Zm9vYmE="},
      {"foobar", "Zm9vYmFy"},
  };
  for (const auto& [plain, encoded] : vectors) {
    CAPTURE(plain);
    REQUIRE(base64Encode(plain) == encoded);
    REQUIRE(base64Decode(encoded) == std::string(plain));
    REQUIRE(base64DecodeStrict(encoded) == std::string(plain));
  }
}

TEST_CASE("base64 round-trips every byte value") {
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  for (size_t n = 0; n <= all.size(); n += 37) {
    auto part = all.substr(0, n);
    REQUIRE(base64DecodeStrict(base64Encode(part)) == part);
  }
}

TEST_CASE("the lenient decoder skips whitespace, the strict one refuses it") {
  REQUIRE(base64Decode(" Zm9v\r\n YmFy\t") == std::string("foobar"));
  REQUIRE_FALSE(base64DecodeStrict("Zm9v YmFy"));
  REQUIRE_FALSE(base64DecodeStrict("Zm9vYmFy\r\n"));
}

TEST_CASE("both decoders refuse what is not base64") {
  for (const char* bad : {"Zm9v!", "Zg===", "Zg==Zg==", "Z=g=", "Zm9v-_"}) {
    CAPTURE(bad);
    REQUIRE_FALSE(base64Decode(bad));
    REQUIRE_FALSE(base64DecodeStrict(bad));
  }
}

TEST_CASE("the strict decoder wants whole quanta: padding may not be left out") {
  REQUIRE(base64Decode("Zg") == std::string("f"));
  REQUIRE_FALSE(base64DecodeStrict("Zg"));
  REQUIRE_FALSE(base64DecodeStrict("Zm9vY"));
  REQUIRE_FALSE(base64DecodeStrict("="));
}

TEST_CASE("base64EncodeLines wraps at 76 characters with CRLF and decodes back") {
  using moat::mta::base64EncodeLines;
  REQUIRE(base64EncodeLines("") == "");
  REQUIRE(base64EncodeLines("foobar") == "Zm9vYmFy");
  std::string bytes;
  for (int i = 0; i < 1000; ++i) bytes.push_back(static_cast<char>(i * 7));
  for (size_t n : {56, 57, 58, 114, 1000}) {
    CAPTURE(n);
    std::string enc = base64EncodeLines(bytes.substr(0, n));
    size_t start = 0;
    for (size_t crlf = enc.find("\r\n"); crlf != std::string::npos; crlf = enc.find("\r\n", start)) {
      REQUIRE(crlf - start == 76);
      start = crlf + 2;
    }
    REQUIRE(enc.size() - start <= 76);
    REQUIRE(enc.compare(enc.size() >= 2 ? enc.size() - 2 : 0, 2, "\r\n") != 0);
    REQUIRE(base64Decode(enc) == bytes.substr(0, n));
  }
}

TEST_CASE("base64DecodeMime skips what is not base64 and stops at the first '='") {
  using moat::mta::base64DecodeMime;
  REQUIRE(base64DecodeMime("Zm9v\r\nYmFy\r\n") == "foobar");
  REQUIRE(base64DecodeMime("Zm9v!!YmFy") == "foobar");
  REQUIRE(base64DecodeMime("Zm8=Zm9v") == "fo");
  REQUIRE(base64DecodeMime("") == "");
  REQUIRE(base64DecodeMime("====") == "");
}
