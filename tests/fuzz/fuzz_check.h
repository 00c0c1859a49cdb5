// tests/fuzz/fuzz_check.h — the invariant check shared by the fuzz targets: a broken
// invariant aborts with its location, which libFuzzer (and the corpus replay test) reports
// as a crash. Works without sanitizers, so the replay test under gcc checks the same things.
#pragma once
#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(cond)                                                          \
  do {                                                                            \
    if (!(cond)) {                                                                \
      std::fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                               \
    }                                                                             \
  } while (0)
