// tests/filters/milter/conversation_test.cc — one milter conversation (filters/milter/
// milter.h, converse) over a real loopback socket against a scripted peer that answers
// each packet Moat sends: the steps skipped and the replies not waited for as the peer's
// protocol flags say, the changes taken at end of message, and the broken peers that end
// in an error (negotiation asking for an action Moat does not offer, a malformed reply code,
// a packet over the bound, silence past command_timeout); a milter after others sent what
// they left, its changes counted in the header it was sent.
#include <catch2/catch.hpp>
#include <functional>
#include <string>
#include <vector>

#include "filters/milter/milter.h"
#include "filters/milter/protocol.h"
#include "mta/net/connection.h"
#include "mta/runtime/log.h"
#include "mta/runtime/uv.h"

using namespace moat;
using namespace moat::filters::milter;
using namespace std::string_literals;

namespace {

std::string optnegReply(uint32_t actions, uint32_t protocol) {
  std::string d;
  putU32(d, kVersion);
  putU32(d, actions);
  putU32(d, protocol);
  return encode(reply::kOptneg, d);
}

// A milter that answers each packet with what `script` returns for it ("" = nothing), and
// records the commands it got.
struct ScriptedMilter {
  mta::uv::Loop loop;
  std::unique_ptr<mta::net::Listener> listener;
  std::shared_ptr<mta::net::Connection> conn;
  Decoder decoder;
  std::vector<Packet> got;
  std::function<std::string(const Packet&)> script;
  std::string received;  // the gateway's Received value for the context, if any
  // What earlier milters left (applied to the context's message and envelope), if any.
  std::function<void(View&)> chained;

  explicit ScriptedMilter(std::function<std::string(const Packet&)> s) : script(std::move(s)) {
    mta::log::disable();
    std::string error;
    listener = mta::net::listen(
        loop.get(), "127.0.0.1", 0, false, nullptr,
        [this](std::shared_ptr<mta::net::Connection> c) {
          conn = c;
          c->setCallbacks({[this](std::string_view d) {
                             decoder.feed(d);
                             while (auto p = decoder.next()) {
                               got.push_back(*p);
                               std::string out = script(*p);
                               if (!out.empty()) conn->write(out);
                             }
                           },
                           [](const std::string&) {}, nullptr});
          c->startReading();
        },
        error);
    REQUIRE(listener);
  }

  Outcome run(MilterConfig m = {}) {
    m.name = "scripted";
    m.target.host = "127.0.0.1";
    m.target.port = listener->port();
    m.commandTimeout = std::chrono::milliseconds(2000);
    m.contentTimeout = std::chrono::milliseconds(2000);
    auto ctx = std::make_shared<filters::MessageContext>();
    ctx->clientIp = *mta::IpAddress::parse("192.0.2.7");
    ctx->helo = "client.test";
    ctx->mailFrom = "alice@sender.test";
    ctx->rcpts = {"bob@example.test", "carol@example.test"};
    ctx->queueId = "Q1";
    ctx->received = received;
    static const std::string message = "Subject: hello\r\nX-Old: one\r\n\r\nbody line\r\n";
    ctx->message = message;
    filters::Env env;
    env.loop = loop.get();
    env.hostname = "mx.moat.test";
    std::optional<Outcome> out;
    if (chained) {
      View view = viewOf(*ctx);
      chained(view);
      converse(m, ctx, std::move(view), env, 1 << 20, [&](Outcome o) { out = std::move(o); });
    } else {
      converse(m, ctx, env, 1 << 20, [&](Outcome o) { out = std::move(o); });
    }
    REQUIRE(loop.runUntil([&] { return out.has_value(); }, 5000));
    return *out;
  }

