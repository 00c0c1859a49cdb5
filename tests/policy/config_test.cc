// Tests for policy/config: the keys CONTRACT.md fixes, and errors reported as FILE:LINE.
#include "policy/config.h"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <string>

#include "policy/values.h"
#include "tests/support/temp_file.h"

using namespace moat::policy;

namespace {
std::string writeTemp(const std::string& text) { return moat::test::writeTempFile("config", text, ".toml"); }
}  // namespace

TEST_CASE("durations and sizes") {
  REQUIRE(parseDuration("30s")->count() == 30000);
  REQUIRE(parseDuration("5m")->count() == 300000);
  REQUIRE(parseDuration("2d")->count() == 172800000);
  REQUIRE_FALSE(parseDuration("5"));
  REQUIRE_FALSE(parseDuration("5 m"));
  REQUIRE(*parseSize("35M") == 35u << 20);
  REQUIRE(*parseSize("512K") == 512u << 10);
  REQUIRE(*parseSize("100") == 100u);
  REQUIRE_FALSE(parseSize("3X"));
}

TEST_CASE("the CONTRACT example config loads") {
  auto path = writeTemp(R"(
[server]
hostname = "mx.example.test"
spool_dir = "var/spool"
control_socket = "var/moat.sock"
log_file = "-"
metrics_listen = "127.0.0.1:9025"

[[listener]]
address = "127.0.0.1:2525"
mode = "smtp"

[dns]
nameservers = ["127.0.0.1:5353"]

[relay]
domains = ["example.test"]
networks = ["10.0.0.0/8"]

[limits]
max_message_size = "35M"
max_recipients = 200

[[route]]
domains = ["example.test"]
to = ["smtp:127.0.0.1:2626", "maildir:var/mail"]
tls = "may"

[[route]]
to = ["mx"]

[queue]
retry = ["1m", "5m", "15m", "30m", "1h"]
max_lifetime = "2d"
delay_warning = "4h"
)");
  Errors errors;
  auto c = loadConfig(path, errors);
  INFO(errors.str());
  REQUIRE(c);
  REQUIRE(c->hostname == "mx.example.test");
  REQUIRE(c->listeners.size() == 1);
  REQUIRE(c->listeners[0].port == 2525);
  REQUIRE(c->maxMessageSize == 35u << 20);
  REQUIRE(c->isRelayDomain("EXAMPLE.test"));
  REQUIRE_FALSE(c->isRelayDomain("other.test"));
  REQUIRE(c->isRelayClient(*moat::mta::IpAddress::parse("10.9.8.7")));
  REQUIRE(c->routeFor("example.test", "")->to.size() == 2);
  REQUIRE(c->routeFor("example.test", "")->to[1].dir.front() == '/');
  REQUIRE(c->routeFor("elsewhere.test", "")->to[0].kind == RouteTarget::Kind::Mx);
  REQUIRE(c->retry.size() == 5);
  REQUIRE(c->maxLifetime.count() == 48LL * 3600 * 1000);
  REQUIRE(c->maxDataTime == std::chrono::hours(1));  // a 35 MB message at 10 KB/s
  unlink(path.c_str());
}

TEST_CASE("every mistake is reported with FILE:LINE, not only the first") {
  auto path = writeTemp("[server]\nhostname = \"mx\"\nbogus = 1\n\n[[listener]]\naddress = \"nope\"\n\n"
                        "[limits]\nmax_message_size = \"35X\"\n\n[[route]]\nto = [\"ftp:x\"]\n");
  Errors errors;
  auto c = loadConfig(path, errors);
  REQUIRE_FALSE(c);
  std::string all = errors.str();
  INFO(all);
  REQUIRE(all.find(path + ":3: server.bogus: unknown key") != std::string::npos);
  REQUIRE(all.find(path + ":6: [[listener]].address") != std::string::npos);
  REQUIRE(all.find(path + ":9: limits.max_message_size") != std::string::npos);
  REQUIRE(all.find(path + ":12: [[route]].to") != std::string::npos);
  unlink(path.c_str());
}

TEST_CASE("server.reverse_dns is on by default, takes true or false, anything else is FILE:LINE") {
  const std::string head = "[server]\nhostname = \"mx\"\n";
  const std::string listener = "\n[[listener]]\naddress = \"127.0.0.1:25\"\n";
  auto path = writeTemp(head + listener);
  Errors errors;
  auto c = loadConfig(path, errors);
  INFO(errors.str());
  REQUIRE(c);
  CHECK(c->reverseDns);
  unlink(path.c_str());

  path = writeTemp(head + "reverse_dns = false\n" + listener);
  Errors off;
  c = loadConfig(path, off);
  INFO(off.str());
  REQUIRE(c);
  CHECK_FALSE(c->reverseDns);
  unlink(path.c_str());

  path = writeTemp(head + "reverse_dns = \"no\"\n" + listener);
  Errors bad;
  REQUIRE_FALSE(loadConfig(path, bad));
  INFO(bad.str());
  CHECK(bad.str().find(path + ":3: server.reverse_dns: expected true or false") != std::string::npos);
  unlink(path.c_str());
}

TEST_CASE("a TOML syntax error names the line") {
  auto path = writeTemp("[server]\nhostname = \"mx\"\n[[listener]\n");
  Errors errors;
  REQUIRE_FALSE(loadConfig(path, errors));
  REQUIRE(errors.all().size() == 1);
  REQUIRE(errors.all()[0].line == 3);
  unlink(path.c_str());
}

TEST_CASE("a submission listener needs auth_users, and AUTH needs TLS on its listener") {
  const std::string head = "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:587\"\n";
  auto path = writeTemp(head + "mode = \"submission\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n");
  Errors errors;
  REQUIRE_FALSE(loadConfig(path, errors));
  std::string all = errors.str();
  INFO(all);
  REQUIRE(all.find(path + ":6: [[listener]].mode: submission needs auth_users") != std::string::npos);
  unlink(path.c_str());

  path = writeTemp(head + "auth_users = \"users\"\n");
  Errors errors2;
  REQUIRE_FALSE(loadConfig(path, errors2));
  all = errors2.str();
  INFO(all);
  REQUIRE(all.find(path + ":6: [[listener]].auth_users: AUTH is offered only over TLS") != std::string::npos);
  unlink(path.c_str());

  path = writeTemp(head + "mode = \"submission\"\nauth_users = \"users\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n");
  Errors errors3;
  auto cfg = loadConfig(path, errors3);
  INFO(errors3.str());
  REQUIRE(cfg);
  REQUIRE(cfg->listeners.at(0).mode == moat::policy::ListenerMode::Submission);
  REQUIRE(cfg->listeners.at(0).authUsers == cfg->dir + "/users");
  unlink(path.c_str());
}

TEST_CASE("[[listener]] proxy_protocol needs proxy_networks, mistakes name FILE:LINE") {
  const std::string head = "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n";
  auto load = [&head](const std::string& extra, Errors& errors) {
    auto path = writeTemp(head + extra);
    auto c = loadConfig(path, errors);
    unlink(path.c_str());
    return std::make_pair(c, path);
  };
  {
    Errors errors;
    auto [c, path] = load("", errors);
    REQUIRE(c);
    CHECK_FALSE(c->listeners.at(0).proxyProtocol);
    CHECK(c->listeners.at(0).proxyNetworks.empty());
    CHECK(c->listeners.at(0).proxyTimeout.count() == 5000);
  }
  {
    Errors errors;
    auto [c, path] = load(
        "proxy_protocol = true\nproxy_networks = [\"127.0.0.1\", \"::1\", \"10.1.0.0/16\"]\n"
        "proxy_timeout = \"2s\"\n",
        errors);
    INFO(errors.str());
    REQUIRE(c);
    const auto& l = c->listeners.at(0);
    CHECK(l.proxyProtocol);
    CHECK(l.proxyTimeout.count() == 2000);
    CHECK(l.isProxy(*moat::mta::IpAddress::parse("127.0.0.1")));
    CHECK(l.isProxy(*moat::mta::IpAddress::parse("::1")));
    CHECK(l.isProxy(*moat::mta::IpAddress::parse("10.1.2.3")));
    CHECK_FALSE(l.isProxy(*moat::mta::IpAddress::parse("127.0.0.2")));
  }
  {  // open to anyone, any client could claim any address
    Errors errors;
    auto [c, path] = load("proxy_protocol = true\n", errors);
    CHECK_FALSE(c);
    INFO(errors.str());
    CHECK(errors.str().find(path + ":6: [[listener]].proxy_protocol: needs proxy_networks") != std::string::npos);
  }
  {
    Errors errors;
    auto [c, path] = load("proxy_protocol = true\nproxy_networks = []\n", errors);
    CHECK_FALSE(c);
    INFO(errors.str());
    CHECK(errors.str().find(path + ":7: [[listener]].proxy_networks: is empty") != std::string::npos);
  }
  {
    Errors errors;
    auto [c, path] =
        load("proxy_protocol = \"yes\"\nproxy_networks = [\"10.0.0.0/33\"]\nproxy_timeout = \"0s\"\n", errors);
    CHECK_FALSE(c);
    std::string all = errors.str();
    INFO(all);
    CHECK(all.find(path + ":6: [[listener]].proxy_protocol:") != std::string::npos);
    CHECK(all.find(path + ":7: [[listener]].proxy_networks: \"10.0.0.0/33\" is not an address or CIDR network") !=
          std::string::npos);
    CHECK(all.find(path + ":8: [[listener]].proxy_timeout:") != std::string::npos);
  }
  {  // harmless, but surely not what was meant
    Errors errors;
    auto [c, path] = load("proxy_networks = [\"127.0.0.1\"]\n", errors);
    REQUIRE(c);
    CHECK(errors.str().find(path + ":6: warning: [[listener]].proxy_networks: has no effect without proxy_protocol") !=
          std::string::npos);
  }
}

