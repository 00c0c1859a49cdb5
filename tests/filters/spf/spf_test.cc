// tests/filters/spf/spf_test.cc — unit tests for the SPF filter (RFC 7208): the macro
// examples of §7.4, record syntax and CIDR lengths, the lookup limits of §4.6.4, the
// re-entrancy of check_host with synchronous and deferred DNS answers, and the [spf]
// filter's config (FILE:LINE errors) and replies (RFC 7372) over an in-memory resolver.
#include "filters/spf/spf.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <optional>
#include <string>

#include "filters/spf/record.h"
#include "tests/filters/spf/zone_resolver.h"
#include "tests/support/temp_file.h"

using namespace moat::filters;
using namespace moat::filters::spf;
using moat::mta::IpAddress;
using moat::testing::ZoneResolver;
using RrType = moat::mta::dns::RrType;

namespace {

MacroContext exampleContext(const char* ip) {
  MacroContext ctx;
  ctx.sender = "strong-bad@email.example.com";
  ctx.local = "strong-bad";
  ctx.senderDomain = "email.example.com";
  ctx.domain = "email.example.com";
  ctx.ip = *IpAddress::parse(ip);
  ctx.helo = "mx.example.org";
  ctx.receiver = "mx.example.test";
  return ctx;
}

std::string expand(const std::string& in, const MacroContext& ctx, bool exp = false) {
  std::string out;
  if (!expandMacros(in, ctx, exp, &out)) return "<error>";
  return out;
}

SpfAnswer check(ZoneResolver& zone, const std::string& ip, const std::string& from,
                const std::string& helo = "mail.example.org") {
  CheckParams p;
  p.ip = *IpAddress::parse(ip);
  p.mailFrom = from;
  p.helo = helo;
  std::optional<SpfAnswer> got;
  checkHost(zone, p, [&](SpfAnswer a) { got = std::move(a); });
  zone.runPending();
  REQUIRE(got);
  return *got;
}

std::string writeTemp(const std::string& text) { return moat::test::writeTempFile("spf", text, ".toml"); }

const char* kBaseConfig = "[server]\nhostname = \"mx.example.test\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\n"
                          "[relay]\nnetworks = [\"10.0.0.0/8\"]\n";

}  // namespace