  // The whole filter (MilterFilter::run, as the pipeline runs it) on a context `setup` fills
  // in as Moat's own filters left it.
  filters::Result runFilter(const std::function<void(filters::MessageContext&)>& setup) {
    MilterConfig m;
    m.name = "scripted";
    m.target.host = "127.0.0.1";
    m.target.port = listener->port();
    m.commandTimeout = std::chrono::milliseconds(2000);
    m.contentTimeout = std::chrono::milliseconds(2000);
    auto ctx = std::make_shared<filters::MessageContext>();
    ctx->clientIp = *mta::IpAddress::parse("192.0.2.7");
    ctx->helo = "client.test";
    ctx->mailFrom = "alice@sender.test";
    ctx->rcpts = {"bob@example.test"};
    ctx->queueId = "Q1";
    ctx->received = received;
    setup(*ctx);
    filters::Env env;
    env.loop = loop.get();
    env.hostname = "mx.moat.test";
    MilterFilter filter({m}, 1 << 20);
    std::optional<filters::Result> out;
    filter.run(ctx, env, [&](filters::Result r) { out = std::move(r); });
    REQUIRE(loop.runUntil([&] { return out.has_value(); }, 5000));
    return *out;
  }

  std::string commands() const {
    std::string s;
    for (const auto& p : got) s += p.command;
    return s;
  }
};

}  // namespace

TEST_CASE("milter conversation: skipped steps and replies not waited for") {
  // The milter wants no HELO, no headers, no EOH and no body, and sends no reply before EOM.
  uint32_t flags = proto::kNoHelo | proto::kNoHeaders | proto::kNoEoh | proto::kNoBody | proto::kNrConnect |
                   proto::kNrMail | proto::kNrRcpt | proto::kNrData;
  ScriptedMilter peer([&](const Packet& p) -> std::string {
    if (p.command == cmd::kOptneg) return optnegReply(action::kAddHeaders | action::kChgHeaders, flags);
    if (p.command == cmd::kEom)
      return encode(reply::kAddHeader, "X-Scripted\0yes\0"s) + encode(reply::kChgHeader, "\0\0\0\1X-Old\0two\0"s) +
             encode(reply::kContinue, "");
    return "";
  });
  Outcome o = peer.run();
  CHECK(o.kind == Outcome::Kind::Continue);
  CHECK(o.error.empty());
  // OPTNEG, then macros + CONNECT, macros + MAIL, two RCPTs, DATA, macros + EOM (and QUIT).
  CHECK(peer.commands().rfind("ODCDMDRDRDTDE", 0) == 0);
  REQUIRE(o.headers.size() == 1);
  CHECK(o.headers[0].name == "X-Scripted");
  CHECK(o.headers[0].value == "yes");
  REQUIRE(o.edits.size() == 1);
  CHECK(o.edits[0].offset == 16);
  CHECK(o.edits[0].length == 12);
  CHECK(o.edits[0].replacement == "X-Old: two\r\n");
  // The MAIL macros and the envelope.
  bool sawMailMacros = false;
  for (const auto& p : peer.got)
    if (p.command == cmd::kMacro && p.data[0] == cmd::kMail)
      sawMailMacros = p.data == "Mi\0Q1\0{mail_addr}\0alice@sender.test\0"s;
  CHECK(sawMailMacros);
}

TEST_CASE("milter conversation: every step answered, headers and body sent") {
  ScriptedMilter peer([&](const Packet& p) -> std::string {
    if (p.command == cmd::kOptneg) return optnegReply(action::kChgBody, 0);
    if (p.command == cmd::kMacro) return "";
    if (p.command == cmd::kEom) return encode(reply::kReplBody, "new body\n") + encode(reply::kAccept, "");
    if (p.command == cmd::kRcpt) return encode(reply::kProgress, "") + encode(reply::kContinue, "");
    return encode(reply::kContinue, "");
  });
  Outcome o = peer.run();
  CHECK(o.kind == Outcome::Kind::Continue);
  // Three header fields: Moat's Authentication-Results, then the message's two.
  CHECK(peer.commands().rfind("ODCHDMDRDRDTLLLNBDE", 0) == 0);
  for (const auto& p : peer.got) {
    if (p.command == cmd::kHeader && p.data.rfind("X-Old", 0) == 0) CHECK(p.data == "X-Old\0one\0"s);
    if (p.command == cmd::kBody) CHECK(p.data == "body line\r\n");
  }
  REQUIRE(o.edits.size() == 1);
  CHECK(o.edits[0].replacement == "new body\r\n");
}

