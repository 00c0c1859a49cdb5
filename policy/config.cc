// policy/config.cc — see config.h. Reads the core sections; validates every value; keeps
// going after the first error so `moat check` can list them all.
#include "policy/config.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <set>
#include <string_view>

#include "mta/runtime/fd.h"
#include "policy/batv.h"
#include "policy/list_file.h"
#include "policy/values.h"

namespace moat::policy {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string absolutePath(const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  char buf[PATH_MAX];
  if (!getcwd(buf, sizeof buf)) return path;
  return std::string(buf) + "/" + path;
}

std::string dirOf(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Sections read by parts of Moat other than this file; anything else at the top is a typo.
const std::set<std::string> kOtherSections = {"spf",  "dkim",      "arc",   "dmarc", "dnsbl",       "uribl",
                                              "helo", "antivirus", "rules", "mime",  "attachments", "milter"};

std::string defaultHostname() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) == 0 && buf[0]) return buf;
  return "localhost";
}

// A listening address: an IP literal ("*" = 0.0.0.0, as net::listen takes it) and a port.
// A host name is refused: it would be resolved nowhere, and net::listen refuses it at start.
std::optional<mta::IpAddress> bindAddress(const std::string& host) {
  if (host == "*") return mta::IpAddress::parse("0.0.0.0");
  return mta::IpAddress::parse(host);
}

// What is wrong with `text` as a listening address ("" when nothing).
std::string listenProblem(const std::string& text) {
  auto hp = mta::parseHostPort(text);
  if (!hp) return "\"" + text + "\": expected IP:PORT, e.g. \"127.0.0.1:2525\", \"0.0.0.0:25\" or \"[::1]:25\"";
  if (!bindAddress(hp->host))
    return "\"" + text + "\": \"" + hp->host +
           "\" is not an IP address (a host name is not resolved for listening): write e.g. \"127.0.0.1:" +
           std::to_string(hp->port) + "\" or \"[::1]:" + std::to_string(hp->port) + "\"";
  return "";
}

bool isAnyAddress(const mta::IpAddress& ip) {
  for (size_t i = 0; i < ip.size(); ++i)
    if (ip.bytes()[i] != 0) return false;
  return true;
}

// Whether two sockets bound to these could not both listen (Linux): the same address and
// port, or a wildcard of the other's family; "::" takes IPv4 too (net::listen does not set
// IPV6_V6ONLY). Port 0 picks a free port each time: never a clash.
bool clash(const mta::IpAddress& a, uint16_t aPort, const mta::IpAddress& b, uint16_t bPort) {
  if (aPort != bPort || aPort == 0) return false;
  if (a == b) return true;
  for (int i = 0; i < 2; ++i) {
    const auto& x = i == 0 ? a : b;
    const auto& y = i == 0 ? b : a;
    if (isAnyAddress(x) && (!x.isV4() || y.isV4())) return true;
  }
  return false;
}

// What is wrong with `d` (lower-case) as an entry of relay.domains or [[route]] domains,
// or "" when nothing. Both match a domain exactly, or with a leading "." every subdomain
// (Config::isRelayDomain, Route::matches); so an entry is a domain name (RFC 1035 §2.3.1,
// RFC 5321 §4.1.2: dot-separated labels of letters, digits and hyphens, no hyphen first or
// last, up to 63 octets each and 253 in all) with an optional leading ".". Bytes over 0x7f
// are let through, for UTF-8 names (RFC 6531).
std::string domainProblem(const std::string& d) {
  const std::string quoted = "\"" + d + "\"";
  if (d.empty()) return "\"\": an empty domain";
  if (d.rfind("*.", 0) == 0 && d.size() > 2)
    return quoted + ": wildcards are not supported; write \"." + d.substr(2) + "\" to match every subdomain of " +
           d.substr(2) + " (and \"" + d.substr(2) + "\" for the domain itself)";
  if (d.find('*') != std::string::npos)
    return quoted + ": wildcards are not supported; \".example.test\" matches every subdomain of example.test";
  auto at = d.rfind('@');
  if (at == 0) return quoted + ": write the domain without \"@\": \"" + d.substr(1) + "\"";
  if (at != std::string::npos)
    return quoted + ": an address, not a domain (the whole domain is \"" + d.substr(at + 1) + "\")";
  std::string_view name(d);
  if (name[0] == '.') name.remove_prefix(1);
  if (name.empty()) return quoted + ": not a domain name";
  if (name.back() == '.') return quoted + ": write it without the trailing dot: \"" + d.substr(0, d.size() - 1) + "\"";
  if (name.size() > 253) return quoted + ": longer than 253 characters";
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('.', start);
    if (end == std::string_view::npos) end = name.size();
    std::string_view label = name.substr(start, end - start);
    if (label.empty()) return quoted + ": an empty label (\"..\")";
    if (label.size() > 63) return quoted + ": a label longer than 63 characters";
    for (unsigned char ch : label) {
      if (std::isalnum(ch) || ch == '-' || ch >= 0x80) continue;
      std::string shown = ch == ' '          ? "a space"
                          : std::isprint(ch) ? "\"" + std::string(1, static_cast<char>(ch)) + "\""
                                             : "a control character";
      return quoted + ": " + shown +
             " is not allowed in a domain name (letters, digits, hyphens; \".\" between labels)";
    }
    if (label.front() == '-' || label.back() == '-') return quoted + ": a label begins or ends with a hyphen";
    start = end + 1;
  }
  return "";
}

// The entries of a domain list, lower-case; bad ones are errors at their own line.
std::vector<std::string> domainList(Section& s, const std::string& key) {
  std::vector<std::string> out;
  for (auto& item : s.getStringArrayItems(key)) {
    std::string d = lower(item.value);
    std::string problem = domainProblem(d);
    if (problem.empty())
      out.push_back(std::move(d));
    else
      s.errorAt(item.line, key, problem);
  }
  return out;
}

void readServer(Config& c, Section s) {
  c.hostname = s.getString("hostname", defaultHostname());
  c.spoolDir = s.getPath("spool_dir", "var/spool");
  c.controlSocket = s.getPath("control_socket", "var/moat.sock");
  c.logFile = s.getPath("log_file", "-");
  c.logFileLine = s.lineOf("log_file");
  c.logLevel = s.getEnum("log_level", "info", {"debug", "info", "warn", "error"});
  c.metricsListen = s.getString("metrics_listen", "");
  c.metricsListenLine = s.lineOf("metrics_listen");
  c.minFreeDisk = s.getSize("min_free_disk", c.minFreeDisk);
  c.spoolSync = s.getEnum("spool_sync", "fsync", {"fsync", "syncfs"});
  c.reverseDns = s.getBool("reverse_dns", c.reverseDns);
  if (!c.metricsListen.empty()) {
    std::string problem = listenProblem(c.metricsListen);
    if (!problem.empty()) s.error("metrics_listen", problem);
  }
  if (c.hostname.empty() || c.hostname.find_first_of(" \t\r\n") != std::string::npos)
    s.error("hostname", "must be a host name");
  s.rejectUnknownKeys();
}

