// mta/client/smtp_client.cc — see smtp_client.h. RFC 5321 §4.1 (commands), §4.2 (replies),
// §4.5.2 (dot-stuffing), §4.5.3.2 (timeouts); RFC 2920 (pipelining); RFC 3207 (STARTTLS);
// RFC 4954 (AUTH), RFC 4616 (PLAIN); RFC 2033 (LMTP: LHLO, one reply per recipient).
//
// Untrusted input: server replies, read line by line with hard limits (reply.h). The body is
// sent with bare CR and bare LF turned into CRLF, so a "\n.\n" in a stored message can never
// end DATA early on a lenient next hop (SMTP smuggling), and it is streamed in 64 KiB pieces
// with at most ~1 MiB queued to the socket.
#include "mta/client/smtp_client.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "mta/runtime/base64.h"
#include "mta/runtime/data_lines.h"
#include "mta/runtime/scan.h"

namespace moat::mta::client {

namespace {

constexpr size_t kBodyPiece = 64 * 1024;
constexpr size_t kBodyHighWater = 1024 * 1024;

bool isPositive(const Reply& r) { return r.code >= 200 && r.code < 300; }

bool hasControl(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return c == '\r' || c == '\n' || c == '\0'; });
}

// ENVID (xtext) and RET values: printable, no space, so they cannot add parameters.
bool badParam(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) <= ' ' || c == 0x7f; });
}

// A result for a transaction not sent: every reply is the client's own `text`.
void refuseLocally(TransactionResult& res, int code, std::string text) {
  res.local = true;
  res.mail = {code, std::move(text)};
  std::fill(res.rcpts.begin(), res.rcpts.end(), res.mail);
  res.data = res.mail;
}

// The converted message takes the place of the original, which is not read any more.
void replaceMessage(Transaction& t, std::string converted) {
  auto bytes = std::make_shared<std::string>(std::move(converted));
  t.prefix.clear();
  t.body = *bytes;
  t.keepAlive = std::move(bytes);
  if (t.size) t.size = t.body.size();
}

// The caller's reason, made fit for a reply line.
std::string replyText(std::string_view s) {
  std::string out(s.substr(0, 200));
  for (auto& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = ' ';
  return out;
}

// For the strings that held a secret (base64 of a password is no protection).
void wipe(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
}

}  // namespace

Credentials::~Credentials() { wipe(password); }

std::string saslPlainResponse(std::string_view username, std::string_view password) {
  std::string raw;
  raw.reserve(username.size() + password.size() + 2);
  raw.push_back('\0');  // no authorization identity: act as the authenticated one
  raw.append(username);
  raw.push_back('\0');
  raw.append(password);
  std::string out = base64Encode(raw);
  wipe(raw);
  return out;
}

// Streams prefix + body with dot-stuffing and line-ending repair (mta/runtime/data_lines.h,
// shared with the DKIM signer, which signs the lines as this sends them).
struct SmtpClient::Body : DataLines {};

SmtpClient::SmtpClient(uv_loop_t* loop, Options opts) : loop_(loop), opts_(std::move(opts)), timer_(loop) {}

SmtpClient::~SmtpClient() {
  if (conn_) conn_->abort();
}

void SmtpClient::connect(uv_loop_t* loop, const IpAddress& ip, uint16_t port, Options opts, ConnectDone done) {
  auto client = std::make_shared<SmtpClient>(loop, std::move(opts));
  client->connectDone_ = std::move(done);
  client->self_ = client;
  client->ip_ = ip;
  client->port_ = port;
  const auto& source = ip.isV4() ? client->opts_.sourceIpv4 : client->opts_.sourceIpv6;
  net::connect(
      loop, ip, port, client->opts_.connectTimeoutMs,
      [client](std::shared_ptr<net::Connection> conn, const std::string& error) {
        if (!conn) return client->fail(error);
        client->start(std::move(conn));
      },
      source);
}

void SmtpClient::connectUnix(uv_loop_t* loop, const std::string& path, Options opts, ConnectDone done) {
  auto client = std::make_shared<SmtpClient>(loop, std::move(opts));
  client->connectDone_ = std::move(done);
  client->self_ = client;
  client->path_ = path;
  net::connectUnix(loop, path, client->opts_.connectTimeoutMs,
                   [client](std::shared_ptr<net::Connection> conn, const std::string& error) {
                     if (!conn) return client->fail(error);
                     client->start(std::move(conn));
                   });
}

std::string SmtpClient::source() const {
  if (!path_.empty()) return "";  // a Unix socket: no source address
  const auto& s = ip_.isV4() ? opts_.sourceIpv4 : opts_.sourceIpv6;
  return s ? s->str() : "";
}

