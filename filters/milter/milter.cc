// filters/milter/milter.cc — see milter.h.
#include "filters/milter/milter.h"

#include <sys/un.h>

#include <algorithm>
#include <cctype>
#include <cstdio>

#include "filters/milter/protocol.h"
#include "filters/recipient_key.h"
#include "mta/runtime/log.h"
#include "mta/runtime/scan.h"
#include "mta/runtime/uv.h"
#include "mta/smtp/protocol.h"

namespace moat::filters::milter {

namespace mlog = moat::mta::log;
using Millis = std::chrono::milliseconds;

std::optional<Address> parseAddress(std::string_view text, const std::string& baseDir, std::string& error) {
  Address a;
  if (text.rfind("unix:", 0) == 0) {
    std::string path(text.substr(5));
    if (path.empty()) {
      error = "\"" + std::string(text) + "\": unix: needs a socket path";
      return std::nullopt;
    }
    if (path[0] != '/') path = baseDir + "/" + path;
    if (path.size() >= sizeof(sockaddr_un{}.sun_path)) {
      error = "unix socket path longer than " + std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + " bytes";
      return std::nullopt;
    }
    a.kind = Address::Kind::Unix;
    a.path = std::move(path);
    return a;
  }
  bool v6 = text.rfind("inet6:", 0) == 0;
  if (!v6 && text.rfind("inet:", 0) != 0) {
    error = "\"" + std::string(text) + "\": expected \"inet:HOST:PORT\", \"inet6:[::1]:PORT\" or \"unix:/path\"";
    return std::nullopt;
  }
  std::string_view rest = text.substr(v6 ? 6 : 5);
  size_t colon = rest.rfind(':');
  std::string_view host = colon == std::string_view::npos ? std::string_view() : rest.substr(0, colon);
  std::string_view port = colon == std::string_view::npos ? std::string_view() : rest.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  std::string h = host == "localhost" ? (v6 ? "::1" : "127.0.0.1") : std::string(host);
  auto ip = mta::IpAddress::parse(h);
  bool digits = !port.empty() && port.size() <= 5 &&
                std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
  unsigned long p = digits ? std::stoul(std::string(port)) : 0;
  if (!ip || p == 0 || p > 65535) {
    error = "\"" + std::string(text) +
            "\": expected inet:IP:PORT with an IP address (a host name other than localhost is not resolved), "
            "e.g. \"inet:127.0.0.1:11332\" or \"inet6:[::1]:8891\"";
    return std::nullopt;
  }
  a.host = ip->str();
  a.port = static_cast<uint16_t>(p);
  return a;
}

std::optional<EnvelopeChange> envelopeChange(char command, std::string_view data, bool utf8, std::string& error) {
  using Kind = EnvelopeChange::Kind;
  bool withArgs = command == reply::kAddRcptPar || command == reply::kChgFrom;
  Kind kind = command == reply::kDelRcpt ? Kind::DelRcpt : command == reply::kChgFrom ? Kind::ChgFrom : Kind::AddRcpt;
  auto r = parseEnvelopeRequest(data, withArgs);
  if (!r) {
    error = "malformed " + std::string(envelopeChangeName(kind)) + " request";
    return std::nullopt;
  }
  EnvelopeChange c;
  c.kind = kind;
  // The parameters the SMTP server takes with this command and keeps: checked with the
  // address below; the others are ignored (as Postfix's cleanup ignores them).
  std::string_view address = r->address;
  while (!address.empty() && address.front() == ' ') address.remove_prefix(1);
  while (!address.empty() && address.back() == ' ') address.remove_suffix(1);
  std::string line = kind == Kind::ChgFrom ? "MAIL FROM:" : "RCPT TO:";
  if (address.size() >= 2 && address.front() == '<' && address.back() == '>')
    line += address;
  else
    line += "<" + std::string(address) + ">";
  if (kind == Kind::ChgFrom && utf8) line += " SMTPUTF8";
  std::string_view args = r->args;
  while (!args.empty()) {
    size_t sp = args.find(' ');
    std::string_view tok = args.substr(0, sp);
    args = sp == std::string_view::npos ? std::string_view() : args.substr(sp + 1);
    if (tok.empty()) continue;
    std::string key(tok.substr(0, tok.find('=')));
    for (auto& ch : key) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    bool kept = kind == Kind::ChgFrom ? key == "RET" || key == "ENVID" : key == "NOTIFY" || key == "ORCPT";
    if (kept) {
      line += " ";
      line += tok;
    } else if (c.ignored.size() < 20) {
      std::string shown;
      for (unsigned char ch : tok.substr(0, 100))
        shown.push_back(ch >= 0x20 && ch < 0x7f ? static_cast<char>(ch) : '?');
      c.ignored.push_back(std::move(shown));
    }
  }
  auto parsed = mta::smtp::parseCommand(line, utf8);
  if (const auto* reply = std::get_if<mta::smtp::Reply>(&parsed)) {
    error = std::string(envelopeChangeName(kind)) + " <" + std::string(address.substr(0, 200)) + ">: " + reply->text;
    return std::nullopt;
  }
  auto& cmd = std::get<mta::smtp::Command>(parsed);
  // RCPT takes "Postmaster" alone; a milter's recipient is a mailbox with a domain.
  if (kind != Kind::ChgFrom && !mta::smtp::isValidMailbox(cmd.address, utf8)) {
    error = std::string(envelopeChangeName(kind)) + " <" + cmd.address + ">: not a mailbox";
    return std::nullopt;
  }
  c.address = cmd.address;
  for (const auto& p : cmd.params) {
    if (p.key == "NOTIFY") c.notify = p.value;
    if (p.key == "ORCPT") c.orcpt = p.value;
    if (p.key == "RET") c.ret = p.value;
    if (p.key == "ENVID") c.envid = p.value;
  }
  return c;
}

namespace {

// A header field value as a Result header: unfolded, leading whitespace dropped.
std::string unfold(std::string_view v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] == '\r') continue;
    if (v[i] == '\n') {
      while (i + 1 < v.size() && (v[i + 1] == ' ' || v[i + 1] == '\t')) ++i;
      out.push_back(' ');
      continue;
    }
    out.push_back(v[i]);
  }
  size_t i = 0;
  while (i < out.size() && (out[i] == ' ' || out[i] == '\t')) ++i;
  return out.substr(i);
}