TEST_CASE("[connection] takes allow and block networks and a rate, mistakes name FILE:LINE") {
  const std::string head = "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n";
  auto path = writeTemp(head +
                        "[connection]\nallow = [\"192.0.2.7\"]\nblock = [\"192.0.2.0/24\", \"2001:db8::/32\"]\n"
                        "max_rate_per_ip = 30\n");
  Errors errors;
  auto c = loadConfig(path, errors);
  INFO(errors.str());
  REQUIRE(c);
  REQUIRE(c->maxConnectionRatePerIp == 30);
  REQUIRE(c->isBlockedClient(*moat::mta::IpAddress::parse("192.0.2.8")));
  REQUIRE(c->isBlockedClient(*moat::mta::IpAddress::parse("2001:db8::1")));
  REQUIRE_FALSE(c->isBlockedClient(*moat::mta::IpAddress::parse("192.0.2.7")));  // allow wins
  REQUIRE(c->isAllowedClient(*moat::mta::IpAddress::parse("192.0.2.7")));
  REQUIRE_FALSE(c->isBlockedClient(*moat::mta::IpAddress::parse("198.51.100.1")));
  unlink(path.c_str());

  path = writeTemp(head + "[connection]\nblock = [\"192.0.2.0/33\"]\nmax_rate = 5\n\n[auth]\nusers = \"x\"\n");
  Errors bad;
  REQUIRE_FALSE(loadConfig(path, bad));
  std::string all = bad.str();
  INFO(all);
  REQUIRE(all.find(path + ":8: connection.block: \"192.0.2.0/33\" is not an address or CIDR network") !=
          std::string::npos);
  REQUIRE(all.find(path + ":9: connection.max_rate: unknown key") != std::string::npos);
  // A section nothing reads is a typo, not a silent no-op.
  REQUIRE(all.find(path + ":11: auth: unknown section") != std::string::npos);
  unlink(path.c_str());
}

TEST_CASE("the rate_limits section: defaults, values, and mistakes as FILE:LINE") {
  const std::string head = "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n";
  auto path = writeTemp(head);
  Errors errors;
  auto c = loadConfig(path, errors);
  REQUIRE(c);
  CHECK(c->rateWindow == std::chrono::hours(1));
  CHECK(c->rateWindowText == "1h");
  CHECK_FALSE(c->rateLimitsOn());
  unlink(path.c_str());

  path = writeTemp(head +
                   "[rate_limits]\nwindow = \"90m\"\nmessages_per_client = 100\nrecipients_per_client = 500\n"
                   "messages_per_sender = 20\nexempt_networks = [\"192.0.2.0/24\", \"2001:db8::/32\"]\n");
  Errors good;
  c = loadConfig(path, good);
  INFO(good.str());
  REQUIRE(c);
  CHECK(c->rateWindow == std::chrono::minutes(90));
  CHECK(c->rateWindowText == "90m");
  CHECK(c->messagesPerClient == 100);
  CHECK(c->recipientsPerClient == 500);
  CHECK(c->messagesPerSender == 20);
  CHECK(c->rateLimitsOn());
  CHECK(c->isRateExempt(*moat::mta::IpAddress::parse("192.0.2.9")));
  CHECK(c->isRateExempt(*moat::mta::IpAddress::parse("2001:db8::1")));
  CHECK_FALSE(c->isRateExempt(*moat::mta::IpAddress::parse("198.51.100.1")));
  unlink(path.c_str());

  path = writeTemp(head +
                   "[rate_limits]\nwindow = \"500ms\"\nmessages_per_client = -1\nrecipients_per_client = \"x\"\n"
                   "exempt_networks = [\"192.0.2.0/33\"]\nmessages_per_hour = 5\n");
  Errors bad;
  REQUIRE_FALSE(loadConfig(path, bad));
  std::string all = bad.str();
  INFO(all);
  CHECK(all.find(path + ":8: rate_limits.window: must be from 1s to 7d") != std::string::npos);
  CHECK(all.find(path + ":9: rate_limits.messages_per_client") != std::string::npos);
  CHECK(all.find(path + ":10: rate_limits.recipients_per_client") != std::string::npos);
  CHECK(all.find(path + ":11: rate_limits.exempt_networks: \"192.0.2.0/33\" is not an address or CIDR network") !=
        std::string::npos);
  CHECK(all.find(path + ":12: rate_limits.messages_per_hour: unknown key") != std::string::npos);
  unlink(path.c_str());
}

TEST_CASE("readConfig keeps what it read despite errors, loadConfig refuses it") {
  auto path = writeTemp(
      "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n"
      "[relay]\ndomains = [\"example.test\"]\nrecipients = \"users\"\n\n"
      "[limits]\nmax_message_size = \"lots\"\n");
  Errors errors;
  auto c = readConfig(path, errors);
  REQUIRE(c);
  REQUIRE(errors.hasErrors());
  CHECK(c->relayRecipients == c->dir + "/users");
  CHECK(c->relayRecipientsLine == 9);
  Errors again;
  CHECK_FALSE(loadConfig(path, again));
  CHECK(again.str() == errors.str());
  unlink(path.c_str());
}

TEST_CASE("a file the config names that cannot be read is reported at the line naming it") {
  auto path = writeTemp("[rules]\nfiles = [\n  \"/\",\n  \"/nonexistent/moat-x.cf\",\n]\nkey = \"/nonexistent/k\"\n");
  Errors errors;
  auto c = readConfig(path, errors);
  REQUIRE(c);
  auto s = c->section("rules", errors);
  CHECK(s.readable("files", path));  // a readable file
  CHECK_FALSE(s.readable("files", "/nonexistent/moat-x.cf"));
  CHECK_FALSE(s.readable("files", "/"));
  CHECK_FALSE(s.readable("key", "/nonexistent/k"));
  std::string all = errors.str();
  INFO(all);
  CHECK(all.find(path + ":4: rules.files: cannot read /nonexistent/moat-x.cf: No such file or directory") !=
        std::string::npos);
  CHECK(all.find(path + ":3: rules.files: cannot read /: Is a directory") != std::string::npos);
  CHECK(all.find(path + ":6: rules.key: cannot read /nonexistent/k: No such file or directory") != std::string::npos);
  unlink(path.c_str());
}

namespace {
// A config with one listener and `rest` after it: errors.str() when it fails.
std::string loadErrors(const std::string& text, std::string& path, bool& loaded) {
  path = writeTemp(text);
  Errors errors;
  loaded = loadConfig(path, errors) != nullptr;
  return errors.str();
}
bool has(const std::string& all, const std::string& what) { return all.find(what) != std::string::npos; }
}  // namespace

TEST_CASE("listen addresses are IP addresses with a port, a host name is refused with FILE:LINE") {
  std::string path;
  bool loaded = true;
  std::string all = loadErrors(
      "[server]\nhostname = \"mx\"\nmetrics_listen = \"localhost:9025\"\n\n"
      "[[listener]]\naddress = \"localhost:25\"\n\n[[listener]]\naddress = \"::1:25\"\n",
      path, loaded);
  INFO(all);
  REQUIRE_FALSE(loaded);
  REQUIRE(has(all, path + ":3: server.metrics_listen: \"localhost:9025\": \"localhost\" is not an IP address"));
  REQUIRE(has(all, path + ":6: [[listener]].address: \"localhost:25\": \"localhost\" is not an IP address"));
  REQUIRE(has(all, path + ":9: [[listener]].address: \"::1:25\": expected IP:PORT"));
  unlink(path.c_str());

  all = loadErrors(
      "[server]\nhostname = \"mx\"\nmetrics_listen = \"[::1]:9025\"\n\n"
      "[[listener]]\naddress = \"[::1]:25\"\n\n[[listener]]\naddress = \"0.0.0.0:587\"\n"
      "\n[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[listener]]\naddress = \"127.0.0.1:0\"\n",
      path, loaded);
  INFO(all);
  REQUIRE(loaded);  // and two listeners on port 0 get a free port each
  unlink(path.c_str());
}

