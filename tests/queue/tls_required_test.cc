// Tests for queue/tls_required: the RFC 8689 §3 "TLS-Required: No" header field is found in
// the header section only, folded or not, in any case, and nothing else counts.
#include "queue/tls_required.h"

#include <catch2/catch.hpp>
#include <string>

using namespace moat::queue;

TEST_CASE("TLS-Required: No is found in the header section") {
  REQUIRE(tlsRequiredNo("From: a@example.test\r\nTLS-Required: No\r\nSubject: x\r\n\r\nbody\r\n"));
  REQUIRE(tlsRequiredNo("tls-required:no\r\n\r\n"));
  REQUIRE(tlsRequiredNo("Subject: x\r\nTLS-Required:\r\n\tNO \r\n\r\nbody"));  // folded
  REQUIRE(tlsRequiredNo("TLS-Required: No"));                                  // no body at all
}

TEST_CASE("other values, other fields and the body do not count as TLS-Required: No") {
  REQUIRE_FALSE(tlsRequiredNo(""));
  REQUIRE_FALSE(tlsRequiredNo("Subject: TLS-Required: No\r\n\r\n"));
  REQUIRE_FALSE(tlsRequiredNo("TLS-Required: Yes\r\n\r\n"));
  REQUIRE_FALSE(tlsRequiredNo("TLS-Required: No thanks\r\n\r\n"));
  REQUIRE_FALSE(tlsRequiredNo("X-TLS-Required: No\r\n\r\n"));
  REQUIRE_FALSE(tlsRequiredNo("Subject: x\r\n\r\nTLS-Required: No\r\n"));
  REQUIRE_FALSE(tlsRequiredNo("Subject: x\r\n continued\r\n\r\nTLS-Required: No\r\n"));
  std::string longHead = "X-Pad: " + std::string(kMaxTlsRequiredHeaderBytes, 'a') + "\r\nTLS-Required: No\r\n\r\n";
  REQUIRE_FALSE(tlsRequiredNo(longHead));
}
