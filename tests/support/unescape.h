// tests/support/unescape.h — the backslash escapes (\\t \\r \\n, and \\x for any other x) that
// the conformance case files use for bytes YAML/text cannot hold. Header-only. Untrusted
// input: none (test data).
#pragma once
#include <string>

namespace moat::test {

inline std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    char c = s[++i];
    out += c == 't' ? '\t' : c == 'r' ? '\r' : c == 'n' ? '\n' : c;
  }
  return out;
}

}  // namespace moat::test
