// mta/daemon/queue_manager.h — the delivery side (DESIGN.md, decisions 4-6): an in-memory
// schedule over the spool, rebuilt from it at start-up; per-destination queues with a
// concurrency limit and connection reuse; next hop by [[route]] (smtp:HOST:PORT in order,
// "mx" per RFC 5321 §5.1 with the implicit-MX fallback and RFC 7505 null MX, leaving out
// this gateway and every MX at or below its preference (mx_self.h), maildir:DIR, and
// lmtp:HOST:PORT / lmtp:unix:PATH in order with the smtp: ones: RFC 2033, each recipient's
// outcome its own reply after the message); per-recipient results; retries from [queue] retry with jitter, waited out
// on the monotonic clock (wall time only for the envelope's dates, expiry and the delay warning); a message whose next
// hops are all at their limit waits without a delivery slot; DSNs (RFC 3464) for permanent failures, expiry and one
// delay warning; never a DSN to the null sender, and a DSN of Moat's own that cannot be delivered is dropped with a log
// line, not bounced.
//
// RFC 8689: a REQUIRETLS message goes only to next hops found securely (a route's host, a
// DNSSEC-signed MX, an MTA-STS enforce policy), over TLS that DANE, MTA-STS, tls = "verify"
// or PKIX authenticated, that offer REQUIRETLS (or to Maildir: final delivery); when no host
// qualifies its recipients fail with 5.7.30 and the DSN (headers only) keeps REQUIRETLS.
// "TLS-Required: No" (queue/tls_required.h) turns MTA-STS and DANE off for a message.
//
// With [tlsrpt] enabled, every TLS session (or STARTTLS attempt) to an MX host feeds the
// per-domain aggregate of RFC 8460 (tlsrpt.h); at the end of each aligned period the
// domains' _smtp._tls records are looked up and each mailto: rua gets the report, queued
// like a DSN (null sender, never bounced), DKIM-signed with the [[dkim.sign]] key of the
// From domain when there is one; each https: rua gets it POSTed (RFC 8460 §5.2, https_client.h),
// at most kTlsrptPostAttempts times. The period under way is checkpointed to the spool every
// [tlsrpt] checkpoint_interval when it changed, at the end of a period before its reports go
// (so a crash never reports a period twice: at most once), and at a graceful stop.
//
// Untrusted input: replies from remote servers (bounded by the SMTP client), DNS answers.
// Logs: deliver, defer, bounce, expire, dsn, downgraded (each with queue_id); tlsrpt,
// tlsrpt_skipped, tlsrpt_error; DMARC aggregate reports through dmarc_reporter.h.
#pragma once
#include <uv.h>

#include <array>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "mta/client/smtp_client.h"
#include "mta/daemon/dmarc_reporter.h"
#include "mta/daemon/mta_sts.h"
#include "mta/daemon/queue_select.h"
#include "mta/daemon/report_mail.h"
#include "mta/daemon/state_file.h"
#include "mta/daemon/tlsrpt.h"
#include "mta/dns/resolver.h"
#include "mta/runtime/uv.h"
#include "mta/server/snapshot.h"
#include "queue/dsn.h"
#include "queue/scheduler.h"
#include "queue/spool.h"

namespace moat::mta::daemon {

class QueueManager {
 public:
  QueueManager(uv_loop_t* loop, std::shared_ptr<queue::Spool> spool, dns::Resolver* resolver,
               std::shared_ptr<const server::Snapshot> snapshot);
  ~QueueManager();

  // Takes the envelopes recovered from the spool and starts scheduling.
  void start(std::vector<queue::Envelope> recovered);
  void reload(std::shared_ptr<const server::Snapshot> snapshot);
  // A message the server just made durable. `data`, when given, is the bytes just
  // committed: the first delivery of a message without edits uses them instead of reading
  // the spool file back (a trip to the thread pool and four syscalls per message), within
  // kDataCacheBytes in all.
  void enqueue(const queue::Envelope& env, std::shared_ptr<const queue::MessageData> data = nullptr);
  static constexpr uint64_t kDataCacheBytes = 64ull << 20;
  // Stops starting deliveries; `done` runs when none is in flight.
  void drain(std::function<void()> done);