// A whole field "Name: value" with CRLF line ends; continuation lines keep (or get) their
// leading whitespace, so the value cannot start a new field.
std::string fieldText(const std::string& name, std::string_view value, bool leadingSpace) {
  std::string v = toCrlf(value);
  std::string out = name + ":";
  if (!leadingSpace || v.empty() || (v[0] != ' ' && v[0] != '\t')) out += ' ';
  for (size_t i = 0; i < v.size(); ++i) {
    out.push_back(v[i]);
    if (v[i] == '\n' && i + 1 < v.size() && v[i + 1] != ' ' && v[i + 1] != '\t') out.push_back('\t');
  }
  return out + "\r\n";
}

enum class Phase { Command, Content, Eom };

constexpr size_t kMaxEnvelopeChanges = 1000;  // per milter and message

struct Step {
  char command = 0;
  std::string packet;       // macros (if any) and the command, encoded; empty for a body chunk
  uint64_t bodyOffset = 0;  // a body chunk: its range of ctx->message
  uint64_t bodyLength = 0;
  bool body = false;
  bool reply = true;  // the milter answers it
  Phase phase = Phase::Command;
};

class Conversation : public std::enable_shared_from_this<Conversation> {
 public:
  Conversation(const MilterConfig& m, std::shared_ptr<MessageContext> ctx, View view, const Env& env, uint64_t maxBody,
               std::function<void(Outcome)> done)
      : m_(m),
        ctx_(std::move(ctx)),
        view_(std::move(view)),
        msg_(view_.message),
        env_(env),
        maxBody_(maxBody),
        done_(std::move(done)),
        timer_(env.loop) {
    for (const auto& h : view_.headers) (h.aboveReceived ? above_ : below_).push_back({h, false, {}});
    // Moat's own fields as delivery will prepend them: its Received, Authentication-Results
    // (the checks are done: the filters after the milters add no result), the session's and the
    // earlier Data filters' fields (X-Spam-*, X-Moat-*).
    const auto& c = *ctx_;
    auto res = gatewayAuthResults(c.authResults, c.fromRelayNetwork || c.authenticated);
    moat_ = gatewayHeaders(c.received, authenticationResults(env.hostname, res), c.sessionHeaders, c.headers);
  }

  void start() {
    self_ = shared_from_this();
    timer_.start(static_cast<uint64_t>(m_.connectTimeout.count()), [this] { fail("connect timed out"); });
    // Owned here until libuv takes it (onConnect owns it again); freed on the error path.
    auto req = std::make_unique<ConnectReq>(ConnectReq{{}, self_});
    req->req.data = req.get();
    int rc = 0;
    if (m_.target.kind == Address::Kind::Unix) {
      pipe_ = std::make_unique<mta::uv::Handle<uv_pipe_t>>();
      rc = uv_pipe_init(env_.loop, pipe_->get(), 0);
      if (rc == 0) {
        pipe_->markInitialized();
        stream_ = reinterpret_cast<uv_stream_t*>(pipe_->get());
        uv_pipe_connect(&req->req, pipe_->get(), m_.target.path.c_str(), onConnect);
        req.release();  // onConnect runs whatever happens (an error comes as its status)
      }
    } else {
      tcp_ = std::make_unique<mta::uv::Handle<uv_tcp_t>>();
      sockaddr_storage ss{};
      auto ip = mta::IpAddress::parse(m_.target.host);
      if (ip && ip->isV4())
        rc = uv_ip4_addr(m_.target.host.c_str(), m_.target.port, reinterpret_cast<sockaddr_in*>(&ss));
      else
        rc = uv_ip6_addr(m_.target.host.c_str(), m_.target.port, reinterpret_cast<sockaddr_in6*>(&ss));
      if (rc == 0) rc = uv_tcp_init(env_.loop, tcp_->get());
      if (rc == 0) {
        tcp_->markInitialized();
        stream_ = reinterpret_cast<uv_stream_t*>(tcp_->get());
        rc = uv_tcp_connect(&req->req, tcp_->get(), reinterpret_cast<const sockaddr*>(&ss), onConnect);
        if (rc == 0) req.release();
      }
    }
    if (rc != 0) fail(std::string("connect: ") + uv_strerror(rc));
  }

 private:
  struct ConnectReq {
    uv_connect_t req;
    std::shared_ptr<Conversation> self;
  };
  struct WriteReq {
    uv_write_t req;
    std::string data;
    std::shared_ptr<Conversation> self;
  };

  static void onConnect(uv_connect_t* r, int status) {
    std::unique_ptr<ConnectReq> req(static_cast<ConnectReq*>(r->data));
    auto self = req->self;
    if (self->finished_) return;
    if (status != 0) return self->fail(std::string("connect: ") + uv_strerror(status));
    self->stream_->data = self.get();
    int rc = uv_read_start(
        self->stream_,
        [](uv_handle_t* h, size_t, uv_buf_t* buf) {
          auto* c = static_cast<Conversation*>(h->data);
          if (!c) {
            buf->base = nullptr;
            buf->len = 0;
            return;
          }
          buf->base = c->readBuf_;
          buf->len = sizeof c->readBuf_;
        },
        onRead);
    if (rc != 0) return self->fail(std::string("read: ") + uv_strerror(rc));
    self->send(optnegPacket(kOfferedActions, kOfferedProtocol));
    self->arm(self->m_.commandTimeout, "OPTNEG");
  }

