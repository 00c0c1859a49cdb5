// tests/mta/tlsrpt_test.cc — SMTP TLS Reporting (RFC 8460): the aggregator and its bounds,
// the result types told from the TLS client's errors (§4.3), the _smtp._tls record (§3), the
// JSON report (§4.4) read back with the project's JSON reader, the gzip round trip and the
// report message (§5.3).
#include "mta/daemon/tlsrpt.h"

#include <catch2/catch.hpp>

#include "mta/daemon/tiny_json.h"
#include "mta/runtime/base64.h"

using namespace moat::mta::daemon;
using tlsrpt::Policy;
using tlsrpt::PolicyType;

namespace {

Policy stsPolicy() {
  Policy p;
  p.type = PolicyType::Sts;
  p.policyString = tlsrpt::stsPolicyLines("enforce", {"mx.example.test", "*.example.test"}, 86400);
  p.mxHost = {"mx.example.test", "*.example.test"};
  return p;
}

const json::Value& at(const json::Value& v, std::string_view key) {
  const json::Value* x = v.get(key);
  INFO("key " << key);
  REQUIRE(x);
  return *x;
}

}  // namespace

TEST_CASE("tlsrpt aggregates successes and failures by domain and policy") {
  tlsrpt::Aggregator a;
  a.success("Example.TEST", stsPolicy());
  a.success("example.test", stsPolicy());
  a.failure("example.test", stsPolicy(), "certificate-host-mismatch", "MX.example.test", "127.0.0.1");
  a.failure("example.test", stsPolicy(), "certificate-host-mismatch", "mx.example.test", "127.0.0.1");
  a.failure("example.test", Policy{}, "starttls-not-supported", "mx2.example.test", "::1");
  a.success("other.test", Policy{});
  const auto& r = a.results();
  REQUIRE(r.size() == 2);
  const auto& d = r.at("example.test");
  REQUIRE(d.policies.size() == 2);
  const auto& sts = d.policies.at(stsPolicy());
  CHECK(sts.successes == 2);
  CHECK(sts.failures == 2);
  REQUIRE(sts.details.size() == 1);
  CHECK(sts.details.begin()->first.mxHost == "mx.example.test");
  CHECK(sts.details.begin()->second == 2);
  CHECK(d.policies.at(Policy{}).failures == 1);
  auto taken = a.take();
  CHECK(taken.size() == 2);
  CHECK(a.results().empty());
}

TEST_CASE("tlsrpt bounds its domains, policies and failure rows") {
  tlsrpt::Aggregator a;
  for (size_t i = 0; i < tlsrpt::Aggregator::kMaxDomains + 5; ++i)
    a.success("d" + std::to_string(i) + ".test", Policy{});
  CHECK(a.results().size() == tlsrpt::Aggregator::kMaxDomains);
  CHECK(a.dropped() == 5);
  a.take();
  CHECK(a.dropped() == 0);
  for (size_t i = 0; i < tlsrpt::Aggregator::kMaxDetailsPerPolicy + 7; ++i)
    a.failure("x.test", Policy{}, "validation-failure", "mx" + std::to_string(i) + ".x.test", "127.0.0.1");
  const auto& p = a.results().at("x.test").policies.at(Policy{});
  CHECK(p.details.size() == tlsrpt::Aggregator::kMaxDetailsPerPolicy);
  CHECK(p.failures == tlsrpt::Aggregator::kMaxDetailsPerPolicy + 7);  // the totals count every session
  for (size_t i = 0; i < tlsrpt::Aggregator::kMaxPoliciesPerDomain + 3; ++i) {
    Policy q;
    q.type = PolicyType::Tlsa;
    q.policyString = {"3 1 1 " + std::to_string(i)};
    a.success("y.test", q);
  }
  CHECK(a.results().at("y.test").policies.size() == tlsrpt::Aggregator::kMaxPoliciesPerDomain);
  CHECK(a.dropped() == 3);
}