TEST_CASE("milter conversation: broken milters end in an error") {
  SECTION("asks for an action Moat does not offer") {
    ScriptedMilter peer([](const Packet& p) -> std::string {
      return p.command == cmd::kOptneg ? optnegReply(action::kSetSymList, 0) : "";
    });
    Outcome o = peer.run();
    CHECK(o.kind == Outcome::Kind::Error);
    CHECK(o.error.find("negotiation failed") != std::string::npos);
  }
  SECTION("a malformed reply code") {
    ScriptedMilter peer([](const Packet& p) -> std::string {
      if (p.command == cmd::kOptneg) return optnegReply(0, proto::kNoConnect | proto::kNoHelo);
      if (p.command == cmd::kMail) return encode(reply::kReplyCode, "250 all fine\0"s);
      return "";
    });
    Outcome o = peer.run();
    CHECK(o.kind == Outcome::Kind::Error);
    CHECK(o.error.find("malformed SMFIR_REPLYCODE") != std::string::npos);
  }
  SECTION("a reply code is taken") {
    ScriptedMilter peer([](const Packet& p) -> std::string {
      if (p.command == cmd::kOptneg) return optnegReply(0, proto::kNoConnect | proto::kNoHelo);
      if (p.command == cmd::kMail) return encode(reply::kReplyCode, "452 4.3.1 Busy now\0"s);
      return "";
    });
    Outcome o = peer.run();
    CHECK(o.kind == Outcome::Kind::TempFail);
    CHECK(o.code == 452);
    CHECK(o.enhanced == "4.3.1");
    CHECK(o.text == "Busy now");
  }
  SECTION("a packet over the bound") {
    ScriptedMilter peer([](const Packet& p) -> std::string {
      if (p.command == cmd::kOptneg) return "\x7f\0\0\0c"s;
      return "";
    });
    Outcome o = peer.run();
    CHECK(o.kind == Outcome::Kind::Error);
    CHECK(o.error.find("protocol error") != std::string::npos);
  }
  SECTION("silence past command_timeout") {
    ScriptedMilter peer(
        [](const Packet& p) -> std::string { return p.command == cmd::kOptneg ? optnegReply(0, 0) : ""; });
    MilterConfig m;
    Outcome o = peer.run(m);  // 2 s per reply
    CHECK(o.kind == Outcome::Kind::Error);
    CHECK(o.error == "timed out waiting for the reply to CONNECT");
  }
  SECTION("nothing listening") {
    ScriptedMilter peer([](const Packet&) { return std::string(); });
    peer.listener->close();
    peer.loop.runUntil([] { return false; }, 50);
    Outcome o = peer.run();
    CHECK(o.kind == Outcome::Kind::Error);
    CHECK(o.error.find("connect") != std::string::npos);
  }
}