void SmtpClient::start(std::shared_ptr<net::Connection> conn) {
  conn_ = std::move(conn);
  if (opts_.notes && path_.empty()) opts_.notes->localIp = conn_->localAddress().str();
  std::weak_ptr<SmtpClient> weak = shared_from_this();
  net::Connection::Callbacks cb;
  cb.onData = [weak](std::string_view d) {
    if (auto self = weak.lock()) self->onData(d);
  };
  cb.onClose = [weak](const std::string& error) {
    auto self = weak.lock();
    if (!self) return;
    std::string why = error.empty() ? "connection closed by peer" : error;
    // A server that refuses the client certificate (TLS 1.3: after the client's handshake is
    // done) may only close the connection, before any reply to the EHLO that follows: the
    // error says the server had asked for one, and whether it was presented.
    if (const tls::TlsSession* t = self->conn_ ? self->conn_->tls() : nullptr;
        t && self->ext_.empty() && why.find("client certificate") == std::string::npos)
      why += t->clientCertificateNote();
    self->fail(why);
  };
  cb.onDrain = [weak] {
    if (auto self = weak.lock(); self && self->body_ && !self->body_->done)
      self->chunking_ ? self->pumpChunks() : self->pumpBody();
  };
  conn_->setCallbacks(std::move(cb));
  conn_->setLineMode(true);
  conn_->startReading();
  expect(opts_.greetingTimeoutMs, [this](const Reply& r) { onGreeting(r); });
}

// ---- replies -------------------------------------------------------------------------

void SmtpClient::onData(std::string_view piece) {
  // Line mode: one line a piece, so at most one reply ends in it.
  while (!piece.empty() && state_ != State::Closed) {
    std::optional<Reply> r = reader_.feed(piece);
    if (!reader_.error().empty()) return fail(reader_.error());
    if (r) onReply(*r);
  }
}

void SmtpClient::onReply(const Reply& r) {
  if (expects_.empty()) return fail("unexpected reply: " + r.text.substr(0, 200), r);
  auto fn = std::move(expects_.front().fn);
  expects_.pop_front();
  armTimer();
  auto keep = shared_from_this();
  fn(r);
}

void SmtpClient::expect(uint64_t timeoutMs, std::function<void(const Reply&)> fn) {
  expects_.push_back({std::move(fn), timeoutMs});
  if (expects_.size() == 1) armTimer();
}

void SmtpClient::armTimer() {
  if (expects_.empty()) return timer_.stop();
  timer_.start(expects_.front().timeoutMs, [this] { fail("timeout waiting for the server's reply"); });
}

void SmtpClient::command(const std::string& line, uint64_t timeoutMs, std::function<void(const Reply&)> fn) {
  conn_->write(line + "\r\n");
  expect(timeoutMs, std::move(fn));
}

void SmtpClient::fail(const std::string& error, const Reply& reply) {
  if (state_ == State::Closed) return;
  bool quitting = state_ == State::Quitting;
  state_ = State::Closed;
  timer_.stop();
  expects_.clear();
  body_.reset();
  if (conn_) conn_->abort();
  auto keep = std::move(self_);
  if (auto done = std::move(connectDone_)) {
    connectDone_ = nullptr;
    done(nullptr, error, reply);
  }
  if (auto done = std::move(txDone_)) {
    txDone_ = nullptr;
    result_.error = error;
    done(std::move(result_));
  }
  if (auto done = std::exchange(quitDone_, nullptr); quitting && done) done();
}

// ---- connection set-up -------------------------------------------------------------------

void SmtpClient::onGreeting(const Reply& r) {
  greeting_ = r;
  if (r.code != 220) return quitThenFail("greeting refused", r);
  std::string_view first(r.text);
  first = first.substr(0, first.find('\n'));
  first.remove_prefix(std::min<size_t>(4, first.size()));
  peerName_ = std::string(first.substr(0, first.find(' ')));
  if (opts_.notes) opts_.notes->serverName = peerName_;
  sendEhlo();
}

void SmtpClient::sendEhlo() {
  ext_.clear();
  // RFC 2033 §4.1: LHLO, with EHLO's syntax and reply; an LMTP server takes no EHLO or HELO.
  command((opts_.lmtp ? "LHLO " : "EHLO ") + opts_.heloName, opts_.commandTimeoutMs,
          [this](const Reply& r) { onEhlo(r); });
}

void SmtpClient::onEhlo(const Reply& r) {
  if (r.code >= 500 && !tlsTried_ && !opts_.lmtp)  // an old server: RFC 5321 §3.2 HELO fallback
    return command("HELO " + opts_.heloName, opts_.commandTimeoutMs, [this](const Reply& h) { onHelo(h); });
  if (!isPositive(r)) return quitThenFail(opts_.lmtp ? "LHLO refused" : "EHLO refused", r);
  std::string_view rest(r.text);
  if (opts_.notes) {  // "250-mx.example.test Hello ...": the server's own name
    std::string_view first = rest.substr(0, rest.find('\n'));
    first.remove_prefix(std::min<size_t>(4, first.size()));
    if (std::string_view name = first.substr(0, first.find(' ')); !name.empty())
      opts_.notes->serverName = std::string(name);
  }
  ext_ = parseEhlo(r);
  afterHello();
}