std::vector<mta::Network> networks(Section& s, const std::string& key) {
  std::vector<mta::Network> out;
  for (const auto& n : s.getStringArray(key)) {
    if (auto net = mta::Network::parse(n))
      out.push_back(*net);
    else
      s.error(key, "\"" + n + "\" is not an address or CIDR network");
  }
  return out;
}

void readListener(Config& c, Section s) {
  Listener l;
  l.line = s.lineOf("address");
  l.address = s.getString("address", "");
  auto hp = mta::parseHostPort(l.address);
  std::string problem = listenProblem(l.address);
  if (!problem.empty()) {
    s.error("address", problem);
  } else {
    l.host = hp->host;
    l.port = hp->port;
  }
  std::string mode = s.getEnum("mode", "smtp", {"smtp", "submission", "smtps"});
  l.mode = mode == "smtps" ? ListenerMode::Smtps : mode == "submission" ? ListenerMode::Submission : ListenerMode::Smtp;
  l.tlsCert = s.getPath("tls_cert", "");
  l.tlsKey = s.getPath("tls_key", "");
  if (l.tlsCert.empty() != l.tlsKey.empty()) s.error(l.tlsCert.empty() ? "tls_key" : "tls_cert", "tls_cert and tls_key go together");
  if (l.mode == ListenerMode::Smtps && l.tlsCert.empty()) s.error("mode", "smtps needs tls_cert and tls_key");
  l.authUsers = s.getPath("auth_users", "");
  l.authUsersLine = s.lineOf("auth_users");
  // A submission listener takes mail only from clients that AUTH (RFC 6409 §4.3), and AUTH
  // is offered only over TLS (RFC 4954 §4): passwords never cross the network in clear.
  if (l.mode == ListenerMode::Submission && l.authUsers.empty())
    s.error("mode", "submission needs auth_users (the credentials SMTP AUTH checks)");
  if (!l.authUsers.empty() && l.tlsCert.empty())
    s.error("auth_users", "AUTH is offered only over TLS: set tls_cert and tls_key on this listener");
  l.proxyProtocol = s.getBool("proxy_protocol", l.proxyProtocol);
  l.proxyNetworks = networks(s, "proxy_networks");
  l.proxyTimeout = s.getDuration("proxy_timeout", l.proxyTimeout);
  // A PROXY header is believed: from just anyone, it would let any client claim any address
  // (and so relay.networks, the access lists and the limits).
  if (l.proxyProtocol && l.proxyNetworks.empty() && !s.has("proxy_networks"))
    s.error("proxy_protocol", "needs proxy_networks: the addresses the load balancers connect from");
  else if (l.proxyProtocol && l.proxyNetworks.empty())
    s.error("proxy_networks", "is empty: no load balancer could connect, and proxy_protocol takes no one else");
  if (!l.proxyProtocol && s.has("proxy_networks"))
    s.warning("proxy_networks", "has no effect without proxy_protocol = true");
  if (l.proxyTimeout.count() <= 0) s.error("proxy_timeout", "must be more than 0");
  s.rejectUnknownKeys();
  c.listeners.push_back(std::move(l));
}

void readDns(Config& c, Section s) {
  c.nameservers = s.getStringArray("nameservers");
  for (const auto& ns : c.nameservers) {
    auto hp = mta::parseHostPort(ns, 53);
    if (!hp || !mta::IpAddress::parse(hp->host)) s.error("nameservers", "\"" + ns + "\" is not IP[:PORT]");
  }
  c.dnsTimeout = s.getDuration("timeout", c.dnsTimeout);
  s.rejectUnknownKeys();
}

void readRelay(Config& c, Section s) {
  c.relayDomains = domainList(s, "domains");
  c.relayNetworks = networks(s, "networks");
  c.relayRecipients = s.getPath("recipients", "");
  c.relayRecipientsLine = s.lineOf("recipients");
  c.relayAliases = s.getPath("aliases", "");
  c.relayAliasesLine = s.lineOf("aliases");
  c.verifyRecipients = s.getBool("verify_recipients", c.verifyRecipients);
  c.verifyRecipientsLine = s.lineOf("verify_recipients");
  c.verifyPositiveTtl = s.getDuration("verify_positive_ttl", c.verifyPositiveTtl);
  c.verifyNegativeTtl = s.getDuration("verify_negative_ttl", c.verifyNegativeTtl);
  c.verifyTimeout = s.getDuration("verify_timeout", c.verifyTimeout);
  c.verifyUnknownAccept = s.getEnum("verify_unknown", "defer", {"defer", "accept"}) == "accept";
  // The client waits for the probe at its RCPT: at least a second to connect and ask, and
  // well within the 5 minutes a client waits for a reply (RFC 5321 §4.5.3.2).
  if (c.verifyTimeout < std::chrono::seconds(1) || c.verifyTimeout > std::chrono::minutes(2))
    s.error("verify_timeout", "must be between 1s and 2m");
  // An answer is worth keeping for a while, and not for ever: the mailbox server changes.
  if (c.verifyPositiveTtl < std::chrono::seconds(1) || c.verifyPositiveTtl > std::chrono::hours(24 * 90))
    s.error("verify_positive_ttl", "must be between 1s and 90d");
  if (c.verifyNegativeTtl < std::chrono::seconds(1) || c.verifyNegativeTtl > std::chrono::hours(24 * 90))
    s.error("verify_negative_ttl", "must be between 1s and 90d");
  c.relayRewrite = s.getPath("rewrite", "");
  c.relayRewriteLine = s.lineOf("rewrite");
  s.rejectUnknownKeys();
}

// relay.verify_recipients asks only smtp: and lmtp: next hops: a relay domain delivered by MX
// or to a Maildir is not verified, which the admin who turned it on should hear of.
void checkVerify(const Config& c, Errors& errors) {
  if (!c.verifyRecipients) return;
  for (const auto& d : c.relayDomains) {
    if (d.empty() || d[0] == '.') continue;
    // The route of the senders no [[route]] senders lists (and of the null sender).
    const Route* r = c.routeFor(d, "");
    if (!r || r->to.empty() || !r->to.front().isHost())
      errors.warning(c.path, c.verifyRecipientsLine,
                     "relay.verify_recipients: relay domain " + d +
                         " is not routed to smtp: or lmtp: next hops, so its recipients are not verified");
  }
}

// A route with senders and no domains takes its senders' mail to every domain, the
// organisation's own too: before the route a relay domain takes (or, with none, before
// delivery by MX), a brand's mail to colleagues leaves through the brand's next hop. Not an
// error (it may be meant), but rarely what the operator wanted (README, [[route]] senders).
void warnSenderRoutesBeforeRelayDomains(const Config& c, Errors& errors) {
  for (size_t i = 0; i < c.routes.size(); ++i) {
    const Route& r = c.routes[i];
    if (!r.senders || !r.domains.empty()) continue;
    std::set<std::string> seen;
    std::string taken;
    for (const auto& d : c.relayDomains) {
      if (d.empty() || d[0] == '.' || !seen.insert(d).second) continue;
      // The route of the senders no [[route]] senders lists (and of the null sender).
      const Route* own = c.routeFor(d, "");
      if (own && own - c.routes.data() < static_cast<std::ptrdiff_t>(i)) continue;
      taken += (taken.empty() ? "" : ", ") + d +
               (own ? " (else the [[route]] at line " + std::to_string(own->line) + ")"
                    : " (else delivered by MX: no [[route]] takes it)");
    }
    if (taken.empty()) continue;
    errors.warning(c.path, r.sendersLine,
                   "[[route]].senders: this route has no domains, so it also takes its senders' mail to "
                   "relay.domains (first match wins): " +
                       taken + "; add domains, or move this route after the routes of the relay domains");
  }
}

