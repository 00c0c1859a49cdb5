// filters/antivirus/clamd.cc — see clamd.h.
#include "filters/antivirus/clamd.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include "mta/runtime/fd.h"
#include "mta/runtime/log.h"

namespace moat::filters::antivirus {

namespace mlog = moat::mta::log;

namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kChunk = 64 * 1024;   // clamd reads INSTREAM chunks of any size; 64 KB keeps syscalls few
constexpr size_t kMaxReply = 4096;     // clamd's replies are one short line
constexpr size_t kMaxSignature = 200;  // it goes into the SMTP reply text

using Fd = mta::UniqueFd;

int msLeft(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, 1 << 30));
}

std::string sysError(const char* what, int err) { return std::string(what) + ": " + std::strerror(err); }

// Waits for `events` on `fd` until `deadline`.
bool waitFor(int fd, short events, Clock::time_point deadline, const char* what, std::string& error) {
  for (;;) {
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, msLeft(deadline));
    if (n > 0) return true;
    if (n == 0) {
      error = std::string(what) + ": timed out";
      return false;
    }
    if (errno != EINTR) {
      error = sysError(what, errno);
      return false;
    }
  }
}

bool connectOne(int family, const sockaddr* sa, socklen_t len, Clock::time_point deadline, Fd& out,
                std::string& error) {
  Fd fd(::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) {
    error = sysError("socket", errno);
    return false;
  }
  if (::connect(fd.get(), sa, len) != 0) {
    if (errno != EINPROGRESS && errno != EINTR) {
      error = sysError("connect", errno);
      return false;
    }
    if (!waitFor(fd.get(), POLLOUT, deadline, "connect", error)) return false;
    int err = 0;
    socklen_t errLen = sizeof err;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &errLen) != 0 || err != 0) {
      error = sysError("connect", err ? err : errno);
      return false;
    }
  }
  out = std::move(fd);
  return true;
}

bool connectTo(const ClamdAddress& a, Clock::time_point deadline, Fd& out, std::string& error) {
  if (!a.path.empty()) {
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    if (a.path.size() >= sizeof sun.sun_path) {
      error = "unix socket path too long";
      return false;
    }
    std::memcpy(sun.sun_path, a.path.data(), a.path.size());
    return connectOne(AF_UNIX, reinterpret_cast<const sockaddr*>(&sun), sizeof sun, deadline, out, error);
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  // Blocking name lookup: this runs on the thread pool, and is instant for IP literals.
  int rc = ::getaddrinfo(a.host.c_str(), std::to_string(a.port).c_str(), &hints, &res);
  if (rc != 0) {
    error = std::string("resolve ") + a.host + ": " + gai_strerror(rc);
    return false;
  }
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> free(res, ::freeaddrinfo);
  for (addrinfo* ai = res; ai; ai = ai->ai_next)
    if (connectOne(ai->ai_family, ai->ai_addr, ai->ai_addrlen, deadline, out, error)) return true;
  return false;
}

bool sendAll(int fd, std::string_view data, Clock::time_point deadline, std::string& error, int& lastErrno) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!waitFor(fd, POLLOUT, deadline, "send", error)) return false;
      continue;
    }
    lastErrno = errno;
    error = sysError("send", errno);
    return false;
  }
  return true;
}

// Reads up to the terminating NUL (or the end of the stream), at most kMaxReply bytes.
bool readReply(int fd, Clock::time_point deadline, std::string& reply, std::string& error) {
  char buf[512];
  while (reply.size() < kMaxReply) {
    ssize_t n = ::recv(fd, buf, std::min(sizeof buf, kMaxReply - reply.size()), 0);
    if (n > 0) {
      reply.append(buf, static_cast<size_t>(n));
      if (reply.find('\0') != std::string::npos) break;
      continue;
    }
    if (n == 0) break;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!waitFor(fd, POLLIN, deadline, "read reply", error)) return false;
      continue;
    }
    error = sysError("read reply", errno);
    return false;
  }
  if (size_t nul = reply.find('\0'); nul != std::string::npos) reply.resize(nul);
  while (!reply.empty() && (reply.back() == '\n' || reply.back() == '\r')) reply.pop_back();
  if (reply.empty()) {
    error = "clamd closed the connection without a reply";
    return false;
  }
  return true;
}

bool endsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// The signature name goes into an SMTP reply: printable ASCII only, bounded.
std::string safeSignature(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, kMaxSignature)) out += (c > 0x20 && c < 0x7f) ? c : '_';
  return out.empty() ? "unknown" : out;
}

ScanResult errorResult(std::string text) {
  ScanResult r;
  r.status = ScanResult::Status::Error;
  r.error = std::move(text);
  return r;
}

}  // namespace

ScanResult parseInstreamReply(std::string_view reply, size_t sent) {
  ScanResult r;
  std::string_view rest = reply;
  if (rest.substr(0, 8) == "stream: ") rest.remove_prefix(8);
  if (rest == "OK") return r;
  if (reply.find("size limit exceeded") != std::string_view::npos)
    return errorResult("clamd StreamMaxLength exceeded after " + std::to_string(sent) +
                       " bytes: raise StreamMaxLength in clamd.conf (at least max_message_size)");
  // Heuristics.Limits.Exceeded.* (clamd.conf AlertExceedsMax) is a Limit, as with libclamav.
  if (endsWith(rest, " FOUND")) return foundResult(safeSignature(rest.substr(0, rest.size() - 6)));
  std::string shown(reply.substr(0, 200));
  if (endsWith(reply, "ERROR")) return errorResult("clamd: " + shown);
  return errorResult("unexpected clamd reply: " + shown);
}

