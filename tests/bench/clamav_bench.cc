// tests/bench/clamav_bench.cc — antivirus scan cost per message, the way the antivirus
// filter scans (filters/antivirus/backend.h: the whole message, then each decoded MIME
// part, scan_parts = true), with the in-process libclamav backend and, in the same run, a
// clamd over INSTREAM (which the caller started on the same database). One thread, one
// message at a time: the cost of one scan (median of the rounds), not the machine's
// parallel throughput.
//   clamav_bench --db DIR [--clamd SOCKET|HOST:PORT] [--rounds N] LABEL=MESSAGE...
// Prints RESULT lines and a markdown table (ms per message, messages/s) on stdout.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "filters/antivirus/antivirus.h"
#include "filters/antivirus/clamd.h"
#include "filters/mime/mime.h"
#include "tests/bench/bench_util.h"

using namespace moat::filters;
using namespace moat::filters::antivirus;

namespace {

struct Sample {
  std::string label;
  std::string raw;
  std::shared_ptr<const mime::Message> tree;
};

struct Row {
  std::string backend, label;
  size_t bytes = 0;
  double msPerMessage = 0;
  unsigned scans = 0;
  std::string verdict;
};

using moat::bench::slurpCrlf;

const char* verdictOf(const ScanResult& r) {
  switch (r.status) {
    case ScanResult::Status::Clean: return "clean";
    case ScanResult::Status::Found: return "FOUND";
    case ScanResult::Status::Limit: return "LIMIT";
    case ScanResult::Status::Error: return "ERROR";
  }
  return "?";
}

double msOf(const Backend& backend, const Sample& s, ScanResult& last) {
  auto start = std::chrono::steady_clock::now();
  last = backend.scan(s.raw, s.tree.get());
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

// The backends take turns scan by scan (the machine's noise hits both alike); the median
// of the rounds is reported.
std::vector<Row> measure(const std::vector<const Backend*>& backends, const Sample& s, int rounds) {
  std::vector<std::vector<double>> ms(backends.size());
  std::vector<ScanResult> last(backends.size());
  for (size_t b = 0; b < backends.size(); ++b) {
    msOf(*backends[b], s, last[b]);  // warm-up
    if (last[b].status == ScanResult::Status::Error)
      std::fprintf(stderr, "%s %s: %s\n", std::string(backends[b]->name()).c_str(), s.label.c_str(),
                   last[b].error.c_str());
  }
  for (int i = 0; i < rounds; ++i)
    for (size_t b = 0; b < backends.size(); ++b) ms[b].push_back(msOf(*backends[b], s, last[b]));
  std::vector<Row> rows;
  for (size_t b = 0; b < backends.size(); ++b) {
    std::sort(ms[b].begin(), ms[b].end());
    rows.push_back(Row{std::string(backends[b]->name()), s.label, s.raw.size(), ms[b][ms[b].size() / 2], last[b].scans,
                       verdictOf(last[b])});
  }
  return rows;
}

}  // namespace

int main(int argc, char** argv) {
  std::string db, clamdSocket;
  int rounds = 20;
  std::vector<Sample> samples;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--db" && i + 1 < argc)
      db = argv[++i];
    else if (a == "--clamd" && i + 1 < argc)
      clamdSocket = argv[++i];
    else if (a == "--rounds" && i + 1 < argc)
      rounds = std::max(1, std::atoi(argv[++i]));
    else if (auto eq = a.find('='); eq != std::string::npos) {
      Sample s{a.substr(0, eq), slurpCrlf(a.substr(eq + 1)), nullptr};
      s.tree = mime::parse(s.raw, mime::Limits{});
      samples.push_back(std::move(s));
    } else {
      std::fprintf(stderr, "usage: clamav_bench --db DIR [--clamd SOCKET] [--rounds N] LABEL=MESSAGE...\n");
      return 2;
    }
  }
  if (db.empty() || samples.empty()) return 2;

  std::vector<Row> rows;
  Scanner lib(db, ScanLimits{});
  auto t0 = std::chrono::steady_clock::now();
  std::string error;
  if (lib.reloadIfChanged(&error) != Scanner::Reload::Reloaded) {
    std::fprintf(stderr, "libclamav load: %s\n", error.c_str());
    return 1;
  }
  double loadS = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("RESULT name=libclamav-load signatures=%u seconds=%.2f\n", lib.engine()->signatures(), loadS);
  std::vector<const Backend*> backends{&lib};
  std::unique_ptr<ClamdScanner> clamd;
  if (!clamdSocket.empty()) {
    auto address = parseClamdAddress(clamdSocket, error);
    if (!address) {
      std::fprintf(stderr, "--clamd: %s\n", error.c_str());
      return 2;
    }
    clamd = std::make_unique<ClamdScanner>(*address, ClamdTimeouts{}, ScanLimits{}.maxScanSize);
    if (!clamd->checkNow()) return 1;
    backends.push_back(clamd.get());
  }
  for (const auto& s : samples)
    for (auto& r : measure(backends, s, rounds)) rows.push_back(std::move(r));
  // libclamav rows first, then clamd, each in message order
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.backend > b.backend; });
  for (const auto& r : rows)
    std::printf("RESULT name=%s-%s bytes=%zu ms_per_message=%.3f messages_per_s=%.1f scans=%u verdict=%s\n",
                r.backend.c_str(), r.label.c_str(), r.bytes, r.msPerMessage, 1000.0 / r.msPerMessage, r.scans,
                r.verdict.c_str());
  std::printf("\n| backend | message | size | scans/msg | ms/message | messages/s | verdict |\n");
  std::printf("|---|---|---:|---:|---:|---:|---|\n");
  for (const auto& r : rows)
    std::printf("| %s | %s | %zu KB | %u | %.2f | %.0f | %s |\n", r.backend.c_str(), r.label.c_str(), r.bytes / 1024,
                r.scans, r.msPerMessage, 1000.0 / r.msPerMessage, r.verdict.c_str());
  return 0;
}