TEST_CASE("milter conversation: envelope changes are taken at end of message") {
  using Kind = filters::EnvelopeChange::Kind;
  uint32_t all = action::kAddRcpt | action::kAddRcptPar | action::kDelRcpt | action::kChgFrom;
  SECTION("each change, in order") {
    ScriptedMilter peer([&](const Packet& p) -> std::string {
      if (p.command == cmd::kOptneg) return optnegReply(all, proto::kNoHelo);
      if (p.command == cmd::kMacro) return "";
      if (p.command == cmd::kEom)
        return encode(reply::kAddRcpt, "<dave@example.test>\0"s) +
               encode(reply::kAddRcptPar, "<erin@example.test>\0NOTIFY=NEVER\0"s) +
               encode(reply::kDelRcpt, "<bob@example.test>\0"s) + encode(reply::kChgFrom, "<bounces@sender.test>\0"s) +
               encode(reply::kContinue, "");
      return encode(reply::kContinue, "");
    });
    Outcome o = peer.run();
    CHECK(o.kind == Outcome::Kind::Continue);
    REQUIRE(o.envelope.size() == 4);
    CHECK(o.envelope[0].kind == Kind::AddRcpt);
    CHECK(o.envelope[0].address == "dave@example.test");
    CHECK(o.envelope[0].source == "scripted");
    CHECK(o.envelope[1].notify == "NEVER");
    CHECK(o.envelope[2].kind == Kind::DelRcpt);
    CHECK(o.envelope[3].kind == Kind::ChgFrom);
    CHECK(o.envelope[3].address == "bounces@sender.test");
  }
  SECTION("a change the milter did not negotiate is a protocol error") {
    ScriptedMilter peer([&](const Packet& p) -> std::string {
      if (p.command == cmd::kOptneg) return optnegReply(action::kAddRcpt, proto::kNoHelo);
      if (p.command == cmd::kMacro) return "";
      if (p.command == cmd::kEom) return encode(reply::kDelRcpt, "<bob@example.test>\0"s);
      return encode(reply::kContinue, "");
    });
    Outcome o = peer.run();
    CHECK(o.kind == Outcome::Kind::Error);
    CHECK(o.envelope.empty());
  }
  SECTION("a malformed address is a protocol error") {
    ScriptedMilter peer([&](const Packet& p) -> std::string {
      if (p.command == cmd::kOptneg) return optnegReply(all, proto::kNoHelo);
      if (p.command == cmd::kMacro) return "";
      if (p.command == cmd::kEom) return encode(reply::kAddRcpt, "<not an address>\0"s);
      return encode(reply::kContinue, "");
    });
    Outcome o = peer.run();
    CHECK(o.kind == Outcome::Kind::Error);
    CHECK(o.error.find("add_rcpt") != std::string::npos);
  }
}

TEST_CASE("milter conversation: Moat's Received is sent first and inserts land at their index") {
  ScriptedMilter peer([&](const Packet& p) -> std::string {
    if (p.command == cmd::kOptneg) return optnegReply(action::kAddHeaders | action::kChgHeaders, proto::kNoHelo);
    if (p.command == cmd::kMacro) return "";
    if (p.command == cmd::kEom)
      return encode(reply::kInsHeader, "\0\0\0\0X-Top\0zero\0"s) + encode(reply::kInsHeader, "\0\0\0\1X-One\0one\0"s) +
             encode(reply::kInsHeader, "\0\0\0\3X-Two\0two\0"s) + encode(reply::kInsHeader, "\0\0\0\x63X-End\0end\0"s) +
             encode(reply::kChgHeader, "\0\0\0\1Received\0forged\0"s) +
             encode(reply::kChgHeader, "\0\0\0\1Authentication-Results\0forged\0"s) + encode(reply::kContinue, "");
    return encode(reply::kContinue, "");
  });
  peer.received = "from client.test (unknown [192.0.2.7])\r\n\tby mx.moat.test (Moat) with ESMTP id Q1";
  Outcome o = peer.run();
  CHECK(o.kind == Outcome::Kind::Continue);
  std::vector<std::string> headers;
  for (const auto& p : peer.got)
    if (p.command == cmd::kHeader) headers.push_back(p.data);
  REQUIRE(headers.size() == 4);
  CHECK(headers[0] == "Received\0from client.test (unknown [192.0.2.7])\n\tby mx.moat.test (Moat) with ESMTP id Q1\0"s);
  CHECK(headers[1].rfind("Authentication-Results\0mx.moat.test;\n\tspf=none", 0) == 0);
  CHECK(headers[2] == "Subject\0hello\0"s);
  // Index 0: above the Received field, a prepended header; 1 (among Moat's own fields): a
  // prepended header just below them.
  REQUIRE(o.headers.size() == 2);
  CHECK(o.headers[0].name == "X-Top");
  CHECK(o.headers[0].aboveReceived);
  CHECK(o.headers[1].name == "X-One");
  CHECK_FALSE(o.headers[1].aboveReceived);
  // 3: below the message's first field; past the end: after the last. Moat's own fields are
  // not changed.
  REQUIRE(o.edits.size() == 2);
  CHECK(o.edits[0].offset == 16);  // "Subject: hello\r\n"
  CHECK(o.edits[0].replacement == "X-Two: two\r\n");
  CHECK(o.edits[1].offset == 28);  // after "X-Old: one\r\n"
  CHECK(o.edits[1].replacement == "X-End: end\r\n");
}

