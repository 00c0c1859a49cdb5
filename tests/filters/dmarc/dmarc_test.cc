// Tests for filters/dmarc (RFC 7489): record parsing, Organizational Domains through libpsl,
// strict and relaxed alignment, policy discovery (sp=, np=, several records, TempFail),
// pct sampling, From-field edge cases, trusted forwarders, the filter's replies and its
// [dmarc] config errors with FILE:LINE. DNS is an in-memory Resolver (memory_resolver.h).
#include "filters/dmarc/dmarc.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <optional>
#include <string>

#include "mta/runtime/uv.h"
#include "policy/config.h"
#include "tests/filters/dmarc/memory_resolver.h"
#include "tests/support/temp_file.h"

using namespace moat;
using namespace moat::filters;
using namespace moat::filters::dmarc;
using moat::test::MemoryResolver;

namespace {

std::string message(const std::string& fromLines) {
  return "Received: from x\r\n" + fromLines + "To: a@example.net\r\nSubject: hi\r\n\r\nbody\r\n";
}

SpfOutcome spf(const std::string& result, const std::string& domain) {
  SpfOutcome s;
  s.checked = true;
  s.result = result;
  s.identity = "mailfrom";
  s.domain = domain;
  return s;
}

DkimOutcome dkimSig(const std::string& result, const std::string& domain) {
  DkimOutcome d;
  d.result = result;
  d.domain = domain;
  return d;
}

Evaluation run(MemoryResolver& dns, const std::string& msg, const SpfOutcome& s, const std::vector<DkimOutcome>& d,
               PctDraw draw = {}) {
  std::optional<Evaluation> out;
  evaluate(dns, msg, s, d, [&](Evaluation e) { out = std::move(e); }, std::move(draw));
  dns.runPending();
  REQUIRE(out.has_value());
  return *out;
}

std::string writeTemp(const std::string& text) { return moat::test::writeTempFile("dmarc", text, ".toml"); }

std::shared_ptr<const policy::Config> loadWith(const std::string& dmarcSection, policy::Errors& errors,
                                               std::string* pathOut = nullptr) {
  auto path = writeTemp("[server]\nhostname = \"mx.example.test\"\n\n[[listener]]\naddress = \"127.0.0.1:2525\"\n\n" +
                        dmarcSection);
  if (pathOut) *pathOut = path;
  auto config = policy::loadConfig(path, errors);
  unlink(path.c_str());
  return config;
}

struct FilterRun {
  Result result;
  std::shared_ptr<MessageContext> ctx;
};

FilterRun runFilter(const Filter& f, MemoryResolver& dns, std::shared_ptr<MessageContext> ctx) {
  Env env;
  env.resolver = &dns;
  env.hostname = "mx.example.test";
  std::optional<Result> out;
  f.run(ctx, env, [&](Result r) { out = std::move(r); });
  dns.runPending();
  REQUIRE(out.has_value());
  return {*out, ctx};
}

std::shared_ptr<MessageContext> context(const std::string& msg, const std::string& ip = "203.0.113.5") {
  auto ctx = std::make_shared<MessageContext>();
  ctx->clientIp = *mta::IpAddress::parse(ip);
  ctx->helo = "mail.sender.example";
  auto storage = std::make_shared<std::string>(msg);
  static std::vector<std::shared_ptr<std::string>> keep;  // the view must outlive the run
  keep.push_back(storage);
  ctx->message = *storage;
  return ctx;
}

}  // namespace

TEST_CASE("record parsing: tags, defaults and errors (RFC 7489 6.3)") {
  Record r;
  std::string err;
  REQUIRE(parseRecord("v=DMARC1; p=reject; sp=quarantine; adkim=s; aspf=S; pct=25; fo=1:d; ri=3600; "
                      "rua=mailto:a@example.com!10m, mailto:b@example.com; ruf=mailto:f@example.com",
                      r, err) == ParseStatus::Ok);
  REQUIRE(r.p == "reject");
  REQUIRE(r.sp == "quarantine");
  REQUIRE(r.adkim == "s");
  REQUIRE(r.aspf == "s");
  REQUIRE(r.pct == 25);
  REQUIRE(r.fo == "1:d");
  REQUIRE(r.ri == 3600);
  REQUIRE(r.rua.size() == 2);
  REQUIRE(r.ruf.size() == 1);
  ReportUri uri;
  REQUIRE(parseReportUri(r.rua[0], uri));
  REQUIRE(uri.address == "a@example.com");
  REQUIRE(uri.maxSize == 10u << 20);

  Record d;
  REQUIRE(parseRecord("v=DMARC1;p=none", d, err) == ParseStatus::Ok);
  REQUIRE(d.adkim == "r");
  REQUIRE(d.pct == 100);
  REQUIRE(d.effectiveSp() == "none");
  REQUIRE(d.effectiveNp() == "none");

  Record x;
  REQUIRE(parseRecord("", x, err) == ParseStatus::Empty);
  REQUIRE(parseRecord("v=spf1 -all", x, err) == ParseStatus::BadVersion);
  REQUIRE(parseRecord("k=rsa; p=MIGf", x, err) == ParseStatus::NotDmarc);
  REQUIRE(parseRecord("p=none; v=DMARC1", x, err) == ParseStatus::NotDmarc);
  REQUIRE(parseRecord("v=DMARC2; p=none", x, err) == ParseStatus::BadVersion);
  REQUIRE(parseRecord("v=DMARC1; p=none; reject", x, err) == ParseStatus::BadValue);
  REQUIRE(parseRecord("v=DMARC1; p=none; pct=101", x, err) == ParseStatus::BadValue);
  REQUIRE(parseRecord("v=DMARC1; p=none; p=reject", x, err) == ParseStatus::BadValue);
  REQUIRE(parseRecord("v=DMARC1; rua=mailto:a@example.com", x, err) == ParseStatus::MissingP);
  REQUIRE(parseRecord("v=DMARC1; p=none; future=1", x, err) == ParseStatus::Ok);
  REQUIRE(isDmarcRecord("v=DMARC1; p=none"));
  REQUIRE_FALSE(isDmarcRecord("v=spf1 -all"));
}