void readLimits(Config& c, Section s) {
  c.maxMessageSize = s.getSize("max_message_size", c.maxMessageSize);
  c.maxRecipients = static_cast<unsigned>(s.getInt("max_recipients", c.maxRecipients, 1, 100000));
  c.maxConnections = static_cast<unsigned>(s.getInt("max_connections", c.maxConnections, 1, 1000000));
  c.maxConnectionsPerIp = static_cast<unsigned>(s.getInt("max_connections_per_ip", c.maxConnectionsPerIp, 1, 1000000));
  c.maxErrors = static_cast<unsigned>(s.getInt("max_errors", c.maxErrors, 1, 1000));
  c.maxJunkCommands = static_cast<unsigned>(s.getInt("max_junk_commands", c.maxJunkCommands, 0, 100000));
  c.commandTimeout = s.getDuration("command_timeout", c.commandTimeout);
  c.dataTimeout = s.getDuration("data_timeout", c.dataTimeout);
  c.maxDataTime = s.getDuration("max_data_time", c.maxDataTime);
  c.maxReceivedHeaders = static_cast<unsigned>(s.getInt("max_received_headers", c.maxReceivedHeaders, 1, 10000));
  s.rejectUnknownKeys();
}

// First match wins: a route after a match-all one, or whose every domain an earlier route
// already takes, never gets a message. Not an error (the file is still consistent), but
// almost certainly not what the operator meant. An earlier route with senders takes only
// their mail, so it leaves the rest (and the null sender's) to later routes: it shadows none.
void warnIfShadowed(const Config& c, const Route& r, Section& s) {
  for (const auto& prev : c.routes) {
    if (!prev.domains.empty() || prev.senders) continue;
    s.warning(s.has("domains")   ? "domains"
              : s.has("senders") ? "senders"
                                 : "to",
              "this route never matches: the [[route]] at line " + std::to_string(prev.line) +
                  " has no domains, so it takes every domain first (first match wins)");
    return;
  }
  if (r.domains.empty() || !s.has("domains")) return;
  std::string by;
  for (const auto& d : r.domains) {
    const Route* first = nullptr;
    for (const auto& prev : c.routes)
      if (!prev.senders && prev.matches(d)) {
        first = &prev;
        break;
      }
    if (!first) return;
    by += (by.empty() ? "" : ", ") + ("\"" + d + "\" by line " + std::to_string(first->line));
  }
  s.warning("domains", "this route never matches: earlier routes take every domain it lists (first match wins): " + by);
}

// [[route]] senders: envelope senders written as the address lists' lines are; each bad one
// refused at its own line. The null sender cannot be listed (it never matches).
std::shared_ptr<const AddressList> routeSenders(Section& s) {
  const size_t reported = s.errors().all().size();
  auto items = s.getStringArrayItems("senders");
  if (!s.has("senders")) return nullptr;
  bool bad = s.errors().all().size() != reported;  // not an array, or not of strings
  std::vector<std::string> entries;
  for (const auto& item : items) {
    std::string problem =
        item.value.empty() || item.value == "<>"
            ? "the null sender (\"" + item.value +
                  "\") cannot be listed: it never matches, and bounces take the routes without senders"
            : AddressList::entryProblem(item.value);
    if (!problem.empty()) {
      s.errorAt(item.line, "senders", problem);
      bad = true;
      continue;
    }
    entries.push_back(item.value);
  }
  if (entries.empty() && !bad) {
    s.error("senders", "an empty list matches no sender: leave senders out for a route of every sender");
    return nullptr;
  }
  return AddressList::fromEntries(entries);
}

// source_ipv4 / source_ipv6: one IP address of that family (not a name, not a network).
std::optional<mta::IpAddress> sourceAddress(Section& s, const std::string& key, bool v4) {
  std::string v = s.getString(key, "");
  if (!s.has(key)) return std::nullopt;
  auto ip = mta::IpAddress::parse(v);
  if (!ip) {
    s.error(key, "\"" + v + "\" is not an " + (v4 ? "IPv4" : "IPv6") + " address");
    return std::nullopt;
  }
  if (ip->isV4() != v4) {
    s.error(key, "\"" + v + "\" is an " + (v4 ? "IPv6" : "IPv4") + " address; " + key + " takes an " +
                     (v4 ? "IPv4" : "IPv6") + " one (" + (v4 ? "source_ipv6" : "source_ipv4") + " takes the other)");
    return std::nullopt;
  }
  return ip;
}

// A host name for EHLO (RFC 5321 §4.1.1.1): letters, digits and hyphens in dot-separated labels.
std::string heloNameProblem(const std::string& name) {
  std::string quoted = "\"" + name + "\"";
  if (name.empty()) return quoted + ": not a host name";
  if (name.front() == '.') return quoted + ": a host name, without the leading dot";
  for (unsigned char ch : name)
    if (ch >= 0x80) return quoted + ": a host name in ASCII (the A-label form of an internationalized name)";
  return domainProblem(name);
}