  // Control-socket operations. Each returns a JSON object ({"ok":true,...} or {"ok":false,"error":...}).
  // `list` ("" = active+hold, "active", "hold", "quarantine", "all"), its answer made a
  // slice at a time: with 20,000 messages it is 6 MB, and made in one go it held the event
  // loop for tens of milliseconds (every SMTP client waited). Each slice is made from the
  // live queue, each message in it whole, as it is at that turn of the loop: one delivered,
  // moved or removed meanwhile is listed once or not at all, never torn. Messages queued
  // after the first slice are left out (ids above `last`), so a listing always ends.
  struct ListCursor {
    QueueSelector select;  // the area and the selectors (queue_select.h)
    int64_t nowMs = 0;     // the wall time ages are measured at, set by the first slice
    bool begun = false;
    bool any = false;   // a message was written (the next one takes a comma)
    bool done = false;  // "]}" written
    std::string after;  // the id of the last message looked at
    std::string last;   // the highest id queued when the listing began
  };
  // Appends the next slice to `out`: stops once it has added `maxBytes` or looked at
  // `maxVisits` messages (an area's filter may skip many). Sets cursor.done with the end.
  void listSlice(ListCursor& cursor, std::string& out, size_t maxBytes, size_t maxVisits) const;
  // Bulk actions and `summary`: the messages `select` picks, a slice at a time (as a list),
  // the ids in queue order. `action` ("hold", "release", "flush", "delete", "bounce", or ""
  // for all) leaves out the messages the action would not change: already held for hold,
  // active for release, not active for flush. Messages queued after the first slice are
  // left out, so a selection always ends.
  struct SelectCursor {
    QueueSelector select;
    std::string action;
    int64_t nowMs = 0;
    bool begun = false;
    bool done = false;
    std::string after;
    std::string last;
  };
  void selectSlice(SelectCursor& cursor, std::vector<std::string>& ids, size_t maxVisits) const;
  void summarySlice(SelectCursor& cursor, QueueSummary& summary, size_t maxVisits) const;
  std::string show(const std::string& id) const;
  // `show ID --message` / `--headers`: the message as delivery would send it, its gateway
  // header lines (`prefix`) then the stored bytes with the filters' edits (`body`, one
  // mapping or copy made on the thread pool by the code delivery reads through), and how
  // many of those bytes to send (`length`: all, or the header section up to and including
  // the empty line). Any area. `done` runs on the loop with `error` set ("no such message:
  // ID", or the spool's error when the files went meanwhile) or with the message; the bytes
  // stay readable for as long as `body` is held, whatever happens to the message meanwhile.
  struct MessageCopy {
    std::string area;
    std::string prefix;
    std::shared_ptr<const queue::MessageData> body;
    uint64_t length = 0;
  };
  void readMessage(const std::string& id, bool headersOnly,
                   std::function<void(std::string error, std::shared_ptr<const MessageCopy>)> done);
  std::string flush(const std::string& id);  // "" = everything due now
  // flush of one message: 1 = to be tried now, 0 = not active or busy, -1 = no such message.
  int flushOne(const std::string& id);
  void hold(const std::string& id, std::function<void(std::string)> reply);
  void release(const std::string& id, std::function<void(std::string)> reply);
  void remove(const std::string& id, std::function<void(std::string)> reply);
  void bounce(const std::string& id, std::function<void(std::string)> reply);

  size_t inFlight() const { return busy_.size(); }

