// mta/daemon/control.cc — see control.h.
#include "mta/daemon/control.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>

#include "mta/daemon/queue_manager.h"
#include "mta/daemon/queue_select.h"
#include "mta/daemon/tiny_json.h"
#include "mta/runtime/fd.h"
#include "mta/runtime/json.h"
#include "mta/runtime/log.h"
#include "mta/runtime/uv.h"

namespace moat::mta::daemon {
namespace {

constexpr size_t kMaxRequest = 4096;
// A `list` answer goes out in slices of about this much, each made once the one before has
// gone into the socket: a slice is well under a millisecond of the loop's time, and a
// reader slower than the daemon holds back no more than one slice in the daemon's memory.
constexpr size_t kSliceBytes = 64 * 1024;
// Messages looked at per slice at most, however few of them the area asked for matches.
constexpr size_t kSliceVisits = 2048;
// A bulk action: at most this many messages' actions under way at once (each a move, a
// removal or a DSN on the thread pool), and at most this many started per turn of the loop.
constexpr size_t kBulkWindow = 64;
constexpr size_t kBulkPerTurn = 512;
// `message ID`: the message goes out in slices of this much, each copied on the thread pool
// (where a mapped file's pages are read from disk) once the socket has taken the one before,
// so a 35 MB message is never one string in the daemon, and a reader that stops reading
// holds one slice here, not the message.
constexpr size_t kMessageSliceBytes = 256 * 1024;
// A connection that sends no whole request line within this long after its connect (the CLI
// sends its line at once), or whose reader takes nothing of an answer for this long, is
// closed (a `control_timeout` line), so a stuck reader never holds its answer's slice, a
// mapped message (the disk space of one deleted meanwhile) or a connection for good. The
// reader's limit is long because a person may be reading a large message in a pager
// (`show --message | less`), which reads only as far as the screen shows. The daemon's own
// work between slices (a bulk action, a summary, a copy on the pool) is not timed.
constexpr uint64_t kRequestTimeoutMs = 10'000;
constexpr uint64_t kWriteStallMs = 600'000;

// Splits "first rest" at the first space.
std::pair<std::string, std::string> firstWord(const std::string& s) {
  auto sp = s.find(' ');
  if (sp == std::string::npos) return {s, ""};
  return {s.substr(0, sp), s.substr(sp + 1)};
}

// Takes the flag token `name=1` out of `tokens`; true when it was there.
bool takeFlag(std::string& tokens, const std::string& name) {
  std::string out;
  bool found = false;
  size_t i = 0;
  while (i <= tokens.size()) {
    size_t end = tokens.find(' ', i);
    if (end == std::string::npos) end = tokens.size();
    std::string tok = tokens.substr(i, end - i);
    i = end + 1;
    if (tok == name + "=1") {
      found = true;
    } else if (!tok.empty()) {
      if (!out.empty()) out.push_back(' ');
      out += tok;
    }
  }
  tokens = std::move(out);
  return found;
}

}  // namespace

struct ControlServer::Impl {
  // `bulk ACTION SELECTORS`: the selection, a slice per turn, then the action on each message
  // through the single-message call (the same checks, answers and log lines), kBulkWindow at
  // a time; one answer at the end.
  struct Bulk {
    QueueManager::SelectCursor cursor;
    bool dryRun = false;
    std::vector<std::string> ids;
    size_t next = 0;
    size_t inFlight = 0;
    bool pumping = false;
    mta::JsonArray acted;
    size_t actedCount = 0;
    mta::JsonArray failed;
    uint64_t bounced = 0;
  };
  // `message ID [headers=1]`: the message read (QueueManager::readMessage), then written a
  // slice at a time. Only the Client owns it: pool work holds a weak_ptr, so a client gone
  // meanwhile (its reader vanished, the server stopped) is seen, and no callback touches it.
  struct MessageStream {
    std::shared_ptr<const QueueManager::MessageCopy> copy;
    uint64_t sent = 0;  // bytes of copy->length handed to the socket
  };
  struct Client {
    Impl* owner = nullptr;
    uv::Handle<uv_pipe_t> pipe;
    std::string in;
    bool answered = false;
    std::unique_ptr<QueueManager::ListCursor> listing;  // a `list` being written
    std::unique_ptr<uv::Timer> resume;                  // the next slice after one that had nothing to write
    std::shared_ptr<Bulk> bulk;                         // a bulk action under way
    std::unique_ptr<QueueManager::SelectCursor> summaryCursor;  // a summary being counted
    QueueSummary summary;
    std::shared_ptr<MessageStream> message;  // a `message` being read or written
    std::unique_ptr<uv::Timer> stall;        // kRequestTimeoutMs, then kWriteStallMs per write
    std::string verb;                        // the request's, for the log
    // Dies with the Client: a write cancelled by its close sees that it is gone, even when a
    // new Client has been made at the same address meanwhile.
    std::shared_ptr<bool> token = std::make_shared<bool>(true);
  };

