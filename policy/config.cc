// policy/config.cc — see config.h. Reads the core sections; validates every value; keeps
// going after the first error so `moat check` can list them all.
#include "policy/config.h"
#include "policy/values.h"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <set>

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
const std::set<std::string> kOtherSections = {"spf",       "dkim",  "dmarc", "dnsbl",
                                              "antivirus", "rules", "mime",  "attachments"};

std::string defaultHostname() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) == 0 && buf[0]) return buf;
  return "localhost";
}

void readServer(Config& c, Section s) {
  c.hostname = s.getString("hostname", defaultHostname());
  c.spoolDir = s.getPath("spool_dir", "var/spool");
  c.controlSocket = s.getPath("control_socket", "var/moat.sock");
  c.logFile = s.getPath("log_file", "-");
  c.logLevel = s.getEnum("log_level", "info", {"debug", "info", "warn", "error"});
  c.metricsListen = s.getString("metrics_listen", "");
  c.minFreeDisk = s.getSize("min_free_disk", c.minFreeDisk);
  c.spoolSync = s.getEnum("spool_sync", "fsync", {"fsync", "syncfs"});
  if (!c.metricsListen.empty() && !mta::parseHostPort(c.metricsListen))
    s.error("metrics_listen", "expected HOST:PORT");
  if (c.hostname.empty() || c.hostname.find_first_of(" \t\r\n") != std::string::npos)
    s.error("hostname", "must be a host name");
  s.rejectUnknownKeys();
}

