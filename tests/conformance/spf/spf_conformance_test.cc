// tests/conformance/spf/spf_conformance_test.cc — runs the OpenSPF suites (RFC 7208 and,
// where the answer did not change, RFC 4408) from ../shared/conformance/spf against
// checkHost over an in-memory resolver. yaml2lines.py converts the YAML at build time;
// the harness rules (SPF→TXT duplication, TXT: NONE, TIMEOUT, explanation DEFAULT, any
// listed result acceptable) follow the suite's README. Every case is its own CHECK.
#include <catch2/catch.hpp>

#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "filters/spf/spf.h"
#include "tests/filters/spf/zone_resolver.h"
#include "tests/support/unescape.h"

using namespace moat::filters::spf;
using moat::testing::ZoneResolver;

namespace {

using moat::test::unescape;

std::vector<std::string> fields(const std::string& line) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(line);
  while (std::getline(in, cur, '\t')) out.push_back(unescape(cur));
  if (!line.empty() && line.back() == '\t') out.push_back("");
  return out;
}

struct Case {
  std::string scenario, name, helo, host, mailFrom, explanation;
  std::vector<std::string> results;
  bool hasExplanation = false;
  size_t zone = 0;
};

struct Suite {
  std::vector<std::shared_ptr<ZoneResolver>> zones;
  std::vector<Case> cases;
};

Suite load(const std::string& path) {
  Suite suite;
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::string line, scenario;
  while (std::getline(in, line)) {
    auto f = fields(line);
    if (f.empty()) continue;
    if (f[0] == "S") {
      scenario = f.size() > 1 ? f[1] : "";
      suite.zones.push_back(std::make_shared<ZoneResolver>());
    } else if (f[0] == "Z" && f.size() >= 4) {
      auto& z = *suite.zones.back();
      if (f[2] == "TIMEOUT") z.addTimeout(f[1]);
      else if (f[2] == "NONE") z.addEmpty(f[1], ZoneResolver::RrType::TXT);
      else if (auto t = ZoneResolver::typeFromName(f[2])) z.add(f[1], *t, f[3]);
    } else if (f[0] == "T" && f.size() >= 8) {
      Case c;
      c.scenario = scenario;
      c.name = f[1];
      c.helo = f[2];
      c.host = f[3];
      c.mailFrom = f[4];
      std::istringstream rs(f[5]);
      std::string r;
      while (std::getline(rs, r, ',')) c.results.push_back(r);
      c.hasExplanation = f[6] == "1";
      c.explanation = f[7];
      c.zone = suite.zones.size() - 1;
      suite.cases.push_back(c);
    }
  }
  return suite;
}

// Returns "" when the case passes, else what differed. `deferred`: answers arrive after
// checkHost returns, as from the network; otherwise synchronously, as from a cache.
std::string runCase(const Suite& suite, const Case& c, bool deferred) {
  auto ip = moat::mta::IpAddress::parse(c.host);
  if (!ip) return "bad host " + c.host;
  CheckParams p;
  p.ip = *ip;
  p.helo = c.helo;
  p.mailFrom = c.mailFrom;
  p.defaultExplanation = "DEFAULT";
  std::optional<SpfAnswer> got;
  auto& zone = *suite.zones[c.zone];
  zone.setDeferred(deferred);
  checkHost(zone, p, [&](SpfAnswer a) { got = std::move(a); });
  zone.runPending();
  zone.setDeferred(false);
  if (!got) return "no answer";
  std::string name(resultName(got->result));
  bool ok = false;
  for (const auto& r : c.results) ok = ok || r == name;
  if (!ok) return "result " + name + " (" + got->mechanism + ")";
  if (c.hasExplanation && got->result == SpfResult::Fail && got->explanation != c.explanation) {
    return "explanation '" + got->explanation + "' want '" + c.explanation + "'";
  }
  return "";
}

void runSuite(const std::string& label, const std::string& path, const std::set<std::string>& skip,
              size_t expectedCases) {
  Suite suite = load(path);
  REQUIRE(suite.cases.size() == expectedCases);
  size_t passed = 0, skipped = 0;
  std::vector<std::string> failures;
  for (const auto& c : suite.cases) {
    if (skip.count(c.name)) {
      ++skipped;
      continue;
    }
    std::string why = runCase(suite, c, false);
    if (why.empty()) {
      why = runCase(suite, c, true);
      if (!why.empty()) why = "with deferred DNS answers: " + why;
    }
    INFO(label << " " << c.scenario << " / " << c.name << ": " << why);
    CHECK(why.empty());
    if (why.empty()) ++passed;
    else failures.push_back(c.name + ": " + why);
  }
  std::cout << "SPF " << label << ": " << passed << "/" << (suite.cases.size() - skipped) << " passed";
  if (skipped) std::cout << " (" << skipped << " skipped, see the list in the test)";
  std::cout << "\n";
  for (const auto& f : failures) std::cout << "  FAIL " << f << "\n";
}

}  // namespace

TEST_CASE("OpenSPF RFC 7208 suite: all 203 cases") {
  runSuite("rfc7208", SPF_SUITE_DIR "/rfc7208-tests.txt", {}, 203);
}

// The RFC 4408 suite lists both the RFC 4408 and the RFC 7208 answer wherever they
// differ, so no case needs skipping; the list stays for cases a future suite changes.
TEST_CASE("OpenSPF RFC 4408 suite: cases RFC 7208 did not change") {
  static const std::set<std::string> changed = {};
  runSuite("rfc4408", SPF_SUITE_DIR "/rfc4408-tests.txt", changed, 191);
}

// pyspf's own regression tests and blitiri go-spf's: implementation suites, run for
// extra coverage. Cases listed here test behaviour specific to that implementation.
TEST_CASE("pyspf regression suite") {
  // pyspf's lax-mode "default=" modifier is not in RFC 7208 (unknown modifiers are ignored).
  static const std::set<std::string> specific = {"default-modifier", "default-modifier-harsh"};
  runSuite("pyspf", SPF_SUITE_DIR "/pyspf-test.txt", specific, 16);
}

TEST_CASE("blitiri go-spf suite") {
  // These use single-label names ("foo@d00", "include:d11"): RFC 7208 §4.3 makes a
  // non-FQDN identity "none" and §7.1's domain-end needs a "." toplabel (a syntax error).
  static const std::set<std::string> specific = {
      "resolution-with-10-lookups", "mx-resolution-10-terms", "mx-resolution-11-terms", "one-mx-not-found",
      "all-mx-not-found", "include-not-found", "redirect-not-found"};
  runSuite("blitiri", SPF_SUITE_DIR "/blitirispf-tests.txt", specific, 21);
}