TEST_CASE("two listeners on one socket, or a listener on metrics_listen, are refused with FILE:LINE") {
  std::string path;
  bool loaded = true;
  std::string all = loadErrors(
      "[server]\nhostname = \"mx\"\nmetrics_listen = \"127.0.0.1:2525\"\n\n"
      "[[listener]]\naddress = \"127.0.0.1:2525\"\n\n"
      "[[listener]]\naddress = \"127.0.0.1:2525\"\nmode = \"smtp\"\n\n"
      "[[listener]]\naddress = \"0.0.0.0:25\"\n\n[[listener]]\naddress = \"192.0.2.1:25\"\n\n"
      "[[listener]]\naddress = \"[::]:465\"\n\n[[listener]]\naddress = \"127.0.0.1:465\"\n",
      path, loaded);
  INFO(all);
  REQUIRE_FALSE(loaded);
  REQUIRE(has(all, path + ":9: [[listener]].address: \"127.0.0.1:2525\" takes the same socket as the [[listener]] at "
                          "line 6 (\"127.0.0.1:2525\")"));
  REQUIRE(has(all, path + ":3: server.metrics_listen: \"127.0.0.1:2525\" takes the same socket as the [[listener]] at "
                          "line 6"));
  REQUIRE(has(all, path + ":16: [[listener]].address: \"192.0.2.1:25\" takes the same socket as the [[listener]] at "
                          "line 13 (\"0.0.0.0:25\")"));
  REQUIRE(has(all, path + ":22: [[listener]].address: \"127.0.0.1:465\" takes the same socket"));  // "::" is dual-stack
  unlink(path.c_str());

  all = loadErrors(
      "[server]\nhostname = \"mx\"\nmetrics_listen = \"127.0.0.1:9025\"\n\n"
      "[[listener]]\naddress = \"127.0.0.1:25\"\n\n[[listener]]\naddress = \"[::1]:25\"\n\n"
      "[[listener]]\naddress = \"127.0.0.2:25\"\n\n[[listener]]\naddress = \"127.0.0.1:587\"\n",
      path, loaded);
  INFO(all);
  REQUIRE(loaded);
  unlink(path.c_str());
}

TEST_CASE("relay.domains and [[route]] domains take domain names, or .domain for its subdomains") {
  std::string path;
  bool loaded = true;
  std::string all = loadErrors(
      "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n"
      "[relay]\ndomains = [\n  \"*.example.test\",\n  \"@example.test\",\n  \"exa mple\",\n"
      "  \"user@example.test\",\n  \"example.test.\",\n  \"-bad.test\",\n  \"a..b\",\n  \"\",\n]\n\n"
      "[[route]]\ndomains = [\"ok.test\", \"under_score.test\"]\nto = [\"mx\"]\n",
      path, loaded);
  INFO(all);
  REQUIRE_FALSE(loaded);
  REQUIRE(
      has(all, path + ":9: relay.domains: \"*.example.test\": wildcards are not supported; write \".example.test\""));
  REQUIRE(has(all, path + ":10: relay.domains: \"@example.test\": write the domain without \"@\": \"example.test\""));
  REQUIRE(has(all, path + ":11: relay.domains: \"exa mple\": a space is not allowed in a domain name"));
  REQUIRE(has(all, path + ":12: relay.domains: \"user@example.test\": an address, not a domain"));
  REQUIRE(has(all, path + ":13: relay.domains: \"example.test.\": write it without the trailing dot"));
  REQUIRE(has(all, path + ":14: relay.domains: \"-bad.test\": a label begins or ends with a hyphen"));
  REQUIRE(has(all, path + ":15: relay.domains: \"a..b\": an empty label"));
  REQUIRE(has(all, path + ":16: relay.domains: \"\": an empty domain"));
  REQUIRE(has(all, path + ":20: [[route]].domains: \"under_score.test\": \"_\" is not allowed in a domain name"));
  REQUIRE_FALSE(has(all, "\"ok.test\""));
  unlink(path.c_str());

  all = loadErrors(
      "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n"
      "[relay]\ndomains = [\"Example.TEST\", \".example.test\", \"localhost\", \"xn--bcher-kva.test\"]\n\n"
      "[[route]]\ndomains = [\".example.test\"]\nto = [\"mx\"]\n",
      path, loaded);
  INFO(all);
  REQUIRE(loaded);
  Errors errors;
  auto c = loadConfig(path, errors);
  REQUIRE(c->isRelayDomain("example.test"));
  REQUIRE(c->isRelayDomain("sub.example.test"));
  REQUIRE(c->routeFor("sub.example.test", ""));
  REQUIRE_FALSE(c->routeFor("example.test", ""));
  unlink(path.c_str());
}

TEST_CASE("a [[route]] that can never match is a warning with FILE:LINE") {
  std::string path;
  bool loaded = false;
  std::string all = loadErrors(
      "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n"
      "[[route]]\ndomains = [\"a.test\", \".b.test\"]\nto = [\"mx\"]\n\n"   // lines 7-9
      "[[route]]\ndomains = [\"A.test\", \"x.b.test\"]\nto = [\"mx\"]\n\n"  // 11-13
      "[[route]]\ndomains = [\"a.test\", \"c.test\"]\nto = [\"mx\"]\n\n"    // 15-17
      "[[route]]\ndomains = [\"b.test\"]\nto = [\"mx\"]\n\n"                // 19-21
      "[[route]]\nto = [\"mx\"]\n\n"                                        // 23-24
      "[[route]]\ndomains = [\"d.test\"]\nto = [\"maildir:mail\"]\n\n"      // 26-28
      "[[route]]\nto = [\"maildir:mail\"]\n",                               // 30-31
      path, loaded);
  INFO(all);
  REQUIRE(loaded);  // warnings only
  REQUIRE(has(all, path + ":12: warning: [[route]].domains: this route never matches: earlier routes take every "
                          "domain it lists (first match wins): \"a.test\" by line 9, \"x.b.test\" by line 9"));
  REQUIRE_FALSE(has(all, path + ":16:"));  // c.test is its own
  REQUIRE_FALSE(has(all, path + ":20:"));  // .b.test takes subdomains only, not b.test
  REQUIRE_FALSE(has(all, path + ":24:"));  // a match-all route last is the usual default
  REQUIRE(has(all, path + ":27: warning: [[route]].domains: this route never matches: the [[route]] at line 24 has "
                          "no domains"));
  REQUIRE(has(all, path + ":31: warning: [[route]].to: this route never matches: the [[route]] at line 24"));
  unlink(path.c_str());
}

TEST_CASE("[[route]] senders picks a route by envelope sender as well as by recipient domain") {
  std::string path;
  bool loaded = false;
  std::string all = loadErrors(
      "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n"
      "[[route]]\ndomains = [\"partner.test\"]\nsenders = [\"ceo@Example.TEST\"]\nto = [\"smtp:127.0.0.1:2601\"]\n\n"
      "[[route]]\nsenders = [\"@brand-b.test\", \"@.brand-c.test\"]\nto = [\"smtp:127.0.0.1:2602\"]\n\n"
      "[[route]]\ndomains = [\"partner.test\"]\nto = [\"smtp:127.0.0.1:2603\"]\n\n"
      "[[route]]\nto = [\"mx\"]\n",
      path, loaded);
  INFO(all);
  REQUIRE(loaded);
  // A route with senders takes only their mail: the later routes are reachable, no warning.
  REQUIRE_FALSE(has(all, "never matches"));
  Errors errors;
  auto c = loadConfig(path, errors);
  REQUIRE(c);
  const auto& r = c->routes;
  REQUIRE(r.size() == 4);
  // Domain and sender: both must match; first match wins.
  CHECK(c->routeFor("partner.test", "ceo@example.test") == &r[0]);
  CHECK(c->routeFor("PARTNER.test", "CEO@EXAMPLE.test") == &r[0]);        // ASCII case ignored
  CHECK(c->routeFor("partner.test", "ceo+board@example.test") == &r[0]);  // +tag matches user@
  CHECK(c->routeFor("partner.test", "cfo@example.test") == &r[2]);        // other sender: the domain route
  CHECK(c->routeFor("elsewhere.test", "ceo@example.test") == &r[3]);      // other domain
  // A sender-only route: every domain, its senders only (the domain, and subdomains of @.).
  CHECK(c->routeFor("elsewhere.test", "sales@brand-b.test") == &r[1]);
  CHECK(c->routeFor("partner.test", "sales@Brand-B.test") == &r[1]);
  CHECK(c->routeFor("elsewhere.test", "x@eu.brand-c.test") == &r[1]);
  CHECK(c->routeFor("elsewhere.test", "x@brand-c.test") == &r[3]);      // @.domain: subdomains only
  CHECK(c->routeFor("elsewhere.test", "x@sub.brand-b.test") == &r[3]);  // @domain: not its subdomains
  // A BATV-tagged sender is matched by its address without the tag.
  CHECK(c->routeFor("elsewhere.test", "prvs=0123abcdef=sales@brand-b.test") == &r[1]);
  CHECK(c->routeFor("partner.test", "PRVS=1999abcdef=ceo@example.test") == &r[0]);
  // The null sender (DSNs, Moat's own reports) never matches a senders list.
  CHECK(c->routeFor("partner.test", "") == &r[2]);
  CHECK(c->routeFor("elsewhere.test", "") == &r[3]);
  unlink(path.c_str());
}

