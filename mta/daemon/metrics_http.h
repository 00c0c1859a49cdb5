// mta/daemon/metrics_http.h — GET /metrics (Prometheus text format 0.0.4) and GET /healthz
// on [server] metrics_listen. Minimal HTTP/1.0: one request per connection, request head
// bounded to 8 KiB, anything else answered 400/404/405. Untrusted input: the request.
#pragma once
#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "mta/net/connection.h"

namespace moat::mta::daemon {

class MetricsHttp {
 public:
  // `whyUnhealthy()` decides /healthz: "" is 200 "ok"; anything else is 503 with
  // "unhealthy: REASON" (the daemon cannot take mail now).
  MetricsHttp(uv_loop_t* loop, std::function<std::string()> whyUnhealthy);
  bool start(const std::string& hostPort, std::string& error);
  void stop();
  uint16_t port() const;

 private:
  uv_loop_t* loop_;
  std::function<std::string()> whyUnhealthy_;
  std::unique_ptr<net::Listener> listener_;
  // Open connections; a Connection lives as long as someone holds it.
  std::map<net::Connection*, std::shared_ptr<net::Connection>> conns_;
};

}  // namespace moat::mta::daemon