void SmtpClient::onHelo(const Reply& r) {
  if (!isPositive(r)) return quitThenFail("HELO refused", r);
  afterHello();
}

void SmtpClient::quitThenFail(const std::string& error, const Reply& r) {
  if (r.code == 421) return fail(error, r);  // RFC 5321 §3.8: the server closes the channel itself
  // However the QUIT ends (its reply, the server closing, the timeout), the connection failed
  // for the refusal, and that is what the caller hears.
  auto done = std::exchange(connectDone_, nullptr);
  connectDone_ = [done = std::move(done), error, r](std::shared_ptr<SmtpClient>, const std::string&, const Reply&) {
    if (done) done(nullptr, error, r);
  };
  command("QUIT", opts_.commandTimeoutMs, [this](const Reply&) { fail(""); });
}

void SmtpClient::afterHello() {
  if (opts_.tls == TlsMode::None || tlsTried_) return authenticate();
  if (!supports("STARTTLS")) {
    if (opts_.tls == TlsMode::Require) return quitThenFail("STARTTLS not offered by the server");
    return authenticate();
  }
  if (!opts_.tlsCtx) return quitThenFail("no TLS client context configured");
  tlsTried_ = true;
  command("STARTTLS", opts_.commandTimeoutMs, [this](const Reply& r) { onStartTls(r); });
}

void SmtpClient::onStartTls(const Reply& r) {
  if (r.code != 220) {
    if (opts_.tls == TlsMode::Require) return quitThenFail("STARTTLS refused", r);
    return authenticate();  // RFC 3207 §4: go on without TLS when opportunistic
  }
  // Anything the server sent after its 220 is discarded by the connection (RFC 3207 §4.2).
  reader_.clear();
  // A handshake that never finishes (a server that says 220 and then nothing) is a failed
  // one: with "may" it falls back to plain text like any other, or the message would wait
  // for it at every retry until it expires.
  timer_.start(opts_.commandTimeoutMs, [this] {
    if (opts_.tls == TlsMode::May) return reconnectPlain("timeout in TLS handshake");
    fail("timeout in TLS handshake");
  });
  std::weak_ptr<SmtpClient> weak = shared_from_this();
  const net::Connection* conn = conn_.get();
  conn_->startTls(opts_.tlsCtx, opts_.sni, [weak, conn](bool ok, const std::string& error) {
    auto self = weak.lock();
    if (!self || self->conn_.get() != conn) return;  // given up on: the timeout went on without it
    self->timer_.stop();
    if (!ok && self->opts_.tls == TlsMode::May) return self->reconnectPlain(error);
    if (!ok) return self->fail(error);
    self->sendEhlo();  // RFC 3207 §4.2: forget what the server said before TLS
  });
}

// RFC 7435 (opportunistic security): a failed handshake leaves nothing to go on with, but
// plain text is what "may" accepts from a server without TLS, so a new connection delivers
// without STARTTLS, once. Postfix does the same at its "may" level.
void SmtpClient::reconnectPlain(const std::string& error) {
  tlsFallback_ = error.empty() ? "TLS handshake failed" : error;
  opts_.tls = TlsMode::None;
  timer_.stop();
  expects_.clear();
  reader_ = ReplyReader{};
  ext_.clear();
  tlsTried_ = false;
  conn_->setCallbacks({});  // its close must not end this client
  conn_->abort();
  conn_.reset();
  std::weak_ptr<SmtpClient> weak = shared_from_this();
  auto connected = [weak](std::shared_ptr<net::Connection> conn, const std::string& e) {
    auto self = weak.lock();
    if (!self || self->state_ == State::Closed) {
      if (conn) conn->abort();
      return;
    }
    if (!conn) return self->fail("plain-text retry after a failed TLS handshake: " + e);
    self->start(std::move(conn));
  };
  if (!path_.empty()) return net::connectUnix(loop_, path_, opts_.connectTimeoutMs, std::move(connected));
  net::connect(loop_, ip_, port_, opts_.connectTimeoutMs, std::move(connected),
               ip_.isV4() ? opts_.sourceIpv4 : opts_.sourceIpv6);
}