  static void onRead(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
    auto* c = static_cast<Conversation*>(s->data);
    if (!c || c->finished_) return;
    auto keep = c->shared_from_this();
    if (n < 0)
      return c->fail(n == UV_EOF ? "the milter closed the connection"
                                 : std::string("read: ") + uv_strerror(static_cast<int>(n)));
    c->decoder_.feed(std::string_view(buf->base, static_cast<size_t>(n)));
    while (!c->finished_) {
      auto p = c->decoder_.next();
      if (!p) {
        if (!c->decoder_.error().empty()) c->fail("protocol error: " + c->decoder_.error());
        return;
      }
      c->onPacket(*p);
    }
  }

  void send(std::string data) {
    if (!stream_ || finished_) return;
    auto req = std::make_unique<WriteReq>(WriteReq{{}, std::move(data), self_});
    req->req.data = req.get();
    uv_buf_t b = uv_buf_init(req->data.data(), static_cast<unsigned>(req->data.size()));
    int rc = uv_write(&req->req, stream_, &b, 1, [](uv_write_t* w, int status) {
      std::unique_ptr<WriteReq> r(static_cast<WriteReq*>(w->data));
      if (status != 0 && status != UV_ECANCELED && !r->self->finished_)
        r->self->fail(std::string("write: ") + uv_strerror(status));
    });
    if (rc != 0) return fail(std::string("write: ") + uv_strerror(rc));
    req.release();  // the write callback owns it now
  }

  void arm(Millis timeout, const char* waitingFor) {
    waiting_ = waitingFor;
    timeout_ = timeout;
    timer_.start(static_cast<uint64_t>(timeout.count()),
                 [this] { fail(std::string("timed out waiting for the reply to ") + waiting_); });
  }

  // The packets after OPTNEG, as the milter's protocol flags ask.
  void plan(uint32_t p) {
    using Macros = std::vector<std::pair<std::string, std::string>>;
    const auto& c = *ctx_;
    std::string clientName = c.clientName.empty() ? "unknown" : c.clientName;
    std::string clientAddr = c.clientIp.str();
    auto add = [&](char command, Macros macros, std::string packet, bool skip, bool reply, Phase phase) {
      if (skip) return;
      Step s;
      s.command = command;
      if (!macros.empty()) s.packet = macroPacket(command, macros);
      s.packet += packet;
      s.reply = reply;
      s.phase = phase;
      steps_.push_back(std::move(s));
    };
    Macros connect = {{"j", env_.hostname},
                      {"{daemon_name}", env_.hostname},
                      {"_", clientName + " [" + clientAddr + "]"},
                      {"{client_addr}", clientAddr},
                      {"{client_port}", std::to_string(c.clientPort)},
                      {"{client_name}", clientName}};
    add(cmd::kConnect, connect, connectPacket(clientName, c.clientIp.isV4() ? '4' : '6', c.clientPort, clientAddr),
        p & proto::kNoConnect, !(p & proto::kNrConnect), Phase::Command);
    Macros helo;
    if (c.tls) helo.push_back({"{tls_version}", c.tlsVersion.empty() ? "TLS" : c.tlsVersion});
    add(cmd::kHelo, helo, heloPacket(c.helo), p & proto::kNoHelo, !(p & proto::kNrHelo), Phase::Command);
    Macros mail = {{"i", c.queueId}, {"{mail_addr}", view_.mailFrom}};
    if (c.authenticated) mail.push_back({"{auth_authen}", c.authUser});
    // Again with MAIL: a milter that declines HELO (SMFIP_NOHELO) gets no HELO macros.
    if (c.tls) mail.push_back(helo.front());
    std::vector<std::string> mailArgs;
    if (!msg_.empty()) mailArgs.push_back("SIZE=" + std::to_string(msg_.size()));
    for (const auto& a : view_.mailArgs) mailArgs.push_back(a);
    add(cmd::kMail, mail, envelopePacket(cmd::kMail, view_.mailFrom, mailArgs), p & proto::kNoMail,
        !(p & proto::kNrMail), Phase::Command);
    for (size_t i = 0; i < view_.rcpts.size(); ++i) {
      const auto& r = view_.rcpts[i];
      auto args = i < view_.rcptArgs.size() ? view_.rcptArgs[i] : std::vector<std::string>{};
      add(cmd::kRcpt, {{"{rcpt_addr}", r}}, envelopePacket(cmd::kRcpt, r, args), p & proto::kNoRcpt,
          !(p & proto::kNrRcpt), Phase::Command);
    }
    add(cmd::kData, {{"i", c.queueId}}, encode(cmd::kData, ""), p & proto::kNoData, !(p & proto::kNrData),
        Phase::Command);
    bool lead = p & proto::kHeaderLeadSpace;
    leadingSpace_ = lead;
    // Moat's own fields first, as they will be delivered (opendkim and rspamd read the
    // Received field, opendmarc and policy scripts Authentication-Results), with the fields
    // earlier milters added where they are delivered: around them.
    moatSent_ = !(p & proto::kNoHeaders);
    auto prepended = [&](const std::vector<Slot>& slots) {
      for (const auto& slot : slots)
        add(cmd::kHeader, {}, headerPacket(slot.h.name, milterHeaderValue(" " + slot.h.value, lead)),
            p & proto::kNoHeaders, !(p & proto::kNrHeader), Phase::Content);
    };
    prepended(above_);
    for (const auto& h : moat_)
      add(cmd::kHeader, {}, headerPacket(h.name, milterHeaderValue(" " + h.value, lead)), p & proto::kNoHeaders,
          !(p & proto::kNrHeader), Phase::Content);
    prepended(below_);
    if (!(p & proto::kNoHeaders))
      for (const auto& f : headerFields(msg_))
        add(cmd::kHeader, {}, headerPacket(f.name, milterHeaderValue(f.rawValue, lead)), false, !(p & proto::kNrHeader),
            Phase::Content);
    add(cmd::kEoh, {}, encode(cmd::kEoh, ""), p & proto::kNoEoh, !(p & proto::kNrEoh), Phase::Content);
    if (!(p & proto::kNoBody)) {
      uint64_t at = bodyOffset(msg_);
      for (; at < msg_.size(); at += kBodyChunk) {
        Step s;
        s.command = cmd::kBody;
        s.body = true;
        s.bodyOffset = at;
        s.bodyLength = std::min<uint64_t>(kBodyChunk, msg_.size() - at);
        s.reply = !(p & proto::kNrBody);
        s.phase = Phase::Content;
        steps_.push_back(std::move(s));
      }
    }
    add(cmd::kEom, {{"i", c.queueId}}, encode(cmd::kEom, ""), false, true, Phase::Eom);
  }

