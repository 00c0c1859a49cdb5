// mta/daemon/daemon.cc — see daemon.h.
#include "mta/daemon/daemon.h"

#include <malloc.h>
#include <signal.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "mta/daemon/control.h"
#include "mta/daemon/greylist_store.h"
#include "mta/daemon/metrics_http.h"
#include "mta/daemon/queue_manager.h"
#include "mta/daemon/rate_limit_store.h"
#include "mta/dns/cares_resolver.h"
#include "mta/runtime/log.h"
#include "mta/runtime/uv.h"
#include "mta/server/metrics.h"
#include "mta/server/smtp_server.h"
#include "mta/server/snapshot.h"

namespace moat::mta::daemon {
namespace {

// The filters the config turns on, in /metrics at zero before their first run.
void registerFilterMetrics(const server::Snapshot& snap) {
  if (!snap.pipeline) return;
  for (const auto& f : snap.pipeline->filters()) server::metrics().registerFilter(f->name());
}

// False when the log file cannot be opened (the log stays where it was, and the reason is on
// stderr): fail2ban and operators read that file, so `serve` does not start without it.
bool applyLogConfig(const policy::Config& cfg) {
  if (!log::open(cfg.logFile)) {
    int err = errno;
    std::fprintf(stderr, "moat: cannot open log file %s: %s\n", cfg.logFile.c_str(), std::strerror(err));
    return false;
  }
  log::Level level = cfg.logLevel == "debug" ? log::Level::Debug
                     : cfg.logLevel == "warn" ? log::Level::Warn
                     : cfg.logLevel == "error" ? log::Level::Error
                                               : log::Level::Info;
  log::setMinLevel(level);
  return true;
}

// glibc's defaults give memory back eagerly: blocks from 128 KB up are fresh mappings, and
// an arena returns whatever frees up at its top past twice that. A relay allocates and frees
// message-sized buffers (up to MessageData::kReadLimit, 1 MB) all the time, so each one came
// back as page faults: with 256 KB messages they were a fifth of Moat's CPU. Blocks up to 2 MB
// now come from the arenas, and each keeps up to 8 MB free for reuse. Measured with 2,000 x
// 256 KB at 20 sessions: 1.3-1.75 -> 0.9-1.2 ms of CPU per message, peak RSS +10-30 MB.
// Before any thread starts: the settings are process-wide.
void tuneMalloc() {
  ::mallopt(M_MMAP_THRESHOLD, 2 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 8 << 20);
}

}  // namespace

int serve(const std::string& configPath) {
  tuneMalloc();
  // Past RLIMIT_FSIZE (a LimitFSIZE= in the unit, a log or spool on a capped file), a write
  // fails with EFBIG, which the log writer and the spool handle; the default action of
  // SIGXFSZ would kill the daemon with every session and delivery in flight.
  ::signal(SIGXFSZ, SIG_IGN);
  policy::Errors errors;
  // The log first: building the pipeline already logs (e.g. antivirus_disabled). One that
  // cannot be opened stops the start (stderr, exit 1): no silent fall-back to stdout. The
  // file is read once, for the log and then the snapshot: reading it again (as before)
  // doubled the start-up's parse and could mix two versions of a file being edited.
  auto config = policy::readConfig(configPath, errors);
  if (config && !errors.hasErrors()) {
    policy::Errors logErrors;
    policy::checkLogFile(*config, logErrors);
    for (const auto& e : logErrors.all()) std::fprintf(stderr, "%s\n", e.str().c_str());
    if (logErrors.hasErrors() || !applyLogConfig(*config)) return 1;
  }
  auto snap = server::Snapshot::load(std::move(config), errors);
  for (const auto& e : errors.all()) std::fprintf(stderr, "%s\n", e.str().c_str());
  if (!snap) return 1;
  registerFilterMetrics(*snap);
  const auto& cfg = *snap->config;
  // What this process runs with until it stops: what a reload cannot change is compared
  // with these, not with the last reload's.
  const std::shared_ptr<const policy::Config> running = snap->config;
  ::signal(SIGPIPE, SIG_IGN);
  uv::configureThreadPool(8);  // fsyncs and filters run there: more than the cores is right

  uv::Loop loop;
  auto resolver = std::make_unique<dns::CaresResolver>(loop.get(), cfg.nameservers,
                                                       static_cast<unsigned>(cfg.dnsTimeout.count()));

  std::string error;
  auto spool = queue::Spool::open(loop.get(), cfg.spoolDir, error);
  if (!spool) {
    std::fprintf(stderr, "moat: spool %s: %s\n", cfg.spoolDir.c_str(), error.c_str());
    return 1;
  }
  spool->setCommitMode(cfg.spoolSync == "syncfs" ? queue::CommitMode::SyncFs : queue::CommitMode::Group);
  queue::RecoveryReport report;
  auto recovered = spool->recover(report);
  log::info("spool_recovered")
      .add("messages", static_cast<uint64_t>(report.recovered))
      .add("removed_partial", static_cast<uint64_t>(report.removedPartial))
      .add("moved_corrupt", static_cast<uint64_t>(report.movedCorrupt))
      .add("spool_dir", cfg.spoolDir);

  // Mail waits for the filters: a listener opened before the antivirus database is loaded
  // would answer 451 to everything until it is (seconds, with Debian's full databases).
  // A database that does not load at all stops the start, as `moat check` refuses it:
  // running on would answer 451 4.7.1 to every message, with nothing but a log line to say
  // why. (A reload keeps the running databases instead.)
  {
    policy::Errors ready;
    snap->checkReady(ready);
    for (const auto& e : ready.all()) std::fprintf(stderr, "%s\n", e.str().c_str());
    if (ready.hasErrors()) {
      log::error("start_failed").add("error", ready.all().front().str());
      log::flush();
      return 1;
    }
  }

  QueueManager qm(loop.get(), spool, resolver.get(), snap);
  qm.start(std::move(recovered));

  server::SmtpServer smtp(loop.get(), spool, resolver.get(), [&qm](const queue::Envelope& env, std::shared_ptr<const queue::MessageData> data) { qm.enqueue(env, std::move(data)); });
  // [greylist]: the table as the last run left it, before the first session. Read whatever
  // `enabled` says: a reload may turn greylisting on, and the table must be there then (the
  // file is read only here, where the loop may block); while off, the table does not change
  // and so is never written, and the file stays as it was.
  GreylistStore greylist(loop.get(), smtp.greylist(), cfg.spoolDir + "/greylist.state");
  greylist.load();
  greylist.start();
  // [rate_limits]: the counts as the last run left them, the same way (while every limit is
  // off nothing is counted, so nothing is written).
  RateLimitStore rateLimits(loop.get(), smtp.rateCounters(), cfg.spoolDir + "/rate_limit.state");
  rateLimits.load(cfg.rateWindow.count());
  rateLimits.start();
  smtp.onDmarcEvaluated([&qm](const filters::MessageContext& ctx) { qm.dmarcEvaluated(ctx); });
  if (!smtp.start(snap, error)) {
    std::fprintf(stderr, "moat: %s\n", error.c_str());
    log::error("start_failed").add("error", error);
    log::flush();
    return 1;
  }

  ControlServer control(loop.get(), qm);
  if (!control.start(cfg.controlSocket, error)) {
    std::fprintf(stderr, "moat: %s\n", error.c_str());
    log::error("start_failed").add("error", error);
    log::flush();
    return 1;
  }
  bool stopping = false;
  // /healthz: 503 while the daemon cannot take mail (stopping, or the spool under the floor).
  MetricsHttp metrics(loop.get(),
                      [&stopping, &smtp]() -> std::string { return stopping ? "stopping" : smtp.whyNoMail(); });
  if (!cfg.metricsListen.empty() && !metrics.start(cfg.metricsListen, error)) {
    std::fprintf(stderr, "moat: metrics: %s\n", error.c_str());
    log::error("start_failed").add("error", error);
    log::flush();
    return 1;
  }

  server::metrics().spoolFreeBytes = [&smtp] { return smtp.freeDisk(); };
  server::metrics().spoolMinFreeBytes = [&smtp] { return smtp.minFreeDisk(); };
  // The resolver lives as long as the daemon (a reload keeps it), so its counts carry on.
  server::metrics().dnsStats = [r = resolver.get()] { return r->stats(); };

  log::info("start").add("version", MOAT_VERSION).add("config", cfg.path).add("hostname", cfg.hostname)
      .add("queued", static_cast<uint64_t>(report.recovered));

  std::unique_ptr<uv::Signal> sigterm, sigint, sighup;
  auto stop = [&](const char* why) {
    if (stopping) return;
    stopping = true;
    log::info("stopping").add("signal", why).add("sessions", static_cast<uint64_t>(smtp.sessionCount()))
        .add("deliveries", static_cast<uint64_t>(qm.inFlight()));
    smtp.drain([&] {
      greylist.stop([&] {
        rateLimits.stop([&] {
          qm.drain([&] {
            control.stop();
            metrics.stop();
            server::metrics().spoolFreeBytes = nullptr;  // they name objects of this scope
            server::metrics().spoolMinFreeBytes = nullptr;
            server::metrics().dnsStats = nullptr;
            log::info("stop");
            sigterm.reset();
            sigint.reset();
            sighup.reset();
            uv_stop(loop.get());
          });
        });
      });
    });
  };
  sigterm = std::make_unique<uv::Signal>(loop.get(), SIGTERM, [&] { stop("SIGTERM"); });
  sigint = std::make_unique<uv::Signal>(loop.get(), SIGINT, [&] { stop("SIGINT"); });
  sighup = std::make_unique<uv::Signal>(loop.get(), SIGHUP, [&] {
    log::reopen();
    policy::Errors errs;
    auto next = server::Snapshot::load(configPath, errs);
    if (!next) {
      std::vector<std::string> msgs;
      for (const auto& e : errs.all()) msgs.push_back(e.str());
      log::error("reload").add("ok", false).add("errors", msgs).add("config", running->path);
      return;
    }
    auto restartOnly = policy::restartOnlyChanges(*running, *next->config);
    snap = next;
    registerFilterMetrics(*snap);
    applyLogConfig(*snap->config);
    smtp.reload(snap);
    qm.reload(snap);
    auto line = log::info("reload");
    line.add("ok", true).add("config", running->path);
    if (!restartOnly.empty()) {
      std::string note = "take effect at the next restart:";
      for (size_t i = 0; i < restartOnly.size(); ++i) note += (i ? ", " : " ") + restartOnly[i];
      line.add("note", note);
    }
  });

  loop.run();
  log::flush();
  return 0;
}

}  // namespace moat::mta::daemon