TEST_CASE("RFC 7208 §7.4 macro examples") {
  auto ctx = exampleContext("192.0.2.3");
  CHECK(expand("%{s}", ctx) == "strong-bad@email.example.com");
  CHECK(expand("%{o}", ctx) == "email.example.com");
  CHECK(expand("%{d}", ctx) == "email.example.com");
  CHECK(expand("%{d4}", ctx) == "email.example.com");
  CHECK(expand("%{d3}", ctx) == "email.example.com");
  CHECK(expand("%{d2}", ctx) == "example.com");
  CHECK(expand("%{d1}", ctx) == "com");
  CHECK(expand("%{dr}", ctx) == "com.example.email");
  CHECK(expand("%{d2r}", ctx) == "example.email");
  CHECK(expand("%{l}", ctx) == "strong-bad");
  CHECK(expand("%{l-}", ctx) == "strong.bad");
  CHECK(expand("%{lr}", ctx) == "strong-bad");
  CHECK(expand("%{lr-}", ctx) == "bad.strong");
  CHECK(expand("%{l1r-}", ctx) == "strong");
  CHECK(expand("%{ir}.%{v}._spf.%{d2}", ctx) == "3.2.0.192.in-addr._spf.example.com");
  CHECK(expand("%{lr-}.lp._spf.%{d2}", ctx) == "bad.strong.lp._spf.example.com");
  CHECK(expand("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", ctx) == "bad.strong.lp.3.2.0.192.in-addr._spf.example.com");
  CHECK(expand("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", ctx) == "3.2.0.192.in-addr.strong.lp._spf.example.com");
  CHECK(expand("%{d2}.trusted-domains.example.net", ctx) == "example.com.trusted-domains.example.net");

  // IPv6: a domain name, so compared as DNS compares it (case-insensitively).
  auto ctx6 = exampleContext("2001:db8::cb01");
  CHECK(*normalizeDomain(expand("%{ir}.%{v}._spf.%{d2}", ctx6)) ==
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com");
  CHECK(expand("%{c}", ctx6, true) == "2001:db8::cb01");
}

TEST_CASE("macro escapes, URL-encoding and syntax errors") {
  auto ctx = exampleContext("192.0.2.3");
  CHECK(expand("%{S}", ctx) == "strong-bad%40email.example.com");
  CHECK(expand("a%%b%_c%-d", ctx) == "a%b c%20d");
  CHECK(expand("%{h}", ctx) == "mx.example.org");
  CHECK(expand("%{r}", ctx, true) == "mx.example.test");
  CHECK(expand("%{r}", ctx, false) == "<error>");  // c r t only in exp text (§7.2)
  CHECK(expand("%{t}", ctx, false) == "<error>");
  CHECK(expand("%{x}", ctx) == "<error>");
  CHECK(expand("%{d0}", ctx) == "<error>");
  CHECK(expand("%{d", ctx) == "<error>");
  CHECK(expand("%a", ctx) == "<error>");
  CHECK(expand("100%", ctx) == "<error>");
  CHECK(expand("%{d200}", ctx) == "email.example.com");  // more parts than exist: all of them
  CHECK(expand("%{s=}", ctx) == "strong-bad@email.example.com");  // '=' is a delimiter
  CHECK(usesPtrMacro("%{p}.x"));
  CHECK_FALSE(usesPtrMacro("%%{p}.x"));
}

TEST_CASE("record syntax and dual CIDR lengths") {
  auto rec = parseRecord("v=spf1 a/24//64 mx:example.org/30 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all");
  REQUIRE(rec);
  REQUIRE(rec->mechanisms.size() == 5);
  CHECK(rec->mechanisms[0].cidr4 == 24);
  CHECK(rec->mechanisms[0].cidr6 == 64);
  CHECK(rec->mechanisms[1].domainSpec == "example.org");
  CHECK(rec->mechanisms[1].cidr4 == 30);
  CHECK(rec->mechanisms[1].cidr6 == 128);
  CHECK(rec->mechanisms[2].network->contains(*IpAddress::parse("192.0.2.200")));
  CHECK_FALSE(rec->mechanisms[2].network->contains(*IpAddress::parse("192.0.3.1")));
  CHECK(rec->mechanisms[3].network->contains(*IpAddress::parse("2001:db8:1::5")));
  CHECK(rec->mechanisms[4].qualifier == Qualifier::Fail);

  CHECK_FALSE(parseRecord("v=spf1 ip4:192.0.2.0/33"));
  CHECK_FALSE(parseRecord("v=spf1 a/024"));
  CHECK_FALSE(parseRecord("v=spf1 a//129"));
  CHECK_FALSE(parseRecord("v=spf1 ip6:192.0.2.1"));
  CHECK_FALSE(parseRecord("v=spf1 include:"));
  CHECK_FALSE(parseRecord("v=spf1 a:example.123"));      // numeric top label
  CHECK_FALSE(parseRecord("v=spf1 redirect=a.example redirect=b.example"));
  CHECK_FALSE(parseRecord("v=spf1 exp=a.example exp=b.example"));
  CHECK_FALSE(parseRecord("v=spf1 foo:bar"));              // unknown mechanism
  CHECK(parseRecord("v=spf1 moo=cow -all"));               // unknown modifier: ignored
  CHECK_FALSE(parseRecord("v=spf1 moo=%{x} -all"));        // ...but must be a macro-string
  CHECK(isSpfRecord("V=SPF1"));
  CHECK_FALSE(isSpfRecord("v=spf10 -all"));
}

TEST_CASE("CIDR matching with a and mx over IPv4 and IPv6") {
  ZoneResolver z;
  z.add("example.org", RrType::TXT, "v=spf1 a/24//64 mx/30 -all");
  z.add("example.org", RrType::A, "192.0.2.10");
  z.add("example.org", RrType::AAAA, "2001:db8:1:2::1");
  z.add("example.org", RrType::MX, "10 mx.example.org");
  z.add("mx.example.org", RrType::A, "198.51.100.1");
  CHECK(check(z, "192.0.2.99", "a@example.org").result == SpfResult::Pass);
  CHECK(check(z, "2001:db8:1:2:ffff::9", "a@example.org").result == SpfResult::Pass);
  CHECK(check(z, "2001:db8:1:3::1", "a@example.org").result == SpfResult::Fail);
  CHECK(check(z, "198.51.100.3", "a@example.org").result == SpfResult::Pass);
  CHECK(check(z, "198.51.100.4", "a@example.org").result == SpfResult::Fail);
  // An IPv4-mapped IPv6 client is the IPv4 address.
  CHECK(check(z, "::ffff:192.0.2.77", "a@example.org").result == SpfResult::Pass);
}

TEST_CASE("the 10-lookup limit counts include, a, mx, ptr, exists and redirect") {
  ZoneResolver z;
  std::string ten = "v=spf1";
  for (int i = 0; i < 10; ++i) ten += " a:h" + std::to_string(i) + ".example.org";
  z.add("ten.example.org", RrType::TXT, ten + " ip4:192.0.2.1 -all");
  z.add("eleven.example.org", RrType::TXT, ten + " a:h10.example.org ip4:192.0.2.1 -all");
  z.add("lazy.example.org", RrType::TXT, "v=spf1 ip4:192.0.2.1 " + ten + " a:h10.example.org -all");
  for (int i = 0; i <= 10; ++i) z.add("h" + std::to_string(i) + ".example.org", RrType::A, "203.0.113.1");
  auto a = check(z, "192.0.2.1", "x@ten.example.org");
  CHECK(a.result == SpfResult::Pass);
  CHECK(a.lookups == 10);
  CHECK(check(z, "192.0.2.1", "x@eleven.example.org").result == SpfResult::PermError);
  // Lazy evaluation: terms after the match are never looked at.
  CHECK(check(z, "192.0.2.1", "x@lazy.example.org").result == SpfResult::Pass);

  z.add("r0.example.org", RrType::TXT, "v=spf1 redirect=r1.example.org");
  for (int i = 1; i <= 11; ++i) {
    z.add("r" + std::to_string(i) + ".example.org", RrType::TXT,
          "v=spf1 redirect=r" + std::to_string(i + 1) + ".example.org");
  }
  CHECK(check(z, "192.0.2.1", "x@r0.example.org").result == SpfResult::PermError);
}

TEST_CASE("void lookups, MX and PTR limits") {
  ZoneResolver z;
  z.add("void2.example.org", RrType::TXT, "v=spf1 a:n1.example.org a:n2.example.org ip4:192.0.2.1 -all");
  z.add("void3.example.org", RrType::TXT,
        "v=spf1 a:n1.example.org a:n2.example.org exists:n3.example.org ip4:192.0.2.1 -all");
  CHECK(check(z, "192.0.2.1", "x@void2.example.org").result == SpfResult::Pass);
  CHECK(check(z, "192.0.2.1", "x@void3.example.org").result == SpfResult::PermError);

  z.add("mx11.example.org", RrType::TXT, "v=spf1 mx -all");
  for (int i = 0; i < 11; ++i) z.add("mx11.example.org", RrType::MX, std::to_string(i) + " m" + std::to_string(i) + ".example.org");
  CHECK(check(z, "192.0.2.1", "x@mx11.example.org").result == SpfResult::PermError);

  // Only the first 10 PTR names are validated; the 11th would have matched.
  z.add("ptr.example.org", RrType::TXT, "v=spf1 ptr -all");
  for (int i = 0; i < 11; ++i) {
    std::string n = i == 10 ? "good.ptr.example.org" : "p" + std::to_string(i) + ".elsewhere.example";
    z.add("1.2.0.192.in-addr.arpa", RrType::PTR, n);
    z.add(n, RrType::A, "192.0.2.1");
  }
  CHECK(check(z, "192.0.2.1", "x@ptr.example.org").result == SpfResult::Fail);
}

TEST_CASE("temperror from timeouts, none for malformed domains, include result mapping") {
  ZoneResolver z;
  z.addTimeout("slow.example.org");
  z.add("inc.example.org", RrType::TXT, "v=spf1 include:slow.example.org -all");
  z.add("incnone.example.org", RrType::TXT, "v=spf1 include:nothing.example.org -all");
  z.add("incfail.example.org", RrType::TXT, "v=spf1 include:deny.example.org ?all");
  z.add("deny.example.org", RrType::TXT, "v=spf1 -all");
  CHECK(check(z, "192.0.2.1", "x@slow.example.org").result == SpfResult::TempError);
  CHECK(check(z, "192.0.2.1", "x@inc.example.org").result == SpfResult::TempError);
  CHECK(check(z, "192.0.2.1", "x@incnone.example.org").result == SpfResult::PermError);
  CHECK(check(z, "192.0.2.1", "x@incfail.example.org").result == SpfResult::Neutral);
  CHECK(check(z, "192.0.2.1", "x@[192.0.2.1]").result == SpfResult::None);
  CHECK(check(z, "192.0.2.1", "x@bad..example.org").result == SpfResult::None);
  CHECK(check(z, "192.0.2.1", "x@localhost").result == SpfResult::None);
}

TEST_CASE("exp= text is expanded, the default is used when it cannot be fetched") {
  ZoneResolver z;
  z.add("exp.example.org", RrType::TXT, "v=spf1 -all exp=why.%{d}");
  z.add("why.exp.example.org", RrType::TXT, "%{l} at %{c} may not send for %{o} (%{r})");
  z.add("noexp.example.org", RrType::TXT, "v=spf1 -all exp=missing.example.org");
  CheckParams p;
  p.ip = *IpAddress::parse("192.0.2.1");
  p.mailFrom = "joe@exp.example.org";
  p.receiver = "mx.example.test";
  std::optional<SpfAnswer> got;
  checkHost(z, p, [&](SpfAnswer a) { got = a; });
  REQUIRE(got);
  CHECK(got->result == SpfResult::Fail);
  CHECK(got->explanation == "joe at 192.0.2.1 may not send for exp.example.org (mx.example.test)");
  p.mailFrom = "joe@noexp.example.org";
  p.defaultExplanation = "no: %{i}";
  checkHost(z, p, [&](SpfAnswer a) { got = a; });
  CHECK(got->explanation == "no: 192.0.2.1");
}

TEST_CASE("check_host is re-entrancy safe with deferred and synchronous answers") {
  ZoneResolver z;
  z.add("deep.example.org", RrType::TXT, "v=spf1 include:i1.example.org -all");
  z.add("i1.example.org", RrType::TXT, "v=spf1 mx:m.example.org include:i2.example.org -all");
  z.add("m.example.org", RrType::MX, "10 mx1.example.org");
  z.add("m.example.org", RrType::MX, "20 mx2.example.org");
  z.add("mx1.example.org", RrType::A, "198.51.100.1");
  z.add("mx2.example.org", RrType::A, "198.51.100.2");
  z.add("i2.example.org", RrType::TXT, "v=spf1 ptr:example.org ?all");
  z.add("7.2.0.192.in-addr.arpa", RrType::PTR, "host.example.org");
  z.add("host.example.org", RrType::A, "192.0.2.7");
  for (bool deferred : {false, true}) {
    z.setDeferred(deferred);
    CheckParams p;
    p.ip = *IpAddress::parse("192.0.2.7");
    p.mailFrom = "a@deep.example.org";
    int calls = 0;
    SpfResult r = SpfResult::None;
    checkHost(z, p, [&](SpfAnswer a) {
      ++calls;
      r = a.result;
    });
    if (deferred) CHECK(calls == 0);  // nothing answered yet
    z.runPending();
    CHECK(calls == 1);
    CHECK(r == SpfResult::Pass);
  }
}

TEST_CASE("HELO identity and the null sender") {
  ZoneResolver z;
  z.add("mail.example.org", RrType::TXT, "v=spf1 ip4:192.0.2.0/24 -all");
  CheckParams p;
  p.ip = *IpAddress::parse("192.0.2.5");
  p.helo = "mail.example.org";
  p.mailFrom = "";
  std::optional<SpfAnswer> got;
  checkHelo(z, p, [&](SpfAnswer a) { got = a; });
  REQUIRE(got);
  CHECK(got->result == SpfResult::Pass);
  CHECK(got->domain == "mail.example.org");
  p.ip = *IpAddress::parse("198.51.100.1");
  checkHost(z, p, [&](SpfAnswer a) { got = a; });
  CHECK(got->result == SpfResult::Fail);
  p.helo = "[192.0.2.5]";
  checkHelo(z, p, [&](SpfAnswer a) { got = a; });
  CHECK(got->result == SpfResult::None);
}

TEST_CASE("[spf] config errors are reported with FILE:LINE") {
  auto path = writeTemp(std::string(kBaseConfig) + "[spf]\nfail = \"bounce\"\nbogus = 1\nexplanation = \"%{x}\"\n");
  moat::policy::Errors errors;
  auto config = moat::policy::loadConfig(path, errors);
  REQUIRE(config);
  auto filter = makeSpfFilter(*config, errors);
  CHECK_FALSE(filter);
  std::string all = errors.str();
  INFO(all);
  CHECK(all.find(path + ":8:") != std::string::npos);   // fail
  CHECK(all.find(path + ":9:") != std::string::npos);   // bogus
  CHECK(all.find(path + ":10:") != std::string::npos);  // explanation
  unlink(path.c_str());

  path = writeTemp(std::string(kBaseConfig) + "[spf]\nenabled = false\n");
  moat::policy::Errors e2;
  config = moat::policy::loadConfig(path, e2);
  REQUIRE(config);
  CHECK_FALSE(makeSpfFilter(*config, e2));
  CHECK_FALSE(e2.hasErrors());
  unlink(path.c_str());
}

namespace {
Result runFilter(const std::string& spfSection, ZoneResolver& z, const std::string& ip, const std::string& from,
                 std::shared_ptr<MessageContext>* ctxOut = nullptr, const std::string& helo = "mail.example.org") {
  auto path = writeTemp(std::string(kBaseConfig) + "[spf]\n" + spfSection);
  moat::policy::Errors errors;
  auto config = moat::policy::loadConfig(path, errors);
  unlink(path.c_str());
  REQUIRE(config);
  auto filter = makeSpfFilter(*config, errors);
  REQUIRE(filter);
  CHECK(filter->stage() == Stage::Mail);
  auto ctx = std::make_shared<MessageContext>();
  ctx->clientIp = *IpAddress::parse(ip);
  ctx->helo = helo;
  ctx->mailFrom = from;
  Env env;
  env.resolver = &z;
  env.hostname = "mx.example.test";
  std::optional<Result> got;
  filter->run(ctx, env, [&](Result r) { got = std::move(r); });
  z.runPending();
  REQUIRE(got);
  if (ctxOut) *ctxOut = ctx;
  return *got;
}
}  // namespace

TEST_CASE("the filter's verdicts and RFC 7372 reply codes") {
  ZoneResolver z;
  z.add("example.test", RrType::TXT, "v=spf1 ip4:192.0.2.0/24 -all exp=why.example.test");
  z.add("why.example.test", RrType::TXT, "%{i} is not one of our servers");
  z.add("soft.example.test", RrType::TXT, "v=spf1 ~all");
  z.add("broken.example.test", RrType::TXT, "v=spf1 foo:bar");
  z.addTimeout("slow.example.test");
  z.add("mail.example.org", RrType::TXT, "v=spf1 ip4:192.0.2.0/24 -all");

  std::shared_ptr<MessageContext> ctx;
  auto r = runFilter("", z, "192.0.2.1", "a@example.test", &ctx);
  CHECK(r.verdict == Verdict::Continue);
  REQUIRE(r.authResults.size() == 1);
  CHECK(r.authResults[0] == "spf=pass smtp.mailfrom=example.test");
  CHECK(ctx->spfMailFrom.result == "pass");
  CHECK(ctx->spfMailFrom.identity == "mailfrom");
  CHECK(ctx->spfHelo.result == "pass");

  r = runFilter("fail = \"reject\"\n", z, "198.51.100.1", "a@example.test", &ctx);
  CHECK(r.verdict == Verdict::Reject);
  CHECK(r.code == 550);
  CHECK(r.enhanced == "5.7.23");
  CHECK(r.text == "198.51.100.1 is not one of our servers");
  CHECK(ctx->spfMailFrom.explanation == r.text);

  r = runFilter("", z, "198.51.100.1", "a@example.test");
  CHECK(r.verdict == Verdict::Tag);
  CHECK(r.authResults[0] == "spf=fail smtp.mailfrom=example.test");
  REQUIRE_FALSE(r.headers.empty());
  CHECK(r.headers[0].name == "Received-SPF");
  CHECK(r.headers[0].value.rfind("fail ", 0) == 0);

  r = runFilter("fail = \"none\"\n", z, "198.51.100.1", "a@example.test");
  CHECK(r.verdict == Verdict::Continue);

  r = runFilter("softfail = \"none\"\n", z, "198.51.100.1", "a@soft.example.test");
  CHECK(r.verdict == Verdict::Continue);
  CHECK(r.authResults[0] == "spf=softfail smtp.mailfrom=soft.example.test");

  r = runFilter("", z, "198.51.100.1", "a@slow.example.test");
  CHECK(r.verdict == Verdict::TempFail);
  CHECK(r.code == 451);
  CHECK(r.enhanced == "4.7.24");
  r = runFilter("temperror = \"tag\"\n", z, "198.51.100.1", "a@slow.example.test");
  CHECK(r.verdict == Verdict::Tag);

  r = runFilter("permerror = \"reject\"\n", z, "198.51.100.1", "a@broken.example.test");
  CHECK(r.verdict == Verdict::Reject);
  CHECK(r.code == 550);
  CHECK(r.enhanced == "5.7.24");
  r = runFilter("", z, "198.51.100.1", "a@broken.example.test");
  CHECK(r.verdict == Verdict::Tag);
  CHECK(r.authResults[0] == "spf=permerror smtp.mailfrom=broken.example.test");

  // Null sender: the HELO identity decides.
  r = runFilter("fail = \"reject\"\n", z, "198.51.100.1", "", &ctx);
  CHECK(r.verdict == Verdict::Reject);
  CHECK(r.authResults[0] == "spf=fail smtp.helo=mail.example.org");
  CHECK(ctx->spfMailFrom.identity == "helo");

  // Clients in relay.networks are not checked.
  r = runFilter("fail = \"reject\"\n", z, "10.1.2.3", "a@example.test", &ctx);
  CHECK(r.verdict == Verdict::Continue);
  CHECK_FALSE(ctx->spfMailFrom.checked);
  r = runFilter("fail = \"reject\"\nskip_networks = false\n", z, "10.1.2.3", "a@example.test");
  CHECK(r.verdict == Verdict::Reject);
}

// RFC 8601 §2.2: what the client chose goes into Authentication-Results and Received-SPF
// only as a token, a quoted-string, or neutralized comment text.
TEST_CASE("client-chosen identities are quoted in Authentication-Results and Received-SPF") {
  ZoneResolver z;
  // An address literal: brackets are not token characters.
  auto r = runFilter("", z, "198.51.100.1", "x@[127.0.0.1]");
  REQUIRE(r.authResults.size() == 1);
  CHECK(r.authResults[0] == "spf=none smtp.mailfrom=\"[127.0.0.1]\"");
  // A null sender without a HELO check: the checked "domain" is the raw HELO argument.
  r = runFilter("helo_check = false\n", z, "198.51.100.1", "", nullptr, "x) a=b; (\\y");
  CHECK(r.authResults[0] == "spf=none smtp.helo=\"x) a=b; (\\\\y\"");
  REQUIRE(r.headers.size() == 1);
  const auto& v = r.headers[0].value;
  auto open = v.find('('), close = v.find(')');
  REQUIRE(open != std::string::npos);
  CHECK(v.substr(open, close - open + 1) == "(mx.example.test: domain of x? a=b; ??y)");
  CHECK(v.find("client-ip=198.51.100.1;") == close + 2);
}
