// mta/dns/cares_resolver.cc — see cares_resolver.h.
//
// Re-entrancy: c-ares calls aresCallback from inside ares_process_fd/ares_query. We never
// run user callbacks there: finished answers are queued (completed_) and delivered once
// c-ares has returned, so a user callback may start queries or destroy the resolver.
// `alive_` tells the delivery loop that the resolver is gone.
#include "mta/dns/cares_resolver.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "mta/runtime/log.h"

namespace moat::mta::dns {

namespace {
constexpr int kMaxFollow = 8;
constexpr int kClassIn = 1;
constexpr int kEdnsPayload = 1232;  // avoids IP fragmentation (DNS flag day 2020)

void libraryInit() {
  static std::once_flag once;
  std::call_once(once, [] { ares_library_init(ARES_LIB_INIT_ALL); });
}

Answer failed(Status s, std::string why) {
  Answer a;
  a.status = s;
  a.error = std::move(why);
  return a;
}

// c-ares treats '\' in a name as an escape; a peer's octets must reach the wire as they are.
std::string escapeForAres(const std::string& name) {
  std::string out;
  out.reserve(name.size());
  for (char c : name) {
    if (c == '\\') out += '\\';
    out += c;
  }
  return out;
}
}  // namespace

struct CaresResolver::Call {
  CaresResolver* self;
  std::string key;    // the in-flight entry this answers
  std::string qname;  // the name asked (differs from the key's after a CNAME follow-up)
  RrType type;
  int depth;
  uint32_t chainTtl;
  bool chainAuthenticated;  // every reply of the CNAME chain so far had the AD bit
};

struct CaresResolver::SocketWatch {
  CaresResolver* owner;
  ares_socket_t fd;
  uv::Handle<uv_poll_t> poll;
};

CaresResolver::CaresResolver(uv_loop_t* loop, CaresOptions options)
    : loop_(loop), options_(std::move(options)), timer_(loop), cache_(options_.cacheEntries, options_.cacheBytes) {
  if (!init(loop)) {
    log::warn("dns_error").add("error", initError_);
    if (channel_) {
      ares_destroy(channel_);
      channel_ = nullptr;
    }
  }
}

CaresResolver::CaresResolver(uv_loop_t* loop, std::vector<std::string> nameservers, unsigned timeoutMs,
                             unsigned tries)
    : CaresResolver(loop, [&] {
        CaresOptions o;
        o.nameservers = std::move(nameservers);
        o.timeoutMs = timeoutMs;
        o.tries = tries;
        return o;
      }()) {}

bool CaresResolver::init(uv_loop_t*) {
  libraryInit();
  ares_options opts{};
  opts.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES | ARES_FLAG_EDNS;
  // c-ares waits `timeout` on the first round and doubles it on each further one: share the
  // budget so one nameserver's tries fit in it (the deadline in query() bounds the rest).
  const unsigned tries = std::clamp(options_.tries, 1u, 8u);
  opts.timeout = static_cast<int>(std::max(1u, options_.timeoutMs / ((1u << tries) - 1)));  // ms (TIMEOUTMS)
  opts.tries = static_cast<int>(tries);
  opts.ednspsz = kEdnsPayload;
  opts.sock_state_cb = &CaresResolver::sockStateCb;
  opts.sock_state_cb_data = this;
  const int mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_EDNSPSZ |
                   ARES_OPT_SOCK_STATE_CB;
  int rc = ares_init_options(&channel_, &opts, mask);
  if (rc != ARES_SUCCESS) {
    channel_ = nullptr;
    initError_ = std::string("c-ares init: ") + ares_strerror(rc);
    return false;
  }
  return setServers();
}

bool CaresResolver::setServers() {
  if (options_.nameservers.empty()) return true;  // c-ares read /etc/resolv.conf
  std::vector<ares_addr_port_node> nodes(options_.nameservers.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    const std::string& text = options_.nameservers[i];
    auto hp = parseHostPort(text, 53);
    auto ip = hp ? IpAddress::parse(hp->host) : std::nullopt;
    if (!ip) {
      initError_ = "invalid nameserver \"" + text + "\" (want IP[:PORT])";
      return false;
    }
    ares_addr_port_node& n = nodes[i];
    n.family = ip->isV4() ? AF_INET : AF_INET6;
    if (ip->isV4())
      std::memcpy(&n.addr.addr4, ip->bytes(), 4);
    else
      std::memcpy(&n.addr.addr6, ip->bytes(), 16);
    n.udp_port = n.tcp_port = hp->port;
    n.next = i + 1 < nodes.size() ? &nodes[i + 1] : nullptr;
  }
  int rc = ares_set_servers_ports(channel_, nodes.data());
  if (rc != ARES_SUCCESS) {
    initError_ = std::string("c-ares servers: ") + ares_strerror(rc);
    return false;
  }
  return true;
}

CaresResolver::~CaresResolver() {
  *alive_ = false;
  shuttingDown_ = true;
  // ares_destroy calls every pending c-ares callback with ARES_EDESTRUCTION (ignored
  // there) and reports each socket closed through sockStateCb (which closes its poll).
  if (channel_) ares_destroy(channel_);
  channel_ = nullptr;
  sockets_.clear();
  timer_.stop();
  auto done = std::move(completed_);
  auto pending = std::move(inflight_);
  for (auto& d : done) d.cb(*d.answer);
  const Answer down = failed(Status::TempFail, "resolver shut down");
  for (auto& [key, f] : pending)
    for (auto& cb : f.waiters) cb(down);
}

void CaresResolver::query(std::string_view name, RrType type, Callback cb) {
  ++stats_.queries;
  if (shuttingDown_) return cb(failed(Status::TempFail, "resolver shut down"));
  if (!channel_) return cb(failed(Status::TempFail, initError_));
  auto canonical = canonicalName(name);
  if (!canonical) return cb(failed(Status::Malformed, "invalid domain name"));
  std::string key = AnswerCache::key(*canonical, type);
  if (auto hit = cache_.get(key, uv_now(loop_))) {
    ++stats_.cacheHits;
    return cb(*hit);  // nothing of `this` is touched after a user callback
  }
  if (auto it = inflight_.find(key); it != inflight_.end()) {
    ++stats_.coalesced;
    it->second.waiters.push_back(std::move(cb));
    return;
  }
  Inflight& f = inflight_[key];
  f.name = *canonical;
  f.type = type;
  f.waiters.push_back(std::move(cb));
  f.deadline = std::make_unique<uv::Timer>(loop_);
  f.deadline->start(options_.timeoutMs, [this, key] {
    // c-ares may still answer later: finish() then finds no lookup (or a newer one for the
    // same question, which the answer serves as well).
    finish(key, failed(Status::TempFail, "timeout after " + std::to_string(options_.timeoutMs) + " ms"), true);
    deliver();
  });
  send(key, *canonical, type, 0, UINT32_MAX, true);
  rearmTimer();
  deliver();  // ares_query may fail at once (then the answer is already queued)
}

void CaresResolver::send(const std::string& key, const std::string& qname, RrType type, int depth, uint32_t chainTtl,
                         bool chainAuthenticated) {
  ++stats_.sent;
  auto call = std::make_unique<Call>(Call{this, key, qname, type, depth, chainTtl, chainAuthenticated});
  // The query is built here rather than by ares_query, which sets neither AD nor DO: a
  // validating resolver says whether it validated an answer (the AD bit) only when the
  // query asked with AD or DO (RFC 6840 §5.7). AD is set on every query: it costs nothing,
  // and non-validating servers ignore it (RFC 6840 §5.7 asks them to clear it in replies).
  unsigned char* qbuf = nullptr;
  int qlen = 0;
  int rc = ares_create_query(escapeForAres(qname).c_str(), kClassIn, static_cast<int>(type), 0, 1, &qbuf, &qlen,
                             kEdnsPayload);
  std::unique_ptr<unsigned char, decltype(&ares_free_string)> owned(qbuf, &ares_free_string);
  if (rc != ARES_SUCCESS || qlen < 12) {
    // As ares_query reports it: through the callback, so the answer is queued like any other.
    return aresCallback(call.release(), rc != ARES_SUCCESS ? rc : ARES_EBADQUERY, 0, nullptr, 0);
  }
  qbuf[3] |= 0x20;  // AD (RFC 4035 §3.2.3)
  // c-ares owns `call` until sendCallback, which it calls exactly once (also on destroy);
  // it copies the query, and sets a fresh random ID in its copy.
  ares_send(channel_, qbuf, qlen, &CaresResolver::sendCallback, call.release());
}

// ares_send hands over any reply as ARES_SUCCESS; the RCODE is mapped here as ares_query
// maps it, so parseReply sees the statuses it always saw.
void CaresResolver::sendCallback(void* arg, int status, int timeouts, unsigned char* abuf, int alen) {
  if (status == ARES_SUCCESS && abuf && alen >= 12) {
    const int ancount = abuf[6] << 8 | abuf[7];
    switch (abuf[3] & 0x0f) {
      case 0: status = ancount > 0 ? ARES_SUCCESS : ARES_ENODATA; break;
      case 1: status = ARES_EFORMERR; break;
      case 2: status = ARES_ESERVFAIL; break;
      case 3: status = ARES_ENOTFOUND; break;
      case 4: status = ARES_ENOTIMP; break;
      case 5: status = ARES_EREFUSED; break;
      default: status = ARES_EBADRESP; break;
    }
  } else if (status == ARES_SUCCESS) {
    status = ARES_EBADRESP;
  }
  aresCallback(arg, status, timeouts, abuf, alen);
}

void CaresResolver::aresCallback(void* arg, int status, int, unsigned char* abuf, int alen) {
  std::unique_ptr<Call> call(static_cast<Call*>(arg));
  if (status == ARES_EDESTRUCTION || call->self->shuttingDown_) return;
  call->self->onReply(*call, status, abuf, alen);
}

void CaresResolver::onReply(const Call& call, int status, const unsigned char* abuf, int alen) {
  ParsedReply r = parseReply(status, abuf, alen, call.qname, call.type, options_.ttl);
  const uint32_t chainTtl = std::min(call.chainTtl, r.chainTtl);
  // An answer reached through a CNAME is only as authenticated as every step to it.
  r.answer.authenticated = r.answer.authenticated && call.chainAuthenticated;
  if (r.follow) {
    if (call.depth >= kMaxFollow) return finish(call.key, failed(Status::TempFail, "CNAME chain too long"));
    return send(call.key, *r.follow, call.type, call.depth + 1, chainTtl, r.answer.authenticated);
  }
  if (r.answer.status == Status::Ok || r.answer.status == Status::NoData ||
      r.answer.status == Status::NxDomain)
    r.answer.ttl = std::min(r.answer.ttl, chainTtl);
  // After a follow-up the records are at the name asked last, unless its reply went on.
  if (r.answer.status == Status::Ok && call.depth > 0 && r.answer.canonical.empty()) r.answer.canonical = call.qname;
  finish(call.key, std::move(r.answer), status == ARES_ETIMEOUT);
}

void CaresResolver::finish(const std::string& key, Answer answer, bool timedOut) {
  auto it = inflight_.find(key);
  if (it == inflight_.end()) return;
  count(it->second.type, answer.status, timedOut);
  cache_.put(key, answer, uv_now(loop_));
  auto shared = std::make_shared<const Answer>(std::move(answer));
  for (auto& cb : it->second.waiters) completed_.push_back({shared, std::move(cb)});
  inflight_.erase(it);
}

void CaresResolver::count(RrType type, Status status, bool timedOut) {
  auto t = std::find(kCountedTypes.begin(), kCountedTypes.end(), type);
  if (t == kCountedTypes.end()) return;
  size_t result = 3;  // error: SERVFAIL, REFUSED, a network error, a CNAME chain too long
  if (timedOut)
    result = 4;
  else if (status == Status::Ok)
    result = 0;
  else if (status == Status::NxDomain)
    result = 1;
  else if (status == Status::NoData)
    result = 2;
  ++stats_.lookups[static_cast<size_t>(t - kCountedTypes.begin())][result];
}

void CaresResolver::deliver() {
  auto alive = alive_;  // a callback may destroy the resolver
  while (*alive && !completed_.empty()) {
    Delivery d = std::move(completed_.front());
    completed_.pop_front();
    d.cb(*d.answer);
  }
}

void CaresResolver::process(ares_socket_t readFd, ares_socket_t writeFd) {
  if (!channel_) return;
  ares_process_fd(channel_, readFd, writeFd);
  rearmTimer();
  deliver();
}

void CaresResolver::rearmTimer() {
  if (!channel_) return;
  timeval tv{};
  if (!ares_timeout(channel_, nullptr, &tv)) {
    timer_.stop();
    return;
  }
  const uint64_t ms = static_cast<uint64_t>(tv.tv_sec) * 1000 + static_cast<uint64_t>(tv.tv_usec + 999) / 1000;
  timer_.start(ms, [this] { process(ARES_SOCKET_BAD, ARES_SOCKET_BAD); });
}

void CaresResolver::sockStateCb(void* data, ares_socket_t fd, int readable, int writable) {
  static_cast<CaresResolver*>(data)->onSocketState(fd, readable != 0, writable != 0);
}

void CaresResolver::onSocketState(ares_socket_t fd, bool readable, bool writable) {
  if (!readable && !writable) {
    sockets_.erase(fd);  // the Handle closes the poll; libuv frees it in the close callback
    return;
  }
  auto& watch = sockets_[fd];
  if (!watch) {
    watch = std::make_unique<SocketWatch>();
    watch->owner = this;
    watch->fd = fd;
    if (uv_poll_init_socket(loop_, watch->poll.get(), fd) != 0) {
      sockets_.erase(fd);  // c-ares will time the query out
      return;
    }
    watch->poll.markInitialized();
    watch->poll.get()->data = watch.get();
  }
  const int events = (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0);
  uv_poll_start(watch->poll.get(), events, [](uv_poll_t* h, int status, int ev) {
    auto* w = static_cast<SocketWatch*>(h->data);
    if (!w) return;
    const ares_socket_t s = w->fd;
    // On a poll error let c-ares read the socket: it sees the error and fails over.
    const bool r = status < 0 || (ev & UV_READABLE);
    const bool wr = status < 0 || (ev & UV_WRITABLE);
    w->owner->process(r ? s : ARES_SOCKET_BAD, wr ? s : ARES_SOCKET_BAD);
  });
}

}  // namespace moat::mta::dns
