// mta/server/smtp_session.cc — see smtp_session.h.
#include "mta/server/smtp_session.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <ctime>
#include <optional>
#include <random>

#include "filters/recipient_key.h"
#include "mta/dns/client_name.h"
#include "mta/runtime/clock.h"
#include "mta/runtime/hex.h"
#include "mta/runtime/log.h"
#include "mta/runtime/scan.h"
#include "mta/server/metrics.h"
#include "policy/batv.h"
#include "policy/list_file.h"
#include "queue/dsn.h"

namespace moat::mta::server {
namespace {

constexpr size_t kReadCompactAt = 64 * 1024;
// Replies queued to a peer that does not read them: above this, input is no longer read or
// processed until the connection drains, so a pipelined flood cannot grow the write queue.
constexpr size_t kMaxPendingOutput = 64 * 1024;
// A closing session waits this long for its last replies to leave; a peer that does not read
// them then loses them, and the connection slot is released.
constexpr uint64_t kCloseGraceMs = 5000;
// Of a refused command line, this much goes into its `reject` line (the line may be 2 KB).
constexpr size_t kLoggedCommandBytes = 256;
// Of a pregreeter's early bytes, this much goes into its `pregreet` line.
constexpr size_t kLoggedPregreetBytes = 100;
// Failed AUTH attempts a session gets before it is closed (each also counts as an error).
constexpr unsigned kMaxAuthFailures = 3;
// RFC 4954 §4: a server must take the longest SASL response its mechanisms make, whatever
// its command line limit, and names 12288 octets as enough for deployed mechanisms (PLAIN's
// longest here is 2048). With its CRLF. A SASL response line after a 334 may be this long;
// so may an AUTH command with an initial response, after "AUTH ", the mechanism (at most 20
// characters, RFC 4422 §3.1) and a space, though RFC 4954 asks clients to keep it within
// the command limit (smtplib does not). Every other command line keeps the 2048 octets.
constexpr size_t kMaxSaslLine = 12288 + 2;
constexpr size_t kMaxAuthLine = kMaxSaslLine + 26;

std::string newSessionId() {
  static std::mt19937_64 rng{std::random_device{}()};
  static const char* kAlphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  uint64_t v = rng();
  std::string id;
  for (int i = 0; i < 12; ++i) {
    id.push_back(kAlphabet[v & 31]);
    v >>= 5;
  }
  return id;
}

std::string rfc5322Date() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S +0000", &tm);
  return buf;
}

bool iequalsPrefix(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(s[i])) != std::tolower(static_cast<unsigned char>(prefix[i])))
      return false;
  return true;
}

// The Message-ID of a message, for logs: searched in the header section only, bounded.
std::string findMessageId(std::string_view msg) {
  size_t pos = 0;
  const size_t limit = std::min<size_t>(msg.size(), 256 * 1024);
  while (pos < limit) {
    size_t eol = msg.find("\r\n", pos);
    if (eol == std::string_view::npos || eol >= limit) break;
    std::string_view line = msg.substr(pos, eol - pos);
    if (line.empty()) break;  // end of the header section
    if (iequalsPrefix(line, "message-id:")) {
      std::string_view v = line.substr(11);
      // a folded value continues on the next line
      size_t next = eol + 2;
      std::string value(v);
      while (next < limit && (msg[next] == ' ' || msg[next] == '\t')) {
        size_t e2 = msg.find("\r\n", next);
        if (e2 == std::string_view::npos) break;
        value += msg.substr(next, e2 - next);
        next = e2 + 2;
      }
      auto b = value.find_first_not_of(" \t");
      auto e = value.find_last_not_of(" \t");
      return b == std::string::npos ? "" : value.substr(b, e - b + 1).substr(0, 998);
    }
    pos = eol + 2;
  }
  return "";
}

// A peer's raw bytes for a log field: printable ASCII as is, the rest (CR, LF, binary) and
// the backslash as \xNN, so a TLS hello or an HTTP request shows what it was.
std::string printableBytes(std::string_view bytes) {
  std::string out;
  for (char ch : bytes) {
    auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c <= 0x7e && c != '\\') {
      out.push_back(ch);
    } else {
      out += "\\x";
      appendHex(out, c);
    }
  }
  return out;
}

// "550 5.7.1 text", as the `reply` log field shows a reply.
std::string replyLine(int code, std::string_view enhanced, std::string_view text) {
  return std::to_string(code) + " " + std::string(enhanced) + " " + std::string(text);
}

RejectStage rejectStage(std::string_view stage) {
  return stage == "connect" ? RejectStage::Connect
         : stage == "mail"  ? RejectStage::Mail
         : stage == "rcpt"  ? RejectStage::Rcpt
                            : RejectStage::Data;
}

bool isPostmaster(std::string_view address) {
  return address.size() == 10 && iequalsPrefix(address, "postmaster");
}

// "mail" or "rcpt" for a line that names that command (the parser refused the rest), else "".
std::string_view commandStage(std::string_view line) {
  if (line.size() < 4 || (line.size() > 4 && line[4] != ' ' && line[4] != ':')) return {};
  std::string_view verb = line.substr(0, 4);
  if (mta::iequalsAscii(verb, "MAIL")) return "mail";
  if (mta::iequalsAscii(verb, "RCPT")) return "rcpt";
  return {};
}

}  // namespace

SmtpSession::SmtpSession(ServerShared& shared, std::shared_ptr<const Snapshot> snapshot,
                         const policy::Listener& listener, std::shared_ptr<net::Connection> conn,
                         const SessionPeer& peer, std::function<void(SmtpSession*)> onEnd)
    : shared_(shared),
      snap_(std::move(snapshot)),
      cfg_(*snap_->config),
      listener_(listener),
      conn_(std::move(conn)),
      peer_(peer),
      onEnd_(std::move(onEnd)),
      id_(newSessionId()),
      timer_(shared.loop),
      started_(std::chrono::steady_clock::now()),
      nameTimer_(shared.loop),
      greetTimer_(shared.loop) {
  ctx_ = std::make_shared<filters::MessageContext>();
  ctx_->sessionId = id_;
  ctx_->clientIp = peer_.ip;
  ctx_->clientPort = peer_.port;
  ctx_->fromRelayNetwork = cfg_.isRelayClient(ctx_->clientIp);
  ctx_->tls = listener_.mode == policy::ListenerMode::Smtps;
  if (auto it = snap_->users.find(listener_.address); it != snap_->users.end()) users_ = it->second;
  if (users_) reader_.allowLongerLines("AUTH ", kMaxAuthLine);
}

SmtpSession::~SmtpSession() {
  if (incoming_) incoming_->abort();
}

void SmtpSession::start(bool blocked) {
  auto self = shared_from_this();
  std::weak_ptr<SmtpSession> weak = self;
  conn_->setCallbacks({
      [weak](std::string_view data) {
        if (auto s = weak.lock()) s->onData(data);
      },
      [weak](const std::string& error) {
        if (auto s = weak.lock()) s->onClosed(error);
      },
      [weak] {
        if (auto s = weak.lock()) s->onOutputDrained();
      },
  });
  {
    auto line = log::info("connect");
    line.add("session", id_)
        .add("client_ip", ctx_->clientIp.str())
        .add("client_port", static_cast<unsigned>(peer_.port))
        .add("listener", listener_.address);
    if (peer_.proxy) line.add("proxy", peer_.proxy->str());
  }
  ++metrics().sessionsTotal;
  ++metrics().sessionsActive;
  blocked_ = blocked;
  if (blocked_) {
    std::string text = cfg_.hostname + " Access denied";
    log::info("reject")
        .add("session", id_)
        .add("client_ip", ctx_->clientIp.str())
        .add("reply", replyLine(554, "5.7.1", text))
        .add("stage", "connect");
    metrics().countReject(RejectStage::Connect, 554);
    reply(554, "5.7.1", text);
  } else if (cfg_.pregreetWait.count() > 0 && listener_.mode == policy::ListenerMode::Smtp && !ctx_->fromRelayNetwork &&
             !cfg_.isAllowedClient(ctx_->clientIp)) {
    // The pregreet test. Submission and smtps clients are MUAs that authenticate, and the
    // relay networks and connection.allow are trusted: none of them waits.
    greetWait_ = true;
    out_ += "220-" + cfg_.hostname + " ESMTP Moat\r\n";
    std::weak_ptr<SmtpSession> weak = self;
    greetTimer_.start(static_cast<uint64_t>(cfg_.pregreetWait.count()), [weak] {
      auto s = weak.lock();
      if (!s || s->closed_) return;
      s->finishGreeting();
      s->flush();
      s->armTimer();
      s->readIfReady();
      s->processInput();  // the early bytes, if any: after the greeting, as if sent then
    });
  } else {
    reply(220, "", cfg_.hostname + " ESMTP Moat");
  }
  flush();
  // The command timeout starts with the greeting's last line (the wait is not the client's).
  if (!greetWait_) armTimer();
  conn_->startReading();
  if (!blocked_) startNameLookup();  // a blocked client sends no mail to name
}

void SmtpSession::finishGreeting() {
  if (!greetWait_) return;
  greetWait_ = false;
  greetTimer_.stop();
  reply(220, "", cfg_.hostname + " ESMTP Moat");
}

// Bytes before the greeting's last line: logged once, with the first of them, and held (in
// in_, and the connection's bounded hold behind it) until the greeting is complete.
void SmtpSession::notePregreet(std::string_view early) {
  if (!pregreeted_) {
    pregreeted_ = true;
    pregreetRefuse_ = cfg_.pregreetReject;
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started_);
    log::info("pregreet")
        .add("session", id_)
        .add("client_ip", ctx_->clientIp.str())
        .add("bytes", printableBytes(early.substr(0, kLoggedPregreetBytes)))
        .add("after_ms", static_cast<int64_t>(ms.count()))
        .add("action", cfg_.pregreetReject ? "reject" : "log");
    ++metrics().pregreets;
  }
  conn_->stopReading();
}

// Postfix's smtpd looks the name up before its greeting; here nothing waits for it but the
// end of a message's data (runDataFilters), so a slow or dead DNS server costs a client at
// most dns.timeout from its connect, and only if it gets as far as a message by then.
void SmtpSession::startNameLookup() {
  if (!cfg_.reverseDns || !shared_.resolver) return;
  nameLookup_ = true;
  nameDeadline_ = uv_now(shared_.loop) + static_cast<uint64_t>(cfg_.dnsTimeout.count());
  // Weak: a session that ends meanwhile is not kept for its name; the resolver calls back
  // once whatever happens (on shutdown too), and finds nothing to do.
  std::weak_ptr<SmtpSession> weak = weak_from_this();
  dns::verifyClientName(*shared_.resolver, ctx_->clientIp, [weak](std::string name) {
    if (auto s = weak.lock()) s->nameKnown(std::move(name));
  });
}

void SmtpSession::nameKnown(std::string name) {
  if (!nameLookup_) return;
  nameLookup_ = false;
  clientName_ = std::move(name);
  if (nameWait_) nameWaitOver();
}

// The caller made sure the lookup runs and its deadline is ahead.
void SmtpSession::waitForName(std::function<void()> then) {
  nameWait_ = true;
  nameThen_ = std::move(then);
  uint64_t now = uv_now(shared_.loop);
  std::weak_ptr<SmtpSession> weak = weak_from_this();
  nameTimer_.start(nameDeadline_ > now ? nameDeadline_ - now : 0, [weak] {
    auto s = weak.lock();
    if (!s || !s->nameWait_) return;
    s->nameDeadline_ = 0;  // not waited for again: the next message or RCPT goes on at once
    s->nameWaitOver();
  });
}