void readRoute(Config& c, Section s) {
  Route r;
  r.line = s.lineOf("to");
  r.domains = domainList(s, "domains");
  r.senders = routeSenders(s);
  r.sendersLine = r.senders ? s.lineOf("senders") : 0;
  size_t smtpTargets = 0, leftOut = 0;  // leftOut: at an address of a family ip_versions leaves out
  for (const auto& item : s.getStringArrayItems("to")) {
    const std::string& t = item.value;
    RouteTarget target;
    if (t == "mx") {
      target.kind = RouteTarget::Kind::Mx;
    } else if (t.rfind("maildir:", 0) == 0 && t.size() > 8) {
      target.kind = RouteTarget::Kind::Maildir;
      target.dir = resolvePath(s.baseDir(), t.substr(8));
    } else if (t.rfind("lmtp:unix:", 0) == 0) {
      // RFC 2033 §5: LMTP is for a local delivery agent, often on a Unix socket.
      std::string path = t.substr(10);
      if (path.empty()) {
        s.error("to", "\"" + t + "\": expected lmtp:unix:/PATH/TO/SOCKET");
        continue;
      }
      target.kind = RouteTarget::Kind::Lmtp;
      target.socket = resolvePath(s.baseDir(), path);
      target.port = 0;
      if (target.socket.size() >= sizeof(sockaddr_un{}.sun_path)) {
        s.error("to", "\"" + t + "\": the socket path is longer than a Unix socket address holds (" +
                          std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + " bytes)");
        continue;
      }
    } else if (t.rfind("smtp:", 0) == 0 || t.rfind("lmtp:", 0) == 0) {
      const bool lmtp = t[0] == 'l';
      // RFC 2033 §5: LMTP has no well-known port (and must not run on 25): the port is required.
      auto hp = mta::parseHostPort(t.substr(5), lmtp ? 0 : 25);
      if (!hp || (lmtp && hp->port == 0)) {
        s.error("to", "\"" + t + "\": " +
                          (lmtp ? "expected lmtp:HOST:PORT (the port is required), lmtp:[IPv6]:PORT or "
                                  "lmtp:unix:/PATH/TO/SOCKET"
                                : "expected smtp:HOST:PORT"));
        continue;
      }
      target.kind = lmtp ? RouteTarget::Kind::Lmtp : RouteTarget::Kind::Smtp;
      target.host = hp->host;
      target.port = hp->port;
      ++smtpTargets;
      // Delivery never connects to such an address (the mail waits, as for a recipient at
      // an address literal): say so now rather than when mail defers. A host name is not
      // looked up here; its addresses are the DNS's at delivery time.
      auto ip = mta::IpAddress::parse(target.host);
      if (ip && !(ip->isV4() ? c.useIpv4 : c.useIpv6)) {
        s.warningAt(item.line, "to",
                    "\"" + t + "\" is an " + (ip->isV4() ? "IPv4" : "IPv6") +
                        " address, which queue.ip_versions leaves out: this target is never used");
        ++leftOut;
      }
    } else {
      s.error("to", "\"" + t + "\": expected smtp:HOST:PORT, lmtp:HOST:PORT, lmtp:unix:PATH, \"mx\" or maildir:DIR");
      continue;
    }
    r.to.push_back(std::move(target));
  }
  if (r.to.empty() && s.present()) s.error("to", "a route needs at least one target");
  // A route whose first target is smtp: or lmtp: delivers to those targets only (the others are
  // not tried), so when each of those is left out, nothing is.
  if (!r.to.empty() && r.to.front().isHost() && smtpTargets > 0 && leftOut == smtpTargets &&
      std::none_of(r.to.begin(), r.to.end(), [](const RouteTarget& t) { return !t.socket.empty(); }))
    s.warning("to",
              "this route can never deliver: queue.ip_versions leaves out the address family of each of its "
              "smtp: targets, so its mail waits in the queue until queue.max_lifetime");
  std::string tls = s.getEnum("tls", "may", {"none", "may", "require", "verify", "dane"});
  r.tls = tls == "none"      ? TlsPolicy::None
          : tls == "require" ? TlsPolicy::Require
          : tls == "verify"  ? TlsPolicy::Verify
          : tls == "dane"    ? TlsPolicy::Dane
                             : TlsPolicy::May;
  if (r.tls == TlsPolicy::Dane) {
    // RFC 7672 §2.1: DANE rests on the AD bit of the nameservers' replies, which Moat does
    // not check itself; anyone on the path to a remote resolver can set it. Postfix asks
    // for a local validating resolver the same way (smtp_dns_support_level = dnssec).
    for (const auto& ns : c.nameservers) {
      auto hp = mta::parseHostPort(ns, 53);
      auto ip = hp ? mta::IpAddress::parse(hp->host) : std::nullopt;
      if (ip && !ip->isLoopback())
        s.warning("tls", "tls = \"dane\" trusts the DNSSEC (AD) bit of dns.nameservers, but " + ns +
                             " is not on loopback: use a local validating resolver");
    }
  }
  r.caFile = s.getPath("ca_file", "");
  if (!r.caFile.empty() && r.tls != TlsPolicy::Verify) s.error("ca_file", "ca_file needs tls = \"verify\"");
  r.authFile = s.getPath("auth_file", "");
  r.authFileLine = s.lineOf("auth_file");
  // RFC 4954 §4: credentials never cross the network in clear. "may" goes on in plain text
  // when STARTTLS is not offered or fails, so only the levels that never do qualify.
  if (!r.authFile.empty() && (r.tls == TlsPolicy::None || r.tls == TlsPolicy::May))
    s.error("auth_file", "auth_file needs a tls that never falls back to plain text: tls = \"require\" or \"verify\"");
  // A client certificate (mutual TLS): presented on every TLS connection of the route when
  // the next hop asks for one. Loaded (and checked against its key) with the snapshot.
  r.tlsCert = s.getPath("tls_cert", "");
  r.tlsKey = s.getPath("tls_key", "");
  r.tlsCertLine = s.lineOf(r.tlsCert.empty() && !r.tlsKey.empty() ? "tls_key" : "tls_cert");
  if (r.tlsCert.empty() != r.tlsKey.empty())
    s.error(r.tlsCert.empty() ? "tls_key" : "tls_cert", "tls_cert and tls_key go together: set both or neither");
  else if (!r.tlsCert.empty() && r.tls == TlsPolicy::None)
    s.error("tls_cert", "tls_cert needs a tls that uses TLS: \"may\", \"require\", \"verify\" or \"dane\"");
  // RFC 8461 §4: a policy names MX hosts, so it applies only to delivery by MX; it raises
  // "may" (and DANE's hosts without TLSA stay DANE's), never weakens another level.
  r.mtaSts = s.getBool("mta_sts", false);
  if (r.mtaSts && (r.to.empty() || r.to.front().kind != RouteTarget::Kind::Mx))
    s.error("mta_sts", "mta_sts needs an mx route");
  else if (r.mtaSts && r.tls != TlsPolicy::May && r.tls != TlsPolicy::Dane)
    s.error("mta_sts", "mta_sts needs tls = \"may\" or \"dane\"");
  r.chunking = s.getBool("chunking", true);
  r.sourceIpv4 = sourceAddress(s, "source_ipv4", true);
  r.sourceIpv4Line = r.sourceIpv4 ? s.lineOf("source_ipv4") : 0;
  if (!s.has("source_ipv4")) r.sourceIpv4 = c.sourceIpv4;
  r.sourceIpv6 = sourceAddress(s, "source_ipv6", false);
  r.sourceIpv6Line = r.sourceIpv6 ? s.lineOf("source_ipv6") : 0;
  if (!s.has("source_ipv6")) r.sourceIpv6 = c.sourceIpv6;
  r.heloName = lower(s.getString("helo_name", ""));
  if (std::string problem = heloNameProblem(r.heloName); s.has("helo_name") && !problem.empty())
    s.error("helo_name", problem);
  s.rejectUnknownKeys();
  warnIfShadowed(c, r, s);
  c.routes.push_back(std::move(r));
}

void readMtaSts(Config& c, Section s) {
  c.mtaStsCaFile = s.getPath("ca_file", "");
  c.mtaStsCaFileLine = s.lineOf("ca_file");
  c.mtaStsFetchTimeout = s.getDuration("fetch_timeout", c.mtaStsFetchTimeout);
  if (c.mtaStsFetchTimeout.count() <= 0) s.error("fetch_timeout", "must be more than 0");
  c.mtaStsRefreshInterval = s.getDuration("refresh_interval", c.mtaStsRefreshInterval);
  // Longer than a day and a policy with a short max_age (RFC 8461 §3.2 allows any) could
  // run out between two sweeps.
  if (c.mtaStsRefreshInterval < std::chrono::seconds(1) || c.mtaStsRefreshInterval > std::chrono::hours(24))
    s.error("refresh_interval", "must be from 1s to 1d");
  s.rejectUnknownKeys();
}