  // Sends steps until one that waits for a reply.
  void advance() {
    while (!finished_ && next_ < steps_.size()) {
      Step& s = steps_[next_++];
      current_ = s.command;
      if (s.body)
        send(encode(cmd::kBody, msg_.substr(s.bodyOffset, s.bodyLength)));
      else
        send(std::move(s.packet));
      if (s.reply) {
        arm(s.phase == Phase::Command ? m_.commandTimeout : m_.contentTimeout, commandName(s.command));
        return;
      }
    }
  }

  static const char* commandName(char c) {
    switch (c) {
      case cmd::kConnect: return "CONNECT";
      case cmd::kHelo: return "HELO";
      case cmd::kMail: return "MAIL";
      case cmd::kRcpt: return "RCPT";
      case cmd::kData: return "DATA";
      case cmd::kHeader: return "HEADER";
      case cmd::kEoh: return "EOH";
      case cmd::kBody: return "BODY";
      case cmd::kEom: return "EOM";
      default: return "OPTNEG";
    }
  }

  void onPacket(const Packet& p) {
    if (!negotiated_) {
      auto o = p.command == reply::kOptneg ? parseOptneg(p.data) : std::nullopt;
      if (!o) return fail("protocol error: expected the OPTNEG reply");
      if (o->version < 2 || o->version > kVersion)
        return fail("negotiation failed: protocol version " + std::to_string(o->version));
      if (o->actions & ~kOfferedActions)
        return fail("negotiation failed: the milter asks for actions Moat does not offer (0x" +
                    hex(o->actions & ~kOfferedActions) + ")");
      if (o->protocol & ~kOfferedProtocol)
        return fail("negotiation failed: unknown protocol flags 0x" + hex(o->protocol & ~kOfferedProtocol));
      negotiated_ = true;
      actions_ = o->actions;
      protocol_ = o->protocol;
      plan(protocol_);
      return advance();
    }
    if (!awaiting()) return fail(std::string("protocol error: unexpected reply '") + printable(p.command) + "'");
    switch (p.command) {
      case reply::kProgress:
        timer_.start(static_cast<uint64_t>(timeout_.count()),
                     [this] { fail(std::string("timed out waiting for the reply to ") + waiting_); });
        return;
      case reply::kContinue:
        if (current_ == cmd::kEom) return finish(std::move(out_), true);
        return advance();
      case reply::kSkip:
        if (current_ != cmd::kBody || !(protocol_ & proto::kSkip)) return fail("protocol error: SKIP outside the body");
        while (next_ < steps_.size() && steps_[next_].body) ++next_;
        return advance();
      case reply::kAccept:
        if (current_ == cmd::kEom) return finish(std::move(out_), true);
        {
          Outcome accepted;
          accepted.kind = Outcome::Kind::Accept;
          return finish(std::move(accepted), false);
        }
      case reply::kReject: return decide(Outcome::Kind::Reject, 550, "5.7.1", "Command rejected");
      case reply::kTempFail:
        return decide(Outcome::Kind::TempFail, 451, "4.7.1", "Service unavailable - try again later");
      case reply::kReplyCode: {
        auto rc = parseReplyCode(p.data);
        if (!rc) return fail("malformed SMFIR_REPLYCODE \"" + printableText(p.data) + "\"");
        std::string enhanced = rc->enhanced.empty() ? (rc->code >= 500 ? "5.7.1" : "4.7.1") : rc->enhanced;
        return decide(rc->code >= 500 ? Outcome::Kind::Reject : Outcome::Kind::TempFail, rc->code, enhanced,
                      rc->text.empty() ? "Command rejected" : rc->text);
      }
      case reply::kDiscard: {
        Outcome o;
        o.kind = Outcome::Kind::Quarantine;
        o.quarantineReason = "milter " + m_.name + ": discard";
        return finish(std::move(o), false);
      }
      default: break;
    }
    if (current_ != cmd::kEom)
      return fail(std::string("protocol error: reply '") + printable(p.command) + "' before end of message");
    modification(p);
  }