void SmtpSession::nameWaitOver() {
  nameWait_ = false;
  nameTimer_.stop();
  auto then = std::move(nameThen_);
  nameThen_ = nullptr;
  if (!closed_ && then) then();
}

std::string SmtpSession::clientNameField() const { return clientName_.empty() ? "unknown" : clientName_; }

void SmtpSession::drain() {
  draining_ = true;
  closeIfDraining();
}

// A draining session ends as soon as it is outside a transaction and waits on nothing of
// ours: a client must not hold off the shutdown by keeping the session busy with commands.
bool SmtpSession::closeIfDraining() {
  if (!draining_ || closed_ || inTransaction_ || paused_ || mode_ != Mode::Command) return false;
  // (closeWith ends a greeting still waiting first: the 421 follows a well-formed 220.)
  closeWith(421, "4.3.2", cfg_.hostname + " Service shutting down, try again later");
  return true;
}

bool SmtpSession::drainExpired() {
  if (closed_) return work_ > 0;  // a commit whose client left: it may still queue the message
  if (dataEnded_) return true;    // it will be answered: no message that gets 250 is cut off
  if (tlsHandshaking_) {          // no plaintext reply can go out in the middle of a handshake
    closed_ = true;
    conn_->abort();
    return false;
  }
  closeWith(421, "4.3.2", cfg_.hostname + " Service shutting down, try again later");
  return false;
}

// RFC 5321 §4.5.3.2 times a command/reply exchange, and a data block: a timer re-armed by
// every byte would let a client that sends one byte per (timeout - 1 s) keep its connection
// slot for good. So a command line must be complete within command_timeout of being awaited,
// a line of the message within data_timeout, and the message within max_data_time, whatever
// arrives meanwhile.
void SmtpSession::armTimer() {
  if (closed_) return;
  auto ms = static_cast<uint64_t>(
      (mode_ == Mode::Data || mode_ == Mode::Bdat ? cfg_.dataTimeout : cfg_.commandTimeout).count());
  // While our own work runs the deadline waits too: the callback below re-arms then, and a
  // deadline already past would make that a busy loop.
  if (dataDeadline_ != 0 && !paused_) {
    uint64_t now = uv_now(shared_.loop);
    ms = std::min(ms, dataDeadline_ > now ? dataDeadline_ - now : 0);
  }
  std::weak_ptr<SmtpSession> weak = weak_from_this();
  timer_.start(ms, [weak] {
    auto s = weak.lock();
    if (!s || s->closed_) return;
    // Waiting on our own work (spool, filters), not on the client: keep waiting. A TLS
    // handshake is the client's work, bounded like a command.
    if (s->paused_ && !s->tlsHandshaking_) {
      s->armTimer();
      return;
    }
    const bool data = s->mode_ == Mode::Data || s->mode_ == Mode::Bdat;
    const char* stage = s->tlsHandshaking_ ? "starttls" : data ? "data" : "command";
    // The limit that ran out, as named in the config.
    const char* limit = s->dataDeadline_ != 0 && uv_now(s->shared_.loop) >= s->dataDeadline_ ? "max_data_time"
                        : data                                                               ? "data_timeout"
                                                                                             : "command_timeout";
    log::info("timeout")
        .add("session", s->id_)
        .add("client_ip", s->ctx_->clientIp.str())
        .add("stage", std::string(stage))
        .add("limit", std::string(limit));
    if (s->tlsHandshaking_) {  // no plaintext reply can go out in the middle of a handshake
      s->closed_ = true;
      s->conn_->abort();
      return;
    }
    s->closeWith(421, "4.4.2", s->cfg_.hostname + " Error: timeout exceeded");
  });
}

void SmtpSession::onData(std::string_view data) {
  if (closed_) return;
  if (inPos_ >= kReadCompactAt || inPos_ == in_.size()) {
    in_.erase(0, inPos_);
    inPos_ = 0;
  }
  if (greetWait_) {  // nothing is processed before the greeting's last line
    notePregreet(data);
    in_.append(data);
    return;
  }
  // The data timeout is per line of the message, as Postfix's smtpd_per_record_deadline:
  // RFC 5321 §4.5.3.2.6 times a data block, and re-arming on every read would let a byte
  // per read hold the slot (max_data_time bounds a trickle of whole lines). A refused BDAT
  // chunk is dropped unread: per read. Part of a command line re-arms nothing: processInput
  // does, per line.
  const bool inData = mode_ == Mode::Data || mode_ == Mode::Bdat;
  const bool unread = mode_ == Mode::Bdat && bdatDiscard_;
  const uint64_t lines = decoder_ ? decoder_->lineMark() : 0;
  if (mode_ == Mode::Data && !paused_ && !outputBlocked_ && in_.empty()) {
    // Message bytes with nothing held before them: decoded straight from the connection's
    // buffer. What follows the end of data (pipelined commands) is kept like any input.
    size_t used = decodeData(data);
    in_.append(data.substr(used));
    dataStep();
    processInput();
  } else {
    in_.append(data);
    processInput();
  }
  if (inData && (mode_ == Mode::Data || mode_ == Mode::Bdat) && (unread || (decoder_ && decoder_->lineMark() != lines)))
    armTimer();
}

void SmtpSession::processInput() {
  bool awaitCommand = false;  // a command line was taken or a BDAT chunk ended: re-arm once
  while (!paused_ && !closed_ && !outputBlocked_ &&
         (inPos_ < in_.size() || (mode_ == Mode::Bdat && bdatRemaining_ == 0))) {
    // (A BDAT chunk of 0 octets is complete without any input: RFC 3030 §2 wants its reply now.)
    if (mode_ == Mode::Data) {
      feedData();
      continue;
    }
    if (mode_ == Mode::Bdat) {
      feedBdat();
      awaitCommand |= mode_ == Mode::Command;
      continue;
    }
    std::string_view rest(in_.data() + inPos_, in_.size() - inPos_);
    size_t nl = rest.find('\n');
    if (nl == std::string_view::npos) {
      reader_.feed(rest);
      inPos_ = in_.size();
    } else {
      reader_.feed(rest.substr(0, nl + 1));
      inPos_ += nl + 1;
    }
    std::string line;
    for (;;) {
      reader_.setMaxLine(saslActive_ ? kMaxSaslLine : smtp::LineReader::kDefaultMaxLine);
      auto st = reader_.next(line);
      if (st == smtp::LineReader::Status::NeedMore) break;
      awaitCommand = true;
      if (st == smtp::LineReader::Status::TooLong) {
        if (saslActive_) {  // RFC 4954 §4: the exchange ends with it
          saslActive_ = false;
          reply(500, "5.5.6", "Authentication exchange line is too long");
        } else {
          reply(500, "5.5.2", "Line too long");
        }
        protocolError();
        break;
      }
      handleLine(line);
      if (paused_ || closed_ || mode_ != Mode::Command) break;
      if (checkOutputBound()) break;
    }
  }
  if (inPos_ == in_.size()) {
    in_.clear();
    inPos_ = 0;
  }
  if (awaitCommand) armTimer();
  flush();
  if (!closeIfDraining()) checkOutputBound();
}

// Replies pile up when the peer does not read them: past the bound, stop reading and
// processing until every queued write has left (onOutputDrained). Input already read stays
// in in_, which the connection bounds while it is not read.
bool SmtpSession::checkOutputBound() {
  if (closed_ || outputBlocked_) return outputBlocked_;
  if (out_.size() >= kMaxPendingOutput) flush();
  if (conn_->pendingWriteBytes() <= kMaxPendingOutput) return false;
  outputBlocked_ = true;
  conn_->stopReading();
  return true;
}

void SmtpSession::onOutputDrained() {
  if (!outputBlocked_ || closed_) return;
  outputBlocked_ = false;
  if (paused_) return;  // resume() reads on
  readIfReady();
  processInput();
}

// Reading resumes only when nothing holds it: our own work (paused_), the spool's buffer
// over its high-water mark, or replies the peer has not taken.
void SmtpSession::readIfReady() {
  if (closed_ || paused_ || outputBlocked_ || (incoming_ && incoming_->overHighWater())) return;
  conn_->startReading();
}

void SmtpSession::handleLine(const std::string& line) {
  if (closeIfDraining()) return;
  if (saslActive_) {
    saslActive_ = false;
    saslStep(sasl_.respond(line));
    return;
  }
  auto parsed = smtp::parseCommand(line, smtputf8_);
  if (pregreetRefuse_) {  // the first command of a pregreeter: whatever it is, but QUIT
    pregreetRefuse_ = false;
    blocked_ = true;
    auto* cmd = std::get_if<smtp::Command>(&parsed);
    if (!cmd || cmd->verb != smtp::Verb::Quit) {
      refuse("connect", 554, "5.5.1", "Error: SMTP protocol violation: talked before the greeting",
             [](log::Line& l) { l.add("reason", "pregreet"); });
      protocolError();
      return;
    }
  }
  if (auto* err = std::get_if<smtp::Reply>(&parsed)) {
    // A BDAT whose size cannot be read is followed by a chunk of unknown length: its bytes
    // would be taken for commands. Nothing after it can be trusted to be a command.
    if (line.size() >= 4 && mta::iequalsAscii(std::string_view(line).substr(0, 4), "BDAT") &&
        (line.size() == 4 || line[4] == ' ' || line[4] == '\t')) {
      closeWith(421, "4.5.0", cfg_.hostname + " BDAT without a readable size (" + err->text + "), closing connection");
      return;
    }
    // A MAIL or RCPT refused for its syntax is a refused sender or recipient like any
    // other: the operator asked why a client's mail was turned away finds it in the log,
    // with what the client sent.
    std::string_view stage = commandStage(line);
    if (!stage.empty()) {
      std::optional<std::string_view> from;
      if (stage == "mail") from = std::string_view();  // no sender yet: not the last one's
      refuse(
          stage, err->code, err->enhanced, err->text,
          [&](log::Line& l) { l.add("reason", "syntax").add("command", line.substr(0, kLoggedCommandBytes)); }, from);
    } else {
      reply(err->code, err->enhanced, err->text);
    }
    protocolError();
    return;
  }
  const auto& c = std::get<smtp::Command>(parsed);
  using V = smtp::Verb;
  if (blocked_ && c.verb != V::Quit) {  // RFC 5321 §3.1: after a 554 greeting, wait for QUIT
    reply(503, "5.5.1", "Error: access denied, send QUIT");
    protocolError();
    return;
  }
  switch (c.verb) {
    case V::Helo: cmdHelo(c, false); break;
    case V::Ehlo: cmdHelo(c, true); break;
    case V::Mail: cmdMail(c); break;
    case V::Rcpt: cmdRcpt(c); break;
    case V::Data: cmdData(); break;
    case V::Bdat: cmdBdat(c); break;
    case V::Rset: cmdRset(); break;
    case V::Noop: reply(250, "2.0.0", "Ok"); break;
    case V::Quit:
      reply(221, "2.0.0", cfg_.hostname + " closing connection");
      closeGracefully();
      break;
    case V::Vrfy: reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"); break;
    case V::Expn: reply(502, "5.5.1", "EXPN not available"); break;
    case V::Help: reply(214, "2.0.0", "See RFC 5321 (https://www.rfc-editor.org/rfc/rfc5321)"); break;
    case V::StartTls: cmdStartTls(c); break;
    case V::Auth: cmdAuth(c); break;
    case V::Unknown:
    default:
      reply(500, "5.5.2", "Command unrecognized");
      protocolError();
      break;
  }
  if (c.verb == V::Rset || c.verb == V::Noop || c.verb == V::Vrfy || c.verb == V::Help) junkCommand();
}

