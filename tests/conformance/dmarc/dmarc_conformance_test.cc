// DMARC conformance (RFC 7489) against public suites nobody on the team wrote:
// shared/conformance/dmarc/ — OpenDMARC's record-parse, alignment and From-domain tables,
// stalwartlabs/mail-auth's record, alignment and policy-discovery cases, and authheaders'
// scenarios (their zone served by an in-memory Resolver, their prior SPF/DKIM results as
// inputs). yaml_to_cases.py converts the YAML at build time and decides the exclusions from
// the suites' own markers (rfc7489: false, DMARCbis, library-lenient); each is printed with
// its reason. Every applicable case must pass.
#include <catch2/catch.hpp>

#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>

#include "filters/dmarc/dmarc.h"
#include "tests/conformance/dmarc/case_reader.h"
#include "tests/filters/dmarc/memory_resolver.h"

using namespace moat;
using namespace moat::filters;
using namespace moat::filters::dmarc;
using moat::test::Case;
using moat::test::MemoryResolver;

namespace {

std::vector<std::string> split(const std::string& s, char sep, size_t maxParts = 0) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    auto pos = s.find(sep, start);
    if (pos == std::string::npos || (maxParts && out.size() + 1 == maxParts)) {
      out.push_back(s.substr(start));
      return out;
    }
    out.push_back(s.substr(start, pos - start));
    start = pos + 1;
  }
}

void loadZone(const Case& c, MemoryResolver& dns) {
  for (const auto& entry : c.all("zone")) {
    auto parts = split(entry, '|', 3);
    if (parts.size() != 3) continue;
    if (parts[1] == "TXT") dns.addTxt(parts[0], parts[2]);
    else if (parts[1] == "A") dns.addA(parts[0], parts[2]);
    else if (parts[1] == "EXISTS") dns.exists(parts[0]);
  }
}

std::vector<DkimOutcome> dkimInputs(const Case& c) {
  std::vector<DkimOutcome> out;
  for (const auto& d : c.all("dkim")) {
    auto parts = split(d, '|', 2);
    if (parts.size() != 2 || parts[1].empty()) continue;
    DkimOutcome o;
    o.result = parts[0];
    o.domain = parts[1];
    out.push_back(o);
  }
  return out;
}

std::optional<Evaluation> evaluateWith(MemoryResolver& dns, const std::string& message, const SpfOutcome& spf,
                                       const std::vector<DkimOutcome>& dkim) {
  std::optional<Evaluation> out;
  evaluate(dns, message, spf, dkim, [&](Evaluation e) { out = std::move(e); }, [] { return 0; });
  dns.runPending();
  return out;
}

// Each check returns "" on success or what differed.
using Check = std::string (*)(const Case&);

std::string expectEq(const std::string& what, const std::string& got, const std::string& want) {
  return got == want ? "" : what + ": got \"" + got + "\", want \"" + want + "\"";
}

std::string checkParse(const Case& c) {
  static const std::map<std::string, ParseStatus> codes = {
      {"DMARC_PARSE_OKAY", ParseStatus::Ok},
      {"DMARC_PARSE_ERROR_EMPTY", ParseStatus::Empty},
      {"DMARC_PARSE_ERROR_BAD_VERSION", ParseStatus::BadVersion},
      {"DMARC_PARSE_ERROR_BAD_VALUE", ParseStatus::BadValue},
      {"DMARC_PARSE_ERROR_NO_REQUIRED_P", ParseStatus::MissingP}};
  auto it = codes.find(c.get("expected"));
  if (it == codes.end()) return "unknown expected code " + c.get("expected");
  Record r;
  std::string err;
  auto got = parseRecord(c.get("record"), r, err);
  return expectEq("status", std::string(parseStatusName(got)), std::string(parseStatusName(it->second)));
}

std::string checkAlign(const Case& c) {
  bool got = aligned(c.get("a"), c.get("b"), c.get("mode") == "strict");
  return expectEq("alignment", got ? "aligned" : "not-aligned", c.get("expected"));
}

