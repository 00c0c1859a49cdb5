// mta/daemon/dmarc_reporter.h — DMARC aggregate reporting ([dmarc_reports], RFC 7489 §7.2):
// every inbound message the DMARC filter evaluated against a record (accepted, quarantined or
// rejected) is counted on the loop in the aggregate of its policy domain (dmarc_report.h). At
// the end of each aligned UTC period the domains' _dmarc records are looked up again, at most
// kLookups at once; each mailto: rua gets the report, after §7.1's External Destination
// Verification (POLICYDOMAIN._report._dmarc.RUADOMAIN) when its Organizational Domain is not
// the policy domain's, and only when the report mail is within the URI's !size limit. The
// report is built, gzipped and DKIM-signed on the pool and queued like a DSN by
// QueueManager::queueReport (null sender, never bounced). The period under way is checkpointed
// to SPOOL_DIR/dmarc_report.state (a StateFile, state_file.h: crash-atomically, on the pool)
// every [dmarc_reports] checkpoint_interval when messages were counted since the last write,
// at the end of a period before its reports are queued (so a crash never reports a period
// twice: at most once), and at a graceful stop; read back at the next start. A crash loses at
// most one checkpoint_interval of counts.
// Untrusted input: the messages' identifiers (bounded by dmarc_report.h), the DNS answers.
// Logs: dmarc_report (a report queued), dmarc_report_skipped (a domain or rua that gets no
// report, and why: no record, no rua, not a mailto: URI, not verified, over its size limit),
// dmarc_report_error (lookups that failed, a report that could not be made or saved).
#pragma once
#include <uv.h>

#include <deque>
#include <memory>
#include <string>

#include "mta/daemon/dmarc_report.h"
#include "mta/daemon/state_file.h"
#include "mta/dns/resolver.h"
#include "mta/runtime/uv.h"
#include "mta/server/snapshot.h"

namespace moat::mta::daemon {

class QueueManager;

class DmarcReporter {
 public:
  // `statePath`: SPOOL_DIR/dmarc_report.state.
  DmarcReporter(uv_loop_t* loop, dns::Resolver* resolver, QueueManager& queue, std::string statePath);
  ~DmarcReporter();
  DmarcReporter(const DmarcReporter&) = delete;
  DmarcReporter& operator=(const DmarcReporter&) = delete;

  // Reads the saved period (before the loop runs) and arms the period's timer.
  void start(std::shared_ptr<const server::Snapshot> snapshot);
  void reload(std::shared_ptr<const server::Snapshot> snapshot);
  // One message the DMARC filter evaluated (loop thread).
  void record(const filters::MessageContext& ctx);
  // A graceful stop: saves what the last checkpoint has not got of the period under way (the
  // queue manager's drain waits for it);
  // reports still waiting for their lookups are not sent.
  void stop();

  static constexpr size_t kLookups = 16;

 private:
  struct Due {
    std::string domain;
    std::shared_ptr<const dmarc_report::DomainRows> rows;
    int64_t beginSeconds, endSeconds;
  };
  void arm();
  void periodEnd();
  void pump();
  void lookup(Due due);
  void recordFound(const Due& due, const dns::Answer& a);
  void verify(const Due& due, const dmarc_report::Destination& d);
  void send(const Due& due, const dmarc_report::Destination& d);
  void load();
  void done();  // a lookup ended

  uv_loop_t* loop_;
  dns::Resolver* resolver_;
  QueueManager& queue_;
  std::shared_ptr<const server::Snapshot> snap_;
  dmarc_report::Aggregator agg_;
  uv::Timer timer_;
  int64_t periodMs_ = 0;
  int64_t intervalMs_ = 0;
  uint64_t serial_ = 0;
  bool stopped_ = false;
  std::deque<Due> due_;
  size_t lookups_ = 0;
  bool pumping_ = false;
  // The checkpoint, and whether the file may hold counts.
  StateFile file_;
  bool fileHolds_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace moat::mta::daemon