// RFC 4954 after the EHLO that follows STARTTLS. The AUTH exchange is never pipelined
// (§4: the client waits for each reply); MAIL then pipelines as usual.
void SmtpClient::authenticate() {
  if (!opts_.auth) return connected();
  // RFC 4954 §4: never in clear. The config allows AUTH only with tls = "require" or
  // stricter; this holds whatever a caller passes.
  if (!tlsActive())
    return quitThenFail("4.7.0 credentials are sent only over TLS, and this connection is not encrypted");
  auto mechs = authMechanisms(ext_);
  auto offered = [&mechs](std::string_view m) { return std::find(mechs.begin(), mechs.end(), m) != mechs.end(); };
  if (offered("PLAIN")) {
    std::string line = "AUTH PLAIN " + saslPlainResponse(opts_.auth->username, opts_.auth->password);
    command(line, opts_.commandTimeoutMs, [this](const Reply& r) { onAuthDone(r); });
    wipe(line);
    return;
  }
  if (offered("LOGIN"))
    return command("AUTH LOGIN", opts_.commandTimeoutMs, [this](const Reply& r) { onAuthLoginStep(r, 0); });
  std::string offers;  // what it offers instead, for the admin (the server's words: made printable)
  for (const auto& m : mechs) offers += (offers.empty() ? "" : " ") + m;
  quitThenFail("4.7.0 next hop offers no AUTH mechanism Moat supports (PLAIN, LOGIN); it offers " +
               (offers.empty() ? std::string("no AUTH") : "AUTH " + replyText(offers)));
}

// LOGIN (draft-murchison-sasl-login): the server asks for the name, then the password,
// each with a 334; its challenges say which in base64, but the order is fixed.
void SmtpClient::onAuthLoginStep(const Reply& r, int step) {
  if (r.code != 334) return onAuthDone(r);
  std::string line = base64Encode(step == 0 ? opts_.auth->username : opts_.auth->password);
  if (step == 0)
    command(line, opts_.commandTimeoutMs, [this](const Reply& next) { onAuthLoginStep(next, 1); });
  else
    command(line, opts_.commandTimeoutMs, [this](const Reply& next) { onAuthDone(next); });
  wipe(line);
}

void SmtpClient::onAuthDone(const Reply& r) {
  if (r.code == 235) {
    authUser_ = opts_.auth->username;
    return connected();
  }
  // A refusal leaves the session in its command state: QUIT ends it politely. A 334 here (a
  // challenge after the last step) would take a QUIT for its answer: the connection is closed,
  // so nothing of the exchange is left half-done.
  const std::string error = "4.7.0 SASL authentication as \"" + opts_.auth->username + "\" failed";
  if (r.code == 334) return fail(error, r);
  quitThenFail(error, r);
}

void SmtpClient::connected() {
  state_ = State::Idle;
  auto keep = std::move(self_);
  auto done = std::move(connectDone_);
  connectDone_ = nullptr;
  if (done) done(keep, "", greeting_);
}

// ---- transactions ------------------------------------------------------------------------

bool SmtpClient::usable() const { return state_ == State::Idle && conn_ != nullptr; }

bool SmtpClient::envelopeSafe(const Transaction& t) const {
  if (hasControl(t.mailFrom) || badParam(t.envid) || badParam(t.ret)) return false;
  if (std::any_of(t.rcptDsn.begin(), t.rcptDsn.end(),
                  [](const Transaction::RcptDsn& d) { return badParam(d.notify) || badParam(d.orcpt); }))
    return false;
  return std::none_of(t.rcpts.begin(), t.rcpts.end(), [](const std::string& r) { return hasControl(r); });
}

void SmtpClient::send(Transaction t, std::function<void(TransactionResult)> done) {
  TransactionResult res;
  res.rcpts.resize(t.rcpts.size());
  res.lmtp = opts_.lmtp;
  if (opts_.lmtp) res.rcptData.resize(t.rcpts.size());
  res.source = source();
  if (!usable() || t.rcpts.empty()) {
    res.error = usable() ? "no recipients" : "connection not usable";
    return done(std::move(res));
  }
  auto refuse = [&res, &done](int code, std::string text) {
    refuseLocally(res, code, std::move(text));
    done(std::move(res));
  };
  if (!envelopeSafe(t)) return refuse(501, "501 5.5.4 Invalid character in envelope (not sent)");
  // RFC 8689 §4.2.1: a REQUIRETLS message goes only over TLS to a server that offers
  // REQUIRETLS (the caller has checked the certificate and how the host was found). A DSN
  // (null sender) is never held back for it (§5): it carries REQUIRETLS where offered.
  if (t.requireTls && !t.mailFrom.empty() && !(tlsActive() && supports("REQUIRETLS")))
    return refuse(550,
                  "550 5.7.30 REQUIRETLS support required: the next hop does not offer REQUIRETLS over TLS (not sent)");
  // RFC 6531 §3.4: UTF-8 in the envelope goes only to a server that offers SMTPUTF8; there is
  // no downgrade of an address, so the message is returned (RFC 6531 §3.6 status codes).
  if (!supports("SMTPUTF8") &&
      (hasEightBit(t.mailFrom) ||
       std::any_of(t.rcpts.begin(), t.rcpts.end(), [](const std::string& r) { return hasEightBit(r); })))
    return refuse(553,
                  "553 5.6.7 SMTPUTF8 is required by the addresses, but the next hop does not offer it (not sent)");
  // A converter may take its time (the caller runs large messages on the thread pool): the
  // connection is busy meanwhile, and if it fails, done() gets the error as usual.
  state_ = State::Busy;
  self_ = shared_from_this();
  res.authUser = authUser_;
  res.clientCertificate = tlsClientCertificate();
  result_ = std::move(res);
  txDone_ = std::move(done);
  prepare(std::move(t));
}