// Printable ASCII without the characters that would end a header field or an address.
bool tlsrptText(const std::string& v, size_t max) {
  if (v.size() > max) return false;
  for (unsigned char ch : v)
    if (ch < 0x20 || ch >= 0x7f) return false;
  return true;
}

// The keys [tlsrpt] and [dmarc_reports] share: whether they are on, whom the reports are
// from, how long a period is, and how often its aggregate is checkpointed.
void readReportKeys(Section& s, bool& enabled, std::string& organization, std::string& contact, std::string& from,
                    Millis& interval, Millis& checkpoint) {
  enabled = s.getBool("enabled", false);
  organization = s.getString("organization_name", "");
  contact = s.getString("contact_info", "");
  from = s.getString("from", "");
  interval = s.getDuration("interval", interval);
  checkpoint = s.getDuration("checkpoint_interval", checkpoint);
  if (!tlsrptText(organization, 256)) s.error("organization_name", "must be printable ASCII, at most 256 characters");
  if (!tlsrptText(contact, 256)) s.error("contact_info", "must be printable ASCII, at most 256 characters");
  if (!from.empty()) {
    size_t at = from.rfind('@');
    if (!tlsrptText(from, 254) || from.find_first_of(" <>,;\"") != std::string::npos || at == std::string::npos ||
        at == 0 || at + 1 == from.size())
      s.error("from", "must be an address, local-part@domain");
  }
  if (interval < std::chrono::seconds(1) || interval > std::chrono::hours(24 * 7))
    s.error("interval", "must be between 1s and 7d");
  else if (interval.count() % 1000 != 0)
    s.error("interval", "must be a whole number of seconds");
  if (checkpoint < std::chrono::seconds(1) || checkpoint > std::chrono::hours(1))
    s.error("checkpoint_interval", "must be from 1s to 1h");
}

void readTlsrpt(Config& c, Section s) {
  readReportKeys(s, c.tlsrptEnabled, c.tlsrptOrganization, c.tlsrptContact, c.tlsrptFrom, c.tlsrptInterval,
                 c.tlsrptCheckpointInterval);
  c.tlsrptHttpsTimeout = s.getDuration("https_timeout", c.tlsrptHttpsTimeout);
  if (c.tlsrptHttpsTimeout < std::chrono::seconds(1) || c.tlsrptHttpsTimeout > std::chrono::minutes(10))
    s.error("https_timeout", "must be from 1s to 10m");
  s.rejectUnknownKeys();
}

void readDmarcReports(Config& c, Section s) {
  readReportKeys(s, c.dmarcReportsEnabled, c.dmarcReportsOrganization, c.dmarcReportsContact, c.dmarcReportsFrom,
                 c.dmarcReportsInterval, c.dmarcReportsCheckpointInterval);
  s.rejectUnknownKeys();
}

void readQueue(Config& c, Section s) {
  std::vector<std::string> retry = s.getStringArray("retry", {"1m", "5m", "15m", "30m", "1h"});
  for (const auto& r : retry) {
    if (auto d = parseDuration(r)) c.retry.push_back(*d);
    else s.error("retry", "\"" + r + "\" is not a duration");
  }
  if (c.retry.empty()) s.error("retry", "needs at least one wait");
  c.maxLifetime = s.getDuration("max_lifetime", c.maxLifetime);
  c.delayWarning = s.getDuration("delay_warning", c.delayWarning);
  c.maxPerDestination = static_cast<unsigned>(s.getInt("max_per_destination", c.maxPerDestination, 1, 10000));
  c.maxDeliveries = static_cast<unsigned>(s.getInt("max_deliveries", c.maxDeliveries, 1, 100000));
  c.maxRecipientsPerTransaction =
      static_cast<unsigned>(s.getInt("max_recipients_per_transaction", c.maxRecipientsPerTransaction, 1, 100000));
  c.connectTimeout = s.getDuration("connect_timeout", c.connectTimeout);
  c.replyTimeout = s.getDuration("reply_timeout", c.replyTimeout);
  c.deliveryDataTimeout = s.getDuration("data_timeout", c.deliveryDataTimeout);
  c.maxQueued = static_cast<uint64_t>(s.getInt("max_messages", 0, 0, 100'000'000));
  std::string pref = s.getEnum("address_preference", "ipv6", {"ipv6", "ipv4", "any"});
  c.addressPreference = pref == "ipv4"  ? AddressPreference::Ipv4
                        : pref == "any" ? AddressPreference::Any
                                        : AddressPreference::Ipv6;
  auto versions = s.getStringArray("ip_versions", {"ipv4", "ipv6"});
  c.useIpv4 = c.useIpv6 = false;
  for (const auto& v : versions) {
    if (v == "ipv4")
      c.useIpv4 = true;
    else if (v == "ipv6")
      c.useIpv6 = true;
    else
      s.error("ip_versions", "\"" + v + "\" is not one of: ipv4, ipv6");
  }
  if (!c.useIpv4 && !c.useIpv6) {
    if (versions.empty()) s.error("ip_versions", "needs at least one of: ipv4, ipv6");
    c.useIpv4 = c.useIpv6 = true;  // the file is refused anyway; keep the value sane
  }
  c.sourceIpv4 = sourceAddress(s, "source_ipv4", true);
  c.sourceIpv4Line = s.lineOf("source_ipv4");
  c.sourceIpv6 = sourceAddress(s, "source_ipv6", false);
  c.sourceIpv6Line = s.lineOf("source_ipv6");
  s.rejectUnknownKeys();
}

void readConnection(Config& c, Section s) {
  c.connectionAllow = networks(s, "allow");
  c.connectionBlock = networks(s, "block");
  c.maxConnectionRatePerIp = static_cast<unsigned>(s.getInt("max_rate_per_ip", c.maxConnectionRatePerIp, 0, 1000000));
  c.pregreetWait = s.getDuration("pregreet_wait", c.pregreetWait);
  // Postscreen's greet_wait is a few seconds; a wait near command_timeout would look like a
  // dead server to every client, so the file is refused past a minute.
  if (c.pregreetWait > std::chrono::minutes(1)) {
    s.error("pregreet_wait", "must be at most 1m");
    c.pregreetWait = Millis{0};
  }
  c.pregreetReject = s.getEnum("pregreet_action", "reject", {"reject", "log"}) == "reject";
  const std::string unknown = s.getEnum("reject_unknown_client", "off", {"off", "reverse", "confirmed"});
  c.rejectUnknownClient = unknown == "reverse"     ? Config::ClientNameCheck::Reverse
                          : unknown == "confirmed" ? Config::ClientNameCheck::Confirmed
                                                   : Config::ClientNameCheck::Off;
  s.rejectUnknownKeys();
}