  uv_loop_t* loop;
  QueueManager& qm;
  uv::Handle<uv_pipe_t> server;
  std::string path;
  std::map<Client*, std::unique_ptr<Client>> clients;
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);

  Impl(uv_loop_t* l, QueueManager& q) : loop(l), qm(q) {}

  static uv_stream_t* stream(Client* c) { return reinterpret_cast<uv_stream_t*>(c->pipe.get()); }

  // One answer per connection, then the connection closes. The close waits for the write's
  // callback: closing at once cancels whatever the socket buffer has not taken yet, and a
  // `list` of a long queue (hundreds of KB) reached the CLI cut short.
  struct WriteReq {
    uv_write_t req{};
    std::string data;
    Impl* owner = nullptr;
    Client* client = nullptr;
    std::weak_ptr<bool> clientToken;
    bool last = true;  // the answer's end: the connection closes once it is written
    std::shared_ptr<bool> alive;
  };

  // Closes `c` when `ms` pass before stopStall(): it waited for `what` (`request`, `reader`).
  void armStall(Client* c, uint64_t ms, const char* what) {
    if (!c->stall) c->stall = std::make_unique<uv::Timer>(loop);
    c->stall->start(ms, [this, c, ms, what] {
      log::warn("control_timeout").add("waiting_for", what).add("verb", c->verb).add("after_ms", ms);
      clients.erase(c);  // closes the socket; a write under way is cancelled (WriteReq)
    });
  }
  static void stopStall(Client* c) {
    if (c->stall) c->stall->stop();
  }

  // The whole answer at once (every verb but `list`). By value, moved along, never copied.
  void answer(Client* c, std::string json) {
    if (c->answered) return;
    c->answered = true;
    uv_read_stop(stream(c));
    json.push_back('\n');
    send(c, std::move(json), true);
  }

  void send(Client* c, std::string data, bool last) {
    auto w = std::make_unique<WriteReq>();
    w->data = std::move(data);
    w->req.data = w.get();
    w->owner = this;
    w->client = c;
    w->clientToken = c->token;
    w->last = last;
    w->alive = alive;
    uv_buf_t buf = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
    int rc = uv_write(&w->req, stream(c), &buf, 1, [](uv_write_t* req, int status) {
      std::unique_ptr<WriteReq> done(static_cast<WriteReq*>(req->data));
      if (!*done->alive || done->clientToken.expired()) return;  // closed already: by stop(), a timeout
      if (done->last || status < 0) return void(done->owner->clients.erase(done->client));
      stopStall(done->client);
      done->owner->nextSlice(done->client);
    });
    if (rc == 0) {
      w.release();  // libuv owns it until the write callback
      armStall(c, kWriteStallMs, "reader");
    } else {
      clients.erase(c);
    }
  }

