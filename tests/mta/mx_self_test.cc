// Tests for mta/daemon/mx_self: which MX hosts are this gateway (RFC 5321 §5.1), by name
// and by the addresses its port-25 listeners take connections on.
#include "mta/daemon/mx_self.h"

#include <catch2/catch.hpp>

using moat::mta::IpAddress;
using moat::mta::daemon::MxSelf;

namespace {

IpAddress ip(const char* s) { return *IpAddress::parse(s); }

moat::policy::Listener listener(const char* host, uint16_t port) {
  moat::policy::Listener l;
  l.host = host;
  l.port = port;
  l.address = std::string(host) + ":" + std::to_string(port);
  return l;
}

}  // namespace

TEST_CASE("MX self: the host name matches in any case, with or without a trailing dot") {
  MxSelf self("MX.Example.Test", {}, {});
  REQUIRE(self.isSelfName("mx.example.test"));
  REQUIRE(self.isSelfName("MX.EXAMPLE.TEST."));
  REQUIRE_FALSE(self.isSelfName("mx2.example.test"));
  REQUIRE_FALSE(self.isSelfName("example.test"));
  REQUIRE_FALSE(MxSelf("", {}, {}).isSelfName(""));  // no hostname: nothing is us by name
}

TEST_CASE("MX self: a listener's own address, and any local address for 0.0.0.0 or ::") {
  MxSelf one("mx.example.test", {ip("192.0.2.25")}, {});
  REQUIRE(one.isSelfAddress(ip("192.0.2.25")));
  REQUIRE_FALSE(one.isSelfAddress(ip("192.0.2.26")));
  REQUIRE_FALSE(one.isSelfAddress(ip("127.0.0.1")));  // not listening there

  MxSelf any4("mx.example.test", {ip("0.0.0.0")}, {ip("192.0.2.7"), ip("2001:db8::7")});
  REQUIRE(any4.isSelfAddress(ip("192.0.2.7")));
  REQUIRE(any4.isSelfAddress(ip("127.0.0.1")));
  REQUIRE(any4.isSelfAddress(ip("127.3.4.5")));  // all of 127/8 reaches a wildcard listener
  REQUIRE_FALSE(any4.isSelfAddress(ip("192.0.2.8")));
  REQUIRE_FALSE(any4.isSelfAddress(ip("2001:db8::7")));  // an IPv4 socket takes no IPv6

  MxSelf any6("mx.example.test", {ip("::")}, {ip("192.0.2.7"), ip("2001:db8::7")});
  REQUIRE(any6.isSelfAddress(ip("2001:db8::7")));
  REQUIRE(any6.isSelfAddress(ip("::1")));
  REQUIRE(any6.isSelfAddress(ip("192.0.2.7")));  // dual-stack
  REQUIRE_FALSE(any6.isSelfAddress(ip("2001:db8::8")));
}

TEST_CASE("MX self: from the config, only listeners on port 25 count") {
  moat::policy::Config cfg;
  cfg.hostname = "mx.example.test";
  cfg.listeners = {listener("127.0.0.1", 2525), listener("192.0.2.25", 25), listener("192.0.2.87", 587)};
  auto self = MxSelf::fromConfig(cfg);
  REQUIRE(self.isSelfName("mx.example.test"));
  REQUIRE(self.isSelfAddress(ip("192.0.2.25")));
  REQUIRE_FALSE(self.isSelfAddress(ip("127.0.0.1")));  // port 25 there is another server
  REQUIRE_FALSE(self.isSelfAddress(ip("192.0.2.87")));

  cfg.listeners = {listener("0.0.0.0", 25)};
  auto wildcard = MxSelf::fromConfig(cfg);
  REQUIRE(wildcard.isSelfAddress(ip("127.0.0.1")));
  for (const auto& local : moat::mta::daemon::localInterfaceAddresses())
    if (local.isV4()) REQUIRE(wildcard.isSelfAddress(local));
}

TEST_CASE("MX self: an unspecified address (0.0.0.0/8, ::) is always this host") {
  // connect() to 0.0.0.0 or :: reaches this host's loopback: an MX pointing there must not be
  // delivered to (a loop, or a relay through whatever listens on the host's port 25).
  MxSelf self("mx.example.test", {ip("192.0.2.10")}, {});
  REQUIRE(self.isSelfAddress(ip("0.0.0.0")));
  REQUIRE(self.isSelfAddress(ip("0.1.2.3")));
  REQUIRE(self.isSelfAddress(ip("::")));
  REQUIRE_FALSE(self.isSelfAddress(ip("1.0.0.0")));
  REQUIRE_FALSE(self.isSelfAddress(ip("::2")));
  REQUIRE_FALSE(self.isSelfAddress(ip("127.0.0.1")));  // loopback counts only for a 0.0.0.0 listener
}