// "1h", "90m", "45s": a duration as the config writes it, for the replies and logs.
std::string durationText(Millis d) {
  int64_t ms = d.count();
  if (ms % 86'400'000 == 0) return std::to_string(ms / 86'400'000) + "d";
  if (ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
  if (ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

void readRateLimits(Config& c, Section s) {
  c.rateWindow = s.getDuration("window", c.rateWindow);
  if (c.rateWindow < std::chrono::seconds(1) || c.rateWindow > std::chrono::hours(24 * 7)) {
    s.error("window", "must be from 1s to 7d");
    c.rateWindow = std::chrono::hours(1);
  }
  c.rateWindowText = durationText(c.rateWindow);
  c.messagesPerClient = static_cast<unsigned>(s.getInt("messages_per_client", c.messagesPerClient, 0, 100'000'000));
  c.recipientsPerClient =
      static_cast<unsigned>(s.getInt("recipients_per_client", c.recipientsPerClient, 0, 100'000'000));
  c.messagesPerSender = static_cast<unsigned>(s.getInt("messages_per_sender", c.messagesPerSender, 0, 100'000'000));
  c.rateExempt = networks(s, "exempt_networks");
  s.rejectUnknownKeys();
}

void readGreylist(Config& c, Section s) {
  c.greylistEnabled = s.getBool("enabled", c.greylistEnabled);
  // More than a day: mail whose sender retries for a shorter time is lost.
  c.greylistDelay = s.getDuration("delay", c.greylistDelay);
  if (c.greylistDelay < std::chrono::seconds(1) || c.greylistDelay > std::chrono::hours(24)) {
    s.error("delay", "must be from 1s to 1d");
    c.greylistDelay = std::chrono::minutes(5);
  }
  c.greylistRetryWindow = s.getDuration("retry_window", c.greylistRetryWindow);
  if (c.greylistRetryWindow <= c.greylistDelay || c.greylistRetryWindow > std::chrono::hours(24 * 30)) {
    s.error("retry_window", "must be longer than delay and at most 30d");
    c.greylistRetryWindow = std::chrono::hours(48);
  }
  c.greylistLifetime = s.getDuration("lifetime", c.greylistLifetime);
  if (c.greylistLifetime < std::chrono::seconds(1) || c.greylistLifetime > std::chrono::hours(24 * 366)) {
    s.error("lifetime", "must be from 1s to 366d");
    c.greylistLifetime = std::chrono::hours(24 * 35);
  }
  c.greylistAutoAllowAfter =
      static_cast<unsigned>(s.getInt("auto_allow_after", c.greylistAutoAllowAfter, 0, 1'000'000));
  c.greylistIpv4Prefix = static_cast<int>(s.getInt("ipv4_prefix", c.greylistIpv4Prefix, 8, 32));
  c.greylistIpv6Prefix = static_cast<int>(s.getInt("ipv6_prefix", c.greylistIpv6Prefix, 16, 128));
  c.greylistExempt = networks(s, "exempt_networks");
  // Matched against the client's verified name (mta/dns/client_name.h), which is ASCII (IDNs
  // as their A-labels) and exists only with [server] reverse_dns: otherwise no entry could
  // ever match, and the list would only look like it works.
  for (auto& item : s.getStringArrayItems("exempt_client_names")) {
    std::string d = lower(item.value);
    std::string problem = domainProblem(d);
    if (problem.empty() && std::any_of(d.begin(), d.end(), [](char ch) { return (ch & 0x80) != 0; }))
      problem = "\"" + d + "\": write a non-ASCII name as its A-label (\"xn--...\"), as reverse DNS names it";
    if (problem.empty())
      c.greylistExemptNames.push_back(std::move(d));
    else
      s.errorAt(item.line, "exempt_client_names", problem);
  }
  if (!c.greylistExemptNames.empty() && !c.reverseDns)
    s.error("exempt_client_names", "needs [server] reverse_dns = true (the names are the clients' verified names)");
  s.rejectUnknownKeys();
}

void readBounceVerification(Config& c, Section s) {
  c.batvEnabled = s.getBool("enabled", c.batvEnabled);
  c.batvKeyFile = s.getPath("key_file", "");
  c.batvKeyFileLine = s.lineOf("key_file");
  if (c.batvEnabled && c.batvKeyFile.empty())
    s.error("key_file", "is required with enabled = true: a file holding the secret the tags are made with");
  // Key rotation: the keys of before, whose tags still verify (until they expire).
  auto previous = s.getStringArrayItems("previous_key_files");
  if (previous.size() > batv::kMaxPreviousKeys)
    s.error("previous_key_files", "names " + std::to_string(previous.size()) + " files; at most " +
                                      std::to_string(batv::kMaxPreviousKeys) + " (drop those older than max_age)");
  else
    for (auto& item : previous) {
      if (item.value.empty())
        s.errorAt(item.line, "previous_key_files", "an empty file name");
      else
        c.batvPreviousKeyFiles.push_back({resolvePath(s.baseDir(), item.value), item.line});
    }
  c.batvKeyNumber = static_cast<int>(s.getInt("key_number", c.batvKeyNumber, 0, 9));
  c.batvDomains = domainList(s, "domains");
  if (!s.has("domains")) c.batvDomains = c.relayDomains;
  if (c.batvEnabled && c.batvDomains.empty())
    s.error("domains", "is empty (and so is relay.domains): no sender would be tagged");
  // Whole days (the tag names a day), and at most 30: the day is written modulo 1000, and a
  // bounce that comes weeks later is of no use to anyone.
  auto maxAge = s.getDuration("max_age", std::chrono::hours(24 * 7));
  const auto day = std::chrono::hours(24);
  if (maxAge < day || maxAge > day * batv::kMaxAgeDays || maxAge % day != std::chrono::milliseconds(0))
    s.error("max_age", "must be a whole number of days from 1d to 30d");
  else
    c.batvMaxAgeDays = static_cast<int>(maxAge / day);
  for (auto& item : s.getStringArrayItems("exempt_recipients")) {
    std::string a = lower(item.value);
    size_t at = a.rfind('@');
    std::string problem = at == std::string::npos ? "\"" + item.value + "\" is not an address (user@domain) or @domain"
                          : a.find_first_of(" \t<>,;\"") != std::string::npos
                              ? "\"" + item.value + "\" is not an address (user@domain) or @domain"
                              : domainProblem(a.substr(at + 1));
    if (problem.empty())
      c.batvExempt.push_back(std::move(a));
    else
      s.errorAt(item.line, "exempt_recipients", problem);
  }
  c.batvReject = s.getEnum("action", "reject", {"reject", "tag"}) == "reject";
  s.rejectUnknownKeys();
}

void readSenders(Config& c, Section s) {
  c.blockedSenders = s.getPath("block", "");
  c.blockedSendersLine = s.lineOf("block");
  c.rejectUnknownSenderDomain = s.getBool("reject_unknown_domain", false);
  c.requireFqdnSender = s.getBool("require_fqdn", false);
  s.rejectUnknownKeys();
}

// [bcc]: the files are read with the snapshot (mta/server/snapshot.cc).
void readBcc(Config& c, Section s) {
  c.bccAlways = s.getString("always", "");
  if (s.has("always") && entryKind(c.bccAlways) != EntryKind::Address)
    s.error("always", "\"" + c.bccAlways + "\" is not an address (user@domain)");
  c.bccSenders = s.getPath("senders", "");
  c.bccSendersLine = s.lineOf("senders");
  c.bccRecipients = s.getPath("recipients", "");
  c.bccRecipientsLine = s.lineOf("recipients");
  s.rejectUnknownKeys();
}

// [headers] strip_inbound. Removing the fields a message is built on would break it, or
// Moat's own checks after it: those names are refused, and so is a pattern that matches one.
void readHeaders(Config& c, Section s) {
  static constexpr std::string_view kKept[] = {"from",
                                               "sender",
                                               "to",
                                               "cc",
                                               "reply-to",
                                               "subject",
                                               "date",
                                               "message-id",
                                               "received",
                                               "return-path",
                                               "mime-version",
                                               "content-type",
                                               "content-transfer-encoding",
                                               "dkim-signature"};
  c.stripInbound.clear();
  for (auto& item : s.getStringArrayItems("strip_inbound", {"X-Moat-*", "X-Spam-*"})) {
    std::string p = lower(item.value);
    const bool prefix = !p.empty() && p.back() == '*';
    const std::string_view name = prefix ? std::string_view(p).substr(0, p.size() - 1) : std::string_view(p);
    std::string problem;
    if (name.empty())
      problem = "\"" + item.value + "\": a field name, or the start of one followed by *";
    else if (std::any_of(name.begin(), name.end(),
                         [](char ch) { return ch <= ' ' || ch >= 0x7f || ch == ':' || ch == '*'; }))
      problem = "\"" + item.value +
                "\": not a header field name (RFC 5322 2.2: printable ASCII, no colon); '*' only at the end";
    for (const auto& k : kKept)
      if (problem.empty() && (prefix ? k.compare(0, name.size(), name) == 0 : k == name))
        problem = "\"" + item.value + "\" would remove " + std::string(k) +
                  ": fields the message is built on are never stripped";
    if (problem.empty())
      c.stripInbound.push_back(std::move(p));
    else
      s.errorAt(item.line, "strip_inbound", problem);
  }
  s.rejectUnknownKeys();
}

void readQuarantine(Config& c, Section s) {
  c.quarantineRetention = s.getDuration("retention", c.quarantineRetention);
  s.rejectUnknownKeys();
}

// Two listeners, or a listener and metrics_listen, on one socket: serve would fail at start
// with "address already in use".
void checkSockets(const Config& c, Errors& errors) {
  struct Bound {
    mta::IpAddress ip;
    uint16_t port;
    const Listener* listener;
  };
  std::vector<Bound> bound;
  for (const auto& l : c.listeners) {
    auto ip = bindAddress(l.host);
    if (!ip) continue;  // already an error
    for (const auto& b : bound)
      if (clash(*ip, l.port, b.ip, b.port)) {
        errors.error(c.path, l.line,
                     "[[listener]].address: \"" + l.address + "\" takes the same socket as the [[listener]] at line " +
                         std::to_string(b.listener->line) + " (\"" + b.listener->address +
                         "\"): only one can listen there");
        break;
      }
    bound.push_back({*ip, l.port, &l});
  }
  if (c.metricsListen.empty()) return;
  auto hp = mta::parseHostPort(c.metricsListen);
  auto ip = hp ? bindAddress(hp->host) : std::nullopt;
  if (!ip) return;
  for (const auto& b : bound)
    if (clash(*ip, hp->port, b.ip, b.port)) {
      errors.error(c.path, c.metricsListenLine,
                   "server.metrics_listen: \"" + c.metricsListen +
                       "\" takes the same socket as the [[listener]] at line " + std::to_string(b.listener->line) +
                       " (\"" + b.listener->address + "\")");
      return;
    }
}

}  // namespace

void checkLogFile(const Config& c, Errors& errors) {
  const std::string& path = c.logFile;
  if (path.empty() || path == "-") return;
  auto fail = [&](const std::string& why) {
    errors.error(c.path, c.logFileLine, "server.log_file: \"" + path + "\": " + why);
  };
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return fail("is a folder");
    if (::access(path.c_str(), W_OK) != 0)
      return fail(std::string("cannot be opened for append: ") + std::strerror(errno));
    return;
  }
  if (errno != ENOENT) return fail(std::strerror(errno));
  std::string dir = dirOf(path);
  if (::stat(dir.c_str(), &st) != 0) return fail("its folder " + dir + " does not exist");
  if (!S_ISDIR(st.st_mode)) return fail(dir + " is not a folder");
  if (::access(dir.c_str(), W_OK | X_OK) != 0) return fail("cannot be created in " + dir + ": " + std::strerror(errno));
}

void checkSourceAddresses(const Config& c, Errors& errors) {
  auto check = [&](const std::optional<mta::IpAddress>& ip, int line, const std::string& key) {
    if (!ip || line == 0) return;  // a route's inherited value is checked at [queue]
    sockaddr_storage ss{};
    const socklen_t len = ip->toSockaddr(0, ss);
    mta::UniqueFd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    std::string why;
    if (!fd.valid())
      why = std::strerror(errno);
    else if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0)
      why = std::strerror(errno);
    if (!why.empty()) errors.error(c.path, line, key + ": cannot bind " + ip->str() + ": " + why);
  };
  check(c.sourceIpv4, c.sourceIpv4Line, "queue.source_ipv4");
  check(c.sourceIpv6, c.sourceIpv6Line, "queue.source_ipv6");
  for (const auto& r : c.routes) {
    check(r.sourceIpv4, r.sourceIpv4Line, "[[route]].source_ipv4");
    check(r.sourceIpv6, r.sourceIpv6Line, "[[route]].source_ipv6");
  }
}

