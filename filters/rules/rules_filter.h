// filters/rules/rules_filter.h — the regex spam-rules filter (CONTRACT.md, "Regex spam
// rules"): evaluates the RuleSet at the Data stage on the thread pool and turns the score
// into a verdict and the X-Spam-* headers.
//
// Config [rules]:
//   files = ["policy/spam.cf"]  rule files, read in order (relative to the config file)
//   tag = 5.0                   score >= tag: X-Spam-Status Yes, verdict Tag
//   quarantine = 10.0           score >= quarantine: Quarantine
//   reject = 15.0               score >= reject: 550 5.7.1
//   fallback = "none"           none | pcre2: run rules RE2 cannot (look-around,
//                               back-references) with PCRE2 (JIT, match limit)
//   subject_prefix = ""         e.g. "[SPAM]"; at tag and above (not rejected) the
//                               Subject gets "[SPAM] " in front of its value, once (not
//                               when it already starts with the prefix), by a byte edit
//                               applied at delivery (filters/edit.h); a message without a
//                               Subject gets "Subject: [SPAM]" at the end of its header
//                               block. Folded Subjects keep their folding; encoded words
//                               are left as they are.
// X-Spam-Score and X-Spam-Status (Yes|No, score=S required=T tests=A,B) are added to
// every message the rules ran on. Without [rules] files the filter is not built.
// Untrusted input: the message. Logs through the pipeline's `filter` event: summary
// "score=S", detail {score, tests, subject_prefix}.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "filters/filter.h"
#include "filters/rules/rules.h"
#include "policy/config.h"

namespace moat::filters::rules {

struct FilterConfig {
  std::vector<std::string> files;
  double tag = 5.0;
  double quarantine = 10.0;
  double reject = 15.0;
  bool pcre2Fallback = false;
  std::string subjectPrefix;
  std::shared_ptr<const RuleSet> rules;  // null when no files are configured
};

// Reads [rules] and loads its files; problems go to `errors` as FILE:LINE (uncompilable
// rules as warnings).
FilterConfig readConfig(const policy::Config& config, policy::Errors& errors);

// The verdict and headers for an evaluation (exposed for tests).
Result resultFor(const Evaluation& ev, const FilterConfig& config, const std::string& subject);

// The edit that puts `prefix` in front of the top-level Subject of `raw` (parsed as
// `msg`), or adds a Subject; nullopt when there is nothing to do (empty prefix, already
// prefixed). Exposed for tests.
std::optional<Edit> subjectPrefixEdit(const mime::Message& msg, std::string_view raw, const std::string& prefix);

// "5.2" — SpamAssassin's one-decimal score format.
std::string formatScore(double score);

// nullptr when [rules] names no files.
std::shared_ptr<const Filter> makeRulesFilter(const policy::Config& config, policy::Errors& errors);

// For `moat check`: the statistics line of the configured rule set, "" without rules.
std::string checkReport(const policy::Config& config, policy::Errors& errors);

}  // namespace moat::filters::rules