TEST_CASE("milter conversation: a chained milter is sent what the earlier ones left") {
  std::vector<std::string> sent;
  ScriptedMilter peer([&](const Packet& p) -> std::string {
    if (p.command == cmd::kOptneg)
      return optnegReply(action::kAddHeaders | action::kChgHeaders | action::kChgBody | action::kDelRcpt,
                         proto::kNoHelo);
    if (p.command == cmd::kMacro) return "";
    if (p.command == cmd::kEom)
      // Sent: X-Top (0), Received (1), Authentication-Results (2), X-Prev (3), Subject (4).
      return encode(reply::kInsHeader, "\0\0\0\3X-Ins\0before prev\0"s) +
             encode(reply::kInsHeader, "\0\0\0\4X-Ins2\0before subject\0"s) +
             encode(reply::kChgHeader, "\0\0\0\1X-Prev\0\0"s) + encode(reply::kChgHeader, "\0\0\0\1X-Top\0new\0"s) +
             encode(reply::kChgHeader, "\0\0\0\1Subject\0changed\0"s) +
             encode(reply::kDelRcpt, "<dave@example.test>\0"s) + encode(reply::kContinue, "");
    return encode(reply::kContinue, "");
  });
  peer.received = "from client.test\r\n\tby mx.moat.test (Moat) with ESMTP id Q1";
  static const std::string edited = "Subject: rewritten\r\n\r\nnew body\r\n";
  peer.chained = [&](View& v) {
    v.message = edited;
    v.headers = {{"X-Top", "top", true}, {"X-Prev", "added", false}};
    v.mailFrom = "bounces@sender.test";
    v.mailArgs = {"RET=HDRS"};
    v.rcpts.push_back("dave@example.test");
    v.rcptArgs.push_back({"NOTIFY=NEVER"});
  };
  Outcome o = peer.run();
  CHECK(o.kind == Outcome::Kind::Continue);
  std::vector<std::string> headers, envelope;
  std::string body;
  for (const auto& p : peer.got) {
    if (p.command == cmd::kHeader) headers.push_back(p.data.substr(0, p.data.find('\0')));
    if (p.command == cmd::kMail || p.command == cmd::kRcpt) envelope.push_back(p.data);
    if (p.command == cmd::kBody) body += p.data;
  }
  // The fields as delivered: above Moat's Received, Received, below it, the message's.
  CHECK(headers == std::vector<std::string>{"X-Top", "Received", "Authentication-Results", "X-Prev", "Subject"});
  CHECK(body == "new body\r\n");
  REQUIRE(envelope.size() == 4);
  CHECK(envelope[0] == "<bounces@sender.test>\0SIZE=32\0RET=HDRS\0"s);
  CHECK(envelope[3] == "<dave@example.test>\0NOTIFY=NEVER\0"s);
  // Index 3 is X-Prev (an earlier milter's field): X-Ins goes before it. Index 4 is the
  // message's Subject: an edit of the message it was sent. X-Prev deleted, X-Top changed in place.
  REQUIRE(o.headers.size() == 2);
  CHECK(o.headers[0].name == "X-Top");
  CHECK(o.headers[0].value == "new");
  CHECK(o.headers[0].aboveReceived);
  CHECK(o.headers[1].name == "X-Ins");
  CHECK_FALSE(o.headers[1].aboveReceived);
  REQUIRE(o.edits.size() == 2);
  CHECK(o.edits[0].offset == 0);
  CHECK(o.edits[0].length == 0);
  CHECK(o.edits[0].replacement == "X-Ins2: before subject\r\n");
  CHECK(o.edits[1].offset == 0);
  CHECK(o.edits[1].length == 20);  // "Subject: rewritten\r\n" of the message it was sent
  CHECK(o.edits[1].replacement == "Subject: changed\r\n");
  REQUIRE(o.envelope.size() == 1);
  CHECK(o.envelope[0].address == "dave@example.test");
}