TEST_CASE("tlsrpt tells the result types apart from the TLS client's errors") {
  CHECK(tlsrpt::classifyTlsError("STARTTLS not offered by the server", false) == "starttls-not-supported");
  CHECK(tlsrpt::classifyTlsError("STARTTLS refused: 454 TLS not available", false) == "starttls-not-supported");
  CHECK(tlsrpt::classifyTlsError("TLS handshake failed: certificate verify failed: hostname mismatch", false) ==
        "certificate-host-mismatch");
  CHECK(tlsrpt::classifyTlsError("TLS handshake failed: certificate verify failed: certificate has expired", false) ==
        "certificate-expired");
  CHECK(tlsrpt::classifyTlsError("TLS handshake failed: certificate verify failed: self-signed certificate", false) ==
        "certificate-not-trusted");
  CHECK(tlsrpt::classifyTlsError(
            "TLS handshake failed: certificate not authenticated by the TLSA records: certificate verify failed",
            true) == "tlsa-invalid");
  CHECK(tlsrpt::classifyTlsError("TLS handshake failed: wrong version number", false) == "validation-failure");
  CHECK(tlsrpt::classifyTlsError("connection refused", false) == "");
  CHECK(tlsrpt::classifyStsFetchError("invalid policy: no mx") == "sts-policy-invalid");
  CHECK(tlsrpt::classifyStsFetchError("mta-sts.example.test[127.0.0.1]:443: TLS handshake failed: x") ==
        "sts-webpki-invalid");
  CHECK(tlsrpt::classifyStsFetchError("HTTP status 404") == "sts-policy-fetch-error");
  CHECK(tlsrpt::classifyStsFetchError("policy fetch timed out") == "sts-policy-fetch-error");
}

TEST_CASE("tlsrpt reads exactly one v=TLSRPTv1 record and its rua list") {
  auto r = tlsrpt::parseRecord({"v=spf1 -all", "v=TLSRPTv1; rua=mailto:a@example.test, https://r.example.test/x"});
  REQUIRE(r.ok);
  REQUIRE(r.rua.size() == 2);
  CHECK(r.rua[0] == "mailto:a@example.test");
  CHECK(r.rua[1] == "https://r.example.test/x");
  CHECK_FALSE(tlsrpt::parseRecord({}).ok);
  CHECK_FALSE(tlsrpt::parseRecord({"v=TLSRPTv1; rua=mailto:a@x.test", "v=TLSRPTv1;rua=mailto:b@x.test"}).ok);
  CHECK_FALSE(tlsrpt::parseRecord({"v=TLSRPTv1"}).ok);                        // no rua
  CHECK_FALSE(tlsrpt::parseRecord({"v=TLSRPTv10; rua=mailto:a@x.test"}).ok);  // another version
  CHECK(tlsrpt::parseRecord({"v=TLSRPTv1;rua=mailto:a@x.test;foo=bar"}).ok);  // unknown fields ignored
  CHECK(tlsrpt::mailtoAddress("mailto:tls%2Breports@example.test?subject=x") == "tls+reports@example.test");
  CHECK(tlsrpt::mailtoAddress("MAILTO:r@example.test") == "r@example.test");
  CHECK(tlsrpt::mailtoAddress("https://example.test/") == "");
  CHECK(tlsrpt::mailtoAddress("mailto:no-at") == "");
  CHECK(tlsrpt::mailtoAddress("mailto:a%0D%0ABcc:x@y.test") == "");
}