  // The changes a milter sends before its final EOM reply.
  void modification(const Packet& p) {
    switch (p.command) {
      case reply::kAddHeader:
      case reply::kInsHeader: {
        if (!(actions_ & action::kAddHeaders)) return fail("protocol error: add header without ADDHDRS");
        auto h = parseHeaderChange(p.data, p.command == reply::kInsHeader);
        if (!h) return fail("protocol error: malformed add header");
        if (++headerChanges_ > 1000) return fail("protocol error: over 1000 header changes");
        if (p.command == reply::kInsHeader) return insertHeader(*h);
        added_.push_back({h->name, unfold(h->value)});
        return;
      }
      case reply::kAddRcpt:
      case reply::kAddRcptPar:
      case reply::kDelRcpt:
      case reply::kChgFrom: {
        uint32_t needed = p.command == reply::kAddRcpt      ? action::kAddRcpt
                          : p.command == reply::kAddRcptPar ? action::kAddRcptPar
                          : p.command == reply::kDelRcpt    ? action::kDelRcpt
                                                            : action::kChgFrom;
        if (!(actions_ & needed))
          return fail(std::string("protocol error: reply '") + printable(p.command) + "' without its SMFIF flag");
        if (out_.envelope.size() >= kMaxEnvelopeChanges)
          return fail("protocol error: over " + std::to_string(kMaxEnvelopeChanges) + " envelope changes");
        std::string error;
        auto c = envelopeChange(p.command, p.data, ctx_->smtputf8, error);
        if (!c) return fail("protocol error: " + error);
        c->source = m_.name;
        out_.envelope.push_back(std::move(*c));
        return;
      }
      case reply::kChgHeader: {
        if (!(actions_ & action::kChgHeaders)) return fail("protocol error: change header without CHGHDRS");
        auto h = parseHeaderChange(p.data, true);
        if (!h) return fail("protocol error: malformed change header");
        if (++headerChanges_ > 1000) return fail("protocol error: over 1000 header changes");
        return changeHeader(*h);
      }
      case reply::kReplBody: {
        if (!(actions_ & action::kChgBody)) return fail("protocol error: replace body without CHGBODY");
        if (newBody_.size() + p.data.size() > maxBody_)
          return fail("protocol error: replacement body over the size limit");
        newBody_ += p.data;
        replacedBody_ = true;
        return;
      }
      case reply::kQuarantine: {
        if (!(actions_ & action::kQuarantine)) return fail("protocol error: quarantine without QUARANTINE");
        std::string reason = printableText(p.data);
        out_.kind = Outcome::Kind::Quarantine;
        out_.quarantineReason = "milter " + m_.name + ": " + (reason.empty() ? "quarantine" : reason);
        return;
      }
      default: return fail(std::string("protocol error: unknown reply '") + printable(p.command) + "'");
    }
  }

  void refused(const std::string& error) {
    mlog::warn("milter_error")
        .add("milter", m_.name)
        .add("session", ctx_->sessionId)
        .add("queue_id", ctx_->queueId)
        .add("error", error);
  }

  // SMFIR_CHGHEADER: the index-th field named h.name in the header as the milter was sent
  // it: the fields earlier milters put above Moat's Received, Moat's own fields (Received,
  // Authentication-Results, its filters': not changed), the earlier milters' below them, the
  // message's. An earlier milter's field is changed in place; a message field by an edit of
  // the message it was sent (Moat's filters' edits applied).
  void changeHeader(const HeaderChange& h) {
    uint32_t index = std::max<uint32_t>(h.index, 1);
    uint32_t seen = 0;
    auto inSlots = [&](std::vector<Slot>& slots) {
      for (auto& slot : slots) {
        if (!mta::iequalsAscii(slot.h.name, h.name) || ++seen != index) continue;
        if (h.value.empty())
          slot.removed = true;
        else
          slot.h.value = unfold(h.value);
        return true;
      }
      return false;
    };
    if (inSlots(above_)) return;
    // Moat's own fields are not in the message: they are prepended at delivery.
    if (moatSent_)
      for (const auto& f : moat_)
        if (mta::iequalsAscii(f.name, h.name) && ++seen == index)
          return refused("change of Moat's own " + f.name + " field: not made");
    if (inSlots(below_)) return;
    for (const auto& f : headerFields(msg_)) {
      if (!mta::iequalsAscii(f.name, h.name) || ++seen != index) continue;
      Edit e;
      e.offset = f.offset;
      e.length = f.length;
      e.replacement = h.value.empty() ? "" : fieldText(std::string(f.name), h.value, leadingSpace_);
      e.why = "milter " + m_.name + ": " + (h.value.empty() ? "deleted " : "changed ") + std::string(f.name);
      if (!addEdit(out_.edits, std::move(e), msg_.size()))
        refused("change of " + h.name + " collides with an earlier change: dropped");
      return;
    }
    if (!h.value.empty()) added_.push_back({h.name, unfold(h.value)});  // no such field: added
  }

  // SMFIR_INSHEADER: before the index-th field of the header as the milter was sent it
  // (0: the first), counted without the milter's own earlier inserts. Above Moat's fields
  // (or before a field an earlier milter added) it is a prepended field; among Moat's own
  // fields, which stay together, just below them; in the message, an insert edit at that
  // field's start (past the last field: at the end of the header).
  void insertHeader(const HeaderChange& h) {
    uint64_t index = h.index;
    if (index < above_.size()) return above_[index].before.push_back({h.name, unfold(h.value), true});
    index -= above_.size();
    if (moatSent_ && !moat_.empty()) {
      if (index == 0) return aboveEnd_.push_back({h.name, unfold(h.value), true});
      if (index < moat_.size()) return belowMoat_.push_back({h.name, unfold(h.value)});
      index -= moat_.size();
    }
    if (index < below_.size()) return below_[index].before.push_back({h.name, unfold(h.value)});
    index -= below_.size();
    auto fields = headerFields(msg_);
    uint64_t at = index < fields.size() ? fields[index].offset
                  : fields.empty()      ? 0
                                        : fields.back().offset + fields.back().length;
    Edit e;
    e.offset = at;
    e.replacement = fieldText(h.name, h.value, leadingSpace_);
    e.why = "milter " + m_.name + ": inserted " + h.name;
    if (!addEdit(out_.edits, std::move(e), msg_.size()))
      refused("insert of " + h.name + " collides with an earlier change: dropped");
  }