TEST_CASE("milter chain view: envelope changes as the session applies them") {
  View v;
  v.mailFrom = "alice@sender.test";
  v.rcpts = {"bob@example.test"};
  using Kind = filters::EnvelopeChange::Kind;
  filters::EnvelopeChange add{Kind::AddRcpt, "dave@Example.TEST", "NEVER", "", "", "", {}, "a"};
  filters::EnvelopeChange again{Kind::AddRcpt, "dave@example.test", "", "", "", "", {}, "a"};
  filters::EnvelopeChange from{Kind::ChgFrom, "bounces@sender.test", "", "", "HDRS", "e1", {}, "a"};
  applyEnvelope(v, {add, again, from});
  CHECK(v.rcpts == std::vector<std::string>{"bob@example.test", "dave@Example.TEST"});
  REQUIRE(v.rcptArgs.size() == 2);
  CHECK(v.rcptArgs[1] == std::vector<std::string>{"NOTIFY=NEVER"});
  CHECK(v.mailFrom == "bounces@sender.test");
  CHECK(v.mailArgs == std::vector<std::string>{"RET=HDRS", "ENVID=e1"});
  filters::EnvelopeChange del{Kind::DelRcpt, "dave@example.test", "", "", "", "", {}, "b"};
  applyEnvelope(v, {del});
  CHECK(v.rcpts == std::vector<std::string>{"bob@example.test"});
  CHECK(v.rcptArgs.size() == 1);
}

TEST_CASE("milter filter: the first milter is sent Moat's own fields and edits, its changes compose with them") {
  ScriptedMilter peer([&](const Packet& p) -> std::string {
    if (p.command == cmd::kOptneg) return optnegReply(action::kAddHeaders | action::kChgHeaders, proto::kNoHelo);
    if (p.command == cmd::kMacro) return "";
    if (p.command == cmd::kEom)
      // Sent: Received (0), Authentication-Results (1), X-Moat-BATV (2), X-Spam-Status (3),
      // Subject (4), X-Old (5).
      return encode(reply::kInsHeader, "\0\0\0\4X-Before-Subject\0s\0"s) +
             encode(reply::kInsHeader, "\0\0\0\2X-Among-Moat\0m\0"s) +
             encode(reply::kChgHeader, "\0\0\0\1X-Old\0two\0"s) +
             encode(reply::kChgHeader, "\0\0\0\1X-Spam-Status\0No\0"s) + encode(reply::kContinue, "");
    return encode(reply::kContinue, "");
  });
  peer.received = "from client.test\r\n\tby mx.moat.test (Moat) with ESMTP id Q1";
  static const std::string message = "Subject: hello\r\nX-Old: one\r\n\r\nbody with part\r\n";
  filters::Result r = peer.runFilter([&](filters::MessageContext& c) {
    c.message = message;
    // Moat's filters: a Subject prefix and a stripped part (edits), a tag-mode field, the
    // checks' results; the session's field of an earlier stage.
    c.edits = {{9, 0, "[SPAM] ", "subject prefix"}, {40, 4, "removed", "stripped part"}};
    c.headers = {{"X-Spam-Status", "Yes, score=6.0"}};
    c.sessionHeaders = {{"X-Moat-BATV", "fail"}};
    c.authResults = {"spf=pass smtp.mailfrom=sender.test"};
  });
  CHECK(r.verdict == filters::Verdict::Continue);
  std::vector<std::string> headers;
  std::string body;
  for (const auto& p : peer.got) {
    if (p.command == cmd::kHeader) headers.push_back(p.data);
    if (p.command == cmd::kBody) body += p.data;
  }
  REQUIRE(headers.size() == 6);
  CHECK(headers[0].rfind("Received\0"s, 0) == 0);
  CHECK(headers[1] ==
        "Authentication-Results\0mx.moat.test;\n\tspf=pass smtp.mailfrom=sender.test;\n\tdkim=none (not checked);\n\t"
        "dmarc=none (not checked)\0"s);
  CHECK(headers[2] == "X-Moat-BATV\0fail\0"s);
  CHECK(headers[3] == "X-Spam-Status\0Yes, score=6.0\0"s);
  CHECK(headers[4] == "Subject\0[SPAM] hello\0"s);
  CHECK(headers[5] == "X-Old\0one\0"s);
  CHECK(body == "body with removed\r\n");
  // The whole set of edits, Moat's and the milter's composed, as edits of the message as
  // received: delivered, the milter's changes land where it meant them.
  CHECK(r.replacesEdits);
  CHECK(filters::editsValid(r.edits, message.size()));
  CHECK(filters::applyEdits(message, r.edits) ==
        "X-Before-Subject: s\r\nSubject: [SPAM] hello\r\nX-Old: two\r\n\r\nbody with removed\r\n");
  // Inserted among Moat's own fields: prepended just below them. Moat's own fields are not
  // the milter's to change (X-Spam-Status stays).
  REQUIRE(r.headers.size() == 1);
  CHECK(r.headers[0].name == "X-Among-Moat");
  CHECK_FALSE(r.headers[0].aboveReceived);
}