void SmtpSession::cmdHelo(const smtp::Command& c, bool extended) {
  std::string name = c.arg;
  auto sp = name.find_first_of(" \t");
  if (sp != std::string::npos) name.resize(sp);
  if (name.empty()) {
    reply(501, "5.5.4", std::string(extended ? "EHLO" : "HELO") + " requires a domain or address literal");
    protocolError();
    return;
  }
  if (inTransaction_) resetTransaction();
  greeted_ = true;
  esmtp_ = extended;
  helo_ = name.substr(0, 255);
  ctx_->helo = helo_;
  if (!extended) {
    reply(250, "", cfg_.hostname);
    return;
  }
  std::string text = cfg_.hostname + " Hello " + printableHelo() + " " + ctx_->clientIp.literal() + "\n";
  text += "PIPELINING\nSIZE " + std::to_string(cfg_.maxMessageSize) + "\n";
  text += "8BITMIME\nENHANCEDSTATUSCODES\nSMTPUTF8\nCHUNKING\nDSN\n";
  if (!conn_->tlsActive() && snap_->serverTls.count(listener_.address)) text += "STARTTLS\n";
  // RFC 8689 §3: the REQUIRETLS option may only be used on a TLS session, so it is offered
  // only once the session is encrypted, as AUTH is here.
  if (conn_->tlsActive()) text += "REQUIRETLS\n";
  if (authOffered()) text += "AUTH " + std::string(smtp::SaslServer::kMechanisms) + "\n";
  text += "HELP";
  // ENHANCEDSTATUSCODES is not in force for the EHLO reply itself (RFC 2034 §3).
  reply(250, "", text);
}

void SmtpSession::cmdMail(const smtp::Command& c) {
  ctx_->clientName = clientName_;  // what is known by now, for the MAIL filters
  if (!greeted_) {
    reply(503, "5.5.1", "Error: send HELO/EHLO first");
    protocolError();
    return;
  }
  if (inTransaction_) {
    reply(503, "5.5.1", "Error: nested MAIL command");
    protocolError();
    return;
  }
  if (draining_) {
    closeWith(421, "4.3.2", cfg_.hostname + " Service shutting down, try again later");
    return;
  }
  // RFC 6409 §4.3 (and CONTRACT.md): a submission listener takes mail only from a client
  // that has authenticated.
  if (listener_.mode == policy::ListenerMode::Submission && !ctx_->authenticated) {
    refuse("mail", 530, "5.7.0",
           conn_->tlsActive() ? "Authentication required" : "Authentication required: STARTTLS, then AUTH", nullptr,
           c.address);
    return;
  }
  // A user whose line in the users file names senders may use only those (Postfix's
  // reject_sender_login_mismatch). The null sender stays open: clients send bounces too.
  if (ctx_->authenticated && !c.address.empty() && !users_->maySendAs(ctx_->authUser, c.address)) {
    std::string text = "<" + c.address + ">: Sender address rejected: not owned by user " + ctx_->authUser;
    refuse(
        "mail", 553, "5.7.1", text, [&](log::Line& l) { l.add("user", ctx_->authUser); }, c.address);
    return;
  }
  // The parser has checked the syntax and values of every parameter; here: what this
  // server offers (RFC 5321 §4.1.1.11). AUTH= (RFC 4954 §5) is accepted where AUTH is
  // offered, and its value not trusted: the identity Moat knows is the session's own AUTH.
  bool eightBit = false, utf8 = false, requireTls = false;
  std::string ret, envid;
  for (const auto& p : c.params) {
    if (p.key == "SIZE" || (p.key == "AUTH" && authOffered())) continue;
    if (p.key == "REQUIRETLS") {
      // RFC 8689 §3, §4.1: only on a TLS session (where it is offered); the message is then
      // tagged and relayed only over verified TLS to next hops that offer REQUIRETLS too.
      if (!conn_->tlsActive()) {
        refuse("mail", 530, "5.7.10", "REQUIRETLS needs a TLS session: issue STARTTLS first", nullptr, c.address);
        return;
      }
      requireTls = true;
      continue;
    }
    if (p.key == "RET") {  // RFC 3461 §4.3, §4.4: kept for the DSNs and passed on
      ret = p.value;
    } else if (p.key == "ENVID") {
      envid = p.value;
    } else if (p.key == "BODY" && (p.value == "8BITMIME" || p.value == "7BIT")) {
      eightBit = p.value == "8BITMIME";
    } else if (p.key == "SMTPUTF8" && esmtp_) {
      utf8 = true;
      eightBit = true;
    } else if (p.key == "BODY") {  // BINARYMIME: RFC 3030 §3, only where it is offered
      reply(555, "5.5.4", "Unsupported parameter BODY=" + p.value);
      return;
    } else {
      reply(555, "5.5.4", "Unsupported parameter " + p.key);
      return;
    }
  }
  uint64_t size = smtp::declaredSize(c).value_or(0);
  if (!esmtp_ && !c.params.empty()) {
    reply(555, "5.5.4", "Parameters need EHLO");
    return;
  }
  if (size > cfg_.maxMessageSize) {
    refuse(
        "mail", 552, "5.3.4", "Message size exceeds fixed limit", [&](log::Line& l) { l.add("size", size); },
        c.address);
    return;
  }
  // [senders] block (Postfix's check_sender_access): refused before anything is looked up,
  // from every client but connection.allow's.
  if (snap_->blockedSenders && snap_->blockedSenders->contains(c.address) && !cfg_.isAllowedClient(ctx_->clientIp)) {
    refuse("mail", 554, "5.7.1", "<" + c.address + ">: Sender address rejected: Access denied", nullptr, c.address);
    return;
  }
  if (rateLimited(RateLimit::MessagesPerClient, "mail", c.address) ||
      rateLimited(RateLimit::MessagesPerSender, "mail", c.address))
    return;
  if (shared_.freeDisk() < cfg_.minFreeDisk) {
    refuse(
        "mail", 452, "4.3.1", "Insufficient system storage", [](log::Line& l) { l.add("reason", "low disk space"); },
        c.address, log::Level::Warn);
    return;
  }
  // queue.max_messages: a queue that keeps growing (a next hop down for long, a flood) stops
  // taking more before memory and disk run short; the clients keep their mail meanwhile.
  if (queueFull(cfg_)) {
    refuse(
        "mail", 452, "4.3.1", "Insufficient system storage: queue full",
        [](log::Line& l) { l.add("reason", "queue full"); }, c.address, log::Level::Warn);
    return;
  }
  inTransaction_ = true;
  eightBit_ = eightBit;
  smtputf8_ = utf8;
  requireTls_ = requireTls;
  declaredSize_ = size;
  txRet_ = ret;
  txEnvid_ = envid;
  txRcptDsn_.clear();
  txRcptsTaken_ = 0;
  txFirstRcpt_.clear();
  txRcptKeys_.clear();
  txExpanded_.clear();
  ctx_->mailFrom = c.address;
  ctx_->rcpts.clear();
  ctx_->rewrites.clear();
  ctx_->relayed = false;
  ctx_->spfMailFrom = {};
  ctx_->dkim.clear();
  ctx_->dmarc = {};
  ctx_->spamScore = 0;
  ctx_->dnsblAllowlisted = false;
  txAuthResults_.clear();
  txHeaders_.clear();
  txBatvFailed_ = false;
  txReports_.clear();
  txScore_ = 0;

  if (!snap_->pipeline->hasStage(filters::Stage::Mail)) {
    reply(250, "2.1.0", "Ok");
    return;
  }
  pause();
  auto self = shared_from_this();
  filters::Env env{shared_.loop, shared_.resolver, cfg_.hostname};
  snap_->pipeline->run(filters::Stage::Mail, ctx_, env, [self, w = work()](filters::StageOutcome out) {
    self->logFilters(out.reports, filters::Stage::Mail);
    self->countFilters(out.reports, filters::Stage::Mail);
    if (self->closed_) return;
    for (auto& a : out.authResults) self->txAuthResults_.push_back(a);
    for (auto& h : out.headers) self->txHeaders_.push_back(h);
    bool refused = out.verdict == filters::Verdict::Reject || out.verdict == filters::Verdict::TempFail ||
                   out.verdict == filters::Verdict::Disconnect;
    std::string filtersJson = refused ? out.logJson() : "";  // before the reports move on
    for (auto& r : out.reports) self->txReports_.push_back(std::move(r));
    self->txScore_ += out.score;
    if (refused) {
      auto line = log::info("reject");
      self->rejectFields(line, "mail", out.code, out.enhanced, out.text);
      line.addRaw("filters", filtersJson);
      // Nothing of the refused MAIL (SMTPUTF8, BODY, RET, ENVID) outlives it.
      self->resetTransaction();
      if (out.verdict == filters::Verdict::Disconnect) {
        self->closeWith(out.code, out.enhanced, out.text);
        return;
      }
      self->reply(out.code, out.enhanced, out.text);
    } else {
      self->reply(250, "2.1.0", "Ok");
    }
    self->resume();
  });
}