TEST_CASE("a report URI size limit too large for 64 bits is no limit, not a wrapped one") {
  // Found by fuzz_records: 16777216t is 2^64 bytes, which wrapped to 0; 999999999t to
  // another number than the one written.
  ReportUri uri;
  REQUIRE(parseReportUri("mailto:a@example.com!16777216t", uri));
  CHECK(uri.maxSize == UINT64_MAX);
  REQUIRE(parseReportUri("mailto:a@example.com!999999999t", uri));
  CHECK(uri.maxSize == UINT64_MAX);
  REQUIRE(parseReportUri("mailto:a@example.com!16777215t", uri));
  CHECK(uri.maxSize == 16777215ull << 40);
  REQUIRE(parseReportUri("mailto:a@example.com!999999999g", uri));
  CHECK(uri.maxSize == 999999999ull << 30);
}

TEST_CASE("organizational domains come from the public suffix list") {
  REQUIRE(organizationalDomain("example.com") == "example.com");
  REQUIRE(organizationalDomain("sub.example.com") == "example.com");
  REQUIRE(organizationalDomain("a.b.Sub.Example.COM.") == "example.com");
  REQUIRE(organizationalDomain("co.uk") == "co.uk");  // a public suffix is its own
  REQUIRE(organizationalDomain("shop.example.co.uk") == "example.co.uk");
  REQUIRE(organizationalDomain("gov") == "gov");
  REQUIRE(organizationalDomain("mail.agency.gov") == "agency.gov");
  REQUIRE(organizationalDomain("x.y.example.test") == "example.test");  // unlisted TLD: the "*" rule
}

TEST_CASE("alignment: strict is the same name, relaxed the same organizational domain") {
  REQUIRE(aligned("mail.example.com", "example.com", false));
  REQUIRE_FALSE(aligned("mail.example.com", "example.com", true));
  REQUIRE(aligned("Example.com.", "example.com", true));
  REQUIRE_FALSE(aligned("example.co.uk", "other.co.uk", false));
  REQUIRE_FALSE(aligned("evil.com", "example.com", false));
}

TEST_CASE("SPF and DKIM alignment honour aspf= and adkim=") {
  MemoryResolver dns;
  dns.addTxt("_dmarc.relaxed.example", "v=DMARC1; p=reject");
  dns.addTxt("_dmarc.strict.example", "v=DMARC1; p=reject; aspf=s; adkim=s");
  auto relaxed = message("From: A <a@relaxed.example>\r\n");
  auto strict = message("From: A <a@strict.example>\r\n");

  auto e = run(dns, relaxed, spf("pass", "bounce.relaxed.example"), {});
  REQUIRE(e.result == "pass");
  REQUIRE(e.spfAligned);
  REQUIRE_FALSE(e.dkimAligned);

  e = run(dns, strict, spf("pass", "bounce.strict.example"), {});
  REQUIRE(e.result == "fail");
  REQUIRE_FALSE(e.spfAligned);
  REQUIRE(e.policy == "reject");
  REQUIRE(e.disposition == "reject");

  e = run(dns, relaxed, spf("fail", "relaxed.example"), {dkimSig("pass", "sig.relaxed.example")});
  REQUIRE(e.result == "pass");
  REQUIRE(e.dkimAligned);
  REQUIRE_FALSE(e.spfAligned);

  e = run(dns, strict, spf("none", ""), {dkimSig("pass", "sig.strict.example")});
  REQUIRE(e.result == "fail");
  e = run(dns, strict, spf("none", ""), {dkimSig("fail", "strict.example"), dkimSig("pass", "strict.example")});
  REQUIRE(e.result == "pass");
  REQUIRE(e.dkimAligned);
  // A passing signature of an unrelated domain does not help.
  e = run(dns, relaxed, spf("softfail", "relaxed.example"), {dkimSig("pass", "evil.example")});
  REQUIRE(e.result == "fail");
}

TEST_CASE("sp= applies to subdomains that rely on the organizational domain's record") {
  MemoryResolver dns;
  dns.addTxt("_dmarc.example.net", "v=DMARC1; p=none; sp=reject");
  dns.addTxt("_dmarc.own.example.net", "v=DMARC1; p=quarantine");
  auto e = run(dns, message("From: <x@mail.example.net>\r\n"), spf("fail", "example.net"), {});
  REQUIRE(e.result == "fail");
  REQUIRE(e.orgRecord);
  REQUIRE(e.recordDomain == "example.net");
  REQUIRE(e.policy == "reject");
  REQUIRE(dns.queries == std::vector<std::string>{"_dmarc.mail.example.net", "_dmarc.example.net"});

  e = run(dns, message("From: <x@example.net>\r\n"), spf("fail", "example.net"), {});
  REQUIRE(e.policy == "none");
  // A subdomain with its own record uses its own p=.
  e = run(dns, message("From: <x@own.example.net>\r\n"), spf("fail", "example.net"), {});
  REQUIRE(e.policy == "quarantine");
  REQUIRE_FALSE(e.orgRecord);
}

TEST_CASE("np= (RFC 9091) applies only to non-existent subdomains") {
  MemoryResolver dns;
  dns.addTxt("_dmarc.example.biz", "v=DMARC1; p=none; sp=quarantine; np=reject");
  dns.addA("real.example.biz", "192.0.2.1");
  auto e = run(dns, message("From: <x@ghost.example.biz>\r\n"), spf("none", ""), {});
  REQUIRE(e.policy == "reject");
  e = run(dns, message("From: <x@real.example.biz>\r\n"), spf("none", ""), {});
  REQUIRE(e.policy == "quarantine");
  dns.tempfail("flaky.example.biz");
  e = run(dns, message("From: <x@flaky.example.biz>\r\n"), spf("none", ""), {});
  REQUIRE(e.policy == "quarantine");  // unknown existence: not treated as non-existent
}