std::string ClamdAddress::text() const {
  if (!path.empty()) return path;
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return h + ":" + std::to_string(port);
}

std::optional<ClamdAddress> parseClamdAddress(std::string_view text, std::string& error) {
  ClamdAddress a;
  if (text.find('/') != std::string_view::npos) {
    if (text.size() >= sizeof(sockaddr_un{}.sun_path)) {
      error = "unix socket path longer than " + std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + " bytes";
      return std::nullopt;
    }
    a.path = std::string(text);
    return a;
  }
  size_t colon = text.rfind(':');
  std::string_view host = colon == std::string_view::npos ? text.substr(0, 0) : text.substr(0, colon);
  std::string_view port = colon == std::string_view::npos ? text.substr(0, 0) : text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string_view::npos) {
    host = {};  // an IPv6 address needs brackets
  }
  unsigned long p = 0;
  bool digits = !port.empty() && port.size() <= 5 &&
                std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (digits) p = std::stoul(std::string(port));
  if (host.empty() || !digits || p == 0 || p > 65535) {
    error = "expected a unix socket path (with a '/') or HOST:PORT, got \"" + std::string(text) + "\"";
    return std::nullopt;
  }
  a.host = std::string(host);
  a.port = static_cast<uint16_t>(p);
  return a;
}

ClamdClient::ClamdClient(ClamdAddress address, ClamdTimeouts timeouts)
    : address_(std::move(address)), timeouts_(timeouts) {}

ScanResult ClamdClient::instream(std::string_view data) const {
  auto start = Clock::now();
  auto deadline = start + timeouts_.exchange;
  std::string error;
  Fd fd;
  if (!connectTo(address_, std::min(deadline, start + timeouts_.connect), fd, error))
    return errorResult("clamd " + address_.text() + ": " + error);
  int lastErrno = 0;
  size_t sent = 0;
  bool ok = sendAll(fd.get(), std::string_view("zINSTREAM\0", 10), deadline, error, lastErrno);
  for (bool last = false; ok && !last;) {
    std::string_view chunk = data.substr(sent, kChunk);
    last = chunk.empty();  // the zero-length chunk ends the stream
    uint32_t len = htonl(static_cast<uint32_t>(chunk.size()));
    ok = sendAll(fd.get(), std::string_view(reinterpret_cast<const char*>(&len), 4), deadline, error, lastErrno) &&
         sendAll(fd.get(), chunk, deadline, error, lastErrno);
    if (ok) sent += chunk.size();
  }
  // clamd answers a too-long stream and closes while we write: its reply says why.
  std::string reply, readError;
  if (ok || lastErrno == EPIPE || lastErrno == ECONNRESET) {
    if (readReply(fd.get(), deadline, reply, readError)) return parseInstreamReply(reply, sent);
  }
  if (!ok && (lastErrno == EPIPE || lastErrno == ECONNRESET))
    return errorResult("clamd " + address_.text() + " closed the connection after " + std::to_string(sent) +
                       " bytes (StreamMaxLength exceeded?): " + error);
  return errorResult("clamd " + address_.text() + ": " + (ok ? readError : error));
}

std::optional<std::string> ClamdClient::command(std::string_view cmd, std::string& error) const {
  auto start = Clock::now();
  auto deadline = start + std::min(timeouts_.exchange, timeouts_.connect);
  Fd fd;
  int lastErrno = 0;
  std::string wire = "z" + std::string(cmd);
  wire.push_back('\0');
  std::string reply;
  if (!connectTo(address_, deadline, fd, error) || !sendAll(fd.get(), wire, deadline, error, lastErrno) ||
      !readReply(fd.get(), deadline, reply, error)) {
    error = "clamd " + address_.text() + ": " + error;
    return std::nullopt;
  }
  return reply;
}

bool ClamdClient::ping(std::string& error) const {
  auto reply = command("PING", error);
  if (reply && *reply != "PONG")
    error = "clamd " + address_.text() + ": unexpected PING reply: " + reply->substr(0, 200);
  return reply && *reply == "PONG";
}

std::optional<std::string> ClamdClient::version(std::string& error) const { return command("VERSION", error); }

ClamdScanner::ClamdScanner(ClamdAddress address, ClamdTimeouts timeouts, uint64_t maxScanSize)
    : client_(std::move(address), timeouts), maxScanSize_(maxScanSize) {}

ClamdScanner::~ClamdScanner() { pinger_.wait(); }

ScanResult ClamdScanner::scan(std::string_view raw, const mime::Message* mime) const {
  auto scanOne = [this](std::string_view data, const char*) {
    ScanResult r = client_.instream(data);
    r.scans = 1;
    return r;
  };
  return scanMessage(scanOne, raw, mime, maxScanSize_);
}

void ClamdScanner::reloadInBackground() {
  pinger_.start([this] { checkNow(); });
}

std::string ClamdScanner::lastError() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lastError_;
}

bool ClamdScanner::checkNow() {
  std::string error;
  bool answered = client_.ping(error);
  {
    std::lock_guard<std::mutex> lock(mu_);
    lastError_ = answered ? "" : error;
  }
  if (!answered) {
    mlog::warn("antivirus_clamd_unreachable")
        .add("backend", name())
        .add("clamd_socket", client_.address().text())
        .add("error", error)
        .add("reason", "clamd does not answer PING: every message is answered 451 4.7.1 until it does");
    return false;
  }
  auto version = client_.version(error);
  mlog::info("reload")
      .add("component", "antivirus")
      .add("backend", name())
      .add("clamd_socket", client_.address().text())
      .add("version", version.value_or(""));
  return true;
}

}  // namespace moat::filters::antivirus
