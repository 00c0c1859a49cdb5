// Tests for mta/runtime/ip: address parsing, CIDR matching, host:port parsing.
#include "mta/runtime/ip.h"

#include <netinet/in.h>

#include <catch2/catch.hpp>

using namespace moat::mta;

TEST_CASE("ip addresses parse strictly and print canonically") {
  REQUIRE(IpAddress::parse("192.0.2.1")->str() == "192.0.2.1");
  REQUIRE(IpAddress::parse("2001:DB8::1")->str() == "2001:db8::1");
  REQUIRE_FALSE(IpAddress::parse("192.0.2"));
  REQUIRE_FALSE(IpAddress::parse("192.0.2.1 "));
  REQUIRE_FALSE(IpAddress::parse("256.0.0.1"));
  REQUIRE_FALSE(IpAddress::parse(""));
}

TEST_CASE("IPv4-mapped IPv6 addresses count as IPv4") {
  auto ip = IpAddress::parse("::ffff:10.1.2.3");
  REQUIRE(ip->isV4());
  REQUIRE(Network::parse("10.0.0.0/8")->contains(*ip));
}

TEST_CASE("CIDR networks match by prefix and family") {
  auto n = Network::parse("10.1.0.0/16");
  REQUIRE(n->contains(*IpAddress::parse("10.1.255.1")));
  REQUIRE_FALSE(n->contains(*IpAddress::parse("10.2.0.1")));
  REQUIRE_FALSE(n->contains(*IpAddress::parse("::1")));
  auto v6 = Network::parse("2001:db8::/33");
  REQUIRE(v6->contains(*IpAddress::parse("2001:db8:7fff::1")));
  REQUIRE_FALSE(v6->contains(*IpAddress::parse("2001:db8:8000::1")));
  REQUIRE(Network::parse("0.0.0.0/0")->contains(*IpAddress::parse("203.0.113.9")));
  REQUIRE_FALSE(Network::parse("10.0.0.0/33"));
  REQUIRE_FALSE(Network::parse("10.0.0.0/"));
  REQUIRE(Network::parse("192.0.2.7")->prefix() == 32);
}

TEST_CASE("reverse names") {
  REQUIRE(IpAddress::parse("192.0.2.1")->reverseName() == "1.2.0.192.in-addr.arpa");
  REQUIRE(IpAddress::parse("2001:db8::1")->reverseName() ==
          "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa");
}

TEST_CASE("host:port parsing") {
  auto a = parseHostPort("127.0.0.1:2525");
  REQUIRE(a->host == "127.0.0.1");
  REQUIRE(a->port == 2525);
  auto b = parseHostPort("[::1]:25");
  REQUIRE(b->host == "::1");
  REQUIRE(b->port == 25);
  REQUIRE(parseHostPort("mx.example.test", 25)->port == 25);
  REQUIRE_FALSE(parseHostPort("mx.example.test"));
  REQUIRE_FALSE(parseHostPort("host:99999"));
  REQUIRE_FALSE(parseHostPort("host:"));
}

TEST_CASE("IPv4-mapped networks are the IPv4 networks") {
  auto n = Network::parse("::ffff:10.0.0.0/104");
  REQUIRE(n);
  REQUIRE(n->str() == "10.0.0.0/8");
  REQUIRE(n->contains(*IpAddress::parse("10.200.0.1")));
  REQUIRE(n->contains(*IpAddress::parse("::ffff:10.1.2.3")));
  REQUIRE_FALSE(n->contains(*IpAddress::parse("11.0.0.1")));
  REQUIRE(Network::parse("::ffff:192.0.2.1")->str() == "192.0.2.1/32");
  REQUIRE_FALSE(Network::parse("::ffff:10.0.0.0/95"));  // reaches past the mapped block
  REQUIRE_FALSE(Network::parse("::ffff:10.0.0.0/129"));
  REQUIRE(Network::parse("2001:db8::/32")->prefix() == 32);
}

TEST_CASE("address literals and host:port as SMTP and the logs write them") {
  // RFC 5321 §4.1.3: IPv6 literals carry the "IPv6:" tag.
  REQUIRE(IpAddress::parse("192.0.2.1")->literal() == "[192.0.2.1]");
  REQUIRE(IpAddress::parse("::1")->literal() == "[IPv6:::1]");
  REQUIRE(IpAddress::parse("::ffff:192.0.2.1")->literal() == "[192.0.2.1]");
  REQUIRE(IpAddress::parse("192.0.2.1")->withPort(25) == "192.0.2.1:25");
  REQUIRE(IpAddress::parse("2001:db8::1")->withPort(2525) == "[2001:db8::1]:2525");
}

TEST_CASE("per-client limits count an IPv6 client by its /64") {
  REQUIRE(clientKey(*IpAddress::parse("192.0.2.1")) == "192.0.2.1");
  REQUIRE(clientKey(*IpAddress::parse("::ffff:192.0.2.1")) == "192.0.2.1");
  REQUIRE(clientKey(*IpAddress::parse("2001:db8:1:2:aaaa::1")) == "2001:db8:1:2::/64");
  REQUIRE(clientKey(*IpAddress::parse("2001:db8:1:2:ffff:ffff:ffff:fffe")) == "2001:db8:1:2::/64");
  REQUIRE(clientKey(*IpAddress::parse("2001:db8:1:3::1")) == "2001:db8:1:3::/64");
  REQUIRE(clientKey(*IpAddress::parse("::1")) == "::/64");
}

TEST_CASE("address literals name an address only in RFC 5321 §4.1.3's two forms") {
  using moat::mta::parseAddressLiteral;
  REQUIRE(parseAddressLiteral("[192.0.2.1]")->str() == "192.0.2.1");
  REQUIRE(parseAddressLiteral("[IPv6:2001:db8::1]")->str() == "2001:db8::1");
  REQUIRE(parseAddressLiteral("[ipv6:::1]")->str() == "::1");                     // the tag in any case
  REQUIRE(parseAddressLiteral("[IPv6:::ffff:192.0.2.1]")->str() == "192.0.2.1");  // mapped: IPv4
  for (const char* bad : {"[::1]", "[IPv6:192.0.2.1]", "[IPv6:]", "[tag:content]", "[192.0.2.256]", "192.0.2.1",
                          "[192.0.2.1", "[]", "[ 192.0.2.1]", "[IPv6:2001:db8::1%lo]"})
    REQUIRE_FALSE(parseAddressLiteral(bad).has_value());
}

TEST_CASE("toSockaddr gives the address, port and length fromSockaddr reads back") {
  sockaddr_storage ss{};
  auto v4 = IpAddress::parse("192.0.2.25").value();
  REQUIRE(v4.toSockaddr(2525, ss) == sizeof(sockaddr_in));
  CHECK(ss.ss_family == AF_INET);
  CHECK(ntohs(reinterpret_cast<const sockaddr_in*>(&ss)->sin_port) == 2525);
  CHECK(IpAddress::fromSockaddr(reinterpret_cast<const sockaddr*>(&ss)).value() == v4);

  auto v6 = IpAddress::parse("2001:db8::25").value();
  REQUIRE(v6.toSockaddr(0, ss) == sizeof(sockaddr_in6));
  CHECK(ss.ss_family == AF_INET6);
  CHECK(reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_port == 0);
  CHECK(reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_scope_id == 0);  // the rest is zeroed
  CHECK(IpAddress::fromSockaddr(reinterpret_cast<const sockaddr*>(&ss)).value() == v6);
}
