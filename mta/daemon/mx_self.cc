// mta/daemon/mx_self.cc — see mx_self.h. RFC 5321 §5.1 (MX hosts that are this host).
#include "mta/daemon/mx_self.h"

#include <ifaddrs.h>

#include <algorithm>
#include <cctype>

namespace moat::mta::daemon {
namespace {

std::string canonicalName(std::string_view name) {
  std::string out(name);
  while (!out.empty() && out.back() == '.') out.pop_back();
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

// MX delivery connects to port 25 (queue_manager.cc), so only a listener there is reached.
constexpr uint16_t kMxPort = 25;

}  // namespace

MxSelf::MxSelf(std::string_view hostname, std::vector<IpAddress> listeners, std::vector<IpAddress> local)
    : hostname_(canonicalName(hostname)), local_(std::move(local)) {
  static const IpAddress any4 = *IpAddress::parse("0.0.0.0");
  static const IpAddress any6 = *IpAddress::parse("::");
  for (auto& ip : listeners) {
    if (ip == any4) anyV4_ = true;
    else if (ip == any6) anyV4_ = anyV6_ = true;  // bound dual-stack
    else listeners_.push_back(std::move(ip));
  }
}

MxSelf MxSelf::fromConfig(const policy::Config& cfg) {
  std::vector<IpAddress> listeners;
  bool unspecified = false;
  for (const auto& l : cfg.listeners) {
    if (l.port != kMxPort) continue;
    auto ip = IpAddress::parse(l.host);
    if (!ip) continue;  // `moat check` refuses a listener that is not an address
    unspecified = unspecified || ip->str() == "0.0.0.0" || ip->str() == "::";
    listeners.push_back(*ip);
  }
  return MxSelf(cfg.hostname, std::move(listeners), unspecified ? localInterfaceAddresses() : std::vector<IpAddress>{});
}

bool MxSelf::isSelfName(std::string_view host) const {
  return !hostname_.empty() && canonicalName(host) == hostname_;
}

bool MxSelf::isSelfAddress(const IpAddress& ip) const {
  const uint8_t* b = ip.bytes();
  if (ip.isV4() ? b[0] == 0 : std::all_of(b, b + 16, [](uint8_t x) { return x == 0; })) return true;
  if (std::find(listeners_.begin(), listeners_.end(), ip) != listeners_.end()) return true;
  if (!(ip.isV4() ? anyV4_ : anyV6_)) return false;
  // Every loopback address reaches an unspecified listener, configured on an interface or not.
  return ip.isLoopback() || std::find(local_.begin(), local_.end(), ip) != local_.end();
}

std::vector<IpAddress> localInterfaceAddresses() {
  std::vector<IpAddress> out;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return out;
  for (ifaddrs* a = list; a; a = a->ifa_next)
    if (a->ifa_addr)
      if (auto ip = IpAddress::fromSockaddr(a->ifa_addr)) out.push_back(*ip);
  freeifaddrs(list);
  return out;
}

}  // namespace moat::mta::daemon
