// mta/daemon/mx_self.h — whether a mail host named by MX is this gateway (RFC 5321 §5.1:
// "if the SMTP client finds itself in the list of MX hosts, it MUST discard that entry and
// every one of equal or lower preference"), so that a domain whose MX list names Moat is not
// delivered back to Moat (a loop that ends in a 5.4.6 bounce after 100 hops) and a backup MX
// waits for its primary instead.
//
// A host is this gateway when its name is server.hostname (any case, a trailing dot ignored),
// or when one of its addresses is where a [[listener]] takes connections on port 25, the port
// MX delivery uses. A listener on 0.0.0.0:25 takes them on every local IPv4 address, one on
// [::]:25 on every local address (Moat binds it dual-stack): the host's interface addresses
// (getifaddrs) and all of 127.0.0.0/8 and ::1. A listener on another port is not counted: mail
// sent to that address on port 25 reaches some other server, not Moat, and counting it would
// bounce mail that can be delivered. (Behind a port redirect, server.hostname is what names
// Moat in the MX records.)
//
// An unspecified address (0.0.0.0/8, ::) is always this host: it is never a destination
// (RFC 1122 §3.2.1.3, RFC 4291 §2.5.2), and a connect() to it reaches the host's own
// loopback, Moat or whatever else listens there. A loopback address is this gateway only as
// above (Postfix alike): a test or a split setup may have another server there.
//
// Untrusted input: MX host names and addresses from DNS (compared only). Logs nothing.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "mta/runtime/ip.h"
#include "policy/config.h"

namespace moat::mta::daemon {

class MxSelf {
 public:
  // `listeners`: the addresses Moat takes port-25 connections on (unspecified ones included);
  // `local`: the host's own addresses, consulted only for an unspecified listener.
  MxSelf(std::string_view hostname, std::vector<IpAddress> listeners, std::vector<IpAddress> local);
  // From the config; reads the interface addresses only when a port-25 listener is unspecified.
  static MxSelf fromConfig(const policy::Config& cfg);

  bool isSelfName(std::string_view host) const;
  bool isSelfAddress(const IpAddress& ip) const;

 private:
  std::string hostname_;  // lower-case, no trailing dot
  std::vector<IpAddress> listeners_;
  bool anyV4_ = false, anyV6_ = false;
  std::vector<IpAddress> local_;
};

// The host's interface addresses (getifaddrs); empty if they cannot be read.
std::vector<IpAddress> localInterfaceAddresses();

}  // namespace moat::mta::daemon
