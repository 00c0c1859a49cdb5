// mta/server/recipient_verifier.cc — see recipient_verifier.h.
#include "mta/server/recipient_verifier.h"

#include <algorithm>

#include "mta/dns/resolve_host.h"
#include "mta/runtime/uv.h"
#include "policy/list_file.h"

namespace moat::mta::server {

namespace {

bool positive(int code) { return code >= 200 && code < 300; }
bool permanent(int code) { return code >= 500 && code < 600; }

// What a probe to `route` shares its cache entries and its slots with: the next hops and
// how they are reached (TLS, trust anchors, credentials). Another route to the same hosts
// the same way shares both.
std::string routeKey(const policy::Route& route) {
  std::string k;
  for (const auto& t : route.to)
    if (t.isHost()) k += t.str() + ",";
  k += "tls=" + std::to_string(static_cast<int>(route.tls));
  if (route.tls == policy::TlsPolicy::Verify) k += ",ca=" + route.caFile;
  if (!route.authFile.empty()) k += ",auth=" + route.authFile;
  if (!route.tlsCert.empty()) k += ",cert=" + route.tlsCert;
  // What the next hop sees of the client can change its answer (an address it trusts).
  return k + route.sourceKey();
}

std::string seconds(std::chrono::milliseconds ms) {
  auto s = ms.count() / 1000;
  return s * 1000 == ms.count() ? std::to_string(s) + "s" : std::to_string(ms.count()) + "ms";
}

}  // namespace

const char* verifyResultName(VerifyResult r) {
  switch (r) {
    case VerifyResult::Valid: return "valid";
    case VerifyResult::Invalid: return "invalid";
    case VerifyResult::Unknown: return "unknown";
  }
  return "unknown";
}

std::string quoteReply(std::string_view text, size_t max) {
  std::string out;
  for (char c : text) {
    if (out.size() >= max) break;
    unsigned char u = static_cast<unsigned char>(c);
    if (c == '\r') continue;
    // The lines of a multi-line reply joined by a space; nothing the client's terminal or
    // our reply syntax could take for something else.
    out.push_back(c == '\n' ? ' ' : (u < 0x20 || u > 0x7e) ? '?' : c);
  }
  return out;
}

VerifyOutcome decideProbe(const std::string& error, const client::Reply& mail, const client::Reply& rcpt) {
  VerifyOutcome o;
  if (!error.empty()) {
    o.reply = quoteReply(error, RecipientVerifier::kQuotedReply);
    return o;
  }
  if (!positive(mail.code)) {
    // Refusing the null sender is the next hop's policy on bounces, not an answer about
    // the recipient; never a reason to refuse it for good.
    o.reply = quoteReply(mail.code ? mail.text : "no reply to MAIL", RecipientVerifier::kQuotedReply);
    return o;
  }
  o.reply = quoteReply(rcpt.code ? rcpt.text : "no reply to RCPT", RecipientVerifier::kQuotedReply);
  if (positive(rcpt.code)) o.result = VerifyResult::Valid;
  if (permanent(rcpt.code)) o.result = VerifyResult::Invalid;
  return o;
}

// ---- cache -----------------------------------------------------------------------------------

std::string VerifyCache::key(std::string_view address, std::string_view route) {
  return policy::lowerAscii(address) + "\n" + std::string(route);
}

const VerifyCache::Entry* VerifyCache::find(const std::string& key, uint64_t nowMs) {
  auto it = map_.find(key);
  if (it == map_.end()) return nullptr;
  if (it->second.entry.expiresMs <= nowMs) {
    order_.erase(it->second.pos);
    map_.erase(it);
    return nullptr;
  }
  order_.splice(order_.end(), order_, it->second.pos);
  return &it->second.entry;
}

void VerifyCache::put(const std::string& key, Entry entry) {
  if (max_ == 0) return;
  if (auto it = map_.find(key); it != map_.end()) {
    it->second.entry = std::move(entry);
    order_.splice(order_.end(), order_, it->second.pos);
    return;
  }
  while (map_.size() >= max_) {
    map_.erase(order_.front());
    order_.pop_front();
  }
  order_.push_back(key);
  map_.emplace(key, Slot{std::move(entry), std::prev(order_.end())});
}

// ---- probes ----------------------------------------------------------------------------------

struct RecipientVerifier::Probe {
  std::string key, hopKey, address;
  std::shared_ptr<const Snapshot> snap;  // keeps `route` and the TLS contexts alive
  const policy::Route* route = nullptr;
  std::vector<Done> waiters;
  std::unique_ptr<uv::Timer> timer;  // verify_timeout
  std::unique_ptr<uv::Timer> kick;   // the start, on the loop's next turn
  client::Options opts;
  std::vector<policy::RouteTarget> targets;  // the route's smtp: and lmtp: next hops, in order
  size_t nextTarget = 0;
  struct Address {
    IpAddress ip;
    uint16_t port = 0;
    std::string name;
    bool lmtp = false;   // an lmtp: target: LHLO (RFC 2033)
    std::string socket;  // lmtp:unix:PATH: the socket (`ip` and `port` unused)
  };
  std::deque<Address> addresses;  // of the target being tried
  std::string lastError;
  std::shared_ptr<client::SmtpClient> client;  // while the probe's transaction runs
  bool holdsSlot = false, done = false;
};

RecipientVerifier::RecipientVerifier(uv_loop_t* loop, dns::Resolver* resolver) : loop_(loop), resolver_(resolver) {}

RecipientVerifier::~RecipientVerifier() {
  *alive_ = false;
  for (auto& [key, p] : inFlight_) {
    p->done = true;
    if (auto c = std::move(p->client)) c->abort();
  }
}

const policy::Route* RecipientVerifier::routeToVerify(const policy::Config& c, const std::string& domain,
                                                      const std::string& routeDomain, std::string_view sender) {
  if (!c.verifyRecipients || !c.isRelayDomain(domain)) return nullptr;
  const policy::Route* r = c.routeFor(policy::lowerAscii(routeDomain.empty() ? domain : routeDomain), sender);
  if (!r || r->to.empty() || !r->to.front().isHost()) return nullptr;
  return r;
}

RecipientVerifier::Load RecipientVerifier::load(const policy::Route& route) const {
  auto it = hops_.find(routeKey(route));
  if (it == hops_.end()) return {};
  return {it->second.active, it->second.waiting.size()};
}

std::optional<VerifyOutcome> RecipientVerifier::verify(const std::shared_ptr<const Snapshot>& snap,
                                                       const policy::Route& route, const std::string& address,
                                                       Done done) {
  std::string hopKey = routeKey(route);
  std::string key = VerifyCache::key(address, hopKey);
  if (const auto* e = cache_.find(key, uv_now(loop_))) return VerifyOutcome{e->result, e->reply, e->relay, true};
  if (auto it = inFlight_.find(key); it != inFlight_.end()) {
    it->second->waiters.push_back(std::move(done));
    return std::nullopt;
  }
  auto p = std::make_shared<Probe>();
  p->key = key;
  p->hopKey = hopKey;
  p->address = address;
  p->snap = snap;
  p->route = &route;
  p->waiters.push_back(std::move(done));
  inFlight_[key] = p;
  // The whole probe, its wait for a slot included: the client at the other end waits for it.
  const auto& cfg = *snap->config;
  p->timer = std::make_unique<uv::Timer>(loop_);
  std::weak_ptr<Probe> weak = p;
  auto alive = alive_;
  p->timer->start(static_cast<uint64_t>(cfg.verifyTimeout.count()), [this, alive, weak, t = cfg.verifyTimeout] {
    auto pp = weak.lock();
    if (!*alive || !pp) return;
    VerifyOutcome o;
    o.reply = "no answer within verify_timeout (" + seconds(t) + ")" +
              (pp->lastError.empty() ? "" : "; " + quoteReply(pp->lastError, kQuotedReply));
    finish(pp, std::move(o));
  });
  Hop& hop = hops_[hopKey];
  if (hop.active >= kMaxProbesPerHop) {
    hop.waiting.push_back(p);
    return std::nullopt;
  }
  // Started on the next turn of the loop, with its slot taken now: `done` never runs before
  // this returns, whatever the probe finds at once.
  ++hop.active;
  p->holdsSlot = true;
  p->kick = std::make_unique<uv::Timer>(loop_);
  p->kick->start(0, [this, alive, weak] {
    auto pp = weak.lock();
    if (*alive && pp && !pp->done) start(pp);
  });
  return std::nullopt;
}

void RecipientVerifier::start(const std::shared_ptr<Probe>& p) {
  if (!p->holdsSlot) {
    ++hops_[p->hopKey].active;
    p->holdsSlot = true;
  }
  const auto& snap = *p->snap;
  const auto& cfg = *snap.config;
  const auto& route = *p->route;
  // The route's TLS as its deliveries have it (queue_manager.cc): "dane" asks for TLS
  // without the TLSA lookups a delivery makes, so a probe never goes in plain text there.
  auto& o = p->opts;
  // From the route's source address, with its EHLO name, as its deliveries go: a next hop
  // that answers by client address or name answers the probe as it will the mail.
  o.heloName = route.heloName.empty() ? cfg.hostname : route.heloName;
  o.sourceIpv4 = route.sourceIpv4;
  o.sourceIpv6 = route.sourceIpv6;
  o.tls = route.tls == policy::TlsPolicy::None  ? client::TlsMode::None
          : route.tls == policy::TlsPolicy::May ? client::TlsMode::May
                                                : client::TlsMode::Require;
  o.tlsCtx = o.tls == client::TlsMode::None ? nullptr : snap.clientTls;
  if (route.tls == policy::TlsPolicy::Verify) {
    auto it = snap.verifyingClientTls.find(route.caFile);
    if (it == snap.verifyingClientTls.end())
      return finish(p, {VerifyResult::Unknown, "no verifying TLS context for the route", "", false});
    o.tlsCtx = it->second;
  }
  if (!route.authFile.empty()) {
    auto it = snap.routeCredentials.find(route.authFile);
    if (it == snap.routeCredentials.end())
      return finish(p, {VerifyResult::Unknown, "no credentials loaded for the route's auth_file", "", false});
    o.auth = std::make_shared<const client::Credentials>(it->second->username(), it->second->password());
  }
  // [[route]] tls_cert: presented as the route's deliveries present it; never left out.
  bool certMissing = false;
  if (auto cert = snap.clientCertificate(route, certMissing); cert && o.tlsCtx) {
    o.tlsCtx = tls::TlsContext::withClientCertificate(o.tlsCtx, std::move(cert));
  } else if (certMissing) {
    return finish(p, {VerifyResult::Unknown, "no client certificate loaded for the route's tls_cert", "", false});
  }
  // verify_timeout bounds the probe as a whole (the timer); these only make each step give up
  // no later than that.
  uint64_t limit = static_cast<uint64_t>(cfg.verifyTimeout.count());
  o.connectTimeoutMs = std::min<uint64_t>(limit, static_cast<uint64_t>(cfg.connectTimeout.count()));
  o.greetingTimeoutMs = o.commandTimeoutMs = limit;
  for (const auto& t : route.to)
    if (t.isHost()) p->targets.push_back(t);
  tryAddress(p);
}

// The next address of the current target, else the next target's addresses (looked up),
// in the route's order, as a delivery tries them; none left: unknown.
void RecipientVerifier::tryAddress(const std::shared_ptr<Probe>& p) {
  if (p->done) return;
  if (p->addresses.empty()) {
    if (p->nextTarget >= p->targets.size())
      return finish(
          p, {VerifyResult::Unknown,
              quoteReply(p->lastError.empty() ? "no next hop reachable" : p->lastError, kQuotedReply), "", false});
    const policy::RouteTarget t = p->targets[p->nextTarget++];
    const bool lmtp = t.kind == policy::RouteTarget::Kind::Lmtp;
    if (!t.socket.empty()) {  // lmtp:unix:PATH: nothing to look up
      Probe::Address a;
      a.lmtp = true;
      a.socket = t.socket;
      p->addresses.push_back(std::move(a));
      return tryAddress(p);
    }
    const auto& cfg = *p->snap->config;
    dns::Families families{cfg.useIpv4, cfg.useIpv6};
    if (auto ip = IpAddress::parse(t.host)) {
      if (families.allows(*ip)) p->addresses.push_back({*ip, t.port, "", lmtp, ""});
      return tryAddress(p);
    }
    auto alive = alive_;
    dns::resolveHost(
        *resolver_, t.host,
        [this, alive, p, host = t.host, port = t.port, lmtp](dns::Status status, std::vector<IpAddress> ips) {
          if (!*alive || p->done) return;
          if (status != dns::Status::Ok)
            p->lastError = status == dns::Status::TempFail ? "DNS lookup of " + host + " failed temporarily"
                                                           : "host " + host + " not found";
          for (const auto& ip : ips) p->addresses.push_back({ip, port, host, lmtp, ""});
          tryAddress(p);
        },
        families);
    return;
  }
  Probe::Address a = p->addresses.front();
  p->addresses.pop_front();
  client::Options o = p->opts;
  o.lmtp = a.lmtp;
  // Named as the queue manager's `deliver` line names the next hop.
  std::string relay;
  if (!a.socket.empty()) {
    relay = "lmtp:unix:" + a.socket;
  } else {
    o.sni = a.name.empty() ? a.ip.str() : a.name;
    relay = a.name.empty() ? a.ip.withPort(a.port) : a.name + "[" + a.ip.str() + "]:" + std::to_string(a.port);
    if (a.lmtp) relay = "lmtp:" + relay;
  }
  auto alive = alive_;
  auto connected = [this, alive, p, relay](std::shared_ptr<client::SmtpClient> c, const std::string& error,
                                           const client::Reply& greeting) {
    if (!*alive || p->done) {
      if (c) c->abort();
      return;
    }
    if (!c) {
      std::string why = error.empty() ? greeting.text : error;
      if (!error.empty() && greeting.code != 0) why += ": " + greeting.text;
      p->lastError = relay + ": " + why;
      return tryAddress(p);
    }
    asked(p, std::move(c), relay);
  };
  // An LMTP server's Unix socket is connected on the loop too (uv_pipe), never blocking.
  if (!a.socket.empty()) return client::SmtpClient::connectUnix(loop_, a.socket, std::move(o), std::move(connected));
  client::SmtpClient::connect(loop_, a.ip, a.port, std::move(o), std::move(connected));
}

void RecipientVerifier::asked(const std::shared_ptr<Probe>& p, std::shared_ptr<client::SmtpClient> c,
                              const std::string& relay) {
  p->client = c;
  client::Transaction t;
  t.mailFrom = "";  // the null sender: nothing the next hop may send back to
  t.rcpts = {p->address};
  t.probe = true;
  auto alive = alive_;
  c->send(std::move(t), [this, alive, p, relay](client::TransactionResult r) {
    if (!*alive || p->done) return;
    auto c = std::move(p->client);
    VerifyOutcome o = decideProbe(r.error.empty() ? "" : relay + ": " + r.error, r.mail,
                                  r.rcpts.empty() ? client::Reply{} : r.rcpts[0]);
    if (r.error.empty()) o.relay = relay;
    if (c) c->quit();  // keeps itself alive until the reply, bounded by its command timeout
    finish(p, std::move(o));
  });
}

void RecipientVerifier::finish(const std::shared_ptr<Probe>& p, VerifyOutcome outcome) {
  if (p->done) return;
  p->done = true;
  p->timer->stop();
  if (auto c = std::move(p->client)) c->abort();  // the timeout, in the middle of the probe
  const auto& cfg = *p->snap->config;
  uint64_t ttl = outcome.result == VerifyResult::Valid ? static_cast<uint64_t>(cfg.verifyPositiveTtl.count())
                 : outcome.result == VerifyResult::Invalid
                     ? static_cast<uint64_t>(cfg.verifyNegativeTtl.count())
                     : std::min<uint64_t>(kUnknownTtlMs, cfg.verifyNegativeTtl.count());
  cache_.put(p->key, {outcome.result, outcome.reply, outcome.relay, uv_now(loop_) + ttl});
  inFlight_.erase(p->key);
  // The slot goes to the next probe waiting for this next hop; they start once hops_ is
  // settled (a start may end at once and come back here).
  std::vector<std::shared_ptr<Probe>> next;
  if (auto it = hops_.find(p->hopKey); it != hops_.end()) {
    Hop& hop = it->second;
    if (p->holdsSlot) {
      p->holdsSlot = false;
      --hop.active;
    } else {
      std::erase(hop.waiting, p);  // timed out while waiting for a slot: it waits no more
    }
    while (hop.active + next.size() < kMaxProbesPerHop && !hop.waiting.empty()) {
      if (!hop.waiting.front()->done) next.push_back(std::move(hop.waiting.front()));
      hop.waiting.pop_front();
    }
    if (hop.active == 0 && hop.waiting.empty() && next.empty()) hops_.erase(it);
  }
  for (auto& n : next) start(n);
  auto waiters = std::move(p->waiters);
  for (auto& w : waiters)
    if (w) w(outcome);
}

}  // namespace moat::mta::server
