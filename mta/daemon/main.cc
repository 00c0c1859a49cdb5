// mta/daemon/main.cc — the `moat` command line (CONTRACT.md, Command line). Exit codes:
// 0 success, 1 the operation failed (message on stderr), 2 usage error.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "mta/daemon/cli.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  return moat::mta::daemon::runCli(args);
}
