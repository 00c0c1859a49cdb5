// mta/net/connection.cc — TCP connections, listeners and outbound connects on libuv (and
// outbound Unix-socket connects, for LMTP: RFC 2033), with STARTTLS (RFC 3207) and implicit
// TLS (RFC 8314) through mta/tls.
//
// Untrusted input: every byte read from the socket. Memory per connection is bounded: one
// 64 KiB read buffer, and undelivered input is at most kHoldLimit plus one read (plus one
// TLS record). A TLS socket also stops reading while more than kTlsWriteLimit of output
// waits for the peer (output OpenSSL makes on its own has no other bound). stopReading()
// is lazy: the socket keeps reading into the held input until that passes kHoldLimit,
// because an SMTP session pauses for every reply that waits on the disk or a lookup, and
// taking the socket out of epoll and putting it back each time cost two epoll_ctl calls
// per pause. An end of input met while the owner does not read waits until the owner has
// read what came before it. RFC 3207 §4.2: input received before
// the TLS handshake began and not yet delivered is discarded, never handed over as if it had
// come through TLS (the STARTTLS command-injection attack). Logs nothing; owners log.
#include "mta/net/connection.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cstring>

#include "mta/runtime/uv.h"

namespace moat::mta::net {

namespace {

constexpr size_t kReadBufSize = 64 * 1024;
constexpr size_t kHoldLimit = 64 * 1024;  // undelivered input that stops the socket reading
// Queued output that stops a TLS socket reading. OpenSSL answers some records on its own
// (a TLS 1.3 KeyUpdate that requests one back, a refused renegotiation's alert), with no
// owner to bound it: a peer that sends those and reads nothing would grow the write queue
// without end. Above the SMTP session's own bound (64 KiB) and the client's body window
// (1 MiB plus a 64 KiB piece), so neither ever meets it.
constexpr size_t kTlsWriteLimit = 2 * 1024 * 1024;

std::string uvError(const char* what, int code) { return std::string(what) + ": " + uv_strerror(code); }

uint16_t portOf(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_port);
  return 0;
}

class TcpConnection final : public Connection {
 public:
  explicit TcpConnection(uv_loop_t* loop) : loop_(loop) {}

  // Creates the uv handle; the connection then keeps itself alive until libuv closes it.
  // A TCP socket, or with `pipe` a Unix-domain stream socket (uv_pipe_t): the same stream
  // code serves both; only the address look-ups and TCP_NODELAY are TCP's.
  static std::shared_ptr<TcpConnection> create(uv_loop_t* loop, std::string& error, bool pipe = false) {
    auto c = std::make_shared<TcpConnection>(loop);
    auto any = std::make_unique<uv_any_handle>();
    int rc = pipe ? uv_pipe_init(loop, &any->pipe, 0) : uv_tcp_init(loop, &any->tcp);
    if (rc < 0) {
      error = uvError(pipe ? "uv_pipe_init" : "uv_tcp_init", rc);
      return nullptr;
    }
    c->pipe_ = pipe;
    c->handle_ = any.release();
    c->handle_->handle.data = c.get();
    return c;
  }

  // Dropping the last reference without close() aborts: the socket is closed, no callback
  // runs (the owner is gone), and libuv frees the handle later.
  ~TcpConnection() override {
    if (!handle_ || handleClosed_) return;
    handle_->handle.data = nullptr;
    uv_close(&handle_->handle, [](uv_handle_t* h) { delete reinterpret_cast<uv_any_handle*>(h); });
  }

  std::shared_ptr<TcpConnection> ref() { return std::static_pointer_cast<TcpConnection>(shared_from_this()); }

  uv_tcp_t* handle() { return &handle_->tcp; }
  uv_pipe_t* pipeHandle() { return &handle_->pipe; }

  // After accept or connect: the peer's address, Nagle off (unless inherited from the
  // listening socket). The local address is looked up when asked for (nothing on the path
  // of a relayed message needs it: one syscall less).
  void established(bool setNoDelay = true) {
    if (pipe_) return;  // a Unix socket: no IP address, no Nagle
    if (setNoDelay) uv_tcp_nodelay(&handle_->tcp, 1);
    sockaddr_storage ss{};
    int len = sizeof ss;
    if (uv_tcp_getpeername(&handle_->tcp, reinterpret_cast<sockaddr*>(&ss), &len) == 0) {
      if (auto ip = IpAddress::fromSockaddr(reinterpret_cast<sockaddr*>(&ss))) peer_ = *ip;
      peerPort_ = portOf(ss);
    }
  }

