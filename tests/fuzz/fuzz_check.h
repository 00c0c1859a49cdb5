// tests/fuzz/fuzz_check.h — the invariant check shared by the fuzz targets: a broken
// invariant aborts with its location, which libFuzzer (and the corpus replay test) reports
// as a crash. Works without sanitizers, so the replay test under gcc checks the same things.
// Also the input helpers more than one target uses.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#define FUZZ_CHECK(cond)                                                          \
  do {                                                                            \
    if (!(cond)) {                                                                \
      std::fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                               \
    }                                                                             \
  } while (0)

namespace fuzz {

// The lines of `s` split at LF (several TXT strings of one record, one per line).
inline std::vector<std::string> lines(std::string_view s) {
  std::vector<std::string> out;
  while (true) {
    size_t nl = s.find('\n');
    out.emplace_back(s.substr(0, nl));
    if (nl == std::string_view::npos) break;
    s.remove_prefix(nl + 1);
  }
  return out;
}

}  // namespace fuzz
