// mta/runtime/ip.h — IP addresses and CIDR networks (relay.networks, SPF ip4/ip6, access
// lists). IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are treated as the IPv4 address, so a
// dual-stack listener matches IPv4 rules. Parsing is strict: input comes from config files
// and from peers.
#pragma once
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace moat::mta {

class IpAddress {
 public:
  IpAddress() = default;
  static std::optional<IpAddress> parse(std::string_view text);
  static std::optional<IpAddress> fromSockaddr(const sockaddr* sa);
  // The reverse: `ss` set to this address and `port` (host order); returns its length.
  socklen_t toSockaddr(uint16_t port, sockaddr_storage& ss) const;
  static IpAddress v4(const uint8_t bytes[4]);
  static IpAddress v6(const uint8_t bytes[16]);

  bool isV4() const { return v4_; }
  // 4 bytes for IPv4, 16 for IPv6.
  const uint8_t* bytes() const { return bytes_.data(); }
  size_t size() const { return v4_ ? 4 : 16; }
  std::string str() const;
  // The SMTP address literal (RFC 5321 §4.1.3): "[192.0.2.1]", "[IPv6:2001:db8::1]", as the
  // Received: header's TCP-info (§4.4) and the EHLO greeting name the client.
  std::string literal() const;
  // With a port, as a log's `relay` shows a next hop: "192.0.2.1:25", "[2001:db8::1]:25" (a
  // bare IPv6 address and a port would read as one address).
  std::string withPort(uint16_t port) const;
  // The reverse-DNS name: "4.3.2.1.in-addr.arpa" or the nibble form under ip6.arpa.
  std::string reverseName() const;
  // The same labels without the arpa zone ("4.3.2.1"), as DNS blocklists use them (RFC 5782).
  std::string reversedLabels() const;
  bool isLoopback() const;

  bool operator==(const IpAddress& o) const { return v4_ == o.v4_ && bytes_ == o.bytes_; }

 private:
  bool v4_ = true;
  std::array<uint8_t, 16> bytes_{};
};

class Network {
 public:
  // "10.0.0.0/8", "2001:db8::/32", or a bare address (a /32 or /128).
  static std::optional<Network> parse(std::string_view text);
  Network(IpAddress addr, int prefix) : addr_(addr), prefix_(prefix) {}
  bool contains(const IpAddress& ip) const;
  std::string str() const;
  const IpAddress& address() const { return addr_; }
  int prefix() const { return prefix_; }

 private:
  IpAddress addr_;
  int prefix_ = 0;
};

// The address an SMTP address literal names (RFC 5321 §4.1.3): "[192.0.2.1]" or
// "[IPv6:2001:db8::1]" (the tag in any case); nullopt for anything else, general literals
// ("[tag:content]") and an untagged IPv6 address ("[::1]") included.
std::optional<IpAddress> parseAddressLiteral(std::string_view literal);

// What the per-client connection limits count by (limits.max_connections_per_ip,
// connection.max_rate_per_ip): an IPv4 address, or the /64 of an IPv6 one ("2001:db8:1:2::/64").
// A /64 is one site's subnet (RFC 6177) whose hosts pick their own addresses (RFC 8981):
// counted by address, one client with a /64 would have 2^64 allowances.
std::string clientKey(const IpAddress& ip);

// True if the first `bits` bits of two byte strings agree.
bool prefixMatch(const uint8_t* a, const uint8_t* b, int bits);

struct HostPort {
  std::string host;
  uint16_t port = 0;
};
// "127.0.0.1:2525", "[::1]:25", "mx.example.test:25". Without a port, `defaultPort`
// (0 = a port is required).
std::optional<HostPort> parseHostPort(std::string_view text, uint16_t defaultPort = 0);

}  // namespace moat::mta