  // `list`: its answer a slice at a time (QueueManager::listSlice), the next made when the
  // socket has taken the last, so the loop serves everything else in between.
  // `list [AREA] [SELECTORS]`: a first word without '=' is the area, as it has always been.
  void startList(Client* c, const std::string& arg) {
    if (c->answered) return;
    auto [area, tokens] = firstWord(arg);
    if (area.find('=') != std::string::npos) {
      tokens = arg;
      area.clear();
    }
    QueueSelector sel;
    std::string error;
    if (!QueueSelector::decode(tokens, sel, error))
      return answer(c, JsonObject().add("ok", false).add("error", error).str());
    if (!area.empty()) sel.area = area;
    c->answered = true;
    uv_read_stop(stream(c));
    c->listing = std::make_unique<QueueManager::ListCursor>();
    c->listing->select = sel;
    nextSlice(c);
  }

  // The next slice in a later turn of the loop. Not a 0 ms timer: libuv before 1.45 runs a
  // timer restarted from its own callback again in the same pass when it is due at once, so
  // a chain of them walked a 20,000-message queue in one turn (20-30 ms with no greeting
  // sent). 1 ms is due only once the loop has looked at its sockets again.
  void later(Client* c, std::function<void()> fn) {
    if (!c->resume) c->resume = std::make_unique<uv::Timer>(loop);
    c->resume->start(1, std::move(fn));
  }

  // `summary [SELECTORS]`: every area unless one is given.
  void startSummary(Client* c, const std::string& arg) {
    QueueSelector sel;
    std::string error;
    if (!QueueSelector::decode(arg, sel, error))
      return answer(c, JsonObject().add("ok", false).add("error", error).str());
    if (sel.area.empty()) sel.area = "all";
    c->summaryCursor = std::make_unique<QueueManager::SelectCursor>();
    c->summaryCursor->select = sel;
    nextSummary(c);
  }

  void nextSummary(Client* c) {
    qm.summarySlice(*c->summaryCursor, c->summary, kSliceVisits);
    if (c->summaryCursor->done) return answer(c, c->summary.json());
    later(c, [this, c] { nextSummary(c); });
  }

  // `bulk ACTION [dry_run=1] [all_messages=1] SELECTORS`.
  void startBulk(Client* c, const std::string& arg) {
    auto [action, tokens] = firstWord(arg);
    auto refuse = [&](const std::string& error) { answer(c, JsonObject().add("ok", false).add("error", error).str()); };
    if (action != "hold" && action != "release" && action != "delete" && action != "bounce" && action != "flush")
      return refuse("bulk: unknown action: " + action);
    auto b = std::make_shared<Bulk>();
    b->dryRun = takeFlag(tokens, "dry_run");
    bool everything = takeFlag(tokens, "all_messages");
    std::string error;
    if (!QueueSelector::decode(tokens, b->cursor.select, error)) return refuse(error);
    // No "delete everything" by a slip: a selector, or all_messages said outright.
    if (!b->cursor.select.narrows() && !everything)
      return refuse("bulk " + action + " without a selector acts on every message: give all_messages=1 to mean it");
    b->cursor.action = action;
    c->bulk = b;
    nextSelection(c);
  }

  void nextSelection(Client* c) {
    auto& b = *c->bulk;
    qm.selectSlice(b.cursor, b.ids, kSliceVisits);
    if (!b.cursor.done) return later(c, [this, c] { nextSelection(c); });
    if (b.dryRun) {
      for (const auto& id : b.ids) b.acted.add(id);
      return finishBulk(c);
    }
    pumpBulk(c);
  }