  // A report mail of Moat's own (TLS and DMARC reports, report_mail.h): `build` runs on the
  // pool and fills mail.text (or mail.error); the text is DKIM-signed with the [[dkim.sign]]
  // key of the From domain when there is one, written to the spool and queued like a DSN
  // (null sender, never bounced). `done` runs on the loop either way, with mail.queueId set
  // once it is queued. A drain waits for it.
  void queueReport(std::shared_ptr<report_mail::Mail> mail, std::function<void(report_mail::Mail&)> build,
                   std::function<void(const report_mail::Mail&)> done);
  // Local file work a drain waits for (a report aggregate saved at a stop): the drain does not
  // end before the returned function is called (once, on the loop).
  std::function<void()> holdDrain();
  // An inbound message the DMARC filter evaluated: counted for [dmarc_reports].
  void dmarcEvaluated(const filters::MessageContext& ctx) { dmarcReports_->record(ctx); }
  // 16 random hex digits (report ids).
  std::string randomHex();

 private:
  // Calls `f(id, entry)` for the messages of cursor's selection, looking at `maxVisits` at most.
  template <class F>
  void walk(SelectCursor& cursor, size_t maxVisits, F&& f) const;
  struct Entry {
    queue::Envelope env;
    bool busy = false;
    std::shared_ptr<const queue::MessageData> data;  // see enqueue(); dropped once used
    // Recipients a next hop refused as too many (452/552 to RCPT) in a transaction it took:
    // the next round, at once, carries these alone (see Attempt::again). In memory only: after
    // a restart they go with the others at the stored next attempt.
    std::vector<size_t> atOnce;
    int64_t laterMs = 0;  // the others' next attempt (wall time), set by the round that began
  };
  struct RcptOutcome {
    enum class Kind { Delivered, Deferred, Failed } kind = Kind::Deferred;
    std::string reply;  // "250 2.0.0 Ok" / "550 5.1.1 ..." / "4.4.1 connect failed ..."
    std::string relay;
    std::string tls;
    std::string remoteMta;  // the server whose reply this is (DSN Remote-MTA); "" = our own text
    // Delivered: the next hop took the DSN requests on (it offers DSN), so a success report
    // is its to make (RFC 3461 §5.2.1); `local`: delivered here (maildir), "delivered".
    bool notifyPassedOn = false;
    bool local = false;
    std::string auth{};  // the name the connection authenticated as (SMTP AUTH), "" = none
    std::string source{};  // the local address the connection was bound to, "" = none
    bool clientCert = false;  // the next hop asked for a client certificate and got the route's
    bool batv = false;     // sent with the BATV-tagged envelope sender ([bounce_verification])
  };
  // What a DSN reports (RFC 3461 §5.2): each recipient's NOTIFY decides whether it is named.
  enum class DsnKind { Failure, Delay, Success };
  struct Attempt;
  struct Destination;
  struct Job;