TEST_CASE("[[route]] senders: bad entries are refused with FILE:LINE") {
  std::string path;
  bool loaded = true;
  std::string all = loadErrors(
      "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n"
      "[[route]]\nsenders = [\n  \"ok@example.test\",\n  \"example.test\",\n  \"a b@example.test\",\n"  // 7-11
      "  \"<>\",\n  \"\",\n  \"@.\",\n  \"@\",\n]\nto = [\"mx\"]\n\n"                                   // 12-17
      "[[route]]\nsenders = []\nto = [\"mx\"]\n\n"                                                      // 19-21
      "[[route]]\nsenders = \"@example.test\"\nto = [\"mx\"]\n",                                        // 23-25
      path, loaded);
  INFO(all);
  REQUIRE_FALSE(loaded);
  REQUIRE_FALSE(has(all, path + ":9:"));
  REQUIRE(has(all, path + ":10: [[route]].senders: \"example.test\" is not an address, @domain or @.domain"));
  REQUIRE(has(all, path + ":11: [[route]].senders: \"a b@example.test\" is not an address, @domain or @.domain"));
  REQUIRE(has(all, path + ":12: [[route]].senders: the null sender (\"<>\") cannot be listed"));
  REQUIRE(has(all, path + ":13: [[route]].senders: the null sender (\"\") cannot be listed"));
  REQUIRE(has(all, path + ":14: [[route]].senders: \"@.\" is not an address"));
  REQUIRE(has(all, path + ":15: [[route]].senders: \"@\" is not an address"));
  REQUIRE(has(all, path + ":20: [[route]].senders: an empty list matches no sender"));
  REQUIRE(has(all, path + ":24: [[route]].senders: expected an array of strings"));
  unlink(path.c_str());
}

TEST_CASE("[[route]] senders: shadowing warnings count only the routes without senders") {
  std::string path;
  bool loaded = false;
  std::string all = loadErrors(
      "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n"
      "[[route]]\ndomains = [\"a.test\"]\nsenders = [\"@b.test\"]\nto = [\"mx\"]\n\n"  // 7-10
      "[[route]]\ndomains = [\"a.test\"]\nto = [\"mx\"]\n\n"                           // 12-14
      "[[route]]\ndomains = [\"a.test\"]\nsenders = [\"@c.test\"]\nto = [\"mx\"]\n\n"  // 16-19
      "[[route]]\nto = [\"mx\"]\n\n"                                                   // 21-22
      "[[route]]\nsenders = [\"@d.test\"]\nto = [\"mx\"]\n",                           // 24-26
      path, loaded);
  INFO(all);
  REQUIRE(loaded);
  REQUIRE_FALSE(has(all, path + ":13:"));  // the route at 7 takes only @b.test's mail for a.test
  REQUIRE(has(all, path + ":17: warning: [[route]].domains: this route never matches: earlier routes take every "
                          "domain it lists (first match wins): \"a.test\" by line 14"));
  REQUIRE(has(all, path + ":25: warning: [[route]].senders: this route never matches: the [[route]] at line 22 has "
                          "no domains"));
  unlink(path.c_str());
}

TEST_CASE("[[route]] senders without domains before a relay domain's route is a warning with FILE:LINE") {
  const std::string head =
      "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n"  // 1-5
      "[relay]\ndomains = [\"example.test\", \"other.test\", \"Example.test\", \".sub.test\", \"nowhere.test\"]\n\n";
  const std::string inbound = "[[route]]\ndomains = [\"example.test\"]\nto = [\"smtp:127.0.0.1:2626\"]\n\n";
  const std::string brand =
      "[[route]]\nsenders = [\"@brand-b.test\"]\nto = [\"smtp:127.0.0.1:2627\"]\nhelo_name = \"out.brand-b.test\"\n\n";
  const std::string fallback = "[[route]]\nto = [\"mx\"]\n";
  std::string path;
  bool loaded = false;

  // Before the routes of the relay domains: each is named with the line of the route it would
  // otherwise take (other.test and nowhere.test: the match-all one), once; the subdomain
  // entry is left out (it names no one domain). A warning: the config loads.
  std::string all = loadErrors(head + brand + inbound + fallback, path, loaded);  // brand 10-13, inbound 15-17, 19-20
  INFO(all);
  CHECK(loaded);
  CHECK(has(all, path + ":11: warning: [[route]].senders: this route has no domains, so it also takes its senders' "
                        "mail to relay.domains (first match wins): example.test (else the [[route]] at line 17), "
                        "other.test (else the [[route]] at line 20), nowhere.test (else the [[route]] at line 20); "
                        "add domains, or move this route after the routes of the relay domains"));
  CHECK_FALSE(has(all, "sub.test"));
  CHECK(all.find("example.test (else") == all.rfind("example.test (else"));  // listed once
  unlink(path.c_str());

  // No route at all for a relay domain: delivery by MX is what the sender route comes before.
  all = loadErrors(head + brand + inbound, path, loaded);
  CHECK(loaded);
  CHECK(has(all, path + ":11: warning: [[route]].senders: this route has no domains, so it also takes its senders' "
                        "mail to relay.domains (first match wins): example.test (else the [[route]] at line 17), "
                        "other.test (else delivered by MX: no [[route]] takes it), nowhere.test (else delivered by "
                        "MX: no [[route]] takes it); "));
  unlink(path.c_str());

  // After the routes of the relay domains (README's example): no warning about it.
  all = loadErrors(
      head + inbound + "[[route]]\ndomains = [\"other.test\", \"nowhere.test\"]\nto = [\"mx\"]\n\n" + brand + fallback,
      path, loaded);
  CHECK(loaded);
  CHECK_FALSE(has(all, "warning"));
  unlink(path.c_str());

  // Only the relay domains whose route comes after it are named.
  all = loadErrors(head + inbound + brand + fallback, path, loaded);  // inbound 10-12, brand 14-17, 19-20
  CHECK(loaded);
  CHECK(has(all, path + ":15: warning: [[route]].senders: this route has no domains, so it also takes its senders' "
                        "mail to relay.domains (first match wins): other.test (else the [[route]] at line 20), "
                        "nowhere.test (else the [[route]] at line 20); add domains"));
  CHECK_FALSE(has(all, "example.test (else"));
  unlink(path.c_str());

  // With domains it takes only the mail to them: no warning, wherever it is.
  all = loadErrors(head + "[[route]]\ndomains = [\"partner.test\"]\nsenders = [\"@brand-b.test\"]\nto = [\"mx\"]\n\n" +
                       inbound + fallback,
                   path, loaded);
  CHECK(loaded);
  CHECK_FALSE(has(all, "warning"));
  unlink(path.c_str());

  // A sender route with the relay domains' own route before it among other sender routes:
  // only the one before is named.
  all = loadErrors(head + brand + inbound +
                       "[[route]]\nsenders = [\"@brand-c.test\"]\nto = [\"smtp:127.0.0.1:2628\"]\n\n" + fallback,
                   path, loaded);  // brand 10-13, inbound 15-17, brand-c 19-21, 23-24
  CHECK(loaded);
  CHECK(has(all, path + ":11: warning: [[route]].senders: this route has no domains"));
  CHECK(has(all, path + ":20: warning: [[route]].senders: this route has no domains, so it also takes its senders' "
                        "mail to relay.domains (first match wins): other.test (else the [[route]] at line 24)"));
  unlink(path.c_str());
}

