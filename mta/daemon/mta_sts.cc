// mta/daemon/mta_sts.cc — see mta_sts.h.
#include "mta/daemon/mta_sts.h"

#include "mta/dns/resolve_host.h"
#include "mta/net/connection.h"
#include "mta/runtime/log.h"
#include "mta/runtime/uv.h"

namespace moat::mta::sts {

namespace {
// One policy fetch: the state every callback shares. `finish` runs `done` once and drops
// the connection and the timer, which breaks the cycle through the connection's callbacks.
struct FetchState {
  std::function<void(std::shared_ptr<Policy>, const std::string&)> done;
  std::shared_ptr<net::Connection> conn;
  std::unique_ptr<uv::Timer> timer;
  HttpResponse response;
  std::string host;
  bool finished = false;
  void finish(std::shared_ptr<Policy> p, const std::string& error) {
    if (finished) return;
    finished = true;
    if (timer) timer->stop();
    if (conn) {
      auto c = std::move(conn);
      c->abort();
    }
    auto d = std::move(done);
    d(std::move(p), error);
  }
  void complete() {
    if (response.status() != 200)  // §3.3: only a 200; redirects are not followed
      return finish(nullptr, "HTTP status " + std::to_string(response.status()));
    auto p = std::make_shared<Policy>();
    std::string error;
    if (!parsePolicy(response.body(), *p, error)) return finish(nullptr, error);
    finish(std::move(p), "");
  }
};
}  // namespace

void fetchPolicy(uv_loop_t* loop, dns::Resolver& resolver, const std::string& domain,
                 std::shared_ptr<tls::TlsContext> tls, uint64_t timeoutMs, uint16_t port,
                 std::function<void(std::shared_ptr<Policy>, const std::string& error)> done) {
  auto st = std::make_shared<FetchState>();
  st->done = std::move(done);
  st->host = "mta-sts." + domain;
  if (!tls) return st->finish(nullptr, "no TLS client context");
  st->timer = std::make_unique<uv::Timer>(loop);
  std::weak_ptr<FetchState> weak = st;
  // The timer holds the state only weakly: the pending lookup or connection holds it.
  st->timer->start(timeoutMs, [weak] {
    if (auto s = weak.lock()) s->finish(nullptr, "policy fetch timed out");
  });
  dns::resolveHost(
      resolver, st->host, [loop, st, tls, timeoutMs, port](dns::Status status, std::vector<IpAddress> ips) {
        if (st->finished) return;
        if (ips.empty())
          return st->finish(nullptr, st->host + ": no address (" + std::string(dns::statusName(status)) + ")");
        // The first address only: the whole fetch has one time limit, and a policy host that
        // does not answer on it is a failed fetch, retried at the next delivery.
        net::connect(loop, ips.front(), port, timeoutMs,
                     [st, tls, port](std::shared_ptr<net::Connection> conn, const std::string& error) {
                       if (st->finished) {
                         if (conn) conn->abort();
                         return;
                       }
                       if (!conn) return st->finish(nullptr, st->host + ":" + std::to_string(port) + ": " + error);
                       st->conn = conn;
                       conn->setCallbacks({[st](std::string_view data) {
                                             if (st->finished) return;
                                             auto s = st->response.feed(data);
                                             if (s == HttpResponse::State::Error)
                                               st->finish(nullptr, st->response.error());
                                             else if (s == HttpResponse::State::Done)
                                               st->complete();
                                           },
                                           [st](const std::string& error) {
                                             if (st->finished) return;
                                             st->conn.reset();
                                             if (!error.empty()) return st->finish(nullptr, error);
                                             if (st->response.end() == HttpResponse::State::Error)
                                               return st->finish(nullptr, st->response.error());
                                             st->complete();
                                           },
                                           nullptr});
                       conn->startReading();  // the handshake's records come through the read side
                       // §3.3: the certificate must verify and name the policy host (SNI too).
                       conn->startTls(tls, st->host, [st](bool ok, const std::string& error) {
                         if (st->finished || !ok) {
                           if (!ok) st->finish(nullptr, "TLS: " + error);
                           return;
                         }
                         st->conn->write("GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: " + st->host +
                                         "\r\nUser-Agent: Moat\r\nAccept: text/plain\r\nConnection: close\r\n\r\n");
                       });
                     });
      });
}

PolicyCache::~PolicyCache() { *alive_ = false; }

std::shared_ptr<const Policy> PolicyCache::cached(const std::string& domain) const {
  auto it = cache_.find(domain);
  if (it == cache_.end() || it->second.expires <= std::chrono::steady_clock::now()) return nullptr;
  return it->second.policy;
}

void PolicyCache::finish(const std::string& domain, std::shared_ptr<const Policy> fetched, const std::string& error) {
  std::shared_ptr<const Policy> result;
  if (fetched) {
    cache_[domain] = {fetched, std::chrono::steady_clock::now() + std::chrono::seconds(fetched->maxAge)};
    result = fetched;
  } else {
    result = cached(domain);  // §5.1: a failed refresh leaves an unexpired policy in force
    log::warn("mta_sts")
        .add("domain", domain)
        .add("reason", "policy fetch failed: " + error)
        .add("cached", result ? std::string(modeName(result->mode)) + " id=" + result->id : std::string("none"));
  }
  auto it = waiting_.find(domain);
  if (it == waiting_.end()) return;
  auto waiters = std::move(it->second);
  waiting_.erase(it);
  for (auto& w : waiters) w(result);
}

void PolicyCache::get(const std::string& domain, std::shared_ptr<tls::TlsContext> tls, uint64_t timeoutMs, Done done) {
  auto alive = alive_;
  resolver_->query("_mta-sts." + domain, dns::RrType::TXT,
                   [this, alive, domain, tls, timeoutMs, done = std::move(done)](const dns::Answer& a) mutable {
                     if (!*alive) return;
                     std::string error;
                     std::string id = a.status == dns::Status::Ok ? parseTxt(a.txt, error) : "";
                     // §3.1/§5.1: no (usable) record, or a DNS failure: a cached policy that has
                     // not expired still applies; otherwise there is none.
                     if (id.empty()) return done(cached(domain));
                     if (auto c = cached(domain); c && c->id == id) return done(c);
                     auto& w = waiting_[domain];
                     w.push_back(std::move(done));
                     if (w.size() > 1) return;  // a fetch is under way: share it
                     fetchPolicy(loop_, *resolver_, domain, tls, timeoutMs, httpsPort_,
                                 [this, alive, domain, id](std::shared_ptr<Policy> p, const std::string& err) {
                                   if (!*alive) return;
                                   if (p) p->id = id;
                                   finish(domain, std::move(p), err);
                                 });
                   });
}

}  // namespace moat::mta::sts