TEST_CASE("discovery: several records, foreign TXT, missing p=, bad values") {
  MemoryResolver dns;
  dns.addTxt("_dmarc.two.example", "v=DMARC1; p=reject");
  dns.addTxt("_dmarc.two.example", "v=DMARC1; p=none");
  dns.addTxt("_dmarc.mixed.example", "v=spf1 -all");
  dns.addTxt("_dmarc.mixed.example", "v=DMARC1; p=quarantine");
  dns.addTxt("_dmarc.norua.example", "v=DMARC1; sp=reject");
  dns.addTxt("_dmarc.rua.example", "v=DMARC1; p=bogus; rua=mailto:r@rua.example");
  dns.addTxt("_dmarc.broken.example", "v=DMARC1; p=reject; adkim=x; fo=2");
  SpfOutcome none = spf("none", "");

  auto e = run(dns, message("From: a@two.example\r\n"), none, {});
  REQUIRE(e.result == "none");
  e = run(dns, message("From: a@mixed.example\r\n"), none, {});
  REQUIRE(e.result == "fail");
  REQUIRE(e.policy == "quarantine");
  e = run(dns, message("From: a@norua.example\r\n"), none, {});
  REQUIRE(e.result == "none");
  e = run(dns, message("From: a@rua.example\r\n"), none, {});
  REQUIRE(e.result == "fail");
  REQUIRE(e.policy == "none");
  // An invalid tag other than p/sp is ignored (its default kept): the policy still applies.
  e = run(dns, message("From: a@broken.example\r\n"), none, {});
  REQUIRE(e.result == "fail");
  REQUIRE(e.policy == "reject");
  REQUIRE(e.record.adkim == "r");
  e = run(dns, message("From: a@nothing.example\r\n"), none, {});
  REQUIRE(e.result == "none");
}

TEST_CASE("pct= sampling: a failing message left out gets the next-lower policy") {
  MemoryResolver dns;
  dns.addTxt("_dmarc.half.example", "v=DMARC1; p=reject; pct=50");
  dns.addTxt("_dmarc.halfq.example", "v=DMARC1; p=quarantine; pct=50");
  dns.addTxt("_dmarc.zero.example", "v=DMARC1; p=reject; pct=0");
  SpfOutcome bad = spf("fail", "elsewhere.example");
  int draws = 0;
  auto drawOf = [&draws](int v) { return [v, &draws] { ++draws; return v; }; };

  auto e = run(dns, message("From: a@half.example\r\n"), bad, {}, drawOf(49));
  REQUIRE(e.disposition == "reject");
  REQUIRE_FALSE(e.pctSampledOut);
  e = run(dns, message("From: a@half.example\r\n"), bad, {}, drawOf(50));
  REQUIRE(e.disposition == "quarantine");
  REQUIRE(e.pctSampledOut);
  REQUIRE(e.policy == "reject");
  e = run(dns, message("From: a@halfq.example\r\n"), bad, {}, drawOf(99));
  REQUIRE(e.disposition == "none");
  e = run(dns, message("From: a@zero.example\r\n"), bad, {}, drawOf(0));
  REQUIRE(e.disposition == "quarantine");
  REQUIRE(draws == 4);
  // A pass never draws.
  e = run(dns, message("From: a@half.example\r\n"), spf("pass", "half.example"), {}, drawOf(0));
  REQUIRE(draws == 4);
  // The default draw stays in range: over many runs both outcomes appear.
  int out = 0;
  for (int i = 0; i < 200; ++i) out += run(dns, message("From: a@half.example\r\n"), bad, {}).pctSampledOut;
  REQUIRE(out > 0);
  REQUIRE(out < 200);
}

TEST_CASE("From fields: several mailboxes, several fields, none, and junk") {
  std::string err;
  REQUIRE(fromDomains(message("From: \"Doe, John\" <j@Example.COM>\r\n"), err) == std::vector<std::string>{"example.com"});
  REQUIRE(err.empty());
  REQUIRE(fromDomains(message("From: a@one.example,\r\n b@two.example, c@ONE.example\r\n"), err) ==
          std::vector<std::string>{"one.example", "two.example"});
  REQUIRE(fromDomains(message("From: a@one.example\r\nFROM : b@two.example\r\n"), err) ==
          std::vector<std::string>{"one.example", "two.example"});
  REQUIRE(fromDomains(message("From: (x@comment.example) real@domain.example\r\n"), err) ==
          std::vector<std::string>{"domain.example"});
  REQUIRE(fromDomains("From: a@lf.example\nSubject: x\n\nFrom: b@body.example\n", err) ==
          std::vector<std::string>{"lf.example"});
  fromDomains(message(""), err);
  REQUIRE(err == "no From header field");
  fromDomains(message("From: \"Just a name\"\r\n"), err);
  REQUIRE_FALSE(err.empty());
  fromDomains(message("From: a@[192.0.2.1]\r\n"), err);
  REQUIRE_FALSE(err.empty());

  MemoryResolver dns;
  dns.addTxt("_dmarc.lax.example", "v=DMARC1; p=none");
  dns.addTxt("_dmarc.strict.example", "v=DMARC1; p=reject");
  // Two authors: one passes, one fails under p=reject: the strictest outcome wins, in either order.
  for (auto from : {"From: a@lax.example, b@strict.example\r\n", "From: b@strict.example\r\nFrom: a@lax.example\r\n"}) {
    auto e = run(dns, message(from), spf("pass", "lax.example"), {});
    REQUIRE(e.result == "fail");
    REQUIRE(e.fromDomain == "strict.example");
    REQUIRE(e.policy == "reject");
    REQUIRE(e.fromDomains.size() == 2);
  }
  auto e = run(dns, message(""), spf("pass", "lax.example"), {});
  REQUIRE(e.result == "permerror");
  REQUIRE(e.fromDomain.empty());
}