void SmtpSession::cmdRcpt(const smtp::Command& c) {
  if (!inTransaction_) {
    reply(503, "5.5.1", "Error: need MAIL command");
    protocolError();
    return;
  }
  // RFC 3030 §2: the BDAT chunks follow the MAIL and RCPT commands; once the message is
  // under way its envelope is closed (Postfix: "503 5.5.1 Error: RCPT after BDAT").
  if (bdatUsed_) {
    reply(503, "5.5.1", "Error: RCPT after BDAT");
    protocolError();
    return;
  }
  // RFC 3461 §4.1, §4.2 (the parser has checked both values): kept with the recipient.
  RcptDsn dsn;
  for (const auto& p : c.params) {
    if (p.key == "NOTIFY") {
      dsn.notify = p.value;
    } else if (p.key == "ORCPT") {
      dsn.orcpt = p.value;
    } else {
      reply(555, "5.5.4", "Unsupported parameter " + p.key);
      return;
    }
  }
  if (txRcptsTaken_ >= cfg_.maxRecipients) {
    refuse("rcpt", 452, "4.5.3", "Error: too many recipients",
           [&](log::Line& l) { l.add("to", c.address).add("reason", "limits.max_recipients"); });
    return;
  }
  std::string address = c.address;
  if (isPostmaster(address)) {
    // RFC 5321 §4.5.1: "Postmaster" without a domain must be accepted.
    address = "postmaster@" + (cfg_.relayDomains.empty() ? cfg_.hostname : cfg_.relayDomains.front());
  }
  std::string domain = smtp::domainOf(address);
  bool ok = cfg_.isRelayDomain(domain) || ctx_->fromRelayNetwork || ctx_->authenticated;
  if (!ok) {
    refuse("rcpt", 554, "5.7.1", "<" + address + ">: Relay access denied", [&](log::Line& l) { l.add("to", address); });
    protocolError();  // counted, as Postfix's error limit does: no endless probing per session
    return;
  }
  if (rateLimited(RateLimit::RecipientsPerClient, "rcpt", ctx_->mailFrom)) return;
  // [bounce_verification] (policy/batv.h): a validly tagged address is the user's, whoever
  // the sender (replies to the return path come there too); a bounce from the internet to an
  // address of the tagged domains that is not validly tagged was not caused by our mail.
  std::optional<filters::AddressRewrite> untagged;
  if (snap_->batvKeys && cfg_.isBatvDomain(domain)) {
    auto checked = policy::batv::verify(address, *snap_->batvKeys, policy::batv::dayNumber(wallClockMs() / 1000),
                                        cfg_.batvMaxAgeDays);
    bool valid = checked.result == policy::batv::Result::Valid;
    if (valid && checked.key > 0) {
      // Made with a key of before a rotation: once these stop coming for max_age, the old
      // key can be dropped from previous_key_files.
      log::info("batv_previous_key")
          .add("session", id_)
          .add("client_ip", ctx_->clientIp.str())
          .add("from", ctx_->mailFrom)
          .add("to", address)
          .add("previous_key", checked.key);
    }
    if (valid) {
      untagged = filters::AddressRewrite{address, checked.address, "batv"};
      if (dsn.orcpt.empty()) dsn.orcpt = queue::defaultOrcpt(address);
      address = checked.address;
    }
    if (!valid && ctx_->mailFrom.empty() && !ctx_->fromRelayNetwork && !ctx_->authenticated &&
        !cfg_.isBatvExempt(checked.address)) {
      const char* result = policy::batv::resultName(checked.result);
      if (cfg_.batvReject) {
        refuse("rcpt", 550, "5.7.1", policy::batv::refusalText(address),
               [&](log::Line& l) { l.add("to", address).add("reason", "bounce verification").add("batv", result); });
        protocolError();  // counted, as other refused recipients are
        return;
      }
      if (!txBatvFailed_) {
        txBatvFailed_ = true;
        txHeaders_.push_back({"X-Moat-BATV", "fail"});
      }
      log::info("batv_fail")
          .add("session", id_)
          .add("client_ip", ctx_->clientIp.str())
          .add("from", ctx_->mailFrom)
          .add("to", address)
          .add("batv", result);
    }
  }
  // [relay] rewrite, inbound: the external address becomes the internal one before the
  // aliases and relay.recipients see it (they name the mailboxes as the internal servers
  // know them, as Exchange's recipient filter sees the rewritten address); relay control
  // above took the address as given. DSNs keep naming the address the sender used (ORCPT).
  std::optional<filters::AddressRewrite> rewritten = std::move(untagged);
  if (snap_->rewrite && cfg_.isRelayDomain(domain)) {
    std::string internal = snap_->rewrite->inbound(address);
    if (!internal.empty() && internal != address) {
      // After an untagging, the address the client gave (the tagged one) is the one named.
      rewritten = filters::AddressRewrite{rewritten ? rewritten->from : address, internal, "rcpt"};
      if (dsn.orcpt.empty()) dsn.orcpt = queue::defaultOrcpt(address);
      address = std::move(internal);
    }
  }
  // What recipientTaken() needs once the address is taken: at once, or after a probe.
  rcptGivenDomain_ = domain;
  rcptRewrite_ = std::move(rewritten);
  checkRecipient(address, std::move(dsn));
}

// The recipient after relay control (and inbound rewriting): aliases, validation,
// verification, then the envelope.
void SmtpSession::checkRecipient(const std::string& address, RcptDsn dsn) {
  if (snap_->aliases) {
    auto expansion = snap_->aliases->expand(address);
    if (!expansion.error.empty()) {  // a domain alias made it deeper or wider than the table allows
      log::warn("alias_error").add("session", id_).add("to", address).add("error", expansion.error);
      refuse("rcpt", 451, "4.3.0", "<" + address + ">: Temporary alias expansion failure",
             [&](log::Line& l) { l.add("to", address).add("reason", "alias expansion"); });
      return;
    }
    if (expansion.aliased) {
      if (greylisted(address, dsn)) return;
      takeAliasedRecipient(address, std::move(dsn), expansion);
      return;
    }
  }
  if (!recipientExists(address)) {
    rejectUnknownRecipient(address);
    return;
  }
  // [greylist] after the checks that refuse for good (an unknown recipient gets its 550 at
  // once), before the costly ones (a verification probe waits for the retry).
  if (greylisted(address, dsn)) return;
  // relay.verify_recipients, after relay.recipients: the next hop is asked, and the reply
  // waits for its answer (the session reads nothing meanwhile, so pipelined commands are
  // answered in order). Postmaster always exists (RFC 5321 §4.5.1).
  if (!isPostmaster(address.substr(0, address.rfind('@')))) {
    if (const auto* route =
            RecipientVerifier::routeToVerify(cfg_, rcptGivenDomain_, smtp::domainOf(address), ctx_->mailFrom)) {
      verifyRecipient(address, std::move(dsn), *route);
      return;
    }
  }
  takeRecipient(address, std::move(dsn));
}

void SmtpSession::takeRecipient(const std::string& address, RcptDsn dsn) {
  addRecipient(address, std::move(dsn));
  recipientTaken(address);
  reply(250, "2.1.5", "Ok");
}

// A RCPT answered 250 (the address itself, or its alias targets): counted, and what it
// means for the transaction kept.
void SmtpSession::recipientTaken(const std::string& address) {
  countRate(RateLimit::RecipientsPerClient, ctx_->mailFrom);
  if (!cfg_.isRelayDomain(rcptGivenDomain_)) ctx_->relayed = true;
  // Received: "for" the address the client gave, also when it was rewritten.
  if (txRcptsTaken_++ == 0) txFirstRcpt_ = rcptRewrite_ ? rcptRewrite_->from : address;
  if (rcptRewrite_) ctx_->rewrites.push_back(std::move(*rcptRewrite_));
  rcptRewrite_.reset();
}

void SmtpSession::verifyRecipient(const std::string& address, RcptDsn dsn, const policy::Route& route) {
  std::weak_ptr<SmtpSession> weak = weak_from_this();
  auto cached = shared_.verifier->verify(snap_, route, address, [weak, address, dsn](const VerifyOutcome& o) {
    auto self = weak.lock();
    if (!self || self->closed_) return;  // gone meanwhile: the answer is cached all the same
    self->recipientVerified(address, dsn, o);
    self->resume();
  });
  if (cached) return recipientVerified(address, std::move(dsn), *cached);
  pause();
}

void SmtpSession::recipientVerified(const std::string& address, RcptDsn dsn, const VerifyOutcome& o) {
  const char* result = o.cached ? "cached" : verifyResultName(o.result);
  auto& m = metrics();
  ++(o.cached                            ? m.verifyCached
     : o.result == VerifyResult::Valid   ? m.verifyValid
     : o.result == VerifyResult::Invalid ? m.verifyInvalid
                                         : m.verifyUnknown);
  {
    auto line = log::info("verify");
    line.add("session", id_).add("client_ip", ctx_->clientIp.str()).add("rcpt", address).add("result", result);
    if (o.cached) line.add("cached_result", verifyResultName(o.result));
    line.add("reply", o.reply);
    if (!o.relay.empty()) line.add("relay", o.relay);
  }
  switch (o.result) {
    case VerifyResult::Valid: return takeRecipient(address, std::move(dsn));
    case VerifyResult::Invalid:
      refuse("rcpt", 550, "5.1.1", "<" + address + ">: Recipient address rejected: undeliverable address: " + o.reply,
             [&](log::Line& l) { l.add("to", address).add("reason", "verify"); });
      protocolError();  // a harvest of addresses ends at limits.max_errors, as with relay.recipients
      return;
    case VerifyResult::Unknown:
      if (cfg_.verifyUnknownAccept) return takeRecipient(address, std::move(dsn));
      refuse("rcpt", 450, "4.1.1", "<" + address + ">: Recipient address rejected: unverified address: " + o.reply,
             [&](log::Line& l) { l.add("to", address).add("reason", "verify"); });
      return;
  }
}

// Into the envelope once: a second RCPT for an address (or an alias target met again) is
// taken, but the first one's DSN parameters stand.
// The same address twice in one transaction is taken once. Only the domain is folded:
// the local part is case-sensitive (RFC 5321 §2.4), so John@ and john@ are two recipients
// a 250 was given for, and both go on (the mailbox server may know them as one).
void SmtpSession::addRecipient(const std::string& address, RcptDsn dsn) {
  addRecipientOnce(txRecipients(), address, std::move(dsn));
}

RecipientList SmtpSession::txRecipients() { return {ctx_->rcpts, txRcptDsn_, txRcptKeys_, txExpanded_}; }

// Recipient validation ([relay] recipients): an address of ours that does not exist is
// refused now, not bounced later. Postmaster always exists (RFC 5321 §4.5.1).
bool SmtpSession::recipientExists(const std::string& address) const {
  return !snap_->recipients || !cfg_.isRelayDomain(smtp::domainOf(address)) ||
         isPostmaster(address.substr(0, address.rfind('@'))) || snap_->recipients->accepts(address);
}

void SmtpSession::rejectUnknownRecipient(const std::string& address) {
  std::string text = "<" + address + ">: Recipient address rejected: User unknown in relay recipient table";
  refuse("rcpt", 550, "5.1.1", text, [&](log::Line& l) { l.add("to", address); });
  protocolError();  // a harvest of addresses ends at limits.max_errors
}

// An address of the aliases file: its targets take its place in the envelope. Targets the
// recipient table refuses are dropped (`moat check` names them); with none left the address
// is unknown. Each target keeps the recipient's NOTIFY (but SUCCESS, answered by Moat), and
// its ORCPT names the address the client gave (addAliasTargets).
void SmtpSession::takeAliasedRecipient(const std::string& address, RcptDsn dsn,
                                       const policy::AliasTable::Expansion& e) {
  std::vector<std::string> taken, dropped;
  for (const auto& t : e.targets) (recipientExists(t) ? taken : dropped).push_back(t);
  if (taken.empty()) {
    log::warn("expand").add("session", id_).add("to", address).add("targets", taken).add("dropped", dropped);
    rejectUnknownRecipient(address);
    return;
  }
  if (!addAliasTargets(txRecipients(), address, std::move(dsn), taken, kMaxEnvelopeRecipients)) {
    refuse("rcpt", 452, "4.5.3", "Error: too many recipients", [&](log::Line& l) {
      l.add("to", address).add("targets", taken).add("reason", "too many addresses after alias expansion");
    });
    return;
  }
  auto line = dropped.empty() ? log::info("expand") : log::warn("expand");
  line.add("session", id_).add("to", address).add("targets", taken);
  if (!dropped.empty()) line.add("dropped", dropped);
  recipientTaken(address);
  reply(250, "2.1.5", "Ok");
}

// A message the spool could not keep: 452 4.3.1 when the disk is full (RFC 3463: mail
// system full), else 451 4.3.0. Either way the client keeps it and tries again. The
// refusal is a `reject` line like any other (the spool_error line before it has the cause).
void SmtpSession::replySpoolError(std::string_view error, const std::string& queueId) {
  bool full = queue::errorKind(error) == queue::ErrorKind::NoSpace;
  int code = full ? 452 : 451;
  const char* enhanced = full ? "4.3.1" : "4.3.0";
  const char* text = full ? "Insufficient system storage" : "Error: queue file write error";
  refuse(
      "data", code, enhanced, text,
      [&](log::Line& l) {
        l.add("queue_id", queueId).add("to", ctx_->rcpts).add("reason", full ? "spool full" : "spool write error");
      },
      std::nullopt, log::Level::Warn);
}

// A Domain (letters, digits, '-', '.'; '_' as many clients send it) or an address literal.
bool SmtpSession::heloIsDomainOrLiteral() const {
  auto all = [](std::string_view s, std::string_view more) {
    return std::all_of(s.begin(), s.end(), [more](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || more.find(c) != std::string_view::npos;
    });
  };
  std::string_view h = helo_;
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') return all(h.substr(1, h.size() - 2), ".:-");
  return all(h, ".-_");
}