void SmtpClient::prepare(Transaction t, std::string utf8Failure) {
  bool eightBit = hasEightBit(t.prefix) || hasEightBit(t.body);
  if (!supports("SMTPUTF8") && t.smtputf8 && eightBit) {
    // The caller's conversion first (Moat's own global DSNs), once.
    if (t.utf8Downgrade) {
      auto utf8Downgrade = std::move(t.utf8Downgrade);
      t.utf8Downgrade = nullptr;
      return convert(utf8Downgrade, std::move(t),
                     [](SmtpClient& self, Transaction t, bool ok, std::string converted, std::string reason) {
                       if (!ok) return self.prepare(std::move(t), reason.empty() ? "no reason given" : reason);
                       replaceMessage(t, std::move(converted));
                       t.smtputf8 = false;
                       t.eightBit = hasEightBit(t.body);
                       self.result_.utf8Downgraded = true;
                       self.prepare(std::move(t));
                     });
    }
    // RFC 6531 §3.4: UTF-8 in the headers of a message sent with SMTPUTF8 needs it too.
    if (hasEightBit(t.prefix) || hasEightBit(headerBlock(t.body))) {
      std::string text = "554 5.6.9 SMTPUTF8 is required by the headers, but the next hop does not offer it";
      if (!utf8Failure.empty()) text += ", and the message could not be converted: " + replyText(utf8Failure);
      return refuseNow(554, text + " (not sent)");
    }
  }
  // RFC 6152 §3: to a next hop without 8BITMIME, 8-bit mail goes converted to 7-bit MIME or
  // is returned (RFC 3463 X.6.3). Declared 8BITMIME but all ASCII: 7-bit already, sent as it is.
  if (!supports("8BITMIME") && eightBit) {
    auto refusal = [](std::string_view reason) {
      return "554 5.6.3 Conversion required but not supported: " + replyText(reason) +
             "; the next hop does not offer 8BITMIME (not sent)";
    };
    if (!t.downgrade) return refuseNow(554, refusal("no converter to 7-bit MIME"));
    auto downgrade = std::move(t.downgrade);
    t.downgrade = nullptr;
    return convert(downgrade, std::move(t),
                   [refusal](SmtpClient& self, Transaction t, bool ok, std::string converted, std::string reason) {
                     if (!ok) return self.refuseNow(554, refusal(reason));
                     replaceMessage(t, std::move(converted));
                     self.result_.downgraded = true;
                     self.begin(std::move(t));
                   });
  }
  begin(std::move(t));
}

void SmtpClient::convert(const Downgrade& fn, Transaction t, Converted then) {
  std::weak_ptr<SmtpClient> weak = weak_from_this();
  std::string prefix = t.prefix;
  std::string_view body = t.body;
  auto keepAlive = t.keepAlive;
  fn(std::move(prefix), body, std::move(keepAlive),
     [weak, t = std::move(t), then = std::move(then)](bool ok, std::string converted, std::string reason) mutable {
       auto self = weak.lock();
       if (!self || self->state_ != State::Busy || !self->txDone_) return;  // failed meanwhile
       then(*self, std::move(t), ok, std::move(converted), std::move(reason));
     });
}

void SmtpClient::refuseNow(int code, std::string text) {
  refuseLocally(result_, code, std::move(text));
  mailOk_ = false;
  finish();
}

