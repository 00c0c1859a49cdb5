// mta/daemon/dmarc_reporter.cc — see dmarc_reporter.h (RFC 7489 §7.1, §7.2).
#include "mta/daemon/dmarc_reporter.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <set>
#include <vector>

#include "mta/daemon/queue_manager.h"
#include "mta/runtime/clock.h"
#include "mta/runtime/log.h"
#include "mta/server/metrics.h"

namespace moat::mta::daemon {

DmarcReporter::DmarcReporter(uv_loop_t* loop, dns::Resolver* resolver, QueueManager& queue, std::string statePath)
    : loop_(loop),
      resolver_(resolver),
      queue_(queue),
      timer_(loop),
      file_(
          loop, std::move(statePath),
          [this]() -> std::function<std::string()> {
            // A copy of the aggregate (on the loop: bounded by the Aggregator's caps); the JSON
            // goes to the pool.
            auto results = std::make_shared<dmarc_report::Results>(agg_.results());
            fileHolds_ = !results->empty();
            return [results, start = periodMs_, interval = intervalMs_] {
              return dmarc_report::encodeState(start, interval, *results);
            };
          },
          [this](const std::string& error) {
            log::warn("dmarc_report_error").add("file", file_.path()).add("reason", "aggregate not saved: " + error);
          }) {}

DmarcReporter::~DmarcReporter() { *alive_ = false; }

void DmarcReporter::start(std::shared_ptr<const server::Snapshot> snapshot) {
  snap_ = std::move(snapshot);
  load();
  arm();
}

void DmarcReporter::reload(std::shared_ptr<const server::Snapshot> snapshot) {
  snap_ = std::move(snapshot);
  arm();
}

void DmarcReporter::record(const filters::MessageContext& ctx) {
  if (stopped_ || !snap_ || !snap_->config->dmarcReportsEnabled || periodMs_ == 0) return;
  if (auto e = dmarc_report::entryFor(ctx)) {
    agg_.add(*e);
    file_.markDirty();
  }
}

void DmarcReporter::arm() {
  const auto& cfg = *snap_->config;
  if (!cfg.dmarcReportsEnabled || stopped_) {
    timer_.stop();
    file_.stop();
    if (stopped_) return;  // the stop saves the period under way
    agg_.take();  // turned off: what was gathered is not reported
    file_.markClean();
    periodMs_ = 0;
    return;
  }
  // A crash loses at most one checkpoint_interval of counts.
  file_.start(static_cast<uint64_t>(cfg.dmarcReportsCheckpointInterval.count()));
  const int64_t interval = cfg.dmarcReportsInterval.count();
  const int64_t now = wallClockMs();
  // A new interval (a reload) starts a period of its own; what was gathered so far goes out with it.
  if (periodMs_ == 0 || interval != intervalMs_) periodMs_ = report_mail::periodStart(now, interval);
  intervalMs_ = interval;
  const int64_t end = periodMs_ + interval;
  timer_.start(static_cast<uint64_t>(std::max<int64_t>(end - now, 0)) + 10, [this] { periodEnd(); });
}

void DmarcReporter::periodEnd() {
  const int64_t now = wallClockMs();
  const int64_t begin = periodMs_, end = periodMs_ + intervalMs_;
  if (now < end) return arm();  // the wall clock went back: not over yet
  const uint64_t dropped = agg_.dropped();
  dmarc_report::Results results = agg_.take();
  periodMs_ = report_mail::periodStart(now, intervalMs_);
  serial_ = 0;
  arm();
  if (dropped)
    log::warn("dmarc_report_error").add("reason", "aggregate full: messages not counted").add("messages", dropped);
  auto due = std::make_shared<std::vector<Due>>();
  for (auto& [domain, rows] : results)
    due->push_back(
        {domain, std::make_shared<const dmarc_report::DomainRows>(std::move(rows)), begin / 1000, end / 1000});
  auto queueReports = [this, due] {
    if (stopped_) {
      if (!due->empty())
        log::warn("dmarc_report_error")
            .add("reason", "Moat is stopping: the ended period's reports to these domains are not sent")
            .add("domains", static_cast<uint64_t>(due->size()));
      return;
    }
    for (auto& d : *due) due_.push_back(std::move(d));
    pump();
  };
  // At most once: the checkpoint that still holds the ended period's counts is replaced (by
  // the new period's) before its reports are queued, so a crash after this point cannot report
  // the period again at the next start; a crash before the reports are in the spool loses them
  // instead.
  if (fileHolds_ || file_.writing()) return file_.write(std::move(queueReports));
  queueReports();
}

void DmarcReporter::pump() {
  // An answer from the resolver's cache comes back at once, inside this loop, and pumps again:
  // the loop goes on with it instead of recursing a domain deeper each time.
  if (pumping_) return;
  pumping_ = true;
  while (!stopped_ && lookups_ < kLookups && !due_.empty()) {
    Due due = std::move(due_.front());
    due_.pop_front();
    lookup(std::move(due));
  }
  pumping_ = false;
}

void DmarcReporter::done() {
  --lookups_;
  pump();
}

void DmarcReporter::lookup(Due due) {
  ++lookups_;
  auto alive = alive_;
  auto d = std::make_shared<Due>(std::move(due));
  resolver_->query("_dmarc." + d->domain, dns::RrType::TXT, [this, alive, d](const dns::Answer& a) {
    if (!*alive) return;
    recordFound(*d, a);
    done();
  });
}

void DmarcReporter::recordFound(const Due& due, const dns::Answer& a) {
  if (a.status == dns::Status::NxDomain || a.status == dns::Status::NoData) {
    log::info("dmarc_report_skipped").add("domain", due.domain).add("reason", "no DMARC record");
    return;
  }
  if (a.status != dns::Status::Ok) {
    log::warn("dmarc_report_error")
        .add("domain", due.domain)
        .add("reason",
             "DMARC record lookup failed: " + (a.error.empty() ? std::string(dns::statusName(a.status)) : a.error));
    return;
  }
  dmarc_report::Rua rua = dmarc_report::ruaOf(a.txt);
  if (!rua.ok) {
    log::info("dmarc_report_skipped").add("domain", due.domain).add("reason", rua.error);
    return;
  }
  for (const auto& uri : rua.skipped)
    log::info("dmarc_report_skipped")
        .add("domain", due.domain)
        .add("rua", uri)
        .add("reason", "not a mailto: URI Moat can send to");
  std::set<std::string> seen;
  for (const auto& d : rua.mailto) {
    if (!seen.insert(d.address).second) continue;
    if (dmarc_report::needsVerification(due.domain, d.domain))
      verify(due, d);
    else
      send(due, d);
  }
}

void DmarcReporter::verify(const Due& due, const dmarc_report::Destination& d) {
  // Counted as a lookup too: the pump's bound holds for these as for the records.
  ++lookups_;
  auto alive = alive_;
  auto ctx = std::make_shared<std::pair<Due, dmarc_report::Destination>>(due, d);
  const std::string name = dmarc_report::verificationName(due.domain, d.domain);
  resolver_->query(name, dns::RrType::TXT, [this, alive, ctx, name](const dns::Answer& a) {
    if (!*alive) return;
    const auto& [due2, d2] = *ctx;
    if (a.status == dns::Status::Ok && dmarc_report::verified(a.txt)) {
      send(due2, d2);
    } else if (a.status == dns::Status::Ok || a.status == dns::Status::NxDomain || a.status == dns::Status::NoData) {
      log::info("dmarc_report_skipped")
          .add("domain", due2.domain)
          .add("rua", d2.uri)
          .add("reason", "external destination not verified: no v=DMARC1 record at " + name);
    } else {
      log::warn("dmarc_report_error")
          .add("domain", due2.domain)
          .add("rua", d2.uri)
          .add("reason", "external destination lookup failed: " +
                             (a.error.empty() ? std::string(dns::statusName(a.status)) : a.error));
    }
    done();
  });
}

void DmarcReporter::send(const Due& due, const dmarc_report::Destination& d) {
  const auto& cfg = *snap_->config;
  struct Build {
    dmarc_report::MessageInfo info;
    std::shared_ptr<const dmarc_report::DomainRows> rows;
    uint64_t maxSize = 0;
    bool tooBig = false;
  };
  auto b = std::make_shared<Build>();
  b->rows = due.rows;
  b->maxSize = d.maxSize;
  b->info.from = cfg.dmarcReportsFromAddress();
  b->info.to = d.address;
  b->info.submitter = cfg.hostname;
  b->info.dateMs = wallClockMs();
  b->info.report.organization = cfg.dmarcReportsOrganizationName();
  b->info.report.email = cfg.dmarcReportsFromAddress();
  b->info.report.extraContact = cfg.dmarcReportsContact;
  b->info.report.domain = due.domain;
  b->info.report.beginSeconds = due.beginSeconds;
  b->info.report.endSeconds = due.endSeconds;
  b->info.report.reportId = std::to_string(due.beginSeconds) + "." + std::to_string(++serial_) + "." +
                            queue_.randomHex() + "@" + cfg.hostname;
  b->info.messageId = "dmarc." + b->info.report.reportId;
  auto mail = std::make_shared<report_mail::Mail>();
  mail->from = b->info.from;
  mail->to = b->info.to;
  mail->messageId = b->info.messageId;
  mail->what = "DMARC report for " + due.domain;
  const std::string domain = due.domain, uri = d.uri;
  queue_.queueReport(
      mail,
      [b](report_mail::Mail& m) {
        auto gz = report_mail::gzip(dmarc_report::reportXml(b->info.report, *b->rows));
        if (!gz) {
          m.error = "gzip failed";
          return;
        }
        std::string text = dmarc_report::reportMessage(b->info, *gz);
        // The rua's "!size" (§6.2): a report over it is not sent there (no report is split).
        if (b->maxSize && text.size() > b->maxSize) {
          b->tooBig = true;
          m.error = "report of " + std::to_string(text.size()) + " bytes is over the rua size limit of " +
                    std::to_string(b->maxSize);
          return;
        }
        m.text = std::move(text);
      },
      [b, domain, uri](const report_mail::Mail& m) {
        if (!m.signError.empty())
          log::warn("dmarc_report_error")
              .add("domain", domain)
              .add("rua", uri)
              .add("reason", "not DKIM-signed: " + m.signError);
        if (m.queueId.empty()) {
          if (b->tooBig)
            log::info("dmarc_report_skipped").add("domain", domain).add("rua", uri).add("reason", m.error);
          else
            log::warn("dmarc_report_error").add("domain", domain).add("rua", uri).add("reason", m.error);
          return;
        }
        ++server::metrics().dmarcReports;
        log::info("dmarc_report")
            .add("queue_id", m.queueId)
            .add("domain", domain)
            .add("rua", uri)
            .add("to", b->info.to)
            .add("report_id", b->info.report.reportId)
            .add("rows", static_cast<uint64_t>(b->rows->rows.size()))
            .add("messages", b->rows->messages());
      });
}

void DmarcReporter::stop() {
  if (stopped_) return;
  stopped_ = true;
  timer_.stop();
  if (!due_.empty()) {
    log::warn("dmarc_report_error")
        .add("reason", "Moat is stopping: the ended period's reports to these domains are not sent")
        .add("domains", static_cast<uint64_t>(due_.size()));
    due_.clear();
  }
  // The period under way goes on after the restart: what the last checkpoint has not got yet
  // is written (a write under way is waited for).
  file_.flush(queue_.holdDrain());
}

void DmarcReporter::load() {
  const auto& cfg = *snap_->config;
  const std::string& path = file_.path();
  std::ifstream in(path, std::ios::binary);
  if (!in) return;  // none saved
  std::string text(dmarc_report::kMaxStateBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  in.close();
  // Kept while it is the period's checkpoint: the aggregate starts from it, and the next
  // checkpoint (or the period's end) replaces it. Another crash before then reads the same
  // counts again, never twice.
  auto drop = [&path] { ::unlink(path.c_str()); };
  if (!cfg.dmarcReportsEnabled) return drop();
  int64_t start = 0, interval = 0;
  dmarc_report::Aggregator saved;
  if (!dmarc_report::decodeState(text, start, interval, saved)) {
    log::warn("dmarc_report_error").add("file", path).add("reason", "saved aggregate ignored: not a file Moat wrote");
    return drop();
  }
  if (interval != cfg.dmarcReportsInterval.count()) {
    log::warn("dmarc_report_error")
        .add("file", path)
        .add("reason", "saved aggregate ignored: dmarc_reports.interval changed");
    return drop();
  }
  // Still under way, the saved period goes on; over, it is reported at once by the timer arm() sets.
  for (const auto& [domain, d] : saved.results())
    for (const auto& [row, n] : d.rows) agg_.add(d.policy, row, n);
  periodMs_ = start;
  intervalMs_ = interval;
  fileHolds_ = !agg_.results().empty();
}

}  // namespace moat::mta::daemon