TEST_CASE("milter filter: without edits by Moat's filters the message is sent as received and no edits are returned") {
  ScriptedMilter peer([&](const Packet& p) -> std::string {
    if (p.command == cmd::kOptneg) return optnegReply(action::kAddHeaders, proto::kNoHelo);
    if (p.command == cmd::kMacro) return "";
    if (p.command == cmd::kEom) return encode(reply::kAddHeader, "X-Added\0yes\0"s) + encode(reply::kContinue, "");
    return encode(reply::kContinue, "");
  });
  static const std::string message = "Subject: hello\r\n\r\nbody\r\n";
  filters::Result r = peer.runFilter([&](filters::MessageContext& c) {
    c.message = message;
    c.headers = {{"X-Spam-Score", "1.0"}};
  });
  std::vector<std::string> names;
  for (const auto& p : peer.got)
    if (p.command == cmd::kHeader) names.push_back(p.data.substr(0, p.data.find('\0')));
  CHECK(names == std::vector<std::string>{"Authentication-Results", "X-Spam-Score", "Subject"});
  CHECK_FALSE(r.replacesEdits);
  CHECK(r.edits.empty());
  REQUIRE(r.headers.size() == 1);
  CHECK(r.headers[0].name == "X-Added");
}

TEST_CASE("milter chain view: a changed sender without RET or ENVID keeps the ones before") {
  filters::MessageContext ctx;
  ctx.mailFrom = "alice@sender.test";
  ctx.ret = "FULL";
  ctx.envid = "client-id";
  View v = viewOf(ctx);
  CHECK(v.mailArgs == std::vector<std::string>{"RET=FULL", "ENVID=client-id"});
  using Kind = filters::EnvelopeChange::Kind;
  filters::EnvelopeChange bare{Kind::ChgFrom, "bounces@sender.test", "", "", "", "", {}, "a"};
  applyEnvelope(v, {bare});
  CHECK(v.mailFrom == "bounces@sender.test");
  CHECK(v.mailArgs == std::vector<std::string>{"RET=FULL", "ENVID=client-id"});
  filters::EnvelopeChange ret{Kind::ChgFrom, "other@sender.test", "", "", "HDRS", "", {}, "b"};
  applyEnvelope(v, {ret, bare});
  CHECK(v.mailArgs == std::vector<std::string>{"RET=HDRS", "ENVID=client-id"});
}