// The transaction on the wire: MAIL, RCPT..., DATA (pipelined when offered), then the body.
void SmtpClient::begin(Transaction t) {
  // RFC 1870 §6: a message over a next hop's fixed maximum is not sent; the server would
  // only refuse it (after the whole transfer, or at MAIL if we had no SIZE= to give), and
  // retrying cannot help: returned to the sender now. The size is the message as it goes
  // (after any conversion), without the few bytes of dot-stuffing.
  uint64_t size = t.prefix.size() + t.body.size();
  if (uint64_t limit = fixedMaxSize(); limit && size > limit)
    return refuseNow(552, "552 5.3.4 message size " + std::to_string(size) +
                              " exceeds fixed maximum message size " + std::to_string(limit) +
                              " of the next hop (not sent)");
  tx_ = std::move(t);
  result_.dsnOffered = supports("DSN");
  mailOk_ = false;
  accepted_ = 0;
  pipelining_ = supports("PIPELINING");
  // Not over LMTP: the per-recipient replies would follow BDAT LAST (RFC 2033 §4.3), and the
  // message goes by DATA instead.
  chunking_ = opts_.chunking && pipelining_ && supports("CHUNKING") && !tx_.probe && !opts_.lmtp;
  chunkFailed_ = chunksAfterRcpts_ = false;
  std::string batch = mailCommand() + "\r\n";
  expect(opts_.commandTimeoutMs, [this](const Reply& r) { onMail(r); });
  if (!pipelining_) return conn_->write(std::move(batch));
  // RFC 2920 §3.1: MAIL, every RCPT and DATA in one write; replies come back in order.
  for (size_t i = 0; i < tx_.rcpts.size(); ++i) {
    batch += rcptCommand(i) + "\r\n";
    expect(opts_.commandTimeoutMs, [this, i](const Reply& r) { onRcpt(i, r); });
  }
  if (tx_.probe) return conn_->write(std::move(batch));  // RSET after the last RCPT's reply
  if (chunking_) {
    // RFC 3030 §2, §4.2: BDAT commands may be pipelined after MAIL and RCPT, so a message
    // that fits in one chunk goes in this very write. The server reads a refused chunk's
    // octets all the same; a larger one waits for the RCPT replies, so it is never sent to
    // nobody. The lines are repaired as for DATA (what a DKIM signer signed), not stuffed.
    body_ = std::make_unique<Body>();
    body_->parts[0] = tx_.prefix;
    body_->parts[1] = tx_.body;
    body_->dotStuff = false;
    if (size > kBodyPiece) {
      chunksAfterRcpts_ = true;
      return conn_->write(std::move(batch));
    }
    std::string piece;
    piece.reserve(size + size / 8 + 2);
    bool last = body_->next(piece, kBodyPiece);  // all of it: size <= kBodyPiece
    writeChunk(std::move(piece), last, &batch);
    if (last) body_.reset();
    conn_->write(std::move(batch));
    return pumpChunks();  // nothing left but in a corner case
  }
  batch += "DATA\r\n";
  expect(opts_.commandTimeoutMs, [this](const Reply& r) { onDataReply(r); });
  conn_->write(std::move(batch));
}

std::string SmtpClient::mailCommand() const {
  std::string cmd = "MAIL FROM:<" + tx_.mailFrom + ">";
  if (tx_.size && supports("SIZE")) cmd += " SIZE=" + std::to_string(tx_.size);
  if (tx_.eightBit && supports("8BITMIME")) cmd += " BODY=8BITMIME";
  if (tx_.smtputf8 && supports("SMTPUTF8")) cmd += " SMTPUTF8";
  if (supports("DSN")) {
    if (!tx_.ret.empty()) cmd += " RET=" + tx_.ret;
    if (!tx_.envid.empty() && dsnValueFits(tx_.envid)) cmd += " ENVID=" + tx_.envid;
  }
  if (tx_.requireTls && tlsActive() && supports("REQUIRETLS")) cmd += " REQUIRETLS";  // RFC 8689 §3
  return cmd;
}

uint64_t SmtpClient::fixedMaxSize() const { return client::fixedMaxSize(ext_); }

void SmtpClient::onMail(const Reply& r) {
  result_.mail = r;
  mailOk_ = isPositive(r);
  if (closingReply(r)) return;
  if (pipelining_) return;  // the RCPT and DATA replies are already on their way
  if (!mailOk_) return tx_.probe ? resetThenFinish() : finish();
  sendRcpt(0);
}

std::string SmtpClient::rcptCommand(size_t i) const {
  std::string cmd = "RCPT TO:<" + tx_.rcpts[i] + ">";
  if (i < tx_.rcptDsn.size() && supports("DSN")) {
    const auto& d = tx_.rcptDsn[i];
    if (!d.notify.empty()) cmd += " NOTIFY=" + d.notify;
    if (!d.orcpt.empty() && dsnValueFits(d.orcpt)) cmd += " ORCPT=" + d.orcpt;
  }
  return cmd;
}

bool SmtpClient::dsnValueFits(std::string_view value) const {
  return !hasEightBit(value) || (tx_.smtputf8 && supports("SMTPUTF8"));
}

void SmtpClient::sendRcpt(size_t i) {
  command(rcptCommand(i), opts_.commandTimeoutMs, [this, i](const Reply& r) { onRcpt(i, r); });
}