TEST_CASE("DNS TempFail gives temperror, at the From domain and at the organizational domain") {
  MemoryResolver dns;
  dns.tempfail("_dmarc.flaky.example");
  dns.tempfail("_dmarc.example.org");
  auto e = run(dns, message("From: a@flaky.example\r\n"), spf("pass", "flaky.example"), {});
  REQUIRE(e.result == "temperror");
  e = run(dns, message("From: a@sub.example.org\r\n"), spf("pass", "sub.example.org"), {});
  REQUIRE(e.result == "temperror");
  REQUIRE_FALSE(e.reason.empty());
}

TEST_CASE("answers may arrive later (deferred resolver)") {
  MemoryResolver dns;
  dns.deferred = true;
  dns.addTxt("_dmarc.example.org", "v=DMARC1; p=reject; sp=quarantine");
  std::optional<Evaluation> out;
  evaluate(dns, message("From: a@x.example.org\r\n"), spf("fail", "x.example.org"), {},
           [&](Evaluation e) { out = e; });
  REQUIRE_FALSE(out.has_value());
  REQUIRE(dns.runPending() == 2);
  REQUIRE(out.has_value());
  REQUIRE(out->policy == "quarantine");
}

TEST_CASE("the filter: replies, quarantine, tag, Authentication-Results and ctx->dmarc") {
  MemoryResolver dns;
  dns.addTxt("_dmarc.rej.example", "v=DMARC1; p=reject");
  dns.addTxt("_dmarc.quar.example", "v=DMARC1; p=quarantine");
  dns.tempfail("_dmarc.flaky.example");
  auto filter = makeDmarcFilter(FilterConfig{});
  REQUIRE(filter->name() == "dmarc");
  REQUIRE(filter->stage() == Stage::Data);

  auto ctx = context(message("From: a@rej.example\r\n"));
  ctx->spfMailFrom = spf("fail", "rej.example");
  auto r = runFilter(*filter, dns, ctx);
  REQUIRE(r.result.verdict == Verdict::Reject);
  REQUIRE(r.result.code == 550);
  REQUIRE(r.result.enhanced == "5.7.1");
  REQUIRE(r.result.summary == "fail");
  REQUIRE(r.result.authResults ==
          std::vector<std::string>{"dmarc=fail (p=reject dis=reject) header.from=rej.example policy.dmarc=reject"});
  REQUIRE(ctx->dmarc.checked);
  REQUIRE(ctx->dmarc.result == "fail");
  REQUIRE(ctx->dmarc.applied == "reject");

  ctx = context(message("From: a@rej.example\r\n"));
  ctx->dkim = {dkimSig("pass", "rej.example")};
  r = runFilter(*filter, dns, ctx);
  REQUIRE(r.result.verdict == Verdict::Continue);
  REQUIRE(r.result.authResults[0] == "dmarc=pass (p=reject dis=none) header.from=rej.example policy.dmarc=reject");

  ctx = context(message("From: a@quar.example\r\n"));
  r = runFilter(*filter, dns, ctx);
  REQUIRE(r.result.verdict == Verdict::Quarantine);
  REQUIRE(ctx->dmarc.applied == "quarantine");

  ctx = context(message("From: a@flaky.example\r\n"));
  r = runFilter(*filter, dns, ctx);
  REQUIRE(r.result.verdict == Verdict::TempFail);
  REQUIRE(r.result.code == 451);
  REQUIRE(r.result.enhanced == "4.4.3");
  REQUIRE(r.result.authResults[0].rfind("dmarc=temperror", 0) == 0);

  FilterConfig soft;
  soft.rejectAction = "tag";
  soft.quarantineAction = "tag";
  soft.temperror = "tag";
  auto tagging = makeDmarcFilter(soft);
  for (auto from : {"rej", "quar", "flaky"}) {
    ctx = context(message(std::string("From: a@") + from + ".example\r\n"));
    r = runFilter(*tagging, dns, ctx);
    REQUIRE(r.result.verdict == Verdict::Tag);
    REQUIRE(ctx->dmarc.applied == "tag");
  }
  FilterConfig q;
  q.rejectAction = "quarantine";
  ctx = context(message("From: a@rej.example\r\n"));
  r = runFilter(*makeDmarcFilter(q), dns, ctx);
  REQUIRE(r.result.verdict == Verdict::Quarantine);

  // Outbound mail is not checked.
  ctx = context(message("From: a@rej.example\r\n"));
  ctx->authenticated = true;
  r = runFilter(*filter, dns, ctx);
  REQUIRE(r.result.verdict == Verdict::Continue);
  REQUIRE(r.result.authResults.empty());
  REQUIRE_FALSE(ctx->dmarc.checked);
  ctx = context(message("From: a@rej.example\r\n"));
  ctx->fromRelayNetwork = true;
  r = runFilter(*filter, dns, ctx);
  REQUIRE(r.result.summary == "skipped");
}

