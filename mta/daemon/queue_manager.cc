// mta/daemon/queue_manager.cc — see queue_manager.h.
#include "mta/daemon/queue_manager.h"

#include <strings.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <fstream>
#include <optional>
#include <tuple>

#include "filters/mime/downgrade.h"
#include "mta/daemon/address_order.h"
#include "mta/daemon/https_client.h"
#include "mta/daemon/mx_self.h"
#include "mta/dns/dane.h"
#include "mta/dns/resolve_host.h"
#include "mta/runtime/durable_file.h"
#include "mta/runtime/hex.h"
#include "mta/runtime/json.h"
#include "mta/runtime/log.h"
#include "mta/runtime/scan.h"
#include "mta/server/metrics.h"
#include "policy/batv.h"
#include "queue/dsn.h"
#include "queue/edited.h"
#include "queue/tls_required.h"

namespace moat::mta::daemon {
namespace {

// Wall time: the envelope's dates (arrival, next attempt as shown and stored), expiry and
// the delay warning, which are measured from the arrival.
int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Monotonic time: every wait (the schedule, the unreachable marks). A step of the wall clock
// (NTP, an admin's `date -s`) must neither make every deferred message due at once nor hold
// them all back by the size of the step.
int64_t monoMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string domainOf(const std::string& address) {
  auto at = address.rfind('@');
  return at == std::string::npos ? "" : lower(address.substr(at + 1));
}

std::string oneLine(const std::string& s) {
  std::string out = s;
  std::replace(out.begin(), out.end(), '\n', ' ');
  std::replace(out.begin(), out.end(), '\r', ' ');
  return out.substr(0, 900);
}

std::string replyText(const client::Reply& r) { return oneLine(r.text.empty() ? std::to_string(r.code) : r.text); }

std::string serializeHeaders(const std::vector<std::pair<std::string, std::string>>& headers) {
  std::string out;
  for (const auto& [name, value] : headers) out += name + ": " + value + "\r\n";
  return out;
}

// What `moat queue` shows (the spool's folder for the active area is "queue").
std::string areaLabel(queue::Area a) { return a == queue::Area::Active ? "active" : std::string(queue::areaName(a)); }

std::string statusName(queue::RcptStatus s) {
  switch (s) {
    case queue::RcptStatus::Pending: return "pending";
    case queue::RcptStatus::Delivered: return "delivered";
    case queue::RcptStatus::Failed: return "failed";
  }
  return "pending";
}

queue::RetryPolicy retryPolicy(const policy::Config& cfg) {
  queue::RetryPolicy p;
  p.waitsMs.clear();
  for (const auto& w : cfg.retry) p.waitsMs.push_back(w.count());
  p.maxLifetimeMs = cfg.maxLifetime.count();
  p.delayWarningMs = cfg.delayWarning.count();
  return p;
}

std::string safeMailboxName(const std::string& local) {
  std::string out;
  for (char c : lower(local)) out.push_back(c == '/' || c == '\0' ? '_' : c);
  if (out.empty() || out[0] == '.') out.insert(out.begin(), '_');
  return out.substr(0, 200);
}

// Converting to 7-bit MIME costs about 6 ms per MB: above this, on the thread pool.
constexpr size_t kDowngradeOnLoop = 256 * 1024;

// A converter for the SMTP client (client::Downgrade) that runs `convert` over the message
// as it goes (the gateway's header lines, then the spooled bytes): on the loop for a message
// up to kDowngradeOnLoop, on the thread pool above. `convert` takes the message and returns
// a result with ok, message and reason; it must be safe to run on any thread.
template <typename Convert>
client::Downgrade offLoopConverter(uv_loop_t* loop, std::shared_ptr<bool> alive, Convert convert) {
  return [loop, alive = std::move(alive), convert](std::string prefix, std::string_view body,
                                                   std::shared_ptr<const void> keepAlive, client::DowngradeDone done) {
    size_t size = prefix.size() + body.size();
    auto result = std::make_shared<decltype(convert(std::string_view()))>();
    auto work = [result, convert, prefix = std::move(prefix), body, keepAlive = std::move(keepAlive)]() mutable {
      prefix.append(body);
      *result = convert(prefix);
    };
    auto after = [alive, result, done = std::move(done)] {
      if (*alive) done(result->ok, std::move(result->message), std::move(result->reason));
    };
    if (size > kDowngradeOnLoop) return uv::queueWork(loop, std::move(work), std::move(after));
    work();
    after();
  };
}

// A route without targets delivers by MX (RFC 5321 §5.1).
const policy::Route& mxRoute() {
  static const policy::Route kMxRoute = [] {
    policy::Route r;
    r.to.push_back(policy::RouteTarget{policy::RouteTarget::Kind::Mx, "", 25, "", ""});
    return r;
  }();
  return kMxRoute;
}

// The control commands' answer for a message that a delivery or a hold/release move has.
std::string busyReply() {
  return mta::JsonObject().add("ok", false).add("error", "message is busy: a delivery or a move is under way").str();
}

}  // namespace

std::string writeMaildir(const std::string& dir, const std::string& rcpt, const std::string& returnPath,
                         const std::string& prefix, std::string_view body) {
  auto at = rcpt.rfind('@');
  std::string local = at == std::string::npos ? rcpt : rcpt.substr(0, at);
  std::string domain = at == std::string::npos ? "localhost" : lower(rcpt.substr(at + 1));
  std::string box = dir + "/" + safeMailboxName(domain) + "/" + safeMailboxName(local);
  // A new mailbox's folders are made durable before its first message is: the message leaves
  // the spool once written, so the folders holding it must survive a power cut too.
  for (const char* sub : {"/tmp", "/new", "/cur"})
    if (std::string e = queue::makeDirsDurably(box + sub, 0750, 0750); !e.empty()) return e;
  static std::atomic<uint64_t> counter{0};
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  auto now = std::chrono::system_clock::now().time_since_epoch();
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(now).count();
  std::string name = std::to_string(us / 1000000) + ".M" + std::to_string(us % 1000000) + "P" +
                     std::to_string(getpid()) + "Q" + std::to_string(++counter) + "." + host;
  std::string tmp = box + "/tmp/" + name, fin = box + "/new/" + name;
  // Maildir files use the local convention, LF line ends.
  std::string content = "Return-Path: <" + returnPath + ">\nDelivered-To: " + rcpt + "\n";
  content.reserve(content.size() + prefix.size() + body.size());
  auto appendLf = [&content](std::string_view s) {
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') continue;
      content.push_back(s[i]);
    }
  };
  appendLf(prefix);
  appendLf(body);
  // Written in tmp/ under its unique name, then renamed into new/ (and new/ fsynced).
  mta::DurableWrite how;
  how.mode = 0640;
  how.temp = tmp;
  return mta::writeFileDurably(fin, content, how).text();
}

struct QueueManager::Attempt {
  std::string id;
  queue::Envelope env;
  std::shared_ptr<const queue::MessageData> data;
  std::string prefix;
  std::map<size_t, RcptOutcome> outcomes;
  int pendingGroups = 0;
  // A next hop took part of a transaction's recipients and refused the rest as too many
  // (RFC 5321 §4.5.3.1.10): those go again at once in a new transaction, not at the next
  // retry, as Postfix does. Progress is certain: each round delivers at least one. Only
  // they: the message's other deferred recipients (a 450, a next hop down) keep their
  // retry wait, and such a round is no new attempt (the retry waits do not grow with it).
  std::set<size_t> again;
  std::vector<size_t> only;  // this round is such a one: these recipients alone
  // Destination keys counted in load_ when the message was taken up, before its groups are
  // known; route() hands each to a group, and releases those no group took.
  std::vector<std::string> reserved;
};

struct Hop {
  IpAddress ip;
  uint16_t port = 25;
  std::string name;  // for SNI and logs
  uint32_t group = 0;  // MX preference, or the index of the route target: see address_order.h
  bool secure = false;                        // the host's address records were DNSSEC-authenticated
  std::shared_ptr<const dns::DaneHost> dane;  // tls = "dane": what RFC 7672 asks of this host
  std::string canonical;                      // the name the addresses are at when `name` is an alias ("" if none)
  bool lmtp = false;                          // an lmtp: route target: LMTP (RFC 2033), not SMTP
  std::string socket;                         // lmtp:unix:PATH: the socket (then `ip` and `port` are unused)
};

// The next hop as logs name it (`relay`): "192.0.2.1:25", "[2001:db8::1]:25" or
// "mx.example.test[2001:db8::1]:25" (Postfix's form); an LMTP one with "lmtp:" before it, or
// "lmtp:unix:/run/dovecot/lmtp" for a Unix socket.
std::string hopRelay(const Hop& hop) {
  if (!hop.socket.empty()) return "lmtp:unix:" + hop.socket;
  std::string at =
      hop.name.empty() ? hop.ip.withPort(hop.port) : hop.name + "[" + hop.ip.str() + "]:" + std::to_string(hop.port);
  return hop.lmtp ? "lmtp:" + at : at;
}

struct QueueManager::Job {
  std::shared_ptr<Attempt> attempt;
  std::vector<size_t> rcpts;
  std::vector<Hop> hops;
  client::TlsMode tls = client::TlsMode::May;
  std::shared_ptr<tls::TlsContext> tlsCtx;  // tls = "verify": the route's verifying context
  bool dane = false;                        // tls = "dane": submitHops() looks up each host's TLSA
  // [[route]] mta_sts: the destination domain whose policy submitHops() gets (RFC 8461), and
  // that policy when it is enforce or testing (null: none applies, delivery as before).
  std::string stsDomain;
  std::shared_ptr<const sts::Policy> sts;
  // Delivery by MX: the recipient domain, the policy domain of TLS reporting (RFC 8460).
  std::string reportDomain;
  // [[route]] auth_file: SMTP AUTH after STARTTLS; null = no AUTH.
  std::shared_ptr<const client::Credentials> auth;
  // [[route]] tls_cert: presented on every TLS connection when the next hop asks; null = none.
  std::shared_ptr<const tls::ClientCertificate> clientCert;
  bool chunking = true;  // [[route]] chunking: BDAT when the next hop offers CHUNKING
  // RFC 8689 §4.2.1: the message carries REQUIRETLS (and has a sender to report to): only a
  // host whose name was found securely (`nameSecure`: a DNSSEC-signed MX RRset, or the
  // route's own host), over TLS that DANE, MTA-STS enforce or PKIX verified, and that offers
  // REQUIRETLS. A host that fails this is not given the message; when every host failed so,
  // the recipients fail (5.7.30, 5.7.10 for TLS that could not be set up).
  bool requireTls = false;
  bool nameSecure = false;
  // [[route]] (else [queue]) source_ipv4, source_ipv6 and [[route]] helo_name ("" =
  // server.hostname): where its connections come from and what they say at EHLO.
  std::optional<IpAddress> sourceIpv4, sourceIpv6;
  std::string heloName;
  // [bounce_verification]: the envelope sender this transaction gives instead of the
  // spooled one (its BATV-tagged form); "" = the spooled one.
  std::string batvFrom;
  // For the log: the destination as the route names it ("smtp:HOST:PORT", several joined by
  // ",", or "mx:DOMAIN") and the route's tls mode; the destination key adds what pools.
  std::string destination, tlsName;
  // `remoteMta`: the name (or address) of the server that answered; "" when none did.
  std::function<void(const client::TransactionResult&, const std::string& relay, const std::string& tls,
                     const std::string& remoteMta)>
      done;
};

struct QueueManager::Destination {
  std::string key;
  std::string name, tlsName;  // for the log: the first job's Job::destination and Job::tlsName
  std::deque<std::shared_ptr<Job>> waiting;
  unsigned active = 0;  // connections open or opening, idle ones included
  std::vector<Pooled> idle;
  std::unique_ptr<uv::Timer> idleTimer;
};

QueueManager::QueueManager(uv_loop_t* loop, std::shared_ptr<queue::Spool> spool, dns::Resolver* resolver,
                           std::shared_ptr<const server::Snapshot> snapshot)
    : loop_(loop),
      spool_(std::move(spool)),
      resolver_(resolver),
      // In the spool: policies outlive a restart (RFC 8461 §5.1), as the queue does. (Made
      // before snap_ takes `snapshot`.)
      stsCache_(std::make_unique<sts::PolicyCache>(loop, resolver, 443, snapshot->config->spoolDir + "/mta-sts.cache")),
      snap_(std::move(snapshot)),
      sched_(retryPolicy(*snap_->config)),
      timer_(loop),
      housekeeping_(loop),
      stsSweep_(loop),
      tlsrptTimer_(loop),
      dmarcReports_(
          std::make_unique<DmarcReporter>(loop, resolver, *this, snap_->config->spoolDir + "/dmarc_report.state")),
      tlsrptFile_(
          loop, snap_->config->spoolDir + "/tlsrpt.state",
          [this]() -> std::function<std::string()> {
            // A copy of the aggregate (on the loop: bounded by the Aggregator's caps); the JSON
            // goes to the pool.
            auto results = std::make_shared<tlsrpt::Results>(tlsrpt_.results());
            tlsrptFileHolds_ = !results->empty();
            return [results, start = tlsrptPeriodMs_, interval = tlsrptIntervalMs_] {
              return tlsrpt::encodeState(start, interval, *results);
            };
          },
          [this](const std::string& error) {
            log::warn("tlsrpt_error").add("file", tlsrptFile_.path()).add("reason", "aggregate not saved: " + error);
          }),
      tlsrptRetryTimer_(loop) {
  stsCache_->setSource({snap_->config->sourceIpv4, snap_->config->sourceIpv6});
}

void QueueManager::reload(std::shared_ptr<const server::Snapshot> snapshot) {
  snap_ = std::move(snapshot);
  stsCache_->setSource({snap_->config->sourceIpv4, snap_->config->sourceIpv6});
  sched_.setPolicy(retryPolicy(*snap_->config));
  if (stsSweep_.active() && snap_->config->mtaStsRefreshInterval.count() != stsSweepEveryMs_) startStsSweep();
  armTlsrpt();
  dmarcReports_->reload(snap_);
}

QueueManager::~QueueManager() { *alive_ = false; }

void QueueManager::start(std::vector<queue::Envelope> recovered) {
  stsCache_->load();
  for (auto& env : recovered) {
    std::string id = env.id;
    auto area = env.area;
    int64_t due = env.nextAttemptMs;
    putEntry(std::move(env));
    if (area == queue::Area::Active) schedule(id, due);
  }
  updateGauges();
  armTimer();
  // A quarter of the retention, between 1 s and 1 min: precise enough, and the sweep is cheap.
  int64_t every = std::clamp<int64_t>(snap_->config->quarantineRetention.count() / 4, 1000, 60'000);
  housekeeping_.startRepeat(static_cast<uint64_t>(every), [this] { expireQuarantine(); });
  expireQuarantine();
  startStsSweep();
  loadTlsrpt();
  armTlsrpt();
  dmarcReports_->start(snap_);
}

void QueueManager::expireQuarantine() {
  int64_t now = nowMs();
  int64_t retention = snap_->config->quarantineRetention.count();
  std::vector<std::string> old;
  for (const auto& [id, e] : entries_)
    if (e.env.area == queue::Area::Quarantine && !e.busy && now >= e.env.arrivalMs + retention) old.push_back(id);
  for (const auto& id : old) {
    const auto& env = entries_.at(id).env;
    log::info("quarantine_expired").add("queue_id", id).add("message_id", env.messageId).add("from", env.mailFrom)
        .add("reason", env.quarantineReason).add("delay_ms", now - env.arrivalMs);
    retire(id);
  }
  if (!old.empty()) updateGauges();
}

void QueueManager::enqueue(const queue::Envelope& env, std::shared_ptr<const queue::MessageData> data) {
  putEntry(env);
  // A message with edits is read through loadData, which applies them on the pool.
  if (data && env.area == queue::Area::Active && env.edits.empty() &&
      cachedBytes_ + data->size() <= kDataCacheBytes) {
    cachedBytes_ += data->size();
    entries_.at(env.id).data = std::move(data);
  }
  if (env.area == queue::Area::Active) schedule(env.id, 0);
  updateGauges();
  armTimer();
}

static size_t areaIndex(queue::Area area) {
  switch (area) {
    case queue::Area::Active: return 0;
    case queue::Area::Hold: return 1;
    case queue::Area::Quarantine: return 2;
  }
  return 0;
}

void QueueManager::putEntry(queue::Envelope env) {
  auto area = env.area;
  auto [it, inserted] = entries_.try_emplace(env.id);
  if (!inserted) {
    --areaCounts_[areaIndex(it->second.env.area)];
    dropCachedData(it->second);
  }
  it->second = Entry{std::move(env), false, nullptr, {}, 0};
  ++areaCounts_[areaIndex(area)];
}

void QueueManager::eraseEntry(const std::string& id) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  --areaCounts_[areaIndex(it->second.env.area)];
  dropCachedData(it->second);
  entries_.erase(it);
}

void QueueManager::dropCachedData(Entry& entry) {
  if (!entry.data) return;
  cachedBytes_ -= entry.data->size();
  entry.data.reset();
}

void QueueManager::setArea(Entry& entry, queue::Area area) {
  --areaCounts_[areaIndex(entry.env.area)];
  entry.env.area = area;
  ++areaCounts_[areaIndex(area)];
}

void QueueManager::setBusyForMove(Entry& entry, bool on) {
  entry.busy = on;
  on ? ++moves_ : --moves_;
}

void QueueManager::updateGauges() {
  auto& m = server::metrics();
  m.queueActive = areaCounts_[0];
  m.queueHold = areaCounts_[1];
  m.queueQuarantine = areaCounts_[2];
}