TEST_CASE("a [[route]] target of a family queue.ip_versions leaves out is a warning with FILE:LINE") {
  std::string path;
  bool loaded = false;
  const std::string head = "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n";
  std::string all = loadErrors(
      head +
          "[[route]]\ndomains = [\"a.test\"]\nto = [\"smtp:[2001:db8::1]:25\"]\n\n"  // 7-9
          "[[route]]\ndomains = [\"b.test\"]\nto = [\n  \"smtp:[2001:db8::2]\",\n"   // 11-14: one target a line
          "  \"smtp:192.0.2.2:2525\",\n  \"smtp:[2001:db8::3]:25\",\n]\n\n"          // 15-17
          "[[route]]\ndomains = [\"c.test\"]\nto = [\"smtp:relay.c.test\", "         // 19-21
          "\"smtp:[2001:db8::4]\"]\n\n"
          "[[route]]\ndomains = [\"d.test\"]\nto = [\"smtp:[2001:db8::5]\", \"mx\"]\n\n"  // 23-25
          "[[route]]\ndomains = [\"e.test\"]\nto = [\"smtp:192.0.2.5\"]\n\n"              // 27-29
          "[queue]\nip_versions = [\"ipv4\"]\n\n"                                         // 31-32
          "[[route]]\ndomains = [\"f.test\"]\nto = [\"mx\", \"smtp:[2001:db8::6]\"]\n",   // 34-36
      path, loaded);
  INFO(all);
  REQUIRE(loaded);  // warnings only
  // Each such target at its own line; a route with no other target never delivers.
  REQUIRE(has(all, path + ":9: warning: [[route]].to: \"smtp:[2001:db8::1]:25\" is an IPv6 address, which "
                          "queue.ip_versions leaves out: this target is never used"));
  REQUIRE(has(all, path + ":9: warning: [[route]].to: this route can never deliver: queue.ip_versions leaves out "
                          "the address family of each of its smtp: targets, so its mail waits in the queue until "
                          "queue.max_lifetime"));
  REQUIRE(has(all, path + ":14: warning: [[route]].to: \"smtp:[2001:db8::2]\" is an IPv6 address"));
  REQUIRE(has(all, path + ":16: warning: [[route]].to: \"smtp:[2001:db8::3]:25\" is an IPv6 address"));
  REQUIRE_FALSE(has(all, path + ":15:"));  // an IPv4 target still delivers
  REQUIRE_FALSE(has(all, path + ":13: warning: [[route]].to: this route"));
  REQUIRE(has(all, path + ":21: warning: [[route]].to: \"smtp:[2001:db8::4]\" is an IPv6 address"));
  REQUIRE_FALSE(has(all, "relay.c.test"));  // a host name is not looked up
  REQUIRE_FALSE(has(all, path + ":21: warning: [[route]].to: this route"));
  REQUIRE(has(all, path + ":25: warning: [[route]].to: \"smtp:[2001:db8::5]\" is an IPv6 address"));
  // A route whose first target is smtp: delivers to its smtp: targets only.
  REQUIRE(has(all, path + ":25: warning: [[route]].to: this route can never deliver"));
  REQUIRE(has(all, path + ":36: warning: [[route]].to: \"smtp:[2001:db8::6]\" is an IPv6 address"));
  REQUIRE_FALSE(has(all, path + ":36: warning: [[route]].to: this route"));  // delivers by MX
  REQUIRE_FALSE(has(all, path + ":29:"));
  unlink(path.c_str());

  // And the other way round; with both families (the default) nothing is said.
  all = loadErrors(head + "[queue]\nip_versions = [\"ipv6\"]\n\n[[route]]\nto = [\"smtp:192.0.2.1\"]\n", path, loaded);
  REQUIRE(loaded);
  REQUIRE(has(all, path + ":11: warning: [[route]].to: \"smtp:192.0.2.1\" is an IPv4 address, which "
                          "queue.ip_versions leaves out: this target is never used"));
  REQUIRE(has(all, path + ":11: warning: [[route]].to: this route can never deliver"));
  unlink(path.c_str());
  all = loadErrors(head + "[[route]]\nto = [\"smtp:192.0.2.1\", \"smtp:[2001:db8::1]\"]\n", path, loaded);
  REQUIRE(loaded);
  REQUIRE(all.empty());
  unlink(path.c_str());
}

TEST_CASE("the log file must be writable where serve opens it, and the check creates nothing") {
  char tmpl[] = "/tmp/moat-logdir-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  auto check = [&](const std::string& logFile) {
    std::string path = dir + "/moat.toml";
    std::ofstream(path) << "[server]\nhostname = \"mx\"\nlog_file = \"" << logFile
                        << "\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n";
    Errors errors;
    auto c = loadConfig(path, errors);
    REQUIRE(c);  // loadConfig alone does not look: `moat spf` need not write the log
    checkLogFile(*c, errors);
    return errors.str();
  };
  std::string path = dir + "/moat.toml";
  std::string all = check("/nonexistent/dir/moat.log");
  REQUIRE(has(all,
              path + ":3: server.log_file: \"/nonexistent/dir/moat.log\": its folder /nonexistent/dir does not exist"));
  REQUIRE(mkdir((dir + "/sub").c_str(), 0700) == 0);
  all = check("sub");  // relative to the config's folder
  REQUIRE(has(all, path + ":3: server.log_file: \"" + dir + "/sub\": is a folder"));
  REQUIRE(check("moat.log").empty());
  REQUIRE(access((dir + "/moat.log").c_str(), F_OK) != 0);  // not created
  REQUIRE(check("-").empty());
  rmdir((dir + "/sub").c_str());
  unlink(path.c_str());
  rmdir(dir.c_str());
}

TEST_CASE("restartOnlyChanges names the keys a reload cannot apply that differ from the running ones") {
  auto load = [](const std::string& server, const std::string& listeners, const std::string& dns) {
    auto path = writeTemp("[server]\nhostname = \"mx\"\n" + server + "\n" + listeners + "\n[dns]\n" + dns + "\n");
    Errors errors;
    auto c = loadConfig(path, errors);
    INFO(errors.str());
    REQUIRE(c);
    unlink(path.c_str());
    return c;
  };
  const std::string l1 = "[[listener]]\naddress = \"127.0.0.1:2525\"\n";
  const std::string l2 = "[[listener]]\naddress = \"127.0.0.1:2526\"\n";
  auto running = load("spool_dir = \"s1\"\nlog_level = \"info\"\n", l1, "");
  REQUIRE(restartOnlyChanges(*running, *running).empty());
  // log_level, hostname, limits... are applied by a reload
  REQUIRE(restartOnlyChanges(*running, *load("spool_dir = \"s1\"\nlog_level = \"debug\"\n", l1, "")).empty());
  auto next = load(
      "spool_dir = \"s2\"\ncontrol_socket = \"c.sock\"\nmetrics_listen = \"127.0.0.1:9999\"\n"
      "spool_sync = \"syncfs\"\n",
      l2, "nameservers = [\"127.0.0.1:5353\"]\ntimeout = \"1s\"\n");
  std::vector<std::string> expected = {"server.spool_dir",        "server.spool_sync",      "server.control_socket",
                                       "server.metrics_listen",   "dns.nameservers",        "dns.timeout",
                                       "listener 127.0.0.1:2525", "listener 127.0.0.1:2526"};
  REQUIRE(restartOnlyChanges(*running, *next) == expected);
  // a listener's mode is its socket's
  auto smtpsLess = load("spool_dir = \"s1\"\n", l1 + "mode = \"smtp\"\n", "");
  REQUIRE(restartOnlyChanges(*running, *smtpsLess).empty());
  // whether it reads a PROXY header first is too; its proxy_networks and proxy_timeout are not
  auto proxied = load("spool_dir = \"s1\"\n", l1 + "proxy_protocol = true\nproxy_networks = [\"127.0.0.1\"]\n", "");
  REQUIRE(restartOnlyChanges(*running, *proxied) == std::vector<std::string>{"listener 127.0.0.1:2525"});
  auto otherProxies = load("spool_dir = \"s1\"\n",
                           l1 + "proxy_protocol = true\nproxy_networks = [\"::1\"]\nproxy_timeout = \"1s\"\n", "");
  REQUIRE(restartOnlyChanges(*proxied, *otherProxies).empty());
  // an smtps listener's certificate is reloaded (each connection takes the snapshot's), its mode is not
  auto smtps = load("spool_dir = \"s1\"\n", l1 + "mode = \"smtps\"\ntls_cert = \"a.pem\"\ntls_key = \"a.key\"\n", "");
  auto renewed = load("spool_dir = \"s1\"\n", l1 + "mode = \"smtps\"\ntls_cert = \"b.pem\"\ntls_key = \"b.key\"\n", "");
  REQUIRE(restartOnlyChanges(*smtps, *renewed).empty());
  REQUIRE(restartOnlyChanges(*smtps, *running) == std::vector<std::string>{"listener 127.0.0.1:2525"});
}

TEST_CASE("[queue] address_preference and ip_versions: defaults, values, mistakes as FILE:LINE") {
  const std::string head = "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n[queue]\n";
  // head + `extra`, which must load.
  auto load = [&head](const std::string& extra) {
    auto path = writeTemp(head + extra);
    Errors errors;
    auto c = loadConfig(path, errors);
    INFO(errors.str());
    REQUIRE(c);
    unlink(path.c_str());
    return c;
  };
  auto c = load("");
  CHECK(c->addressPreference == AddressPreference::Ipv6);  // as before: AAAA first
  CHECK(c->useIpv4);
  CHECK(c->useIpv6);

  c = load("address_preference = \"ipv4\"\nip_versions = [\"ipv4\"]\n");
  CHECK(c->addressPreference == AddressPreference::Ipv4);
  CHECK(c->useIpv4);
  CHECK_FALSE(c->useIpv6);

  CHECK(load("address_preference = \"any\"\nip_versions = [\"ipv6\", \"ipv4\"]\n")->addressPreference ==
        AddressPreference::Any);

  std::string path = writeTemp(head + "address_preference = \"v6\"\nip_versions = []\n");
  Errors bad;
  REQUIRE_FALSE(loadConfig(path, bad));
  INFO(bad.str());
  CHECK(bad.str().find(path + ":8: queue.address_preference: \"v6\" is not one of: ipv6, ipv4, any") !=
        std::string::npos);
  CHECK(bad.str().find(path + ":9: queue.ip_versions: needs at least one of: ipv4, ipv6") != std::string::npos);
  unlink(path.c_str());

  path = writeTemp(head + "ip_versions = [\"ipv4\", \"inet6\"]\n");
  Errors unknown;
  REQUIRE_FALSE(loadConfig(path, unknown));
  INFO(unknown.str());
  CHECK(unknown.str().find(path + ":8: queue.ip_versions: \"inet6\" is not one of: ipv4, ipv6") != std::string::npos);
  unlink(path.c_str());
}

