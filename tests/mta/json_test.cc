// Tests for mta/runtime/json: peer-controlled strings must always produce valid JSON.
#include <catch2/catch.hpp>

#include "mta/runtime/json.h"

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