  // The milter-added fields after this milter's changes, in delivery order.
  std::vector<Header> prependedFields() const {
    std::vector<Header> out;
    auto put = [&](const std::vector<Slot>& slots, bool above) {
      for (const auto& slot : slots) {
        for (auto h : slot.before) {
          h.aboveReceived = above;
          out.push_back(std::move(h));
        }
        if (!slot.removed) out.push_back(slot.h);
      }
    };
    put(above_, true);
    for (const auto& h : aboveEnd_) out.push_back(h);
    for (const auto& h : belowMoat_) out.push_back(h);
    put(below_, false);
    for (const auto& h : added_) out.push_back(h);
    return out;
  }

  bool awaiting() const { return timer_.active(); }

  void decide(Outcome::Kind kind, int code, std::string enhanced, std::string text) {
    Outcome o;
    o.kind = kind;
    o.code = code;
    o.enhanced = std::move(enhanced);
    o.text = std::move(text);
    finish(std::move(o), false);
  }

  void fail(std::string why) {
    Outcome o;
    o.kind = Outcome::Kind::Error;
    o.error = std::move(why);
    finish(std::move(o), false);
  }

  // `changes`: `o` is the milter's reply at end of message, with the changes it sent.
  void finish(Outcome o, bool changes = false) {
    if (finished_) return;
    finished_ = true;
    auto keep = std::move(self_);
    timer_.stop();
    if (o.kind == Outcome::Kind::Continue || o.kind == Outcome::Kind::Quarantine || o.kind == Outcome::Kind::Accept)
      o.headers = changes ? prependedFields() : view_.headers;
    if (changes && (o.kind == Outcome::Kind::Continue || o.kind == Outcome::Kind::Quarantine)) {
      if (replacedBody_) {
        std::string_view msg = msg_;
        uint64_t at = bodyOffset(msg);
        Edit e;
        e.offset = at;
        e.length = msg.size() - at;
        // No empty line in the message: the new body needs one before it.
        e.replacement =
            (at == msg.size() && mta::headerBlock(msg).size() == msg.size() ? "\r\n" : "") + toCrlf(newBody_);
        e.why = "milter " + m_.name + ": replaced body";
        if (!addEdit(o.edits, std::move(e), msg.size()))
          refused("body replacement collides with a header change: dropped");
      }
    }
    if (stream_) {
      if (negotiated_) {
        std::string quit = encode(cmd::kQuit, "");
        uv_buf_t b = uv_buf_init(quit.data(), static_cast<unsigned>(quit.size()));
        uv_try_write(stream_, &b, 1);  // best effort: the milter also takes EOF as the end
      }
      stream_->data = nullptr;
      stream_ = nullptr;
    }
    tcp_.reset();
    pipe_.reset();
    auto done = std::move(done_);
    done(std::move(o));
  }

  static std::string hex(uint32_t v) {
    char buf[16];
    snprintf(buf, sizeof buf, "%x", v);
    return buf;
  }
  static std::string printable(char c) {
    unsigned char u = static_cast<unsigned char>(c);
    return u > 0x20 && u < 0x7f ? std::string(1, c) : "\\x" + hex(u);
  }
  static std::string printableText(std::string_view s) {
    std::string out;
    for (unsigned char c : s.substr(0, 200))
      if (c >= 0x20 && c < 0x7f) out.push_back(static_cast<char>(c));
    return out;
  }

  // A header field an earlier milter added, as this milter was sent it: changed or deleted
  // in place, with this milter's inserts before it.
  struct Slot {
    Header h;
    bool removed = false;
    std::vector<Header> before;
  };

  MilterConfig m_;  // a copy: a reload may replace the filter while this runs
  std::shared_ptr<MessageContext> ctx_;
  View view_;
  std::string_view msg_;             // the message it is sent: view_.message
  std::vector<Slot> above_, below_;  // the view's fields above and below Moat's own
  std::vector<Header> moat_;         // Moat's own fields, as delivered (gatewayHeaders)
  std::vector<Header> aboveEnd_;     // inserted just above Moat's Received
  std::vector<Header> belowMoat_;    // inserted among Moat's own fields: just below them
  std::vector<Header> added_;        // added (SMFIR_ADDHEADER): below the earlier milters' fields
  size_t headerChanges_ = 0;
  Env env_;
  uint64_t maxBody_;
  std::function<void(Outcome)> done_;
  mta::uv::Timer timer_;
  std::unique_ptr<mta::uv::Handle<uv_tcp_t>> tcp_;
  std::unique_ptr<mta::uv::Handle<uv_pipe_t>> pipe_;
  uv_stream_t* stream_ = nullptr;
  std::shared_ptr<Conversation> self_;  // alive until finish()
  char readBuf_[16 * 1024];
  Decoder decoder_;
  bool negotiated_ = false, finished_ = false, leadingSpace_ = false, replacedBody_ = false, moatSent_ = false;
  uint32_t actions_ = 0, protocol_ = 0;
  std::vector<Step> steps_;
  size_t next_ = 0;
  char current_ = cmd::kOptneg;
  const char* waiting_ = "OPTNEG";
  Millis timeout_{0};
  Outcome out_;
  std::string newBody_;
};

const char* kindName(Outcome::Kind k) {
  switch (k) {
    case Outcome::Kind::Continue: return "continue";
    case Outcome::Kind::Accept: return "accept";
    case Outcome::Kind::Reject: return "reject";
    case Outcome::Kind::TempFail: return "tempfail";
    case Outcome::Kind::Quarantine: return "quarantine";
    case Outcome::Kind::Error: return "error";
    case Outcome::Kind::Skipped: return "skipped";
  }
  return "";
}

