// filters/rules/rules_impl.h — the inside of a RuleSet, shared by the reader
// (rules_parse.cc) and the matcher (rules.cc). Not for other modules.
#pragma once
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <re2/re2.h>
#include <re2/set.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "filters/rules/expr.h"
#include "filters/rules/perl_regex.h"
#include "filters/rules/rules.h"

namespace moat::filters::rules {

enum class Kind { Header, Body, Rawbody, Uri, Full, Meta };
// What of a header a rule matches: its whole value, the address or the display name of its
// first address. `raw` (the :raw modifier, combinable: From:name:raw) skips RFC 2047 decoding.
enum class HeaderMode { Decoded, Addr, Name };

// A PCRE2 pattern compiled with JIT and run under a match limit, so a pathological rule
// costs bounded time. Thread-safe: match data is per call.
class Pcre2Regex {
 public:
  static std::unique_ptr<Pcre2Regex> compile(const PerlRegex& regex, std::string& error);
  bool match(std::string_view text) const;
  ~Pcre2Regex();

 private:
  Pcre2Regex() = default;
  pcre2_code* code_ = nullptr;
  pcre2_match_context* mctx_ = nullptr;
};

// A rule as written.
struct RuleDef {
  std::string name;
  Kind kind = Kind::Body;
  std::string file;
  int line = 0;
  std::string header;  // Header rules: the header name, "ALL", "ToCc", "EnvelopeFrom"
  HeaderMode mode = HeaderMode::Decoded;
  bool raw = false;
  bool exists = false;  // exists:Header
  bool negate = false;  // !~
  bool hasIfUnset = false;
  std::string ifUnset;
  PerlRegex regex;
  std::string metaText;
  std::string unsupported;  // eval:, etc.: why it cannot run
};

struct Rule {
  RuleDef def;
  double score = 1.0;
  bool reported = true;  // counted in the score and listed in tests=
  std::unique_ptr<RE2> re2;
  std::unique_ptr<Pcre2Regex> pcre;
  std::unique_ptr<Expr> meta;
  bool match(std::string_view text) const {
    if (re2) return RE2::PartialMatch(text, *re2);
    return pcre && pcre->match(text);
  }
};

// One kind's rules: RE2 ones through one Set, the rest one by one.
struct KindSet {
  std::unique_ptr<RE2::Set> set;
  std::vector<size_t> setRules;  // set index -> rule index
  std::vector<size_t> single;    // rule indexes matched one by one
};

struct RuleSet::Impl {
  std::vector<Rule> rules;
  std::map<std::string, size_t> byName;
  std::map<std::string, std::string> descriptions;
  KindSet body, rawbody, uri, full;
  std::vector<size_t> headerRules, metaRules;
  // metaRules in evaluation order: each after the metas it uses (a meta in a dependency
  // cycle sees the one that closes the cycle as 0). Computed at load, so evaluating needs
  // no recursion however long a chain of metas is.
  std::vector<size_t> metaOrder;
  Stats stats;
};

// The reader: fills defs, scores and descriptions from rule files.
struct ParsedRules {
  std::vector<RuleDef> defs;  // in order of first definition; redefinitions replace
  std::map<std::string, size_t> defIndex;  // name -> index in defs (a redefinition's lookup)
  std::map<std::string, std::vector<double>> scores;
  std::map<std::string, std::string> descriptions;
  Stats stats;
};
void parseRuleText(std::string_view text, const std::string& file, ParsedRules& out, policy::Errors& errors);

RE2::Options re2Options();

}  // namespace moat::filters::rules