  // `dueMs`: wall time, as in Envelope::nextAttemptMs (0 = now); kept on the monotonic clock.
  void schedule(const std::string& id, int64_t dueMs);
  void armTimer();
  void tick();
  // `keys`: destinationKeys(entry.env), worked out once by tick().
  void deliver(Entry& entry, std::vector<std::string> keys);
  using DataLoaded = std::function<void(std::shared_ptr<const queue::MessageData>, std::string error)>;
  void loadData(const std::string& id, DataLoaded done);
  // Groups the pending recipients by route and starts each group (data loaded, or `error`).
  void route(std::shared_ptr<Attempt> attempt, const std::string& error);
  // `batvTag`: the transaction's envelope sender is the BATV-tagged form of the spooled one.
  void deliverGroup(std::shared_ptr<Attempt> attempt, const policy::Route* route, const std::string& domain,
                    std::vector<size_t> rcpts, std::string loadKey, bool batvTag);
  bool batvTags(const queue::Envelope& env) const;
  void deliverMaildir(std::shared_ptr<Attempt> attempt, const std::string& dir, std::vector<size_t> rcpts);
  // `loadKey`: the destination's key in load_, released when the group is done.
  void deliverSmtp(std::shared_ptr<Attempt> attempt, const policy::Route& route, const std::string& domain,
                   std::vector<size_t> rcpts, std::string loadKey, bool batvTag);
  void groupDone(std::shared_ptr<Attempt> attempt);
  void finishAttempt(std::shared_ptr<Attempt> attempt);
  // By value: callers pass the id of the entry it erases. `removed`, if given, is called
  // once the files are gone (or their removal failed).
  void retire(std::string id, queue::Spool::Done removed = nullptr);
  // Runs once a report is durable in the spool (written = true), or at once when none is
  // owed; written = false, with the spool's error, when it could not be written (a full
  // disk): then the caller must leave what it reports on unsettled (see reportNotWritten).
  using DsnDone = std::function<void(bool written, const std::string& error)>;
  // `outcomes`: this attempt's results, which say whose reply each one is (null: our text).
  // Recipients whose NOTIFY does not ask for this kind of report are left out (none left:
  // no DSN).
  void sendDsn(const queue::Envelope& env, const std::vector<size_t>& rcpts, DsnKind kind,
               std::shared_ptr<const queue::MessageData> data, const std::map<size_t, RcptOutcome>* outcomes,
               DsnDone then);
  queue::DsnInput dsnInputFor(const queue::Envelope& env) const;
  // The "expanded" report owed for env.expanded (RFC 3461 §5.2.7.3): same `then` contract.
  void sendExpandedDsn(const queue::Envelope& env, std::shared_ptr<const queue::MessageData> data, DsnDone then);
  // Builds the DSN for `in` about `env`, writes it to the spool and queues it; `then` as
  // sendDsn's. `action` names the report in the `dsn` log line.
  void writeDsn(const queue::Envelope& env, queue::DsnInput in, std::shared_ptr<const queue::MessageData> data,
                std::string action, DsnDone then);
  // A report on `rcpts` of message `id` could not be written: they stay queued, to be tried
  // again with their report, rather than settled without it (a delay warning is owed again).
  void reportNotWritten(const std::string& id, const std::vector<size_t>& rcpts, DsnKind kind,
                        const std::string& error);
  void updateGauges();  // publishes areaCounts_ (O(1): called for every message)
  // Every change to entries_ goes through these, so the per-area counts stay exact.
  void putEntry(queue::Envelope env);
  void eraseEntry(const std::string& id);
  void setArea(Entry& entry, queue::Area area);
  // hold/release: the entry is busy while its files move (no delivery, no other command),
  // and a drain waits for the move (local disk only, like a DSN write).
  void setBusyForMove(Entry& entry, bool on);
  // Removes quarantined messages older than [quarantine] retention (log: quarantine_expired).
  void expireQuarantine();

  // The destination (connection pool) key of a route and recipient domain, known without DNS;
  // "" for a Maildir route, which has no connection limit.
  static std::string destinationKey(const policy::Route* route, const std::string& domain);
  // Fairness: a message counts against queue.max_deliveries from the moment it is taken up,
  // so one whose every destination already has queue.max_per_destination groups under way
  // would only wait in that destination's queue, holding a slot that other next hops need
  // (one slow next hop would take every slot). Such a message is set aside in blocked_
  // instead, off the schedule, and goes back on it as its destination's groups finish.
  // Returns the key it waits for, or "" when it can go now.
  std::string saturatedDestination(const std::vector<std::string>& keys) const;
  // The keys of the destinations of `env`'s pending recipients ("" for Maildir), each once.
  std::vector<std::string> destinationKeys(const queue::Envelope& env) const;
  void releaseLoad(const std::string& key);
  std::map<std::string, unsigned> load_;  // key -> groups routed to it and not yet done
  std::map<std::string, std::deque<std::pair<std::string, int64_t>>> blocked_;  // key -> (id, monotonic due)

