// filters/rules/rules.h — SpamAssassin rule files (CONTRACT.md, "Regex spam rules") loaded
// into an immutable RuleSet and evaluated on one message.
//
// Syntax read: header (Header, Header:raw, :addr, :name, ALL, ToCc, MESSAGEID, EnvelopeFrom,
// exists:Header, =~ and !~, [if-unset: X]), body, rawbody, uri, full, meta, score (the
// first of four scores: SpamAssassin's set for no Bayes and no network tests), describe,
// tflags (accepted, ignored), `#` comments (`\#` is a literal #), if / ifplugin / else /
// endif (ifplugin is false: Moat runs none of SpamAssassin's Perl plugins; `if` evaluates
// `version` as 4.000000 and can(...)/plugin(...) as false), `lang` lines (ignored). Other
// directives (priority, reuse, test, redirector_pattern, ...) are accepted, ignored, counted.
//
// Scoring as SpamAssassin does: a rule without `score` scores 1.0, T_ rules 0.01, __ rules
// 0 and are never listed; `score X 0` turns a rule off (it still feeds metas). A score is
// a finite number from -1000 to 1000 (else a FILE:LINE error). A meta in a dependency cycle
// (itself, or A uses B uses A) gets a FILE:LINE warning and sees the cycle's rule as 0.
//
// Matching: Perl regexes are translated to RE2 (perl_regex.h); each kind's rules run in
// one pass with an RE2::Set (body per paragraph of the rendered text with the Subject as
// first paragraph and line breaks removed; rawbody per decoded text part; uri per URI; full
// on the whole message). Rules RE2 cannot run are skipped with a FILE:LINE warning, or run
// by PCRE2 (JIT, match limit) when the fallback is on.
//
// Untrusted input: the message. Rule files are operator input, validated with FILE:LINE.
// Logs nothing itself; the rules filter logs the score and the rules hit.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "filters/mime/mime.h"
#include "policy/errors.h"

namespace moat::filters::rules {

struct Options {
  bool pcre2Fallback = false;
};

// What `moat check` reports about a rule set.
struct Stats {
  size_t re2 = 0;       // regex rules run by RE2
  size_t pcre2 = 0;     // regex rules run by the PCRE2 fallback
  size_t meta = 0;      // meta rules
  size_t skipped = 0;   // rules that will not run
  std::map<std::string, size_t> skipReasons;        // "look-ahead" -> 3, "eval" -> 120 ...
  size_t ignoredDirectives = 0;                     // accepted and ignored lines
  std::map<std::string, size_t> ignoredByDirective;  // "priority" -> 40 ...
  size_t ifSkippedLines = 0;                         // lines inside false if/ifplugin blocks
  std::string str() const;  // one line for `moat check`
};

// What one message offers the rules.
struct Input {
  const mime::Message* mime = nullptr;  // required
  std::string_view raw;                  // the whole message (full rules)
  std::string envelopeFrom;              // EnvelopeFrom pseudo-header
};

struct Evaluation {
  double score = 0;
  std::vector<std::string> hits;  // rules hit with a non-zero score, sorted (tests=...)
};

class RuleSet {
 public:
  // Reads and compiles rule files in order (later definitions replace earlier ones, as in
  // SpamAssassin). Syntax errors are errors and uncompilable rules are warnings, with
  // FILE:LINE, in `errors`. Returns nullptr only if a file could not be read.
  static std::shared_ptr<const RuleSet> load(const std::vector<std::string>& files, const Options& options,
                                             policy::Errors& errors);
  // The same from text (tests); `file` names it in messages.
  static std::shared_ptr<const RuleSet> fromText(std::string_view text, const std::string& file,
                                                 const Options& options, policy::Errors& errors);

  Evaluation evaluate(const Input& input) const;
  const Stats& stats() const;
  size_t ruleCount() const;            // rules that run (regex and meta)
  double scoreOf(const std::string& name) const;  // the score in use; 0 if unknown
  std::string describe(const std::string& name) const;

  RuleSet();
  ~RuleSet();
  RuleSet(const RuleSet&) = delete;
  RuleSet& operator=(const RuleSet&) = delete;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace moat::filters::rules
