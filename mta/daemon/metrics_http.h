// mta/daemon/metrics_http.h — GET /metrics (Prometheus text format 0.0.4) and GET /healthz
// on [server] metrics_listen. Minimal HTTP/1.0: one request per connection, request head
// bounded to 8 KiB, anything else answered 400/404/405. Untrusted input: the request, and
// the client's pace: at most kMaxConnections at once (more are closed at accept), each
// closed kDeadlineMs after it was accepted, answered or not, so idle or slow clients can
// hold neither file descriptors nor memory.
#pragma once
#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "mta/net/connection.h"
#include "mta/runtime/uv.h"

namespace moat::mta::daemon {

class MetricsHttp {
 public:
  // `whyUnhealthy()` decides /healthz: "" is 200 "ok"; anything else is 503 with
  // "unhealthy: REASON" (the daemon cannot take mail now).
  MetricsHttp(uv_loop_t* loop, std::function<std::string()> whyUnhealthy);
  bool start(const std::string& hostPort, std::string& error);
  void stop();
  uint16_t port() const;

  static constexpr size_t kMaxConnections = 32;
  static constexpr uint64_t kDeadlineMs = 10'000;

 private:
  struct Open {
    std::shared_ptr<net::Connection> conn;
    uint64_t acceptedMs = 0;
  };
  void sweep();

  uv_loop_t* loop_;
  std::function<std::string()> whyUnhealthy_;
  std::unique_ptr<net::Listener> listener_;
  // Open connections; a Connection lives as long as someone holds it.
  std::map<net::Connection*, Open> conns_;
  std::unique_ptr<uv::Timer> sweeper_;
};

}  // namespace moat::mta::daemon