std::string checkFromValue(const Case& c) {
  std::string err;
  auto domains = fromValueDomains(c.get("input"), err);
  return expectEq("first From domain", domains.empty() ? "(none: " + err + ")" : domains[0], c.get("expected"));
}

std::string reportUris(const std::vector<std::string>& uris) {
  std::string out;
  for (const auto& u : uris) {
    ReportUri r;
    if (!parseReportUri(u, r)) continue;
    out += r.address + "|" + std::to_string(r.maxSize) + ",";
  }
  return out;
}

std::string checkRecord(const Case& c) {
  Record r;
  std::string err;
  auto status = parseRecord(c.get("record"), r, err);
  if (status != ParseStatus::Ok) return "parse: " + err;
  std::string diff;
  auto add = [&diff](const std::string& d) {
    if (!d.empty()) diff += (diff.empty() ? "" : "; ") + d;
  };
  add(expectEq("p", r.p, c.get("x_p")));
  add(expectEq("sp", r.effectiveSp(), c.get("x_sp")));
  add(expectEq("np", r.effectiveNp(), c.get("x_np")));
  add(expectEq("adkim", r.adkim, c.get("x_adkim")));
  add(expectEq("aspf", r.aspf, c.get("x_aspf")));
  add(expectEq("fo", r.fo, c.get("x_fo")));
  add(expectEq("pct", std::to_string(r.pct), c.get("x_pct")));
  add(expectEq("rf", r.rf, c.get("x_rf")));
  add(expectEq("ri", std::to_string(r.ri), c.get("x_ri")));
  std::string rua, ruf;
  for (const auto& v : c.all("rua")) rua += v + ",";
  for (const auto& v : c.all("ruf")) ruf += v + ",";
  add(expectEq("rua", reportUris(r.rua), rua));
  add(expectEq("ruf", reportUris(r.ruf), ruf));
  return diff;
}

std::string identifierOutcome(bool authenticated, bool isAligned) {
  if (!authenticated) return "none";
  return isAligned ? "pass" : "fail-not-aligned";
}

std::string checkAlignment(const Case& c) {
  MemoryResolver dns;
  loadZone(c, dns);
  SpfOutcome spf;
  spf.checked = true;
  spf.result = c.get("spf");
  spf.identity = "mailfrom";
  spf.domain = c.get("mail_from_domain");
  auto dkim = dkimInputs(c);
  auto e = evaluateWith(dns, "From: <" + c.get("from") + ">\r\n\r\nbody\r\n", spf, dkim);
  if (!e) return "no evaluation";
  bool dkimPass = !dkim.empty() && dkim[0].result == "pass";
  std::string diff = expectEq("dmarc_dkim", identifierOutcome(dkimPass, e->dkimAligned), c.get("x_dkim"));
  diff += expectEq(" dmarc_spf", identifierOutcome(spf.result == "pass", e->spfAligned), c.get("x_spf"));
  diff += expectEq(" policy", e->policy, c.get("x_policy"));
  return diff;
}

std::string checkDiscovery(const Case& c) {
  MemoryResolver dns;
  loadZone(c, dns);
  SpfOutcome spf;
  auto e = evaluateWith(dns, "From: <" + c.get("from") + ">\r\n\r\nbody\r\n", spf, {});
  if (!e) return "no evaluation";
  if (c.has("x_policy")) return expectEq("policy", e->policy, c.get("x_policy"));
  if (c.get("x_record") == "none")
    return expectEq("result", e->result, "none") + expectEq(" record", e->recordDomain, "");
  return "nothing to compare";
}

// The dmarc resinfo tokens of an expected Authentication-Results header: "dmarc=X",
// "header.from=Y", "policy.dmarc=Z" (comments are authheaders' own wording).
std::map<std::string, std::string> dmarcTokens(const std::string& header) {
  std::map<std::string, std::string> out;
  auto pos = header.find("dmarc=");
  while (pos != std::string::npos && pos > 0 && header[pos - 1] != ' ') pos = header.find("dmarc=", pos + 1);
  if (pos == std::string::npos) return out;
  auto resinfo = header.substr(pos, header.find(';', pos) - pos);
  std::string stripped;
  int depth = 0;
  for (char ch : resinfo) {
    if (ch == '(') ++depth;
    else if (ch == ')') --depth;
    else if (depth == 0) stripped += ch;
  }
  std::istringstream in(stripped);
  std::string tok;
  while (in >> tok) {
    auto eq = tok.find('=');
    if (eq != std::string::npos) out[tok.substr(0, eq)] = tok.substr(eq + 1);
  }
  return out;
}