TEST_CASE("trusted forwarders: reported, never enforced") {
  MemoryResolver dns;
  dns.addTxt("_dmarc.rej.example", "v=DMARC1; p=reject");
  policy::Errors errors;
  auto config = loadWith("[dmarc]\ntrusted_forwarders = [\"192.0.2.0/24\", \"lists.example.org\"]\n", errors);
  REQUIRE(config);
  auto filter = makeDmarcFilter(*config, errors);
  REQUIRE(filter);
  REQUIRE_FALSE(errors.hasErrors());

  auto ctx = context(message("From: a@rej.example\r\n"), "192.0.2.77");
  auto r = runFilter(*filter, dns, ctx);
  REQUIRE(r.result.verdict == Verdict::Continue);
  REQUIRE(r.result.summary == "fail");
  REQUIRE(ctx->dmarc.applied == "override");
  REQUIRE(r.result.authResults[0] ==
          "dmarc=fail (p=reject dis=none reason=trusted_forwarder) header.from=rej.example policy.dmarc=reject");

  ctx = context(message("From: a@rej.example\r\n"));
  ctx->spfMailFrom = spf("pass", "bounces.lists.example.org");
  r = runFilter(*filter, dns, ctx);
  REQUIRE(ctx->dmarc.applied == "override");
  REQUIRE(ctx->dmarc.disposition == "none");  // what an aggregate report shows (RFC 7489 §7.2)
  REQUIRE(ctx->dmarc.overrideReason == "trusted_forwarder");

  // A HELO name alone is chosen by the client: no override.
  ctx = context(message("From: a@rej.example\r\n"));
  ctx->helo = "lists.example.org";
  ctx->spfHelo.result = "fail";
  ctx->spfHelo.domain = "lists.example.org";
  r = runFilter(*filter, dns, ctx);
  REQUIRE(r.result.verdict == Verdict::Reject);
}

TEST_CASE("a passing ARC chain from a trusted sealer overrides reject and quarantine, nothing else does") {
  MemoryResolver dns;
  dns.addTxt("_dmarc.rej.example", "v=DMARC1; p=reject");
  dns.addTxt("_dmarc.quar.example", "v=DMARC1; p=quarantine");
  policy::Errors errors;
  auto config = loadWith("", errors);
  REQUIRE(config);
  auto filter = makeDmarcFilter(*config, errors);
  REQUIRE(filter);
  auto arc = [](const std::string& result, bool trusted) {
    ArcOutcome a;
    a.checked = true;
    a.result = result;
    a.sealer = "lists.example.org";
    a.instances = 2;
    a.trusted = trusted;
    return a;
  };
  for (const char* domain : {"rej.example", "quar.example"}) {
    auto ctx = context(message(std::string("From: a@") + domain + "\r\n"));
    ctx->arc = arc("pass", true);
    auto r = runFilter(*filter, dns, ctx);
    INFO(domain);
    REQUIRE(r.result.verdict == Verdict::Continue);
    REQUIRE(r.result.summary == "fail");  // the A-R still says dmarc=fail
    REQUIRE(r.result.authResults[0].find("dmarc=fail (p=") == 0);
    REQUIRE(r.result.authResults[0].find("dis=none reason=trusted_forwarder") != std::string::npos);
    REQUIRE(ctx->dmarc.applied == "override");
    REQUIRE(ctx->dmarc.disposition == "none");
    REQUIRE(ctx->dmarc.overrideReason == "trusted_forwarder");
    REQUIRE(ctx->dmarc.overrideComment == "arc=pass sealer=lists.example.org");
    std::string detail = r.result.detail.str();
    REQUIRE(detail.find("\"override\":\"arc\"") != std::string::npos);
    REQUIRE(detail.find("\"arc_sealer\":\"lists.example.org\"") != std::string::npos);
  }
  // A sealer not trusted, or a chain that did not pass: the policy applies as before.
  for (auto a : {arc("pass", false), arc("fail", true), arc("none", false)}) {
    auto ctx = context(message("From: a@rej.example\r\n"));
    ctx->arc = a;
    auto r = runFilter(*filter, dns, ctx);
    REQUIRE(r.result.verdict == Verdict::Reject);
    REQUIRE(r.result.code == 550);
    REQUIRE(ctx->dmarc.overrideComment.empty());
  }
}

TEST_CASE("the outcome keeps the record, disposition and override reason aggregate reports need") {
  MemoryResolver dns;
  dns.addTxt("_dmarc.rej.example", "v=DMARC1; p=reject; sp=quarantine; adkim=s; fo=1; rua=mailto:a@rej.example");
  dns.addTxt("_dmarc.pct.example", "v=DMARC1; p=reject; pct=10");
  auto filter = makeDmarcFilter(FilterConfig{}, [] { return 99; });  // every pct= draw samples out

  auto ctx = context(message("From: a@rej.example\r\n"));
  ctx->spfMailFrom = spf("pass", "rej.example");
  runFilter(*filter, dns, ctx);
  REQUIRE(ctx->dmarc.result == "pass");
  REQUIRE(ctx->dmarc.recordDomain == "rej.example");
  REQUIRE(ctx->dmarc.p == "reject");
  REQUIRE(ctx->dmarc.sp == "quarantine");
  REQUIRE(ctx->dmarc.adkim == "s");
  REQUIRE(ctx->dmarc.aspf == "r");
  REQUIRE(ctx->dmarc.fo == "1");
  REQUIRE(ctx->dmarc.pct == 100);
  REQUIRE(ctx->dmarc.spfAligned);
  REQUIRE_FALSE(ctx->dmarc.dkimAligned);
  REQUIRE(ctx->dmarc.disposition == "none");
  REQUIRE(ctx->dmarc.overrideReason.empty());

  // A subdomain: the Organizational Domain's record is the policy domain.
  ctx = context(message("From: a@sub.rej.example\r\n"));
  runFilter(*filter, dns, ctx);
  REQUIRE(ctx->dmarc.result == "fail");
  REQUIRE(ctx->dmarc.recordDomain == "rej.example");
  REQUIRE(ctx->dmarc.disposition == "quarantine");
  REQUIRE(ctx->dmarc.overrideReason.empty());

  // pct= left the message out: one step lower, "sampled_out".
  ctx = context(message("From: a@pct.example\r\n"));
  runFilter(*filter, dns, ctx);
  REQUIRE(ctx->dmarc.disposition == "quarantine");
  REQUIRE(ctx->dmarc.pct == 10);
  REQUIRE(ctx->dmarc.overrideReason == "sampled_out");

  // The config acts more mildly than the record asks: "local_policy".
  FilterConfig mild;
  mild.rejectAction = "tag";
  ctx = context(message("From: a@rej.example\r\n"));
  runFilter(*makeDmarcFilter(mild), dns, ctx);
  REQUIRE(ctx->dmarc.disposition == "none");
  REQUIRE(ctx->dmarc.overrideReason == "local_policy");

  // No record: nothing for a report.
  ctx = context(message("From: a@norecord.example\r\n"));
  runFilter(*filter, dns, ctx);
  REQUIRE(ctx->dmarc.result == "none");
  REQUIRE(ctx->dmarc.recordDomain.empty());
}

