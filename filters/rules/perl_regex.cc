// filters/rules/perl_regex.cc — see perl_regex.h.
#include "filters/rules/perl_regex.h"

#include <cctype>
#include <cstring>

namespace moat::filters::rules {

std::string readPerlRegex(std::string_view text, PerlRegex& out) {
  size_t i = 0;
  while (i < text.size() && (text[i] == ' ' || text[i] == '\t')) ++i;
  if (i < text.size() && text[i] == 'm' && i + 1 < text.size() && std::ispunct(static_cast<unsigned char>(text[i + 1])))
    ++i;
  if (i >= text.size() || !std::ispunct(static_cast<unsigned char>(text[i])) || text[i] == '\\')
    return "expected a regular expression like /.../";
  char open = text[i], close = open;
  if (open == '{') close = '}';
  if (open == '(') close = ')';
  if (open == '[') close = ']';
  if (open == '<') close = '>';
  int nest = 0;
  size_t j = i + 1;
  std::string pattern;
  for (; j < text.size(); ++j) {
    char c = text[j];
    if (c == '\\' && j + 1 < text.size()) {
      // An escaped delimiter is the delimiter itself; other escapes stay for the regex.
      if (text[j + 1] == close || text[j + 1] == open) {
        if (!std::strchr("{}()[]<>.*+?|^$", text[j + 1])) {
          pattern += text[j + 1];
        } else {
          pattern += c;
          pattern += text[j + 1];
        }
      } else {
        pattern += c;
        pattern += text[j + 1];
      }
      ++j;
      continue;
    }
    if (open != close && c == open) ++nest;
    if (c == close) {
      if (nest == 0) break;
      --nest;
    }
    pattern += c;
  }
  if (j >= text.size()) return "unterminated regular expression";
  ++j;
  size_t flagsStart = j;
  while (j < text.size() && std::isalpha(static_cast<unsigned char>(text[j]))) ++j;
  out.pattern = std::move(pattern);
  out.flags = std::string(text.substr(flagsStart, j - flagsStart));
  out.consumed = j;
  return "";
}

namespace {

class Translator {
 public:
  Translator(std::string_view p, bool extended) : p_(p), x_(extended) {}

  Translation run() {
    while (i_ < p_.size() && reason_.empty()) step();
    if (inClass_ && reason_.empty()) reason_ = "unterminated character class";
    return {reason_.empty() ? out_ : "", reason_};
  }

 private:
  void step() {
    char c = p_[i_];
    if (c == '\\') return escape();
    if (inClass_) return classChar(c);
    if (x_ && (c == ' ' || c == '\t' || c == '\n' || c == '\r')) {
      ++i_;
      return;
    }
    if (x_ && c == '#') {
      while (i_ < p_.size() && p_[i_] != '\n') ++i_;
      return;
    }
    if (c == '(' && i_ + 1 < p_.size() && p_[i_ + 1] == '?') return group();
    if (c == '[') return openClass();
    if (c == '+' && quantified_) {
      reason_ = "possessive quantifier";
      return;
    }
    bool wasQuantified = quantified_;
    quantified_ = false;
    if (c == '*' || c == '+' || (c == '?' && !wasQuantified)) quantified_ = true;
    if (c == '{' && i_ + 1 < p_.size() && std::isdigit(static_cast<unsigned char>(p_[i_ + 1]))) counted_ = true;
    if (c == '}' && counted_) {
      counted_ = false;
      quantified_ = true;
    }
    out_ += c;
    ++i_;
  }

  void openClass() {
    inClass_ = true;
    quantified_ = false;
    out_ += '[';
    ++i_;
    if (i_ < p_.size() && p_[i_] == '^') out_ += p_[i_++];
    if (i_ < p_.size() && p_[i_] == ']') {  // a leading ']' is literal
      out_ += "\\]";
      ++i_;
    }
  }

  void classChar(char c) {
    if (c == '[' && i_ + 1 < p_.size() && p_[i_ + 1] == ':') {
      size_t end = p_.find(":]", i_ + 2);
      if (end != std::string_view::npos) {
        out_.append(p_.substr(i_, end + 2 - i_));
        i_ = end + 2;
        return;
      }
    }
    if (c == '[') {
      out_ += "\\[";  // Perl takes a bare '[' in a class literally; RE2 wants it escaped
      ++i_;
      return;
    }
    if (c == ']') inClass_ = false;
    out_ += c;
    ++i_;
  }

