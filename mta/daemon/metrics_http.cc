// mta/daemon/metrics_http.cc — see metrics_http.h.
#include "mta/daemon/metrics_http.h"

#include <vector>

#include "mta/runtime/ip.h"
#include "mta/server/metrics.h"

namespace moat::mta::daemon {

MetricsHttp::MetricsHttp(uv_loop_t* loop, std::function<std::string()> whyUnhealthy)
    : loop_(loop), whyUnhealthy_(std::move(whyUnhealthy)) {}

uint16_t MetricsHttp::port() const { return listener_ ? listener_->port() : 0; }

void MetricsHttp::stop() {
  if (listener_) listener_->close();
  listener_.reset();
  sweeper_.reset();
  auto open = std::move(conns_);
  conns_.clear();
  for (auto& [k, o] : open) o.conn->abort();
}

// Once a second: a connection past its deadline is closed, whatever it is doing.
void MetricsHttp::sweep() {
  uint64_t now = uv_now(loop_);
  std::vector<std::shared_ptr<net::Connection>> late;
  for (auto& [k, o] : conns_)
    if (now - o.acceptedMs >= kDeadlineMs) late.push_back(o.conn);
  for (auto& c : late) {
    conns_.erase(c.get());
    c->abort();
  }
}

bool MetricsHttp::start(const std::string& hostPort, std::string& error) {
  auto hp = parseHostPort(hostPort);
  if (!hp) {
    error = "metrics_listen: expected HOST:PORT";
    return false;
  }
  auto whyUnhealthy = whyUnhealthy_;
  sweeper_ = std::make_unique<uv::Timer>(loop_);
  sweeper_->startRepeat(1000, [this] { sweep(); });
  sweeper_->unref();  // it must not keep a stopping loop alive
  listener_ = net::listen(
      loop_, hp->host, hp->port, false, nullptr,
      [this, whyUnhealthy](std::shared_ptr<net::Connection> conn) {
        if (conns_.size() >= kMaxConnections) return conn->abort();  // a scraper needs one or two
        conns_[conn.get()] = Open{conn, uv_now(loop_)};
        auto* key = conn.get();
        auto buf = std::make_shared<std::string>();
        std::weak_ptr<net::Connection> weak = conn;
        conn->setCallbacks({[weak, buf, whyUnhealthy](std::string_view data) {
                              auto c = weak.lock();
                              if (!c) return;
                              buf->append(data);
                              auto end = buf->find("\r\n\r\n");
                              if (end == std::string::npos) end = buf->find("\n\n");
                              if (end == std::string::npos) {
                                if (buf->size() > 8192) c->abort();
                                return;
                              }
                              c->stopReading();
                              std::string line = buf->substr(0, buf->find_first_of("\r\n"));
                              auto respond = [&](const std::string& status, const std::string& type, const std::string& body) {
                                c->write("HTTP/1.0 " + status + "\r\nContent-Type: " + type + "\r\nContent-Length: " +
                                         std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body);
                                c->close();
                              };
                              if (line.rfind("GET ", 0) != 0)
                                return respond("405 Method Not Allowed", "text/plain", "GET only\n");
                              std::string path = line.substr(4, line.find(' ', 4) - 4);
                              if (path == "/metrics")
                                return respond("200 OK", "text/plain; version=0.0.4", server::metrics().prometheus());
                              if (path == "/healthz") {
                                std::string why = whyUnhealthy();
                                return why.empty() ? respond("200 OK", "text/plain", "ok\n")
                                                   : respond("503 Service Unavailable", "text/plain",
                                                             "unhealthy: " + why + "\n");
                              }
                              respond("404 Not Found", "text/plain", "not found\n");
                            },
                            [this, key](const std::string&) { conns_.erase(key); }, nullptr});
        conn->startReading();
      },
      error);
  return listener_ != nullptr;
}

}  // namespace moat::mta::daemon