TEST_CASE("tlsrpt periods are aligned in UTC") {
  const int64_t day = 86'400'000;
  CHECK(tlsrpt::periodStart(1'795'996'800'000 + 5, day) == 1'795'996'800'000);
  CHECK(tlsrpt::periodStart(1'795'996'800'000 + day - 1, day) == 1'795'996'800'000);
  CHECK(tlsrpt::periodStart(12'345, 10'000) == 10'000);
  CHECK(tlsrpt::rfc3339(0) == "1970-01-01T00:00:00Z");
}

TEST_CASE("tlsrpt writes RFC 8460 JSON that reads back field by field") {
  tlsrpt::Aggregator a;
  for (int i = 0; i < 3; ++i) a.success("example.test", stsPolicy());
  a.failure("example.test", stsPolicy(), "certificate-host-mismatch", "bad.example.test", "127.0.0.1");
  Policy tlsa;
  tlsa.type = PolicyType::Tlsa;
  tlsa.policyString = {tlsrpt::tlsaPresentation(3, 1, 1, std::string("\x01\xab", 2))};
  a.success("example.test", tlsa);
  auto results = a.take();
  tlsrpt::ReportInfo info{"Moat \"test\"", "ops@example.net", "100.1.abc@mx.example.net", "example.test", 86400,
                          172800};
  std::string text = tlsrpt::reportJson(info, results.at("example.test"));
  auto v = json::parse(text);
  REQUIRE(v);
  CHECK(at(*v, "organization-name").str == "Moat \"test\"");
  CHECK(at(at(*v, "date-range"), "start-datetime").str == "1970-01-02T00:00:00Z");
  CHECK(at(at(*v, "date-range"), "end-datetime").str == "1970-01-02T23:59:59Z");
  CHECK(at(*v, "contact-info").str == "ops@example.net");
  CHECK(at(*v, "report-id").str == "100.1.abc@mx.example.net");
  const auto& policies = at(*v, "policies").array;
  REQUIRE(policies.size() == 2);
  const json::Value* stsEntry = nullptr;
  const json::Value* tlsaEntry = nullptr;
  for (const auto& p : policies) (at(at(p, "policy"), "policy-type").str == "sts" ? stsEntry : tlsaEntry) = &p;
  REQUIRE(stsEntry);
  REQUIRE(tlsaEntry);
  const auto& sp = at(*stsEntry, "policy");
  CHECK(at(sp, "policy-domain").str == "example.test");
  REQUIRE(at(sp, "policy-string").array.size() == 5);
  CHECK(at(sp, "policy-string").array[1].str == "mode: enforce");
  CHECK(at(sp, "policy-string").array[4].str == "max_age: 86400");
  REQUIRE(at(sp, "mx-host").array.size() == 2);
  CHECK(at(sp, "mx-host").array[1].str == "*.example.test");
  CHECK(at(at(*stsEntry, "summary"), "total-successful-session-count").number == 3);
  CHECK(at(at(*stsEntry, "summary"), "total-failure-session-count").number == 1);
  const auto& rows = at(*stsEntry, "failure-details").array;
  REQUIRE(rows.size() == 1);
  CHECK(at(rows[0], "result-type").str == "certificate-host-mismatch");
  CHECK(at(rows[0], "receiving-mx-hostname").str == "bad.example.test");
  CHECK(at(rows[0], "receiving-ip").str == "127.0.0.1");
  CHECK(at(rows[0], "failed-session-count").number == 1);
  CHECK(at(at(*tlsaEntry, "policy"), "policy-string").array[0].str == "3 1 1 01AB");
  CHECK(at(at(*tlsaEntry, "summary"), "total-successful-session-count").number == 1);
  CHECK(tlsaEntry->get("failure-details") == nullptr);
}

TEST_CASE("tlsrpt gzip round trip and the report message") {
  std::string json = "{\"organization-name\":\"x\",\"policies\":[]}";
  std::string big(200'000, 'a');
  for (const auto& s : {json, big, std::string()}) {
    auto gz = tlsrpt::gzip(s);
    REQUIRE(gz);
    REQUIRE(gz->size() >= 18);
    CHECK(static_cast<unsigned char>((*gz)[0]) == 0x1f);  // RFC 1952 magic
    CHECK(static_cast<unsigned char>((*gz)[1]) == 0x8b);
    auto back = tlsrpt::gunzip(*gz);
    REQUIRE(back);
    CHECK(*back == s);
  }
  CHECK_FALSE(tlsrpt::gunzip(*tlsrpt::gzip(big), 1000));  // over the bound
  CHECK_FALSE(tlsrpt::gunzip("not gzip at all"));

  tlsrpt::MessageInfo m;
  m.from = "tlsrpt@mx.example.net";
  m.to = "reports@example.test";
  m.submitter = "mx.example.net";
  m.messageId = "tlsrpt.1@mx.example.net";
  m.dateMs = 86'400'000;
  m.report = {"org", "c", "86400.1.ab12@mx.example.net", "example.test", 86400, 172800};
  auto gz = tlsrpt::gzip(json);
  std::string msg = tlsrpt::reportMessage(m, *gz);
  CHECK(msg.find("TLS-Report-Domain: example.test\r\n") != std::string::npos);
  CHECK(msg.find("TLS-Report-Submitter: mx.example.net\r\n") != std::string::npos);
  std::string unfolded;  // RFC 5322 §2.2.3: folding whitespace undone
  for (size_t i = 0; i < msg.size(); ++i) {
    if (msg.compare(i, 3, "\r\n ") == 0 || msg.compare(i, 3, "\r\n\t") == 0) {
      unfolded += ' ';
      i += 2;
      continue;
    }
    unfolded += msg[i];
  }
  CHECK(unfolded.find("\r\nSubject: Report Domain: example.test Submitter: mx.example.net Report-ID: "
                      "<86400.1.ab12@mx.example.net>\r\n") != std::string::npos);
  CHECK(unfolded.find("\r\nMessage-ID: <tlsrpt.1@mx.example.net>\r\n") != std::string::npos);
  CHECK(msg.find("Content-Type: multipart/report; report-type=\"tlsrpt\";") != std::string::npos);
  CHECK(msg.find("Content-Type: application/tlsrpt+gzip\r\n") != std::string::npos);
  CHECK(msg.find("filename=\"mx.example.net!example.test!86400!172800!864001ab12.json.gz\"") != std::string::npos);
  for (unsigned char c : msg) CHECK(c < 0x80);
  // The attachment decodes back to the JSON.
  size_t start = msg.find("\r\n\r\n", msg.find("application/tlsrpt+gzip")) + 4;
  size_t end = msg.find("\r\n\r\n--", start);
  auto decoded = moat::mta::base64DecodeMime(msg.substr(start, end - start));
  auto back = tlsrpt::gunzip(decoded);
  REQUIRE(back);
  CHECK(*back == json);
}

TEST_CASE("tlsrpt state survives a round trip through its file") {
  tlsrpt::Aggregator a;
  a.success("example.test", stsPolicy());
  a.failure("example.test", stsPolicy(), "certificate-expired", "mx.example.test", "::1");
  a.failure("other.test", Policy{}, "starttls-not-supported", "mx \"odd\".other.test", "127.0.0.1");
  std::string text = tlsrpt::encodeState(1000, 5000, a.results());
  int64_t start = 0, interval = 0;
  tlsrpt::Aggregator b;
  b.success("example.test", stsPolicy());  // added to what is there
  REQUIRE(tlsrpt::decodeState(text, start, interval, b));
  CHECK(start == 1000);
  CHECK(interval == 5000);
  const auto& sts = b.results().at("example.test").policies.at(stsPolicy());
  CHECK(sts.successes == 2);
  CHECK(sts.failures == 1);
  CHECK(sts.details.at({"certificate-expired", "mx.example.test", "::1", "", ""}) == 1);
  CHECK(b.results().at("other.test").policies.at(Policy{}).details.begin()->first.mxHost == "mx \"odd\".other.test");
  tlsrpt::Aggregator c;
  CHECK_FALSE(tlsrpt::decodeState("", start, interval, c));
  CHECK_FALSE(tlsrpt::decodeState("{\"moat-tlsrpt\":2,\"start\":1,\"interval\":1,\"domains\":[]}", start, interval, c));
  CHECK_FALSE(tlsrpt::decodeState(text.substr(0, text.size() / 2), start, interval, c));
}

TEST_CASE("tlsrpt failure rows carry sending-mta-ip and receiving-mx-helo") {
  tlsrpt::Aggregator a;
  a.failure("example.test", stsPolicy(), "certificate-host-mismatch", "mx.example.test", "127.0.0.1", "127.0.0.2",
            "MX1.Example.TEST");
  // A greeting name that is no host name is left out (the row is still counted).
  a.failure("example.test", stsPolicy(), "certificate-host-mismatch", "mx.example.test", "127.0.0.1", "127.0.0.2",
            "evil\"name<script>");
  a.failure("example.test", stsPolicy(), "starttls-not-supported", "mx.example.test", "::1", "::1", "[::1]");
  const auto& details = a.results().at("example.test").policies.at(stsPolicy()).details;
  REQUIRE(details.size() == 3);
  CHECK(details.at({"certificate-host-mismatch", "mx.example.test", "127.0.0.1", "127.0.0.2", "mx1.example.test"}) ==
        1);
  CHECK(details.at({"certificate-host-mismatch", "mx.example.test", "127.0.0.1", "127.0.0.2", ""}) == 1);
  CHECK(details.at({"starttls-not-supported", "mx.example.test", "::1", "::1", "[::1]"}) == 1);

  tlsrpt::ReportInfo info{"Org", "c@example.test", "id1", "example.test", 0, 86400};
  auto v = json::parse(tlsrpt::reportJson(info, a.results().at("example.test")));
  REQUIRE(v);
  const auto& rows = at(at(*v, "policies").array.at(0), "failure-details").array;
  REQUIRE(rows.size() == 3);
  int withHelo = 0;
  for (const auto& row : rows) {
    CHECK(at(row, "sending-mta-ip").str == (at(row, "receiving-ip").str == "::1" ? "::1" : "127.0.0.2"));
    if (const json::Value* h = row.get("receiving-mx-helo")) {
      ++withHelo;
      CHECK((h->str == "mx1.example.test" || h->str == "[::1]"));
    }
  }
  CHECK(withHelo == 2);

  // The checkpoint keeps them; a row from a file without them (an older Moat's) reads as "".
  std::string text = tlsrpt::encodeState(1000, 5000, a.results());
  int64_t start = 0, interval = 0;
  tlsrpt::Aggregator b;
  REQUIRE(tlsrpt::decodeState(text, start, interval, b));
  CHECK(b.results().at("example.test").policies.at(stsPolicy()).details == details);
  const std::string old =
      "{\"moat-tlsrpt\":1,\"start\":0,\"interval\":1000,\"domains\":[{\"domain\":\"a.test\",\"policies\":[{\"type\":"
      "\"no-policy-found\",\"strings\":[],\"mx\":[],\"successes\":0,\"failures\":1,\"details\":[{\"type\":"
      "\"starttls-not-supported\",\"mx\":\"mx.a.test\",\"ip\":\"::1\",\"count\":1}]}]}]}";
  tlsrpt::Aggregator c;
  REQUIRE(tlsrpt::decodeState(old, start, interval, c));
  CHECK(c.results().at("a.test").policies.at(Policy{}).details.at(
            {"starttls-not-supported", "mx.a.test", "::1", "", ""}) == 1);
  // Failure rows stay capped with the new fields in the key.
  tlsrpt::Aggregator d;
  for (size_t i = 0; i < tlsrpt::Aggregator::kMaxDetailsPerPolicy + 20; ++i)
    d.failure("example.test", Policy{}, "validation-failure", "mx.example.test", "::1", "::1",
              "mx" + std::to_string(i) + ".example.test");
  CHECK(d.results().at("example.test").policies.at(Policy{}).details.size() ==
        tlsrpt::Aggregator::kMaxDetailsPerPolicy);
  CHECK(d.results().at("example.test").policies.at(Policy{}).failures == tlsrpt::Aggregator::kMaxDetailsPerPolicy + 20);
}

TEST_CASE("tlsrpt https rua URIs are parsed within bounds") {
  auto u = tlsrpt::httpsUri("https://Reports.Example.TEST/tlsrpt/v1?a=b#frag");
  REQUIRE(u);
  CHECK(u->host == "reports.example.test");
  CHECK(u->port == 443);
  CHECK(u->target == "/tlsrpt/v1?a=b");
  u = tlsrpt::httpsUri("HTTPS://reports.example.test:8443");
  REQUIRE(u);
  CHECK(u->port == 8443);
  CHECK(u->target == "/");
  u = tlsrpt::httpsUri("https://reports.example.test.?x");
  REQUIRE(u);
  CHECK(u->host == "reports.example.test");
  CHECK(u->target == "/?x");
  for (const char* bad :
       {"http://reports.example.test/", "mailto:a@example.test", "https://", "https:///path",
        "https://user@reports.example.test/", "https://127.0.0.1/", "https://[::1]:443/", "https://a.test:0/",
        "https://a.test:65536/", "https://a.test:/", "https://a.test:44x/", "https://a..test/", "https://a_b.test/",
        "https://a.test/with space", "https://a.test/\x01", "https://a.test/caf\xc3\xa9"})
    CHECK_FALSE(tlsrpt::httpsUri(bad));
  // Found by fuzz_records: two trailing dots left the host "a.test." (an empty label).
  for (const char* bad : {"https://a.test../", "https://a.test..", "https://a..", "https://..:8443/"})
    CHECK_FALSE(tlsrpt::httpsUri(bad));
  CHECK(tlsrpt::httpsUri("https://a.test/" + std::string(tlsrpt::kMaxUriBytes - 15, 'x')));
  CHECK_FALSE(tlsrpt::httpsUri("https://a.test/" + std::string(tlsrpt::kMaxUriBytes, 'x')));
}

TEST_CASE("tlsrpt https upload is a POST of application/tlsrpt+gzip") {
  auto u = tlsrpt::httpsUri("https://reports.example.test:8443/v1?x=1");
  REQUIRE(u);
  const std::string gz("\x1f\x8b\x08\x00 binary\r\n\r\n", 16);
  std::string r = tlsrpt::httpsReportRequest(*u, gz);
  CHECK(r.rfind("POST /v1?x=1 HTTP/1.1\r\nHost: reports.example.test:8443\r\n", 0) == 0);
  CHECK(r.find("\r\nContent-Type: application/tlsrpt+gzip\r\n") != std::string::npos);
  CHECK(r.find("\r\nContent-Length: 16\r\n") != std::string::npos);
  CHECK(r.find("\r\nConnection: close\r\n") != std::string::npos);
  size_t head = r.find("\r\n\r\n");
  REQUIRE(head != std::string::npos);
  CHECK(r.substr(head + 4) == gz);
  u = tlsrpt::httpsUri("https://reports.example.test/");
  REQUIRE(u);
  CHECK(tlsrpt::httpsReportRequest(*u, "x").find("\r\nHost: reports.example.test\r\n") != std::string::npos);
}