  void escape() {
    if (i_ + 1 >= p_.size()) {
      reason_ = "trailing backslash";
      return;
    }
    char e = p_[i_ + 1];
    i_ += 2;
    bool wasQuantified = quantified_;
    quantified_ = false;
    if (!inClass_ && e >= '1' && e <= '9') return fail("back-reference");
    if (e == 'g' || e == 'k') return fail("back-reference");
    if (e == 'G') return fail("\\G anchor");
    if (e == 'K') return fail("\\K");
    if (e == 'l' || e == 'u' || e == 'L' || e == 'U') return fail("case-changing escape");
    if (e == 'X' || (e == 'N' && i_ < p_.size() && p_[i_] == '{')) return fail("unsupported escape \\" + std::string(1, e));
    (void)wasQuantified;
    switch (e) {
      case 'h': out_ += inClass_ ? "\\t " : "[\\t ]"; return;
      case 'H': if (inClass_) return fail("\\H in a character class"); out_ += "[^\\t ]"; return;
      case 'v': out_ += inClass_ ? "\\n\\x0B\\f\\r" : "[\\n\\x0B\\f\\r]"; return;
      case 'V': if (inClass_) return fail("\\V in a character class"); out_ += "[^\\n\\x0B\\f\\r]"; return;
      case 'R': if (inClass_) return fail("\\R in a character class"); out_ += "(?:\\r\\n|[\\n\\x0B\\f\\r])"; return;
      case 'N': out_ += inClass_ ? "\\n" : "[^\\n]"; return;
      case 'e': out_ += "\\x1B"; return;
      case 'Z': if (inClass_) { out_ += 'Z'; return; } out_ += "(?:\\n?\\z)"; return;
      case '/': case '"': case '\'': case '@': case '%': case '&': case '=': case '!': case ',': case ';':
      case ':': case '<': case '>': case '`': case '~': case '#': case ' ': case '-': case '_':
        // Perl escapes of characters that need none; RE2 wants them plain (or allows few).
        if (e == ' ' || e == '#') {
          out_ += e == ' ' ? "\\x20" : "\\x23";
        } else if (e == '-' && inClass_) {
          out_ += "\\-";
        } else {
          out_ += e;
        }
        return;
      default: break;
    }
    if (std::isalpha(static_cast<unsigned char>(e)) && !std::strchr("AbBdDwWsSzQEpPnrtfax0", e))
      return fail("unsupported escape \\" + std::string(1, e));
    out_ += '\\';
    out_ += e;
    if (e == 'x' || e == 'p' || e == 'P') copyBraces();
  }

  // \x{263A}, \p{L}: copy the braces through.
  void copyBraces() {
    if (i_ < p_.size() && p_[i_] == '{') {
      size_t end = p_.find('}', i_);
      if (end == std::string_view::npos) return fail("unterminated \\x{...}");
      out_.append(p_.substr(i_, end + 1 - i_));
      i_ = end + 1;
    }
  }

  void group() {
    std::string_view rest = p_.substr(i_ + 2);
    quantified_ = false;
    auto starts = [&](const char* s) { return rest.rfind(s, 0) == 0; };
    if (starts("=") || starts("!")) return fail("look-ahead");
    if (starts("<=") || starts("<!")) return fail("look-behind");
    if (starts(">")) return fail("atomic group");
    if (starts("(")) return fail("conditional");
    if (starts("R") || starts("&") || starts("+") || (!rest.empty() && std::isdigit(static_cast<unsigned char>(rest[0]))))
      return fail("recursion");
    if (starts("P=") || starts("P>")) return fail("back-reference");
    if (starts("|")) return fail("branch reset");
    if (starts("#")) {
      size_t end = p_.find(')', i_);
      i_ = end == std::string_view::npos ? p_.size() : end + 1;
      return;
    }
    if (starts("<") || starts("'")) {
      char close = rest[0] == '<' ? '>' : '\'';
      size_t end = rest.find(close, 1);
      if (end == std::string_view::npos) return fail("bad named group");
      out_ += "(?P<";
      out_.append(rest.substr(1, end - 1));
      out_ += '>';
      i_ += 2 + end + 1;
      return;
    }
    // Inline flags (?i) (?s-m:...): RE2 knows i m s U; Perl's x must be applied here.
    size_t k = 0;
    while (k < rest.size() && (std::isalpha(static_cast<unsigned char>(rest[k])) || rest[k] == '-' || rest[k] == '^')) {
      if (!std::strchr("ims-", rest[k])) return fail(std::string("inline flag ") + rest[k]);
      ++k;
    }
    out_ += "(?";
    out_.append(rest.substr(0, k));
    i_ += 2 + k;
  }

  void fail(std::string reason) {
    if (reason_.empty()) reason_ = std::move(reason);
  }

  std::string_view p_;
  bool x_;
  size_t i_ = 0;
  bool inClass_ = false;
  bool quantified_ = false;  // the last token was a quantifier: a '+' now is possessive
  bool counted_ = false;     // inside {n,m}
  std::string out_;
  std::string reason_;
};

}  // namespace

Translation toRe2(const PerlRegex& regex) {
  std::string inlineFlags;
  bool extended = false;
  for (char f : regex.flags) {
    switch (f) {
      case 'i': case 'm': case 's':
        if (inlineFlags.find(f) == std::string::npos) inlineFlags += f;
        break;
      case 'x': extended = true; break;
      case 'g': case 'o': case 'u': case 'a': case 'l': case 'd': break;  // no meaning for a match test
      default: return {"", std::string("unsupported flag ") + f};
    }
  }
  Translation t = Translator(regex.pattern, extended).run();
  if (!t.reason.empty() || inlineFlags.empty()) return t;
  t.re2 = "(?" + inlineFlags + ")" + t.re2;
  return t;
}

}  // namespace moat::filters::rules