  void pumpBulk(Client* c) {
    auto bp = c->bulk;
    if (!bp) return;  // finished meanwhile
    auto& b = *bp;
    if (b.pumping) return;
    b.pumping = true;
    size_t started = 0;
    const std::string& action = b.cursor.action;
    while (b.next < b.ids.size() && b.inFlight < kBulkWindow && started < kBulkPerTurn) {
      std::string id = b.ids[b.next++];
      ++started;
      if (action == "flush") {
        int r = qm.flushOne(id);
        if (r > 0) {
          b.acted.add(id);
          ++b.actedCount;
        } else {
          b.failed.addRaw(
              JsonObject()
                  .add("id", id)
                  .add("error", r < 0 ? "no such message: " + id : "message is busy: a delivery or a move is under way")
                  .str());
        }
        continue;
      }
      ++b.inFlight;
      auto stillAlive = alive;
      auto done = [this, c, bp, id, stillAlive](std::string reply) {
        if (!*stillAlive) return;
        auto parsed = json::parse(reply);
        bool ok = parsed && parsed->get("ok") && parsed->get("ok")->boolean;
        if (ok) {
          bp->acted.add(id);
          ++bp->actedCount;
          if (auto* n = parsed->get("bounced")) bp->bounced += static_cast<uint64_t>(n->number);
        } else {
          std::string error = parsed && parsed->get("error") ? parsed->get("error")->str : reply;
          bp->failed.addRaw(JsonObject().add("id", id).add("error", error).str());
        }
        --bp->inFlight;
        if (!clients.count(c) || c->bulk != bp) return;
        if (!bp->pumping) pumpBulk(c);
      };
      if (action == "hold")
        qm.hold(id, done);
      else if (action == "release")
        qm.release(id, done);
      else if (action == "delete")
        qm.remove(id, done);
      else
        qm.bounce(id, done);
    }
    b.pumping = false;
    if (b.next < b.ids.size()) {
      // The window is full (a callback goes on) or this turn's share is used up (the next turn does).
      if (b.inFlight < kBulkWindow) later(c, [this, c] { pumpBulk(c); });
      return;
    }
    if (b.inFlight == 0) finishBulk(c);
  }

  void finishBulk(Client* c) {
    auto b = std::move(c->bulk);
    JsonObject o;
    o.add("ok", true)
        .add("action", b->cursor.action)
        .add("dry_run", b->dryRun)
        .add("matched", static_cast<uint64_t>(b->ids.size()))
        .add("acted", static_cast<uint64_t>(b->actedCount))
        .addRaw("ids", b->acted.str())
        .addRaw("failed", b->failed.str());
    if (b->cursor.action == "bounce") o.add("bounced", b->bounced);
    answer(c, o.str());
  }

  // `message ID [headers=1]`: one JSON line ({"ok":true,"id","area","size"}: size is how
  // many bytes follow), then the message's bytes, then the connection closes; or the usual
  // {"ok":false,"error"} line alone.
  void startMessage(Client* c, const std::string& arg) {
    std::string tokens = arg;
    bool headersOnly = takeFlag(tokens, "headers");
    auto [id, rest] = firstWord(tokens);
    if (id.empty() || !rest.empty())
      return answer(c, JsonObject().add("ok", false).add("error", "message needs one queue id").str());
    c->message = std::make_shared<MessageStream>();
    std::weak_ptr<MessageStream> ws = c->message;
    auto stillAlive = alive;
    qm.readMessage(
        id, headersOnly,
        [this, c, ws, id, stillAlive](std::string error, std::shared_ptr<const QueueManager::MessageCopy> copy) {
          if (!*stillAlive || ws.expired()) return;
          if (!copy) {
            c->message.reset();
            return answer(c, JsonObject().add("ok", false).add("error", error).str());
          }
          c->answered = true;
          c->message->copy = copy;
          std::string head =
              JsonObject().add("ok", true).add("id", id).add("area", copy->area).add("size", copy->length).str();
          send(c, head + "\n", copy->length == 0);
        });
  }

  // The next slice of a message, copied off the loop, written when the copy is made.
  void nextMessageSlice(Client* c) {
    auto& m = *c->message;
    uint64_t from = m.sent;
    size_t n = static_cast<size_t>(std::min<uint64_t>(kMessageSliceBytes, m.copy->length - from));
    auto piece = std::make_shared<std::string>();
    std::weak_ptr<MessageStream> ws = c->message;
    auto stillAlive = alive;
    uv::queueWork(
        loop,
        [copy = m.copy, from, n, piece] {
          // Bytes [from, from + n) of the gateway's header lines followed by the stored message.
          const std::string& prefix = copy->prefix;
          std::string_view body = copy->body->bytes();
          piece->reserve(n);
          if (from < prefix.size()) piece->append(prefix, static_cast<size_t>(from), n);
          size_t inBody = from > prefix.size() ? static_cast<size_t>(from - prefix.size()) : 0;
          piece->append(body.substr(inBody, n - piece->size()));
        },
        [this, c, ws, stillAlive, piece, n] {
          if (!*stillAlive) return;
          auto s = ws.lock();
          if (!s) return;  // the client went meanwhile
          s->sent += n;
          send(c, std::move(*piece), s->sent >= s->copy->length);
        });
  }

