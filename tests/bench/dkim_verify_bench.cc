// tests/bench/dkim_verify_bench.cc — DKIM verify-only throughput of Moat's verifier on one
// signed message with its key record (no DNS: the key is supplied as the resolver would),
// for comparison with python3-dkim on the same input (dkim_verify_bench.py). Not a test.
//   dkim_verify_bench MESSAGE KEYNAME TXTRECORD [SECONDS]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "filters/dkim/dkim.h"

using namespace moat::filters::dkim;

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s MESSAGE KEYNAME TXTRECORD [SECONDS]\n", argv[0]);
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string message = ss.str();
  double seconds = argc > 4 ? std::atof(argv[4]) : 3.0;
  KeyMap keys{{argv[2], KeyAnswer{moat::mta::dns::Status::Ok, {argv[3]}}}};
  VerifyOptions opts;
  auto first = verifyWithKeys(message, keys, opts);
  if (first.empty() || first[0].result != "pass") {
    std::fprintf(stderr, "the message does not verify: %s %s\n", first.empty() ? "no signature" : first[0].result.c_str(),
                 first.empty() ? "" : first[0].reason.c_str());
    return 1;
  }
  auto start = std::chrono::steady_clock::now();
  long n = 0;
  for (;;) {
    for (int i = 0; i < 50; ++i) verifyWithKeys(message, keys, opts);
    n += 50;
    double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (el >= seconds) {
      std::printf("RESULT name=moat-dkim-verify messages=%ld seconds=%.2f verify_per_s=%.0f\n", n, el, n / el);
      return 0;
    }
  }
}