void QueueManager::schedule(const std::string& id, int64_t dueMs) {
  // `dueMs` is wall time (0 = now), as the envelope stores it; the schedule runs on the
  // monotonic clock, so the wait is converted once, here.
  int64_t due = dueMs <= 0 ? 0 : monoMs() + (dueMs - nowMs());
  sched_.remove(id);
  sched_.add(id, due);
}

void QueueManager::armTimer() {
  if (draining_) return;
  auto next = sched_.nextDue();
  if (!next) {
    timer_.stop();
    return;
  }
  int64_t wait = std::max<int64_t>(0, *next - monoMs());
  timer_.start(static_cast<uint64_t>(std::min<int64_t>(wait, 60'000)), [this] { tick(); });
}

void QueueManager::tick() {
  if (draining_) return;
  const auto& cfg = *snap_->config;
  size_t room = cfg.maxDeliveries > busy_.size() ? cfg.maxDeliveries - busy_.size() : 0;
  // With every slot busy, the due messages wait: the next delivery that finishes re-arms
  // the timer. (Re-arming a 0 ms timer here would spin: libuv runs it again at once.)
  if (room == 0) return;
  int64_t now = monoMs();
  while (room > 0) {
    auto due = sched_.nextDue();
    auto ids = sched_.popDue(now, 1);
    if (ids.empty()) break;
    auto it = entries_.find(ids.front());
    if (it == entries_.end() || it->second.busy || it->second.env.area != queue::Area::Active) continue;
    // Set aside without taking a slot: see blocked_. Each message is looked at once until
    // its destination has room again, so a long queue for one next hop costs no scan.
    auto keys = destinationKeys(it->second.env);
    if (std::string key = saturatedDestination(keys); !key.empty()) {
      blocked_[key].emplace_back(ids.front(), *due);
      continue;
    }
    deliver(it->second, std::move(keys));
    --room;
  }
  armTimer();
}

void QueueManager::deliver(Entry& entry, std::vector<std::string> keys) {
  entry.busy = true;
  busy_.insert(entry.env.id);
  auto attempt = std::make_shared<Attempt>();
  attempt->id = entry.env.id;
  attempt->env = entry.env;
  attempt->only = std::exchange(entry.atOnce, {});
  // The message counts against its destinations from now: reading it from the spool takes a
  // trip to the thread pool, and the other messages this tick takes up must see it.
  for (auto& key : keys) {
    if (key.empty()) continue;
    ++load_[key];
    attempt->reserved.push_back(std::move(key));
  }
  if (entry.data) {
    attempt->data = entry.data;
    dropCachedData(entry);
    route(attempt, "");
    return;
  }
  loadData(attempt->id, [this, attempt](std::shared_ptr<const queue::MessageData> data, std::string error) {
    attempt->data = std::move(data);
    route(attempt, error);
  });
}

void QueueManager::loadData(const std::string& id, DataLoaded done) {
  // Reading the spool file is disk I/O: on the pool, never on the loop.
  auto result = std::make_shared<std::pair<std::shared_ptr<const queue::MessageData>, std::string>>();
  auto spool = spool_;
  auto alive = alive_;
  // Every reader gets the message as delivered: with the filters' edits (queue/edited.h).
  auto entry = entries_.find(id);
  auto edits = entry != entries_.end() ? entry->second.env.edits : std::vector<filters::Edit>{};
  uv::queueWork(
      loop_,
      [spool, id, result, edits = std::move(edits)] {
        result->first = queue::deliveredData(spool->openData(id, result->second), edits);
      },
      [alive, result, done = std::move(done)] {
        if (*alive) done(std::move(result->first), std::move(result->second));
      });
}

void QueueManager::route(std::shared_ptr<Attempt> attempt, const std::string& error) {
  auto releaseReserved = [this, attempt] {
    for (const auto& key : std::exchange(attempt->reserved, {})) releaseLoad(key);
  };
  if (!attempt->data) {
    releaseReserved();
    log::error("spool_error").add("queue_id", attempt->id).add("error", error);
    for (size_t i = 0; i < attempt->env.rcpts.size(); ++i)
      if (attempt->env.rcpts[i].status == queue::RcptStatus::Pending)
        attempt->outcomes[i] = {RcptOutcome::Kind::Deferred, "451 4.3.0 queue file unreadable: " + error, "", "", ""};
    finishAttempt(attempt);
    return;
  }
  attempt->prefix = serializeHeaders(attempt->env.headers);
  const auto& cfg = *snap_->config;
  // Group the pending recipients by route, and by domain for MX routes; apart, on an smtp:
  // route, those whose mail leaves with a BATV-tagged sender (outside relay.domains) and
  // those it does not (inside). A route's senders are matched against the envelope sender
  // as spooled: already rewritten by relay.rewrite, and not yet tagged.
  const bool batvSender = batvTags(attempt->env);
  std::map<std::tuple<int, std::string, bool>, std::vector<size_t>> groups;
  for (size_t i = 0; i < attempt->env.rcpts.size(); ++i) {
    const auto& r = attempt->env.rcpts[i];
    if (r.status != queue::RcptStatus::Pending) continue;
    if (!attempt->only.empty() && std::find(attempt->only.begin(), attempt->only.end(), i) == attempt->only.end())
      continue;
    std::string domain = domainOf(r.address);
    const policy::Route* route = cfg.routeFor(domain, attempt->env.mailFrom);
    int idx = route ? static_cast<int>(route - cfg.routes.data()) : -1;
    bool byDomain = !route || route->to.empty() || route->to.front().kind == policy::RouteTarget::Kind::Mx;
    groups[{idx, byDomain ? domain : "", batvSender && !cfg.isRelayDomain(domain)}].push_back(i);
  }
  if (groups.empty()) {
    releaseReserved();
    finishAttempt(attempt);
    return;
  }
  // One SMTP transaction carries at most queue.max_recipients_per_transaction of a group:
  // a server only has to take 100 (RFC 5321 §4.5.3.1.8), and a message may have more.
  std::vector<std::tuple<const policy::Route*, std::string, std::vector<size_t>, bool>> parts;
  for (auto& [key, rcpts] : groups) {
    const auto& [routeIndex, groupDomain, tagged] = key;
    const policy::Route* route = routeIndex >= 0 ? &cfg.routes[static_cast<size_t>(routeIndex)] : nullptr;
    std::string domain = groupDomain.empty() ? domainOf(attempt->env.rcpts[rcpts.front()].address) : groupDomain;
    bool maildir = route && !route->to.empty() && route->to.front().kind == policy::RouteTarget::Kind::Maildir;
    size_t per = maildir ? rcpts.size() : cfg.maxRecipientsPerTransaction;
    for (size_t from = 0; from < rcpts.size(); from += per) {
      size_t to = std::min(rcpts.size(), from + per);
      parts.emplace_back(route, domain, std::vector<size_t>(rcpts.begin() + from, rcpts.begin() + to), tagged);
    }
  }
  attempt->pendingGroups = static_cast<int>(parts.size());
  std::vector<std::string> keys;
  for (auto& [route, domain, rcpts, tagged] : parts) {
    std::string key = destinationKey(route, domain);
    if (!key.empty()) {
      auto held = std::find(attempt->reserved.begin(), attempt->reserved.end(), key);
      if (held != attempt->reserved.end())
        attempt->reserved.erase(held);  // counted when the message was taken up
      else
        ++load_[key];
    }
    keys.push_back(std::move(key));
  }
  releaseReserved();  // a reload may have changed the routes meanwhile
  for (size_t k = 0; k < parts.size(); ++k) {
    auto& [route, domain, rcpts, tagged] = parts[k];
    deliverGroup(attempt, route, domain, std::move(rcpts), std::move(keys[k]), tagged);
  }
}

std::vector<std::string> QueueManager::destinationKeys(const queue::Envelope& env) const {
  const auto& cfg = *snap_->config;
  std::vector<std::string> keys;
  for (const auto& r : env.rcpts) {
    if (r.status != queue::RcptStatus::Pending) continue;
    std::string domain = domainOf(r.address);
    std::string key = destinationKey(cfg.routeFor(domain, env.mailFrom), domain);
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) keys.push_back(std::move(key));
  }
  return keys;
}

std::string QueueManager::saturatedDestination(const std::vector<std::string>& keys) const {
  for (const auto& key : keys) {
    if (key.empty()) return "";  // Maildir: no limit
    auto it = load_.find(key);
    if (it == load_.end() || it->second < snap_->config->maxPerDestination) return "";
  }
  return keys.empty() ? "" : keys.front();
}

void QueueManager::releaseLoad(const std::string& key) {
  if (key.empty()) return;
  auto it = load_.find(key);
  if (it == load_.end()) return;
  unsigned left = --it->second;
  if (left == 0) load_.erase(it);
  auto b = blocked_.find(key);
  if (b == blocked_.end()) return;
  // Back on the schedule, at their due times, as many as the destination now has room for:
  // the next tick takes them up (or sets them aside again if others took the room first).
  // All of them once nothing is under way for it: then no later release would come.
  unsigned max = snap_->config->maxPerDestination;
  size_t room = left == 0 ? b->second.size() : max > left ? max - left : 0;
  while (room > 0 && !b->second.empty()) {
    auto [id, due] = std::move(b->second.front());
    b->second.pop_front();
    auto e = entries_.find(id);
    // Deleted, held, or put back already (by flush or release) meanwhile: nothing to do.
    if (e == entries_.end() || e->second.busy || e->second.env.area != queue::Area::Active || sched_.contains(id))
      continue;
    sched_.add(id, due);
    --room;
  }
  if (b->second.empty()) blocked_.erase(b);
  armTimer();
}

void QueueManager::deliverGroup(std::shared_ptr<Attempt> attempt, const policy::Route* route, const std::string& domain,
                                std::vector<size_t> rcpts, std::string loadKey, bool batvTag) {
  if (!route || route->to.empty()) route = &mxRoute();
  if (route->to.front().kind == policy::RouteTarget::Kind::Maildir) {
    deliverMaildir(attempt, route->to.front().dir, std::move(rcpts));
  } else {
    deliverSmtp(attempt, *route, domain, std::move(rcpts), std::move(loadKey), batvTag);
  }
}

// [bounce_verification], outbound: a message from relay.networks or an authenticated client
// (as it was received: the envelope's client address and protocol, "...A" per RFC 3848)
// whose envelope sender is in its domains, not null and not tagged already. Whether a
// recipient's transaction carries the tag is route()'s decision (outside relay.domains only).
bool QueueManager::batvTags(const queue::Envelope& env) const {
  const auto& cfg = *snap_->config;
  if (!snap_->batvKeys || env.mailFrom.empty() || env.isBounce || policy::batv::looksTagged(env.mailFrom)) return false;
  if (!cfg.isBatvDomain(domainOf(env.mailFrom))) return false;
  if (!env.protocol.empty() && env.protocol.back() == 'A') return true;
  auto ip = IpAddress::parse(env.clientIp);
  return ip && cfg.isRelayClient(*ip);
}

void QueueManager::deliverMaildir(std::shared_ptr<Attempt> attempt, const std::string& dir,
                                  std::vector<size_t> rcpts) {
  auto results = std::make_shared<std::vector<std::string>>(rcpts.size());
  std::vector<std::string> addresses;
  for (size_t i : rcpts) addresses.push_back(attempt->env.rcpts[i].address);
  std::string from = attempt->env.mailFrom;
  std::string prefix = attempt->prefix;
  auto data = attempt->data;
  auto alive = alive_;
  uv::queueWork(
      loop_,
      [results, addresses, dir, from, prefix, data] {
        for (size_t k = 0; k < addresses.size(); ++k)
          (*results)[k] = writeMaildir(dir, addresses[k], from, prefix, data->bytes());
      },
      [this, alive, attempt, rcpts, results, dir] {
        if (!*alive) return;
        for (size_t k = 0; k < rcpts.size(); ++k) {
          const auto& err = (*results)[k];
          RcptOutcome o;  // (GCC 12 warns about designated initializers that leave fields out)
          o.relay = "maildir:" + dir;
          if (err.empty()) {
            o.kind = RcptOutcome::Kind::Delivered;
            o.reply = "250 2.0.0 delivered to maildir";
            o.local = true;
          } else {
            o.reply = "451 4.3.0 maildir: " + err;
          }
          attempt->outcomes[rcpts[k]] = std::move(o);
        }
        groupDone(attempt);
      });
}

namespace {

// Why `ip` is not tried: `[queue] ip_versions` leaves its family out (Postfix skips such an
// address as inet_protocols does; the admin can change that, so the mail waits).
std::string ipVersionLeftOut(const IpAddress& ip) {
  return std::string("host ") + ip.literal() + " is " + (ip.isV4() ? "IPv4" : "IPv6") +
         ", which queue.ip_versions leaves out";
}

dns::Families familiesOf(const policy::Config& c) { return {c.useIpv4, c.useIpv6}; }

// The hops in the order to try, at most `limit` (see address_order.h).
std::vector<Hop> orderHops(std::vector<Hop> hops, const policy::Config& c, size_t limit, std::mt19937_64& rng) {
  std::vector<AddressCandidate> candidates;
  candidates.reserve(hops.size());
  for (const auto& h : hops) candidates.push_back({h.ip, h.group});
  std::vector<Hop> out;
  for (size_t i : orderAddresses(candidates, c.addressPreference, familiesOf(c), limit, rng))
    out.push_back(std::move(hops[i]));
  return out;
}

// The addresses one delivery attempt to a domain's MX hosts tries at most (Postfix's
// smtp_mx_address_limit, 5 there): a domain may list 100 MX hosts of 50 addresses each, and
// each unreachable one costs a connect timeout; the next attempt starts again from the best.
// When the addresses are of both families, the two share the slots (address_order.h).
constexpr size_t kMaxMxAddresses = 10;

// Resolves each (host, port) to addresses, kept in the targets' order, each hop in its
// target's group (`groups[i]`): IP literals as they are, names by AAAA and A (only the
// families in `families`), all names at once. One after another, a list of MX hosts whose
// lookups time out cost a dns.timeout each (100 hosts: 100 timeouts) while the attempt held
// its delivery slot; at once, they cost one. An IP literal of a family left out is no hop.
// `done(hops, tempfail, error)`: tempfail when some lookup failed temporarily and nothing
// was found; `error` is the first target's failure, in order.
void resolveHops(dns::Resolver* resolver, std::vector<std::pair<std::string, uint16_t>> targets,
                 std::vector<uint32_t> groups, dns::Families families,
                 std::function<void(std::vector<Hop>, bool tempfail, std::string error)> done) {
  struct Found {
    std::vector<Hop> hops;
    dns::Status status = dns::Status::Ok;
    std::string error;  // why an IP literal is no hop
  };
  struct State {
    std::vector<std::pair<std::string, uint16_t>> targets;
    std::vector<Found> found;
    size_t waiting = 0;
    std::function<void(std::vector<Hop>, bool, std::string)> done;

    void finish() {
      std::vector<Hop> hops;
      bool tempfail = false;
      std::string error;
      for (size_t i = 0; i < targets.size(); ++i) {
        const auto& host = targets[i].first;
        for (auto& h : found[i].hops) hops.push_back(std::move(h));
        if (!found[i].error.empty() && error.empty()) error = found[i].error;
        if (found[i].status == dns::Status::TempFail) {
          tempfail = true;
          if (error.empty()) error = "DNS lookup of " + host + " failed temporarily";
        } else if (found[i].status != dns::Status::Ok && error.empty()) {
          error = "host " + host + " not found";
        }
      }
      const bool nothing = tempfail && hops.empty();  // before hops is moved from
      auto d = std::move(done);
      d(std::move(hops), nothing, error);
    }
  };
  auto st = std::make_shared<State>();
  st->targets = std::move(targets);
  st->found.resize(st->targets.size());
  st->done = std::move(done);
  st->waiting = st->targets.size() + 1;  // +1: none finishes before every lookup started
  for (size_t i = 0; i < st->targets.size(); ++i) {
    const auto& [host, port] = st->targets[i];
    const uint32_t group = i < groups.size() ? groups[i] : 0;
    if (auto ip = IpAddress::parse(host)) {
      if (families.allows(*ip))
        st->found[i].hops.push_back({*ip, port, "", group, false, nullptr, "", false, ""});
      else
        st->found[i].error = ipVersionLeftOut(*ip);
      --st->waiting;
      continue;
    }
    dns::resolveHostSecure(
        *resolver, host,
        [st, i, group](dns::Status status, std::vector<IpAddress> ips, bool secure, std::string canonical) {
          const auto& [name, p] = st->targets[i];
          st->found[i].status = status;
          if (status == dns::Status::Ok)
            for (const auto& ip : ips)
              st->found[i].hops.push_back({ip, p, name, group, secure, nullptr, canonical, false, ""});
          if (--st->waiting == 0) st->finish();
        },
        families);
  }
  if (--st->waiting == 0) st->finish();
}

// tls = "dane" (RFC 7672 §2.2): sets each hop's Hop::dane from its host's TLSA RRset at
// _PORT._tcp.HOST, looked up (all hosts at once) only for hosts named through an
// authenticated MX RRset (`mxSecure`; true for a route's own hosts) with authenticated
// addresses: otherwise DANE does not apply and the host gets "may". For an alias (§2.2.2),
// the records at the expanded name (Hop::canonical) are asked for first, and those at HOST
// only when there are none there: the addresses' AD bit covers the CNAME chain, so the
// chain is as secure as they are. A hop given by address has no name to look TLSA up at:
// "may" too. `done` runs once, possibly before this returns.
void applyDane(dns::Resolver* resolver, std::vector<Hop> hops, bool mxSecure,
               std::function<void(std::vector<Hop>)> done) {
  struct State {
    std::vector<Hop> hops;
    std::map<std::pair<std::string, uint16_t>, std::shared_ptr<const dns::DaneHost>> hosts;
    size_t waiting = 1;  // +1: none finishes before every lookup started
    std::function<void(std::vector<Hop>)> done;
    void finishOne() {
      if (--waiting > 0) return;
      for (auto& h : hops)
        if (auto it = hosts.find({h.name, h.port}); it != hosts.end()) h.dane = it->second;
      auto d = std::move(done);
      d(std::move(hops));
    }
  };
  auto st = std::make_shared<State>();
  st->hops = std::move(hops);
  st->done = std::move(done);
  struct Lookup {
    std::string name, expanded;  // `expanded`: "" unless a secure alias, then asked first
    uint16_t port;
  };
  std::vector<Lookup> lookups;
  for (const auto& h : st->hops) {
    std::pair<std::string, uint16_t> host{h.name, h.port};
    if (h.name.empty() || st->hosts.count(host)) continue;
    if (!mxSecure || !h.secure) {
      st->hosts[host] =
          std::make_shared<const dns::DaneHost>(dns::decideDane(h.name, h.port, mxSecure, h.secure, nullptr));
      continue;
    }
    st->hosts[host] = nullptr;  // filled by the lookup
    auto bases = dns::tlsaBaseDomains(h.name, h.canonical, h.secure);
    lookups.push_back({h.name, bases.size() > 1 ? bases.front() : "", h.port});
  }
  st->waiting += lookups.size();
  for (const auto& l : lookups) {
    if (l.expanded.empty()) {
      resolver->query(dns::tlsaName(l.name, l.port), dns::RrType::TLSA, [st, l](const dns::Answer& a) {
        st->hosts[{l.name, l.port}] =
            std::make_shared<const dns::DaneHost>(dns::decideDane(l.name, l.port, true, true, &a));
        st->finishOne();
      });
      continue;
    }
    resolver->query(dns::tlsaName(l.expanded, l.port), dns::RrType::TLSA, [st, l, resolver](const dns::Answer& a) {
      if (!dns::tlsaTryHostName(a)) {
        st->hosts[{l.name, l.port}] =
            std::make_shared<const dns::DaneHost>(dns::decideDaneAlias(l.name, l.expanded, l.port, a, nullptr));
        return st->finishOne();
      }
      resolver->query(dns::tlsaName(l.name, l.port), dns::RrType::TLSA,
                      [st, l, atExpanded = a](const dns::Answer& atHost) {
                        st->hosts[{l.name, l.port}] = std::make_shared<const dns::DaneHost>(
                            dns::decideDaneAlias(l.name, l.expanded, l.port, atExpanded, &atHost));
                        st->finishOne();
                      });
    });
  }
  st->finishOne();
}

// The DANE part of a destination key: connections are pooled only between jobs that see the
// same DANE requirements for the same hosts, so a connection authenticated by one host's
// TLSA records never carries mail that another set of records (or "may") was decided for.
std::string daneKey(const std::vector<Hop>& hops) {
  std::string k = ",dane=";
  for (const auto& h : hops) {
    if (!h.dane) continue;
    k += h.name + ":" + std::to_string(h.port) + ":" + std::to_string(static_cast<int>(h.dane->level));
    for (const auto& n : h.dane->names) k += ":" + n;  // the base (SNI) first, then DANE-TA's other names
    for (const auto& r : h.dane->records) {
      k += ":" + std::to_string(r.usage) + "." + std::to_string(r.selector) + "." + std::to_string(r.mtype) + ".";
      for (unsigned char c : r.data) appendHex(k, c);
    }
    k += ";";
  }
  return k;
}

// RFC 5321 §5.1: the best MX host of `domain` is this gateway, so there is no one to give the
// mail to. Postfix returns it ("mail for DOMAIN loops back to myself", 5.4.6): the DNS says
// the mail ends here but no route takes it, a configuration error that retries do not mend
// and that a sender should hear of at once, rather than after days in the queue (or after
// 100 hops through itself).
std::string loopsBack(const std::string& domain) {
  return "554 5.4.6 mail for " + domain + " loops back to myself";
}

// The message went to at least one recipient of the transaction.
bool dataAccepted(const client::TransactionResult& r) {
  if (r.lmtp)  // RFC 2033 §4.2: the message was taken for some recipient
    return std::any_of(r.rcptData.begin(), r.rcptData.end(),
                       [](const client::Reply& x) { return x.code >= 200 && x.code < 300; });
  return r.error.empty() && r.bodyAnswered && r.data.code >= 200 && r.data.code < 300 &&
         std::any_of(r.rcpts.begin(), r.rcpts.end(),
                     [](const client::Reply& x) { return x.code >= 200 && x.code < 300; });
}

}  // namespace

namespace {
// The TLS part of a destination key: connections are pooled only between jobs that want
// the same TLS, and the same trust anchors.
std::string tlsKey(client::TlsMode mode, const policy::Route& route) {
  std::string k = "tls=" + std::to_string(static_cast<int>(mode));
  if (route.tls == policy::TlsPolicy::Verify) k += ",verify=" + route.caFile;
  if (route.tls == policy::TlsPolicy::Dane) k += ",dane";  // deliverSmtp adds each host's TLSA
  if (route.mtaSts) k += ",sts";                           // submitSts adds the policy's mode and id
  if (!route.chunking) k += ",nochunking";
  if (!route.tlsCert.empty()) k += ",cert=" + route.tlsCert;  // deliverSmtp adds its fingerprint
  return k;
}

// The AUTH part of a destination key: connections are pooled only between jobs of the
// same credentials file; deliverSmtp adds the name itself, so a connection authenticated
// as one user never carries mail meant to go as another (after a reload that changed it).
std::string authKey(const policy::Route& route) { return route.authFile.empty() ? "" : ",auth=" + route.authFile; }

const char* tlsPolicyName(policy::TlsPolicy p) {
  switch (p) {
    case policy::TlsPolicy::None: return "none";
    case policy::TlsPolicy::May: return "may";
    case policy::TlsPolicy::Require: return "require";
    case policy::TlsPolicy::Verify: return "verify";
    case policy::TlsPolicy::Dane: return "dane";
  }
  return "may";
}
}  // namespace

namespace {
// tls = "dane" starts from "may": each host's Hop::dane raises it where RFC 7672 says so.
client::TlsMode clientTlsMode(const policy::Route& route) {
  return route.tls == policy::TlsPolicy::None                                                ? client::TlsMode::None
         : route.tls == policy::TlsPolicy::Require || route.tls == policy::TlsPolicy::Verify ? client::TlsMode::Require
                                                                                             : client::TlsMode::May;
}
}  // namespace

std::string QueueManager::destinationKey(const policy::Route* route, const std::string& domain) {
  if (!route || route->to.empty()) route = &mxRoute();
  const auto& first = route->to.front();
  if (first.kind == policy::RouteTarget::Kind::Maildir) return "";
  if (first.kind == policy::RouteTarget::Kind::Mx)
    return "mx:" + domain + "," + tlsKey(clientTlsMode(*route), *route) + authKey(*route) + route->sourceKey();
  std::string key;
  for (const auto& t : route->to)
    if (t.isHost()) key += t.str() + ",";
  return key + tlsKey(clientTlsMode(*route), *route) + authKey(*route) + route->sourceKey();
}

void QueueManager::deliverSmtp(std::shared_ptr<Attempt> attempt, const policy::Route& route, const std::string& domain,
                               std::vector<size_t> rcpts, std::string loadKey, bool batvTag) {
  auto job = std::make_shared<Job>();
  job->attempt = attempt;
  job->rcpts = rcpts;
  // Tagged at each attempt: a retry days later carries a tag that is still good for max_age.
  // Made with the current key (key_file) only; previous_key_files only verify.
  if (batvTag && snap_->batvKeys)
    job->batvFrom =
        policy::batv::tag(attempt->env.mailFrom, snap_->batvKeys->current, policy::batv::dayNumber(nowMs() / 1000),
                          snap_->config->batvMaxAgeDays, snap_->batvKeys->number);
  job->tls = clientTlsMode(route);
  if (route.tls == policy::TlsPolicy::Verify) {
    // Built by the snapshot for every verify route; a route from an older snapshot that
    // is not there fails closed (deferred), it never goes unverified.
    auto it = snap_->verifyingClientTls.find(route.caFile);
    if (it != snap_->verifyingClientTls.end()) job->tlsCtx = it->second;
  }
  bool verifyMissing = route.tls == policy::TlsPolicy::Verify && !job->tlsCtx;
  job->dane = route.tls == policy::TlsPolicy::Dane;
  job->chunking = route.chunking;
  job->sourceIpv4 = route.sourceIpv4;
  job->sourceIpv6 = route.sourceIpv6;
  job->heloName = route.heloName;
  std::string authPart = authKey(route);
  bool authMissing = false;
  if (!route.authFile.empty()) {
    // Loaded by the snapshot for every route that names a file; a route without its
    // credentials fails closed (deferred), it never goes unauthenticated.
    auto it = snap_->routeCredentials.find(route.authFile);
    if (it != snap_->routeCredentials.end()) {
      job->auth = std::make_shared<const client::Credentials>(it->second->username(), it->second->password());
      authPart += ",user=" + it->second->username();
    } else {
      authMissing = true;
    }
  }
  // Loaded by the snapshot for every route that names one; a route without its certificate
  // fails closed (deferred), it never connects without it. Pooled by the certificate itself,
  // so a connection made before a reload that renewed it never carries later mail.
  bool certMissing = false;
  job->clientCert = snap_->clientCertificate(route, certMissing);
  if (job->clientCert) authPart += ",certfp=" + job->clientCert->fingerprint();
  job->tlsName = tlsPolicyName(route.tls);
  const auto& env = attempt->env;
  job->requireTls = env.requireTls && !env.mailFrom.empty();
  // RFC 8689 §4.2.2: "TLS-Required: No" (without REQUIRETLS, which wins, §4.2.1) turns off
  // the recipient domain's own TLS policies, MTA-STS and DANE: the message goes as with
  // tls = "may". A route's tls = "require" or "verify" is the admin's policy and stays.
  const bool tlsPoliciesOff = !env.requireTls && (route.mtaSts || route.tls == policy::TlsPolicy::Dane) &&
                              attempt->data && queue::tlsRequiredNo(attempt->data->bytes());
  if (tlsPoliciesOff) job->dane = false;
  // Pooled apart: a connection set up for REQUIRETLS (or without the domain's policies)
  // carries only mail that asked for the same.
  const std::string requireKey =
      std::string(job->requireTls ? ",requiretls" : "") + (tlsPoliciesOff ? ",tls-required-no" : "");
  auto alive = alive_;
  job->done = [this, alive, attempt, rcpts, loadKey, batv = !job->batvFrom.empty()](
                  const client::TransactionResult& r, const std::string& relay, const std::string& tls,
                  const std::string& remoteMta) {
    if (!*alive) return;
    releaseLoad(loadKey);
    for (size_t k = 0; k < rcpts.size(); ++k) {
      RcptOutcome o;
      o.batv = batv;
      o.relay = relay;
      o.tls = tls;
      o.auth = r.authUser;
      o.source = r.source;
      o.clientCert = r.clientCertificate;
      // Only a reply the server sent is its word (RFC 3464 §2.3.5-6); r.error is our text.
      // LMTP (RFC 2033 §4.2): the reply after the dot for this very recipient, when one came,
      // is its outcome, also when the connection ended before the later recipients' replies.
      const client::Reply* lmtpReply =
          r.lmtp && k < r.rcptData.size() && r.rcptData[k].code != 0 ? &r.rcptData[k] : nullptr;
      if ((r.error.empty() || lmtpReply) && !r.local) o.remoteMta = remoteMta;
      auto classify = [&o](int code, const std::string& text) {
        o.reply = text;
        o.kind = code >= 200 && code < 300   ? RcptOutcome::Kind::Delivered
                 : code >= 500 && code < 600 ? RcptOutcome::Kind::Failed
                                             : RcptOutcome::Kind::Deferred;
      };
      // A success can only come from the reply to the message's final dot (RFC 5321 §4.3.2):
      // a 2xx anywhere else (the client never reports one, but whatever a later path does)
      // leaves the recipient deferred, never delivered and removed unsent.
      auto classifyData = [&o, &r, &classify] {
        bool success = r.data.code >= 200 && r.data.code < 300;
        if (success && !r.bodyAnswered) {
          o.kind = RcptOutcome::Kind::Deferred;
          o.reply = "451 4.5.0 the message was not confirmed: " + replyText(r.data);
          return;
        }
        classify(r.data.code, replyText(r.data));
        o.notifyPassedOn = success && r.dsnOffered;
      };
      if (lmtpReply && r.mail.code >= 200 && r.mail.code < 300 && k < r.rcpts.size() && r.rcpts[k].code >= 200 &&
          r.rcpts[k].code < 300) {
        classify(lmtpReply->code, replyText(*lmtpReply));
        o.notifyPassedOn = lmtpReply->code >= 200 && lmtpReply->code < 300 && r.dsnOffered;
      } else if (r.lmtp && r.bodyAnswered && k < r.rcpts.size() && r.rcpts[k].code >= 200 && r.rcpts[k].code < 300) {
        // Accepted at RCPT, the message sent, and no reply of its own: never delivered, never
        // bounced; it goes again.
        o.kind = RcptOutcome::Kind::Deferred;
        o.reply = !r.error.empty() ? "451 4.4.2 " + oneLine(r.error) + " (no LMTP reply for this recipient)"
                                   : "451 4.4.2 no LMTP reply for this recipient";
      } else if (!r.error.empty()) {
        o.kind = RcptOutcome::Kind::Deferred;
        o.reply = r.error.rfind("5", 0) == 0 || r.error.rfind("4", 0) == 0 ? oneLine(r.error) : "451 4.4.1 " + oneLine(r.error);
      } else if (r.mail.code < 200 || r.mail.code >= 300) {
        classify(r.mail.code, replyText(r.mail));
      } else if (k < r.rcpts.size() && (r.rcpts[k].code < 200 || r.rcpts[k].code >= 300)) {
        int code = r.rcpts[k].code;
        classify(code, replyText(r.rcpts[k]));
        // RFC 5321 §4.5.3.1.10: 552 to a RCPT means too many recipients: a temporary failure.
        if (code == 552) o.kind = RcptOutcome::Kind::Deferred;
        if ((code == 452 || code == 552) && dataAccepted(r)) attempt->again.insert(rcpts[k]);
      } else {
        classifyData();
      }
      attempt->outcomes[rcpts[k]] = o;
    }
    groupDone(attempt);
  };
  auto failAll = [job](const std::string& reply) {
    client::TransactionResult r;
    r.error = reply;
    job->done(r, job->destination, "", "");  // no server answered: no Remote-MTA
  };
  auto permFailAll = [this, alive, attempt, rcpts, loadKey](const std::string& reply) {
    if (!*alive) return;
    releaseLoad(loadKey);
    for (size_t i : rcpts) attempt->outcomes[i] = {RcptOutcome::Kind::Failed, reply, "", "", ""};
    groupDone(attempt);
  };

  if (verifyMissing) return failAll("451 4.7.5 no verifying TLS context for this route (not sent)");
  if (authMissing) return failAll("451 4.7.0 no credentials loaded for this route's auth_file (not sent)");
  if (certMissing) return failAll("451 4.7.5 no client certificate loaded for this route's tls_cert (not sent)");
  // RFC 8689 §4.2.1: a route's own host is found securely (the config names it), but only
  // tls = "verify" or "dane" authenticate it; by MX, every host is checked as it is tried.
  if (job->requireTls &&
      (route.tls == policy::TlsPolicy::None ||
       (route.to.front().isHost() && route.tls != policy::TlsPolicy::Verify && route.tls != policy::TlsPolicy::Dane)))
    return permFailAll(std::string("550 5.7.30 REQUIRETLS support required: the route's tls = \"") +
                       tlsPolicyName(route.tls) + "\" does not authenticate the next hop (not sent)");
  std::string key;
  if (route.to.front().isHost()) {
    std::vector<std::pair<std::string, uint16_t>> targets;
    std::vector<uint32_t> groups;  // each target's own: tried in order, its addresses ordered
    std::set<uint32_t> lmtpGroups;
    std::vector<Hop> sockets;  // lmtp:unix: targets, in their groups: nothing to resolve
    uint32_t group = 0;
    for (const auto& t : route.to) {
      if (!t.isHost()) continue;
      key += t.str() + ",";
      job->destination += (job->destination.empty() ? "" : ",") + t.str();
      const bool lmtp = t.kind == policy::RouteTarget::Kind::Lmtp;
      if (lmtp && !t.socket.empty()) {
        Hop h;
        h.group = group++;
        h.lmtp = true;
        h.socket = t.socket;
        sockets.push_back(std::move(h));
        continue;
      }
      if (lmtp) lmtpGroups.insert(group);
      groups.push_back(group++);
      targets.emplace_back(t.host, t.port);
    }
    key += tlsKey(job->tls, route) + authPart + route.sourceKey() + requireKey;
    // A configured next hop whose name does not resolve is the admin's to fix (a typo in a
    // route, an internal zone down): the mail waits for that, it is not bounced.
    resolveHops(resolver_, std::move(targets), std::move(groups), familiesOf(*snap_->config),
                [this, alive, job, key, failAll, lmtpGroups = std::move(lmtpGroups), sockets = std::move(sockets)](
                    std::vector<Hop> hops, bool, std::string error) mutable {
                  if (!*alive) return;
                  if (hops.empty() && sockets.empty())
                    return failAll("451 4.4.3 " + (error.empty() ? "no address for next hop" : error));
                  for (auto& h : hops) h.lmtp = lmtpGroups.count(h.group) > 0;
                  hops = orderHops(std::move(hops), *snap_->config, SIZE_MAX, rng_);
                  // Each Unix socket in its place among the targets (groups keep their order).
                  for (auto& sock : sockets) {
                    auto at =
                        std::find_if(hops.begin(), hops.end(), [&](const Hop& h) { return h.group > sock.group; });
                    hops.insert(at, std::move(sock));
                  }
                  job->hops = std::move(hops);
                  submitHops(key, job, true);
                });
    return;
  }
  // MX (RFC 5321 §5.1)
  key = "mx:" + domain + "," + tlsKey(job->tls, route) + authPart + route.sourceKey() + requireKey;
  job->destination = "mx:" + domain;
  // RFC 8461 applies to domain names; an address literal has no policy to look up.
  if (route.mtaSts && !tlsPoliciesOff && !domain.empty() && domain.front() != '[') job->stsDomain = domain;
  if (snap_->config->tlsrptEnabled && !domain.empty() && domain.front() != '[' && job->tls != client::TlsMode::None)
    job->reportDomain = domain;
  // An address literal (RFC 5321 §4.1.3: user@[192.0.2.1], user@[IPv6:2001:db8::1]) names the
  // host itself: there are no MX records to look up (a query for "[ipv6:...]" would only
  // say it does not exist). The server accepted no other literals (general ones) at RCPT.
  if (!domain.empty() && domain.front() == '[') {
    auto ip = parseAddressLiteral(domain);
    if (!ip) return permFailAll("550 5.1.2 address literal " + domain + " is not an IP address");
    if (MxSelf::fromConfig(*snap_->config).isSelfAddress(*ip)) return permFailAll(loopsBack(domain));
    // Not tried, and not bounced: enabling the family in the config delivers it.
    if (!familiesOf(*snap_->config).allows(*ip)) return failAll("451 4.4.4 " + ipVersionLeftOut(*ip));
    job->hops = {Hop{*ip, 25, "", 0, false, nullptr, "", false, ""}};
    return submit(key, job);
  }
  resolver_->query(domain, dns::RrType::MX, [this, alive, job, key, domain, failAll, permFailAll](const dns::Answer& a) {
    if (!*alive) return;
    std::vector<std::pair<std::string, uint16_t>> targets;
    std::vector<uint16_t> prefs;  // each target's MX preference (sorted, best first)
    std::string skipped;
    if (a.status == dns::Status::TempFail) return failAll("451 4.4.3 MX lookup for " + domain + " failed: " + a.error);
    if (a.status == dns::Status::NxDomain || a.status == dns::Status::Malformed)
      return permFailAll("550 5.1.2 Domain " + domain + " does not exist");
    if (a.status == dns::Status::Ok) {
      if (a.mx.size() == 1 && a.mx[0].exchange.empty())  // RFC 7505 null MX
        return permFailAll("556 5.1.10 Domain " + domain + " does not accept mail (null MX)");
      auto mxs = a.mx;
      dns::shuffleEqualPreference(mxs, rng_);
      for (const auto& mx : mxs) {
        if (mx.exchange.empty()) continue;
        // RFC 5321 §5.1: an MX names a host; an address literal there is not an address to use.
        if (IpAddress::parse(mx.exchange)) {
          skipped = "MX host " + mx.exchange + " is an address, not a host name";
          continue;
        }
        targets.emplace_back(mx.exchange, 25);
        prefs.push_back(mx.preference);
      }
      if (targets.empty()) return permFailAll("550 5.4.4 no usable MX host for " + domain + ": " + skipped);
    } else {
      targets.emplace_back(domain, 25);  // no MX: the implicit MX is the domain itself
      prefs.push_back(0);
    }
    // RFC 5321 §5.1: this gateway and every MX host at or below its preference are left out:
    // by name now, by address once the names are resolved.
    auto self = std::make_shared<const MxSelf>(MxSelf::fromConfig(*snap_->config));
    const uint16_t best = prefs.front();
    std::optional<uint16_t> selfPref;
    for (size_t i = 0; i < targets.size() && !selfPref; ++i)
      if (self->isSelfName(targets[i].first)) selfPref = prefs[i];
    if (selfPref) {
      if (*selfPref == best) return permFailAll(loopsBack(domain));
      size_t keep = static_cast<size_t>(std::find_if(prefs.begin(), prefs.end(), [&](uint16_t p) { return p >= *selfPref; }) - prefs.begin());
      targets.resize(keep);
      prefs.resize(keep);
    }
    std::map<std::string, uint16_t> prefOf;  // by host name; a name listed twice counts at its best
    for (size_t i = 0; i < targets.size(); ++i) prefOf.emplace(targets[i].first, prefs[i]);
    std::vector<uint32_t> groups(prefs.begin(), prefs.end());
    resolveHops(
        resolver_, std::move(targets), std::move(groups), familiesOf(*snap_->config),
        [this, alive, job, key, domain, failAll, permFailAll, self, best, selfPref, mxSecure = a.authenticated,
         prefOf = std::move(prefOf)](std::vector<Hop> hops, bool tempfail, std::string error) mutable {
          if (!*alive) return;
          auto pref = [&prefOf](const Hop& h) {
            auto it = prefOf.find(h.name);
            return it == prefOf.end() ? uint16_t{0} : it->second;
          };
          auto mine = std::find_if(hops.begin(), hops.end(), [&](const Hop& h) { return self->isSelfAddress(h.ip); });
          if (mine != hops.end()) {
            uint16_t cut = pref(*mine);
            selfPref = selfPref ? std::min(*selfPref, cut) : cut;
            std::erase_if(hops, [&](const Hop& h) { return pref(h) >= cut; });
          }
          if (selfPref && hops.empty()) {
            if (*selfPref == best) return permFailAll(loopsBack(domain));
            // A backup MX whose better hosts cannot be found now waits for them (Postfix's
            // "unable to find primary relay"): it must not deliver to itself, nor bounce.
            return failAll("451 4.4.4 unable to find primary relay for " + domain +
                           (error.empty() ? "" : ": " + error));
          }
          // RFC 5321 §5.1: MX hosts (or the implicit MX) without any address are an error to
          // report, not to retry until expiry; a temporary DNS failure is retried.
          if (hops.empty() && !tempfail)
            return permFailAll("550 5.4.4 no address for the mail hosts of " + domain + ": " +
                               (error.empty() ? "none found" : error));
          if (hops.empty()) return failAll("451 4.4.3 " + (error.empty() ? "no address for the MX hosts" : error));
          // After "myself" and the hosts after it are left out, as Postfix balances (a slot
          // for each family) only what is left.
          job->hops = orderHops(std::move(hops), *snap_->config, kMaxMxAddresses, rng_);
          submitHops(key, job, mxSecure);
        });
  });
}

// RFC 8461 §5.1, §10.2: policies are refreshed before they expire also for domains mail goes
// to seldom, so the policy is fresh when it is next needed (a delivery's own refresh only
// starts once it is under way). With the snapshot of the time: [mta_sts] and ip_versions
// as reloaded; without an mta_sts route there is no TLS context, and only the expired go.
void QueueManager::startStsSweep() {
  stsSweepEveryMs_ = snap_->config->mtaStsRefreshInterval.count();
  stsSweep_.startRepeat(static_cast<uint64_t>(stsSweepEveryMs_), [this] {
    if (draining_) return;
    stsCache_->sweep(snap_->mtaStsTls, static_cast<uint64_t>(snap_->config->mtaStsFetchTimeout.count()),
                     familiesOf(*snap_->config));
  });
}

void QueueManager::submitHops(const std::string& key, std::shared_ptr<Job> job, bool mxSecure) {
  job->nameSecure = mxSecure;
  auto alive = alive_;
  auto withDane = [this, alive, key, job, mxSecure] {
    if (!job->dane) return submitSts(key, job);
    auto hops = std::move(job->hops);
    applyDane(resolver_, std::move(hops), mxSecure, [this, alive, key, job](std::vector<Hop> hops) {
      if (!*alive) return;
      job->hops = std::move(hops);
      submitSts(key + daneKey(job->hops), job);
    });
  };
  if (job->stsDomain.empty()) return withDane();
  const auto timeout = static_cast<uint64_t>(snap_->config->mtaStsFetchTimeout.count());
  stsCache_->get(job->stsDomain, snap_->mtaStsTls, timeout, familiesOf(*snap_->config),
                 [this, alive, job, withDane](std::shared_ptr<const sts::Policy> p, bool stopped) {
                   if (!*alive) return;
                   // RFC 8460 §4.3.2: a fetch that failed with no policy to fall back on.
                   if (!stopped && !p && !stsCache_->answeringFailure().empty())
                     tlsrptRecord(*job, tlsrpt::Policy{tlsrpt::PolicyType::Sts, {}, {}},
                                  tlsrpt::classifyStsFetchError(stsCache_->answeringFailure()), "", "");
                   if (stopped) {
                     // drain() cut the fetch short: nothing was decided, so nothing is sent;
                     // the recipients wait for the next start.
                     client::TransactionResult r;
                     r.error = "451 4.3.2 MTA-STS policy fetch for " + job->stsDomain + " cut short: Moat is stopping";
                     return job->done(r, job->destination, "", "");
                   }
                   if (p && p->mode != sts::Mode::None) job->sts = std::move(p);  // §5: "none" changes nothing
                   withDane();
                 });
}

namespace {
// RFC 8461 §2: a host whose TLSA records DANE acts on is DANE's; MTA-STS leaves it alone.
bool daneDecides(const Hop& h) { return h.dane && h.dane->level != dns::DaneLevel::May; }
}  // namespace

void QueueManager::submitSts(const std::string& key, std::shared_ptr<Job> job) {
  if (!job->sts) return submit(key, std::move(job));
  const auto& p = *job->sts;
  std::set<std::string> unnamed;
  for (const auto& h : job->hops)
    if (!daneDecides(h) && !p.allows(h.name)) unnamed.insert(h.name);
  for (const auto& name : unnamed)
    log::warn("mta_sts")
        .add("domain", job->stsDomain)
        .add("host", name)
        .add("mode", sts::modeName(p.mode))
        .add("reason", "MX host not named by the policy's mx");
  if (p.mode == sts::Mode::Enforce) {
    // §4.1: with enforce, an MX host the policy does not name is not a host to deliver to.
    std::erase_if(job->hops, [&](const Hop& h) { return !daneDecides(h) && unnamed.count(h.name); });
    if (job->hops.empty()) {
      client::TransactionResult r;
      r.error = "451 4.7.5 MTA-STS: no MX host of " + job->stsDomain + " is named by its policy (id " + p.id + ")";
      return job->done(r, job->destination, "", "");
    }
  }
  // Pooled only with jobs under the same policy: a connection made under "testing" never
  // carries mail an "enforce" policy was decided for.
  submit(key + ",sts=" + std::string(sts::modeName(p.mode)) + ":" + p.id, std::move(job));
}

void QueueManager::submit(const std::string& key, std::shared_ptr<Job> job) {
  if (std::string reply = unreachableReply(key); !reply.empty()) {
    client::TransactionResult r;
    r.error = reply;
    return job->done(r, job->destination, "", "");  // no server answered: no Remote-MTA
  }
  auto& d = destinations_[key];
  if (!d) {
    d = std::make_unique<Destination>();
    d->key = key;
    d->name = job->destination;
    d->tlsName = job->tlsName;
  }
  d->waiting.push_back(std::move(job));
  pump(*d);
}

void QueueManager::pump(Destination& d) {
  const auto& cfg = *snap_->config;
  const std::string key = d.key;
  log::debug("destination")
      .add("destination", d.name)
      .add("tls", d.tlsName)
      .add("waiting", static_cast<uint64_t>(d.waiting.size()))
      .add("active", d.active)
      .add("idle", static_cast<uint64_t>(d.idle.size()));
  while (!d.waiting.empty()) {
    if (!d.idle.empty()) {
      auto c = d.idle.back();
      d.idle.pop_back();
      if (!c.client->usable()) {
        --d.active;
        continue;
      }
      auto job = d.waiting.front();
      d.waiting.pop_front();
      runJob(d, c, job);
      continue;
    }
    if (d.active >= cfg.maxPerDestination) return;
    openConnection(d);
    // openConnection can end an attempt at once, when no host is left to try (tls = "dane"
    // skips a host whose TLSA lookup failed without connecting): that job's end may remove
    // this destination, and `d` with it.
    if (auto it = destinations_.find(key); it == destinations_.end() || it->second.get() != &d) return;
  }
}

void QueueManager::openConnection(Destination& d) {
  auto job = d.waiting.front();
  d.waiting.pop_front();
  ++d.active;
  const auto& cfg = *snap_->config;
  client::Options opts;
  opts.heloName = job->heloName.empty() ? cfg.hostname : job->heloName;
  opts.sourceIpv4 = job->sourceIpv4;
  opts.sourceIpv6 = job->sourceIpv6;
  opts.tls = job->tls;
  opts.tlsCtx = job->tls == client::TlsMode::None ? nullptr : job->tlsCtx ? job->tlsCtx : snap_->clientTls;
  opts.auth = job->auth;
  opts.chunking = job->chunking;
  opts.connectTimeoutMs = static_cast<uint64_t>(cfg.connectTimeout.count());
  opts.greetingTimeoutMs = opts.commandTimeoutMs = static_cast<uint64_t>(cfg.replyTimeout.count());
  opts.dataBlockTimeoutMs = static_cast<uint64_t>(cfg.deliveryDataTimeout.count());

  struct Try {
    size_t next = 0;
    std::string lastError;
    // The enhanced status of the last failure: 4.7.0 when the next hop refused our SMTP
    // AUTH (or offers none we speak), 4.7.5 when it failed what tls = "dane" required, so the
    // defer reason tells them from a network failure.
    std::string lastStatus = "4.4.1";
    std::string lastSource;  // the source address the last connect was bound to, "" = none
    // Hops left out or given up on for what REQUIRETLS asks (RFC 8689 §4.2.1); when that is
    // every hop, the message fails for good rather than waiting.
    size_t requireTlsFailures = 0;
  };
  auto tr = std::make_shared<Try>();
  auto alive = alive_;
  std::string key = d.key;
  // Tries the hops in order. The closure holds itself only weakly; each pending connect
  // holds it strongly, so it lives exactly as long as an attempt is under way.
  auto attemptHop = std::make_shared<std::function<void()>>();
  std::weak_ptr<std::function<void()>> weakHop = attemptHop;
  *attemptHop = [this, alive, tr, job, opts, key, weakHop]() {
    if (!*alive) return;
    auto self = weakHop.lock();
    auto it = destinations_.find(key);
    if (!self || it == destinations_.end()) return;
    if (tr->next >= job->hops.size()) {
      --it->second->active;
      client::TransactionResult r;
      const bool requireTlsFailed = job->requireTls && !job->hops.empty() && tr->requireTlsFailures == job->hops.size();
      std::string status = tr->lastStatus;
      if (requireTlsFailed) {
        // RFC 8689 §4.2.1: no host can take the message as its sender asked: it is returned.
        r.local = true;
        r.mail = {550, "550 " + status + " REQUIRETLS support required: " + tr->lastError};
      } else {
        if (status.front() == '5') status.front() = '4';  // some host failed otherwise: it waits
        r.error = "451 " + status + " " + (tr->lastError.empty() ? "connection failed" : tr->lastError);
      }
      r.source = tr->lastSource;
      std::string relay = job->hops.empty()       ? ""
                          : job->hops.back().lmtp ? hopRelay(job->hops.back())
                                                  : job->hops.back().ip.str();
      job->done(r, relay, "", "");  // no server answered: no Remote-MTA
      if (auto again = destinations_.find(key); again != destinations_.end()) {
        // The last way in failed: the jobs waiting for this next hop are deferred now.
        if (again->second->active == 0 && !requireTlsFailed) markUnreachable(*again->second, r.error);
        pump(*again->second);
      }
      removeIfUnused(key);
      return;
    }
    const Hop hop = job->hops[tr->next++];
    const auto& source = hop.ip.isV4() ? job->sourceIpv4 : job->sourceIpv6;
    tr->lastSource = source && hop.socket.empty() ? source->str() : "";
    client::Options o = opts;
    // The name the certificate must carry with tls = "verify" (and SNI): the route's host or
    // the MX name; an address when the route names one (checked against IP SANs, no SNI).
    o.sni = !hop.socket.empty() ? "" : hop.name.empty() ? hop.ip.str() : hop.name;
    o.lmtp = hop.lmtp;
    std::string relay = hopRelay(hop);
    // tls = "dane" (RFC 7672 §2.2): TLS the host's TLSA records authenticate, or TLS at least
    // (records all unusable); a host whose TLSA lookup failed is not tried (§2.2.1).
    const dns::DaneLevel daneLevel = hop.dane ? hop.dane->level : dns::DaneLevel::May;
    if (daneLevel == dns::DaneLevel::Dane) {
      tls::DanePeer peer{hop.dane->base, {}, {}};
      for (const auto& r : hop.dane->records) peer.records.push_back({r.usage, r.selector, r.mtype, r.data});
      for (const auto& n : hop.dane->names)
        if (n != hop.dane->base) peer.otherNames.push_back(n);
      o.tls = client::TlsMode::Require;
      o.tlsCtx = tls::TlsContext::withDane(snap_->clientTls, std::move(peer));
      o.sni = hop.dane->base;
    } else if (daneLevel == dns::DaneLevel::Encrypt) {
      o.tls = client::TlsMode::Require;
      o.tlsCtx = snap_->clientTls;
    }
    // What TLS reporting (RFC 8460 §4.3) says this session was held to (only worked out for
    // a job that reports: its policy lines are copies made per connection).
    tlsrpt::Policy reportPolicy;
    const bool reports = !job->reportDomain.empty();
    if (reports && daneLevel != dns::DaneLevel::May) {
      reportPolicy.type = tlsrpt::PolicyType::Tlsa;
      if (daneLevel == dns::DaneLevel::Dane)
        for (const auto& r : hop.dane->records)
          reportPolicy.policyString.push_back(tlsrpt::tlsaPresentation(r.usage, r.selector, r.mtype, r.data));
    } else if (reports && job->sts && !hop.name.empty()) {
      reportPolicy.type = tlsrpt::PolicyType::Sts;
      reportPolicy.policyString = tlsrpt::stsPolicyLines(sts::modeName(job->sts->mode), job->sts->mx, job->sts->maxAge);
      reportPolicy.mxHost = job->sts->mx;
    }
    // §4.4's sending-mta-ip and receiving-mx-helo, as far as the connection gets.
    auto notes = reports ? std::make_shared<client::PeerNotes>() : nullptr;
    o.notes = notes;
    if (daneLevel == dns::DaneLevel::Defer)  // §4.3.2: no valid records from the resolver
      tlsrptRecord(*job, reportPolicy, "dnssec-invalid", hop.name, hop.ip.str());
    if (daneLevel == dns::DaneLevel::Defer || (daneLevel == dns::DaneLevel::Dane && !o.tlsCtx)) {
      tr->lastError = relay + ": DANE: " +
                      (o.tlsCtx || daneLevel == dns::DaneLevel::Defer ? hop.dane->reason : "no TLS client context");
      tr->lastStatus = "4.7.5";
      return (*self)();
    }
    const bool daneRequired = daneLevel == dns::DaneLevel::Dane || daneLevel == dns::DaneLevel::Encrypt;
    // MTA-STS (RFC 8461 §4.2, §5): enforce requires TLS with a certificate that verifies and
    // names the MX host, never plain text; testing checks the same and only reports it.
    const sts::Policy* stsPolicy =
        job->sts && daneLevel == dns::DaneLevel::May && !hop.name.empty() ? job->sts.get() : nullptr;
    const bool stsEnforce = stsPolicy && stsPolicy->mode == sts::Mode::Enforce;
    if (stsEnforce) {
      o.tls = client::TlsMode::Require;
      o.tlsCtx = snap_->mtaStsTls;
      o.sni = hop.name;
      if (!o.tlsCtx) {
        tr->lastError = relay + ": MTA-STS: no verifying TLS context";
        tr->lastStatus = "4.7.5";
        return (*self)();
      }
    } else if (stsPolicy && snap_->mtaStsCheckTls && o.tls == client::TlsMode::May) {
      o.tlsCtx = snap_->mtaStsCheckTls;
      o.sni = hop.name;
    }
    // RFC 8689 §4.2.1 (REQUIRETLS): DANE and MTA-STS enforce authenticate as above, and
    // tls = "verify" with its context; otherwise a host whose name was found securely must
    // show a certificate that PKIX verifies for that name, and any other host is no way in.
    if (job->requireTls && daneLevel != dns::DaneLevel::Dane && !stsEnforce) {
      const bool pkix = !job->tlsCtx;  // tls = "verify" brings its own verifying context
      if (!job->nameSecure || (pkix && (hop.name.empty() || !snap_->requireTlsPkix))) {
        tr->lastError = relay + ": " +
                        (!job->nameSecure   ? std::string("the host was not found securely (no DNSSEC-signed MX, no "
                                                            "MTA-STS policy in enforce mode that names it)")
                         : hop.name.empty() ? "no host name to verify a certificate against"
                                            : "no verifying TLS context ([mta_sts] ca_file)");
        tr->lastStatus = "5.7.30";
        ++tr->requireTlsFailures;
        return (*self)();
      }
      if (pkix) {
        o.tls = client::TlsMode::Require;
        o.tlsCtx = snap_->requireTlsPkix;
        o.sni = hop.name;
      }
    }
    // [[route]] tls_cert: whichever context the hop got, its sessions present the route's
    // certificate when the server asks for one (mutual TLS).
    if (job->clientCert && o.tlsCtx) o.tlsCtx = tls::TlsContext::withClientCertificate(o.tlsCtx, job->clientCert);
    auto connected =
        [this, alive, tr, job, key, self, relay, hop, daneLevel, daneRequired, stsPolicy, stsEnforce, reportPolicy,
         notes](std::shared_ptr<client::SmtpClient> c, const std::string& error, const client::Reply& greeting) {
          if (!*alive) return;
          auto it2 = destinations_.find(key);
          if (it2 == destinations_.end()) return;
          const bool dane = daneLevel == dns::DaneLevel::Dane;
          if (!c) {
            // The client's AUTH failures begin with their status (smtp_client.h, connect()).
            bool authFailed = error.rfind("4.7.0 ", 0) == 0;
            // A failure before TLS was tried (a refused connection) is no TLS session to report.
            if (std::string type = authFailed ? "" : tlsrpt::classifyTlsError(error, dane); !type.empty())
              tlsrptRecord(*job, reportPolicy, type, hop.name, hop.ip.str(), notes.get());
            std::string why = error.empty() ? greeting.text : authFailed ? error.substr(6) : error;
            if (!error.empty() && greeting.code != 0) why += ": " + greeting.text;  // the server's own words
            // The client's TLS errors ("STARTTLS not offered ...", "TLS handshake failed: ...")
            // are what DANE required and did not get; a refused connection is not.
            const bool tlsFailed =
                !authFailed && (daneRequired || stsEnforce) && error.find("TLS") != std::string::npos;
            // The source address is gone from this host (net::connect): a local routing problem,
            // X.4.0 (RFC 3463), deferred like any network failure, never bounced.
            const bool bindFailed = error.rfind("cannot bind source address ", 0) == 0;
            tr->lastStatus = authFailed ? "4.7.0" : tlsFailed ? "4.7.5" : bindFailed ? "4.4.0" : "4.4.1";
            // RFC 8689 §4.2.1: no TLS session (or none with a certificate that verifies) for a
            // REQUIRETLS message: "5.7.10 Encryption needed", unless another host takes it.
            if (job->requireTls && !authFailed && error.find("TLS") != std::string::npos) {
              tr->lastStatus = "5.7.10";
              ++tr->requireTlsFailures;
            }
            const char* what = !tlsFailed ? ""
                               : stsEnforce
                                   ? "MTA-STS (enforce) requires TLS with a valid certificate for the MX host: "
                               : daneLevel == dns::DaneLevel::Dane ? "DANE (TLSA) authentication required: "
                                                                   : "TLS required by DNSSEC-signed TLSA records: ";
            if (stsPolicy && !stsEnforce && !authFailed && error.find("TLS") != std::string::npos)
              log::warn("mta_sts")
                  .add("domain", job->stsDomain)
                  .add("host", hop.name)
                  .add("mode", sts::modeName(stsPolicy->mode))
                  .add("reason", oneLine(error));
            tr->lastError = relay + ": " + what + oneLine(why);
            (*self)();
            return;
          }
          if (!c->tlsFallback().empty())  // tls = "may": the handshake failed, plain text instead
            log::warn("tls_fallback").add("relay", relay).add("error", c->tlsFallback());
          if (c->tlsActive() && stsPolicy && !stsEnforce && !c->tlsVerified())
            tlsrptRecord(*job, reportPolicy, "certificate-not-trusted", hop.name, hop.ip.str(), notes.get());
          else if (c->tlsActive())
            tlsrptRecord(*job, reportPolicy, "", hop.name, hop.ip.str(), notes.get());
          else if (!c->tlsFallback().empty())
            tlsrptRecord(
                *job, reportPolicy,
                [&] {
                  std::string type = tlsrpt::classifyTlsError(c->tlsFallback(), dane);
                  return type.empty() ? std::string("validation-failure") : type;
                }(),
                hop.name, hop.ip.str(), notes.get());
          else
            tlsrptRecord(*job, reportPolicy, "starttls-not-supported", hop.name, hop.ip.str(), notes.get());
          // MTA-STS testing (RFC 8461 §5): delivered as "may" would, and the failure reported.
          if (stsPolicy && !stsEnforce && !c->tlsVerified())
            log::warn("mta_sts")
                .add("domain", job->stsDomain)
                .add("host", hop.name)
                .add("mode", sts::modeName(stsPolicy->mode))
                .add("reason", !c->tlsActive() ? "no TLS (STARTTLS not offered or failed)"
                                               : "the certificate does not verify or does not name the MX host");
          if (job->requireTls) {
            // RFC 8689 §4.2.1 steps 4 and 5, after the EHLO that followed STARTTLS.
            const char* why = !c->tlsActive()                      ? "no TLS session"
                              : !c->tlsDane() && !c->tlsVerified() ? "the certificate was not verified"
                              : !c->supports("REQUIRETLS")         ? "the server does not offer REQUIRETLS"
                                                                   : nullptr;
            if (why) {
              sayQuit(c);
              tr->lastError = relay + ": " + why;
              tr->lastStatus = "5.7.30";
              ++tr->requireTlsFailures;
              return (*self)();
            }
          }
          // A Unix socket has no address: the DSN's Remote-MTA is the name the server gave.
          std::string remote = !hop.socket.empty() ? (c->peerName().empty() ? std::string("localhost") : c->peerName())
                               : hop.name.empty()  ? hop.ip.str()
                                                   : hop.name;
          runJob(*it2->second, Pooled{c, relay, remote}, job);
        };
    if (!hop.socket.empty()) return client::SmtpClient::connectUnix(loop_, hop.socket, o, std::move(connected));
    client::SmtpClient::connect(loop_, hop.ip, hop.port, o, std::move(connected));
  };
  (*attemptHop)();
}

void QueueManager::runJob(Destination& d, Pooled c, std::shared_ptr<Job> job) {
  log::debug("transaction").add("queue_id", job->attempt->id).add("relay", c.relay);
  client::Transaction tx;
  const auto& env = job->attempt->env;
  tx.mailFrom = job->batvFrom.empty() ? env.mailFrom : job->batvFrom;
  for (size_t i : job->rcpts) {
    tx.rcpts.push_back(env.rcpts[i].address);
    // RFC 3461 §5.2.1: passed on; §4.2: without an ORCPT, the address as received, so the
    // next hop's reports name the recipient the sender wrote.
    const auto& r = env.rcpts[i];
    tx.rcptDsn.push_back({r.notify, r.orcpt.empty() ? queue::defaultOrcpt(r.address) : r.orcpt});
  }
  tx.envid = env.envid;
  tx.ret = env.ret;
  tx.eightBit = env.eightBit;
  tx.smtputf8 = env.smtputf8;
  tx.requireTls = env.requireTls;  // a DSN (null sender) carries it where offered (RFC 8689 §5)
  tx.prefix = job->attempt->prefix;
  tx.body = job->attempt->data->bytes();
  tx.keepAlive = job->attempt->data;
  tx.size = tx.prefix.size() + tx.body.size();
  // RFC 6152 §3, for a next hop without 8BITMIME: about 6 ms per MB of CPU, so a message
  // over 256 KB is converted on the thread pool, never on the loop.
  tx.downgrade = offLoopConverter(loop_, alive_, [](std::string_view m) { return filters::mime::downgradeTo7Bit(m); });
  // One of Moat's own global DSNs (RFC 6533) that needs SMTPUTF8, for a next hop without it:
  // goes as a plain, 7-bit DSN instead of not at all (queue/dsn.h). A DSN to a UTF-8 sender
  // cannot: the client refuses its address first (553 5.6.7), and it is dropped as before.
  if (env.isBounce && env.smtputf8)
    tx.utf8Downgrade = offLoopConverter(loop_, alive_, [](std::string_view m) { return queue::downgradeGlobalDsn(m); });
  auto alive = alive_;
  std::string key = d.key;
  auto client = c.client;
  client->send(std::move(tx), [this, alive, key, c, job](client::TransactionResult r) {
    if (!*alive) return;
    // `conversion`: "plain_dsn" (a global DSN as a plain one, for a next hop without
    // SMTPUTF8), "7bit" (7-bit MIME, for one without 8BITMIME); one line for each.
    if (r.utf8Downgraded)
      log::info("downgraded").add("queue_id", job->attempt->id).add("relay", c.relay).add("conversion", "plain_dsn");
    if (r.downgraded)
      log::info("downgraded").add("queue_id", job->attempt->id).add("relay", c.relay).add("conversion", "7bit");
    std::string tls = c.client->tlsActive() ? c.client->tlsSummary() : "";
    if (!tls.empty() && c.client->tlsDane())
      tls += " dane";  // tls = "dane": authenticated by the host's TLSA records
    else if (!tls.empty() && job->tlsCtx && c.client->tlsVerified())
      tls += " verified";  // tls = "verify"
    else if (!tls.empty() && job->sts && c.client->tlsVerified())
      tls += " mta-sts";  // [[route]] mta_sts: the certificate verified and named the MX host
    else if (!tls.empty() && job->requireTls && c.client->tlsVerified())
      tls += " verified";  // REQUIRETLS: PKIX for a host found by a DNSSEC-signed MX
    job->done(r, c.relay, tls, c.remoteMta);
    auto it = destinations_.find(key);
    if (it == destinations_.end()) return;
    if (c.client->usable()) {
      clientIdle(*it->second, c);
    } else {
      --it->second->active;
      pump(*it->second);
      removeIfUnused(key);
    }
  });
}

void QueueManager::clientIdle(Destination& d, Pooled c) {
  if (!d.waiting.empty() && !draining_) {
    auto job = d.waiting.front();
    d.waiting.pop_front();
    runJob(d, c, job);
    return;
  }
  d.idle.push_back(c);
  if (!d.idleTimer) d.idleTimer = std::make_unique<uv::Timer>(loop_);
  std::string key = d.key;
  d.idleTimer->start(draining_ ? 0 : 5000, [this, key] {
    auto it = destinations_.find(key);
    if (it == destinations_.end()) return;
    auto& dest = *it->second;
    for (auto& idle : dest.idle) {
      sayQuit(idle.client);
      --dest.active;
    }
    dest.idle.clear();
    removeIfUnused(key);  // destroys this timer: safe, uv::Timer runs a copy of its callback
  });
}

void QueueManager::markUnreachable(Destination& d, const std::string& error) {
  int64_t now = monoMs();
  std::erase_if(unreachable_, [now](const auto& kv) { return kv.second.untilMs <= now; });
  // As long as the first retry wait, within [1 s, 5 min]: a message deferred now comes back
  // about when the mark ends, and a next hop that comes back up is not ignored for long.
  const auto& retry = snap_->config->retry;
  int64_t hold = std::clamp<int64_t>(retry.empty() ? 60'000 : retry.front().count(), 1000, 300'000);
  unreachable_[d.key] = {now + hold, error};
  log::warn("destination_unreachable")
      .add("destination", d.name)
      .add("tls", d.tlsName)
      .add("error", error)
      .add("retry_in_ms", hold)
      .add("deferred", static_cast<uint64_t>(d.waiting.size()));
  auto waiting = std::move(d.waiting);
  d.waiting.clear();
  std::string reply = unreachableReply(d.key);
  for (auto& job : waiting) {
    client::TransactionResult r;
    r.error = reply;
    job->done(r, job->destination, "", "");
  }
}

std::string QueueManager::unreachableReply(const std::string& key) {
  auto it = unreachable_.find(key);
  if (it == unreachable_.end()) return "";
  int64_t left = it->second.untilMs - monoMs();
  if (left <= 0) {
    unreachable_.erase(it);
    return "";
  }
  return it->second.error + " (next hop unreachable: no new connection for " + std::to_string((left + 999) / 1000) +
         "s)";
}

void QueueManager::removeIfUnused(const std::string& key) {
  // Only at the end of a callback, never under a caller holding a Destination&. With no job
  // waiting and no connection open, opening or idle, no timer or callback can still need the
  // entry (each looks it up by key and gives up if it is gone), and a later message for the
  // same next hop simply makes a new one: the map does not grow with every domain ever seen.
  auto it = destinations_.find(key);
  if (it == destinations_.end()) return;
  const auto& d = *it->second;
  if (!d.waiting.empty() || d.active > 0 || !d.idle.empty()) return;
  log::debug("destination_removed").add("destination", d.name).add("tls", d.tlsName);
  destinations_.erase(it);
}

void QueueManager::groupDone(std::shared_ptr<Attempt> attempt) {
  if (--attempt->pendingGroups <= 0) finishAttempt(attempt);
}

void QueueManager::finishAttempt(std::shared_ptr<Attempt> attempt) {
  auto it = entries_.find(attempt->id);
  if (it == entries_.end()) {
    busy_.erase(attempt->id);
    return;
  }
  auto& env = it->second.env;
  int64_t now = nowMs();
  bool continued = !attempt->only.empty();  // a round for refused-as-too-many recipients alone
  if (!continued) env.attempts++;
  std::vector<size_t> failed, succeeded;
  for (auto& [i, o] : attempt->outcomes) {
    auto& r = env.rcpts[i];
    r.attempts++;
    r.lastReply = o.reply;
    r.relay = o.relay;
    // The fields the recipient's deliver, bounce and defer lines share.
    auto outcomeFields = [&](log::Line& line) {
      line.add("queue_id", env.id)
          .add("message_id", env.messageId)
          .add("from", env.mailFrom)
          .add("to", r.address)
          .add("relay", o.relay)
          .add("reply", o.reply)
          .add("attempt", env.attempts)
          .add("delay_ms", now - env.arrivalMs);
      if (env.requireTls) line.add("requiretls", true);
    };
    switch (o.kind) {
      case RcptOutcome::Kind::Delivered: {
        r.status = queue::RcptStatus::Delivered;
        auto line = log::info("deliver");
        outcomeFields(line);
        if (!o.tls.empty()) line.add("tls", o.tls);
        if (!o.auth.empty()) line.add("auth", o.auth);
        if (o.clientCert) line.add("client_cert", true);  // mutual TLS: the next hop asked, got it
        if (!o.source.empty()) line.add("source", o.source);
        if (o.batv) line.add("batv", true);  // the next hop saw the BATV-tagged sender
        ++server::metrics().recipientsDelivered;
        server::metrics().observeLatency(static_cast<double>(now - env.arrivalMs) / 1000.0);
        // RFC 3461 §5.2.2-3: NOTIFY=SUCCESS is ours to answer unless the next hop took it on.
        if (!o.notifyPassedOn && queue::notifyWants(r.notify, "SUCCESS")) succeeded.push_back(i);
        break;
      }
      case RcptOutcome::Kind::Failed: {
        r.status = queue::RcptStatus::Failed;
        auto line = log::info("bounce");
        outcomeFields(line);
        failed.push_back(i);  // counted in recipients_bounced once its report is settled
        break;
      }
      case RcptOutcome::Kind::Deferred: {
        auto line = log::info("defer");
        outcomeFields(line);
        if (!o.source.empty()) line.add("source", o.source);
        ++server::metrics().recipientsDeferred;
        break;
      }
    }
  }
  // Every DSN is durable before the original it reports on is updated or removed: a crash in
  // between then leaves the original to be tried (and reported) again, never neither. The
  // entry stays busy meanwhile.
  // A report that cannot be written (a full disk) leaves its recipients unsettled instead
  // (reportNotWritten), so whether the message goes is decided once every report is done.
  auto dsnsLeft = std::make_shared<int>(1);  // 1: the sends below are still being issued
  auto persist = std::make_shared<std::function<void()>>();
  auto alive = alive_;
  auto dsnDone = [alive, dsnsLeft, persist] {
    if (*alive && --*dsnsLeft == 0) (*persist)();
  };
  auto sendAndWait = [&](const std::vector<size_t>& rcpts, DsnKind kind,
                         const std::map<size_t, RcptOutcome>* outcomes) {
    ++*dsnsLeft;
    sendDsn(env, rcpts, kind, attempt->data, outcomes,
            [this, alive, id = env.id, rcpts, kind, dsnDone](bool written, const std::string& error) {
              if (*alive && !written) reportNotWritten(id, rcpts, kind, error);
              // A failed recipient counts once its failure is settled: its report is written
              // or none is owed (one not written leaves it deferred, to fail again later).
              if (*alive && written && kind == DsnKind::Failure) server::metrics().recipientsBounced += rcpts.size();
              dsnDone();
            });
  };
  if (!failed.empty()) sendAndWait(failed, DsnKind::Failure, &attempt->outcomes);
  if (!succeeded.empty()) sendAndWait(succeeded, DsnKind::Success, &attempt->outcomes);
  if (!env.expanded.empty()) {  // owed since the RCPT: sent with the first attempt
    ++*dsnsLeft;
    sendExpandedDsn(env, attempt->data,
                    [this, alive, id = env.id, owed = env.expanded, dsnDone](bool written, const std::string& error) {
                      if (*alive && !written) {
                        if (auto it = entries_.find(id); it != entries_.end()) {
                          auto& e = it->second.env;
                          e.expanded = owed;  // owed again: the next attempt sends it
                          e.nextAttemptMs = std::max(e.nextAttemptMs, sched_.nextAttemptAt(nowMs(), e.attempts));
                        }
                        log::warn("dsn_deferred").add("queue_id", id).add("kind", "expanded").add("error", error);
                      }
                      dsnDone();
                    });
    env.expanded.clear();  // on disk with the attempt's results, once the report is
  }

  bool pending = std::any_of(env.rcpts.begin(), env.rcpts.end(),
                             [](const queue::Recipient& r) { return r.status == queue::RcptStatus::Pending; });
  if (pending && sched_.expired(env, now)) {
    std::vector<size_t> expired;
    for (size_t i = 0; i < env.rcpts.size(); ++i) {
      auto& r = env.rcpts[i];
      if (r.status != queue::RcptStatus::Pending) continue;
      r.status = queue::RcptStatus::Failed;
      r.lastReply = "4.4.7 message expired after " + std::to_string((now - env.arrivalMs) / 1000) + "s; last error: " + r.lastReply;
      expired.push_back(i);
    }
    std::vector<std::string> expiredTo;
    for (size_t i : expired) expiredTo.push_back(env.rcpts[i].address);
    log::info("expire")
        .add("queue_id", env.id)
        .add("message_id", env.messageId)
        .add("from", env.mailFrom)
        .add("to", expiredTo)
        .add("attempt", env.attempts)
        .add("delay_ms", now - env.arrivalMs);
    ++server::metrics().messagesExpired;
    sendAndWait(expired, DsnKind::Failure, nullptr);
  } else if (pending) {
    if (sched_.delayWarningDue(env, now)) {
      std::vector<size_t> delayed;
      for (size_t i = 0; i < env.rcpts.size(); ++i)
        if (env.rcpts[i].status == queue::RcptStatus::Pending) delayed.push_back(i);
      sendAndWait(delayed, DsnKind::Delay, &attempt->outcomes);
      env.delayWarned = true;
    }
    auto& entry = it->second;
    if (!continued) entry.laterMs = sched_.nextAttemptAt(now, env.attempts);
    // Stored: the others' time (after a crash the refused ones go with them); in memory,
    // the refused ones at once.
    env.nextAttemptMs = entry.laterMs;
    for (size_t i : attempt->again)
      if (env.rcpts[i].status == queue::RcptStatus::Pending) entry.atOnce.push_back(i);
  }
  *persist = [this, id = env.id] {
    busy_.erase(id);
    auto it = entries_.find(id);
    if (it != entries_.end()) {
      it->second.busy = false;
      auto& env = it->second.env;
      bool settled = env.expanded.empty() && std::none_of(env.rcpts.begin(), env.rcpts.end(), [](const auto& r) {
                       return r.status == queue::RcptStatus::Pending;
                     });
      if (settled) {
        retire(id);
      } else {
        int64_t due = it->second.atOnce.empty() ? env.nextAttemptMs : 0;
        spool_->update(env, [id](bool ok, std::string error) {
          if (!ok) log::error("spool_error").add("queue_id", id).add("error", error);
        });
        schedule(id, due);
      }
    }
    updateGauges();
    finishDrainIfDone();
    armTimer();
  };
  dsnDone();  // the sends are issued: persists now if no DSN is on its way
}

void QueueManager::reportNotWritten(const std::string& id, const std::vector<size_t>& rcpts, DsnKind kind,
                                    const std::string& error) {
  // As Postfix does when its bounce or trace service fails: the recipient is deferred, so
  // it is tried again and reported then. A success report may so cost a second delivery;
  // that is the price of never settling a recipient whose report was asked for and lost.
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  auto& env = it->second.env;
  std::string_view kindName = kind == DsnKind::Failure ? "failure" : kind == DsnKind::Delay ? "delay" : "success";
  log::warn("dsn_deferred").add("queue_id", id).add("kind", std::string(kindName)).add("error", error);
  if (kind == DsnKind::Delay) {
    env.delayWarned = false;  // the warning is owed again
    return;
  }
  std::string reply = "4.3.0 delivery status notification not written: " + error;
  for (size_t i : rcpts) {
    auto& r = env.rcpts[i];
    r.status = queue::RcptStatus::Pending;
    r.lastReply = reply;
    log::info("defer")
        .add("queue_id", id)
        .add("message_id", env.messageId)
        .add("from", env.mailFrom)
        .add("to", r.address)
        .add("reply", reply)
        .add("attempt", env.attempts)
        .add("delay_ms", nowMs() - env.arrivalMs);
    ++server::metrics().recipientsDeferred;
  }
  env.nextAttemptMs = std::max(env.nextAttemptMs, sched_.nextAttemptAt(nowMs(), env.attempts));
}

void QueueManager::retire(std::string id, queue::Spool::Done removed) {
  sched_.remove(id);
  std::optional<queue::Area> area;
  if (auto it = entries_.find(id); it != entries_.end()) area = it->second.env.area;
  eraseEntry(id);
  // The spool logs a failed removal itself.
  spool_->remove(id, std::move(removed), area);
}

void QueueManager::sendDsn(const queue::Envelope& env, const std::vector<size_t>& asked, DsnKind kind,
                           std::shared_ptr<const queue::MessageData> data,
                           const std::map<size_t, RcptOutcome>* outcomes, DsnDone then) {
  if (asked.empty()) return then(true, "");
  if (env.mailFrom.empty() || env.isBounce) {
    // RFC 5321 §6.1 / RFC 3464: never to the null sender; our own DSNs are not bounced again.
    log::info("dsn_dropped").add("queue_id", env.id).add("reason", env.isBounce ? "undeliverable DSN" : "null sender");
    return then(true, "");
  }
  std::vector<size_t> rcpts;
  std::vector<std::string> unwanted;
  std::string_view word = kind == DsnKind::Failure ? "FAILURE" : kind == DsnKind::Delay ? "DELAY" : "SUCCESS";
  for (size_t i : asked) {
    if (queue::notifyWants(env.rcpts[i].notify, word))
      rcpts.push_back(i);
    else
      unwanted.push_back(env.rcpts[i].address);
  }
  if (!unwanted.empty() && kind != DsnKind::Success)  // success is reported only on request anyway
    log::info("dsn_dropped")
        .add("queue_id", env.id)
        .add("reason", "NOTIFY")
        .add("to", unwanted)
        .add("kind", std::string(kind == DsnKind::Failure ? "failure" : "delay"));
  if (rcpts.empty()) return then(true, "");
  bool delay = kind == DsnKind::Delay;
  const auto& cfg = *snap_->config;
  queue::DsnInput in = dsnInputFor(env);
  // RFC 3461 §4.3: RET applies to failure reports; the others return the headers only.
  in.headersOnly = env.ret == "HDRS" || kind != DsnKind::Failure;
  // RFC 8689 §5: a REQUIRETLS message's report returns its headers only, as with RET=HDRS
  // (RET=FULL disregarded), and goes with REQUIRETLS itself (writeDsn).
  if (env.requireTls) in.headersOnly = true;
  for (size_t i : rcpts) {
    const auto& r = env.rcpts[i];
    in.international = in.international || hasEightBit(r.address) || hasEightBit(r.orcpt);
    queue::DsnRecipient d;
    d.address = r.address;
    d.orcpt = r.orcpt;
    const RcptOutcome* out = nullptr;
    if (outcomes)
      if (auto it = outcomes->find(i); it != outcomes->end()) out = &it->second;
    d.action = kind == DsnKind::Failure ? "failed"
               : kind == DsnKind::Delay ? "delayed"
               : out && out->local      ? "delivered"  // §5.2.3
                                        : "relayed";        // §5.2.2: to a next hop without DSN
    d.status = client::replyStatus(r.lastReply);
    if (kind == DsnKind::Success && d.status.front() != '2') d.status = "2.0.0";
    // A delayed recipient's 5.x.y (a 552 to RCPT is retried, RFC 5321 §4.5.3.1.10) is
    // reported as 4.x.y by queue::buildDsn; the Diagnostic-Code keeps the server's words.
    // RFC 3464 §2.3.5-6: "smtp;" and Remote-MTA only for a reply a server sent us; our own
    // text (expiry, admin bounce, DNS, connection failures) is X-Moat and names no MTA.
    bool remote = out && !out->remoteMta.empty();
    d.diagnostic = (remote ? "smtp; " : "X-Moat; ") + r.lastReply;
    if (remote) d.remoteMta = out->remoteMta;
    d.lastAttemptMs = nowMs();
    if (delay) d.willRetryUntilMs = env.arrivalMs + cfg.maxLifetime.count();
    in.rcpts.push_back(std::move(d));
  }
  std::string action;  // the report's actions, for the log: "failed", "relayed,delivered"
  for (const auto& d : in.rcpts)
    if (action.find(d.action) == std::string::npos) action += (action.empty() ? "" : ",") + d.action;
  writeDsn(env, std::move(in), std::move(data), std::move(action), std::move(then));
}

// What every report on `env` says of it; the caller adds the recipients (and marks the
// report international when one of their addresses is).
queue::DsnInput QueueManager::dsnInputFor(const queue::Envelope& env) const {
  queue::DsnInput in;
  in.reportingMta = snap_->config->hostname;
  in.sender = env.mailFrom;
  in.envid = env.envid;
  in.originalMessageId = env.messageId;
  in.arrivalMs = env.arrivalMs;
  // RFC 6533: an internationalized original gets a global DSN, which names its UTF-8
  // addresses as they are rather than as '?'.
  in.international = env.smtputf8 || hasEightBit(env.mailFrom);
  return in;
}

void QueueManager::sendExpandedDsn(const queue::Envelope& env, std::shared_ptr<const queue::MessageData> data,
                                   DsnDone then) {
  if (env.expanded.empty()) return then(true, "");
  if (env.mailFrom.empty() || env.isBounce) {
    log::info("dsn_dropped").add("queue_id", env.id).add("reason", env.isBounce ? "undeliverable DSN" : "null sender");
    return then(true, "");
  }
  queue::DsnInput in = dsnInputFor(env);
  in.headersOnly = true;  // RFC 3461 §4.3: RET applies to failure reports only
  for (const auto& x : env.expanded) {
    in.international = in.international || hasEightBit(x.address) || hasEightBit(x.orcpt);
    queue::DsnRecipient d;
    d.address = x.address;
    d.orcpt = x.orcpt;
    d.action = "expanded";  // §6.2: delivered to the address, and forwarded on to others
    d.status = "2.0.0";
    d.diagnostic = "X-Moat; 250 2.1.5 alias expanded";
    d.lastAttemptMs = env.arrivalMs;
    in.rcpts.push_back(std::move(d));
  }
  writeDsn(env, std::move(in), std::move(data), "expanded", std::move(then));
}

void QueueManager::writeDsn(const queue::Envelope& env, queue::DsnInput in,
                            std::shared_ptr<const queue::MessageData> data, std::string action, DsnDone then) {
  const auto& cfg = *snap_->config;
  std::string original = serializeHeaders(env.headers);
  if (data) original += std::string(data->bytes());
  std::string text = queue::buildDsn(in, original);

  auto incoming = spool_->create();
  queue::Envelope dsn;
  dsn.id = incoming->id();
  dsn.mailFrom = "";
  queue::Recipient rc;
  rc.address = env.mailFrom;
  // A sender [relay] rewrite made external (outbound mail) gets its report at the internal
  // address, as a reply to the external one would be rewritten at RCPT.
  if (size_t at = env.mailFrom.rfind('@');
      snap_->rewrite && at != std::string::npos && cfg.isRelayDomain(env.mailFrom.substr(at + 1)))
    if (std::string internal = snap_->rewrite->inbound(env.mailFrom); !internal.empty()) rc.address = internal;
  dsn.rcpts.push_back(rc);
  dsn.arrivalMs = nowMs();
  dsn.nextAttemptMs = dsn.arrivalMs;
  dsn.isBounce = true;
  dsn.requireTls = env.requireTls;  // RFC 8689 §5
  dsn.protocol = "local";
  dsn.size = text.size();
  // RFC 5322 §3.6.7: the trace field ends in "; date-time".
  dsn.headers.emplace_back("Received", "by " + cfg.hostname + " (Moat) id " + dsn.id + " (DSN for " + env.id + "); " +
                                           queue::rfc5322Date(dsn.arrivalMs));
  // What the next hop must be told to carry it: 8-bit text (an 8-bit quote of the original,
  // UTF-8 in a global DSN's parts) needs BODY=8BITMIME; a UTF-8 address, or a global DSN
  // with UTF-8 in it (its To:, its report, the original's headers), SMTPUTF8 (RFC 6531 §3.4).
  dsn.eightBit = hasEightBit(text);
  dsn.smtputf8 = hasEightBit(env.mailFrom) || (in.international && dsn.eightBit);
  incoming->append(text);
  auto alive = alive_;
  std::string origId = env.id;
  ++dsnWrites_;  // every path below ends in dsnWritten()
  incoming->finish([this, alive, incoming, dsn, origId, action, then](bool ok, std::string error) mutable {
    if (!*alive) return;
    if (!ok) {
      log::error("spool_error").add("queue_id", dsn.id).add("error", error);
      then(false, error);
      return dsnWritten();
    }
    incoming->commit(dsn, [this, alive, incoming, dsn, origId, action, then](bool ok2, std::string error2) {
      if (!*alive) return;
      if (!ok2) {
        log::error("spool_error").add("queue_id", dsn.id).add("error", error2);
        then(false, error2);
        return dsnWritten();
      }
      ++server::metrics().dsnsGenerated;
      log::info("dsn")
          .add("queue_id", dsn.id)
          .add("original_queue_id", origId)
          .add("to", dsn.rcpts[0].address)
          .add("action", action);
      enqueue(dsn);  // while draining it is only recorded: the next start delivers it
      then(true, "");
      dsnWritten();
    });
  });
}

void QueueManager::dsnWritten() {
  --dsnWrites_;
  finishDrainIfDone();
}

void QueueManager::tlsrptRecord(const Job& job, const tlsrpt::Policy& policy, const std::string& resultType,
                                const std::string& mxHost, const std::string& ip, const client::PeerNotes* notes) {
  if (job.reportDomain.empty() || !snap_->config->tlsrptEnabled) return;
  tlsrptFile_.markDirty();
  if (resultType.empty())
    tlsrpt_.success(job.reportDomain, policy);
  else
    tlsrpt_.failure(job.reportDomain, policy, resultType, mxHost, ip, notes ? notes->localIp : "",
                    notes ? notes->serverName : "");
}

void QueueManager::armTlsrpt() {
  const auto& cfg = *snap_->config;
  if (!cfg.tlsrptEnabled || draining_) {
    tlsrptTimer_.stop();
    tlsrptFile_.stop();
    if (draining_) return;  // the drain saves the period under way
    tlsrpt_.take();  // turned off: what was gathered is not reported
    tlsrptFile_.markClean();
    tlsrptPeriodMs_ = 0;
    return;
  }
  // A crash loses at most one checkpoint_interval of counts.
  tlsrptFile_.start(static_cast<uint64_t>(cfg.tlsrptCheckpointInterval.count()));
  const int64_t interval = cfg.tlsrptInterval.count();
  const int64_t now = nowMs();
  // A new interval (a reload) starts a period of its own; what was gathered so far stays in
  // the aggregate and goes out with it.
  if (tlsrptPeriodMs_ == 0 || interval != tlsrptIntervalMs_) tlsrptPeriodMs_ = tlsrpt::periodStart(now, interval);
  tlsrptIntervalMs_ = interval;
  const int64_t end = tlsrptPeriodMs_ + interval;
  tlsrptTimer_.start(static_cast<uint64_t>(std::max<int64_t>(end - now, 0)) + 10, [this] { tlsrptPeriodEnd(); });
}

void QueueManager::loadTlsrpt() {
  const auto& cfg = *snap_->config;
  const std::string path = cfg.spoolDir + "/tlsrpt.state";
  std::ifstream in(path, std::ios::binary);
  if (!in) return;  // none saved
  std::string text(tlsrpt::kMaxStateBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  in.close();
  // Kept while it is the period's checkpoint: the aggregate starts from it, and the next
  // checkpoint (or the period's end) replaces it. Another crash before then reads the same
  // counts again, never twice.
  auto drop = [&path] { ::unlink(path.c_str()); };
  if (!cfg.tlsrptEnabled) return drop();
  int64_t start = 0, interval = 0;
  tlsrpt::Aggregator saved;
  if (!tlsrpt::decodeState(text, start, interval, saved)) {
    log::warn("tlsrpt_error").add("file", path).add("reason", "saved aggregate ignored: not a file Moat wrote");
    return drop();
  }
  // Another interval: those counts belong to no period of this one; they are dropped.
  if (interval != cfg.tlsrptInterval.count()) {
    log::warn("tlsrpt_error").add("file", path).add("reason", "saved aggregate ignored: tlsrpt.interval changed");
    return drop();
  }
  // The saved period: still under way, it goes on; over (a stop or a crash across its end),
  // it is reported at once, by the timer armTlsrpt() sets, and the next one begins.
  for (const auto& [domain, d] : saved.results())
    for (const auto& [policy, r] : d.policies) tlsrpt_.add(domain, policy, r);
  tlsrptPeriodMs_ = start;
  tlsrptIntervalMs_ = interval;
  tlsrptFileHolds_ = !tlsrpt_.results().empty();
}

void QueueManager::tlsrptPeriodEnd() {
  const int64_t now = nowMs();
  const int64_t start = tlsrptPeriodMs_, end = tlsrptPeriodMs_ + tlsrptIntervalMs_;
  if (now < end) return armTlsrpt();  // the wall clock went back: not over yet
  const uint64_t dropped = tlsrpt_.dropped();
  tlsrpt::Results results = tlsrpt_.take();
  tlsrptPeriodMs_ = tlsrpt::periodStart(now, tlsrptIntervalMs_);
  tlsrptSerial_ = 0;
  armTlsrpt();
  if (dropped) log::warn("tlsrpt_error").add("reason", "aggregate full: sessions not counted").add("sessions", dropped);
  auto due = std::make_shared<std::vector<TlsrptDue>>();
  for (auto& [domain, r] : results)
    due->push_back({domain, std::make_shared<const tlsrpt::DomainResults>(std::move(r)), start / 1000, end / 1000});
  auto queueReports = [this, due] {
    if (draining_) {
      if (!due->empty())
        log::warn("tlsrpt_error")
            .add("reason", "Moat is stopping: the ended period's reports to these domains are not sent")
            .add("domains", static_cast<uint64_t>(due->size()));
      return;
    }
    for (auto& d : *due) tlsrptDue_.push_back(std::move(d));
    tlsrptPump();
  };
  // At most once: the checkpoint that still holds the ended period's counts is replaced
  // (by the new period's) before its reports are queued, so a crash after this point cannot
  // report the period again at the next start; a crash before the reports are in the spool
  // loses them instead.
  if (tlsrptFileHolds_ || tlsrptFile_.writing()) return tlsrptFile_.write(std::move(queueReports));
  queueReports();
}

void QueueManager::tlsrptPump() {
  // An answer from the resolver's cache comes back at once, inside this loop, and pumps
  // again: the loop below goes on with it instead of recursing a domain deeper each time.
  if (tlsrptPumping_) return;
  tlsrptPumping_ = true;
  while (!draining_ && tlsrptLookups_ < kTlsrptLookups && !tlsrptDue_.empty()) {
    TlsrptDue due = std::move(tlsrptDue_.front());
    tlsrptDue_.pop_front();
    ++tlsrptLookups_;
    tlsrptDomain(due.domain, std::move(due.results), due.startSeconds, due.endSeconds);
  }
  tlsrptPumping_ = false;
}

void QueueManager::tlsrptDomain(const std::string& domain, std::shared_ptr<const tlsrpt::DomainResults> results,
                                int64_t startSeconds, int64_t endSeconds) {
  auto alive = alive_;
  resolver_->query("_smtp._tls." + domain, dns::RrType::TXT,
                   [this, alive, domain, results, startSeconds, endSeconds](const dns::Answer& a) {
                     if (!*alive) return;
                     --tlsrptLookups_;
                     tlsrptRecordFound(domain, results, startSeconds, endSeconds, a);
                     tlsrptPump();
                   });
}

void QueueManager::tlsrptRecordFound(const std::string& domain, std::shared_ptr<const tlsrpt::DomainResults> results,
                                     int64_t startSeconds, int64_t endSeconds, const dns::Answer& a) {
  if (a.status == dns::Status::NxDomain || a.status == dns::Status::NoData) {
    log::info("tlsrpt_skipped").add("domain", domain).add("reason", "no TLSRPT record");
    return;
  }
  if (a.status != dns::Status::Ok) {
    log::warn("tlsrpt_error")
        .add("domain", domain)
        .add("reason",
             "TLSRPT record lookup failed: " + (a.error.empty() ? std::string(dns::statusName(a.status)) : a.error));
    return;
  }
  tlsrpt::Record rec = tlsrpt::parseRecord(a.txt);
  if (!rec.ok) {
    // RFC 8460 §3: not exactly one usable record, no report.
    if (rec.error == "no v=TLSRPTv1 record")
      log::info("tlsrpt_skipped").add("domain", domain).add("reason", "no TLSRPT record");
    else
      log::warn("tlsrpt_error").add("domain", domain).add("reason", "TLSRPT record: " + rec.error);
    return;
  }
  std::set<std::string> sent;
  for (const auto& rua : rec.rua) {
    if (rua.size() >= 6 && strncasecmp(rua.c_str(), "https:", 6) == 0) {
      auto uri = tlsrpt::httpsUri(rua);
      if (!uri) {
        log::info("tlsrpt_skipped")
            .add("domain", domain)
            .add("rua", rua)
            .add("reason", "not an https: URI Moat can post to");
        continue;
      }
      if (!sent.insert(rua).second) continue;
      tlsrptPost(domain, rua, *uri, results, startSeconds, endSeconds);
      continue;
    }
    std::string to = tlsrpt::mailtoAddress(rua);
    if (to.empty()) {
      log::info("tlsrpt_skipped")
          .add("domain", domain)
          .add("rua", rua)
          .add("reason", "not a mailto: URI Moat can send to");
      continue;
    }
    if (!sent.insert(to).second) continue;
    tlsrptSend(domain, rua, to, results, startSeconds, endSeconds);
  }
}

tlsrpt::ReportInfo QueueManager::tlsrptReportInfo(const std::string& domain, int64_t startSeconds, int64_t endSeconds) {
  const auto& cfg = *snap_->config;
  tlsrpt::ReportInfo info;
  info.organization = cfg.tlsrptOrganizationName();
  info.contact = cfg.tlsrptContactInfo();
  info.domain = domain;
  info.startSeconds = startSeconds;
  info.endSeconds = endSeconds;
  info.reportId =
      std::to_string(startSeconds) + "." + std::to_string(++tlsrptSerial_) + "." + randomHex() + "@" + cfg.hostname;
  return info;
}

struct QueueManager::TlsrptPost {
  std::string domain, rua;
  tlsrpt::HttpsUri uri;
  tlsrpt::ReportInfo report;
  std::shared_ptr<const tlsrpt::DomainResults> results;
  std::string request, error;  // the whole POST (made on the pool), or why it could not be
  uint64_t successes = 0, failures = 0;
  unsigned attempt = 0;
};

void QueueManager::tlsrptPost(const std::string& domain, const std::string& rua, const tlsrpt::HttpsUri& uri,
                              std::shared_ptr<const tlsrpt::DomainResults> results, int64_t startSeconds,
                              int64_t endSeconds) {
  auto p = std::make_shared<TlsrptPost>();
  p->domain = domain;
  p->rua = rua;
  p->uri = uri;
  p->report = tlsrptReportInfo(domain, startSeconds, endSeconds);
  p->results = std::move(results);
  for (const auto& [policy, r] : p->results->policies) {
    p->successes += r.successes;
    p->failures += r.failures;
  }
  auto alive = alive_;
  uv::queueWork(
      loop_,
      [p] {
        auto gz = tlsrpt::gzip(tlsrpt::reportJson(p->report, *p->results));
        if (!gz) {
          p->error = "gzip failed";
          return;
        }
        p->request = tlsrpt::httpsReportRequest(p->uri, *gz);
      },
      [this, alive, p] {
        if (!*alive) return;
        if (p->request.empty())
          return void(log::warn("tlsrpt_error").add("domain", p->domain).add("rua", p->rua).add("reason", p->error));
        if (draining_)
          return void(log::warn("tlsrpt_error")
                          .add("domain", p->domain)
                          .add("rua", p->rua)
                          .add("reason", "report upload not made: Moat is stopping"));
        tlsrptPostAttempt(p);
      });
}

void QueueManager::tlsrptPostAttempt(std::shared_ptr<TlsrptPost> p) {
  ++p->attempt;
  const uint64_t id = ++tlsrptPostSerial_;
  https::Request r;
  r.host = p->uri.host;
  r.port = p->uri.port;
  r.text = p->request;
  r.maxBody = 65536;  // the reply's body is not used, only bounded
  r.what = "report upload";
  r.source = {snap_->config->sourceIpv4, snap_->config->sourceIpv6};
  auto alive = alive_;
  auto ended = std::make_shared<bool>(false);
  auto cancel = https::exchange(
      loop_, *resolver_, snap_->tlsrptTls, static_cast<uint64_t>(snap_->config->tlsrptHttpsTimeout.count()),
      std::move(r),
      [this, alive, id, p, ended](const sts::HttpResponse* response, const std::string& error) {
        if (!*alive) return;
        *ended = true;
        tlsrptPosts_.erase(id);
        // RFC 8460 §5.2: any 2xx is success; no redirect is followed.
        const int status = response ? response->status() : 0;
        if (status >= 200 && status <= 299) {
          ++server::metrics().tlsrptReports;
          log::info("tlsrpt")
              .add("domain", p->domain)
              .add("rua", p->rua)
              .add("http_status", static_cast<uint64_t>(status))
              .add("report_id", p->report.reportId)
              .add("attempt", static_cast<uint64_t>(p->attempt))
              .add("successful_sessions", p->successes)
              .add("failed_sessions", p->failures);
          return;
        }
        const bool again = p->attempt < kTlsrptPostAttempts && !draining_ && error != "cancelled";
        log::warn("tlsrpt_error")
            .add("domain", p->domain)
            .add("rua", p->rua)
            .add("report_id", p->report.reportId)
            .add("attempt", static_cast<uint64_t>(p->attempt))
            .add("reason", "report upload failed: " + (response ? "HTTP status " + std::to_string(status) : error) +
                               (again ? " (tried again in 1m)" : " (given up)"));
        if (!again) return;
        tlsrptRetries_.emplace_back(uv_now(loop_) + kTlsrptPostRetryMs, p);
        if (!tlsrptRetryTimer_.active()) tlsrptRetryTimer_.start(kTlsrptPostRetryMs, [this] { tlsrptRetryDue(); });
      },
      familiesOf(*snap_->config));
  if (!*ended) tlsrptPosts_[id] = std::move(cancel);
}

void QueueManager::tlsrptRetryDue() {
  const uint64_t now = uv_now(loop_);
  while (!draining_ && !tlsrptRetries_.empty() && tlsrptRetries_.front().first <= now) {
    auto p = std::move(tlsrptRetries_.front().second);
    tlsrptRetries_.pop_front();
    tlsrptPostAttempt(std::move(p));
  }
  if (!draining_ && !tlsrptRetries_.empty())
    tlsrptRetryTimer_.start(tlsrptRetries_.front().first - now, [this] { tlsrptRetryDue(); });
}

void QueueManager::tlsrptSend(const std::string& domain, const std::string& rua, const std::string& to,
                              std::shared_ptr<const tlsrpt::DomainResults> results, int64_t startSeconds,
                              int64_t endSeconds) {
  const auto& cfg = *snap_->config;
  struct Build {
    tlsrpt::MessageInfo info;
    std::shared_ptr<const tlsrpt::DomainResults> results;
    uint64_t successes = 0, failures = 0;
  };
  auto b = std::make_shared<Build>();
  b->results = std::move(results);
  b->info.from = cfg.tlsrptFromAddress();
  b->info.to = to;
  b->info.submitter = cfg.hostname;
  b->info.dateMs = nowMs();
  b->info.report = tlsrptReportInfo(domain, startSeconds, endSeconds);
  b->info.messageId = "tlsrpt." + b->info.report.reportId;
  for (const auto& [p, r] : b->results->policies) {
    b->successes += r.successes;
    b->failures += r.failures;
  }
  auto mail = std::make_shared<report_mail::Mail>();
  mail->from = b->info.from;
  mail->to = b->info.to;
  mail->messageId = b->info.messageId;
  mail->what = "TLS report for " + domain;
  queueReport(
      mail,
      [b](report_mail::Mail& m) {
        std::string json = tlsrpt::reportJson(b->info.report, *b->results);
        auto gz = tlsrpt::gzip(json);
        if (!gz) {
          m.error = "gzip failed";
          return;
        }
        m.text = tlsrpt::reportMessage(b->info, *gz);
      },
      [b, domain, rua](const report_mail::Mail& m) {
        if (!m.signError.empty())
          log::warn("tlsrpt_error")
              .add("domain", domain)
              .add("rua", rua)
              .add("reason", "not DKIM-signed: " + m.signError);
        if (m.queueId.empty()) {
          if (!m.error.empty()) log::warn("tlsrpt_error").add("domain", domain).add("rua", rua).add("reason", m.error);
          return;
        }
        ++server::metrics().tlsrptReports;
        log::info("tlsrpt")
            .add("queue_id", m.queueId)
            .add("domain", domain)
            .add("rua", rua)
            .add("to", b->info.to)
            .add("report_id", b->info.report.reportId)
            .add("successful_sessions", b->successes)
            .add("failed_sessions", b->failures);
      });
}

std::string QueueManager::randomHex() {
  static const char* kHex = "0123456789abcdef";
  std::string rnd;
  for (int i = 0; i < 16; ++i) rnd += kHex[rng_() & 15];
  return rnd;
}

void QueueManager::queueReport(std::shared_ptr<report_mail::Mail> mail, std::function<void(report_mail::Mail&)> build,
                               std::function<void(const report_mail::Mail&)> done) {
  std::optional<filters::dkim::SignKey> key;  // [[dkim.sign]] for the From domain
  if (size_t at = mail->from.rfind('@'); at != std::string::npos) {
    std::string fromDomain = mail->from.substr(at + 1);
    for (const auto& k : snap_->reportSignKeys)
      if (strcasecmp(k.domain.c_str(), fromDomain.c_str()) == 0) {
        key = k;
        break;
      }
  }
  auto alive = alive_;
  ++dsnWrites_;  // a drain waits for it, as for a DSN; every path below ends in dsnWritten()
  uv::queueWork(
      loop_,
      [mail, build = std::move(build), key] {
        build(*mail);
        if (mail->text.empty()) {
          if (mail->error.empty()) mail->error = "the report could not be made";
          return;
        }
        // Signed as any outbound mail of the From domain is (the message is 7-bit, CRLF, its
        // lines short: as the SMTP client sends it).
        if (key) {
          if (auto sig = filters::dkim::signMessage(*key, mail->text, mail->signError))
            mail->text = "DKIM-Signature: " + *sig + "\r\n" + mail->text;
        }
      },
      [this, alive, mail, done = std::move(done)] {
        if (!*alive) return;
        if (mail->text.empty()) {
          done(*mail);
          return dsnWritten();
        }
        const auto& cfg = *snap_->config;
        auto incoming = spool_->create();
        queue::Envelope env;
        env.id = incoming->id();
        env.mailFrom = "";  // like a DSN: a report that cannot be delivered is not bounced
        queue::Recipient rc;
        rc.address = mail->to;
        env.rcpts.push_back(rc);
        env.arrivalMs = nowMs();
        env.nextAttemptMs = env.arrivalMs;
        env.isBounce = true;
        env.protocol = "local";
        env.size = mail->text.size();
        env.messageId = "<" + mail->messageId + ">";
        env.headers.emplace_back("Received", "by " + cfg.hostname + " (Moat) id " + env.id + " (" + mail->what + "); " +
                                                 queue::rfc5322Date(env.arrivalMs));
        incoming->append(mail->text);
        incoming->finish([this, alive, incoming, env, mail, done](bool ok, std::string error) mutable {
          if (!*alive) return;
          if (!ok) {
            log::error("spool_error").add("queue_id", env.id).add("error", error);
            mail->error = "not written to the spool: " + error;
            done(*mail);
            return dsnWritten();
          }
          incoming->commit(env, [this, alive, incoming, env, mail, done](bool ok2, std::string error2) {
            if (!*alive) return;
            if (!ok2) {
              log::error("spool_error").add("queue_id", env.id).add("error", error2);
              mail->error = "not written to the spool: " + error2;
              done(*mail);
              return dsnWritten();
            }
            mail->queueId = env.id;
            done(*mail);
            enqueue(env);
            dsnWritten();
          });
        });
      });
}

std::function<void()> QueueManager::holdDrain() {
  ++dsnWrites_;  // local disk only, like a DSN write: a drain waits for it
  return [this, alive = alive_, once = std::make_shared<bool>(false)] {
    if (!*alive || std::exchange(*once, true)) return;
    dsnWritten();
  };
}

void QueueManager::drain(std::function<void()> done) {
  draining_ = true;
  timer_.stop();
  housekeeping_.stop();
  stsSweep_.stop();
  tlsrptTimer_.stop();
  // The period under way goes on after the restart: what the last checkpoint has not got yet
  // is written (a write under way is waited for).
  ++dsnWrites_;  // local disk only, like a DSN write: the drain waits for it
  tlsrptFile_.flush([this] { dsnWritten(); });
  dmarcReports_->stop();  // so does the DMARC reports' period
  // https: uploads: those under way are cut short (each logs its tlsrpt_error), those waiting
  // for another attempt are dropped.
  tlsrptRetryTimer_.stop();
  if (!tlsrptRetries_.empty()) {
    log::warn("tlsrpt_error")
        .add("reason", "Moat is stopping: report uploads waiting for another attempt are not made")
        .add("uploads", static_cast<uint64_t>(tlsrptRetries_.size()));
    tlsrptRetries_.clear();
  }
  for (auto& [id, cancel] : std::map<uint64_t, std::function<void()>>(std::move(tlsrptPosts_))) cancel();
  tlsrptPosts_.clear();
  if (!tlsrptDue_.empty()) {
    log::warn("tlsrpt_error")
        .add("reason", "Moat is stopping: the ended period's reports to these domains are not sent")
        .add("domains", static_cast<uint64_t>(tlsrptDue_.size()));
    tlsrptDue_.clear();
  }
  for (auto& [key, d] : destinations_) {
    for (auto& c : d->idle) sayQuit(c.client);
    d->active -= static_cast<unsigned>(d->idle.size());
    d->idle.clear();
  }
  // A policy fetch must not hold the stop for up to fetch_timeout: its deliveries are
  // deferred now, as any other that cannot go on.
  stsCache_->stop();
  drained_ = std::move(done);
  if (busy_.empty() && quitting_.empty() && dsnWrites_ == 0 && moves_ == 0) return finishDrainIfDone();
  // A next hop that never answers must not hold the shutdown for its full timeouts. What is
  // still in flight then stays queued (it is on disk) and is tried again at the next start.
  graceTimer_ = std::make_unique<uv::Timer>(loop_);
  graceTimer_->start(kDrainGraceMs, [this] {
    if (!drained_) return;
    log::warn("drain_timeout").add("deliveries", static_cast<uint64_t>(busy_.size()))
        .add("closing", static_cast<uint64_t>(quitting_.size()));
    auto closing = quitting_;  // abort() ends each QUIT, which removes it from quitting_
    for (auto& [ptr, c] : closing) c->abort();
    quitting_.clear();
    // Deliveries still out are on disk and retried at the next start; DSNs being written
    // are not (their originals are gone), so those are still waited for: local disk only.
    graceExpired_ = true;
    finishDrainIfDone();
  });
}

void QueueManager::sayQuit(const std::shared_ptr<client::SmtpClient>& c) {
  const client::SmtpClient* key = c.get();
  quitting_.emplace(key, c);
  auto alive = alive_;
  c->quit([this, alive, key] {
    if (!*alive) return;
    quitting_.erase(key);
    finishDrainIfDone();
  });
}

void QueueManager::finishDrainIfDone() {
  if (!draining_ || !drained_ || dsnWrites_ > 0 || moves_ > 0) return;
  if (!graceExpired_ && (!busy_.empty() || !quitting_.empty())) return;
  if (graceTimer_) graceTimer_->stop();
  auto d = std::exchange(drained_, nullptr);
  d();
}

void QueueManager::listSlice(ListCursor& cursor, std::string& out, size_t maxBytes, size_t maxVisits) const {
  if (cursor.done) return;
  auto it = entries_.begin();
  if (!cursor.begun) {
    cursor.begun = true;
    if (!entries_.empty()) cursor.last = entries_.rbegin()->first;
    cursor.nowMs = nowMs();
    out += "{\"ok\":true,\"messages\":[";
  } else {
    it = entries_.upper_bound(cursor.after);  // the last one looked at may be gone since
  }
  const size_t start = out.size();
  mta::JsonObject o;
  std::vector<std::string> to;
  for (size_t visits = 0; it != entries_.end() && it->first <= cursor.last; ++it) {
    if (visits++ == maxVisits || out.size() - start >= maxBytes) break;
    const auto& [id, e] = *it;
    cursor.after = id;
    const auto& env = e.env;
    if (!cursor.select.matches(env, cursor.nowMs)) continue;
    o.clear();
    to.clear();
    std::string_view lastReply;
    for (const auto& r : env.rcpts) {
      if (r.status != queue::RcptStatus::Pending) continue;
      to.push_back(r.address);
      if (!r.lastReply.empty()) lastReply = r.lastReply;
    }
    o.add("id", id).add("area", areaLabel(env.area)).add("from", env.mailFrom).add("to", to).add("size", env.size)
        .add("arrival_ms", env.arrivalMs).add("attempts", env.attempts).add("next_attempt_ms", env.nextAttemptMs)
        .add("last_reply", lastReply).add("busy", e.busy);
    if (!env.quarantineReason.empty()) o.add("reason", env.quarantineReason);
    if (cursor.any) out.push_back(',');
    cursor.any = true;
    out.push_back('{');
    out += o.members();
    out.push_back('}');
  }
  if (it == entries_.end() || it->first > cursor.last) {
    out += "]}";
    cursor.done = true;
  }
}

std::string QueueManager::show(const std::string& id) const {
  auto it = entries_.find(id);
  if (it == entries_.end()) return mta::JsonObject().add("ok", false).add("error", "no such message: " + id).str();
  const auto& env = it->second.env;
  mta::JsonArray rcpts;
  for (const auto& r : env.rcpts) {
    mta::JsonObject o;
    o.add("address", r.address).add("status", statusName(r.status)).add("attempts", r.attempts)
        .add("last_reply", r.lastReply).add("relay", r.relay);
    if (!r.notify.empty()) o.add("notify", r.notify);  // RFC 3461 requests, as received
    if (!r.orcpt.empty()) o.add("orcpt", r.orcpt);
    rcpts.addRaw(o.str());
  }
  mta::JsonArray headers;
  for (const auto& [n, v] : env.headers) headers.add(n + ": " + v);
  mta::JsonArray edits;  // what the content filters rewrite at delivery
  for (const auto& e : env.edits)
    edits.addRaw(mta::JsonObject().add("offset", e.offset).add("length", e.length).add("why", e.why).str());
  mta::JsonObject o;
  o.add("ok", true).add("id", env.id).add("area", areaLabel(env.area)).add("from", env.mailFrom)
      .add("message_id", env.messageId).add("client_ip", env.clientIp).add("helo", env.helo)
      .add("protocol", env.protocol).add("size", env.size).add("arrival_ms", env.arrivalMs)
      .add("attempts", env.attempts).add("next_attempt_ms", env.nextAttemptMs).add("is_bounce", env.isBounce)
      .add("reason", env.quarantineReason).addRaw("recipients", rcpts.str()).addRaw("headers", headers.str());
  if (!edits.empty()) o.addRaw("edits", edits.str());
  if (!env.envid.empty()) o.add("envid", env.envid);
  if (!env.ret.empty()) o.add("ret", env.ret);
  if (env.requireTls) o.add("requiretls", true);  // RFC 8689: as on its log lines, absent otherwise
  if (!env.expanded.empty()) {  // the "expanded" report NOTIFY=SUCCESS asked for, not yet sent
    mta::JsonArray owed;
    for (const auto& x : env.expanded) owed.add(x.address);
    o.addRaw("expanded_report_owed", owed.str());
  }
  return o.str();
}

void QueueManager::readMessage(const std::string& id, bool headersOnly,
                               std::function<void(std::string, std::shared_ptr<const MessageCopy>)> done) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return done("no such message: " + id, nullptr);
  auto copy = std::make_shared<MessageCopy>();
  copy->area = areaLabel(it->second.env.area);
  copy->prefix = serializeHeaders(it->second.env.headers);  // as route() makes it for delivery
  auto error = std::make_shared<std::string>();
  auto spool = spool_;
  auto alive = alive_;
  uv::queueWork(
      loop_,
      [spool, id, copy, error, headersOnly, edits = it->second.env.edits] {
        // The bytes delivery reads (loadData): the stored file with the filters' edits.
        copy->body = queue::deliveredData(spool->openData(id, *error), edits);
        if (!copy->body) return;
        std::string_view body = copy->body->bytes();
        copy->length = copy->prefix.size() + body.size();
        if (!headersOnly) return;
        // The header section of prefix + body: the gateway's lines are all header lines.
        size_t end = mta::headerBlock(body).size();
        if (end < body.size()) end += body.compare(end, 2, "\r\n") == 0 ? 2 : 1;  // the empty line
        copy->length = copy->prefix.size() + end;
      },
      [alive, id, copy, error, done = std::move(done)] {
        if (!*alive) return;
        if (!copy->body) {
          // Deleted or delivered between the request and the read: as for an unknown id.
          bool gone = queue::errorKind(*error) == queue::ErrorKind::NotFound;
          return done(gone ? "no such message: " + id : "cannot read message " + id + ": " + *error, nullptr);
        }
        done("", copy);
      });
}

std::string QueueManager::flush(const std::string& id) {
  unreachable_.clear();  // the admin says: try now
  size_t n = 0;
  if (!id.empty()) {
    int r = flushOne(id);
    if (r < 0) return mta::JsonObject().add("ok", false).add("error", "no such message: " + id).str();
    n = static_cast<size_t>(r);
  } else {
    for (auto& [mid, e] : entries_) {
      if (e.env.area != queue::Area::Active || e.busy) continue;
      e.atOnce.clear();  // every recipient now
      schedule(mid, 0);
      ++n;
    }
  }
  armTimer();
  return mta::JsonObject().add("ok", true).add("flushed", static_cast<uint64_t>(n)).str();
}

int QueueManager::flushOne(const std::string& id) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return -1;
  auto& e = it->second;
  if (e.env.area != queue::Area::Active || e.busy) return 0;
  unreachable_.clear();
  e.atOnce.clear();
  schedule(id, 0);
  armTimer();
  return 1;
}

template <class F>
void QueueManager::walk(SelectCursor& cursor, size_t maxVisits, F&& f) const {
  if (cursor.done) return;
  auto it = entries_.begin();
  if (!cursor.begun) {
    cursor.begun = true;
    cursor.nowMs = nowMs();
    if (!entries_.empty()) cursor.last = entries_.rbegin()->first;
  } else {
    it = entries_.upper_bound(cursor.after);  // the last one looked at may be gone since
  }
  const std::string& action = cursor.action;
  for (size_t visits = 0; it != entries_.end() && it->first <= cursor.last && visits < maxVisits; ++it, ++visits) {
    const auto& [id, e] = *it;
    cursor.after = id;
    auto area = e.env.area;
    if ((action == "hold" && area == queue::Area::Hold) || (action == "release" && area == queue::Area::Active) ||
        (action == "flush" && area != queue::Area::Active))
      continue;
    if (cursor.select.matches(e.env, cursor.nowMs)) f(id, e);
  }
  if (it == entries_.end() || it->first > cursor.last) cursor.done = true;
}

void QueueManager::selectSlice(SelectCursor& cursor, std::vector<std::string>& ids, size_t maxVisits) const {
  walk(cursor, maxVisits, [&ids](const std::string& id, const Entry&) { ids.push_back(id); });
}

void QueueManager::summarySlice(SelectCursor& cursor, QueueSummary& summary, size_t maxVisits) const {
  walk(cursor, maxVisits, [&](const std::string&, const Entry& e) { summary.add(e.env, cursor.nowMs); });
}

void QueueManager::hold(const std::string& id, std::function<void(std::string)> reply) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return reply(mta::JsonObject().add("ok", false).add("error", "no such message: " + id).str());
  if (it->second.busy) return reply(busyReply());
  auto env = it->second.env;
  env.area = queue::Area::Hold;
  it->second.atOnce.clear();
  // Busy and off the schedule while the files move: no delivery may start once the admin
  // asked for the hold, and no other command may act on the message halfway.
  sched_.remove(id);
  setBusyForMove(it->second, true);
  spool_->move(env, queue::Area::Hold, [this, alive = alive_, id, env, reply](bool ok, std::string error) {
    if (!*alive) return;
    auto it2 = entries_.find(id);
    if (it2 != entries_.end()) setBusyForMove(it2->second, false);
    if (!ok) {
      if (it2 != entries_.end() && it2->second.env.area == queue::Area::Active)
        schedule(id, it2->second.env.nextAttemptMs);
      armTimer();
      finishDrainIfDone();
      return reply(mta::JsonObject().add("ok", false).add("error", error).str());
    }
    if (it2 != entries_.end()) setArea(it2->second, queue::Area::Hold);
    updateGauges();
    log::info("hold").add("queue_id", id);
    finishDrainIfDone();
    reply(mta::JsonObject().add("ok", true).add("id", id).str());
  });
}