void SmtpClient::onRcpt(size_t i, const Reply& r) {
  result_.rcpts[i] = r;
  if (isPositive(r)) ++accepted_;
  if (closingReply(r)) return;
  // A probe asks no more than this: the transaction is reset, never given data.
  if (tx_.probe && i + 1 == tx_.rcpts.size()) return resetThenFinish();
  if (pipelining_) {
    if (chunksAfterRcpts_ && i + 1 == tx_.rcpts.size()) startChunks();
    return;
  }
  if (i + 1 < tx_.rcpts.size()) return sendRcpt(i + 1);
  if (accepted_ == 0) return resetThenFinish();  // no DATA without a recipient
  command("DATA", opts_.commandTimeoutMs, [this](const Reply& d) { onDataReply(d); });
}

void SmtpClient::onDataReply(const Reply& r) {
  if (r.code != 354 && (r.code < 400 || r.code >= 600)) {
    // RFC 5321 §4.3.2: only 354 lets the message go, and only the reply after its final dot
    // accepts it. A 250 here (a broken server, or replies out of step with the commands) says
    // nothing about a message it never got: a temporary failure, and the connection, whose
    // replies can no longer be trusted to match the commands, is not used again.
    result_.data = {451, "451 4.5.0 unexpected reply to DATA: " + replyText(r.text)};
    return finish("unexpected reply to DATA: " + replyText(r.text));
  }
  result_.data = r;
  if (closingReply(r)) return;
  if (r.code != 354) {
    if (mailOk_) return resetThenFinish();  // MAIL and maybe RCPTs are still open server-side
    return finish();
  }
  if (!mailOk_ || accepted_ == 0) {
    // RFC 2920 §3.1: a server that answers a pipelined DATA with 354 although no recipient
    // was accepted gets an empty message ended at once, which it must then refuse.
    conn_->write(".\r\n");
    return expect(opts_.dataDoneTimeoutMs, [this](const Reply& d) {
      result_.data = d;
      if (closingReply(d)) return;
      resetThenFinish();
    });
  }
  body_ = std::make_unique<Body>();
  body_->parts[0] = tx_.prefix;
  body_->parts[1] = tx_.body;
  pumpBody();
}

void SmtpClient::pumpBody() {
  if (state_ != State::Busy || !body_) return;
  timer_.start(opts_.dataBlockTimeoutMs, [this] { fail("timeout sending the message"); });
  while (conn_->pendingWriteBytes() < kBodyHighWater) {
    std::string piece;
    piece.reserve(kBodyPiece + kBodyPiece / 8);
    bool last = body_->next(piece, kBodyPiece);
    conn_->write(std::move(piece));
    if (state_ != State::Busy) return;  // the write failed and closed the connection
    if (last) {
      body_.reset();
      timer_.stop();
      if (opts_.lmtp) {
        // RFC 2033 §4.2: one reply for each RCPT that got a 2xx, in the order of the RCPTs.
        for (size_t i = 0; i < tx_.rcpts.size(); ++i)
          if (isPositive(result_.rcpts[i]))
            expect(opts_.dataDoneTimeoutMs, [this, i](const Reply& r) { onLmtpReply(i, r); });
        return;
      }
      return expect(opts_.dataDoneTimeoutMs, [this](const Reply& r) { onDataDone(r); });
    }
  }
  // Wait for onDrain; the block timer stays armed meanwhile.
}

void SmtpClient::writeChunk(std::string piece, bool last, std::string* batch) {
  std::string head = "BDAT " + std::to_string(piece.size()) + (last ? " LAST\r\n" : "\r\n");
  // Only the last chunk's reply can accept the message (as the reply to DATA's final dot).
  expect(last ? opts_.dataDoneTimeoutMs : opts_.dataBlockTimeoutMs,
         [this, last](const Reply& r) { onChunkReply(r, last); });
  if (batch) {
    batch->append(head);
    batch->append(piece);
    return;
  }
  head.append(piece);
  conn_->write(std::move(head));
}

void SmtpClient::startChunks() {
  chunksAfterRcpts_ = false;
  if (!mailOk_ || accepted_ == 0) {  // no message without a recipient
    body_.reset();
    return mailOk_ ? resetThenFinish() : finish();
  }
  pumpChunks();
}

void SmtpClient::pumpChunks() {
  if (state_ != State::Busy || !body_ || chunksAfterRcpts_) return;
  while (conn_->pendingWriteBytes() < kBodyHighWater) {
    std::string piece;
    piece.reserve(kBodyPiece + kBodyPiece / 8);
    bool last = body_->next(piece, kBodyPiece);
    writeChunk(std::move(piece), last);
    if (state_ != State::Busy) return;  // the write failed and closed the connection
    if (last) {
      body_.reset();
      return;
    }
  }
  // Wait for onDrain; the replies' timers run meanwhile.
}

