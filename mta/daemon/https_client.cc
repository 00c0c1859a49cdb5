// mta/daemon/https_client.cc — see https_client.h.
#include "mta/daemon/https_client.h"

#include <vector>

#include "mta/net/connection.h"
#include "mta/runtime/uv.h"

namespace moat::mta::https {

namespace {
// One exchange: the state every callback shares. `finish` runs `done` once and drops the
// connection and the timer, which breaks the cycle through the connection's callbacks.
// `gen` numbers the address being tried: callbacks of a connection given up on are ignored.
struct Exchange : std::enable_shared_from_this<Exchange> {
  uv_loop_t* loop = nullptr;
  std::shared_ptr<tls::TlsContext> tls;
  Request request;
  Done done;
  std::shared_ptr<net::Connection> conn;
  std::unique_ptr<uv::Timer> timer;
  sts::HttpResponse response;
  std::vector<IpAddress> ips;
  size_t next = 0;  // the address to try after the current one
  unsigned gen = 0;
  uint64_t deadline = 0;  // uv_now() at which the whole exchange has failed
  std::string errors;     // each address's failure, for the error text
  bool finished = false;

  void finish(const sts::HttpResponse* r, const std::string& error) {
    if (finished) return;
    finished = true;
    if (timer) timer->stop();
    dropConnection();
    auto d = std::move(done);
    d(r, error);
  }
  void dropConnection() {
    if (conn) {
      auto c = std::move(conn);
      c->abort();
    }
  }
  // The current address failed with `error`. Before any HTTP reply (connect, TLS, a close
  // before the reply's head) the next address is tried; once the host has answered, its
  // answer is the exchange's.
  void addressFailed(const std::string& error) {
    const IpAddress& ip = ips[next - 1];
    std::string what = ip.withPort(request.port) + ": " + error;
    if (response.headDone()) return finish(nullptr, what);
    errors += (errors.empty() ? "" : "; ") + what;
    ++gen;  // this connection's callbacks, from here on, are ignored
    dropConnection();
    tryNext();
  }
  void tryNext() {
    if (next >= ips.size()) return finish(nullptr, errors);
    uint64_t now = uv_now(loop);
    if (now >= deadline) return finish(nullptr, request.what + " timed out");
    const IpAddress ip = ips[next++];
    const unsigned g = ++gen;
    response = sts::HttpResponse(request.maxBody);
    auto st = shared_from_this();
    // Each address within what is left of the exchange's time.
    net::connect(
        loop, ip, request.port, deadline - now,
        [st, g](std::shared_ptr<net::Connection> conn, const std::string& error) {
          if (st->finished || g != st->gen) {
            if (conn) conn->abort();
            return;
          }
          if (!conn) return st->addressFailed(error);
          st->conn = conn;
          conn->setCallbacks({[st, g](std::string_view data) {
                                if (st->finished || g != st->gen) return;
                                auto s = st->response.feed(data);
                                if (s == sts::HttpResponse::State::Error)
                                  st->finish(nullptr, st->request.host + ": " + st->response.error());
                                else if (s == sts::HttpResponse::State::Done)
                                  st->finish(&st->response, "");
                              },
                              [st, g](const std::string& error) {
                                if (st->finished || g != st->gen) return;
                                st->conn.reset();
                                if (!error.empty()) return st->addressFailed(error);
                                if (st->response.end() == sts::HttpResponse::State::Error)
                                  return st->addressFailed(st->response.error());
                                st->finish(&st->response, "");
                              },
                              nullptr});
          conn->startReading();  // the handshake's records come through the read side
          // RFC 2818 §3.1: the certificate must verify and name the host (SNI too).
          conn->startTls(st->tls, st->request.host, [st, g](bool ok, const std::string& error) {
            if (st->finished || g != st->gen) return;
            if (!ok) return st->addressFailed("TLS: " + error);
            st->conn->write(st->request.text);
          });
        },
        ip.isV4() ? request.source.ipv4 : request.source.ipv6);
  }
};
}  // namespace

std::function<void()> exchange(uv_loop_t* loop, dns::Resolver& resolver, std::shared_ptr<tls::TlsContext> tls,
                               uint64_t timeoutMs, Request request, Done done, dns::Families families) {
  auto st = std::make_shared<Exchange>();
  st->loop = loop;
  st->tls = std::move(tls);
  st->request = std::move(request);
  st->response = sts::HttpResponse(st->request.maxBody);
  st->done = std::move(done);
  std::weak_ptr<Exchange> weak = st;
  auto cancel = [weak] {
    if (auto s = weak.lock()) s->finish(nullptr, "cancelled");
  };
  if (!st->tls) {
    st->finish(nullptr, "no TLS client context");
    return cancel;
  }
  st->deadline = uv_now(loop) + timeoutMs;
  st->timer = std::make_unique<uv::Timer>(loop);
  // The timer holds the state only weakly: the pending lookup or connection holds it.
  st->timer->start(timeoutMs, [weak] {
    if (auto s = weak.lock())
      s->finish(nullptr, s->request.what + " timed out" + (s->errors.empty() ? "" : " (" + s->errors + ")"));
  });
  const std::string host = st->request.host;
  dns::resolveHost(
      resolver, host,
      [st](dns::Status status, std::vector<IpAddress> ips) {
        if (st->finished) return;
        if (ips.empty())
          return st->finish(nullptr, st->request.host + ": no address (" + std::string(dns::statusName(status)) + ")");
        // Every address, in the order resolveHost gives (IPv6 first), up to a bound: one dead
        // address of the host must not cost the exchange.
        if (ips.size() > kMaxAddresses) ips.resize(kMaxAddresses);
        st->ips = std::move(ips);
        st->tryNext();
      },
      families);
  return cancel;
}

}  // namespace moat::mta::https