  bool noDelay() const {
    uv_os_fd_t fd;
    int on = 0;
    socklen_t len = sizeof on;
    return uv_fileno(&handle_->handle, &fd) == 0 && ::getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &len) == 0 &&
           on != 0;
  }

  void lookUpLocal() const {
    if (localKnown_ || !handle_ || pipe_ || handleClosed_ || closing_) return;
    sockaddr_storage ss{};
    int len = sizeof ss;
    if (uv_tcp_getsockname(&handle_->tcp, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return;
    if (auto ip = IpAddress::fromSockaddr(reinterpret_cast<sockaddr*>(&ss))) local_ = *ip;
    localPort_ = portOf(ss);
    localKnown_ = true;
  }

  void setCallbacks(Callbacks cb) override { cb_ = std::move(cb); }

  void startReading() override {
    if (closing_) return;
    reading_ = true;
    updateSocketReading();
    // Input held back by stopReading() is delivered from the loop, not from this call.
    if ((!inbuf_.empty() || eofPending_) && !delivering_) {
      if (!deliverTimer_) deliverTimer_ = std::make_unique<uv::Timer>(loop_);
      auto weak = weak_from_this();
      deliverTimer_->start(0, [weak] {
        if (auto self = weak.lock()) static_cast<TcpConnection*>(self.get())->deliver();
      });
    }
  }

  void stopReading() override {
    reading_ = false;
    updateSocketReading();
  }

  void setLineMode(bool on) override { lineMode_ = on; }

  void write(std::string data) override {
    if (closing_ || data.empty()) return;
    if (tls_) {
      if (!tls_->writePlaintext(data)) return fail(tls_->error());
      flushTls();
      return;
    }
    writeRaw(std::move(data));
  }

  size_t pendingWriteBytes() const override { return pendingBytes_; }

  void startTls(std::shared_ptr<tls::TlsContext> ctx, const std::string& sni,
                std::function<void(bool, const std::string&)> done) override {
    if (closing_) return;
    if (tls_) {
      if (done) done(false, "TLS already active");
      return;
    }
    // RFC 3207 §4.2: whatever the peer sent before this point is not trusted input.
    inbuf_.clear();
    ++tlsEpoch_;
    if (eofPending_) {  // the peer is gone: no handshake can come
      if (done) done(false, "connection closed before the TLS handshake");
      return fail("connection closed before the TLS handshake");
    }
    tls_ = std::make_unique<tls::TlsSession>(std::move(ctx), sni);
    tlsDone_ = std::move(done);
    if (tls_->state() == tls::TlsSession::State::Failed) return handshakeFailed();
    flushTls();  // the client's ClientHello; the queued plaintext already precedes it
    updateSocketReading();
  }

  void startImplicitTls(std::shared_ptr<tls::TlsContext> ctx) override {
    if (closing_ || tls_) return;
    std::string early;
    early.swap(inbuf_);
    ++tlsEpoch_;
    tls_ = std::make_unique<tls::TlsSession>(std::move(ctx), "");
    if (tls_->state() == tls::TlsSession::State::Failed) return fail(tls_->error());
    if (!early.empty()) {
      onCiphertext(early);
      if (closing_) return;
    }
    if (eofPending_) return fail("connection closed during TLS handshake");
    updateSocketReading();
  }

  void unread(std::string data) override {
    if (closing_ || data.empty()) return;
    inbuf_.insert(0, data);
  }

  bool tlsActive() const override { return tls_ && tls_->state() == tls::TlsSession::State::Open; }
  const tls::TlsSession* tls() const override { return tls_.get(); }

  void close() override {
    if (closing_) return;
    closing_ = true;
    reading_ = false;
    updateSocketReading();
    if (tls_ && tls_->state() == tls::TlsSession::State::Open) {
      tls_->shutdown();
      flushTls();
    }
    if (pendingWrites_ == 0) closeHandle("");
  }

  void abort() override { fail(""); }

  const IpAddress& peerAddress() const override { return peer_; }
  uint16_t peerPort() const override { return peerPort_; }
  const IpAddress& localAddress() const override { return lookUpLocal(), local_; }
  uint16_t localPort() const override { return lookUpLocal(), localPort_; }

  // Closes the handle now; onClose(error) runs from libuv's close callback.
  void fail(const std::string& error) {
    closing_ = true;
    reading_ = false;
    closeHandle(error);
  }

 private:
  struct WriteReq {
    uv_write_t req{};
    std::string data;
    std::shared_ptr<TcpConnection> conn;
  };

  void updateSocketReading() {
    if (!handle_ || handleClosed_) return;
    bool want =
        !closing_ && !eofPending_ && !(tls_ && pendingBytes_ > kTlsWriteLimit) &&
        (reading_ || inbuf_.size() < kHoldLimit || (tls_ && tls_->state() == tls::TlsSession::State::Handshaking));
    if (want == socketReading_) return;
    socketReading_ = want;
    if (!want) {
      uv_read_stop(&handle_->stream);
      return;
    }
    int rc = uv_read_start(
        &handle_->stream,
        [](uv_handle_t* h, size_t, uv_buf_t* buf) {
          auto* self = static_cast<TcpConnection*>(h->data);
          if (!self) {
            *buf = uv_buf_init(nullptr, 0);
            return;
          }
          // Not zero-filled: read(2) writes what is used, and only the pages it touches
          // become resident (a 4 KB message touches one, not sixteen).
          if (!self->readBuf_) self->readBuf_ = std::make_unique_for_overwrite<char[]>(kReadBufSize);
          *buf = uv_buf_init(self->readBuf_.get(), static_cast<unsigned>(kReadBufSize));
        },
        [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
          if (auto* self = static_cast<TcpConnection*>(s->data)) self->onRead(n, buf);
        });
    if (rc < 0) fail(uvError("read", rc));
  }

  void onRead(ssize_t n, const uv_buf_t* buf) {
    if (closing_) return;
    auto keep = ref();  // callbacks below may drop the owner's last reference
    if (n == UV_EOF) return onEof();
    if (n < 0) return fail(uvError("read", static_cast<int>(n)));
    if (n == 0) return;
    std::string_view data(buf->base, static_cast<size_t>(n));
    if (!tls_ && !lineMode_ && inbuf_.empty() && !delivering_ && reading_ && cb_.onData) {
      // Nothing held and the owner takes any piece: straight from the read buffer, no copy.
      delivering_ = true;
      cb_.onData(data);
      delivering_ = false;
    } else if (!tls_) {
      inbuf_.append(data);
      deliver();
    } else {
      onCiphertext(data);
    }
    if (!reading_) updateSocketReading();  // held input past kHoldLimit stops the socket
  }

  void onCiphertext(std::string_view data) {
    bool wasHandshaking = tls_->state() == tls::TlsSession::State::Handshaking;
    bool ok = tls_->feedCiphertext(data);
    flushTls();
    if (!ok) return handshakeOrTlsFailure();
    if (wasHandshaking && tls_->state() == tls::TlsSession::State::Open) {
      auto done = std::move(tlsDone_);
      tlsDone_ = nullptr;
      uint64_t epoch = tlsEpoch_;
      if (done) done(true, "");
      if (closing_ || epoch != tlsEpoch_) return;
      updateSocketReading();
    }
    if (!tls_->readPlaintext(inbuf_)) {
      flushTls();
      return fail(tls_->error());
    }
    flushTls();  // TLS 1.3 may answer a key update
    if (tls_->state() == tls::TlsSession::State::Closed) return onEof();
    deliver();
    if (pendingBytes_ > kTlsWriteLimit) updateSocketReading();  // the peer reads nothing
  }

  void handshakeOrTlsFailure() {
    if (tlsDone_) return handshakeFailed();
    fail(tls_->error());
  }

  void handshakeFailed() {
    std::string err = tls_->error();
    auto done = std::move(tlsDone_);
    tlsDone_ = nullptr;
    if (done) done(false, err);
    fail(err);
  }

  void onEof() {
    if (tls_ && tlsDone_) {
      std::string err = "connection closed during TLS handshake";
      auto done = std::move(tlsDone_);
      tlsDone_ = nullptr;
      if (done) done(false, err);
      return fail(err);
    }
    // What came before the end is the owner's first, whenever it reads again.
    if (!eofPending_) {
      eofPending_ = true;
      updateSocketReading();
      deliver();
      return;
    }
    // A final line without LF still reaches the owner before onClose.
    if (lineMode_ && !inbuf_.empty() && reading_ && cb_.onData) {
      std::string rest;
      rest.swap(inbuf_);
      cb_.onData(rest);
    }
    if (!closing_) fail("");
  }

  // Hands buffered plaintext to the owner while it wants it. The checks after each call are
  // what make stopReading(), startTls() and close() take effect inside onData.
  void deliver() {
    if (delivering_) return;
    delivering_ = true;
    auto keep = ref();
    uint64_t epoch = tlsEpoch_;
    while (reading_ && !closing_ && !inbuf_.empty() && epoch == tlsEpoch_ && cb_.onData) {
      size_t len = inbuf_.size();
      if (lineMode_) {
        size_t lf = inbuf_.find('\n');
        if (lf == std::string::npos) break;  // wait for the rest of the line
        len = lf + 1;
      }
      std::string piece;
      if (len == inbuf_.size()) {
        piece.swap(inbuf_);  // all of it: no copy
      } else {
        piece = inbuf_.substr(0, len);
        inbuf_.erase(0, len);
      }
      cb_.onData(piece);
    }
    if (epoch != tlsEpoch_) inbuf_.clear();  // startTls from inside onData: RFC 3207 §4.2
    delivering_ = false;
    // The end of input, once everything before it (but a partial line) went to the owner.
    if (eofPending_ && reading_ && !closing_ && epoch == tlsEpoch_ &&
        (inbuf_.empty() || (lineMode_ && inbuf_.find('\n') == std::string::npos)))
      return onEof();
    // Line mode holds a partial line; a peer sending an endless line is the owner's to bound
    // (it sees nothing), so cap it here and deliver it as is.
    if (lineMode_ && inbuf_.size() > kReadBufSize && reading_ && !closing_ && cb_.onData) {
      std::string piece;
      piece.swap(inbuf_);
      cb_.onData(piece);
    }
  }

  void flushTls() {
    if (!tls_) return;
    std::string out;
    tls_->takeCiphertext(out);
    if (!out.empty()) writeRaw(std::move(out));
  }

  void writeRaw(std::string data) {
    if (handleClosed_) return;
    // Straight to the socket when nothing is queued: a write request that completes at
    // once still costs libuv an epoll_ctl when it drains, one per SMTP reply.
    if (pendingWrites_ == 0) {
      uv_buf_t b = uv_buf_init(data.data(), static_cast<unsigned>(data.size()));
      int n = uv_try_write(&handle_->stream, &b, 1);
      if (n == static_cast<int>(data.size())) return;
      if (n > 0)
        data.erase(0, static_cast<size_t>(n));
      else if (n != UV_EAGAIN)
        return fail(uvError("write", n));
    }
    auto w = std::make_unique<WriteReq>();
    w->data = std::move(data);
    w->conn = ref();
    w->req.data = w.get();
    uv_buf_t b = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
    size_t size = w->data.size();
    int rc = uv_write(&w->req, &handle_->stream, &b, 1, [](uv_write_t* req, int status) {
      std::unique_ptr<WriteReq> owned(static_cast<WriteReq*>(req->data));
      owned->conn->onWritten(owned->data.size(), status);
    });
    if (rc < 0) return fail(uvError("write", rc));
    w.release();
    pendingBytes_ += size;
    ++pendingWrites_;
  }

  void onWritten(size_t size, int status) {
    pendingBytes_ -= size;
    --pendingWrites_;
    if (handleClosed_) return;
    if (status < 0) return fail(uvError("write", status));
    if (tls_ && !socketReading_) updateSocketReading();  // below kTlsWriteLimit again: read on
    if (pendingWrites_ != 0) return;
    if (closing_) return closeHandle("");
    if (cb_.onDrain) {
      auto keep = ref();
      cb_.onDrain();
    }
  }

  void closeHandle(const std::string& error) {
    if (handleClosed_ || !handle_) return;
    handleClosed_ = true;
    closeError_ = error;
    self_ = ref();  // alive until libuv's close callback, whoever else lets go
    deliverTimer_.reset();  // closed with the socket, never after the loop
    uv_close(&handle_->handle, [](uv_handle_t* h) {
      auto* self = static_cast<TcpConnection*>(h->data);
      delete reinterpret_cast<uv_any_handle*>(h);
      self->handle_ = nullptr;
      auto keep = std::move(self->self_);  // may be the last reference
      auto onClose = std::move(self->cb_.onClose);
      self->cb_ = Callbacks{};
      if (onClose) onClose(self->closeError_);
    });
  }

  uv_loop_t* loop_;
  uv_any_handle* handle_ = nullptr;      // owned by libuv from init until its close callback
  bool pipe_ = false;                    // a uv_pipe_t (Unix socket), else a uv_tcp_t
  std::shared_ptr<TcpConnection> self_;  // set from close until the close callback
  Callbacks cb_;
  std::unique_ptr<char[]> readBuf_;  // kReadBufSize bytes, from the first read on
  std::string inbuf_;
  std::unique_ptr<uv::Timer> deliverTimer_;  // deferred delivery after startReading()
  std::unique_ptr<tls::TlsSession> tls_;
  std::function<void(bool, const std::string&)> tlsDone_;
  uint64_t tlsEpoch_ = 0;
  size_t pendingBytes_ = 0;
  size_t pendingWrites_ = 0;
  bool reading_ = false, socketReading_ = false, lineMode_ = false, delivering_ = false;
  bool closing_ = false, handleClosed_ = false;
  bool eofPending_ = false;  // the peer's end of input, not yet handed over
  std::string closeError_;
  IpAddress peer_;
  uint16_t peerPort_ = 0;
  mutable IpAddress local_;  // lookUpLocal()
  mutable uint16_t localPort_ = 0;
  mutable bool localKnown_ = false;
};

class TcpListener final : public Listener {
 public:
  TcpListener(uv_loop_t* loop, std::shared_ptr<tls::TlsContext> tls, AcceptFn fn)
      : loop_(loop), tls_(std::move(tls)), onAccept_(std::move(fn)) {}

  bool open(const std::string& host, uint16_t port, bool reusePort, std::string& error) {
    sockaddr_storage ss{};
    if (!parseBind(host, port, ss)) {
      error = "bad listen address " + host;
      return false;
    }
    int rc = uv_tcp_init_ex(loop_, h_.get(), ss.ss_family);
    if (rc < 0) {
      error = uvError("socket", rc);
      return false;
    }
    h_.markInitialized();
    h_.get()->data = this;
    if (reusePort && !setReusePort(error)) return false;
    rc = uv_tcp_bind(h_.get(), reinterpret_cast<sockaddr*>(&ss), 0);
    // Accepted sockets inherit TCP_NODELAY on Linux: set once here, not on every accept
    // (onConnection checks the first one).
    if (rc == 0) uv_tcp_nodelay(h_.get(), 1);
    if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(h_.get()), 511, [](uv_stream_t* s, int status) {
      if (auto* self = static_cast<TcpListener*>(s->data)) self->onConnection(status);
    });
    if (rc < 0) {
      error = uvError(("listen on " + host + ":" + std::to_string(port)).c_str(), rc);
      return false;
    }
    int len = sizeof ss;
    if (uv_tcp_getsockname(h_.get(), reinterpret_cast<sockaddr*>(&ss), &len) == 0) port_ = portOf(ss);
    return true;
  }

  uint16_t port() const override { return port_; }
  void close() override { h_.close(); }

 private:
  static bool parseBind(const std::string& host, uint16_t port, sockaddr_storage& ss) {
    std::string h = host;
    if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
    if (h.empty() || h == "*") h = "0.0.0.0";
    if (uv_ip4_addr(h.c_str(), port, reinterpret_cast<sockaddr_in*>(&ss)) == 0) return true;
    return uv_ip6_addr(h.c_str(), port, reinterpret_cast<sockaddr_in6*>(&ss)) == 0;
  }

  // Must happen before bind, or the kernel will not share the port between workers.
  bool setReusePort(std::string& error) {
    uv_os_fd_t fd;
    int rc = uv_fileno(h_.raw(), &fd);
    int one = 1;
    if (rc < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
      error = "SO_REUSEPORT: " + std::string(rc < 0 ? uv_strerror(rc) : std::strerror(errno));
      return false;
    }
    return true;
  }

  void onConnection(int status) {
    if (status < 0) return;  // EMFILE and friends: the next accept may work
    std::string error;
    auto conn = TcpConnection::create(loop_, error);
    if (!conn) return;
    if (uv_accept(reinterpret_cast<uv_stream_t*>(h_.get()), reinterpret_cast<uv_stream_t*>(conn->handle())) < 0) {
      conn->abort();
      return;
    }
    conn->established(false);
    if (noDelayInherited_ < 0) noDelayInherited_ = conn->noDelay() ? 1 : 0;
    if (noDelayInherited_ == 0) uv_tcp_nodelay(conn->handle(), 1);
    if (tls_) conn->startTls(tls_, "", nullptr);
    onAccept_(conn);
  }

  uv_loop_t* loop_;
  uv::Handle<uv_tcp_t> h_;
  std::shared_ptr<tls::TlsContext> tls_;
  AcceptFn onAccept_;
  uint16_t port_ = 0;
  int noDelayInherited_ = -1;  // unknown until the first accept
};

// One outbound connect; owned by libuv through req.data until the connect callback, which
// always runs (with UV_ECANCELED when the timeout closed the socket first).
struct ConnectOp {
  explicit ConnectOp(uv_loop_t* loop) : timer(loop) {}
  uv_connect_t req{};
  std::shared_ptr<TcpConnection> conn;
  uv::Timer timer;
  std::function<void(std::shared_ptr<Connection>, const std::string&)> done;
  bool finished = false;