  void nextSlice(Client* c) {
    if (c->message) return nextMessageSlice(c);
    std::string out;
    qm.listSlice(*c->listing, out, kSliceBytes, kSliceVisits);
    if (c->listing->done) {
      out.push_back('\n');
      return send(c, std::move(out), true);
    }
    if (!out.empty()) return send(c, std::move(out), false);
    // Every message looked at was of another area or not selected: nothing to write, so no
    // write callback to go on from. A later turn of the loop goes on instead.
    later(c, [this, c] { nextSlice(c); });
  }

  void handle(Client* c, const std::string& line) {
    std::string verb = line, arg;
    auto sp = line.find(' ');
    if (sp != std::string::npos) {
      verb = line.substr(0, sp);
      arg = line.substr(sp + 1);
    }
    auto stillAlive = alive;
    auto reply = [this, c, stillAlive](std::string json) {
      if (!*stillAlive || !clients.count(c)) return;
      answer(c, std::move(json));
    };
    auto needId = [&]() {
      if (!arg.empty()) return true;
      reply(JsonObject().add("ok", false).add("error", verb + " needs a queue id").str());
      return false;
    };
    log::info("control").add("verb", verb).add("arg", arg);
    if (verb == "message") {  // `show ID --message`: an answer that streams
      if (needId()) startMessage(c, arg);
      return;
    }
    if (verb == "list")
      startList(c, arg);
    else if (verb == "summary")
      startSummary(c, arg);
    else if (verb == "bulk")
      startBulk(c, arg);
    else if (verb == "show") { if (needId()) reply(qm.show(arg)); }
    else if (verb == "flush") reply(qm.flush(arg));
    else if (verb == "hold") { if (needId()) qm.hold(arg, reply); }
    else if (verb == "release") { if (needId()) qm.release(arg, reply); }
    else if (verb == "delete") { if (needId()) qm.remove(arg, reply); }
    else if (verb == "bounce") { if (needId()) qm.bounce(arg, reply); }
    else reply(JsonObject().add("ok", false).add("error", "unknown request: " + verb).str());
  }

  void onRead(Client* c, ssize_t n, const uv_buf_t* buf) {
    if (n < 0) {
      clients.erase(c);
      return;
    }
    c->in.append(buf->base, static_cast<size_t>(n));
    auto nl = c->in.find('\n');
    if (nl == std::string::npos) {
      if (c->in.size() > kMaxRequest) answer(c, JsonObject().add("ok", false).add("error", "request too long").str());
      return;
    }
    std::string line = c->in.substr(0, nl);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    uv_read_stop(stream(c));
    stopStall(c);
    c->verb = firstWord(line).first;
    handle(c, line);
  }

  void onConnection() {
    auto c = std::make_unique<Client>();
    c->owner = this;
    uv_pipe_init(loop, c->pipe.get(), 0);
    c->pipe.markInitialized();
    if (uv_accept(reinterpret_cast<uv_stream_t*>(server.get()), stream(c.get())) != 0) return;
    Client* raw = c.get();
    raw->pipe.get()->data = raw;  // cleared by uv::Handle when the client goes away
    clients[raw] = std::move(c);
    armStall(raw, kRequestTimeoutMs, "request");
    uv_read_start(
        stream(raw),
        [](uv_handle_t*, size_t, uv_buf_t* b) {
          static thread_local char buf[4096];
          *b = uv_buf_init(buf, sizeof buf);
        },
        [](uv_stream_t* s, ssize_t n, const uv_buf_t* b) {
          if (auto* c = static_cast<Client*>(s->data)) c->owner->onRead(c, n, b);
        });
  }
};

