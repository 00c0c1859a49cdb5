// tests/conformance/dkim — the public DKIM vectors in MOAT_SHARED_DIR/conformance/dkim
// (MANIFEST.md, MANIFEST.tsv) run through Moat's verifier (RFC 6376 + RFC 8301 + RFC 8463).
// Every row MANIFEST.md names as applicable to such a verifier (dkimpy, stalwart, rfc8463,
// rfc6376, authheaders, and the Mail::DKIM ed25519 rows) must pass; DNS records are served
// by the in-memory resolver on a real libuv loop. The rest of the Mail::DKIM corpus is
// listed as excluded with its reason (pre-RFC signatures, rsa-sha1, short keys: RFC 8301).
#include <catch2/catch.hpp>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "filters/dkim/dkim.h"
#include "mta/runtime/uv.h"
#include "tests/filters/dkim/memory_resolver.h"
#include "tests/support/temp_file.h"

using namespace moat;
using filters::dkim::SigResult;
using filters::dkim::VerifyOptions;

namespace {

const std::string kDir = std::string(MOAT_SHARED_DIR) + "/conformance/dkim/";

struct Row {
  std::string id, file, sigIndex, a, dnsName, dnsTxt, expected, verifyAt, flags;
};

std::vector<std::string> splitTabs(const std::string& line) {
  std::vector<std::string> out;
  std::stringstream ss(line);
  std::string f;
  while (std::getline(ss, f, '\t')) out.push_back(f);
  while (out.size() < 17) out.emplace_back();
  return out;
}

std::vector<Row> readManifest() {
  std::ifstream in(kDir + "MANIFEST.tsv");
  std::vector<Row> rows;
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    auto f = splitTabs(line);
    rows.push_back({f[0], f[1], f[2], f[3], f[7], f[8], f[10], f[13], f[15]});
  }
  return rows;
}

using moat::test::readFile;

std::string toCrlf(const std::string& s) {
  if (s.find("\r\n") != std::string::npos) return s;
  std::string out;
  for (char c : s) {
    if (c == '\n') out += "\r\n";
    else out.push_back(c);
  }
  return out;
}

bool applicable(const Row& r) {
  return r.id.rfind("mail-dkim-", 0) != 0 || r.file.find("ed25519") != std::string::npos;
}

// Loads the message; stalwart files carry "name TXT" lines before an empty line.
std::string loadMessage(const std::string& file) {
  std::string text = readFile(kDir + file);
  if (file.rfind("stalwart-mail-auth/", 0) == 0) {
    size_t blank = text.find("\n\n");
    text = blank == std::string::npos ? text : text.substr(blank + 2);
  }
  return toCrlf(text);
}

std::vector<SigResult> verify(const std::string& message, const std::vector<const Row*>& rows, int64_t at) {
  mta::uv::Loop loop;
  std::vector<SigResult> results;
  bool done = false;
  {
    test::MemoryResolver resolver(loop.get());
    for (const Row* r : rows) {
      if (r->dnsTxt == "(no record: NXDOMAIN)") continue;
      if (r->dnsTxt == "(DNS TIMEOUT)" || r->dnsTxt == "(DNS SERVFAIL)") {
        resolver.setStatus(r->dnsName, mta::dns::Status::TempFail);
        continue;
      }
      resolver.addTxt(r->dnsName, r->dnsTxt == "\"\"" ? "" : r->dnsTxt);
    }
    filters::Env env;
    env.loop = loop.get();
    env.resolver = &resolver;
    auto keep = std::make_shared<std::string>(message);
    VerifyOptions options;
    options.fixedTime = at;
    filters::dkim::verifyMessage(env, *keep, keep, options, [&](std::vector<SigResult> r) {
      results = std::move(r);
      done = true;
    });
    loop.runUntil([&] { return done; }, 20000);
  }
  REQUIRE(done);
  return results;
}

}  // namespace