  // Destinations (connection pools)
  void submit(const std::string& key, std::shared_ptr<Job> job);
  // submit(), after the DANE lookups for a tls = "dane" job: `mxSecure` says whether the MX
  // RRset that named the job's hosts was DNSSEC-authenticated (true for a route's hosts).
  void submitHops(const std::string& key, std::shared_ptr<Job> job, bool mxSecure);
  // MTA-STS enforce (RFC 8461 §4.1): leaves out the MX hosts the policy does not name, then submits.
  void submitSts(const std::string& key, std::shared_ptr<Job> job);
  void pump(Destination& d);
  void openConnection(Destination& d);
  struct Pooled {
    std::shared_ptr<client::SmtpClient> client;
    std::string relay;  // "mx.example.test[192.0.2.1]:25", for logs
    std::string remoteMta;  // "mx.example.test" (or the address): the DSN's Remote-MTA
  };
  void runJob(Destination& d, Pooled c, std::shared_ptr<Job> job);
  void clientIdle(Destination& d, Pooled c);
  // Drops the destination `key` once nothing waits for it and it has no connection.
  void removeIfUnused(const std::string& key);
  // Ends an idle connection with QUIT; a drain waits for the reply (RFC 5321 §4.1.1.10).
  void sayQuit(const std::shared_ptr<client::SmtpClient>& c);
  void finishDrainIfDone();

  // TLS reporting (RFC 8460, [tlsrpt]). A session's result for the aggregate: `resultType`
  // "" for a success. Nothing is recorded unless [tlsrpt] is enabled and the job delivers by MX.
  // `notes`: what the connection learnt of itself (sending-mta-ip, receiving-mx-helo), if any.
  void tlsrptRecord(const Job& job, const tlsrpt::Policy& policy, const std::string& resultType,
                    const std::string& mxHost, const std::string& ip, const client::PeerNotes* notes = nullptr);
  // (Re)arms the timer for the end of the current period (or stops it when disabled).
  void armTlsrpt();
  // The period ended: its results go out, a domain at a time (TXT lookup, then reports), at
  // most kTlsrptLookups lookups under way at once: 10,000 domains must not become 10,000
  // queries at the same moment to the resolver (whose timeouts would lose their reports).
  void tlsrptPeriodEnd();
  void tlsrptPump();
  void tlsrptDomain(const std::string& domain, std::shared_ptr<const tlsrpt::DomainResults> results,
                    int64_t startSeconds, int64_t endSeconds);
  void tlsrptRecordFound(const std::string& domain, std::shared_ptr<const tlsrpt::DomainResults> results,
                         int64_t startSeconds, int64_t endSeconds, const dns::Answer& a);
  // Builds one report on the thread pool, then writes it to the spool and queues it.
  void tlsrptSend(const std::string& domain, const std::string& rua, const std::string& to,
                  std::shared_ptr<const tlsrpt::DomainResults> results, int64_t startSeconds, int64_t endSeconds);
  // The report's id and dates, for either kind of rua.
  tlsrpt::ReportInfo tlsrptReportInfo(const std::string& domain, int64_t startSeconds, int64_t endSeconds);
  // An https: rua (§5.2): the report built and gzipped on the thread pool, then POSTed.
  struct TlsrptPost;
  void tlsrptPost(const std::string& domain, const std::string& rua, const tlsrpt::HttpsUri& uri,
                  std::shared_ptr<const tlsrpt::DomainResults> results, int64_t startSeconds, int64_t endSeconds);
  void tlsrptPostAttempt(std::shared_ptr<TlsrptPost> post);
  void tlsrptRetryDue();
  // SPOOL_DIR/tlsrpt.state, the checkpoint (tlsrptFile_): the period under way and its counts.
  // Read back at start (before the loop runs).
  void loadTlsrpt();