void readListener(Config& c, Section s) {
  Listener l;
  l.line = s.lineOf("address");
  l.address = s.getString("address", "");
  auto hp = mta::parseHostPort(l.address);
  if (!hp) {
    s.error("address", "expected HOST:PORT, e.g. \"127.0.0.1:2525\" or \"[::1]:25\"");
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

void readRelay(Config& c, Section s) {
  for (auto& d : s.getStringArray("domains")) c.relayDomains.push_back(lower(d));
  c.relayNetworks = networks(s, "networks");
  c.relayRecipients = s.getPath("recipients", "");
  c.relayRecipientsLine = s.lineOf("recipients");
  c.relayAliases = s.getPath("aliases", "");
  c.relayAliasesLine = s.lineOf("aliases");
  s.rejectUnknownKeys();
}

void readLimits(Config& c, Section s) {
  c.maxMessageSize = s.getSize("max_message_size", c.maxMessageSize);
  c.maxRecipients = static_cast<unsigned>(s.getInt("max_recipients", c.maxRecipients, 1, 100000));
  c.maxConnections = static_cast<unsigned>(s.getInt("max_connections", c.maxConnections, 1, 1000000));
  c.maxConnectionsPerIp = static_cast<unsigned>(s.getInt("max_connections_per_ip", c.maxConnectionsPerIp, 1, 1000000));
  c.maxErrors = static_cast<unsigned>(s.getInt("max_errors", c.maxErrors, 1, 1000));
  c.commandTimeout = s.getDuration("command_timeout", c.commandTimeout);
  c.dataTimeout = s.getDuration("data_timeout", c.dataTimeout);
  c.maxReceivedHeaders = static_cast<unsigned>(s.getInt("max_received_headers", c.maxReceivedHeaders, 1, 10000));
  s.rejectUnknownKeys();
}

void readRoute(Config& c, Section s) {
  Route r;
  r.line = s.lineOf("to");
  for (auto& d : s.getStringArray("domains")) r.domains.push_back(lower(d));
  for (const auto& t : s.getStringArray("to")) {
    RouteTarget target;
    if (t == "mx") {
      target.kind = RouteTarget::Kind::Mx;
    } else if (t.rfind("maildir:", 0) == 0 && t.size() > 8) {
      target.kind = RouteTarget::Kind::Maildir;
      target.dir = resolvePath(s.baseDir(), t.substr(8));
    } else if (t.rfind("smtp:", 0) == 0) {
      auto hp = mta::parseHostPort(t.substr(5), 25);
      if (!hp) {
        s.error("to", "\"" + t + "\": expected smtp:HOST:PORT");
        continue;
      }
      target.kind = RouteTarget::Kind::Smtp;
      target.host = hp->host;
      target.port = hp->port;
    } else {
      s.error("to", "\"" + t + "\": expected smtp:HOST:PORT, \"mx\" or maildir:DIR");
      continue;
    }
    r.to.push_back(std::move(target));
  }
  if (r.to.empty() && s.present()) s.error("to", "a route needs at least one target");
  std::string tls = s.getEnum("tls", "may", {"none", "may", "require", "verify"});
  r.tls = tls == "none"      ? TlsPolicy::None
          : tls == "require" ? TlsPolicy::Require
          : tls == "verify"  ? TlsPolicy::Verify
                             : TlsPolicy::May;
  r.caFile = s.getPath("ca_file", "");
  if (!r.caFile.empty() && r.tls != TlsPolicy::Verify) s.error("ca_file", "ca_file needs tls = \"verify\"");
  s.rejectUnknownKeys();
  c.routes.push_back(std::move(r));
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
  s.rejectUnknownKeys();
}

void readConnection(Config& c, Section s) {
  c.connectionAllow = networks(s, "allow");
  c.connectionBlock = networks(s, "block");
  c.maxConnectionRatePerIp = static_cast<unsigned>(s.getInt("max_rate_per_ip", c.maxConnectionRatePerIp, 0, 1000000));
  s.rejectUnknownKeys();
}

void readSenders(Config& c, Section s) {
  c.blockedSenders = s.getPath("block", "");
  c.blockedSendersLine = s.lineOf("block");
  s.rejectUnknownKeys();
}

void readQuarantine(Config& c, Section s) {
  c.quarantineRetention = s.getDuration("retention", c.quarantineRetention);
  s.rejectUnknownKeys();
}

}  // namespace

std::string RouteTarget::str() const {
  switch (kind) {
    case Kind::Mx: return "mx";
    case Kind::Maildir: return "maildir:" + dir;
    case Kind::Smtp: return "smtp:" + (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
                            std::to_string(port);
  }
  return "";
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

bool Config::isRelayDomain(const std::string& domain) const {
  std::string d = lower(domain);
  for (const auto& x : relayDomains) {
    if (x == d) return true;
    if (!x.empty() && x[0] == '.' && d.size() > x.size() && d.compare(d.size() - x.size(), x.size(), x) == 0)
      return true;
  }
  return false;
}

bool Config::isAllowedClient(const mta::IpAddress& ip) const {
  for (const auto& n : connectionAllow)
    if (n.contains(ip)) return true;
  return false;
}

bool Config::isBlockedClient(const mta::IpAddress& ip) const {
  if (isAllowedClient(ip)) return false;
  for (const auto& n : connectionBlock)
    if (n.contains(ip)) return true;
  return false;
}

bool Config::isRelayClient(const mta::IpAddress& ip) const {
  for (const auto& n : relayNetworks)
    if (n.contains(ip)) return true;
  return false;
}

const Route* Config::routeFor(const std::string& domain) const {
  for (const auto& r : routes)
    if (r.matches(domain)) return &r;
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

  static const std::set<std::string> kCore = {"server", "listener", "dns",        "relay",      "limits",
                                              "route",  "queue",    "quarantine", "connection", "senders"};
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
  for (auto& s : c->sectionArray("route", errors)) readRoute(*c, std::move(s));
  readQueue(*c, c->section("queue", errors));
  readQuarantine(*c, c->section("quarantine", errors));
  readConnection(*c, c->section("connection", errors));
  readSenders(*c, c->section("senders", errors));

  if (c->listeners.empty()) errors.error(c->path, 0, "no [[listener]]: Moat would accept no mail");
  return c;
}

}  // namespace moat::policy