TEST_CASE("relay.verify_recipients and its keys: defaults, values, and bad values refused with FILE:LINE") {
  std::string path;
  bool loaded = false;
  std::string base = "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:0\"\n\n";
  std::string all = loadErrors(base + "[relay]\ndomains = [\"example.test\"]\n", path, loaded);
  REQUIRE(loaded);
  {
    Errors errors;
    auto c = loadConfig(path, errors);
    REQUIRE(c);
    CHECK_FALSE(c->verifyRecipients);
    CHECK(c->verifyPositiveTtl == std::chrono::hours(24 * 7));  // Postfix's address_verify_positive_expire_time
    CHECK(c->verifyNegativeTtl == std::chrono::hours(3));
    CHECK(c->verifyTimeout == std::chrono::seconds(10));
    CHECK_FALSE(c->verifyUnknownAccept);
  }
  unlink(path.c_str());

  path = writeTemp(base +
                   "[relay]\ndomains = [\"example.test\"]\nverify_recipients = true\nverify_positive_ttl = \"1d\"\n"
                   "verify_negative_ttl = \"10m\"\nverify_timeout = \"3s\"\nverify_unknown = \"accept\"\n\n"
                   "[[route]]\ndomains = [\"example.test\"]\nto = [\"smtp:127.0.0.1:2626\"]\n");
  {
    Errors errors;
    auto c = loadConfig(path, errors);
    INFO(errors.str());
    REQUIRE(c);
    CHECK(c->verifyRecipients);
    CHECK(c->verifyPositiveTtl == std::chrono::hours(24));
    CHECK(c->verifyNegativeTtl == std::chrono::minutes(10));
    CHECK(c->verifyTimeout == std::chrono::seconds(3));
    CHECK(c->verifyUnknownAccept);
    CHECK_FALSE(has(errors.str(), "not routed"));
  }
  unlink(path.c_str());

  all = loadErrors(
      base +
          "[relay]\ndomains = [\"example.test\"]\nverify_recipients = \"yes\"\nverify_positive_ttl = \"0s\"\n"
          "verify_negative_ttl = \"soon\"\nverify_timeout = \"10m\"\nverify_unknown = \"bounce\"\n",
      path, loaded);
  INFO(all);
  CHECK_FALSE(loaded);
  CHECK(has(all, path + ":9: relay.verify_recipients"));
  CHECK(has(all, path + ":10: relay.verify_positive_ttl: must be between 1s and 90d"));
  CHECK(has(all, path + ":11: relay.verify_negative_ttl"));
  CHECK(has(all, path + ":12: relay.verify_timeout: must be between 1s and 2m"));
  CHECK(has(all, path + ":13: relay.verify_unknown"));
  unlink(path.c_str());

  // A relay domain delivered to a Maildir (or by MX) cannot be verified: a warning, not an error.
  // One routed to lmtp: next hops (over TCP or a Unix socket) can.
  all = loadErrors(base +
                       "[relay]\ndomains = [\"example.test\", \"other.test\", \"box.test\", \"sock.test\"]\n"
                       "verify_recipients = true\n\n"
                       "[[route]]\ndomains = [\"example.test\"]\nto = [\"smtp:127.0.0.1:2626\"]\n\n"
                       "[[route]]\ndomains = [\"other.test\"]\nto = [\"maildir:mail\"]\n\n"
                       "[[route]]\ndomains = [\"box.test\"]\nto = [\"lmtp:127.0.0.1:24\"]\n\n"
                       "[[route]]\ndomains = [\"sock.test\"]\nto = [\"lmtp:unix:/run/dovecot/lmtp\"]\n",
                   path, loaded);
  INFO(all);
  CHECK(loaded);
  CHECK(has(all, path + ":9: warning: relay.verify_recipients: relay domain other.test is not routed to smtp: or lmtp: "
                        "next hops"));
  CHECK_FALSE(has(all, "relay domain example.test"));
  CHECK_FALSE(has(all, "relay domain box.test"));
  CHECK_FALSE(has(all, "relay domain sock.test"));
  unlink(path.c_str());
}

TEST_CASE("the greylist section: defaults, values, and mistakes as FILE:LINE") {
  const std::string head = "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n";
  auto path = writeTemp(head);
  Errors errors;
  auto c = loadConfig(path, errors);
  REQUIRE(c);
  CHECK_FALSE(c->greylistEnabled);
  CHECK(c->greylistDelay == std::chrono::minutes(5));
  CHECK(c->greylistRetryWindow == std::chrono::hours(48));
  CHECK(c->greylistLifetime == std::chrono::hours(24 * 35));
  CHECK(c->greylistAutoAllowAfter == 5);
  CHECK(c->greylistIpv4Prefix == 24);
  CHECK(c->greylistIpv6Prefix == 64);
  CHECK(c->greylistExempt.empty());
  unlink(path.c_str());

  path = writeTemp(head +
                   "[greylist]\nenabled = true\ndelay = \"1s\"\nretry_window = \"1h\"\nlifetime = \"7d\"\n"
                   "auto_allow_after = 0\nipv4_prefix = 32\nipv6_prefix = 48\n"
                   "exempt_networks = [\"192.0.2.0/24\", \"2001:db8::/32\"]\n");
  Errors good;
  c = loadConfig(path, good);
  INFO(good.str());
  REQUIRE(c);
  CHECK(c->greylistEnabled);
  CHECK(c->greylistDelay == std::chrono::seconds(1));
  CHECK(c->greylistRetryWindow == std::chrono::hours(1));
  CHECK(c->greylistLifetime == std::chrono::hours(24 * 7));
  CHECK(c->greylistAutoAllowAfter == 0);
  CHECK(c->greylistIpv4Prefix == 32);
  CHECK(c->greylistIpv6Prefix == 48);
  CHECK(c->isGreylistExempt(*moat::mta::IpAddress::parse("192.0.2.9")));
  CHECK(c->isGreylistExempt(*moat::mta::IpAddress::parse("2001:db8::1")));
  CHECK_FALSE(c->isGreylistExempt(*moat::mta::IpAddress::parse("198.51.100.1")));
  unlink(path.c_str());

  path = writeTemp(head +
                   "[greylist]\nenabled = \"yes\"\ndelay = \"500ms\"\nretry_window = \"31d\"\nlifetime = \"0s\"\n"
                   "auto_allow_after = -1\nipv4_prefix = 33\nipv6_prefix = 8\nexempt_networks = [\"x\"]\n"
                   "whitelist = []\n");
  Errors bad;
  REQUIRE_FALSE(loadConfig(path, bad));
  std::string all = bad.str();
  INFO(all);
  CHECK(all.find(path + ":8: greylist.enabled") != std::string::npos);
  CHECK(all.find(path + ":9: greylist.delay: must be from 1s to 1d") != std::string::npos);
  CHECK(all.find(path + ":10: greylist.retry_window: must be longer than delay and at most 30d") != std::string::npos);
  CHECK(all.find(path + ":11: greylist.lifetime: must be from 1s to 366d") != std::string::npos);
  CHECK(all.find(path + ":12: greylist.auto_allow_after") != std::string::npos);
  CHECK(all.find(path + ":13: greylist.ipv4_prefix") != std::string::npos);
  CHECK(all.find(path + ":14: greylist.ipv6_prefix") != std::string::npos);
  CHECK(all.find(path + ":15: greylist.exempt_networks") != std::string::npos);
  CHECK(all.find(path + ":16: greylist.whitelist: unknown key") != std::string::npos);
  unlink(path.c_str());

  // A delay longer than the window it must fit in.
  path = writeTemp(head + "[greylist]\ndelay = \"2h\"\nretry_window = \"1h\"\n");
  Errors order;
  REQUIRE_FALSE(loadConfig(path, order));
  CHECK(order.str().find(path + ":9: greylist.retry_window: must be longer than delay") != std::string::npos);
  unlink(path.c_str());
}