  uv_loop_t* loop_;
  std::shared_ptr<queue::Spool> spool_;
  dns::Resolver* resolver_;
  std::unique_ptr<sts::PolicyCache> stsCache_;  // MTA-STS policies by domain (RFC 8461 §5.1)
  std::shared_ptr<const server::Snapshot> snap_;
  queue::Scheduler sched_;
  uv::Timer timer_;
  std::map<std::string, Entry> entries_;
  std::array<uint64_t, 3> areaCounts_{};
  uint64_t cachedBytes_ = 0;  // sum of Entry::data sizes
  void dropCachedData(Entry& entry);  // by queue::Area: active, hold, quarantine
  std::set<std::string> busy_;
  std::map<std::string, std::unique_ptr<Destination>> destinations_;
  // Next hops that could not be reached (every address failed and no connection to them
  // was open): their messages are deferred without a new connection until `untilMs`, as
  // Postfix marks a dead destination. Otherwise each queued message would spend up to a
  // connect timeout on a dead host, holding delivery slots other destinations need.
  struct Unreachable {
    int64_t untilMs = 0;  // monotonic
    std::string error;  // "451 4.4.1 HOST[IP]:PORT: connection refused"
  };
  std::map<std::string, Unreachable> unreachable_;
  void markUnreachable(Destination& d, const std::string& error);
  // The reply for a job refused because its destination is marked, or "" (then tried).
  std::string unreachableReply(const std::string& key);
  bool draining_ = false;
  std::function<void()> drained_;
  std::map<const client::SmtpClient*, std::shared_ptr<client::SmtpClient>> quitting_;
  // DSNs on their way into the spool. The original is already retired, so a drain waits
  // for these (the grace timer included): a graceful stop never loses a DSN.
  unsigned dsnWrites_ = 0;
  unsigned moves_ = 0;  // hold/release moves under way (see setBusyForMove)
  bool graceExpired_ = false;
  void dsnWritten();
  static constexpr uint64_t kDrainGraceMs = 20'000;
  std::unique_ptr<uv::Timer> graceTimer_;
  uv::Timer housekeeping_;
  // [mta_sts] refresh_interval: the MTA-STS cache's sweep (PolicyCache::sweep), and its period.
  uv::Timer stsSweep_;
  int64_t stsSweepEveryMs_ = 0;
  void startStsSweep();
  tlsrpt::Aggregator tlsrpt_;
  uv::Timer tlsrptTimer_;
  int64_t tlsrptPeriodMs_ = 0;    // the start (Unix ms) of the period being gathered
  int64_t tlsrptIntervalMs_ = 0;  // the interval that period was made with
  uint64_t tlsrptSerial_ = 0;     // makes report ids unique within a period
  // Ended periods' domains waiting for their TXT lookup, and the lookups under way.
  struct TlsrptDue {
    std::string domain;
    std::shared_ptr<const tlsrpt::DomainResults> results;
    int64_t startSeconds, endSeconds;
  };
  static constexpr size_t kTlsrptLookups = 16;
  std::deque<TlsrptDue> tlsrptDue_;
  size_t tlsrptLookups_ = 0;
  bool tlsrptPumping_ = false;
  // [dmarc_reports] (RFC 7489 §7.2): the aggregate of inbound DMARC results and its reports.
  std::unique_ptr<DmarcReporter> dmarcReports_;
  // The checkpoint, written on the pool every [tlsrpt] checkpoint_interval when sessions were
  // counted since the last write's contents were made (one write at a time, a drain waits for
  // the last), and whether the file may hold counts.
  StateFile tlsrptFile_;
  bool tlsrptFileHolds_ = false;
  // https: uploads under way (their cancel functions, for a stop) and those waiting to be tried
  // again, kTlsrptPostRetryMs after a failure (one delay for all: the queue is in due order).
  static constexpr unsigned kTlsrptPostAttempts = 3;
  static constexpr uint64_t kTlsrptPostRetryMs = 60'000;
  uint64_t tlsrptPostSerial_ = 0;
  std::map<uint64_t, std::function<void()>> tlsrptPosts_;
  std::deque<std::pair<uint64_t, std::shared_ptr<TlsrptPost>>> tlsrptRetries_;  // (due, uv_now ms)
  uv::Timer tlsrptRetryTimer_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  std::mt19937_64 rng_{std::random_device{}()};  // MX order within a preference
};

// Writes one Maildir message (tmp/ then new/, fsynced) for `rcpt` under `dir`
// (DIR/<domain>/<local-part>/). Blocking: call on the thread pool. Returns "" or an error.
std::string writeMaildir(const std::string& dir, const std::string& rcpt, const std::string& returnPath,
                         const std::string& prefix, std::string_view body);

}  // namespace moat::mta::daemon
