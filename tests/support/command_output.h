// tests/support/command_output.h — runs a shell command a unit test needs (an independent
// implementation such as dkimpy or Python's hashlib, computing what Moat's result is checked
// against) and returns what it wrote on stdout. Header-only. Untrusted input: none; the
// caller bounds the command's time (`timeout 60 ...`).
#pragma once
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>

namespace moat::test {

// Everything `command` (run by /bin/sh) writes on stdout, read to its end; add "2>&1" to the
// command for its stderr too. Throws (failing the test case) when it cannot be started.
inline std::string commandOutput(const std::string& command) {
  struct Closer {
    void operator()(FILE* f) const { pclose(f); }
  };
  std::unique_ptr<FILE, Closer> p(popen(command.c_str(), "r"));
  if (!p) throw std::runtime_error("cannot run: " + command);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p.get())) > 0) out.append(buf, n);
  return out;
}

}  // namespace moat::test