// The HELO argument for a reply or a comment: printable ASCII, with '?' for the rest and
// for the characters a comment gives meaning to.
std::string SmtpSession::printableHelo() const {
  std::string out = helo_;
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x21 || static_cast<unsigned char>(c) > 0x7e || c == '(' || c == ')' ||
        c == ';' || c == '\\')
      c = '?';
  return out;
}

bool SmtpSession::startTransactionData() {
  incoming_ = shared_.spool->create();
  if (!incoming_) {
    reply(451, "4.3.0", "Error: queue file write error");
    return false;
  }
  // Mail from the internet loses the copies of the gateway's own fields it brought
  // ([headers] strip_inbound); the internal servers' and the relay clients' are kept.
  const bool inbound = !ctx_->fromRelayNetwork && !ctx_->authenticated;
  scrubber_.emplace(cfg_.hostname, inbound ? cfg_.stripInbound : std::vector<std::string>{});
  std::weak_ptr<SmtpSession> weak = weak_from_this();
  incoming_->setOnDrain([weak] {
    auto s = weak.lock();
    if (s) s->readIfReady();
  });
  return true;
}

void SmtpSession::cmdData() {
  if (!inTransaction_) {
    reply(503, "5.5.1", "Error: need MAIL command");
    protocolError();
    return;
  }
  if (ctx_->rcpts.empty()) {
    reply(554, "5.5.1", "Error: no valid recipients");
    return;
  }
  if (bdatUsed_) {
    reply(503, "5.5.1", "Error: DATA after BDAT");
    return;
  }
  if (!startTransactionData()) return;
  decoder_.emplace(smtp::BareLinePolicy::Normalize, cfg_.maxMessageSize);
  mode_ = Mode::Data;
  dataDeadline_ = uv_now(shared_.loop) + static_cast<uint64_t>(cfg_.maxDataTime.count());
  reply(354, "", "End data with <CR><LF>.<CR><LF>");
  flush();
  armTimer();
}

void SmtpSession::feedData() {
  inPos_ += decodeData(std::string_view(in_.data() + inPos_, in_.size() - inPos_));
  dataStep();
}

// Decodes message bytes into the incoming message; returns how many it consumed (all of
// them, or up to the end-of-data mark).
size_t SmtpSession::decodeData(std::string_view rest) {
  decoded_.clear();
  size_t used = decoder_->feed(rest, decoded_);
  if (!decoded_.empty()) appendMessage(decoded_);
  return used;
}

// After message bytes were taken: the end of data, or a pause while the spool catches up.
void SmtpSession::dataStep() {
  if (decoder_->done()) {
    mode_ = Mode::Command;
    endOfData();
    return;
  }
  if (incoming_->overHighWater()) conn_->stopReading();
}

void SmtpSession::cmdBdat(const smtp::Command& c) {
  // One max_data_time for all the chunks of a message and the commands between them; a
  // refused chunk, read and dropped, gets its own.
  if (dataDeadline_ == 0) dataDeadline_ = uv_now(shared_.loop) + static_cast<uint64_t>(cfg_.maxDataTime.count());
  bdatRemaining_ = c.chunkSize;
  bdatChunkSize_ = c.chunkSize;
  bdatLast_ = c.last;
  mode_ = Mode::Bdat;  // the chunk is read even when refused, or it would be taken for commands
  bdatDiscard_ = true;
  if (!inTransaction_) {
    reply(503, "5.5.1", "Error: need MAIL command");
    return;
  }
  if (ctx_->rcpts.empty()) {
    reply(554, "5.5.1", "Error: no valid recipients");
    return;
  }
  if (!bdatUsed_) {
    if (!startTransactionData()) return;  // 451 sent; the chunk is skipped
    bdatUsed_ = true;
    // The same decoding as DATA but for the framing: bare CR/LF become CRLF before the
    // header scrubber sees the lines, and Received: fields are counted for loop detection.
    decoder_.emplace(smtp::BareLinePolicy::Normalize, cfg_.maxMessageSize, smtp::Framing::Chunked);
  }
  bdatDiscard_ = false;
  armTimer();
}

void SmtpSession::feedBdat() {
  size_t avail = in_.size() - inPos_;
  size_t take = static_cast<size_t>(std::min<uint64_t>(avail, bdatRemaining_));
  std::string_view chunk(in_.data() + inPos_, take);
  inPos_ += take;
  bdatRemaining_ -= take;
  if (!bdatDiscard_) {
    decodeData(chunk);
    if (incoming_->overHighWater()) conn_->stopReading();
  }
  if (bdatRemaining_ > 0) return;
  mode_ = Mode::Command;
  if (bdatDiscard_) {                   // the refusal was answered at the command
    if (!bdatUsed_) dataDeadline_ = 0;  // no message is being received
    return;
  }
  if (!bdatLast_) {
    if (decoder_->sizeExceeded()) {
      refuseData(552, "5.3.4", "Message size exceeds fixed limit");
    } else {
      reply(250, "2.0.0", std::to_string(bdatChunkSize_) + " octets received");
    }
    return;
  }
  decoded_.clear();
  decoder_->finish(decoded_);
  if (!decoded_.empty()) appendMessage(decoded_);
  endOfData();
}

namespace {

struct RateLimitSpec {
  unsigned limit;
  RateCounter& counter;
  const char* noun;
};

}  // namespace

std::string SmtpSession::rateKey(RateLimit which, const std::string& sender) const {
  if (cfg_.isRateExempt(ctx_->clientIp)) return "";
  // relay.networks and authenticated clients send outbound mail: they are limited per
  // sender, the others per client.
  bool outbound = ctx_->fromRelayNetwork || ctx_->authenticated;
  switch (which) {
    case RateLimit::MessagesPerClient: return outbound || cfg_.messagesPerClient == 0 ? "" : clientKey(ctx_->clientIp);
    case RateLimit::RecipientsPerClient:
      return outbound || cfg_.recipientsPerClient == 0 ? "" : clientKey(ctx_->clientIp);
    case RateLimit::MessagesPerSender:
      if (!outbound || cfg_.messagesPerSender == 0) return "";
      if (ctx_->authenticated) return ctx_->authUser;
      return policy::lowerAscii(sender);  // the null sender: "", not limited
  }
  return "";
}

bool SmtpSession::rateLimited(RateLimit which, std::string_view stage, const std::string& sender) {
  std::string key = rateKey(which, sender);
  if (key.empty()) return false;
  RateLimitSpec spec = which == RateLimit::MessagesPerClient
                           ? RateLimitSpec{cfg_.messagesPerClient, shared_.rateMessagesPerClient, "messages"}
                       : which == RateLimit::RecipientsPerClient
                           ? RateLimitSpec{cfg_.recipientsPerClient, shared_.rateRecipientsPerClient, "recipients"}
                           : RateLimitSpec{cfg_.messagesPerSender, shared_.rateMessagesPerSender, "messages"};
  const auto now = static_cast<int64_t>(uv_now(shared_.loop));
  const int64_t window = cfg_.rateWindow.count();
  uint64_t count = spec.counter.count(key, now, window);
  if (count < spec.limit) return false;
  const char* name = Metrics::kRateLimits[static_cast<size_t>(which)];
  ++metrics().rateLimited[static_cast<size_t>(which)];
  if (spec.counter.shouldLog(key, now, window)) {
    log::warn("rate_limited")
        .add("session", id_)
        .add("client_ip", ctx_->clientIp.str())
        .add("key", key)
        .add("limit", std::string(name))
        .add("max", spec.limit)
        .add("count", count)
        .add("window", cfg_.rateWindowText);
  }
  std::string text = "Rate limit exceeded (" + std::to_string(spec.limit) + " " + spec.noun + " per " +
                     cfg_.rateWindowText + " for " + key + "), try again later";
  refuse(
      stage, 450, "4.7.1", text, [&](log::Line& l) { l.add("reason", std::string(name)); },
      stage == "mail" ? std::optional<std::string_view>(sender) : std::nullopt, log::Level::Debug);
  return true;
}

void SmtpSession::countRate(RateLimit which, const std::string& sender) {
  std::string key = rateKey(which, sender);
  if (key.empty()) return;
  RateCounter& counter = which == RateLimit::MessagesPerClient     ? shared_.rateMessagesPerClient
                         : which == RateLimit::RecipientsPerClient ? shared_.rateRecipientsPerClient
                                                                   : shared_.rateMessagesPerSender;
  counter.add(key, static_cast<int64_t>(uv_now(shared_.loop)), cfg_.rateWindow.count());
}

// [greylist] (greylist.h): inbound mail only. relay.networks and authenticated clients send
// outbound mail (and are the site's own); exempt_networks are the admin's list of senders
// that do not retry well. Mail to postmaster and abuse (any of our domains) is never
// greylisted: a report of a problem, perhaps with the greylisting itself, must get through
// at once, also from a sender that does not retry (RFC 5321 §4.5.1, RFC 2142 §2).
// A client that [dnsbl] allowlisted (dnsbl.allowlist_threshold: a DNS allowlist such as
// list.dnswl.org) is not greylisted either, as postscreen and postgrey admins do with DNSWL.
// exempt_client_names are matched against the client's verified name. Its lookup starts at
// the connect and may still run: a triplet that would be deferred waits for it (the session
// paused, its pipelined commands held in order, as for a verification probe), at most until
// the lookup's deadline (dns.timeout after the connect), and then the RCPT is checked again;
// a triplet that passes anyway does not wait. Exempt clients are neither logged nor counted
// here, as relay networks and exempt_networks are not (their names are on the accept line).
bool SmtpSession::greylisted(const std::string& address, const RcptDsn& dsn) {
  if (!cfg_.greylistEnabled || ctx_->fromRelayNetwork || ctx_->authenticated || cfg_.isGreylistExempt(ctx_->clientIp))
    return false;
  // Set by the Mail stage, which the session waits for before it reads a pipelined RCPT.
  if (ctx_->dnsblAllowlisted) return false;
  std::string_view local = std::string_view(address).substr(0, address.rfind('@'));
  if (isPostmaster(local) || (local.size() == 5 && iequalsPrefix(local, "abuse"))) return false;
  if (Greylist::exemptName(clientName_, cfg_.greylistExemptNames)) return false;
  Greylist::Settings settings{cfg_.greylistDelay.count(), cfg_.greylistRetryWindow.count(),
                              cfg_.greylistLifetime.count(), cfg_.greylistAutoAllowAfter};
  const std::string network = Greylist::network(ctx_->clientIp, cfg_.greylistIpv4Prefix, cfg_.greylistIpv6Prefix);
  const int64_t now = wallClockMs();
  if (!cfg_.greylistExemptNames.empty() && nameLookup_ && !nameWait_ && uv_now(shared_.loop) < nameDeadline_ &&
      !shared_.greylist.wouldPass(network, ctx_->mailFrom, address, now, settings)) {
    pause();
    waitForName([this, address, dsn] {
      paused_ = false;  // checkRecipient may pause again (a verification probe): then that resumes
      checkRecipient(address, dsn);
      if (!paused_) resume();
    });
    return true;
  }
  auto v = shared_.greylist.check(network, ctx_->mailFrom, address, now, settings);
  auto& m = metrics();
  // The `greylist` line's fields (the Line lives to the end of the statement that makes it).
  auto logged = [&](log::Line&& line) -> log::Line& {
    return line.add("session", id_)
        .add("client_ip", ctx_->clientIp.str())
        .add("network", network)
        .add("from", ctx_->mailFrom)
        .add("to", address);
  };
  if (v.result == Greylist::Result::Allowed) {
    ++m.greylistAllowed;
    return false;
  }
  if (v.result == Greylist::Result::Passed) {
    ++m.greylistPassed;
    // One line when a triplet gets through, none for its later mail.
    if (v.firstPass) logged(log::info("greylist")).add("result", "passed");
    return false;
  }
  ++m.greylistDeferred;
  const int64_t seconds = (v.waitMs + 999) / 1000;
  // One line when a triplet is first deferred; its early retries are `reject` lines at
  // debug only, so a client hammering the gateway cannot flood the log.
  if (v.firstSeen) logged(log::info("greylist")).add("result", "deferred").add("wait_s", seconds);
  refuse(
      "rcpt", 450, "4.7.1",
      "<" + address + ">: Recipient address rejected: Greylisted, try again in " + std::to_string(seconds) + " seconds",
      [&](log::Line& l) { l.add("to", address).add("reason", "greylist"); }, std::nullopt, log::Level::Debug);
  return true;
}

