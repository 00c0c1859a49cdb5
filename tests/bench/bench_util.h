// tests/bench/bench_util.h — helpers the C++ benchmarks share. Header-only.
#pragma once
#include <fstream>
#include <sstream>
#include <string>

namespace moat::bench {

// A message file in its wire form: every LF not already after a CR becomes CRLF.
inline std::string slurpCrlf(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str(), out;
  out.reserve(s.size() + s.size() / 32);
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r')) out += '\r';
    out += s[i];
  }
  return out;
}

}  // namespace moat::bench