void QueueManager::release(const std::string& id, std::function<void(std::string)> reply) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return reply(mta::JsonObject().add("ok", false).add("error", "no such message: " + id).str());
  if (it->second.busy) return reply(busyReply());
  auto env = it->second.env;
  if (env.area == queue::Area::Active) return reply(mta::JsonObject().add("ok", false).add("error", "message is not held").str());
  std::string from = areaLabel(env.area);
  env.area = queue::Area::Active;
  env.nextAttemptMs = nowMs();
  setBusyForMove(it->second, true);
  spool_->move(env, queue::Area::Active, [this, alive = alive_, id, env, reply, from](bool ok, std::string error) {
    if (!*alive) return;
    auto it2 = entries_.find(id);
    if (it2 != entries_.end()) setBusyForMove(it2->second, false);
    if (!ok) {
      finishDrainIfDone();
      return reply(mta::JsonObject().add("ok", false).add("error", error).str());
    }
    if (it2 != entries_.end()) {
      setArea(it2->second, env.area);
      it2->second.env = env;
    }
    log::info("release").add("queue_id", id).add("from_area", from);
    unreachable_.clear();  // as for flush: the admin wants it tried now
    schedule(id, 0);
    updateGauges();
    armTimer();
    finishDrainIfDone();
    reply(mta::JsonObject().add("ok", true).add("id", id).str());
  });
}

