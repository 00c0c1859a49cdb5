// tests/support/crlf.h — test messages are written with "\n" in the source; SMTP and the
// spool carry CRLF. Header-only. Untrusted input: none.
#pragma once
#include <string>
#include <string_view>

namespace moat::test {

// Every LF becomes CRLF.
inline std::string crlf(std::string_view s) {
  std::string out;
  out.reserve(s.size() + s.size() / 32);
  for (char c : s) {
    if (c == '\n') out += '\r';
    out += c;
  }
  return out;
}

}  // namespace moat::test
