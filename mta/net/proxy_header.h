// mta/net/proxy_header.h — the PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and
// 2): the header a TCP load balancer sends first on each connection it passes on, naming the
// client it came from. Listeners with `proxy_protocol` (policy/config.h) read it before the
// greeting, so the client's address, not the balancer's, is what the limits, the access
// lists, DNS lookups, SPF, relay control and Received see.
//
// Untrusted input: the header comes from the connection's peer. Only peers in the
// listener's `proxy_networks` get as far as this parser; still, every length is checked, a
// v1 line is at most 107 octets and a v2 header at most kMaxProxyV2Header, and exactly the
// header's octets are consumed: what follows is the client's (SMTP commands, or a TLS
// ClientHello on an smtps listener). Logs nothing; the server logs the outcome.
#pragma once
#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "mta/net/connection.h"
#include "mta/runtime/ip.h"
#include "mta/runtime/uv.h"

namespace moat::mta::net {

// v1: "PROXY TCP4 ..." with its CRLF, 107 octets at most (the specification's own bound).
constexpr size_t kMaxProxyV1Line = 107;
// v2: the 16-octet fixed part and the address block (216 octets for AF_UNIX, the largest)
// leave TLVs 304 octets here: 536 in all, the smallest segment every TCP host takes (RFC
// 879), which a balancer's header fits in. A longer one is refused, not read.
constexpr size_t kMaxProxyV2Header = 536;

struct ProxyHeader {
  int version = 0;  // 1 or 2
  // false: v1 UNKNOWN, v2 LOCAL (health checks), v2 PROXY with AF_UNSPEC: the connection's
  // own endpoints stand, and the addresses below are not set.
  bool proxied = false;
  IpAddress source, destination;  // IPv4-mapped IPv6 addresses as IPv4 (runtime/ip.h)
  uint16_t sourcePort = 0, destinationPort = 0;
};

struct ProxyParse {
  enum class Status { NeedMore, Done, Invalid };
  Status status = Status::NeedMore;
  ProxyHeader header;  // Done
  size_t length = 0;   // Done: the header's octets; the input after them is the client's
  std::string error;   // Invalid: why, for the log
};

// Parses the start of a connection's input. NeedMore: `input` is a proper prefix of a header
// that may still be valid (and shorter than the limits); call again with more.
ProxyParse parseProxyHeader(std::string_view input);

// Reads one PROXY header from `conn`, which must not be reading yet, within `timeoutMs` of
// start(). `done` runs once, from the loop (never from inside a Connection callback), unless the
// reader is destroyed first: with the connection, reading stopped and everything after the
// header still to be read (Connection::unread), and the header, or with `error` set (bad
// header, timeout, closed): the connection is then the caller's to close. Destroying a reader
// that has not finished aborts the connection.
class ProxyHeaderReader {
 public:
  using Done = std::function<void(std::shared_ptr<Connection> conn, std::optional<ProxyHeader> header,
                                  const std::string& error)>;
  ProxyHeaderReader(uv_loop_t* loop, std::shared_ptr<Connection> conn);
  ~ProxyHeaderReader();
  void start(uint64_t timeoutMs, Done done);
  // The peer closed (or reset) the connection without sending a single octet: what a load
  // balancer's plain TCP health check does (an AWS NLB's, HAProxy's `check` without
  // `check-send-proxy`). Meaningful once `done` ran with an error.
  bool closedSilently() const { return closedSilently_; }
  ProxyHeaderReader(const ProxyHeaderReader&) = delete;
  ProxyHeaderReader& operator=(const ProxyHeaderReader&) = delete;

 private:
  void onData(std::string_view data);
  // Reports the outcome on the next loop turn: `done` may replace the connection's callbacks
  // (a session starts), which must not happen inside one of them.
  void finish(std::optional<ProxyHeader> header, std::string error);

  uv_loop_t* loop_;
  std::shared_ptr<Connection> conn_;
  Done done_;
  uv::Timer timer_;
  std::string input_;  // at most the limit plus one read
  bool finished_ = false;
  bool heardAnything_ = false, closedSilently_ = false;
  std::optional<ProxyHeader> header_;
  std::string error_;
};

}  // namespace moat::mta::net