std::vector<std::string> restartOnlyChanges(const Config& running, const Config& next) {
  std::vector<std::string> out;
  if (running.spoolDir != next.spoolDir) out.push_back("server.spool_dir");
  if (running.spoolSync != next.spoolSync) out.push_back("server.spool_sync");
  if (running.controlSocket != next.controlSocket) out.push_back("server.control_socket");
  if (running.metricsListen != next.metricsListen) out.push_back("server.metrics_listen");
  if (running.nameservers != next.nameservers) out.push_back("dns.nameservers");
  if (running.dnsTimeout != next.dnsTimeout) out.push_back("dns.timeout");
  // A listener is its socket and what it speaks; certificates (STARTTLS and smtps alike) and
  // auth_users are looked up by address in each snapshot.
  auto same = [](const Listener& a, const Listener& b) {
    return a.address == b.address && a.mode == b.mode && a.proxyProtocol == b.proxyProtocol;
  };
  std::set<std::string> named;
  auto add = [&](const std::string& address) {
    if (named.insert(address).second) out.push_back("listener " + address);
  };
  for (const auto& a : running.listeners) {
    auto it = std::find_if(next.listeners.begin(), next.listeners.end(),
                           [&](const Listener& b) { return b.address == a.address; });
    if (it == next.listeners.end() || !same(a, *it)) add(a.address);
  }
  for (const auto& b : next.listeners) {
    auto it = std::find_if(running.listeners.begin(), running.listeners.end(),
                           [&](const Listener& a) { return a.address == b.address; });
    if (it == running.listeners.end()) add(b.address);
  }
  return out;
}