TEST_CASE("DKIM conformance: applicable MANIFEST rows") {
  auto rows = readManifest();
  REQUIRE(rows.size() == 105);
  std::map<std::string, std::vector<const Row*>> groups;  // id -> its rows
  std::vector<std::string> order;
  int applicableRows = 0, passed = 0;
  std::vector<std::string> excluded, failures;
  for (const auto& r : rows) {
    if (!applicable(r)) {
      excluded.push_back(r.id + "#" + r.sigIndex + ": " +
                         (r.flags.empty() ? std::string("Mail::DKIM legacy corpus (MANIFEST.md: not an RFC 6376 oracle)")
                                          : r.flags));
      continue;
    }
    if (!groups.count(r.id)) order.push_back(r.id);
    groups[r.id].push_back(&r);
  }
  for (const auto& id : order) {
    const auto& group = groups[id];
    int64_t at = group.front()->verifyAt.empty() ? 0 : std::stoll(group.front()->verifyAt);
    auto results = verify(loadMessage(group.front()->file), group, at);
    for (const Row* r : group) {
      if (r->expected.empty()) continue;
      ++applicableRows;
      size_t idx = std::stoul(r->sigIndex);
      bool wantPass = r->expected.rfind("pass", 0) == 0;
      std::string got = idx < results.size() ? results[idx].result : "(missing)";
      bool ok = wantPass ? got == "pass" : (got != "pass" && got != "(missing)");
      if (ok) ++passed;
      else failures.push_back(r->id + "#" + r->sigIndex + ": expected " + r->expected + ", got " + got + " (" +
                              (idx < results.size() ? results[idx].reason : "") + ")");
    }
  }
  std::cout << "DKIM conformance: " << passed << "/" << applicableRows << " applicable rows passed\n";
  for (const auto& f : failures) std::cout << "  FAILED " << f << "\n";
  std::cout << "Excluded (" << excluded.size() << " rows, Mail::DKIM legacy corpus; MANIFEST.md):\n";
  for (const auto& e : excluded) std::cout << "  " << e << "\n";
  CHECK(failures.empty());
  REQUIRE(applicableRows >= 25);
  REQUIRE(passed == applicableRows);
}

TEST_CASE("DKIM conformance: RFC 8463 A.3 ed25519 and rsa signatures both verify") {
  auto rows = readManifest();
  std::vector<const Row*> group;
  for (const auto& r : rows)
    if (r.id == "rfc8463-A3") group.push_back(&r);
  REQUIRE(group.size() == 2);
  auto results = verify(loadMessage(group.front()->file), group, 0);
  REQUIRE(results.size() == 2);
  CHECK(results[0].algorithm == "ed25519-sha256");
  CHECK(results[0].result == "pass");
  CHECK(results[0].domain == "football.example.com");
  CHECK(results[1].result == "pass");
}

namespace {

std::vector<SigResult> verifyWithRecord(const std::string& message, const std::string& name, const std::string& txt) {
  Row r;
  r.dnsName = name;
  r.dnsTxt = txt;
  return verify(message, {&r}, 0);
}

std::string dkimpyFile(const std::string& name) { return toCrlf(readFile(kDir + "dkimpy/" + name)); }

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

// Signs with Moat, then verifies with Moat against `record` served for s._domainkey.d.
std::string signVerify(const std::string& message, const std::string& keyFile, const std::string& alg,
                       const std::string& selector, const std::string& domain, const std::string& record,
                       const std::string& appended = "", const std::string& prepended = "") {
  filters::dkim::SignKey key{domain, selector, alg, readFile(kDir + "dkimpy/" + keyFile)};
  std::string error;
  auto value = filters::dkim::signMessage(key, message, error);
  if (!value) return "sign error: " + error;
  std::string signedMsg = prepended + "DKIM-Signature: " + *value + "\r\n" + message + appended;
  auto results = verifyWithRecord(signedMsg, selector + "._domainkey." + domain, trimmed(record));
  // Ours is the top signature (message.mbox carries an older one below it).
  return results.empty() ? "(no result)" : results[0].result;
}

}  // namespace