TEST_CASE("[dmarc] config: defaults, disabled, and errors with FILE:LINE") {
  policy::Errors errors;
  auto config = loadWith("", errors);
  REQUIRE(config);
  auto c = readConfig(*config, errors);
  REQUIRE(c.enabled);
  REQUIRE(c.rejectAction == "reject");
  REQUIRE(c.quarantineAction == "quarantine");
  REQUIRE(c.temperror == "tempfail");
  REQUIRE_FALSE(errors.hasErrors());

  config = loadWith("[dmarc]\nenabled = false\n", errors);
  REQUIRE(makeDmarcFilter(*config, errors) == nullptr);
  REQUIRE_FALSE(errors.hasErrors());

  std::string path;
  config = loadWith("[dmarc]\nreject_action = \"drop\"\nquarantine_action = \"reject\"\n"
                    "trusted_forwarders = [\"not a name!\"]\ntemperor = \"tag\"\n",
                    errors, &path);
  REQUIRE(config);
  REQUIRE(makeDmarcFilter(*config, errors) == nullptr);
  REQUIRE(errors.hasErrors());
  auto text = errors.str();
  INFO(text);
  REQUIRE(text.find(path + ":8:") != std::string::npos);   // reject_action
  REQUIRE(text.find(path + ":9:") != std::string::npos);   // quarantine_action
  REQUIRE(text.find(path + ":10:") != std::string::npos);  // trusted_forwarders
  REQUIRE(text.find(path + ":11:") != std::string::npos);  // the typo
  REQUIRE(text.find("temperor") != std::string::npos);
}

// The audit's bypass (finding 1): one unusable address anywhere in the From fields made the
// whole check a permerror, and a forged p=reject author beside it was delivered.
TEST_CASE("junk in From never hides a usable author domain from the policy") {
  std::vector<std::string> manyDomains;
  std::string many = "From: ";
  for (int i = 0; i < 16; ++i) many += "a@d" + std::to_string(i) + ".attacker.example, ";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"empty domain", "From: CEO <ceo@bank.example>, x@\r\n"},
      {"address literal", "From: CEO <ceo@bank.example>, postmaster@[127.0.0.1]\r\n"},
      {"bad domain", "From: CEO <ceo@bank.example>, x@bad..domain\r\n"},
      {"second From without address", "From: CEO <ceo@bank.example>\r\nFrom: undisclosed\r\n"},
      {"second From empty group", "From: CEO <ceo@bank.example>\r\nFrom: undisclosed-recipients:;\r\n"},
      {"junk first", "From: x@\r\nFrom: CEO <ceo@bank.example>\r\n"},
      {"8-bit junk",
       "From: CEO <ceo@bank.example>, x@b\xff"
       "d.example\r\n"},
      {"unbalanced quote", "From: \"CEO <ceo@bank.example>\r\n"},
      {"unclosed comment", "From: (CEO <ceo@bank.example>\r\n"},
      {"bank first of 17", "From: ceo@bank.example, " + many.substr(6) + "\r\n"},
  };
  MemoryResolver dns;
  dns.addTxt("_dmarc.bank.example", "v=DMARC1; p=reject");
  for (const auto& [name, from] : cases) {
    INFO(name);
    std::string err;
    auto domains = fromDomains(message(from), err);
    REQUIRE(std::find(domains.begin(), domains.end(), "bank.example") != domains.end());
    REQUIRE_FALSE(err.empty());
    auto e = run(dns, message(from), spf("pass", "attacker.example"), {});
    REQUIRE(e.result == "fail");
    REQUIRE(e.fromDomain == "bank.example");
    REQUIRE(e.disposition == "reject");
    REQUIRE_FALSE(e.malformedFrom);
    auto ctx = context(message(from));
    ctx->spfMailFrom = spf("pass", "attacker.example");
    auto r = runFilter(*makeDmarcFilter(FilterConfig{}), dns, ctx);
    REQUIRE(r.result.verdict == Verdict::Reject);
  }
  // The same junk beside a domain that passes changes nothing.
  auto e = run(dns, message("From: CEO <ceo@bank.example>, x@\r\n"), spf("pass", "bank.example"), {});
  REQUIRE(e.result == "pass");
}