std::string RouteTarget::str() const {
  switch (kind) {
    case Kind::Mx: return "mx";
    case Kind::Maildir: return "maildir:" + dir;
    case Kind::Smtp: return "smtp:" + (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
                            std::to_string(port);
    case Kind::Lmtp:
      if (!socket.empty()) return "lmtp:unix:" + socket;
      return "lmtp:" + (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
  }
  return "";
}

std::string Route::sourceKey() const {
  std::string k;
  if (sourceIpv4) k += ",src4=" + sourceIpv4->str();
  if (sourceIpv6) k += ",src6=" + sourceIpv6->str();
  if (!heloName.empty()) k += ",helo=" + heloName;
  return k;
}

bool Route::matches(const std::string& domain) const {
  if (domains.empty()) return true;
  std::string d = lower(domain);
  for (const auto& x : domains) {
    if (x == d) return true;
    // ".example.test" matches every subdomain of example.test
    if (!x.empty() && x[0] == '.' && d.size() > x.size() && d.compare(d.size() - x.size(), x.size(), x) == 0)
      return true;
  }
  return false;
}

bool Route::matchesSender(std::string_view sender) const {
  if (!senders) return true;
  // A tag made at delivery is not there yet when the route is chosen; one the message came
  // with (an inside server that tags) says nothing of who sent it.
  return !sender.empty() && senders->contains(batv::untagged(sender));
}

Section Config::section(const std::string& name, Errors& errors) const {
  const toml::table* t = toml ? toml->at_path(name).as_table() : nullptr;
  return Section(t, name, path, dir, errors);
}

std::vector<Section> Config::sectionArray(const std::string& name, Errors& errors) const {
  std::vector<Section> out;
  if (!toml) return out;
  const toml::node* n = toml->at_path(name).node();
  if (!n) return out;
  if (auto* arr = n->as_array()) {
    for (const auto& el : *arr) {
      if (auto* t = el.as_table()) out.emplace_back(t, "[[" + name + "]]", path, dir, errors);
      else errors.error(path, static_cast<int>(el.source().begin.line), name + ": expected [[" + name + "]] tables");
    }
  } else {
    errors.error(path, static_cast<int>(n->source().begin.line), name + ": expected [[" + name + "]] (an array of tables)");
  }
  return out;
}

namespace {
// `domain` is one of `list` (lower-case; ".dom" names dom's subdomains).
bool inDomainList(const std::vector<std::string>& list, const std::string& domain) {
  std::string d = lower(domain);
  for (const auto& x : list) {
    if (x == d) return true;
    if (!x.empty() && x[0] == '.' && d.size() > x.size() && d.compare(d.size() - x.size(), x.size(), x) == 0)
      return true;
  }
  return false;
}
}  // namespace

bool Config::isRelayDomain(const std::string& domain) const { return inDomainList(relayDomains, domain); }

bool Config::isBatvDomain(const std::string& domain) const { return inDomainList(batvDomains, domain); }

bool Config::isBatvExempt(const std::string& address) const {
  std::string a = lower(address);
  size_t at = a.rfind('@');
  if (at == std::string::npos) return false;
  std::string domainEntry = a.substr(at);
  return std::any_of(batvExempt.begin(), batvExempt.end(),
                     [&](const std::string& e) { return e == a || e == domainEntry; });
}

namespace {
bool inAny(const std::vector<mta::Network>& networks, const mta::IpAddress& ip) {
  return std::any_of(networks.begin(), networks.end(), [&](const mta::Network& n) { return n.contains(ip); });
}
}  // namespace

bool Config::isAllowedClient(const mta::IpAddress& ip) const { return inAny(connectionAllow, ip); }

bool Config::isBlockedClient(const mta::IpAddress& ip) const {
  return !isAllowedClient(ip) && inAny(connectionBlock, ip);
}

bool Listener::isProxy(const mta::IpAddress& ip) const { return inAny(proxyNetworks, ip); }

bool Config::isRateExempt(const mta::IpAddress& ip) const { return inAny(rateExempt, ip); }

bool Config::isGreylistExempt(const mta::IpAddress& ip) const { return inAny(greylistExempt, ip); }

bool Config::isRelayClient(const mta::IpAddress& ip) const { return inAny(relayNetworks, ip); }

const Route* Config::routeFor(const std::string& domain, std::string_view sender) const {
  for (const auto& r : routes)
    if (r.matches(domain) && r.matchesSender(sender)) return &r;
  return nullptr;
}

std::shared_ptr<const Config> loadConfig(const std::string& path, Errors& errors) {
  auto c = readConfig(path, errors);
  if (errors.hasErrors()) return nullptr;
  return c;
}

std::shared_ptr<const Config> readConfig(const std::string& path, Errors& errors) {
  auto c = std::make_shared<Config>();
  c->path = absolutePath(path);
  c->dir = dirOf(c->path);
  toml::table table;
  try {
    table = toml::parse_file(c->path);
  } catch (const toml::parse_error& e) {
    errors.error(c->path, static_cast<int>(e.source().begin.line), std::string(e.description()));
    return nullptr;
  }
  c->toml = std::make_shared<const toml::table>(std::move(table));

  static const std::set<std::string> kCore = {
      "server",     "listener",   "dns",           "relay",   "limits",      "route",  "queue",
      "quarantine", "connection", "senders",       "mta_sts", "rate_limits", "tlsrpt", "bounce_verification",
      "greylist",   "headers",    "dmarc_reports", "bcc"};
  for (const auto& [k, v] : *c->toml) {
    std::string key(k.str());
    if (!kCore.count(key) && !kOtherSections.count(key))
      errors.error(c->path, static_cast<int>(v.source().begin.line), key + ": unknown section");
  }

  readServer(*c, c->section("server", errors));
  for (auto& s : c->sectionArray("listener", errors)) readListener(*c, std::move(s));
  readDns(*c, c->section("dns", errors));
  readRelay(*c, c->section("relay", errors));
  readLimits(*c, c->section("limits", errors));
  readMtaSts(*c, c->section("mta_sts", errors));
  readTlsrpt(*c, c->section("tlsrpt", errors));
  readDmarcReports(*c, c->section("dmarc_reports", errors));
  readQueue(*c, c->section("queue", errors));  // before the routes: they are checked against ip_versions
  for (auto& s : c->sectionArray("route", errors)) readRoute(*c, std::move(s));
  readQuarantine(*c, c->section("quarantine", errors));
  readConnection(*c, c->section("connection", errors));
  readSenders(*c, c->section("senders", errors));
  readBcc(*c, c->section("bcc", errors));
  readHeaders(*c, c->section("headers", errors));
  readRateLimits(*c, c->section("rate_limits", errors));
  readGreylist(*c, c->section("greylist", errors));
  readBounceVerification(*c, c->section("bounce_verification", errors));  // after [relay]: its default domains

  if (c->listeners.empty()) errors.error(c->path, 0, "no [[listener]]: Moat would accept no mail");
  checkSockets(*c, errors);
  checkVerify(*c, errors);
  warnSenderRoutesBeforeRelayDomains(*c, errors);
  return c;
}

}  // namespace moat::policy