TEST_CASE("DKIM conformance: dkimpy sign-then-verify cases (MANIFEST.md table)") {
  const std::string msg = dkimpyFile("test.message");
  const std::string testTxt = readFile(kDir + "dkimpy/test.txt");
  int total = 0, ok = 0;
  auto expect = [&](const std::string& what, const std::string& got, bool wantPass) {
    ++total;
    bool good = wantPass ? got == "pass" : got != "pass";
    if (good) ++ok;
    else std::cout << "  FAILED dkimpy case " << what << ": got " << got << "\n";
    CHECK(good);
  };
  expect("test_verifies", signVerify(msg, "test.private", "rsa-sha256", "test", "example.com", testTxt), true);
  expect("test_implicit_k",
         signVerify(msg, "test.private", "rsa-sha256", "test", "example.com", readFile(kDir + "dkimpy/test2.txt")), true);
  expect("test_bad_version",
         signVerify(msg, "test.private", "rsa-sha256", "test", "example.com", readFile(kDir + "dkimpy/badversion.txt")),
         false);
  expect("test_unknown_k",
         signVerify(msg, "test.private", "rsa-sha256", "test", "example.com", readFile(kDir + "dkimpy/badk.txt")), false);
  expect("test_altered_body_fails",
         signVerify(msg, "test.private", "rsa-sha256", "test", "example.com", testTxt, "foo"), false);
  expect("test_multiple_from_fails (after)",
         signVerify(msg, "test.private", "rsa-sha256", "test", "example.com", testTxt, "", "From: a@evil.example\r\n"),
         false);
  expect("test_ignores_tlsrptsvc",
         signVerify(msg, "test.private", "rsa-sha256", "test", "example.com", readFile(kDir + "dkimpy/test_tlsrpt.txt")),
         false);
  expect("test_extra_headers",
         signVerify(dkimpyFile("message.mbox"), "test.private", "rsa-sha256", "test", "example.com", testTxt), true);
  expect("test_double_verifies",
         signVerify(dkimpyFile("rfc6376.msg"), "test.private", "rsa-sha256", "test", "football.example.com", testTxt),
         true);
  expect("ed25519 test_verifies",
         signVerify(dkimpyFile("ed25519test.msg"), "ed25519test.key", "ed25519-sha256", "test", "example.net",
                    "v=DKIM1; k=ed25519; p=yi50DjK5O9pqbFpNHklsv9lqaS0ArSYu02qp1S0DW1Y="),
         true);
  expect("ed25519 test_rfc8032_verifies",
         signVerify(dkimpyFile("rfc6376.msg"), "rfc8032_7_1.key", "ed25519-sha256", "brisbane", "football.example.com",
                    "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="),
         true);
  for (const char* pub : {"1024_testkey_wo_markers.pub.txt", "1024_testkey_wo_markers.pub.rsa.txt"})
    expect(std::string("rsavariants 1024 ") + pub,
           signVerify(msg, "1024_testkey.key", "rsa-sha256", "test", "example.com", readFile(kDir + "dkimpy/" + pub)),
           true);
  for (const char* pub : {"2048_testkey_wo_markers.pub.txt", "2048_testkey_wo_markers.pub.rsa.txt"})
    expect(std::string("rsavariants 2048 ") + pub,
           signVerify(msg, "2048_testkey.key", "rsa-sha256", "test3", "example.com", readFile(kDir + "dkimpy/" + pub)),
           true);
  expect("rsavariants PKCS8",
         signVerify(msg, "2048_testkey_PKCS8.key", "rsa-sha256", "test5", "example.com",
                    readFile(kDir + "dkimpy/2048_testkey_PKCS8.key.pub.txt")),
         true);
  // test_no_from_fails: signing must refuse.
  filters::dkim::SignKey key{"example.com", "test", "rsa-sha256", readFile(kDir + "dkimpy/test.private")};
  std::string error;
  ++total;
  bool refused = !filters::dkim::signMessage(key, dkimpyFile("test_nofrom.message"), error);
  if (refused) ++ok;
  CHECK(refused);
  std::cout << "DKIM conformance (dkimpy sign-then-verify): " << ok << "/" << total << " cases passed\n";
}

TEST_CASE("DKIM conformance: the legacy Mail::DKIM corpus under RFC 6376 + RFC 8301") {
  // Not a pass/fail oracle (MANIFEST.md), but two things do follow from the RFCs: messages
  // with only DomainKeys signatures have no DKIM result (dkim=none), and signatures MANIFEST
  // flags as pre-RFC, rsa-sha1 or under 1024 bits must never pass. Every message must also
  // run through without a crash and give one result per DKIM-Signature.
  auto rows = readManifest();
  std::map<std::string, std::vector<const Row*>> groups;
  for (const auto& r : rows)
    if (!applicable(r)) groups[r.id].push_back(&r);
  int checked = 0;
  for (const auto& [id, group] : groups) {
    auto results = verify(loadMessage(group.front()->file), group, 0);
    for (const Row* r : group) {
      INFO(id << "#" << r->sigIndex);
      if (r->sigIndex == "-") {
        CHECK(results.empty());
        ++checked;
        continue;
      }
      size_t idx = std::stoul(r->sigIndex);
      REQUIRE(idx < results.size());
      bool weak = r->flags.find("pre-RFC") != std::string::npos || r->flags.find("rsa-sha1") != std::string::npos ||
                  r->flags.find("<1024") != std::string::npos;
      if (weak) CHECK(results[idx].result != "pass");
      ++checked;
    }
  }
  std::cout << "DKIM legacy corpus: " << checked << " rows checked for dkim=none / RFC 8301 non-pass\n";
  REQUIRE(checked == 79);
}