TEST_CASE("a From with no usable author domain is malformed, not 'no policy'") {
  MemoryResolver dns;
  dns.addTxt("_dmarc.bank.example", "v=DMARC1; p=reject");
  // More distinct domains than are evaluated, the forged one last: it cannot escape.
  std::string many = "From: ";
  for (int i = 0; i < 16; ++i) many += "a@d" + std::to_string(i) + ".attacker.example, ";
  many += "ceo@bank.example\r\n";
  auto authors = fromAuthors(message(many));
  REQUIRE(authors.tooMany);
  REQUIRE(authors.domains.size() == kMaxFromDomains);

  for (const auto& from : {std::string("From: x@, y@[192.0.2.1]\r\n"), std::string("From: a@b\xff.example\r\n"),
                           std::string("From: x@\r\nFrom: undisclosed\r\n"), many}) {
    INFO(from);
    auto e = run(dns, message(from), spf("pass", "attacker.example"), {});
    REQUIRE(e.result == "permerror");
    REQUIRE(e.malformedFrom);
    REQUIRE(e.fromDomain.empty());

    auto ctx = context(message(from));
    ctx->spfMailFrom = spf("pass", "attacker.example");
    auto r = runFilter(*makeDmarcFilter(FilterConfig{}), dns, ctx);
    REQUIRE(r.result.verdict == Verdict::Reject);
    REQUIRE(r.result.code == 550);
    REQUIRE(r.result.enhanced == "5.7.1");
    REQUIRE(r.result.text.find("malformed From") != std::string::npos);
    REQUIRE(ctx->dmarc.applied == "reject");
  }
  // No From field, or no address in it: no domain is named, so none can be impersonated.
  // A permerror, delivered whatever malformed_from says.
  for (const auto& from :
       {std::string(""), std::string("From: undisclosed\r\n"), std::string("From: undisclosed-recipients:;\r\n"),
        std::string("From: \"Only a name\"\r\n")}) {
    INFO(from);
    auto e = run(dns, message(from), spf("pass", "attacker.example"), {});
    REQUIRE(e.result == "permerror");
    REQUIRE_FALSE(e.malformedFrom);
    REQUIRE(e.reason == (from.empty() ? "no From header field" : "no address in From"));
    auto ctx = context(message(from));
    auto r = runFilter(*makeDmarcFilter(FilterConfig{}), dns, ctx);
    REQUIRE(r.result.verdict == Verdict::Continue);
    REQUIRE(r.result.authResults[0] == "dmarc=permerror (" + e.reason + ")");
  }

  // malformed_from = "quarantine" / "tag"; a trusted forwarder is exempt.
  FilterConfig q;
  q.malformedFrom = "quarantine";
  auto ctx = context(message("From: x@\r\n"));
  auto r = runFilter(*makeDmarcFilter(q), dns, ctx);
  REQUIRE(r.result.verdict == Verdict::Quarantine);
  REQUIRE(r.result.authResults[0] == "dmarc=permerror (no usable author domain in From dis=quarantine)");
  FilterConfig tag;
  tag.malformedFrom = "tag";
  ctx = context(message("From: x@\r\n"));
  r = runFilter(*makeDmarcFilter(tag), dns, ctx);
  REQUIRE(r.result.verdict == Verdict::Tag);
  REQUIRE(r.result.authResults[0] == "dmarc=permerror (no usable author domain in From)");
  FilterConfig fwd;
  fwd.forwarderNetworks.push_back(*mta::Network::parse("203.0.113.0/24"));
  ctx = context(message("From: x@\r\n"));
  r = runFilter(*makeDmarcFilter(fwd), dns, ctx);
  REQUIRE(r.result.verdict == Verdict::Continue);
  REQUIRE(ctx->dmarc.applied == "override");

  policy::Errors errors;
  auto config = loadWith("[dmarc]\nmalformed_from = \"tag\"\n", errors);
  REQUIRE(config);
  REQUIRE(readConfig(*config, errors).malformedFrom == "tag");
  REQUIRE_FALSE(errors.hasErrors());
  config = loadWith("[dmarc]\nmalformed_from = \"accept\"\n", errors);
  REQUIRE(config);
  REQUIRE(makeDmarcFilter(*config, errors) == nullptr);
  REQUIRE(errors.hasErrors());
}

// Finding 2: RFC 8616 §4-5. A U-label From domain is looked up, aligned and matched
// against the public suffix list as A-labels.
TEST_CASE("internationalized domains are A-labels for lookup, alignment and the PSL") {
  REQUIRE(normalizeDomain("b\xc3\xbc"
                          "cher.test") == "xn--bcher-kva.test");
  REQUIRE(normalizeDomain("B\xc3\x9c"
                          "CHER.Test.") == "xn--bcher-kva.test");
  REQUIRE(normalizeDomain("XN--BCHER-KVA.test") == "xn--bcher-kva.test");
  REQUIRE(normalizeDomain("b\xfc"
                          "cher.test")
              .empty());  // Latin-1, not UTF-8
  REQUIRE_FALSE(
      validDomain("b\xc3\xbc"
                  "cher.test"));  // raw 8-bit is never usable as it is
  REQUIRE(validDomain("xn--bcher-kva.test"));
  // 公司.cn is a public suffix: its A-label form must be recognized too.
  REQUIRE(organizationalDomain("mail.shop.\xe5\x85\xac\xe5\x8f\xb8.cn") == "shop.xn--55qx5d.cn");
  REQUIRE(organizationalDomain("mail.shop.xn--55qx5d.cn") == "shop.xn--55qx5d.cn");
  REQUIRE(aligned("mail.xn--bcher-kva.test",
                  "b\xc3\xbc"
                  "cher.test",
                  false));
  REQUIRE(aligned("xn--bcher-kva.test",
                  "B\xc3\x9c"
                  "cher.test",
                  true));

  MemoryResolver dns;
  dns.addTxt("_dmarc.xn--bcher-kva.test", "v=DMARC1; p=reject");
  auto forged = message(
      "From: CEO <ceo@b\xc3\xbc"
      "cher.test>\r\n");
  std::string err;
  REQUIRE(fromDomains(forged, err) == std::vector<std::string>{"xn--bcher-kva.test"});
  REQUIRE(err.empty());
  auto e = run(dns, forged, spf("pass", "attacker.example"), {});
  REQUIRE(e.result == "fail");
  REQUIRE(e.policy == "reject");
  REQUIRE(e.fromDomain == "xn--bcher-kva.test");
  REQUIRE(dns.queries.front() == "_dmarc.xn--bcher-kva.test");
  // Signed by the domain (d= in A-labels, as DKIM requires): aligned with the U-label From.
  e = run(dns, forged, spf("none", ""), {dkimSig("pass", "xn--bcher-kva.test")});
  REQUIRE(e.result == "pass");
  REQUIRE(e.dkimAligned);
  // ...and an SPF pass for a U-label MAIL FROM domain (SMTPUTF8) aligns as well.
  e = run(dns, forged,
          spf("pass",
              "bounce.b\xc3\xbc"
              "cher.test"),
          {});
  REQUIRE(e.result == "pass");
  REQUIRE(e.spfAligned);
  // A name that is not a valid IDN is an unusable domain.
  e = run(dns, message("From: x@\xf0\x9f\x98\x80.test\r\n"), spf("none", ""), {});
  REQUIRE(e.result == "permerror");
  REQUIRE(e.malformedFrom);
}