const char* actionName(DefaultAction a) {
  switch (a) {
    case DefaultAction::TempFail: return "tempfail";
    case DefaultAction::Accept: return "accept";
    case DefaultAction::Reject: return "reject";
  }
  return "";
}

// Runs the milters one after the other and folds their outcomes into one Result.
struct Run : std::enable_shared_from_this<Run> {
  std::vector<MilterConfig> milters;  // a copy: a reload may replace the filter while this runs
  std::shared_ptr<MessageContext> ctx;
  Env env;
  Filter::Done done;
  uint64_t maxBody = 0;
  size_t next = 0;
  Result result;
  mta::JsonObject outcomes;
  bool quarantined = false;
  // What the next milter is sent: Moat's own filters' edits and the earlier milters' changes
  // applied. `edits`: all of them, composed, as edits of ctx->message (Moat's first, as a
  // milter 0's); `view.message` is stale while `rerender` is set. `milterEdits`: a milter
  // changed the message (`edits` then replace the pipeline's).
  View view;
  std::vector<Edit> edits;
  bool rerender = false;
  bool milterEdits = false;

  void step() {
    const auto& ms = milters;
    if (next == ms.size()) return end();
    const MilterConfig& m = ms[next++];
    if (!m.outbound && (ctx->fromRelayNetwork || ctx->authenticated)) {
      outcomes.add(m.name, "skipped (outbound)");
      return step();
    }
    if (rerender) return render(m);
    converse(m);
  }

  // The message with the earlier edits (Moat's filters', the earlier milters'), for milter
  // `m`: one copy, bounded as a replaced body is, made with the renderer delivery uses
  // (applyEdits, on the pool when large).
  void render(const MilterConfig& m) {
    uint64_t size = editedSize(ctx->message.size(), edits);
    if (size > maxBody) {
      Outcome o;
      o.kind = Outcome::Kind::Error;
      o.error = "the message with the earlier changes is " + std::to_string(size) + " bytes, over the size limit";
      return take(m, std::move(o));  // and so for every later milter: none is sent a stale message
    }
    auto self = shared_from_this();
    auto storage = std::make_shared<std::string>();
    auto work = [self, storage] { *storage = applyEdits(self->ctx->message, self->edits); };
    auto after = [self, storage, &m] {
      self->rerender = false;
      self->view.storage = storage;
      self->view.message = *storage;
      self->converse(m);
    };
    if (size <= kLightWorkBytes) {
      work();
      return after();
    }
    env.offload(work, after, size);
  }

  void converse(const MilterConfig& m) {
    auto self = shared_from_this();
    milter::converse(m, ctx, view, env, maxBody, [self, &m](Outcome o) { self->take(m, std::move(o)); });
  }

  void take(const MilterConfig& m, Outcome o) {
    std::string shown = kindName(o.kind);
    if (o.kind == Outcome::Kind::Error) {
      mlog::warn("milter_error")
          .add("milter", m.name)
          .add("session", ctx->sessionId)
          .add("queue_id", ctx->queueId)
          .add("error", o.error)
          .add("action", actionName(m.defaultAction));
      shown = std::string("error, ") + actionName(m.defaultAction);
      Outcome d;
      if (m.defaultAction == DefaultAction::TempFail) {
        d.kind = Outcome::Kind::TempFail;
        d.code = 451;
        d.enhanced = "4.7.1";
        d.text = "Service unavailable - try again later";
      } else if (m.defaultAction == DefaultAction::Reject) {
        d.kind = Outcome::Kind::Reject;
        d.code = 550;
        d.enhanced = "5.7.1";
        d.text = "Command rejected";
      } else {
        d.kind = Outcome::Kind::Skipped;
      }
      o = std::move(d);
    } else if (o.kind == Outcome::Kind::Reject || o.kind == Outcome::Kind::TempFail) {
      shown += " " + std::to_string(o.code);
    }
    outcomes.add(m.name, shown);
    bool changes = o.kind == Outcome::Kind::Continue || o.kind == Outcome::Kind::Quarantine;
    if (changes || o.kind == Outcome::Kind::Accept) view.headers = o.headers;
    if (changes && !o.edits.empty()) {
      // As edits of the message as received, composed with Moat's own filters' edits and the
      // earlier milters' (the pipeline takes the whole set); the next milter is sent the
      // message with them.
      edits = edits.empty() ? std::move(o.edits) : composeEdits(edits, view.message, o.edits);
      rerender = true;
      milterEdits = true;
    }
    if (changes && !o.envelope.empty()) applyEnvelope(view, o.envelope);
    for (auto& c : o.envelope) result.envelope.push_back(std::move(c));
    switch (o.kind) {
      case Outcome::Kind::Reject:
      case Outcome::Kind::TempFail:
        result.verdict = o.kind == Outcome::Kind::Reject ? Verdict::Reject : Verdict::TempFail;
        result.code = o.code;
        result.enhanced = o.enhanced;
        result.text = o.text;
        result.summary = o.kind == Outcome::Kind::Reject ? "reject" : "tempfail";
        result.headers.clear();
        result.edits.clear();
        result.envelope.clear();
        return end();
      case Outcome::Kind::Quarantine:
        if (!quarantined) result.quarantineReason = o.quarantineReason;
        quarantined = true;
        break;
      default: break;
    }
    step();
  }

  void end() {
    if (result.verdict == Verdict::Continue) {
      result.headers = std::move(view.headers);
      if (milterEdits) {
        result.edits = std::move(edits);
        result.replacesEdits = true;
      }
      if (quarantined) {
        result.verdict = Verdict::Quarantine;
        result.summary = "quarantine";
      } else {
        result.summary = "pass";
      }
    }
    result.detail.addRaw("milters", outcomes.str());
    auto d = std::move(done);
    d(std::move(result));
  }
};

}  // namespace

