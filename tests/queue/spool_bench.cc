// tests/queue/spool_bench.cc — measures spool commits per second with and without group
// commit (DESIGN.md decision 4: "measure it"). M writers each receive, finish and commit a
// 4 KB message, then start the next, until N messages are durable. Not a ctest test.
// Usage: spool_bench [N=2000] [M=32] [DIR=/tmp] [SIZE=4096] [ROUNDS=1]
// Measured on the 2-core build VM (ext4 on a virtual disk, shared with other builds, so
// noisy), 4 KB messages, default pool of 4 threads:
//   32 writers:  without group commit 775-826/s, with 945-1029/s (~8.5 messages a sync round)
//   64 writers, UV_THREADPOOL_SIZE=16: without 974-1254/s, with 1295-1368/s (~16.5 a round)
//   1 writer:    500 vs 514/s (nothing to batch)
// Per-message file fsyncs remain (ext4 already merges concurrent ones in its journal); the
// directory fsyncs are what group commit shares.
#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include "mta/runtime/log.h"
#include "mta/runtime/uv.h"
#include "queue/spool.h"

using namespace moat::queue;

namespace {

struct Result {
  double seconds = 0;
  uint64_t syncRounds = 0;
  int failed = 0;
};

Result run(const std::string& base, int n, int m, size_t size, CommitMode mode) {
  std::string tmpl = base + "/moat-spool-bench-XXXXXX";
  std::string dir = ::mkdtemp(tmpl.data());
  moat::mta::uv::Loop loop;
  std::string error;
  auto spool = Spool::open(loop.get(), dir, error);
  if (!spool) {
    fprintf(stderr, "open: %s\n", error.c_str());
    exit(1);
  }
  spool->setCommitMode(mode);
  std::string body(size, 'x');
  for (size_t i = 76; i < body.size(); i += 78) body[i] = '\r', body[i + 1] = '\n';
  Envelope env;
  env.mailFrom = "bench@example.test";
  env.rcpts.resize(1);
  env.rcpts[0].address = "r@example.test";
  int started = 0, done = 0;
  Result r;
  std::function<void()> next = [&] {
    if (started >= n) return;
    ++started;
    auto msg = spool->create();
    msg->append(body);
    msg->finish([&, msg](bool ok, std::string) {
      if (!ok) return ++r.failed, ++done, next();
      msg->commit(env, [&](bool ok2, std::string) {
        r.failed += !ok2;
        ++done;
        next();
      });
    });
  };
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < m; ++i) next();
  loop.runUntil([&] { return done >= n; }, 600000);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.syncRounds = spool->dirSyncRounds();
  spool.reset();
  std::filesystem::remove_all(dir);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int n = argc > 1 ? atoi(argv[1]) : 2000;
  int m = argc > 2 ? atoi(argv[2]) : 32;
  std::string base = argc > 3 ? argv[3] : "/tmp";
  size_t size = argc > 4 ? static_cast<size_t>(atol(argv[4])) : 4096;
  moat::mta::log::setMinLevel(moat::mta::log::Level::Warn);
  const char* pool = getenv("UV_THREADPOOL_SIZE");
  printf("spool_bench: %d messages of %zu bytes, %d concurrent writers, thread pool %s, dir %s\n", n, size, m,
         pool ? pool : "4 (default)", base.c_str());
  int rounds = argc > 5 ? atoi(argv[5]) : 1;
  const std::pair<CommitMode, const char*> modes[] = {{CommitMode::PerMessage, "without group commit:"},
                                                      {CommitMode::Group, "with group commit:"}};
  for (int round = 0; round < rounds; ++round) {
    for (auto& [mode, name] : modes) {
      Result r = run(base, n, m, size, mode);
      printf("  %-30s %8.0f commits/s  (%.2f s, %llu sync rounds, %.1f msgs/round, %d failed)\n", name, n / r.seconds,
             r.seconds, static_cast<unsigned long long>(r.syncRounds),
             r.syncRounds ? double(n) / double(r.syncRounds) : 1.0, r.failed);
    }
  }
  return 0;
}
