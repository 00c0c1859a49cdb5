// tests/bench/rules_bench.cc — spam-rule throughput of Moat's engine (the one `moat scan`
// and the daemon use): rules loaded once, then every message MIME-parsed and evaluated,
// the whole set N times. Compared with SpamAssassin on the same files by rules_bench.sh.
//   rules_bench RULES_DIR|FILE... -- MESSAGE... [--rounds N]
#include <chrono>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "filters/mime/mime.h"
#include "filters/rules/rules.h"
#include "policy/errors.h"
#include "tests/bench/bench_util.h"

using namespace moat::filters;

using moat::bench::slurpCrlf;

int main(int argc, char** argv) {
  std::vector<std::string> rules, messages;
  int rounds = 5;
  bool afterDash = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--")) { afterDash = true; continue; }
    if (!std::strcmp(argv[i], "--rounds") && i + 1 < argc) { rounds = std::atoi(argv[++i]); continue; }
    (afterDash ? messages : rules).push_back(argv[i]);
  }
  moat::policy::Errors errors;
  auto set = rules::RuleSet::load(rules, rules::Options{}, errors);
  if (!set) {
    std::fprintf(stderr, "%s", errors.str().c_str());
    return 1;
  }
  std::fprintf(stderr, "%s\n", set->stats().str().c_str());
  std::vector<std::string> raw;
  for (const auto& m : messages) raw.push_back(slurpCrlf(m));
  mime::Limits limits;
  double hits = 0;
  auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < rounds; ++r) {
    for (const auto& m : raw) {
      auto parsed = mime::parse(m, limits);
      rules::Input in;
      in.mime = parsed.get();
      in.raw = m;
      hits += set->evaluate(in).score;
    }
  }
  double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  size_t n = raw.size() * static_cast<size_t>(rounds);
  std::printf("RESULT name=moat-rules messages=%zu seconds=%.3f messages_per_s=%.0f rules=%zu score_sum=%.1f\n", n, el,
              n / el, set->ruleCount(), hits);
  return 0;
}