  void finish(std::shared_ptr<Connection> c, const std::string& error) {
    if (finished) return;
    finished = true;
    timer.stop();
    auto d = std::move(done);
    d(std::move(c), error);
  }

  // The connect callback, TCP's and a Unix socket's: it always runs (also after the timeout
  // answered, or for a path that cannot be reached) and frees the operation.
  static void connected(uv_connect_t* req, int status) {
    std::unique_ptr<ConnectOp> op(static_cast<ConnectOp*>(req->data));
    if (op->finished) return;
    if (status < 0) {
      op->conn->abort();
      return op->finish(nullptr, uvError("connect", status));
    }
    op->conn->established();
    op->finish(op->conn, "");
  }

  // Started once the connect is under way; the operation is the connect callback's to free.
  void armTimeout(uv_loop_t* loop, uint64_t timeoutMs) {
    uv_update_time(loop);  // the caller may have been busy since the loop last woke
    timer.start(timeoutMs, [this] {
      finish(nullptr, "connect timeout");
      conn->abort();  // the connect callback then frees the operation
    });
  }
};

}  // namespace

std::unique_ptr<Listener> listen(uv_loop_t* loop, const std::string& host, uint16_t port, bool reusePort,
                                 std::shared_ptr<tls::TlsContext> implicitTls, Listener::AcceptFn onAccept,
                                 std::string& error) {
  auto l = std::make_unique<TcpListener>(loop, std::move(implicitTls), std::move(onAccept));
  if (!l->open(host, port, reusePort, error)) return nullptr;
  return l;
}