// Finding 5: RFC 7489 §6.6.3 discards a record only for its p=/sp=.
TEST_CASE("a record with an invalid secondary tag still applies its policy") {
  MemoryResolver dns;
  dns.addTxt("_dmarc.pct.example", "v=DMARC1; p=reject; pct=50.5");
  dns.addTxt("_dmarc.fo.example", "v=DMARC1; p=reject; fo=2");
  dns.addTxt("_dmarc.ri.example", "v=DMARC1; p=quarantine; ri=1d");
  dns.addTxt("_dmarc.junk.example", "v=DMARC1; p=reject; ri=5; ri=x");
  dns.addTxt("_dmarc.notags.example", "v=DMARC1; p=reject; reject");
  dns.addTxt("_dmarc.badp.example", "v=DMARC1; p=bogus; pct=50.5; rua=mailto:r@badp.example");
  dns.addTxt("_dmarc.badsp.example", "v=DMARC1; p=reject; sp=bogus");
  for (const std::string d : {"pct", "fo", "ri", "junk"}) {
    INFO(d);
    auto e = run(dns, message("From: a@" + d + ".example\r\n"), spf("fail", d + ".example"), {});
    REQUIRE(e.result == "fail");
    REQUIRE(e.policy == (d == "ri" ? "quarantine" : "reject"));
    REQUIRE(e.record.pct == 100);
    REQUIRE(e.record.fo == "0");
    REQUIRE(e.record.ri == (d == "junk" ? 5u : 86400u));  // a repeated tag: the first counts
    REQUIRE_FALSE(e.problem.empty());                     // logged
    REQUIRE_FALSE(e.pctSampledOut);
  }
  // Text that is not a tag-list is not a record anyone can rely on.
  auto e = run(dns, message("From: a@notags.example\r\n"), spf("fail", "notags.example"), {});
  REQUIRE(e.result == "permerror");
  // An invalid p= with a valid rua=: p=none (§6.6.3 step 6.1); an invalid sp= without: none.
  e = run(dns, message("From: a@badp.example\r\n"), spf("fail", "badp.example"), {});
  REQUIRE(e.result == "fail");
  REQUIRE(e.policy == "none");
  e = run(dns, message("From: a@badsp.example\r\n"), spf("fail", "badsp.example"), {});
  REQUIRE(e.result == "none");
}

// Finding 9: the client's From text (and a DNS publisher's record text) stays out of the
// Authentication-Results comment.
TEST_CASE("the dmarc resinfo never carries the client's or the publisher's text") {
  MemoryResolver dns;
  dns.addTxt("_dmarc.rua.example", "v=DMARC1; p=bogus(x; dmarc=pass)");
  FilterConfig tag;
  tag.malformedFrom = "tag";
  auto ctx = context(message("From: undisclosed; dmarc=pass header.from=bank.example\r\n"));
  auto r = runFilter(*makeDmarcFilter(FilterConfig{}), dns, ctx);
  REQUIRE(r.result.authResults == std::vector<std::string>{"dmarc=permerror (no address in From)"});
  REQUIRE(r.result.detail.str().find("undisclosed; dmarc=pass") != std::string::npos);  // logged
  ctx = context(message("From: x@(y); dmarc=pass header.from=bank.example\r\n"));
  r = runFilter(*makeDmarcFilter(tag), dns, ctx);
  REQUIRE(r.result.authResults == std::vector<std::string>{"dmarc=permerror (no usable author domain in From)"});

  ctx = context(message("From: a@rua.example\r\n"));
  r = runFilter(*makeDmarcFilter(tag), dns, ctx);
  REQUIRE(r.result.authResults ==
          std::vector<std::string>{"dmarc=none (DMARC record without a valid p= ignored) header.from=rua.example"});
}

TEST_CASE("the filter reads the From fields of a large header section off the loop") {
  // A client could otherwise stall every session with tens of megabytes of header fields:
  // past filters::kInlineHeaderBytes the From fields are read on the pool, and the result
  // is the one the loop would have given.
  MemoryResolver dns;
  dns.addTxt("_dmarc.rej.example", "v=DMARC1; p=reject");
  auto filter = makeDmarcFilter(FilterConfig{});
  std::string pad;
  while (pad.size() <= filters::kInlineHeaderBytes) pad += "X-Pad: " + std::string(70, 'p') + "\r\n";
  mta::uv::Loop loop;
  for (bool large : {false, true}) {
    INFO("large header section: " << large);
    auto ctx = context(message((large ? pad : "") + "From: a@rej.example\r\n"));
    ctx->spfMailFrom = spf("fail", "rej.example");
    Env env;
    env.loop = loop.get();
    env.resolver = &dns;
    env.hostname = "mx.example.test";
    std::optional<Result> out;
    filter->run(ctx, env, [&](Result r) { out = std::move(r); });
    REQUIRE(out.has_value() == !large);  // the resolver answers at once: only the pool defers
    REQUIRE(loop.runUntil([&] { return out.has_value(); }, 20000));
    REQUIRE(out->verdict == Verdict::Reject);
    REQUIRE(out->authResults ==
            std::vector<std::string>{"dmarc=fail (p=reject dis=reject) header.from=rej.example policy.dmarc=reject"});
  }
}
