// mta/net/connection.h — a TCP (or Unix-socket) stream on the libuv loop with optional TLS (STARTTLS or
// implicit), used by the SMTP server and client alike. Reading is flow-controlled: the
// owner stops reading while it waits on the spool or a filter, so a fast peer cannot make
// a session buffer without bound.
//
// Lifetime: a Connection is owned through std::shared_ptr; while libuv holds the socket
// (writes, connect, close) it keeps a reference to itself, so the owner may drop its
// pointer at any time after close(). Dropping the last reference without close() aborts
// the connection without any callback. Callbacks are never invoked after close(), except
// the one onClose that reports the end.
#pragma once
#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "mta/runtime/ip.h"
#include "mta/tls/tls.h"

namespace moat::mta::net {

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  struct Callbacks {
    // Plaintext bytes (decrypted when TLS is on). The view is valid during the call only.
    std::function<void(std::string_view)> onData;
    // The peer closed, an I/O or TLS error happened, or close() finished. Called once.
    // `error` is empty for an orderly close.
    std::function<void(const std::string& error)> onClose;
    // Optional: every queued write has reached the kernel (pendingWriteBytes() is 0). Lets a
    // writer of a large body queue the next chunk only once the previous ones left.
    std::function<void()> onDrain;
  };

  virtual ~Connection() = default;

  virtual void setCallbacks(Callbacks cb) = 0;
  // Reading on/off. stopReading() takes effect at once for the owner, even inside onData:
  // nothing more is delivered until startReading(), and then from the loop, never from
  // inside the startReading() call. The socket itself goes on reading into a bounded hold
  // (64 KiB, plus one read) so a short pause costs no system call; the peer's end of input
  // is reported only after everything it sent before it.
  virtual void startReading() = 0;
  virtual void stopReading() = 0;
  // Line mode (off by default): onData receives one line at a time, ending with its LF (the
  // last piece before EOF may lack it). With line mode, a command handler that calls
  // stopReading(), startTls() or close() inside onData stops the rest of the read from being
  // delivered: held for startReading(), or discarded for startTls (the STARTTLS injection
  // defence needs no help from the owner). Without line mode, onData receives whole reads
  // and the owner must drop its own unparsed input when it calls startTls().
  virtual void setLineMode(bool on) = 0;
  // Queues plaintext for the peer (encrypted when TLS is on). Writes keep their order.
  virtual void write(std::string data) = 0;
  // Bytes queued to libuv but not yet written (for back-pressure).
  virtual size_t pendingWriteBytes() const = 0;
  // Starts TLS on this stream now (server: after "220 Ready to start TLS" was queued;
  // the queued plaintext is flushed first). Bytes the peer sent before the handshake and
  // not yet delivered are DISCARDED (RFC 3207 §4.2, the STARTTLS injection defence).
  // `done(ok, error)` runs once the handshake finished or failed.
  // On failure, done(false, error) runs and then the connection closes with onClose(error).
  // Bytes arriving after the call are TLS records: plaintext sent early fails the handshake.
  virtual void startTls(std::shared_ptr<tls::TlsContext> ctx, const std::string& sni,
                        std::function<void(bool ok, const std::string& error)> done) = 0;
  // Server side, implicit TLS after a plaintext prefix the owner read (a PROXY protocol
  // header, mta/net/proxy_header.h): unlike startTls, input received and not yet delivered
  // (what unread() put back, and what came after it) is the start of the handshake, the
  // client's ClientHello, and is kept. Call it while not reading.
  virtual void startImplicitTls(std::shared_ptr<tls::TlsContext> ctx) = 0;
  // Puts `data` back in front of the input not yet delivered, to be delivered (or, with
  // startImplicitTls, taken as TLS) first: the octets an owner read past the part it took.
  virtual void unread(std::string data) = 0;
  virtual bool tlsActive() const = 0;
  virtual const tls::TlsSession* tls() const = 0;
  // Flushes queued writes, then closes. Idempotent.
  virtual void close() = 0;
  // Closes at once, dropping queued writes (timeouts, protocol abuse).
  virtual void abort() = 0;

  virtual const IpAddress& peerAddress() const = 0;
  virtual uint16_t peerPort() const = 0;
  // Looked up at the first call while the socket is open (empty / 0 after it closed).
  virtual const IpAddress& localAddress() const = 0;
  virtual uint16_t localPort() const = 0;
};

// Listens on host:port (SO_REUSEPORT when `reusePort`), calls `onAccept` with each new
// connection (already accepted, not yet reading). For implicit TLS, pass `tlsCtx` and the
// connection starts its handshake before onAccept data flows.
class Listener {
 public:
  using AcceptFn = std::function<void(std::shared_ptr<Connection>)>;
  virtual ~Listener() = default;
  virtual uint16_t port() const = 0;  // the bound port (useful with port 0)
  virtual void close() = 0;
};

// Returns nullptr and sets `error` if the address cannot be bound.
std::unique_ptr<Listener> listen(uv_loop_t* loop, const std::string& host, uint16_t port, bool reusePort,
                                 std::shared_ptr<tls::TlsContext> implicitTls, Listener::AcceptFn onAccept,
                                 std::string& error);

// Connects to ip:port with a timeout; `done(conn, error)` runs once: conn is null on failure.
// With `source` of the destination's family, the socket is bound to it (port 0) first, so the
// connection leaves from that address ([queue] / [[route]] source_ipv4, source_ipv6); a source
// of the other family is ignored (the kernel picks). A bind that fails (the address is no
// longer this host's) fails the connect with an error that begins "cannot bind source
// address ADDRESS: ".
void connect(uv_loop_t* loop, const IpAddress& ip, uint16_t port, uint64_t timeoutMs,
             std::function<void(std::shared_ptr<Connection>, const std::string& error)> done,
             const std::optional<IpAddress>& source = std::nullopt);

// Connects to the Unix-domain stream socket at `path` (an LMTP server's, RFC 2033), on the
// loop like connect(): `done(conn, error)` runs once, conn null on failure. The connection
// has no IP peer or local address (peerAddress() and localAddress() stay unset).
void connectUnix(uv_loop_t* loop, const std::string& path, uint64_t timeoutMs,
                 std::function<void(std::shared_ptr<Connection>, const std::string& error)> done);

}  // namespace moat::mta::net