void SmtpSession::rejectFields(log::Line& line, std::string_view stage, int code, std::string_view enhanced,
                               std::string_view text, std::optional<std::string_view> from) const {
  line.add("session", id_)
      .add("client_ip", ctx_->clientIp.str())
      .add("helo", helo_)
      .add("from", from ? std::string(*from) : ctx_->mailFrom)
      .add("reply", replyLine(code, enhanced, text))
      .add("stage", std::string(stage));
  metrics().countReject(rejectStage(stage), code);
}

void SmtpSession::refuse(std::string_view stage, int code, std::string_view enhanced, std::string_view text,
                         const std::function<void(log::Line&)>& more, std::optional<std::string_view> from,
                         log::Level level) {
  {
    log::Line line(level, "reject");
    rejectFields(line, stage, code, enhanced, text, from);
    if (more) more(line);
  }
  reply(code, enhanced, text);
}

// A refusal at the end of the data (or of an over-long BDAT chunk): the transaction ends.
void SmtpSession::refuseData(int code, std::string_view enhanced, std::string_view text) {
  refuse("data", code, enhanced, text,
         [&](log::Line& l) { l.add("queue_id", incoming_->id()).add("to", ctx_->rcpts); });
  resetTransaction();
}

// The fields every `auth` line starts with, in this order (deploy/monitoring's fail2ban
// filter matches on it).
void SmtpSession::authFields(log::Line& line) const {
  line.add("session", id_).add("client_ip", ctx_->clientIp.str()).add("mechanism", sasl_.mechanism());
}

void SmtpSession::appendMessage(std::string_view bytes) {
  if (scrubber_->inBody()) return incoming_->append(bytes);  // the scrubber would copy it as is
  scrubbed_.clear();
  scrubber_->feed(bytes, scrubbed_);
  if (!scrubbed_.empty()) incoming_->append(scrubbed_);
}

void SmtpSession::endOfData() {
  dataDeadline_ = 0;
  if (decoder_->sizeExceeded()) return refuseData(552, "5.3.4", "Message size exceeds fixed limit");
  if (decoder_->rejected()) return refuseData(550, "5.5.2", "Bare CR or LF not allowed (RFC 5321 2.3.8)");
  if (decoder_->receivedCount() > cfg_.maxReceivedHeaders)
    return refuseData(554, "5.4.6", "Too many Received headers: mail loop detected");

  scrubbed_.clear();
  scrubber_->finish(scrubbed_);
  if (!scrubbed_.empty()) incoming_->append(scrubbed_);
  dataEnded_ = true;
  if (scrubber_->removed() > 0)
    log::info("header_removed")
        .add("session", id_)
        .add("queue_id", incoming_->id())
        .add("header", "Authentication-Results")
        .add("count", scrubber_->removed())
        .add("reason", "claims this gateway's authserv-id (RFC 8601 5)");
  if (scrubber_->stripped() > 0) {
    std::string names;
    for (const auto& n : scrubber_->strippedNames()) names += (names.empty() ? "" : ",") + n;
    log::info("header_removed")
        .add("session", id_)
        .add("queue_id", incoming_->id())
        .add("header", names)
        .add("count", scrubber_->stripped())
        .add("reason", "inbound copy of a gateway field (headers.strip_inbound)");
  }

  pause();
  auto self = shared_from_this();
  incoming_->finish([self, w = work()](bool ok, std::string error) {
    if (self->closed_) return;
    if (!ok) {
      log::error("spool_error").add("session", self->id_).add("queue_id", self->incoming_->id()).add("error", error);
      self->replySpoolError(error, self->incoming_->id());
      self->resetTransaction();
      self->resume();
      return;
    }
    self->runDataFilters();
  });
}

void SmtpSession::logFilters(const std::vector<filters::FilterReport>& reports, filters::Stage stage) const {
  for (const auto& r : reports) {
    auto line = log::info("filter");
    line.add("session", id_);
    if (!ctx_->queueId.empty()) line.add("queue_id", ctx_->queueId);  // none before DATA
    line.add("stage", std::string(filters::stageName(stage)))
        .add("filter", r.name)
        .add("verdict", std::string(filters::verdictName(r.result.verdict)))
        .add("result", r.result.summary)
        .add("elapsed_us", static_cast<int64_t>(r.elapsedUs));
    if (r.result.score != 0) line.add("score", r.result.score);
    if (r.result.code) line.add("reply", std::to_string(r.result.code) + " " + r.result.enhanced + " " + r.result.text);
    if (!r.result.detail.empty()) line.addRaw("detail", r.result.detail.str());
  }
}

void SmtpSession::countFilters(const std::vector<filters::FilterReport>& reports, filters::Stage stage) const {
  auto& m = metrics();
  bool noSignature = false;  // the DKIM verifier ran and found no signature (not: it is off)
  for (const auto& r : reports) {
    m.observeFilter(r.name, filters::verdictName(r.result.verdict), static_cast<double>(r.elapsedUs) / 1e6);
    noSignature = noSignature || (r.name == "dkim" && r.result.summary == "none");
  }
  if (stage == filters::Stage::Mail) {
    // Reset by this MAIL: set only when the SPF filter checked this transaction's sender.
    if (ctx_->spfMailFrom.checked) m.countSpf(ctx_->spfMailFrom.result);
  } else if (stage == filters::Stage::Data) {
    for (const auto& d : ctx_->dkim) m.countDkim(d.result);
    if (noSignature && ctx_->dkim.empty()) m.countDkim("none");
    if (ctx_->dmarc.checked) m.countDmarc(ctx_->dmarc.result, ctx_->dmarc.disposition);
  }
}

void SmtpSession::runDataFilters() {
  // The data filters (DMARC's trusted_forwarders) and the Received header want the client's
  // name: a lookup still running is waited for, until its deadline (then "unknown").
  if (nameLookup_ && !nameWait_ && uv_now(shared_.loop) < nameDeadline_) {
    waitForName([this] { runDataFilters(); });
    return;
  }
  if (nameWait_) return;  // runs when the name or the deadline comes
  ctx_->clientName = clientName_;
  ctx_->queueId = incoming_->id();
  if (ctx_->tls && conn_->tls()) ctx_->tlsVersion = conn_->tls()->protocol();  // milters' {tls_version}
  ctx_->smtputf8 = smtputf8_;
  ctx_->ret = txRet_;  // milters are sent MAIL's DSN parameters
  ctx_->envid = txEnvid_;
  ctx_->sessionHeaders = txHeaders_;  // milters are sent them where delivery places them
  ctx_->received = receivedValue();  // made once: milters see the field that is delivered
  auto data = incoming_->data();
  ctx_->message = data ? data->bytes() : std::string_view();
  // What the Authentication-Results field will say before the Data filters add theirs (the
  // ARC sealer copies the whole field).
  ctx_->authResults = sessionAuthResults_;
  for (const auto& a : txAuthResults_) ctx_->authResults.push_back(a);
  auto self = shared_from_this();
  filters::Env env{shared_.loop, shared_.resolver, cfg_.hostname};
  snap_->pipeline->run(filters::Stage::Data, ctx_, env, [self, data, w = work()](filters::StageOutcome out) {
    self->ctx_->message = {};
    self->logFilters(out.reports, filters::Stage::Data);
    self->countFilters(out.reports, filters::Stage::Data);
    if (self->closed_) return;
    self->commitMessage(std::move(out));
  });
}

std::string SmtpSession::receivedValue() const {
  std::string proto = protocolName();
  // RFC 5321 §4.4: "from" names a Domain or an address literal. A HELO argument that is
  // neither (8-bit bytes, ';', parentheses) is not written there as it is: it would make
  // the header 8-bit, or let the client write trace text of its own. It goes into the
  // comment, printable and with its specials replaced.
  std::string from =
      heloIsDomainOrLiteral() ? helo_ + " (" : ctx_->clientIp.literal() + " (helo=" + printableHelo() + " ";
  // Postfix's form: the verified name, or "unknown" when there is none (RFC 5321 §4.4's
  // TCP-info: an address literal, [IPv6:...] for IPv6, optionally after the name found for it).
  from += (ctx_->clientName.empty() ? std::string("unknown") : ctx_->clientName) + " " + ctx_->clientIp.literal() + ")";
  std::string received = "from " + from;
  if (const auto* t = conn_->tls()) {
    received += "\r\n\t(using " + t->protocol() + " with cipher " + t->cipher() + " (" +
                std::to_string(t->cipherBits()) + "/" + std::to_string(t->cipherBits()) + " bits))";
  }
  received += "\r\n\tby " + cfg_.hostname + " (Moat) with " + proto + " id " + ctx_->queueId;
  if (txRcptsTaken_ == 1) received += "\r\n\tfor <" + txFirstRcpt_ + ">";
  received += "; " + rfc5322Date();
  return received;
}

std::vector<filters::Header> SmtpSession::gatewayHeaders(const filters::StageOutcome& outcome) const {
  std::vector<std::string> res = sessionAuthResults_;
  for (const auto& a : txAuthResults_) res.push_back(a);
  for (const auto& a : outcome.authResults) res.push_back(a);
  // The header names an spf, a dkim and a dmarc result (CONTRACT.md).
  res = filters::gatewayAuthResults(std::move(res), ctx_->fromRelayNetwork || ctx_->authenticated);
  // The order milters were sent them in (filters::gatewayHeaders, shared with the milter client).
  return filters::gatewayHeaders(ctx_->received.empty() ? receivedValue() : ctx_->received,
                                 filters::authenticationResults(cfg_.hostname, res), txHeaders_, outcome.headers);
}

