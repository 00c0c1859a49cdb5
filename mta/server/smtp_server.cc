// mta/server/smtp_server.cc — see smtp_server.h.
#include "mta/server/smtp_server.h"

#include <algorithm>
#include <chrono>

#include "mta/runtime/log.h"
#include "mta/server/metrics.h"
#include "mta/server/smtp_session.h"
#include "mta/smtp/protocol.h"

namespace moat::mta::server {

uint64_t ServerShared::freeDisk() {
  uint64_t now = uv_now(loop);
  if (freeDiskCheckedMs_ == 0 || now - freeDiskCheckedMs_ >= 1000) {
    freeDiskCached_ = spool->freeBytes();
    freeDiskCheckedMs_ = now == 0 ? 1 : now;
  }
  return freeDiskCached_;
}

void ServerShared::acquireCrypt(std::function<bool()> start) {
  cryptWaiting_.push_back(std::move(start));
  startCrypts();
}

void ServerShared::releaseCrypt() {
  --cryptRunning_;
  startCrypts();
}

void ServerShared::startCrypts() {
  const unsigned slots = std::max(1u, uv::threadPoolSize() / 2);
  while (cryptRunning_ < slots && !cryptWaiting_.empty()) {
    auto start = std::move(cryptWaiting_.front());
    cryptWaiting_.pop_front();
    ++cryptRunning_;
    if (!start()) --cryptRunning_;
  }
}

SmtpServer::SmtpServer(uv_loop_t* loop, std::shared_ptr<queue::Spool> spool, dns::Resolver* resolver,
                       std::function<void(const queue::Envelope&, std::shared_ptr<const queue::MessageData>)> onQueued)
    : drainTimer_(loop), reaper_(loop) {
  shared_.loop = loop;
  shared_.spool = std::move(spool);
  shared_.resolver = resolver;
  shared_.onQueued = std::move(onQueued);
  shared_.verifier = std::make_unique<RecipientVerifier>(loop, resolver);
}

SmtpServer::~SmtpServer() {
  for (auto& l : listeners_) l->close();
}

bool SmtpServer::start(std::shared_ptr<const Snapshot> snapshot, std::string& error) {
  shared_.snapshot = std::move(snapshot);
  const auto& cfg = *shared_.snapshot->config;
  listenerConfigs_ = cfg.listeners;
  implicitTls_.assign(listenerConfigs_.size(), nullptr);
  applyCertificates();
  for (size_t i = 0; i < listenerConfigs_.size(); ++i) {
    const auto& l = listenerConfigs_[i];
    std::string err;
    // An smtps listener's TLS starts at accept (implicitTls_), not in the listener: each
    // connection takes the certificate of the snapshot in force, as STARTTLS does.
    auto listener = net::listen(
        shared_.loop, l.host, l.port, false, nullptr,
        [this, i](std::shared_ptr<net::Connection> conn) { accept(i, std::move(conn)); }, err);
    if (!listener) {
      error = "cannot listen on " + l.address + ": " + err;
      return false;
    }
    log::info("listen").add("address", l.address).add("port", static_cast<unsigned>(listener->port()));
    listeners_.push_back(std::move(listener));
  }
  return true;
}

void SmtpServer::reload(std::shared_ptr<const Snapshot> snapshot) {
  shared_.snapshot = std::move(snapshot);
  applyCertificates();
}

void SmtpServer::applyCertificates() {
  const auto& contexts = shared_.snapshot->serverTls;
  auto& expiry = metrics().certificateNotAfter;
  expiry.clear();
  for (size_t i = 0; i < listenerConfigs_.size(); ++i) {
    const auto& address = listenerConfigs_[i].address;
    auto it = contexts.find(address);
    std::shared_ptr<tls::TlsContext> served = it == contexts.end() ? nullptr : it->second;
    if (listenerConfigs_[i].mode == policy::ListenerMode::Smtps) {
      if (served) implicitTls_[i] = served;
      served = implicitTls_[i];
    }
    if (served) expiry[address] = served->notAfter();
  }
  auto& clientExpiry = metrics().clientCertificateNotAfter;
  clientExpiry.clear();
  for (const auto& [key, cert] : shared_.snapshot->clientCertificates)
    clientExpiry[cert->certFile()] = cert->notAfter();
}

uint64_t SmtpServer::freeDisk() { return shared_.freeDisk(); }

uint64_t SmtpServer::minFreeDisk() const { return shared_.snapshot ? shared_.snapshot->config->minFreeDisk : 0; }

std::string SmtpServer::whyNoMail() {
  if (shared_.draining) return "stopping";
  uint64_t free = freeDisk(), floor = minFreeDisk();
  if (free < floor)
    return "spool free space " + std::to_string(free) + " bytes is under server.min_free_disk (" +
           std::to_string(floor) + "): MAIL FROM gets 452 4.3.1";
  if (shared_.snapshot && queueFull(*shared_.snapshot->config))
    return "the queue holds " + std::to_string(metrics().queued()) +
           " messages, queue.max_messages: MAIL FROM gets 452 4.3.1";
  return "";
}

std::vector<uint16_t> SmtpServer::boundPorts() const {
  std::vector<uint16_t> out;
  for (const auto& l : listeners_) out.push_back(l->port());
  return out;
}

const policy::Listener& SmtpServer::currentListener(size_t i) const {
  const auto& started = listenerConfigs_[i];
  for (const auto& l : shared_.snapshot->config->listeners)
    if (l.address == started.address && l.proxyProtocol == started.proxyProtocol) return l;
  return started;
}

void SmtpServer::accept(size_t i, std::shared_ptr<net::Connection> conn) {
  if (listenerConfigs_[i].proxyProtocol) return acceptFromProxy(i, std::move(conn));
  if (implicitTls_[i]) conn->startTls(implicitTls_[i], "", nullptr);
  SessionPeer peer{conn->peerAddress(), conn->peerPort(), std::nullopt};
  admit(i, std::move(conn), peer);
}

namespace {

// A connection on a proxy_protocol listener closed without a greeting: one line, why.
void proxyRefused(const net::Connection& conn, const std::string& listener, const std::string& reason) {
  ++metrics().sessionsRefused;
  log::info("proxy_refused")
      .add("proxy", conn.peerAddress().str())
      .add("proxy_port", static_cast<unsigned>(conn.peerPort()))
      .add("listener", listener)
      .add("reason", reason);
}

}  // namespace

void SmtpServer::acceptFromProxy(size_t i, std::shared_ptr<net::Connection> conn) {
  const auto& cfg = *shared_.snapshot->config;
  const auto& listener = currentListener(i);
  // The PROXY header is believed: from anyone but the balancers it would be a forged address.
  if (!listener.isProxy(conn->peerAddress())) {
    proxyRefused(*conn, listener.address, "not in proxy_networks");
    return conn->abort();
  }
  // What does not depend on the client is settled before its header is awaited; the per-client
  // limits, the rate and the access lists wait for its address (admit).
  if (shared_.draining || sessions_.size() + proxyReaders_.size() >= cfg.maxConnections) {
    proxyRefused(*conn, listener.address, shared_.draining ? "shutting down" : "limits.max_connections reached");
    return conn->abort();
  }
  auto timeout = static_cast<uint64_t>(listener.proxyTimeout.count());
  auto reader = std::make_unique<net::ProxyHeaderReader>(shared_.loop, std::move(conn));
  auto* raw = reader.get();
  proxyReaders_[raw] = std::move(reader);
  raw->start(timeout,
             [this, i, raw](std::shared_ptr<net::Connection> c, std::optional<net::ProxyHeader> header,
                            const std::string& error) { proxyHeaderRead(i, raw, std::move(c), header, error); });
}

void SmtpServer::proxyHeaderRead(size_t i, net::ProxyHeaderReader* reader, std::shared_ptr<net::Connection> conn,
                                 const std::optional<net::ProxyHeader>& header, const std::string& error) {
  // The reader is the caller: freed on the next loop turn.
  if (auto node = proxyReaders_.extract(reader); !node.empty()) {
    proxyGraveyard_.push_back(std::move(node.mapped()));
    reaper_.start(0, [this] {
      graveyard_.clear();
      proxyGraveyard_.clear();
    });
  }
  const auto& listener = listenerConfigs_[i];
  if (!header && reader->closedSilently()) {
    // A balancer's TCP health check, every few seconds from each of its nodes: counted, and
    // logged only at debug, or its lines would bury the refusals that matter.
    ++metrics().proxyHealthChecks;
    log::debug("proxy_refused")
        .add("proxy", conn->peerAddress().str())
        .add("proxy_port", static_cast<unsigned>(conn->peerPort()))
        .add("listener", listener.address)
        .add("reason", "PROXY protocol: " + error);
    return conn->close();
  }
  if (!header) {
    proxyRefused(*conn, listener.address, "PROXY protocol: " + error);
    return conn->close();
  }
  SessionPeer peer{conn->peerAddress(), conn->peerPort(), conn->peerAddress()};
  if (header->proxied) {
    peer.ip = header->source;
    peer.port = header->sourcePort;
  }
  // Behind a balancer the PROXY header comes first, in plaintext: TLS starts after it.
  if (implicitTls_[i]) conn->startImplicitTls(implicitTls_[i]);
  admit(i, std::move(conn), peer);
}

void SmtpServer::admit(size_t i, std::shared_ptr<net::Connection> conn, const SessionPeer& peer) {
  const auto& listener = listenerConfigs_[i];
  const auto& cfg = *shared_.snapshot->config;
  std::string ip = peer.ip.str();
  const std::string key = clientKey(peer.ip);  // an IPv6 client counts by its /64
  auto refuse = [&](const std::string& why) {
    ++metrics().sessionsRefused;
    std::string text = cfg.hostname + " " + why;
    auto line = log::info("reject");
    line.add("client_ip", ip);
    if (peer.proxy) line.add("proxy", peer.proxy->str());
    line.add("reply", "421 4.7.0 " + text).add("stage", "connect");
    metrics().countReject(RejectStage::Connect, 421);
    conn->write(smtp::formatReply(421, "4.7.0", text));
    conn->close();
  };
  if (shared_.draining) return refuse("Service shutting down, try again later");
  if (sessions_.size() >= cfg.maxConnections) return refuse("Too many connections, try again later");
  if (perIp_[key] >= cfg.maxConnectionsPerIp) return refuse("Too many connections from your address");
  // [connection]: the allow list and the relay networks are exempt from the rate limit and
  // from the block list (allow wins over block).
  bool exempt = cfg.isAllowedClient(peer.ip) || cfg.isRelayClient(peer.ip);
  if (cfg.maxConnectionRatePerIp > 0 && !exempt && !rateAllows(key, cfg.maxConnectionRatePerIp))
    return refuse("Too many connections from your address in the last minute, try again later");
  bool blocked = !exempt && cfg.isBlockedClient(peer.ip);
  if (blocked) ++metrics().sessionsRefused;
  ++perIp_[key];
  auto session = std::make_shared<SmtpSession>(shared_, shared_.snapshot, listener, conn, peer,
                                               [this, key](SmtpSession* s) { sessionEnded(s, key); });
  sessions_[session.get()] = session;
  session->start(blocked);
}

bool SmtpServer::rateAllows(const std::string& key, unsigned perMinute) {
  int64_t now =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count();
  while (!rateEvents_.empty() && rateEvents_.front().first <= now - 60'000) {
    auto it = rateCount_.find(rateEvents_.front().second);
    if (it != rateCount_.end() && --it->second == 0) rateCount_.erase(it);
    rateEvents_.pop_front();
  }
  auto it = rateCount_.find(key);
  if (it != rateCount_.end() && it->second >= perMinute) return false;
  rateEvents_.emplace_back(now, key);
  ++rateCount_[key];
  return true;
}

void SmtpServer::sessionEnded(SmtpSession* session, const std::string& key) {
  auto it = perIp_.find(key);
  if (it != perIp_.end() && --it->second == 0) perIp_.erase(it);
  // Keep the session alive until this call stack unwinds: it is the caller.
  auto node = sessions_.extract(session);
  if (!node.empty()) {
    graveyard_.push_back(std::move(node.mapped()));
    reaper_.start(0, [this] {
      graveyard_.clear();
      proxyGraveyard_.clear();
    });
  }
  if (shared_.draining && sessions_.empty() && drained_) {
    drainTimer_.stop();
    auto done = std::move(drained_);
    drained_ = nullptr;
    done();
  }
}

void SmtpServer::drain(std::function<void()> done) {
  shared_.draining = true;
  for (auto& l : listeners_) l->close();
  proxyReaders_.clear();  // no session yet: their connections are closed
  drained_ = std::move(done);
  std::vector<std::shared_ptr<SmtpSession>> all;
  for (auto& [k, v] : sessions_) all.push_back(v);
  for (auto& s : all) s->drain();
  if (sessions_.empty() && drained_) {
    auto d = std::move(drained_);
    drained_ = nullptr;
    d();
    return;
  }
  drainTimer_.start(kDrainGraceMs, [this] {
    if (!drained_) return;
    std::vector<std::shared_ptr<SmtpSession>> open;
    for (auto& [k, v] : sessions_) open.push_back(v);
    uint64_t closing = 0, committing = 0;
    for (auto& s : open) ++(s->drainExpired() ? committing : closing);
    log::warn("drain_timeout").add("sessions", closing).add("committing", committing);
  });
}

}  // namespace moat::mta::server
