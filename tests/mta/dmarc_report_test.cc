// tests/mta/dmarc_report_test.cc — DMARC aggregate reports (RFC 7489 §7.2, Appendix C): the
// row a message makes, the aggregator and its caps, the state file round trip, the rua=
// destinations with their size limits, External Destination Verification (§7.1), the XML
// (escaping of a hostile header From) and the report mail (§7.2.1.1).
#include "mta/daemon/dmarc_report.h"

#include <catch2/catch.hpp>

#include "mta/runtime/base64.h"

using namespace moat::mta::daemon;
using namespace moat::mta::daemon::dmarc_report;

namespace {

moat::filters::MessageContext evaluated(const std::string& result) {
  moat::filters::MessageContext ctx;
  ctx.clientIp = *moat::mta::IpAddress::parse("192.0.2.7");
  ctx.mailFrom = "bounce@Mail.Example.TEST";
  ctx.spfMailFrom = {true, "pass", "mailfrom", "mail.example.test", ""};
  ctx.dkim.push_back({"pass", "example.test", "s1", "abc", "rsa-sha256", ""});
  ctx.dkim.push_back({"fail", "other.test", "s2", "def", "rsa-sha256", "bad"});
  auto& d = ctx.dmarc;
  d.checked = true;
  d.result = result;
  d.fromDomain = "example.test";
  d.policy = "reject";
  d.applied = result == "pass" ? "none" : "reject";
  d.recordDomain = "example.test";
  d.adkim = "r";
  d.aspf = "s";
  d.p = "reject";
  d.pct = 100;
  d.fo = "1";
  d.spfAligned = false;
  d.dkimAligned = result == "pass";
  d.disposition = result == "pass" ? "none" : "reject";
  return ctx;
}

// The text between <tag> and </tag>, the n-th time it occurs.
std::string between(const std::string& x, const std::string& tag, size_t n = 0) {
  size_t at = 0;
  for (size_t i = 0;; ++i) {
    at = x.find("<" + tag + ">", at);
    if (at == std::string::npos) return "<missing>";
    at += tag.size() + 2;
    if (i == n) break;
  }
  return x.substr(at, x.find("</" + tag + ">", at) - at);
}

size_t occurrences(const std::string& x, const std::string& needle) {
  size_t n = 0;
  for (size_t at = x.find(needle); at != std::string::npos; at = x.find(needle, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("a message evaluated against a record makes a row keyed by what the report shows", "[dmarc_report]") {
  auto e = entryFor(evaluated("fail"));
  REQUIRE(e);
  CHECK(e->policy.domain == "example.test");
  CHECK(e->policy.aspf == "s");
  CHECK(e->policy.fo == "1");
  CHECK(e->row.sourceIp == "192.0.2.7");
  CHECK(e->row.disposition == "reject");
  CHECK(e->row.dkim == "fail");
  CHECK(e->row.spf == "fail");
  CHECK(e->row.headerFrom == "example.test");
  CHECK(e->row.envelopeFrom == "mail.example.test");
  REQUIRE(e->row.dkimResults.size() == 2);
  CHECK(e->row.dkimResults[1] == DkimAuth{"other.test", "s2", "fail"});
  REQUIRE(e->row.spfResults.size() == 1);
  CHECK(e->row.spfResults[0] == SpfAuth{"mail.example.test", "mfrom", "pass"});

  // No record found (none), not checked, or an error: nothing to report.
  auto none = evaluated("none");
  CHECK_FALSE(entryFor(none));
  auto unchecked = evaluated("pass");
  unchecked.dmarc.checked = false;
  CHECK_FALSE(entryFor(unchecked));
  auto norecord = evaluated("pass");
  norecord.dmarc.policy.clear();
  CHECK_FALSE(entryFor(norecord));
}

TEST_CASE("the aggregator counts identical rows together and keeps its caps", "[dmarc_report]") {
  Aggregator agg;
  auto pass = *entryFor(evaluated("pass"));
  auto fail = *entryFor(evaluated("fail"));
  agg.add(pass);
  agg.add(pass);
  agg.add(fail);
  auto ip2 = fail;
  ip2.row.sourceIp = "2001:db8::1";
  agg.add(ip2);
  REQUIRE(agg.results().size() == 1);
  const auto& d = agg.results().at("example.test");
  CHECK(d.rows.size() == 3);
  CHECK(d.rows.at(pass.row) == 2);
  CHECK(d.messages() == 4);

  // Rows per domain: the one over the cap is dropped and counted.
  Aggregator rows;
  for (size_t i = 0; i < Aggregator::kMaxRowsPerDomain + 5; ++i) {
    auto r = pass;
    r.row.sourceIp = "10.0." + std::to_string(i / 256) + "." + std::to_string(i % 256);
    rows.add(r);
  }
  CHECK(rows.results().at("example.test").rows.size() == Aggregator::kMaxRowsPerDomain);
  CHECK(rows.dropped() == 5);
  auto first = pass;
  first.row.sourceIp = "10.0.0.0";
  rows.add(first);  // an existing row still counts
  CHECK(rows.dropped() == 5);
  CHECK(rows.results().at("example.test").rows.at(first.row) == 2);

  // Domains.
  Aggregator domains;
  for (size_t i = 0; i < Aggregator::kMaxDomains + 2; ++i) {
    auto r = pass;
    r.policy.domain = "d" + std::to_string(i) + ".test";
    domains.add(r);
  }
  CHECK(domains.results().size() == Aggregator::kMaxDomains);
  CHECK(domains.dropped() == 2);
  CHECK(domains.take().size() == Aggregator::kMaxDomains);
  CHECK(domains.results().empty());
  CHECK(domains.dropped() == 0);

  // A peer's long strings are cut, and DKIM results per row are bounded.
  auto ctx = evaluated("pass");
  ctx.mailFrom = "a@" + std::string(1000, 'x') + ".test";
  for (int i = 0; i < 20; ++i) ctx.dkim.push_back({"pass", "d.test", "s" + std::to_string(i), "", "", ""});
  auto big = *entryFor(ctx);
  CHECK(big.row.envelopeFrom.size() == kMaxField);
  CHECK(big.row.dkimResults.size() == kMaxAuthResults);
}

TEST_CASE("the saved aggregate reads back the same", "[dmarc_report]") {
  Aggregator agg;
  agg.add(*entryFor(evaluated("pass")));
  agg.add(*entryFor(evaluated("fail")));
  agg.add(*entryFor(evaluated("fail")));
  std::string text = encodeState(1000, 60000, agg.results());
  Aggregator back;
  int64_t start = 0, interval = 0;
  REQUIRE(decodeState(text, start, interval, back));
  CHECK(start == 1000);
  CHECK(interval == 60000);
  CHECK(back.results().at("example.test").rows == agg.results().at("example.test").rows);
  CHECK(back.results().at("example.test").policy == agg.results().at("example.test").policy);
  CHECK_FALSE(decodeState("{\"moat-tlsrpt\":1}", start, interval, back));
  CHECK_FALSE(decodeState(text.substr(0, text.size() / 2), start, interval, back));
}

TEST_CASE("rua destinations are the mailto URIs with their size limits", "[dmarc_report]") {
  auto r = ruaOf({"v=spf1 -all",
                  "v=DMARC1; p=reject; rua=mailto:a@example.test!10k,https://r.test/x,"
                  "mailto:agg@Reports.TEST"});
  REQUIRE(r.ok);
  REQUIRE(r.mailto.size() == 2);
  CHECK(r.mailto[0].address == "a@example.test");
  CHECK(r.mailto[0].domain == "example.test");
  CHECK(r.mailto[0].maxSize == 10 * 1024);
  CHECK(r.mailto[0].uri == "mailto:a@example.test!10k");
  CHECK(r.mailto[1].domain == "reports.test");
  CHECK(r.mailto[1].maxSize == 0);
  CHECK(r.skipped == std::vector<std::string>{"https://r.test/x"});

  CHECK(ruaOf({"v=DMARC1; p=reject"}).error == "no rua");
  CHECK(ruaOf({"v=spf1 -all"}).error == "no DMARC record");
  CHECK_FALSE(ruaOf({"v=DMARC1; p=none; rua=mailto:a@x.test", "v=DMARC1; p=none"}).ok);
}

TEST_CASE("External Destination Verification is needed across Organizational Domains only", "[dmarc_report]") {
  CHECK_FALSE(needsVerification("example.test", "example.test"));
  CHECK_FALSE(needsVerification("mail.example.com", "reports.example.com"));
  CHECK(needsVerification("example.com", "reports.example.net"));
  CHECK(verificationName("Example.COM", "reports.example.net") == "example.com._report._dmarc.reports.example.net");
  CHECK(verified({"v=DMARC1"}));
  CHECK(verified({"other", "v=DMARC1; rua=mailto:x@y.test"}));
  CHECK_FALSE(verified({"v=spf1 -all"}));
  CHECK_FALSE(verified({}));
}

TEST_CASE("the XML report carries the Appendix C fields and escapes a hostile header From", "[dmarc_report]") {
  Aggregator agg;
  auto fail = *entryFor(evaluated("fail"));
  fail.row.reason = "local_policy";
  agg.add(fail);
  agg.add(fail);
  auto hostile = fail;
  hostile.row.headerFrom = "evil.test</header_from><injected>1</injected>&\x01";
  agg.add(hostile);
  ReportInfo info{"Moat Org",     "dmarc@moat.test", "",        "1700000000.1.ab@mx.moat.test",
                  "example.test", 1700000000,        1700086400};
  std::string x = reportXml(info, agg.results().at("example.test"));
  CHECK(x.rfind("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<feedback>", 0) == 0);
  CHECK(between(x, "org_name") == "Moat Org");
  CHECK(between(x, "email") == "dmarc@moat.test");
  CHECK(x.find("<extra_contact_info>") == std::string::npos);
  CHECK(between(x, "report_id") == "1700000000.1.ab@mx.moat.test");
  CHECK(between(x, "begin") == "1700000000");
  CHECK(between(x, "end") == "1700086399");
  CHECK(between(x, "domain") == "example.test");  // policy_published first
  CHECK(between(x, "adkim") == "r");
  CHECK(between(x, "aspf") == "s");
  CHECK(between(x, "p") == "reject");
  CHECK(between(x, "sp") == "reject");
  CHECK(between(x, "pct") == "100");
  CHECK(between(x, "fo") == "1");
  CHECK(occurrences(x, "<record>") == 2);
  CHECK(between(x, "count", 0) == "1");  // rows in order: the hostile one sorts first
  CHECK(between(x, "count", 1) == "2");
  CHECK(between(x, "disposition") == "reject");
  CHECK(between(x, "type") == "local_policy");
  CHECK(between(x, "envelope_from") == "mail.example.test");
  CHECK(between(x, "header_from", 1) == "example.test");
  CHECK(between(x, "selector") == "s1");
  CHECK(between(x, "scope") == "mfrom");
  // The hostile From stays one text node: no element of its own, no raw '&' or control byte.
  CHECK(x.find("<injected>") == std::string::npos);
  CHECK(between(x, "header_from", 0) == "evil.test&lt;/header_from&gt;&lt;injected&gt;1&lt;/injected&gt;&amp;");
  CHECK(occurrences(x, "<header_from>") == 2);
  CHECK(occurrences(x, "</header_from>") == 2);
}

TEST_CASE("the report mail has the RFC 7489 Subject, file name and gzipped XML", "[dmarc_report]") {
  MessageInfo info;
  info.from = "dmarc@moat.test";
  info.to = "agg@reports.test";
  info.submitter = "mx.moat.test";
  info.messageId = "dmarc.1@mx.moat.test";
  info.dateMs = 1700000000000;
  info.report = {"Moat Org", "dmarc@moat.test", "", "1700000000.1.ab@mx.moat.test", "example.test\r\nBcc: x",
                 1700000000, 1700086400};
  std::string xml = "<feedback/>";
  auto gz = report_mail::gzip(xml);
  REQUIRE(gz);
  std::string m = reportMessage(info, *gz);
  std::string unfolded;  // the Subject is folded at its spaces
  for (size_t i = 0; i < m.size(); ++i) {
    if (m.compare(i, 3, "\r\n\t") == 0 || m.compare(i, 3, "\r\n ") == 0) {
      i += 2;
      unfolded += ' ';
      continue;
    }
    unfolded += m[i];
  }
  CHECK(unfolded.find("Subject: Report Domain: example.testBcc: x Submitter: mx.moat.test Report-ID: "
                      "<1700000000.1.ab@mx.moat.test>\r\n") != std::string::npos);
  CHECK(m.find("\r\nBcc:") == std::string::npos);
  CHECK(m.find("Content-Type: application/gzip\r\n") != std::string::npos);
  CHECK(m.find("filename=\"mx.moat.test!example.testBcc: x!1700000000!1700086399.xml.gz\"") != std::string::npos);
  // The attachment decodes back to the XML.
  size_t body = m.find("\r\n\r\n", m.find("application/gzip")) + 4;
  std::string b64 = m.substr(body, m.find("\r\n\r\n--", body) - body);
  std::string clean;
  for (char c : b64)
    if (c != '\r' && c != '\n') clean += c;
  auto raw = moat::mta::base64Decode(clean);
  REQUIRE(raw);
  CHECK(report_mail::gunzip(*raw) == xml);
  for (unsigned char c : m) CHECK((c < 0x80 && (c >= 0x20 || c == '\r' || c == '\n' || c == '\t')));
}

TEST_CASE("the rua size limit is read with its unit", "[dmarc_report]") {
  auto r = ruaOf({"v=DMARC1; p=none; rua=mailto:a@x.test!100,mailto:b@x.test!2m"});
  REQUIRE(r.mailto.size() == 2);
  CHECK(r.mailto[0].maxSize == 100);
  CHECK(r.mailto[1].maxSize == 2u * 1024 * 1024);
}

TEST_CASE("an override by a trusted ARC sealer is a trusted_forwarder row with a comment naming it", "[dmarc_report]") {
  auto ctx = evaluated("fail");
  ctx.dmarc.disposition = "none";
  ctx.dmarc.applied = "override";
  ctx.dmarc.overrideReason = "trusted_forwarder";
  ctx.dmarc.overrideComment = "arc=pass sealer=lists.example.org";
  auto e = entryFor(ctx);
  REQUIRE(e);
  CHECK(e->row.reason == "trusted_forwarder");
  CHECK(e->row.comment == "arc=pass sealer=lists.example.org");
  Aggregator agg;
  agg.add(*e);
  agg.add(*entryFor(evaluated("fail")));  // the same row without the override stays apart
  ReportInfo info{"Moat Org",     "dmarc@moat.test", "",        "1700000000.1.ab@mx.moat.test",
                  "example.test", 1700000000,        1700086400};
  std::string x = reportXml(info, agg.results().at("example.test"));
  CHECK(occurrences(x, "<record>") == 2);
  CHECK(occurrences(x, "<reason>") == 1);
  CHECK(between(x, "type") == "trusted_forwarder");
  CHECK(between(x, "comment") == "arc=pass sealer=lists.example.org");
  // The checkpoint keeps the comment, and a state file written before it existed still reads.
  std::string text = encodeState(1000, 60000, agg.results());
  Aggregator back;
  int64_t start = 0, interval = 0;
  REQUIRE(decodeState(text, start, interval, back));
  CHECK(back.results().at("example.test").rows == agg.results().at("example.test").rows);
  std::string old = text;
  for (size_t at = old.find(",\"arc=pass sealer=lists.example.org\"]"); at != std::string::npos;
       at = old.find(",\"arc=pass sealer=lists.example.org\"]"))
    old.replace(at, std::string(",\"arc=pass sealer=lists.example.org\"]").size(), "]");
  for (size_t at = old.find(",\"\"],\"dkim\""); at != std::string::npos; at = old.find(",\"\"],\"dkim\""))
    old.replace(at, std::string(",\"\"],\"dkim\"").size(), "],\"dkim\"");
  Aggregator older;
  REQUIRE(decodeState(old, start, interval, older));
  CHECK(older.results().at("example.test").messages() == 2);
}