void SmtpSession::commitMessage(filters::StageOutcome outcome) {
  for (auto& r : outcome.reports) txReports_.insert(txReports_.end(), std::move(r));
  outcome.reports.clear();
  filters::StageOutcome all = outcome;
  all.reports = txReports_;
  std::string filtersJson = all.logJson();

  // DMARC aggregate reports count a message refused for good as one accepted; a temporary
  // refusal is not counted (the client tries again, and that try counts).
  if (ctx_->dmarc.checked && shared_.onDmarc && outcome.verdict != filters::Verdict::TempFail) shared_.onDmarc(*ctx_);
  if (outcome.verdict == filters::Verdict::Reject || outcome.verdict == filters::Verdict::TempFail ||
      outcome.verdict == filters::Verdict::Disconnect) {
    {
      auto line = log::info("reject");
      rejectFields(line, "data", outcome.code, outcome.enhanced, outcome.text);
      line.add("queue_id", incoming_->id())
          .add("to", ctx_->rcpts)
          .add("size", incoming_->size())
          .add("verdict", std::string(filters::verdictName(outcome.verdict)))
          .addRaw("filters", filtersJson)
          .add("client_name", ctx_->clientName.empty() ? std::string("unknown") : ctx_->clientName);
    }
    resetTransaction();
    if (outcome.verdict == filters::Verdict::Disconnect) {
      closeWith(outcome.code, outcome.enhanced, outcome.text);
      return;
    }
    reply(outcome.code, outcome.enhanced, outcome.text);
    resume();
    return;
  }

  std::string bccSender = ctx_->mailFrom;  // after relay.rewrite, before a milter's change
  applyEnvelopeChanges(outcome);
  // [bcc]: after the filters, so a refused message gets no copy, and into the envelope of a
  // quarantined one, so a release delivers them too. Moat's own DSNs and reports never come here.
  std::vector<std::string> bcc =
      addBccRecipients(txRecipients(), {cfg_.bccAlways, snap_->bccSenders.get(), snap_->bccRecipients.get()}, bccSender,
                       kMaxEnvelopeRecipients);
  queue::Envelope env;
  env.id = incoming_->id();
  ctx_->queueId = env.id;
  env.mailFrom = ctx_->mailFrom;
  for (size_t i = 0; i < ctx_->rcpts.size(); ++i) {
    queue::Recipient rc;
    rc.address = ctx_->rcpts[i];
    if (i < txRcptDsn_.size()) {
      rc.notify = txRcptDsn_[i].notify;
      rc.orcpt = txRcptDsn_[i].orcpt;
    }
    env.rcpts.push_back(std::move(rc));
  }
  env.expanded = txExpanded_;
  env.envid = txEnvid_;
  env.ret = txRet_;
  env.arrivalMs = static_cast<int64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                           std::chrono::system_clock::now().time_since_epoch())
                                           .count());
  env.clientIp = ctx_->clientIp.str();
  env.clientName = ctx_->clientName;
  env.helo = helo_;
  env.protocol = protocolName();
  auto data = incoming_->data();
  env.messageId = data ? findMessageId(data->bytes()) : "";
  for (const auto& h : gatewayHeaders(outcome)) env.headers.emplace_back(h.name, h.value);
  env.edits = std::move(outcome.edits);  // content filters' rewrites, applied at delivery
  // Converted to 7-bit MIME at receipt (the DKIM signer, RFC 6376 §5.3): sent without
  // BODY=8BITMIME, and never converted again at delivery.
  env.eightBit = eightBit_ && !outcome.convertedTo7Bit;
  env.smtputf8 = smtputf8_;
  env.requireTls = requireTls_;
  env.size = incoming_->size();
  env.nextAttemptMs = env.arrivalMs;
  bool quarantine = outcome.verdict == filters::Verdict::Quarantine;
  if (quarantine) {
    env.area = queue::Area::Quarantine;
    env.quarantineReason = outcome.quarantineReason;
  }

  auto self = shared_from_this();
  auto incoming = incoming_;
  incoming->commit(env, [self, w = work(), env, filtersJson, quarantine, verdict = outcome.verdict,
                         bcc = std::move(bcc)](bool ok, std::string error) {
    if (!ok) {
      log::error("spool_error").add("session", self->id_).add("queue_id", env.id).add("error", error);
      if (!self->closed_) self->replySpoolError(error, env.id);
    } else {
      {  // written here, before the delivery onQueued may start logs its own lines
        auto line = log::info("accept");
        line.add("session", self->id_)
            .add("queue_id", env.id)
            .add("message_id", env.messageId)
            .add("client_ip", env.clientIp)
            .add("helo", env.helo)
            .add("from", env.mailFrom)
            .add("to", self->ctx_->rcpts)
            .add("size", env.size)
            .add("verdict", std::string(filters::verdictName(verdict)))
            .addRaw("filters", filtersJson)
            .add("client_name", env.clientName.empty() ? std::string("unknown") : env.clientName);
        if (!self->ctx_->rewrites.empty()) line.addRaw("rewritten", filters::rewritesJson(self->ctx_->rewrites));
        if (env.requireTls) line.add("requiretls", true);
        if (!bcc.empty()) line.add("bcc", bcc);
      }
      ++metrics().messagesAccepted;
      self->countRate(RateLimit::MessagesPerClient, env.mailFrom);
      self->countRate(RateLimit::MessagesPerSender, env.mailFrom);
      if (quarantine) ++metrics().messagesQuarantined;
      ++self->messages_;
      // A client that delivers mail is no prober: its earlier slips are forgiven, as
      // Postfix's smtpd does after each queued message.
      self->errors_ = 0;
      self->junkCommands_ = 0;
      if (self->shared_.onQueued) self->shared_.onQueued(env, self->incoming_ ? self->incoming_->data() : nullptr);
      if (!self->closed_) self->reply(250, "2.0.0", "Ok: queued as " + env.id);
    }
    self->incoming_.reset();
    self->resetTransaction();
    if (self->closed_) return;
    if (self->draining_) {
      self->closeWith(421, "4.3.2", self->cfg_.hostname + " Service shutting down, try again later");
      return;
    }
    self->resume();
  });
}

// A recipient a milter added gets what a RCPT gets after relay control, as Postfix's cleanup
// applies canonical_maps and virtual_alias_maps to milter-added recipients: the inbound
// rewriting of [relay] rewrite, then [relay] aliases. Not relay control nor relay.recipients
// nor verification: the milters are the administrator's (as Postfix). Into `list`, with
// `shown` (parallel to list.addresses) getting the address as the milter gave it for each
// address added.
SmtpSession::MilterRcpt SmtpSession::addMilterRecipient(const filters::EnvelopeChange& c, RecipientList list,
                                                        std::vector<std::string>& shown) {
  MilterRcpt out;
  std::string address = c.address;
  RcptDsn dsn{c.notify, c.orcpt};
  if (snap_->rewrite && cfg_.isRelayDomain(smtp::domainOf(address))) {
    std::string internal = snap_->rewrite->inbound(address);
    if (!internal.empty() && internal != address) {
      // DSNs name the address the milter gave, as the client's at RCPT (ORCPT).
      out.rewrite = filters::AddressRewrite{address, internal, "milter_rcpt"};
      if (dsn.orcpt.empty()) dsn.orcpt = queue::defaultOrcpt(address);
      address = std::move(internal);
    }
  }
  size_t before = list.addresses.size(), reportsBefore = list.expanded.size();
  std::optional<size_t> added;
  policy::AliasTable::Expansion expansion;
  if (snap_->aliases) expansion = snap_->aliases->expand(address);
  if (!expansion.error.empty()) {
    // Deeper or wider than the table allows: a RCPT would get a 4xx, but the message is
    // taken by now, so the address goes on unexpanded (and the log says so).
    out.aliasError = expansion.error;
    out.result = "applied without alias expansion";
  }
  if (expansion.error.empty() && expansion.aliased) {
    out.targets = expansion.targets;
    added = addAliasTargets(list, address, std::move(dsn), expansion.targets, kMaxEnvelopeRecipients);
    out.expandedReport = list.expanded.size() > reportsBefore;
  } else if (list.addresses.size() < kMaxEnvelopeRecipients) {
    added = addRecipientOnce(list, address, std::move(dsn)) ? size_t{1} : size_t{0};
  }
  if (!added) {
    out.result = "too many recipients";
    out.rewrite.reset();
  } else if (*added == 0) {
    out.result = "already a recipient";
  }
  shown.resize(before + added.value_or(0), c.address);
  return out;
}

void SmtpSession::applyEnvelopeChanges(filters::StageOutcome& outcome) {
  if (outcome.envelope.empty()) return;
  using Kind = filters::EnvelopeChange::Kind;
  std::vector<std::string> rcpts = ctx_->rcpts;
  std::vector<RcptDsn> dsns = txRcptDsn_;
  dsns.resize(rcpts.size());
  std::unordered_set<std::string> keys = txRcptKeys_;
  std::vector<queue::ExpandedRecipient> expanded = txExpanded_;
  RecipientList list{rcpts, dsns, keys, expanded};
  // Each recipient as the milters were sent it (parallel to rcpts): a recipient a milter
  // added is shown to the next milters as it was given, whatever relay.rewrite and
  // relay.aliases made of it, and a later milter deletes it by that address. The milters'
  // rewrites and "expanded" reports, with the address that made them, go with it.
  std::vector<std::string> shown = rcpts;
  std::vector<filters::AddressRewrite> rewrites;
  std::vector<std::pair<std::string, queue::ExpandedRecipient>> reports;
  std::string from = ctx_->mailFrom, ret = txRet_, envid = txEnvid_;
  std::string emptiedBy;  // the milter whose deletion left no recipient
  for (const auto& c : outcome.envelope) {
    const char* result = "applied";
    MilterRcpt added;  // AddRcpt: what the address became
    switch (c.kind) {
      case Kind::AddRcpt:
        added = addMilterRecipient(c, list, shown);
        result = added.result;
        if (added.rewrite) rewrites.push_back(*added.rewrite);
        if (added.expandedReport) {  // held apart, for a later deletion of the address to take back
          reports.emplace_back(c.address, std::move(expanded.back()));
          expanded.pop_back();
        }
        break;
      case Kind::DelRcpt: {
        std::string key = filters::recipientKey(c.address);
        size_t before = rcpts.size();
        for (size_t i = rcpts.size(); i-- > 0;) {
          std::string k = filters::recipientKey(rcpts[i]);
          if (k != key && filters::recipientKey(shown[i]) != key) continue;
          keys.erase(k);
          auto at = static_cast<std::ptrdiff_t>(i);
          rcpts.erase(rcpts.begin() + at);
          dsns.erase(dsns.begin() + at);
          shown.erase(shown.begin() + at);
        }
        if (rcpts.size() == before) {
          result = "not a recipient";
          break;
        }
        auto gone = [&](const std::string& a) { return filters::recipientKey(a) == key; };
        std::erase_if(rewrites, [&](const auto& r) { return gone(r.from); });
        std::erase_if(reports, [&](const auto& r) { return gone(r.first); });
        if (rcpts.empty()) emptiedBy = c.source;
        break;
      }
      case Kind::ChgFrom:
        from = c.address;
        if (!c.ret.empty()) ret = c.ret;
        if (!c.envid.empty()) envid = c.envid;
        break;
    }
    auto line = added.aliasError.empty() ? log::info("milter_envelope") : log::warn("milter_envelope");
    line.add("session", id_)
        .add("queue_id", incoming_->id())
        .add("milter", c.source)
        .add("action", std::string(filters::envelopeChangeName(c.kind)))
        .add("address", c.address);
    if (!c.notify.empty()) line.add("notify", c.notify);
    if (!c.orcpt.empty()) line.add("orcpt", c.orcpt);
    if (!c.ret.empty()) line.add("ret", c.ret);
    if (!c.envid.empty()) line.add("envid", c.envid);
    if (!c.ignored.empty()) line.add("ignored", c.ignored);
    line.add("result", result);
    if (added.rewrite) line.add("rewritten_to", added.rewrite->to);
    if (!added.targets.empty()) line.add("targets", added.targets);
    if (!added.aliasError.empty()) line.add("error", added.aliasError);
  }
  outcome.envelope.clear();
  if (rcpts.empty()) {
    // Postfix discards such a message; Moat drops no mail unseen: it is kept in the
    // quarantine with the envelope as received, and the client gets its 250.
    std::string reason = "milter " + (emptiedBy.empty() ? std::string("?") : emptiedBy) + ": deleted every recipient";
    log::warn("milter_envelope")
        .add("session", id_)
        .add("queue_id", incoming_->id())
        .add("milter", emptiedBy)
        .add("action", "quarantine")
        .add("result", reason);
    if (outcome.verdict != filters::Verdict::Quarantine) {
      outcome.verdict = filters::Verdict::Quarantine;
      outcome.quarantineReason = reason;
    }
    return;
  }
  ctx_->rcpts = std::move(rcpts);
  txRcptDsn_ = std::move(dsns);
  txRcptKeys_ = std::move(keys);
  for (auto& r : reports) expanded.push_back(std::move(r.second));
  txExpanded_ = std::move(expanded);
  for (auto& r : rewrites) ctx_->rewrites.push_back(std::move(r));
  ctx_->mailFrom = std::move(from);
  txRet_ = std::move(ret);
  txEnvid_ = std::move(envid);
}

