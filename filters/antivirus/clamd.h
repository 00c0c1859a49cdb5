// filters/antivirus/clamd.h — the clamd backend (backend.h): the message and its decoded
// parts are sent to a running clamd over its socket with the INSTREAM command (clamd(8)):
// "zINSTREAM\0", then chunks each prefixed by a 4-byte network-order length, a zero-length
// chunk to end; the NUL-terminated reply is "stream: OK", "stream: <Sig> FOUND" or
// "... ERROR". A stream larger than clamd's StreamMaxLength gets "INSTREAM size limit
// exceeded. ERROR" (and clamd closes the socket while we still write): that is an Error
// naming StreamMaxLength, never a pass. The clamd is a unix socket path or HOST:PORT (TCP).
//
// Why blocking sockets on the thread pool and not the event loop: scans already run on
// the libuv thread pool (env.offload) for libclamav, the message is in memory, and the
// whole exchange is one request and one short reply, so a blocking client with poll()
// deadlines is a few dozen lines with no state machine, and the filter code is the same
// for both backends. The event loop never waits on clamd. The cost: a stalled clamd holds
// a pool thread for at most scan_timeout (the deadline of the whole exchange; connecting
// has its own shorter deadline), and clamd's MaxThreads bounds the parallel scans anyway.
//
// Untrusted input: the message (sent, not parsed here) and clamd's reply (read into a
// bounded buffer, 4 KB). Nothing is retried: an unreachable clamd, a timeout, a short or
// unexpected reply are Errors (the filter answers 451 4.7.1).
// Logs: `reload` (component antivirus, backend clamd, clamd_socket, version) when a PING
// at start-up or reload is answered; `antivirus_clamd_unreachable` (warn) when it is not —
// Moat still starts, and scans fail with 451 until clamd answers.
#pragma once
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "filters/antivirus/backend.h"

namespace moat::filters::antivirus {

struct ClamdAddress {
  std::string path;  // a unix socket; empty for TCP
  std::string host;  // TCP: an IP literal (IPv6 in brackets in the text) or a name from /etc/hosts or DNS
  uint16_t port = 0;
  std::string text() const;  // as written in the config, for logs
};

// "/run/clamav/clamd.ctl" (anything with a '/') or "HOST:PORT" / "[V6]:PORT". Relative
// paths are left as they are (the config reader resolves them). nullopt with `error` set.
std::optional<ClamdAddress> parseClamdAddress(std::string_view text, std::string& error);

// clamd's reply to INSTREAM (untrusted: what came back, up to its NUL, at most 4 KB, with
// trailing CR/LF removed) as a result; `sent` is the number of bytes sent, for the message.
// Clean only for "stream: OK" (or a bare "OK"); "stream: <Sig> FOUND" is Found, or a Limit
// for "Heuristics.Limits.Exceeded.*" (foundResult), with the signature printable ASCII
// without spaces and at most 200 bytes (it goes into the SMTP reply); "INSTREAM size limit
// exceeded. ERROR" is an Error naming StreamMaxLength; anything else is an Error quoting
// the reply's first 200 bytes (for the log).
ScanResult parseInstreamReply(std::string_view reply, size_t sent);

struct ClamdTimeouts {
  std::chrono::milliseconds connect{std::chrono::seconds(5)};
  std::chrono::milliseconds exchange{std::chrono::minutes(2)};  // send + clamd's scan + reply
};

class ClamdClient {
 public:
  ClamdClient(ClamdAddress address, ClamdTimeouts timeouts);
  // One INSTREAM exchange on a fresh connection.
  ScanResult instream(std::string_view data) const;
  // "zVERSION" (which also proves the daemon answers, like PING): the version line, or
  // nullopt with `error` set.
  std::optional<std::string> version(std::string& error) const;
  // "zPING": true on "PONG".
  bool ping(std::string& error) const;
  const ClamdAddress& address() const { return address_; }

 private:
  std::optional<std::string> command(std::string_view cmd, std::string& error) const;
  ClamdAddress address_;
  ClamdTimeouts timeouts_;
};

class ClamdScanner final : public Backend {
 public:
  ClamdScanner(ClamdAddress address, ClamdTimeouts timeouts, uint64_t maxScanSize);
  ~ClamdScanner() override;

  std::string_view name() const override { return "clamd"; }
  ScanResult scan(std::string_view raw, const mime::Message* mime) const override;
  // PINGs the clamd on a background thread and logs the outcome.
  void reloadInBackground() override;
  void maybeCheck(std::chrono::milliseconds) override {}  // clamd reloads its own databases
  void waitIdle() override { pinger_.wait(); }
  std::string lastError() const override;
  // The PING itself, on the calling thread (tests).
  bool checkNow();
  const ClamdClient& client() const { return client_; }

 private:
  ClamdClient client_;
  uint64_t maxScanSize_;
  mutable std::mutex mu_;  // guards lastError_
  std::string lastError_;  // of the last PING; "" = clamd answered
  BackgroundTask pinger_;  // last: joined before client_ goes
};

}  // namespace moat::filters::antivirus
