// tests/fuzz/fuzz_proxy_header.cc — libFuzzer target for the PROXY protocol header parser
// (mta/net/proxy_header.h), the first bytes a proxy_protocol listener reads from its peer.
// The input is the connection's first bytes.
// Invariants, which the listener's reader relies on:
//  - a header is never longer than its version's limit, nor than the input, and a v1 one
//    ends with CRLF; a v2 one starts with the 12-octet signature;
//  - every proper prefix of a header, and every prefix of an input that needs more, needs
//    more: the reader may get the bytes one at a time and must come to the same end;
//  - the outcome depends on the header's bytes only: the input cut right after the header
//    parses to the same header, so what follows it (the client's SMTP or TLS) is never read;
//  - an input that needs more is under the limits, and a refusal says why;
//  - a proxied header's addresses print and parse back to themselves (the logs, Received:).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "mta/net/proxy_header.h"
#include "tests/fuzz/fuzz_check.h"

using moat::mta::IpAddress;
using moat::mta::net::kMaxProxyV1Line;
using moat::mta::net::kMaxProxyV2Header;
using moat::mta::net::parseProxyHeader;
using moat::mta::net::ProxyParse;

namespace {

bool sameHeader(const ProxyParse& a, const ProxyParse& b) {
  return a.status == b.status && a.length == b.length && a.header.version == b.header.version &&
         a.header.proxied == b.header.proxied && a.header.source == b.header.source &&
         a.header.destination == b.header.destination && a.header.sourcePort == b.header.sourcePort &&
         a.header.destinationPort == b.header.destinationPort;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const ProxyParse p = parseProxyHeader(in);
  switch (p.status) {
    case ProxyParse::Status::NeedMore:
      FUZZ_CHECK(size < kMaxProxyV2Header);
      if (!in.empty() && in[0] != '\r') FUZZ_CHECK(size < kMaxProxyV1Line);
      break;
    case ProxyParse::Status::Invalid: FUZZ_CHECK(!p.error.empty()); break;
    case ProxyParse::Status::Done: {
      FUZZ_CHECK(p.length > 0 && p.length <= size);
      FUZZ_CHECK(p.header.version == 1 || p.header.version == 2);
      if (p.header.version == 1) {
        FUZZ_CHECK(p.length <= kMaxProxyV1Line);
        FUZZ_CHECK(in.substr(0, 6) == "PROXY " && in.substr(p.length - 2, 2) == "\r\n");
      } else {
        FUZZ_CHECK(p.length >= 16 && p.length <= kMaxProxyV2Header);
        FUZZ_CHECK(in.substr(0, 12) == std::string_view("\r\n\r\n\0\r\nQUIT\n", 12));
      }
      if (p.header.proxied) {
        for (const IpAddress* ip : {&p.header.source, &p.header.destination}) {
          auto back = IpAddress::parse(ip->str());
          FUZZ_CHECK(back && *back == *ip);
        }
      }
      // The header's own bytes give the same header: nothing after it was looked at.
      FUZZ_CHECK(sameHeader(parseProxyHeader(in.substr(0, p.length)), p));
      break;
    }
  }
  // Every shorter prefix (of the header, or of what needs more) needs more; a refusal may
  // come before the input's end, but once refused, a longer input stays refused.
  const size_t upto = p.status == ProxyParse::Status::Done ? p.length : size;
  bool refused = false;
  for (size_t n = 0; n < upto; ++n) {
    const auto s = parseProxyHeader(in.substr(0, n)).status;
    if (p.status == ProxyParse::Status::Invalid) {
      FUZZ_CHECK(s != ProxyParse::Status::Done);
      FUZZ_CHECK(!refused || s == ProxyParse::Status::Invalid);
      refused = refused || s == ProxyParse::Status::Invalid;
    } else {
      FUZZ_CHECK(s == ProxyParse::Status::NeedMore);
    }
  }
  return 0;
}