void connect(uv_loop_t* loop, const IpAddress& ip, uint16_t port, uint64_t timeoutMs,
             std::function<void(std::shared_ptr<Connection>, const std::string& error)> done,
             const std::optional<IpAddress>& source) {
  std::string error;
  auto conn = TcpConnection::create(loop, error);
  if (!conn) return done(nullptr, error);
  if (source && source->isV4() == ip.isV4()) {
    sockaddr_storage local{};
    source->toSockaddr(0, local);
    // libuv makes the socket of the source's family here; connect then uses that socket.
    if (int rc = uv_tcp_bind(conn->handle(), reinterpret_cast<sockaddr*>(&local), 0); rc < 0) {
      conn->abort();
      return done(nullptr, "cannot bind source address " + source->str() + ": " + uv_strerror(rc));
    }
  }
  sockaddr_storage ss{};
  ip.toSockaddr(port, ss);
  auto op = std::make_unique<ConnectOp>(loop);
  op->conn = conn;
  op->done = std::move(done);
  op->req.data = op.get();
  int rc = uv_tcp_connect(&op->req, conn->handle(), reinterpret_cast<sockaddr*>(&ss), ConnectOp::connected);
  if (rc < 0) {
    conn->abort();
    return op->done(nullptr, uvError("connect", rc));
  }
  op.release()->armTimeout(loop, timeoutMs);
}

void connectUnix(uv_loop_t* loop, const std::string& path, uint64_t timeoutMs,
                 std::function<void(std::shared_ptr<Connection>, const std::string& error)> done) {
  std::string error;
  auto conn = TcpConnection::create(loop, error, true);
  if (!conn) return done(nullptr, error);
  auto op = std::make_unique<ConnectOp>(loop);
  op->conn = conn;
  op->done = std::move(done);
  op->req.data = op.get();
  ConnectOp* raw = op.release();
  uv_pipe_connect(&raw->req, conn->pipeHandle(), path.c_str(), ConnectOp::connected);
  raw->armTimeout(loop, timeoutMs);
}

}  // namespace moat::mta::net