void converse(const MilterConfig& milter, std::shared_ptr<MessageContext> ctx, const Env& env, uint64_t maxBody,
              std::function<void(Outcome)> done) {
  View view = viewOf(*ctx);
  converse(milter, std::move(ctx), std::move(view), env, maxBody, std::move(done));
}

void converse(const MilterConfig& milter, std::shared_ptr<MessageContext> ctx, View view, const Env& env,
              uint64_t maxBody, std::function<void(Outcome)> done) {
  auto c = std::make_shared<Conversation>(milter, std::move(ctx), std::move(view), env, maxBody, std::move(done));
  c->start();
}

View viewOf(const MessageContext& ctx) {
  View v;
  v.message = ctx.message;
  v.mailFrom = ctx.mailFrom;
  v.rcpts = ctx.rcpts;
  v.rcptArgs.resize(v.rcpts.size());
  if (!ctx.ret.empty()) v.mailArgs.push_back("RET=" + ctx.ret);
  if (!ctx.envid.empty()) v.mailArgs.push_back("ENVID=" + ctx.envid);
  return v;
}

namespace {
// Sets KEY=value among MAIL's parameters, in place; an empty value leaves them as they are.
void setMailArg(std::vector<std::string>& args, const std::string& key, const std::string& value) {
  if (value.empty()) return;
  for (auto& a : args)
    if (a.size() > key.size() && a[key.size()] == '=' && mta::iequalsAscii(a.substr(0, key.size()), key)) {
      a = key + "=" + value;
      return;
    }
  args.push_back(key + "=" + value);
}
}  // namespace

void applyEnvelope(View& view, const std::vector<EnvelopeChange>& changes) {
  const auto& key = recipientKey;  // as the session keys its recipients
  view.rcptArgs.resize(view.rcpts.size());
  for (const auto& c : changes) {
    switch (c.kind) {
      case EnvelopeChange::Kind::AddRcpt: {
        bool known = std::any_of(view.rcpts.begin(), view.rcpts.end(),
                                 [&](const std::string& r) { return key(r) == key(c.address); });
        if (known) break;
        view.rcpts.push_back(c.address);
        std::vector<std::string> args;
        if (!c.notify.empty()) args.push_back("NOTIFY=" + c.notify);
        if (!c.orcpt.empty()) args.push_back("ORCPT=" + c.orcpt);
        view.rcptArgs.push_back(std::move(args));
        break;
      }
      case EnvelopeChange::Kind::DelRcpt:
        for (size_t i = view.rcpts.size(); i-- > 0;) {
          if (key(view.rcpts[i]) != key(c.address)) continue;
          view.rcpts.erase(view.rcpts.begin() + static_cast<std::ptrdiff_t>(i));
          view.rcptArgs.erase(view.rcptArgs.begin() + static_cast<std::ptrdiff_t>(i));
        }
        break;
      case EnvelopeChange::Kind::ChgFrom:
        // As Sendmail (and the session): a parameter the change does not give keeps its value.
        view.mailFrom = c.address;
        setMailArg(view.mailArgs, "RET", c.ret);
        setMailArg(view.mailArgs, "ENVID", c.envid);
        break;
    }
  }
}

MilterFilter::MilterFilter(std::vector<MilterConfig> milters, uint64_t maxMessageSize)
    : milters_(std::move(milters)), maxMessageSize_(maxMessageSize) {}

void MilterFilter::run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const {
  auto r = std::make_shared<Run>();
  r->milters = milters_;
  r->ctx = std::move(ctx);
  r->env = env;
  r->done = std::move(done);
  r->maxBody = maxMessageSize_ + kMaxPacket;
  r->view = viewOf(*r->ctx);
  // Every milter, the first too, is sent the message with Moat's own filters' edits (a
  // stripped attachment, a prefixed Subject); none: the message as received, not copied.
  r->edits = r->ctx->edits;
  r->rerender = !r->edits.empty();
  r->step();
}

std::shared_ptr<const MilterFilter> makeMilterFilter(const policy::Config& config, policy::Errors& errors) {
  std::vector<MilterConfig> milters;
  for (auto& s : config.sectionArray("milter", errors)) {
    MilterConfig m;
    m.address = s.getString("address", "");
    m.name = s.getString("name", "");
    m.connectTimeout = s.getDuration("connect_timeout", m.connectTimeout);
    m.commandTimeout = s.getDuration("command_timeout", m.commandTimeout);
    m.contentTimeout = s.getDuration("content_timeout", m.contentTimeout);
    std::string action = s.getEnum("default_action", "tempfail", {"tempfail", "accept", "reject"});
    m.defaultAction = action == "accept"   ? DefaultAction::Accept
                      : action == "reject" ? DefaultAction::Reject
                                           : DefaultAction::TempFail;
    m.outbound = s.getBool("outbound", true);
    s.rejectUnknownKeys();
    for (const char* key : {"connect_timeout", "command_timeout", "content_timeout"})
      if (s.has(key) && s.getDuration(key, Millis(1)).count() <= 0) s.error(key, "must be longer than 0s");
    if (!s.has("address")) {
      s.error("address", "[[milter]] needs an address (\"inet:HOST:PORT\", \"inet6:[::1]:PORT\" or \"unix:/path\")");
      continue;
    }
    std::string error;
    auto a = parseAddress(m.address, s.baseDir(), error);
    if (!a) {
      s.error("address", error);
      continue;
    }
    m.target = *a;
    if (m.name.empty()) m.name = m.address;
    milters.push_back(std::move(m));
  }
  if (milters.empty()) return nullptr;
  return std::make_shared<MilterFilter>(std::move(milters), config.maxMessageSize);
}

}  // namespace moat::filters::milter