void QueueManager::remove(const std::string& id, std::function<void(std::string)> reply) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return reply(mta::JsonObject().add("ok", false).add("error", "no such message: " + id).str());
  if (it->second.busy) return reply(busyReply());
  log::info("delete").add("queue_id", id);
  // The answer waits for the files: "ok" to an admin means the message is gone, not that
  // its removal is queued (a stop or crash meanwhile would bring it back at the next start).
  auto alive = alive_;
  retire(id, [alive, id, reply](bool ok, std::string error) {
    if (!*alive) return;
    if (ok) return reply(mta::JsonObject().add("ok", true).add("id", id).str());
    reply(mta::JsonObject()
              .add("ok", false)
              .add("error", "removing " + id + " failed: " + error + "; it is back in the queue at the next start")
              .str());
  });
  updateGauges();
}

void QueueManager::bounce(const std::string& id, std::function<void(std::string)> reply) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return reply(mta::JsonObject().add("ok", false).add("error", "no such message: " + id).str());
  if (it->second.busy) return reply(busyReply());
  // The DSN quotes the message: read it first (off the loop), then decide.
  loadData(id, [this, id, reply](std::shared_ptr<const queue::MessageData> data, std::string) {
    auto it = entries_.find(id);
    if (it == entries_.end()) return reply(mta::JsonObject().add("ok", false).add("error", "no such message: " + id).str());
    if (it->second.busy) return reply(busyReply());
    auto& env = it->second.env;
    std::vector<size_t> failed;
    auto before = env.rcpts;
    for (size_t i = 0; i < env.rcpts.size(); ++i) {
      auto& r = env.rcpts[i];
      if (r.status != queue::RcptStatus::Pending) continue;
      r.status = queue::RcptStatus::Failed;
      r.lastReply = "5.0.0 returned to sender by the administrator" + (r.lastReply.empty() ? "" : "; last error: " + r.lastReply);
      failed.push_back(i);
      log::info("bounce").add("queue_id", id).add("to", r.address).add("reply", r.lastReply);
    }
    // The original goes only once its DSN is durable (see finishAttempt); busy meanwhile.
    it->second.busy = true;
    busy_.insert(id);
    auto alive = alive_;
    size_t bounced = failed.size();
    sendDsn(
        env, failed, DsnKind::Failure, data, nullptr,
        [this, alive, id, bounced, reply, before](bool written, const std::string& error) {
          if (!*alive) return;
          busy_.erase(id);
          if (!written) {  // the message stays as it was, to be bounced again once there is room
            if (auto it = entries_.find(id); it != entries_.end()) {
              it->second.busy = false;
              it->second.env.rcpts = before;
            }
            updateGauges();
            finishDrainIfDone();
            return reply(mta::JsonObject().add("ok", false).add("error", "DSN not written: " + error).str());
          }
          server::metrics().recipientsBounced += bounced;
          retire(id);
          updateGauges();
          finishDrainIfDone();
          reply(mta::JsonObject().add("ok", true).add("id", id).add("bounced", static_cast<uint64_t>(bounced)).str());
        });
  });
}

}  // namespace moat::mta::daemon
