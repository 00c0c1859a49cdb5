// Tests for policy/config: the keys CONTRACT.md fixes, and errors reported as FILE:LINE.
#include "policy/config.h"

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
  REQUIRE(c->routeFor("example.test")->to.size() == 2);
  REQUIRE(c->routeFor("example.test")->to[1].dir.front() == '/');
  REQUIRE(c->routeFor("elsewhere.test")->to[0].kind == RouteTarget::Kind::Mx);
  REQUIRE(c->retry.size() == 5);
  REQUIRE(c->maxLifetime.count() == 48LL * 3600 * 1000);
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

TEST_CASE("[connection] takes allow and block networks and a rate; mistakes name FILE:LINE") {
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