TEST_CASE("greylist exempt_client_names: lower-cased, checked as names, and refused without reverse_dns") {
  const std::string head = "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n";
  auto path = writeTemp(head);
  Errors none;
  auto c = loadConfig(path, none);
  REQUIRE(c);
  CHECK(c->greylistExemptNames.empty());
  unlink(path.c_str());

  path = writeTemp(head + "[greylist]\nexempt_client_names = [\".Google.COM\", \"mx1.Example.test\"]\n");
  Errors good;
  c = loadConfig(path, good);
  INFO(good.str());
  REQUIRE(c);
  CHECK(c->greylistExemptNames == std::vector<std::string>{".google.com", "mx1.example.test"});
  unlink(path.c_str());

  path = writeTemp(head +
                   "[greylist]\nexempt_client_names = [\n  \"ok.test\",\n  \"*.google.com\",\n  \"bad name.test\",\n"
                   "  \"\",\n  \"b\u00fccher.test\",\n]\n");
  Errors bad;
  REQUIRE_FALSE(loadConfig(path, bad));
  std::string all = bad.str();
  INFO(all);
  CHECK(all.find(path + ":10: greylist.exempt_client_names: \"*.google.com\": wildcards are not supported") !=
        std::string::npos);
  CHECK(all.find(path + ":11: greylist.exempt_client_names: \"bad name.test\"") != std::string::npos);
  CHECK(all.find(path + ":12: greylist.exempt_client_names") != std::string::npos);
  CHECK(all.find(path + ":13: greylist.exempt_client_names: \"b\xc3\xbc"
                        "cher.test\": write a non-ASCII name as its A-label") != std::string::npos);
  CHECK(all.find(":9:") == std::string::npos);  // ok.test is fine
  unlink(path.c_str());

  // Without reverse DNS there is no verified name to match.
  path = writeTemp(
      "[server]\nhostname = \"mx\"\nreverse_dns = false\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n"
      "[greylist]\nexempt_client_names = [\".google.com\"]\n");
  Errors off;
  REQUIRE_FALSE(loadConfig(path, off));
  INFO(off.str());
  CHECK(off.str().find(path + ":9: greylist.exempt_client_names: needs [server] reverse_dns = true") !=
        std::string::npos);
  unlink(path.c_str());
}

TEST_CASE(
    "headers strip_inbound: Moat's verdict fields by default, lower-cased, and the fields a message is built on "
    "refused") {
  const std::string head = "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n";
  auto path = writeTemp(head);
  Errors none;
  auto c = loadConfig(path, none);
  REQUIRE(c);
  CHECK(c->stripInbound == std::vector<std::string>{"x-moat-*", "x-spam-*"});
  unlink(path.c_str());

  path = writeTemp(head + "[headers]\nstrip_inbound = [\"X-Spamd-Result\", \"X-Barracuda-*\"]\n");
  Errors good;
  c = loadConfig(path, good);
  INFO(good.str());
  REQUIRE(c);
  CHECK(c->stripInbound == std::vector<std::string>{"x-spamd-result", "x-barracuda-*"});
  unlink(path.c_str());

  path = writeTemp(head + "[headers]\nstrip_inbound = []\n");
  Errors empty;
  c = loadConfig(path, empty);
  REQUIRE(c);
  CHECK(c->stripInbound.empty());
  unlink(path.c_str());

  path = writeTemp(head +
                   "[headers]\nstrip_inbound = [\n  \"X-Ok\",\n  \"*\",\n  \"Fr*\",\n  \"Received\",\n"
                   "  \"X Bad\",\n  \"X-*-Mid\",\n  \"\",\n]\n");
  Errors bad;
  REQUIRE_FALSE(loadConfig(path, bad));
  std::string all = bad.str();
  INFO(all);
  CHECK(all.find(path + ":10: headers.strip_inbound: \"*\": a field name") != std::string::npos);
  CHECK(all.find(path + ":11: headers.strip_inbound: \"Fr*\" would remove from") != std::string::npos);
  CHECK(all.find(path + ":12: headers.strip_inbound: \"Received\" would remove received") != std::string::npos);
  CHECK(all.find(path + ":13: headers.strip_inbound: \"X Bad\": not a header field name") != std::string::npos);
  CHECK(all.find(path + ":14: headers.strip_inbound: \"X-*-Mid\": not a header field name") != std::string::npos);
  CHECK(all.find(path + ":15: headers.strip_inbound") != std::string::npos);
  CHECK(all.find(":9:") == std::string::npos);  // X-Ok is fine
  unlink(path.c_str());
}

TEST_CASE("source_ipv4, source_ipv6 and helo_name: defaults, inheritance, and mistakes as FILE:LINE") {
  const std::string head = "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n";
  auto load = [&head](const std::string& extra) {
    auto path = writeTemp(head + extra);
    Errors errors;
    auto c = loadConfig(path, errors);
    INFO(errors.str());
    REQUIRE(c);
    checkSourceAddresses(*c, errors);
    CHECK(errors.str().empty());
    unlink(path.c_str());
    return c;
  };
  auto c = load("[[route]]\nto = [\"mx\"]\n");
  CHECK_FALSE(c->sourceIpv4);
  CHECK_FALSE(c->sourceIpv6);
  CHECK_FALSE(c->routes[0].sourceIpv4);
  CHECK(c->routes[0].heloName.empty());  // server.hostname

  c = load(
      "[queue]\nsource_ipv4 = \"127.0.0.2\"\nsource_ipv6 = \"::1\"\n\n"
      "[[route]]\ndomains = [\"a.test\"]\nto = [\"mx\"]\nsource_ipv4 = \"127.0.0.3\"\nhelo_name = "
      "\"Out2.Example.TEST\"\n\n"
      "[[route]]\nto = [\"mx\"]\n");
  REQUIRE(c->sourceIpv4);
  CHECK(c->sourceIpv4->str() == "127.0.0.2");
  REQUIRE(c->sourceIpv6);
  CHECK(c->sourceIpv6->str() == "::1");
  REQUIRE(c->routes[0].sourceIpv4);
  CHECK(c->routes[0].sourceIpv4->str() == "127.0.0.3");  // the route's own wins
  REQUIRE(c->routes[0].sourceIpv6);
  CHECK(c->routes[0].sourceIpv6->str() == "::1");  // inherited from [queue]
  CHECK(c->routes[0].heloName == "out2.example.test");
  REQUIRE(c->routes[1].sourceIpv4);
  CHECK(c->routes[1].sourceIpv4->str() == "127.0.0.2");
  CHECK(c->routes[1].heloName.empty());

  // The wrong family, a host name, a network, a bad EHLO name: each at its own line.
  std::string path = writeTemp(head +
                               "[queue]\n"                              // 7
                               "source_ipv4 = \"::1\"\n"                // 8
                               "source_ipv6 = \"127.0.0.1\"\n"          // 9
                               "\n"                                     // 10
                               "[[route]]\n"                            // 11
                               "to = [\"mx\"]\n"                        // 12
                               "source_ipv4 = \"mail.example.test\"\n"  // 13
                               "source_ipv6 = \"::1/128\"\n"            // 14
                               "helo_name = \"bad_name.test\"\n"        // 15
                               "\n"                                     // 16
                               "[[route]]\n"                            // 17
                               "to = [\"mx\"]\n"                        // 18
                               "source_ipv4 = \"10.0.0.0/8\"\n"         // 19
                               "helo_name = \"\"\n");                   // 20
  Errors bad;
  REQUIRE_FALSE(loadConfig(path, bad));
  std::string all = bad.str();
  INFO(all);
  CHECK(has(all, path + ":8: queue.source_ipv4: \"::1\" is an IPv6 address; source_ipv4 takes an IPv4 one"));
  CHECK(has(all, path + ":9: queue.source_ipv6: \"127.0.0.1\" is an IPv4 address; source_ipv6 takes an IPv6 one"));
  CHECK(has(all, path + ":13: [[route]].source_ipv4: \"mail.example.test\" is not an IPv4 address"));
  CHECK(has(all, path + ":14: [[route]].source_ipv6: \"::1/128\" is not an IPv6 address"));
  CHECK(has(all, path + ":15: [[route]].helo_name: \"bad_name.test\": \"_\" is not allowed"));
  CHECK(has(all, path + ":19: [[route]].source_ipv4: \"10.0.0.0/8\" is not an IPv4 address"));
  CHECK(has(all, path + ":20: [[route]].helo_name: \"\": not a host name"));
  unlink(path.c_str());
}

TEST_CASE("a source address this host cannot bind is refused at its line by checkSourceAddresses") {
  const std::string text =
      "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n"
      "[queue]\n"                        // 7
      "source_ipv4 = \"192.0.2.7\"\n"    // 8
      "\n"                               // 9
      "[[route]]\n"                      // 10
      "to = [\"mx\"]\n"                  // 11
      "source_ipv4 = \"127.0.0.2\"\n"    // 12: loopback, this host's
      "source_ipv6 = \"2001:db8::7\"\n"  // 13
      "\n"                               // 14
      "[[route]]\n"                      // 15
      "to = [\"mx\"]\n";                 // 16: inherits 192.0.2.7, reported once, at [queue]
  std::string path = writeTemp(text);
  Errors errors;
  auto c = loadConfig(path, errors);
  REQUIRE(c);  // loadConfig alone does not bind: `moat spf` and `moat queue` need not
  checkSourceAddresses(*c, errors);
  std::string all = errors.str();
  INFO(all);
  CHECK(has(all, path + ":8: queue.source_ipv4: cannot bind 192.0.2.7: Cannot assign requested address"));
  CHECK(has(all, path + ":13: [[route]].source_ipv6: cannot bind 2001:db8::7: Cannot assign requested address"));
  CHECK_FALSE(has(all, "127.0.0.2"));
  CHECK(all.find("192.0.2.7") == all.rfind("192.0.2.7"));  // once
  unlink(path.c_str());
}