ControlServer::ControlServer(uv_loop_t* loop, QueueManager& qm) : impl_(std::make_unique<Impl>(loop, qm)) {}
ControlServer::~ControlServer() { stop(); }

bool ControlServer::start(const std::string& path, std::string& error) {
  impl_->path = path;
  ::unlink(path.c_str());  // a stale socket from an earlier run
  uv_pipe_init(impl_->loop, impl_->server.get(), 0);
  impl_->server.markInitialized();
  impl_->server.get()->data = impl_.get();
  int rc = uv_pipe_bind(impl_->server.get(), path.c_str());
  if (rc == 0) {
    ::chmod(path.c_str(), 0660);
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(impl_->server.get()), 16, [](uv_stream_t* s, int status) {
      if (status == 0 && s->data) static_cast<Impl*>(s->data)->onConnection();
    });
  }
  if (rc != 0) {
    error = "control socket " + path + ": " + uv_strerror(rc);
    return false;
  }
  return true;
}

void ControlServer::stop() {
  if (!impl_ || impl_->path.empty()) return;
  *impl_->alive = false;
  impl_->server.close();
  impl_->clients.clear();
  ::unlink(impl_->path.c_str());
  impl_->path.clear();
}

namespace {

// A connected control socket with the request sent, or none held, with `error`.
UniqueFd sendRequest(const std::string& path, const std::string& request, std::string& error, int timeoutSeconds) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    error = std::strerror(errno);
    return fd;
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    error = "socket path too long: " + path;
    return UniqueFd();
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    error = "cannot reach the daemon at " + path + ": " + std::strerror(errno) + " (is `moat serve` running?)";
    return UniqueFd();
  }
  timeval tv{timeoutSeconds, 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string req = request + "\n";
  if (::write(fd.get(), req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    error = std::strerror(errno);
    return UniqueFd();
  }
  return fd;
}

}  // namespace

bool controlRequest(const std::string& path, const std::string& request, std::string& reply, std::string& error,
                    int timeoutSeconds) {
  UniqueFd fd = sendRequest(path, request, error, timeoutSeconds);
  if (!fd.valid()) return false;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd.get(), buf, sizeof buf)) > 0) reply.append(buf, static_cast<size_t>(n));
  fd.reset();
  while (!reply.empty() && (reply.back() == '\n' || reply.back() == '\r')) reply.pop_back();
  if (reply.empty()) {
    error = "no answer from the daemon";
    return false;
  }
  return true;
}

bool controlStream(const std::string& path, const std::string& request, std::string& head,
                   const std::function<bool(std::string_view)>& sink, std::string& error, int timeoutSeconds) {
  UniqueFd fd = sendRequest(path, request, error, timeoutSeconds);
  if (!fd.valid()) return false;
  char buf[65536];
  ssize_t n = 0;
  bool haveHead = false;
  bool ok = true;
  while (ok && (n = ::read(fd.get(), buf, sizeof buf)) > 0) {
    std::string_view got(buf, static_cast<size_t>(n));
    if (!haveHead) {
      auto nl = got.find('\n');
      head.append(got.substr(0, nl));
      if (nl == std::string_view::npos) {
        if (head.size() > kMaxRequest) break;  // no head line: not an answer to this request
        continue;
      }
      haveHead = true;
      got.remove_prefix(nl + 1);
    }
    if (!got.empty()) ok = sink(got);
  }
  int readErr = n < 0 ? errno : 0;
  fd.reset();
  if (!haveHead && n == 0 && !head.empty() && head.size() <= kMaxRequest) haveHead = true;  // a last line without LF
  if (!haveHead) {
    error = head.empty() ? "no answer from the daemon" : "a malformed answer from the daemon";
    return false;
  }
  if (ok && readErr != 0) {
    error = readErr == EAGAIN || readErr == EWOULDBLOCK ? "the daemon stopped answering"
                                                        : std::string("reading the answer: ") + std::strerror(readErr);
    return false;
  }
  return true;
}

}  // namespace moat::mta::daemon