void SmtpClient::onChunkReply(const Reply& r, bool last) {
  if (closingReply(r)) return;
  if (!chunkFailed_) {
    if (last) {
      result_.data = r;
      // The reply to the message itself, unless no transaction was open to take it.
      result_.bodyAnswered = mailOk_ && accepted_ > 0;
      if (!isPositive(r)) chunkFailed_ = true;
    } else if (!isPositive(r)) {
      // RFC 3030 §2: after a refused chunk the transaction has failed: no more chunks (those
      // already on their way are answered and ignored), and RSET clears the server's state.
      chunkFailed_ = true;
      result_.data = r;
      body_.reset();
    }
  }
  if (!expects_.empty() || body_) return;  // more chunks to send or replies to come
  if (chunkFailed_ && mailOk_) return resetThenFinish();
  finish();
}

void SmtpClient::onDataDone(const Reply& r) {
  result_.data = r;
  result_.bodyAnswered = true;  // the one reply that can accept the message
  if (closingReply(r)) return;
  finish();
}

void SmtpClient::onLmtpReply(size_t i, const Reply& r) {
  result_.rcptData[i] = r;
  result_.data = r;
  result_.bodyAnswered = true;
  if (closingReply(r)) return;  // RFC 2033 §4.2 allows a 421 here: the rest get it too
  if (expects_.empty()) finish();
}

void SmtpClient::resetThenFinish() {
  command("RSET", opts_.commandTimeoutMs, [this](const Reply& r) {
    // Refused: no clean state to reuse, so the connection is closed before the result goes
    // out, and the caller never sees it as usable (it would start the next message on it).
    if (!isPositive(r)) return finish("RSET refused");
    finish();
  });
}

bool SmtpClient::closingReply(const Reply& r) {
  if (r.code != 421) return false;
  // What was answered before stands (a recipient refused with 550 is still refused); the
  // rest, never answered, gets the 421: deferred, to go over a new connection.
  for (auto& x : result_.rcpts)
    if (x.code == 0) x = r;
  if (result_.data.code == 0) result_.data = r;
  if (!expects_.empty() && !result_.rcptData.empty() && !body_ && result_.bodyAnswered)
    for (size_t i = 0; i < result_.rcptData.size(); ++i)  // LMTP: the recipients still waiting
      if (isPositive(result_.rcpts[i]) && result_.rcptData[i].code == 0) result_.rcptData[i] = r;
  finish("server closing the connection: " + replyText(r.text));
  return true;
}

void SmtpClient::finish(const std::string& closeWhy) {
  if (!mailOk_) {
    std::fill(result_.rcpts.begin(), result_.rcpts.end(), result_.mail);
    result_.data = result_.mail;
  }
  timer_.stop();
  auto keep = std::move(self_);
  auto done = std::move(txDone_);
  txDone_ = nullptr;
  tx_ = Transaction{};  // releases keepAlive
  if (!closeWhy.empty())
    fail(closeWhy);  // txDone_ is taken: the transaction's replies stand
  else
    state_ = State::Idle;
  if (done) done(std::move(result_));
}

// ---- ending --------------------------------------------------------------------------------

void SmtpClient::quit(std::function<void()> done) {
  if (state_ == State::Quitting) {
    if (done) {
      auto first = std::exchange(quitDone_, nullptr);
      quitDone_ = [first = std::move(first), done = std::move(done)] {
        if (first) first();
        done();
      };
    }
    return;
  }
  if (state_ != State::Idle) {
    abort();
    if (done) done();
    return;
  }
  state_ = State::Quitting;
  self_ = shared_from_this();
  quitDone_ = std::move(done);
  command("QUIT", opts_.commandTimeoutMs, [this](const Reply&) {
    state_ = State::Closed;
    timer_.stop();
    conn_->close();
    auto keep = std::move(self_);
    if (auto d = std::exchange(quitDone_, nullptr)) d();
  });
}

void SmtpClient::abort() { fail("connection aborted"); }

bool SmtpClient::tlsActive() const { return conn_ && conn_->tlsActive(); }

std::string SmtpClient::tlsSummary() const {
  if (!tlsActive()) return "";
  return conn_->tls()->protocol() + " " + conn_->tls()->cipher();
}

bool SmtpClient::tlsVerified() const { return tlsActive() && conn_->tls()->peerVerified(); }

bool SmtpClient::tlsDane() const { return tlsActive() && conn_->tls()->daneAuthenticated(); }

bool SmtpClient::tlsClientCertificate() const { return tlsActive() && conn_->tls()->clientCertificatePresented(); }

bool SmtpClient::supports(std::string_view ext) const { return ext_.find(ext) != ext_.end(); }

std::string SmtpClient::extensionParam(std::string_view ext) const {
  auto it = ext_.find(ext);
  return it == ext_.end() ? "" : it->second;
}

}  // namespace moat::mta::client