TEST_CASE("[[route]] lmtp: targets: HOST:PORT, [IPv6]:PORT and unix:PATH, in order, mistakes as FILE:LINE") {
  const std::string head = "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n";
  std::string path;
  bool loaded = false;
  std::string all = loadErrors(head +
                                   "[[route]]\ndomains = [\"a.test\"]\nto = [\"lmtp:127.0.0.1:24\", "
                                   "\"lmtp:[::1]:2424\", \"lmtp:unix:/run/dovecot/lmtp\", \"lmtp:unix:sock/lmtp\", "
                                   "\"lmtp:mail.a.test:24\", \"smtp:127.0.0.1:2525\"]\n",
                               path, loaded);
  INFO(all);
  REQUIRE(loaded);
  REQUIRE(all.empty());
  Errors errors;
  auto c = loadConfig(path, errors);
  REQUIRE(c);
  const auto& to = c->routes.at(0).to;
  REQUIRE(to.size() == 6);
  using Kind = RouteTarget::Kind;
  CHECK(to[0].kind == Kind::Lmtp);
  CHECK(to[0].host == "127.0.0.1");
  CHECK(to[0].port == 24);
  CHECK(to[0].socket.empty());
  CHECK(to[0].str() == "lmtp:127.0.0.1:24");
  CHECK(to[1].kind == Kind::Lmtp);
  CHECK(to[1].host == "::1");
  CHECK(to[1].port == 2424);
  CHECK(to[1].str() == "lmtp:[::1]:2424");
  CHECK(to[2].kind == Kind::Lmtp);
  CHECK(to[2].socket == "/run/dovecot/lmtp");
  CHECK(to[2].str() == "lmtp:unix:/run/dovecot/lmtp");
  // A relative socket path is relative to the config file's folder, as other paths are.
  std::string dir = path.substr(0, path.rfind('/'));
  CHECK(to[3].socket == dir + "/sock/lmtp");
  CHECK(to[4].host == "mail.a.test");
  CHECK(to[4].isHost());
  CHECK(to[5].kind == Kind::Smtp);
  CHECK(to[5].isHost());
  unlink(path.c_str());

  // LMTP has no default port (RFC 2033 §5): each mistake at its own line.
  all = loadErrors(head +
                       "[[route]]\ndomains = [\"a.test\"]\nto = [\"lmtp:127.0.0.1\"]\n\n"    // 7-9
                       "[[route]]\ndomains = [\"b.test\"]\nto = [\"lmtp:127.0.0.1:0\"]\n\n"  // 11-13
                       "[[route]]\ndomains = [\"c.test\"]\nto = [\"lmtp:[::1]\"]\n\n"        // 15-17
                       "[[route]]\ndomains = [\"d.test\"]\nto = [\"lmtp:unix:\"]\n\n"        // 19-21
                       "[[route]]\ndomains = [\"e.test\"]\nto = [\"lmtp:unix:/" +
                       std::string(120, 'x') +
                       "\"]\n\n"                                                            // 23-25
                       "[[route]]\ndomains = [\"f.test\"]\nto = [\"lmtp:host:99999\"]\n\n"  // 27-29
                       "[[route]]\ndomains = [\"g.test\"]\nto = [\"lmtp\"]\n",              // 31-33
                   path, loaded);
  INFO(all);
  REQUIRE_FALSE(loaded);
  REQUIRE(has(all, path + ":9: [[route]].to: \"lmtp:127.0.0.1\": expected lmtp:HOST:PORT (the port is required)"));
  REQUIRE(has(all, path + ":13: [[route]].to: \"lmtp:127.0.0.1:0\": expected lmtp:HOST:PORT"));
  REQUIRE(has(all, path + ":17: [[route]].to: \"lmtp:[::1]\": expected lmtp:HOST:PORT"));
  REQUIRE(has(all, path + ":21: [[route]].to: \"lmtp:unix:\": expected lmtp:unix:/PATH/TO/SOCKET"));
  REQUIRE(has(all, path + ":25: [[route]].to: \"lmtp:unix:/xxx"));
  REQUIRE(has(all, "the socket path is longer than a Unix socket address holds (107 bytes)"));
  REQUIRE(has(all, path + ":29: [[route]].to: \"lmtp:host:99999\": expected lmtp:HOST:PORT"));
  REQUIRE(has(all, path + ":33: [[route]].to: \"lmtp\": expected smtp:HOST:PORT, lmtp:HOST:PORT"));
  unlink(path.c_str());
}

TEST_CASE("bounce_verification.previous_key_files holds at most 9 files and key_number is 0 to 9") {
  const std::string head =
      "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n[relay]\n"
      "domains = [\"example.test\"]\n\n[bounce_verification]\nenabled = true\nkey_file = \"k0\"\n";
  auto files = [](int n) {
    std::string list = "previous_key_files = [";
    for (int i = 1; i <= n; ++i) list += std::string(i > 1 ? ", " : "") + "\"k" + std::to_string(i) + "\"";
    return list + "]\n";
  };
  auto path = writeTemp(head);
  Errors defaults;
  auto c = loadConfig(path, defaults);
  INFO(defaults.str());
  REQUIRE(c);
  CHECK(c->batvPreviousKeyFiles.empty());
  CHECK(c->batvKeyNumber == 0);
  unlink(path.c_str());

  path = writeTemp(head + files(9) + "key_number = 9\n");
  Errors nine;
  c = loadConfig(path, nine);
  INFO(nine.str());
  REQUIRE(c);
  REQUIRE(c->batvPreviousKeyFiles.size() == 9);
  CHECK(c->batvPreviousKeyFiles[8].path.front() == '/');  // relative to the config's folder
  CHECK(c->batvPreviousKeyFiles[8].line == 13);
  CHECK(c->batvKeyNumber == 9);
  unlink(path.c_str());

  path = writeTemp(head + files(10));
  Errors ten;
  REQUIRE_FALSE(loadConfig(path, ten));
  INFO(ten.str());
  CHECK(ten.str().find(path + ":13: bounce_verification.previous_key_files: names 10 files; at most 9") !=
        std::string::npos);
  unlink(path.c_str());

  path = writeTemp(head + "key_number = 10\n");
  Errors number;
  REQUIRE_FALSE(loadConfig(path, number));
  INFO(number.str());
  CHECK(number.str().find(path + ":13: bounce_verification.key_number: must be between 0 and 9") != std::string::npos);
  unlink(path.c_str());
}

TEST_CASE("[[route]] tls_cert and tls_key: paths beside the config, both or neither, not with tls none") {
  const std::string head =
      "[server]\nhostname = \"mx\"\n\n[[listener]]\naddress = \"127.0.0.1:25\"\n\n[[route]]\n"
      "to = [\"smtp:127.0.0.1:2626\"]\n";
  auto path = writeTemp(head + "tls = \"require\"\ntls_cert = \"certs/gw.pem\"\ntls_key = \"/etc/moat/gw.key\"\n");
  Errors errors;
  auto c = loadConfig(path, errors);
  INFO(errors.str());
  REQUIRE(c);
  const auto& r = c->routes.at(0);
  CHECK(r.tlsCert == c->dir + "/certs/gw.pem");
  CHECK(r.tlsKey == "/etc/moat/gw.key");
  CHECK(r.tlsCertLine == 10);
  unlink(path.c_str());

  path = writeTemp(head);  // default: none
  Errors none;
  c = loadConfig(path, none);
  REQUIRE(c);
  CHECK(c->routes.at(0).tlsCert.empty());
  CHECK(c->routes.at(0).tlsKey.empty());
  unlink(path.c_str());

  for (const char* tls : {"may", "verify", "dane"}) {
    path = writeTemp(head + "tls = \"" + tls + "\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n");
    Errors ok;
    INFO(tls);
    CHECK(loadConfig(path, ok));
    CHECK_FALSE(ok.hasErrors());
    unlink(path.c_str());
  }

  path = writeTemp(head + "tls_cert = \"c.pem\"\n");
  Errors onlyCert;
  REQUIRE_FALSE(loadConfig(path, onlyCert));
  CHECK(onlyCert.str().find(path + ":9: [[route]].tls_cert: tls_cert and tls_key go together") != std::string::npos);
  unlink(path.c_str());

  path = writeTemp(head + "\ntls_key = \"k.pem\"\n");
  Errors onlyKey;
  REQUIRE_FALSE(loadConfig(path, onlyKey));
  CHECK(onlyKey.str().find(path + ":10: [[route]].tls_key: tls_cert and tls_key go together") != std::string::npos);
  unlink(path.c_str());

  path = writeTemp(head + "tls = \"none\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n");
  Errors plain;
  REQUIRE_FALSE(loadConfig(path, plain));
  INFO(plain.str());
  CHECK(plain.str().find(path + ":10: [[route]].tls_cert: tls_cert needs a tls that uses TLS") != std::string::npos);
  unlink(path.c_str());
}