std::string checkScenario(const Case& c) {
  std::ifstream in(c.get("message"), std::ios::binary);
  if (!in) return "cannot read " + c.get("message");
  std::string message((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  MemoryResolver dns;
  loadZone(c, dns);
  SpfOutcome spf;  // the scenarios carry no SPF result for DMARC
  auto e = evaluateWith(dns, message, spf, dkimInputs(c));
  if (!e) return "no evaluation";
  std::string diff = expectEq("dmarc", e->result, c.get("x_dmarc"));
  if (c.has("x_policy")) diff += expectEq(" policy", e->policy, c.get("x_policy"));
  auto want = dmarcTokens(c.get("x_header"));
  auto mine = dmarcTokens("x; " + authResult(*e, e->disposition));
  diff += expectEq(" A-R dmarc=", mine["dmarc"], want["dmarc"]);
  if (want.count("header.from")) {
    // authheaders writes header.from=none when the From field has no domain; Moat omits it.
    auto wantFrom = want["header.from"] == "none" ? "" : want["header.from"];
    diff += expectEq(" A-R header.from=", mine["header.from"], wantFrom);
  }
  if (c.has("x_policy")) diff += expectEq(" A-R policy.dmarc=", mine["policy.dmarc"], want["policy.dmarc"]);
  return diff;
}

const std::map<std::string, Check> kChecks = {
    {"parse", checkParse},         {"align", checkAlign},           {"fromvalue", checkFromValue},
    {"record", checkRecord},       {"alignment", checkAlignment},   {"discovery", checkDiscovery},
    {"scenario", checkScenario}};

}  // namespace

TEST_CASE("DMARC conformance: OpenDMARC, stalwart mail-auth and authheaders suites") {
  std::vector<Case> cases;
  std::string error;
  REQUIRE(moat::test::readCases(DMARC_CASES_FILE, cases, error));
  INFO(error);
  REQUIRE(cases.size() > 50);

  size_t applicable = 0, passed = 0;
  std::vector<std::string> failures, exclusions, extensions;
  std::map<std::string, std::pair<size_t, size_t>> perSuite;
  for (const auto& c : cases) {
    auto name = c.get("suite") + " " + c.get("id");
    if (c.has("exclude")) {
      exclusions.push_back(name + ": " + c.get("exclude"));
      continue;
    }
    ++applicable;
    if (c.has("extension")) extensions.push_back(name + ": " + c.get("extension"));
    auto it = kChecks.find(c.get("kind"));
    std::string diff = it == kChecks.end() ? "unknown kind " + c.get("kind") : it->second(c);
    auto& suite = perSuite[c.get("suite")];
    ++suite.second;
    if (diff.empty()) {
      ++passed;
      ++suite.first;
    } else {
      failures.push_back(name + ": " + diff);
    }
  }

  std::cout << "DMARC conformance: " << passed << "/" << applicable << " applicable cases passed\n";
  for (const auto& [suite, counts] : perSuite)
    std::cout << "  " << suite << ": " << counts.first << "/" << counts.second << "\n";
  std::cout << "Excluded (" << exclusions.size() << "):\n";
  for (const auto& e : exclusions) std::cout << "  - " << e << "\n";
  std::cout << "Applicable beyond RFC 7489 (" << extensions.size() << "):\n";
  for (const auto& e : extensions) std::cout << "  - " << e << "\n";
  for (const auto& f : failures) std::cout << "FAILED " << f << "\n";
  REQUIRE(applicable > 0);
  REQUIRE(failures.empty());
  REQUIRE(passed == applicable);
}
