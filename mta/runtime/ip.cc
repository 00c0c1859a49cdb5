// mta/runtime/ip.cc — see ip.h.
#include "mta/runtime/ip.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstring>

namespace moat::mta {

IpAddress IpAddress::v4(const uint8_t bytes[4]) {
  IpAddress ip;
  ip.v4_ = true;
  std::memcpy(ip.bytes_.data(), bytes, 4);
  return ip;
}

IpAddress IpAddress::v6(const uint8_t bytes[16]) {
  static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(bytes, kMapped, 12) == 0) return v4(bytes + 12);
  IpAddress ip;
  ip.v4_ = false;
  std::memcpy(ip.bytes_.data(), bytes, 16);
  return ip;
}

std::optional<IpAddress> IpAddress::parse(std::string_view text) {
  if (text.empty() || text.size() > 45) return std::nullopt;
  char buf[64];
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = 0;
  uint8_t bytes[16];
  if (text.find(':') == std::string_view::npos) {
    if (inet_pton(AF_INET, buf, bytes) == 1) return v4(bytes);
    return std::nullopt;
  }
  if (inet_pton(AF_INET6, buf, bytes) == 1) return v6(bytes);
  return std::nullopt;
}

std::optional<IpAddress> IpAddress::fromSockaddr(const sockaddr* sa) {
  if (!sa) return std::nullopt;
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    return v4(reinterpret_cast<const uint8_t*>(&in->sin_addr));
  }
  if (sa->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    return v6(reinterpret_cast<const uint8_t*>(&in6->sin6_addr));
  }
  return std::nullopt;
}

socklen_t IpAddress::toSockaddr(uint16_t port, sockaddr_storage& ss) const {
  std::memset(&ss, 0, sizeof ss);
  if (v4_) {
    auto* in = reinterpret_cast<sockaddr_in*>(&ss);
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    std::memcpy(&in->sin_addr, bytes_.data(), 4);
    return sizeof *in;
  }
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
  in6->sin6_family = AF_INET6;
  in6->sin6_port = htons(port);
  std::memcpy(&in6->sin6_addr, bytes_.data(), 16);
  return sizeof *in6;
}

std::string IpAddress::str() const {
  char buf[INET6_ADDRSTRLEN];
  inet_ntop(v4_ ? AF_INET : AF_INET6, bytes_.data(), buf, sizeof buf);
  return buf;
}

std::string IpAddress::literal() const { return v4_ ? "[" + str() + "]" : "[IPv6:" + str() + "]"; }

std::string IpAddress::withPort(uint16_t port) const {
  return (v4_ ? str() : "[" + str() + "]") + ":" + std::to_string(port);
}

std::string IpAddress::reversedLabels() const {
  std::string out;
  static const char* hex = "0123456789abcdef";
  if (v4_) {
    for (int i = 3; i >= 0; --i) out += std::to_string(bytes_[i]) + (i ? "." : "");
    return out;
  }
  for (int i = 15; i >= 0; --i) {
    out.push_back(hex[bytes_[i] & 0xF]);
    out.push_back('.');
    out.push_back(hex[bytes_[i] >> 4]);
    if (i) out.push_back('.');
  }
  return out;
}

std::string IpAddress::reverseName() const { return reversedLabels() + (v4_ ? ".in-addr.arpa" : ".ip6.arpa"); }

bool IpAddress::isLoopback() const {
  if (v4_) return bytes_[0] == 127;
  static const uint8_t kLoop[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  return std::memcmp(bytes_.data(), kLoop, 16) == 0;
}

std::optional<IpAddress> parseAddressLiteral(std::string_view literal) {
  if (literal.size() < 3 || literal.front() != '[' || literal.back() != ']') return std::nullopt;
  std::string_view inner = literal.substr(1, literal.size() - 2);
  constexpr std::string_view kTag = "ipv6:";
  const bool v6 = inner.size() > kTag.size() && std::equal(kTag.begin(), kTag.end(), inner.begin(), [](char a, char b) {
                    return a == std::tolower(static_cast<unsigned char>(b));
                  });
  if (v6) inner.remove_prefix(kTag.size());
  // "[IPv6:::ffff:192.0.2.1]" names an IPv4 address, but "[::1]" without its tag and
  // "[IPv6:192.0.2.1]" are no literals.
  if ((inner.find(':') != std::string_view::npos) != v6) return std::nullopt;
  return IpAddress::parse(inner);
}

std::string clientKey(const IpAddress& ip) {
  if (ip.isV4()) return ip.str();
  uint8_t net[16] = {};
  std::memcpy(net, ip.bytes(), 8);
  return Network(IpAddress::v6(net), 64).str();
}

bool prefixMatch(const uint8_t* a, const uint8_t* b, int bits) {
  int full = bits / 8;
  if (std::memcmp(a, b, static_cast<size_t>(full)) != 0) return false;
  int rest = bits % 8;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xFF << (8 - rest));
  return (a[full] & mask) == (b[full] & mask);
}

std::optional<Network> Network::parse(std::string_view text) {
  auto slash = text.find('/');
  auto ip = IpAddress::parse(text.substr(0, slash));
  if (!ip) return std::nullopt;
  // An IPv4-mapped network (::ffff:10.0.0.0/104) is the IPv4 one (10.0.0.0/8), as its
  // clients are: its prefix counts the 96 bits of the mapping.
  const bool mapped = ip->isV4() && text.substr(0, slash).find(':') != std::string_view::npos;
  int max = mapped ? 128 : ip->isV4() ? 32 : 128;
  int prefix = max;
  if (slash != std::string_view::npos) {
    auto digits = text.substr(slash + 1);
    if (digits.empty() || digits.size() > 3) return std::nullopt;
    auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), prefix);
    if (ec != std::errc() || p != digits.data() + digits.size() || prefix < 0 || prefix > max) return std::nullopt;
  }
  if (mapped) {
    if (prefix < 96) return std::nullopt;  // it would take in addresses that are not IPv4
    prefix -= 96;
  }
  return Network(*ip, prefix);
}

bool Network::contains(const IpAddress& ip) const {
  if (ip.isV4() != addr_.isV4()) return false;
  return prefixMatch(ip.bytes(), addr_.bytes(), prefix_);
}

std::string Network::str() const { return addr_.str() + "/" + std::to_string(prefix_); }

std::optional<HostPort> parseHostPort(std::string_view text, uint16_t defaultPort) {
  HostPort hp;
  std::string_view rest;
  if (!text.empty() && text[0] == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    hp.host = std::string(text.substr(1, close - 1));
    rest = text.substr(close + 1);
    if (!rest.empty() && rest[0] != ':') return std::nullopt;
  } else {
    auto colon = text.rfind(':');
    if (colon != std::string_view::npos && text.find(':') != colon) {
      // a bare IPv6 address without brackets: no port
      hp.host = std::string(text);
    } else {
      hp.host = std::string(text.substr(0, colon));
      if (colon != std::string_view::npos) rest = text.substr(colon);
    }
  }
  if (hp.host.empty()) return std::nullopt;
  if (rest.empty()) {
    if (defaultPort == 0) return std::nullopt;
    hp.port = defaultPort;
    return hp;
  }
  auto digits = rest.substr(1);
  unsigned port = 0;
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
  if (digits.empty() || ec != std::errc() || p != digits.data() + digits.size() || port > 65535) return std::nullopt;
  hp.port = static_cast<uint16_t>(port);
  return hp;
}

}  // namespace moat::mta
