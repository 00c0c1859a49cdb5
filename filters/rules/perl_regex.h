// filters/rules/perl_regex.h — SpamAssassin's Perl regular expressions read and translated
// to RE2 syntax: delimiters (/re/, m{re}, m!re!...), flags i m s x (x is applied here, RE2
// has no extended mode), escapes RE2 lacks (\h \v \R \e \Z). What RE2 cannot do by design
// (look-around, back-references, possessive quantifiers, atomic groups, recursion,
// conditionals, \G, \K) is reported with a reason so the rule is skipped or handed to the
// PCRE2 fallback. Untrusted input: rule files (operator-written, still checked). Logs
// nothing.
#pragma once
#include <string>
#include <string_view>

namespace moat::filters::rules {

struct PerlRegex {
  std::string pattern;  // the text between the delimiters, as written
  std::string flags;    // the modifiers after the closing delimiter
  size_t consumed = 0;  // characters of the input read
};

// Reads a delimited regex at the start of `text` (leading blanks skipped). Returns an
// error message, or "" on success.
std::string readPerlRegex(std::string_view text, PerlRegex& out);

struct Translation {
  std::string re2;     // the RE2 pattern, flags inline
  std::string reason;  // empty on success; else why RE2 cannot run it ("look-around", ...)
};

Translation toRe2(const PerlRegex& regex);

}  // namespace moat::filters::rules
