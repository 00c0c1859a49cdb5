// tests/mta/data_lines_test.cc — the SMTP DATA line rules shared by the client and the DKIM
// signer (mta/runtime/data_lines.h): asDelivered() is exactly what the client's wire form
// becomes at the next hop (stuffing removed, ".\r\n" gone), and a second pass changes
// nothing, so a message the signer repaired goes out byte for byte as signed.
#include "mta/runtime/data_lines.h"

#include <catch2/catch.hpp>
#include <random>
#include <string>

using moat::mta::asDelivered;
using moat::mta::DataLines;

namespace {

// The client's wire bytes for `message`, sent in pieces of `piece` bytes.
std::string wire(std::string_view message, size_t piece) {
  DataLines lines;
  lines.parts[0] = message;
  std::string out;
  while (!lines.next(out, piece)) {
  }
  return out;
}

// RFC 5321 4.5.2 at the receiving end: ".\r\n" ends the data, a leading '.' is removed.
std::string received(std::string_view w) {
  REQUIRE(w.size() >= 3);
  REQUIRE(w.substr(w.size() - 3) == ".\r\n");
  w.remove_suffix(3);
  std::string out;
  bool lineStart = true;
  for (size_t i = 0; i < w.size(); ++i) {
    if (lineStart && w[i] == '.') {
      lineStart = false;
      continue;
    }
    out.push_back(w[i]);
    lineStart = w[i] == '\n';
  }
  return out;
}

}  // namespace

TEST_CASE("asDelivered is what the next hop stores, and a second pass changes nothing") {
  std::mt19937 rng(20261122);
  const char alphabet[] = {'a', 'b', ' ', '.', '\r', '\n', '\t', 'x'};
  for (int round = 0; round < 300; ++round) {
    std::string m;
    size_t n = rng() % 5000;
    for (size_t i = 0; i < n; ++i) {
      // Mostly letters, so lines grow past 998 octets now and then.
      unsigned r = rng() % 1000;
      m.push_back(r < 990 ? 'a' + static_cast<char>(r % 26) : alphabet[r % sizeof alphabet]);
    }
    std::string d = asDelivered(m);
    INFO("round " << round);
    CHECK(received(wire(m, 1 + rng() % 3000)) == d);
    CHECK(asDelivered(d) == d);
  }
  CHECK(asDelivered("") == "");
  CHECK(asDelivered("a\r\nb") == "a\r\nb\r\n");
  // 999 octets of content, 1000 on the wire with the stuffed dot: 998 of them, then the rest.
  std::string dotted = "." + std::string(998, 'd') + "\r\n";
  CHECK(asDelivered(dotted) == "." + std::string(996, 'd') + "\r\n dd\r\n");
  std::string ok = std::string(998, 'e') + "\r\n";
  CHECK(asDelivered(ok) == ok);
}