void SmtpSession::resetTransaction() {
  if (incoming_) {
    incoming_->abort();
    incoming_.reset();
  }
  decoder_.reset();
  scrubber_.reset();
  dataDeadline_ = 0;
  dataEnded_ = false;
  inTransaction_ = false;
  bdatUsed_ = false;
  eightBit_ = false;
  smtputf8_ = false;
  requireTls_ = false;
  ctx_->rcpts.clear();
  txRcptsTaken_ = 0;
  txFirstRcpt_.clear();
  txRcptKeys_.clear();
  txExpanded_.clear();
  ctx_->rewrites.clear();
  ctx_->relayed = false;
  ctx_->mailFrom.clear();
  ctx_->queueId.clear();
  ctx_->received.clear();
  ctx_->smtputf8 = false;
  txAuthResults_.clear();
  txHeaders_.clear();
  txBatvFailed_ = false;
  txReports_.clear();
  txRet_.clear();
  txEnvid_.clear();
  txRcptDsn_.clear();
}

void SmtpSession::cmdRset() {
  resetTransaction();
  reply(250, "2.0.0", "Ok");
}

void SmtpSession::cmdStartTls(const smtp::Command& c) {
  auto it = snap_->serverTls.find(listener_.address);
  if (it == snap_->serverTls.end() || conn_->tlsActive()) {
    reply(502, "5.5.1", "STARTTLS not available");
    return;
  }
  if (!c.arg.empty()) {
    reply(501, "5.5.4", "Syntax: STARTTLS");
    return;
  }
  reply(220, "2.0.0", "Ready to start TLS");
  flush();
  // RFC 3207 §4.2: forget everything learned before TLS, and anything pipelined after STARTTLS.
  in_.clear();
  inPos_ = 0;
  reader_ = smtp::LineReader();
  if (users_) reader_.allowLongerLines("AUTH ", kMaxAuthLine);
  resetTransaction();
  greeted_ = false;
  esmtp_ = false;
  helo_.clear();
  ctx_->helo.clear();
  saslActive_ = false;
  pause();
  tlsHandshaking_ = true;
  armTimer();  // the handshake gets one command timeout
  // Weak: the connection holds this callback, and the session holds the connection.
  std::weak_ptr<SmtpSession> weak = weak_from_this();
  conn_->startTls(it->second, "", [weak](bool ok, const std::string& error) {
    auto self = weak.lock();
    if (!self || self->closed_) return;
    self->tlsHandshaking_ = false;
    if (!ok) {
      log::info("tls_failed").add("session", self->id_).add("client_ip", self->ctx_->clientIp.str()).add("error", error);
      self->closed_ = true;
      self->conn_->abort();
      return;
    }
    self->ctx_->tls = true;
    log::info("tls").add("session", self->id_).add("protocol", self->conn_->tls()->protocol()).add("cipher", self->conn_->tls()->cipher());
    self->resume();
  });
}

std::string SmtpSession::protocolName() const {
  std::string proto = smtputf8_ ? "UTF8SMTP" : esmtp_ ? "ESMTP" : "SMTP";
  if (conn_->tlsActive()) proto += "S";
  if (ctx_->authenticated) proto += "A";
  return proto;
}

void SmtpSession::cmdAuth(const smtp::Command& c) {
  if (!users_) {
    reply(502, "5.5.1", "AUTH not available on this listener");
    protocolError();
    return;
  }
  if (!greeted_ || !esmtp_) {
    reply(503, "5.5.1", "Error: send EHLO first");
    protocolError();
    return;
  }
  if (ctx_->authenticated) {  // RFC 4954 §4: once only
    reply(503, "5.5.1", "Error: already authenticated");
    protocolError();
    return;
  }
  if (inTransaction_) {
    reply(503, "5.5.1", "Error: AUTH not permitted during a mail transaction");
    protocolError();
    return;
  }
  if (!conn_->tlsActive()) {  // never a password in clear: RFC 4954 §4's 538
    reply(538, "5.7.11", "Encryption required for requested authentication mechanism");
    protocolError();
    return;
  }
  saslStep(sasl_.start(c.arg));
}

void SmtpSession::saslStep(smtp::SaslStep step) {
  using K = smtp::SaslStep::Kind;
  switch (step.kind) {
    case K::Challenge:
      // A 334's text is the bare base64 challenge (RFC 4954 §4): no enhanced code.
      out_ += "334 " + step.challenge + "\r\n";
      saslActive_ = true;
      return;
    case K::Done: verifyCredentials(std::move(step.credentials)); return;
    case K::Refused:
      if (step.reply.code == 535) {  // well-formed, but not acceptable: a failed attempt
        authFailed(step.credentials.user, step.reply.text, step.reply);
        return;
      }
      {
        auto line = log::info("auth");
        authFields(line);
        line.add("result", "error").add("reply", replyLine(step.reply.code, step.reply.enhanced, step.reply.text));
      }
      reply(step.reply.code, step.reply.enhanced, step.reply.text);
      protocolError();
      return;
  }
}

// crypt(3) is slow by design: the check runs on the thread pool while the session reads
// nothing (pipelined commands wait for the 235 or 535, as RFC 4954 §4 expects), once the
// server has a slot for it (ServerShared::acquireCrypt), and within the filters' share of
// the pool (offloadFilterWork), so checks and filters together never hold the threads the
// spool's commits need for their 250s.
void SmtpSession::verifyCredentials(smtp::SaslCredentials credentials) {
  pause();
  struct Check {
    smtp::SaslCredentials credentials;
    bool ok = false;
  };
  auto check = std::make_shared<Check>();
  check->credentials = std::move(credentials);
  std::weak_ptr<SmtpSession> weak = weak_from_this();
  shared_.acquireCrypt([weak, check] {
    auto self = weak.lock();
    if (!self || self->closed_) return false;  // the client left while it waited
    filters::offloadFilterWork(
        self->shared_.loop,
        [users = self->users_, check] {
          check->ok = users->verify(check->credentials.user, check->credentials.password);
        },
        [self, check, w = self->work()] {
          self->shared_.releaseCrypt();
          if (self->closed_) return;
          if (check->ok) {
            self->ctx_->authenticated = true;
            self->ctx_->authUser = check->credentials.user;
            ++metrics().authPassed;
            {
              auto line = log::info("auth");
              self->authFields(line);
              line.add("user", check->credentials.user).add("result", "pass");
            }
            self->reply(235, "2.7.0", "Authentication successful");
          } else {
            self->authFailed(check->credentials.user, "wrong user name or password",
                             {535, "5.7.8", "Authentication credentials invalid"});
          }
          self->resume();
        });
    return true;
  });
}

// One line per failed AUTH, with the client's address and the name it tried: what an
// operator's fail2ban (or the like) watches for guessing. The third failure closes the session.
void SmtpSession::authFailed(const std::string& user, std::string_view reason, const smtp::Reply& r) {
  ++authFailures_;
  ++metrics().authFailed;
  {
    auto line = log::warn("auth");
    authFields(line);
    line.add("user", user).add("result", "fail").add("reason", std::string(reason));
  }
  reply(r.code, r.enhanced, r.text);
  if (authFailures_ >= kMaxAuthFailures) {
    closeWith(421, "4.7.0", cfg_.hostname + " Error: too many failed authentication attempts");
    return;
  }
  protocolError();
}

void SmtpSession::reply(int code, std::string_view enhanced, std::string_view text) {
  out_ += smtp::formatReply(code, enhanced, text);
}

void SmtpSession::flush() {
  if (out_.empty() || closed_) return;
  conn_->write(std::move(out_));
  out_.clear();
}

void SmtpSession::pause() {
  paused_ = true;
  conn_->stopReading();
}

void SmtpSession::resume() {
  paused_ = false;
  if (closed_) return;
  armTimer();
  readIfReady();
  processInput();
}

// Commands that move no mail: a few are normal (RSET between messages, a NOOP to keep a
// connection), an endless stream is a client holding its slot (or probing with VRFY). Past
// the limit each one is answered as usual and counted as an error, as in Postfix.
void SmtpSession::junkCommand() {
  if (!closed_ && ++junkCommands_ > cfg_.maxJunkCommands) protocolError();
}

void SmtpSession::protocolError() {
  if (++errors_ >= cfg_.maxErrors) closeWith(421, "4.7.0", cfg_.hostname + " Error: too many errors");
}

void SmtpSession::closeWith(int code, std::string_view enhanced, std::string_view text) {
  if (closed_) return;
  finishGreeting();  // a reply after a 220- line would break the greeting (RFC 5321 §4.2.1)
  reply(code, enhanced, text);
  closeGracefully();
}

// Flushes the replies and closes, but only waits kCloseGraceMs for them to leave: a peer
// that does not read must not keep its connection slot (sessions, per-IP count) for good.
void SmtpSession::closeGracefully() {
  if (closed_) return;
  flush();
  closed_ = true;
  conn_->close();
  std::weak_ptr<SmtpSession> weak = weak_from_this();
  timer_.start(kCloseGraceMs, [weak] {
    auto s = weak.lock();
    if (!s || s->mode_ == Mode::Closed) return;
    log::info("timeout")
        .add("session", s->id_)
        .add("client_ip", s->ctx_->clientIp.str())
        .add("stage", "close")
        .add("pending_bytes", static_cast<uint64_t>(s->conn_->pendingWriteBytes()));
    s->conn_->abort();
  });
}

void SmtpSession::onClosed(const std::string& error) {
  if (mode_ == Mode::Closed) return;
  mode_ = Mode::Closed;
  closed_ = true;
  timer_.stop();
  greetTimer_.stop();
  if (incoming_ && !paused_) {
    incoming_->abort();
    incoming_.reset();
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started_).count();
  auto line = log::info("disconnect");
  line.add("session", id_).add("client_ip", ctx_->clientIp.str()).add("messages", messages_).add("duration_ms", static_cast<int64_t>(ms));
  if (!error.empty()) line.add("error", error);
  line.add("client_name", clientNameField());
  --metrics().sessionsActive;
  if (work_ > 0) {
    endPending_ = true;  // a commit in flight may still queue the message: see work()
    return;
  }
  auto onEnd = onEnd_;
  if (onEnd) onEnd(this);
}

std::shared_ptr<void> SmtpSession::work() {
  ++work_;
  auto self = shared_from_this();
  return std::shared_ptr<void>(nullptr, [self](void*) { self->workDone(); });
}

void SmtpSession::workDone() {
  if (--work_ > 0 || !endPending_) return;
  endPending_ = false;
  auto onEnd = onEnd_;
  if (onEnd) onEnd(this);
}

}  // namespace moat::mta::server
