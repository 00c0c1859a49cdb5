// Tests for mta/client: the SMTP client against a scripted Python SMTP server on loopback
// (tests/client/smtp_server.py, byte-exact bodies, STARTTLS) and Postfix's smtp-sink.
#include "mta/client/smtp_client.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "filters/mime/downgrade.h"
#include "filters/mime/mime.h"
#include "mta/runtime/uv.h"
#include "tests/support/temp_file.h"
#include "tests/support/test_cert.h"

using namespace moat::mta;
using client::Reply;
using client::SmtpClient;
using client::TlsMode;
using client::Transaction;
using client::TransactionResult;

namespace {

using moat::test::readFile;

std::string makeTempDir() {
  std::string t = (std::filesystem::temp_directory_path() / "moat-smtp-XXXXXX").string();
  REQUIRE(mkdtemp(t.data()));
  return t;
}

// Runs a child process until destroyed (SIGTERM by PID, then reaped).
class Child {
 public:
  explicit Child(std::vector<std::string> argv) {
    pid_ = fork();
    if (pid_ == 0) {
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execvp(args[0], args.data());
      _exit(127);
    }
  }
  ~Child() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

 private:
  pid_t pid_ = -1;
};

// The scripted server; `extraJson` holds more members of its config object.
class ScriptedServer {
 public:
  explicit ScriptedServer(const std::string& extraJson = "") : dir_(makeTempDir()) {
    std::string cfg = "{\"out\": \"" + dir_ + "\"" + (extraJson.empty() ? "" : ", " + extraJson) + "}";
    child_ = std::make_unique<Child>(
        std::vector<std::string>{"python3", MOAT_SOURCE_DIR "/tests/client/smtp_server.py", cfg});
    for (int i = 0; i < 500 && !std::filesystem::exists(dir_ + "/port"); ++i) usleep(10000);
    port_ = static_cast<uint16_t>(std::stoi("0" + readFile(dir_ + "/port")));
  }
  ~ScriptedServer() {
    child_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  uint16_t port() const { return port_; }
  std::string file(const std::string& name) const { return readFile(dir_ + "/" + name); }
  std::string commands() const { return file("commands.log"); }

 private:
  std::string dir_;
  std::unique_ptr<Child> child_;
  uint16_t port_ = 0;
};

struct Connected {
  std::shared_ptr<SmtpClient> client;
  std::string error;
  Reply reply;
};

client::Options plainOptions() {
  client::Options o;
  o.heloName = "moat.test";
  o.tls = TlsMode::None;
  o.connectTimeoutMs = 2000;
  o.greetingTimeoutMs = o.commandTimeoutMs = o.dataBlockTimeoutMs = o.dataDoneTimeoutMs = 5000;
  return o;
}

// `start(callback)` begins a connect; what it gives once the loop has run it.
template <typename Start>
Connected awaitConnected(uv::Loop& loop, Start start) {
  Connected c;
  bool done = false;
  start([&](std::shared_ptr<SmtpClient> cl, const std::string& e, const Reply& r) {
    c.client = std::move(cl);
    c.error = e;
    c.reply = r;
    done = true;
  });
  REQUIRE(loop.runUntil([&] { return done; }, 15000));
  return c;
}

Connected connectTo(uv::Loop& loop, uint16_t port, client::Options opts) {
  return awaitConnected(loop, [&](SmtpClient::ConnectDone cb) {
    SmtpClient::connect(loop.get(), *IpAddress::parse("127.0.0.1"), port, std::move(opts), std::move(cb));
  });
}

TransactionResult sendTx(uv::Loop& loop, SmtpClient& cl, Transaction t) {
  TransactionResult res;
  bool done = false;
  cl.send(std::move(t), [&](TransactionResult r) {
    res = std::move(r);
    done = true;
  });
  REQUIRE(loop.runUntil([&] { return done; }, 30000));
  return res;
}

Transaction simpleTx(std::vector<std::string> rcpts, std::string_view body = "Subject: t\r\n\r\nhi\r\n") {
  Transaction t;
  t.mailFrom = "sender@example.org";
  t.rcpts = std::move(rcpts);
  t.body = body;
  return t;
}

}  // namespace

TEST_CASE("client: lines longer than 998 octets are broken with CRLF SPACE (RFC 5321 4.5.3.1.6)") {
  ScriptedServer server("\"pipelining\": true");
  uv::Loop loop;
  auto c = connectTo(loop, server.port(), plainOptions());
  REQUIRE(c.client);
  // What the next hop stores: each wire line at most 998 octets, a stuffed dot counted.
  auto folded = [](const std::string& body) {
    std::string out;
    for (size_t i = 0; i < body.size();) {
      size_t e = body.find("\r\n", i);
      std::string line = body.substr(i, e - i);
      size_t first = line.starts_with('.') ? 997 : 998;
      out += line.substr(0, first);
      for (size_t k = first; k < line.size(); k += 997) out += "\r\n " + line.substr(k, 997);
      out += "\r\n";
      i = e + 2;
    }
    return out;
  };
  auto line = [](char c, size_t n) { return std::string(n, c) + "\r\n"; };
  std::string body = "Subject: long lines\r\n\r\n" + line('a', 998) + line('b', 999) + line('c', 2500) + "." +
                     line('d', 999) + line('e', 10);
  // ...and one that crosses the 64 KiB pieces the body is written in.
  while (body.size() < 65536 - 300) body += line('f', 70);
  body += line('g', 3000) + line('h', 5);
  auto r = sendTx(loop, *c.client, simpleTx({"a@example.test"}, body));
  INFO(r.error);
  REQUIRE(r.data.code == 250);
  std::string got = server.file("msg1.eml");
  REQUIRE(got == folded(body));
  REQUIRE(got != body);
  for (size_t i = 0; i < got.size();) {
    size_t e = got.find("\r\n", i);
    REQUIRE(e - i <= 998);
    i = e + 2;
  }
}

TEST_CASE("client: bodies arrive byte-exact, dot-stuffed, over one reused connection") {
  ScriptedServer server("\"pipelining\": true");
  REQUIRE(server.port() != 0);
  uv::Loop loop;
  auto c = connectTo(loop, server.port(), plainOptions());
  REQUIRE(c.client);
  REQUIRE(c.reply.code == 220);
  REQUIRE(c.client->peerName() == "test.example");
  REQUIRE(c.client->supports("PIPELINING"));
  REQUIRE(c.client->extensionParam("SIZE") == "104857600");

  std::string body1 = ".leading dot\r\n..two dots\r\nmid.dot\r\n.\r\n\r\n.\r\nlast line without CRLF";
  auto t = simpleTx({"a@example.test"}, body1);
  t.prefix = "Received: by moat\r\n";
  t.size = 123;
  t.eightBit = true;
  auto r1 = sendTx(loop, *c.client, std::move(t));
  REQUIRE(r1.error.empty());
  REQUIRE(r1.mail.code == 250);
  REQUIRE(r1.data.code == 250);
  REQUIRE(r1.data.text.rfind("250 2.0.0 Ok: queued", 0) == 0);
  REQUIRE(server.file("msg1.eml") == "Received: by moat\r\n" + body1 + "\r\n");
  REQUIRE(c.client->usable());

  std::string body2 = "Subject: second\r\n\r\n.\r\n..\r\nend\r\n";
  auto r2 = sendTx(loop, *c.client, simpleTx({"b@example.test"}, body2));
  REQUIRE(r2.data.code == 250);
  REQUIRE(server.file("msg2.eml") == body2);
  // Same connection id for both messages, no RSET needed between complete transactions.
  REQUIRE(server.file("msg1.env").substr(0, 2) == "1\n");
  REQUIRE(server.file("msg2.env").substr(0, 2) == "1\n");
  REQUIRE(server.commands().find("RSET") == std::string::npos);
  REQUIRE(server.commands().find("MAIL FROM:<sender@example.org> SIZE=123 BODY=8BITMIME") != std::string::npos);
  c.client->quit();
  REQUIRE(loop.runUntil([&] { return server.commands().find("QUIT") != std::string::npos; }, 5000));
  REQUIRE_FALSE(c.client->usable());
}

TEST_CASE("client: quit(done) runs once the QUIT is answered, or when it times out") {
  uv::Loop loop;
  {
    ScriptedServer server;
    auto c = connectTo(loop, server.port(), plainOptions());
    REQUIRE(c.client);
    int first = 0, second = 0, closed = 0;
    c.client->quit([&] { ++first; });
    c.client->quit([&] { ++second; });  // while quitting: runs along with the first
    REQUIRE(loop.runUntil([&] { return first + second == 2; }, 5000));
    REQUIRE(server.commands().find("QUIT") != std::string::npos);
    REQUIRE_FALSE(c.client->usable());
    c.client->quit([&] { ++closed; });  // nothing left to close: at once
    REQUIRE(closed == 1);
    REQUIRE(first == 1);
    REQUIRE(second == 1);
  }
  {
    ScriptedServer server("\"quit_silent\": true");
    auto o = plainOptions();
    o.commandTimeoutMs = 300;
    auto c = connectTo(loop, server.port(), o);
    REQUIRE(c.client);
    std::weak_ptr<SmtpClient> weak = c.client;
    bool done = false;
    c.client->quit([&] { done = true; });
    c.client.reset();  // the client keeps itself alive until the QUIT ends
    REQUIRE_FALSE(weak.expired());
    REQUIRE(loop.runUntil([&] { return done; }, 5000));
    REQUIRE(server.commands().find("QUIT") != std::string::npos);
    REQUIRE(loop.runUntil([&] { return weak.expired(); }, 1000));
  }
}

TEST_CASE("client: a large body streams intact and bare line ends become CRLF") {
  ScriptedServer server("\"pipelining\": true");
  uv::Loop loop;
  auto c = connectTo(loop, server.port(), plainOptions());
  REQUIRE(c.client);
  auto big = std::make_shared<std::string>();
  for (int i = 0; big->size() < 6 * 1024 * 1024; ++i) big->append(i % 7 == 0 ? ".dotted line " : "line ").append(std::to_string(i) + "\r\n");
  auto t = simpleTx({"a@example.test"}, *big);
  t.keepAlive = big;
  auto r = sendTx(loop, *c.client, std::move(t));
  INFO(r.error);
  REQUIRE(r.data.code == 250);
  REQUIRE(server.file("msg1.eml") == *big);

  auto r2 = sendTx(loop, *c.client, simpleTx({"a@example.test"}, "a\nb\r.c\r\n"));
  REQUIRE(r2.data.code == 250);
  REQUIRE(server.file("msg2.eml") == "a\r\nb\r\n.c\r\n");  // "\r." would end DATA on lax servers
}

// RFC 3030: with CHUNKING (and PIPELINING) offered the message goes as BDAT chunks: no 354
// round trip, no dot-stuffing, the same line repair as DATA.
TEST_CASE("client: BDAT to a next hop offering CHUNKING, byte-exact, in one write or in chunks") {
  ScriptedServer server("\"pipelining\": true, \"chunking\": true");
  uv::Loop loop;
  auto c = connectTo(loop, server.port(), plainOptions());
  REQUIRE(c.client);
  REQUIRE(c.client->supports("CHUNKING"));
  std::string small = ".leading dot\r\n..two\r\n.\r\nbare\nend";
  auto t = simpleTx({"a@example.test", "b@example.test"}, small);
  t.prefix = "Received: by moat\r\n";
  auto r = sendTx(loop, *c.client, std::move(t));
  INFO(r.error);
  REQUIRE(r.data.code == 250);
  REQUIRE(r.bodyAnswered);
  std::string expected = "Received: by moat\r\n.leading dot\r\n..two\r\n.\r\nbare\r\nend\r\n";
  REQUIRE(server.file("msg1.eml") == expected);
  REQUIRE(server.commands().find("1 BDAT " + std::to_string(expected.size()) + " LAST\n") != std::string::npos);
  REQUIRE(server.commands().find("DATA") == std::string::npos);

  // Over 64 KiB: MAIL and RCPT first, then 64 KiB chunks, the last one LAST.
  auto big = std::make_shared<std::string>();
  for (int i = 0; big->size() < 300 * 1024; ++i)
    big->append(i % 5 == 0 ? ".dot " : "line ").append(std::to_string(i) + "\r\n");
  auto tb = simpleTx({"a@example.test"}, *big);
  tb.keepAlive = big;
  auto rb = sendTx(loop, *c.client, std::move(tb));
  REQUIRE(rb.data.code == 250);
  REQUIRE(server.file("msg2.eml") == *big);
  std::string cmds = server.commands();
  size_t chunks = 0;
  for (size_t at = 0; (at = cmds.find("1 BDAT ", at)) != std::string::npos; ++at) ++chunks;
  REQUIRE(chunks == 1 + (big->size() + 64 * 1024 - 1) / (64 * 1024));
  REQUIRE(cmds.find(" LAST\n", cmds.find("1 BDAT 65536\n")) != std::string::npos);
  REQUIRE(c.client->usable());
}

TEST_CASE("client: BDAT refusals: no recipient, a refused chunk, a refused message, then RSET") {
  ScriptedServer server(
      "\"pipelining\": true, \"chunking\": true, \"reject_rcpt\": {\"bad@example.test\": "
      "\"550 5.1.1 No such user\"}, \"bdat_reply\": {\"2\": \"552 5.3.4 too big here\"}");
  uv::Loop loop;
  auto c = connectTo(loop, server.port(), plainOptions());
  REQUIRE(c.client);
  // Small: the BDAT went with the RCPT and is refused for want of a recipient.
  auto none = sendTx(loop, *c.client, simpleTx({"bad@example.test"}));
  REQUIRE(none.rcpts[0].code == 550);
  REQUIRE(none.data.code == 503);
  REQUIRE_FALSE(none.bodyAnswered);
  REQUIRE(server.commands().find("1 RSET") != std::string::npos);
  REQUIRE(c.client->usable());

  // Large: no chunk goes before a recipient is accepted.
  auto big = std::make_shared<std::string>(200 * 1024, 'x');
  for (size_t i = 78; i < big->size(); i += 80) (*big)[i] = '\r', (*big)[i + 1] = '\n';
  auto tb = simpleTx({"bad@example.test"}, *big);
  tb.keepAlive = big;
  size_t bdatsBefore = 0;
  for (size_t at = 0; (at = server.commands().find("BDAT", at)) != std::string::npos; ++at) ++bdatsBefore;
  auto nb = sendTx(loop, *c.client, std::move(tb));
  REQUIRE(nb.rcpts[0].code == 550);
  REQUIRE(nb.data.code == 0);
  size_t bdatsAfter = 0;
  for (size_t at = 0; (at = server.commands().find("BDAT", at)) != std::string::npos; ++at) ++bdatsAfter;
  REQUIRE(bdatsAfter == bdatsBefore);

  // The server refuses the second chunk: the message failed with that reply (not an answer
  // to the message), RSET, and the connection carries the next message.
  auto tc = simpleTx({"a@example.test"}, *big);
  tc.keepAlive = big;
  auto rc = sendTx(loop, *c.client, std::move(tc));
  REQUIRE(rc.data.code == 552);
  REQUIRE(rc.data.text == "552 5.3.4 too big here");
  REQUIRE_FALSE(rc.bodyAnswered);
  REQUIRE(c.client->usable());
  auto ok = sendTx(loop, *c.client, simpleTx({"a@example.test"}, "Subject: after\r\n\r\nfine\r\n"));
  REQUIRE(ok.data.code == 250);
  REQUIRE(server.file("msg1.eml") == "Subject: after\r\n\r\nfine\r\n");  // the refused one was not stored
}

TEST_CASE(
    "client: a refused last chunk is the answer to the message, DATA without CHUNKING, PIPELINING or the option") {
  {
    ScriptedServer server("\"pipelining\": true, \"chunking\": true, \"data_reply\": \"554 5.7.1 content refused\"");
    uv::Loop loop;
    auto c = connectTo(loop, server.port(), plainOptions());
    REQUIRE(c.client);
    auto r = sendTx(loop, *c.client, simpleTx({"a@example.test"}));
    REQUIRE(r.data.code == 554);
    REQUIRE(r.bodyAnswered);
    REQUIRE(server.commands().find("1 BDAT") != std::string::npos);
    REQUIRE(server.commands().find("1 RSET") != std::string::npos);  // RFC 3030 §2
    REQUIRE(c.client->usable());
  }
  for (std::string cfg : {"\"chunking\": true", "\"pipelining\": true, \"chunking\": true"}) {
    bool optionOff = cfg.find("pipelining") != std::string::npos;
    ScriptedServer server(cfg);
    uv::Loop loop;
    auto opts = plainOptions();
    opts.chunking = !optionOff;
    auto c = connectTo(loop, server.port(), opts);
    REQUIRE(c.client);
    auto r = sendTx(loop, *c.client, simpleTx({"a@example.test"}, ".x\r\n"));
    REQUIRE(r.data.code == 250);
    REQUIRE(server.file("msg1.eml") == ".x\r\n");
    REQUIRE(server.commands().find("BDAT") == std::string::npos);
    REQUIRE(server.commands().find("1 DATA") != std::string::npos);
  }
}

TEST_CASE("client: per-recipient rejects, with and without pipelining") {
  for (bool pipelining : {true, false}) {
    ScriptedServer server(std::string("\"pipelining\": ") + (pipelining ? "true" : "false") +
                          ", \"reject_rcpt\": {\"bad@example.test\": \"550 5.1.1 No such user\","
                          " \"later@example.test\": \"451 4.3.0 Try later\"}");
    uv::Loop loop;
    auto c = connectTo(loop, server.port(), plainOptions());
    REQUIRE(c.client);
    REQUIRE(c.client->supports("PIPELINING") == pipelining);
    auto r = sendTx(loop, *c.client,
                    simpleTx({"one@example.test", "bad@example.test", "later@example.test", "two@example.test"}));
    REQUIRE(r.error.empty());
    REQUIRE(r.rcpts.size() == 4);
    REQUIRE(r.rcpts[0].code == 250);
    REQUIRE(r.rcpts[1].code == 550);
    REQUIRE(r.rcpts[1].text == "550 5.1.1 No such user");
    REQUIRE(r.rcpts[2].code == 451);
    REQUIRE(r.rcpts[3].code == 250);
    REQUIRE(r.data.code == 250);
    REQUIRE(server.file("msg1.env").find("one@example.test\ntwo@example.test\n") != std::string::npos);

    // Every recipient refused: no message, RSET, and the connection stays usable.
    auto none = sendTx(loop, *c.client, simpleTx({"bad@example.test"}));
    REQUIRE(none.rcpts[0].code == 550);
    REQUIRE(none.data.code != 250);
    REQUIRE(server.commands().find("RSET") != std::string::npos);
    REQUIRE(c.client->usable());
    auto again = sendTx(loop, *c.client, simpleTx({"one@example.test"}));
    REQUIRE(again.data.code == 250);
    if (!pipelining) REQUIRE(server.commands().find("1 DATA\n1 RSET") == std::string::npos);
  }
}

// Recipient verification (mta/server/recipient_verifier.h): MAIL FROM:<> and RCPT, then RSET;
// never DATA, whatever the next hop answers, and the connection stays usable.
TEST_CASE("client: a probe asks MAIL and RCPT, then resets, with and without pipelining") {
  for (bool pipelining : {true, false}) {
    ScriptedServer server(std::string("\"pipelining\": ") + (pipelining ? "true" : "false") +
                          ", \"reject_rcpt\": {\"bad@example.test\": \"550 5.1.1 No such user\"}");
    uv::Loop loop;
    auto c = connectTo(loop, server.port(), plainOptions());
    REQUIRE(c.client);
    for (const char* rcpt : {"one@example.test", "bad@example.test"}) {
      Transaction t;
      t.rcpts = {rcpt};
      t.probe = true;
      auto r = sendTx(loop, *c.client, std::move(t));
      REQUIRE(r.error.empty());
      REQUIRE(r.mail.code == 250);
      REQUIRE(r.rcpts.size() == 1);
      REQUIRE(r.rcpts[0].code == (std::string(rcpt) == "bad@example.test" ? 550 : 250));
      REQUIRE(r.data.code == 0);
      REQUIRE_FALSE(r.bodyAnswered);
      REQUIRE(c.client->usable());
    }
    auto cmds = server.commands();
    INFO(cmds);
    REQUIRE(cmds.find("1 MAIL FROM:<>\n1 RCPT TO:<one@example.test>\n1 RSET\n1 MAIL FROM:<>\n"
                      "1 RCPT TO:<bad@example.test>\n1 RSET\n") != std::string::npos);
    REQUIRE(cmds.find("DATA") == std::string::npos);
  }
}

// A refused RSET leaves the server in an unknown state: the connection must already be
// unusable when the result is reported, or the caller starts the next message on it.
TEST_CASE("client: a refused RSET closes the connection before the result is reported") {
  for (bool pipelining : {true, false}) {
    ScriptedServer server(std::string("\"pipelining\": ") + (pipelining ? "true" : "false") +
                          ", \"rset_reply\": \"500 5.5.1 RSET not implemented\","
                          " \"reject_rcpt\": {\"bad@example.test\": \"550 5.1.1 No such user\"}");
    uv::Loop loop;
    auto c = connectTo(loop, server.port(), plainOptions());
    REQUIRE(c.client);
    TransactionResult res;
    bool done = false, usableInDone = true;
    c.client->send(simpleTx({"bad@example.test"}), [&](TransactionResult r) {
      usableInDone = c.client->usable();
      res = std::move(r);
      done = true;
    });
    REQUIRE(loop.runUntil([&] { return done; }, 30000));
    REQUIRE(server.commands().find("RSET") != std::string::npos);
    REQUIRE(res.error.empty());  // the recipient's own reply stands
    REQUIRE(res.rcpts[0].code == 550);
    REQUIRE_FALSE(usableInDone);
    REQUIRE_FALSE(c.client->usable());
  }
}

TEST_CASE("client: a 4xx at MAIL is the answer for every recipient") {
  for (bool pipelining : {true, false}) {
    ScriptedServer server(std::string("\"pipelining\": ") + (pipelining ? "true" : "false") +
                          ", \"mail_reply\": \"451 4.7.1 Greylisted\"");
    uv::Loop loop;
    auto c = connectTo(loop, server.port(), plainOptions());
    REQUIRE(c.client);
    auto r = sendTx(loop, *c.client, simpleTx({"a@example.test", "b@example.test"}));
    REQUIRE(r.error.empty());
    REQUIRE(r.mail.code == 451);
    REQUIRE(r.rcpts[0].code == 451);  // never the server's 503 to a pipelined RCPT
    REQUIRE(r.rcpts[1].text == "451 4.7.1 Greylisted");
    REQUIRE(r.data.code == 451);
    REQUIRE(c.client->usable());
  }
}

// RFC 5321 §4.3.2: only 354 lets the message go, and only the reply to its final dot can
// accept it. A 250 (or any other positive reply) to DATA is a protocol error: the message was
// never sent, so it must not look delivered, and the connection is not used again.
TEST_CASE("client: a reply to DATA other than 354 is a protocol error, never a delivery") {
  for (bool pipelining : {true, false}) {
    for (std::string reply : {"250 2.0.0 ok whatever", "334 go on"}) {
      INFO("pipelining " << pipelining << ", DATA answered " << reply);
      ScriptedServer server(std::string("\"pipelining\": ") + (pipelining ? "true" : "false") +
                            ", \"data_cmd_reply\": \"" + reply + "\"");
      uv::Loop loop;
      auto c = connectTo(loop, server.port(), plainOptions());
      REQUIRE(c.client);
      auto r = sendTx(loop, *c.client, simpleTx({"a@example.test"}));
      REQUIRE(r.error.empty());
      REQUIRE(r.mail.code == 250);
      REQUIRE(r.rcpts[0].code == 250);
      REQUIRE(r.data.code == 451);
      REQUIRE(r.data.text.starts_with("451 4.5.0 unexpected reply to DATA: " + reply));
      REQUIRE_FALSE(r.bodyAnswered);
      REQUIRE_FALSE(c.client->usable());  // closed: its replies no longer match the commands
      REQUIRE(server.file("msg1.eml").empty());
      REQUIRE(server.commands().find("RSET") == std::string::npos);
    }
  }
  // The reply to the final dot is the one that counts.
  ScriptedServer good("\"pipelining\": true");
  uv::Loop loop;
  auto c = connectTo(loop, good.port(), plainOptions());
  REQUIRE(c.client);
  auto r = sendTx(loop, *c.client, simpleTx({"a@example.test"}));
  REQUIRE(r.data.code == 250);
  REQUIRE(r.bodyAnswered);
  REQUIRE(c.client->usable());
}

// RFC 5321 §3.8: after a 421 the server closes the channel. The transaction ends with that
// reply for whatever was not answered, and the client is not usable, so the caller's next
// message goes over a new connection instead of into a closing one.
TEST_CASE("client: a 421 to MAIL, RCPT, DATA or the final dot ends the transaction and the connection") {
  struct Case {
    std::string config;
    int mail, rcpt0, rcpt1, data;
    bool bodyAnswered;
  };
  std::vector<Case> cases = {
      {"\"mail_reply\": \"421 4.3.2 shutting down\"", 421, 421, 421, 421, false},
      {"\"reject_rcpt\": {\"b@example.test\": \"421 4.3.2 shutting down\"}", 250, 250, 421, 421, false},
      {"\"reject_rcpt\": {\"a@example.test\": \"550 5.1.1 no such user\", \"b@example.test\": \"421 4.3.2 "
       "shutting down\"}",
       250, 550, 421, 421, false},
      {"\"data_cmd_reply\": \"421 4.3.2 shutting down\"", 250, 250, 250, 421, false},
      {"\"data_reply\": \"421 4.3.2 shutting down\"", 250, 250, 250, 421, true},
  };
  for (bool pipelining : {true, false}) {
    for (const auto& k : cases) {
      INFO("pipelining " << pipelining << ", " << k.config);
      ScriptedServer server(std::string("\"pipelining\": ") + (pipelining ? "true" : "false") + ", " + k.config);
      uv::Loop loop;
      auto c = connectTo(loop, server.port(), plainOptions());
      REQUIRE(c.client);
      TransactionResult r;
      bool done = false, usableInDone = true;
      c.client->send(simpleTx({"a@example.test", "b@example.test"}), [&](TransactionResult res) {
        usableInDone = c.client->usable();
        r = std::move(res);
        done = true;
      });
      REQUIRE(loop.runUntil([&] { return done; }, 30000));
      REQUIRE(r.error.empty());  // the server's own replies stand, not "connection closed"
      REQUIRE(r.mail.code == k.mail);
      REQUIRE(r.rcpts[0].code == k.rcpt0);
      REQUIRE(r.rcpts[1].code == k.rcpt1);
      REQUIRE(r.data.code == k.data);
      REQUIRE(r.data.text == "421 4.3.2 shutting down");
      REQUIRE(r.bodyAnswered == k.bodyAnswered);
      REQUIRE_FALSE(usableInDone);
      REQUIRE_FALSE(c.client->usable());
      // A new connection takes the next message.
      auto again = connectTo(loop, server.port(), plainOptions());
      REQUIRE(again.client);
    }
  }
}

// RFC 1870: a message over the next hop's fixed maximum is not sent; it is returned now.
TEST_CASE("client: a message over the next hop's fixed SIZE is refused locally, not sent") {
  std::string body = "Subject: t\r\n\r\n" + std::string(200, 'x') + "\r\n";  // 216 octets
  for (bool pipelining : {true, false}) {
    ScriptedServer server(std::string("\"pipelining\": ") + (pipelining ? "true" : "false") + ", \"size\": \"100\"");
    uv::Loop loop;
    auto c = connectTo(loop, server.port(), plainOptions());
    REQUIRE(c.client);
    auto t = simpleTx({"a@example.test"}, body);
    t.prefix = "X-Added: 1\r\n";  // counted too: 228 octets in all
    t.size = t.prefix.size() + body.size();
    auto r = sendTx(loop, *c.client, std::move(t));
    REQUIRE(r.error.empty());
    REQUIRE(r.local);
    REQUIRE(r.mail.code == 552);
    REQUIRE(r.mail.text ==
            "552 5.3.4 message size 228 exceeds fixed maximum message size 100 of the next hop (not sent)");
    REQUIRE(r.rcpts[0].code == 552);
    REQUIRE(r.data.code == 552);
    REQUIRE_FALSE(r.bodyAnswered);
    REQUIRE(server.commands().find("MAIL") == std::string::npos);
    REQUIRE(c.client->usable());  // nothing was said: the connection takes the next message
    auto small = sendTx(loop, *c.client, simpleTx({"a@example.test"}, "Subject: t\r\n\r\nhi\r\n"));
    REQUIRE(small.data.code == 250);
  }
  // Exactly the maximum goes; "SIZE 0" and a bare "SIZE" announce no fixed maximum.
  for (std::string size : {"216", "0", ""}) {
    INFO("SIZE " << size);
    ScriptedServer server("\"pipelining\": true, \"size\": \"" + size + "\"");
    uv::Loop loop;
    auto c = connectTo(loop, server.port(), plainOptions());
    REQUIRE(c.client);
    auto r = sendTx(loop, *c.client, simpleTx({"a@example.test"}, body));
    REQUIRE(r.data.code == 250);
    REQUIRE(server.file("msg1.eml") == body);
  }
}

TEST_CASE("client: envelope with CR/LF is refused locally, nothing is sent") {
  ScriptedServer server("\"pipelining\": true");
  uv::Loop loop;
  auto c = connectTo(loop, server.port(), plainOptions());
  REQUIRE(c.client);
  auto r = sendTx(loop, *c.client, simpleTx({"a@example.test>\r\nRCPT TO:<evil@example.test"}));
  REQUIRE(r.mail.code == 501);
  REQUIRE(r.rcpts[0].code == 501);
  REQUIRE(server.commands().find("MAIL") == std::string::npos);
  REQUIRE(c.client->usable());
}

TEST_CASE("client: UTF-8 goes only to a next hop offering SMTPUTF8, else it is returned unsent") {
  const std::string utf8Rcpt = "j\xc3\xb8rn@example.test";
  const std::string utf8Headers = "Subject: caf\xc3\xa9\r\n\r\nhi\r\n";
  uv::Loop loop;
  {
    ScriptedServer plain("\"pipelining\": true");
    auto c = connectTo(loop, plain.port(), plainOptions());
    REQUIRE(c.client);
    auto t = simpleTx({utf8Rcpt});
    t.smtputf8 = true;
    auto r = sendTx(loop, *c.client, std::move(t));
    REQUIRE(r.local);
    REQUIRE(r.mail.code == 553);
    REQUIRE(r.rcpts[0].text.find("5.6.7") != std::string::npos);

    t = simpleTx({"a@example.test"}, utf8Headers);
    t.smtputf8 = true;
    r = sendTx(loop, *c.client, std::move(t));
    REQUIRE(r.local);
    REQUIRE(r.data.code == 554);
    REQUIRE(r.data.text.find("5.6.9") != std::string::npos);
    REQUIRE(plain.commands().find("MAIL") == std::string::npos);
    REQUIRE(c.client->usable());

    // Declared SMTPUTF8 but all ASCII: nothing needs it, so it goes (without the parameter).
    t = simpleTx({"a@example.test"});
    t.smtputf8 = true;
    r = sendTx(loop, *c.client, std::move(t));
    REQUIRE_FALSE(r.local);
    REQUIRE(r.data.code == 250);
    REQUIRE(plain.commands().find("MAIL FROM:<sender@example.org>\n") != std::string::npos);
  }
  {
    ScriptedServer utf8("\"pipelining\": true, \"smtputf8\": true");
    auto c = connectTo(loop, utf8.port(), plainOptions());
    REQUIRE(c.client);
    auto t = simpleTx({utf8Rcpt}, utf8Headers);
    t.smtputf8 = true;
    auto r = sendTx(loop, *c.client, std::move(t));
    REQUIRE_FALSE(r.local);
    REQUIRE(r.data.code == 250);
    REQUIRE(utf8.commands().find("SMTPUTF8") != std::string::npos);
  }
}

namespace {

// The converter the daemon supplies (filters/mime/downgrade.h), counting its calls.
client::Downgrade realDowngrade(int& calls) {
  return [&calls](std::string prefix, std::string_view body, std::shared_ptr<const void>, client::DowngradeDone done) {
    ++calls;
    auto d = moat::filters::mime::downgradeTo7Bit(prefix + std::string(body));
    done(d.ok, std::move(d.message), std::move(d.reason));
  };
}

// The same, answering later from the thread pool, as the daemon does for large messages.
client::Downgrade pooledDowngrade(uv_loop_t* loop, int& calls) {
  return [loop, &calls](std::string prefix, std::string_view body, std::shared_ptr<const void> keepAlive,
                        client::DowngradeDone done) {
    ++calls;
    auto d = std::make_shared<moat::filters::mime::Downgraded>();
    uv::queueWork(
        loop,
        [d, prefix = std::move(prefix), body, keepAlive] {
          *d = moat::filters::mime::downgradeTo7Bit(prefix + std::string(body));
        },
        [d, done = std::move(done)] { done(d->ok, std::move(d->message), std::move(d->reason)); });
  };
}

bool sevenBit(std::string_view s) {
  return std::none_of(s.begin(), s.end(), [](char ch) { return static_cast<unsigned char>(ch) > 0x7f; });
}

size_t count(std::string_view s, std::string_view what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string_view::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("client: 8-bit mail to a next hop without 8BITMIME goes as 7-bit MIME, or is returned unsent") {
  uv::Loop loop;
  ScriptedServer server("\"pipelining\": true, \"no_8bitmime\": true");
  auto c = connectTo(loop, server.port(), plainOptions());
  REQUIRE(c.client);
  REQUIRE_FALSE(c.client->supports("8BITMIME"));
  int calls = 0;

  // Big enough to take several loop turns to write: the converted copy must outlive send().
  auto body = std::make_shared<std::string>(
      "From: a@example.org\r\nSubject: plain\r\nMIME-Version: 1.0\r\n"
      "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n");
  std::string text;
  for (int i = 0; text.size() < 3 * 1024 * 1024; ++i)
    text += (i % 3 ? "caf\xc3\xa9 line " : ".dot line ") + std::to_string(i) + "\r\n";
  *body += text;
  auto t = simpleTx({"a@example.test"}, *body);
  t.keepAlive = body;
  t.prefix = "Received: by moat\r\n";
  t.eightBit = true;
  t.size = t.prefix.size() + body->size();
  t.downgrade = realDowngrade(calls);
  auto r = sendTx(loop, *c.client, std::move(t));
  INFO(r.error);
  REQUIRE(calls == 1);
  REQUIRE_FALSE(r.local);
  REQUIRE(r.downgraded);
  REQUIRE(r.data.code == 250);
  std::string got = server.file("msg1.eml");
  REQUIRE(got.rfind("Received: by moat\r\nFrom: a@example.org\r\n", 0) == 0);
  REQUIRE(sevenBit(got));
  REQUIRE(got.find("\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n.dot line 0\r\ncaf=C3=A9 line 1\r\n") !=
          std::string::npos);
  REQUIRE(count(got, "Content-Transfer-Encoding") == 1);
  REQUIRE(moat::filters::mime::decodeQuotedPrintable(got.substr(got.find("\r\n\r\n") + 4)) == text);
  // No BODY=8BITMIME, and SIZE= is the size of what was sent.
  REQUIRE(server.commands().find("1 MAIL FROM:<sender@example.org> SIZE=" + std::to_string(got.size()) + "\n") !=
          std::string::npos);

  // An 8-bit header cannot be converted: returned, nothing sent, the connection still usable.
  t = simpleTx({"a@example.test", "b@example.test"}, "Subject: caf\xc3\xa9\r\n\r\ncaf\xc3\xa9\r\n");
  t.eightBit = true;
  t.downgrade = realDowngrade(calls);
  r = sendTx(loop, *c.client, std::move(t));
  REQUIRE(calls == 2);
  REQUIRE(r.local);
  REQUIRE_FALSE(r.downgraded);
  REQUIRE(r.mail.code == 554);
  REQUIRE(r.rcpts[1].code == 554);
  REQUIRE(r.data.text ==
          "554 5.6.3 Conversion required but not supported: 8-bit bytes in a header; the next hop does not offer "
          "8BITMIME (not sent)");
  REQUIRE(count(server.commands(), "MAIL FROM") == 1);
  REQUIRE(c.client->usable());

  // Without a converter, 8-bit mail is returned too (undeclared: the bytes decide).
  r = sendTx(loop, *c.client, simpleTx({"a@example.test"}, "Subject: t\r\n\r\n\xe9t\xe9\r\n"));
  REQUIRE(r.local);
  REQUIRE(r.data.code == 554);
  REQUIRE(r.data.text.find("5.6.3") != std::string::npos);
  REQUIRE(count(server.commands(), "MAIL FROM") == 1);

  // Declared 8BITMIME but all ASCII: already 7-bit, sent as it is, without BODY=.
  t = simpleTx({"a@example.test"}, "Subject: ascii\r\n\r\nhi\r\n");
  t.eightBit = true;
  t.downgrade = realDowngrade(calls);
  r = sendTx(loop, *c.client, std::move(t));
  REQUIRE(calls == 2);
  REQUIRE_FALSE(r.downgraded);
  REQUIRE(r.data.code == 250);
  REQUIRE(server.file("msg2.eml") == "Subject: ascii\r\n\r\nhi\r\n");
  REQUIRE(server.commands().find("1 MAIL FROM:<sender@example.org>\n") != std::string::npos);
}

TEST_CASE("client: a converter that answers later, from the thread pool") {
  uv::Loop loop;
  ScriptedServer server("\"pipelining\": true, \"no_8bitmime\": true");
  auto c = connectTo(loop, server.port(), plainOptions());
  REQUIRE(c.client);
  int calls = 0;
  auto t = simpleTx({"a@example.test"}, "Subject: t\r\n\r\ncaf\xc3\xa9\r\n");
  t.downgrade = pooledDowngrade(loop.get(), calls);
  auto r = sendTx(loop, *c.client, std::move(t));
  REQUIRE(calls == 1);
  REQUIRE(r.downgraded);
  REQUIRE(r.data.code == 250);
  REQUIRE(server.file("msg1.eml") ==
          "Subject: t\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=unknown-8bit\r\n"
          "Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n");
  // Refused from the pool too: a local 554 5.6.3, and the connection stays usable.
  t = simpleTx({"a@example.test"}, "Subject: caf\xc3\xa9\r\n\r\nx\r\n");
  t.downgrade = pooledDowngrade(loop.get(), calls);
  r = sendTx(loop, *c.client, std::move(t));
  REQUIRE(r.local);
  REQUIRE(r.data.code == 554);
  REQUIRE(c.client->usable());
}

TEST_CASE("client: DSN requests (RFC 3461) go on to a next hop that offers DSN, and only to one") {
  for (bool pipelining : {true, false}) {
    for (bool offered : {true, false}) {
      CAPTURE(pipelining, offered);
      uv::Loop loop;
      std::string cfg = std::string("\"pipelining\": ") + (pipelining ? "true" : "false");
      if (!offered) cfg += ", \"no_dsn\": true";
      ScriptedServer server(cfg);
      auto c = connectTo(loop, server.port(), plainOptions());
      REQUIRE(c.client);
      auto t = simpleTx({"a@example.test", "b@example.test", "c@example.test"});
      t.envid = "QQ+2B314";
      t.ret = "HDRS";
      t.rcptDsn = {{"SUCCESS,FAILURE", "rfc822;A+40old.example.test"},
                   {"NEVER", ""},
                   {"", "utf-8;c\xc3\xa9@example.test"}};  // UTF-8: only with SMTPUTF8 in use
      auto r = sendTx(loop, *c.client, std::move(t));
      REQUIRE(r.data.code == 250);
      REQUIRE(r.dsnOffered == offered);
      std::string cmds = server.commands();
      INFO(cmds);
      if (offered) {
        REQUIRE(cmds.find("MAIL FROM:<sender@example.org> RET=HDRS ENVID=QQ+2B314\n") != std::string::npos);
        REQUIRE(cmds.find("RCPT TO:<a@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;A+40old.example.test\n") !=
                std::string::npos);
        REQUIRE(cmds.find("RCPT TO:<b@example.test> NOTIFY=NEVER\n") != std::string::npos);
        REQUIRE(cmds.find("RCPT TO:<c@example.test>\n") != std::string::npos);
      } else {
        REQUIRE(cmds.find("MAIL FROM:<sender@example.org>\n") != std::string::npos);
        for (const char* rcpt : {"a", "b", "c"})
          REQUIRE(cmds.find(std::string("RCPT TO:<") + rcpt + "@example.test>\n") != std::string::npos);
        REQUIRE(cmds.find("NOTIFY") == std::string::npos);
      }
    }
  }
}

TEST_CASE("client: a DSN request with a control character or space is refused locally") {
  uv::Loop loop;
  ScriptedServer server("\"pipelining\": true");
  auto c = connectTo(loop, server.port(), plainOptions());
  REQUIRE(c.client);
  auto t = simpleTx({"a@example.test"});
  t.rcptDsn = {{"SUCCESS", "rfc822;a@example.test NOTIFY=NEVER"}};
  auto r = sendTx(loop, *c.client, std::move(t));
  REQUIRE(r.local);
  REQUIRE(r.mail.code == 501);
  REQUIRE(server.commands().find("MAIL") == std::string::npos);
}

TEST_CASE("client: with 8BITMIME offered, 8-bit mail goes unchanged with BODY=8BITMIME") {
  uv::Loop loop;
  ScriptedServer server("\"pipelining\": true");
  auto c = connectTo(loop, server.port(), plainOptions());
  REQUIRE(c.client);
  REQUIRE(c.client->supports("8BITMIME"));
  int calls = 0;
  const std::string body = "Subject: t\r\nContent-Transfer-Encoding: 8bit\r\n\r\ncaf\xc3\xa9 \xff\r\n";
  auto t = simpleTx({"a@example.test"}, body);
  t.prefix = "Received: by moat\r\n";
  t.eightBit = true;
  t.downgrade = realDowngrade(calls);
  auto r = sendTx(loop, *c.client, std::move(t));
  REQUIRE(r.data.code == 250);
  REQUIRE_FALSE(r.downgraded);
  REQUIRE(calls == 0);
  REQUIRE(server.file("msg1.eml") == "Received: by moat\r\n" + body);
  REQUIRE(server.commands().find("MAIL FROM:<sender@example.org> BODY=8BITMIME\n") != std::string::npos);
}

namespace {

// A caller's conversion to a message that needs no SMTPUTF8 (the daemon's is for its own
// global DSNs, queue/dsn.h): `to`, or a refusal when `to` is empty; counting its calls.
client::Downgrade fakeUtf8Downgrade(int& calls, std::string to) {
  return [&calls, to](std::string, std::string_view, std::shared_ptr<const void>, client::DowngradeDone done) {
    ++calls;
    if (to.empty()) return done(false, "", "not a DSN\r\nof ours");
    done(true, to, "");
  };
}

}  // namespace

TEST_CASE("client: SMTPUTF8 mail goes converted by the caller's utf8Downgrade to a next hop without SMTPUTF8") {
  const std::string utf8Headers = "Subject: caf\xc3\xa9\r\n\r\ncaf\xc3\xa9\r\n";
  const std::string asciiHeaders = "Subject: cafe\r\n\r\ncaf\xc3\xa9\r\n";
  const std::string converted = "Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\ncafe\r\n";
  uv::Loop loop;
  int calls = 0;
  {
    ScriptedServer plain("\"pipelining\": true");
    auto c = connectTo(loop, plain.port(), plainOptions());
    REQUIRE(c.client);
    REQUIRE_FALSE(c.client->supports("SMTPUTF8"));
    auto t = simpleTx({"a@example.test"}, utf8Headers);
    t.prefix = "Received: by moat\r\n";
    t.smtputf8 = t.eightBit = true;
    t.size = t.prefix.size() + t.body.size();
    t.utf8Downgrade = fakeUtf8Downgrade(calls, converted);
    auto r = sendTx(loop, *c.client, std::move(t));
    REQUIRE(calls == 1);
    REQUIRE_FALSE(r.local);
    REQUIRE(r.utf8Downgraded);
    REQUIRE_FALSE(r.downgraded);
    REQUIRE(r.data.code == 250);
    REQUIRE(plain.file("msg1.eml") == converted);  // the prefix went into the conversion
    // Neither SMTPUTF8 nor BODY=8BITMIME: the converted copy is 7-bit. SIZE= is its size.
    REQUIRE(plain.commands().find("1 MAIL FROM:<sender@example.org> SIZE=" + std::to_string(converted.size()) + "\n") !=
            std::string::npos);

    // The converter refuses: UTF-8 headers are returned unsent (554 5.6.9, with its reason
    // made one printable line), and the connection stays usable.
    t = simpleTx({"a@example.test"}, utf8Headers);
    t.smtputf8 = true;
    t.utf8Downgrade = fakeUtf8Downgrade(calls, "");
    r = sendTx(loop, *c.client, std::move(t));
    REQUIRE(calls == 2);
    REQUIRE(r.local);
    REQUIRE_FALSE(r.utf8Downgraded);
    REQUIRE(r.data.text ==
            "554 5.6.9 SMTPUTF8 is required by the headers, but the next hop does not offer it, and the message "
            "could not be converted: not a DSN  of ours (not sent)");
    REQUIRE(count(plain.commands(), "MAIL FROM") == 1);
    REQUIRE(c.client->usable());

    // The converter refuses, but only the body has UTF-8: it goes as it is, as before.
    t = simpleTx({"a@example.test"}, asciiHeaders);
    t.smtputf8 = t.eightBit = true;
    t.utf8Downgrade = fakeUtf8Downgrade(calls, "");
    r = sendTx(loop, *c.client, std::move(t));
    REQUIRE(calls == 3);
    REQUIRE_FALSE(r.utf8Downgraded);
    REQUIRE(r.data.code == 250);
    REQUIRE(plain.file("msg2.eml") == asciiHeaders);
    REQUIRE(plain.commands().find("1 MAIL FROM:<sender@example.org> BODY=8BITMIME\n") != std::string::npos);

    // A UTF-8 address has no converted form: 553 5.6.7 before any conversion.
    t = simpleTx({"j\xc3\xb8rn@example.test"}, utf8Headers);
    t.smtputf8 = true;
    t.utf8Downgrade = fakeUtf8Downgrade(calls, converted);
    r = sendTx(loop, *c.client, std::move(t));
    REQUIRE(calls == 3);
    REQUIRE(r.mail.code == 553);
  }
  {
    // A next hop without SMTPUTF8 or 8BITMIME: a converted copy that is still 8-bit goes on
    // to the 7-bit MIME conversion.
    ScriptedServer plain("\"pipelining\": true, \"no_8bitmime\": true");
    auto c = connectTo(loop, plain.port(), plainOptions());
    REQUIRE(c.client);
    int mimeCalls = 0;
    auto t = simpleTx({"a@example.test"}, utf8Headers);
    t.smtputf8 = t.eightBit = true;
    t.utf8Downgrade = fakeUtf8Downgrade(calls, asciiHeaders);
    t.downgrade = realDowngrade(mimeCalls);
    auto r = sendTx(loop, *c.client, std::move(t));
    REQUIRE(calls == 4);
    REQUIRE(mimeCalls == 1);
    REQUIRE(r.utf8Downgraded);
    REQUIRE(r.downgraded);
    REQUIRE(r.data.code == 250);
    REQUIRE(sevenBit(plain.file("msg1.eml")));
  }
  {
    // With SMTPUTF8 offered, the message goes as it is and the converter is not asked.
    ScriptedServer utf8("\"pipelining\": true, \"smtputf8\": true");
    auto c = connectTo(loop, utf8.port(), plainOptions());
    REQUIRE(c.client);
    auto t = simpleTx({"a@example.test"}, utf8Headers);
    t.smtputf8 = true;
    t.utf8Downgrade = fakeUtf8Downgrade(calls, converted);
    auto r = sendTx(loop, *c.client, std::move(t));
    REQUIRE(calls == 4);
    REQUIRE_FALSE(r.utf8Downgraded);
    REQUIRE(utf8.file("msg1.eml") == utf8Headers);
    REQUIRE(utf8.commands().find("SMTPUTF8") != std::string::npos);
  }
}

TEST_CASE("client: HELO fallback when EHLO is refused") {
  ScriptedServer server("\"no_esmtp\": true");
  uv::Loop loop;
  auto c = connectTo(loop, server.port(), plainOptions());
  REQUIRE(c.client);
  REQUIRE_FALSE(c.client->supports("PIPELINING"));
  auto t = simpleTx({"a@example.test"});
  t.eightBit = true;
  t.size = 99;
  auto r = sendTx(loop, *c.client, std::move(t));
  REQUIRE(r.data.code == 250);
  REQUIRE(server.commands().find("HELO moat.test") != std::string::npos);
  REQUIRE(server.commands().find("MAIL FROM:<sender@example.org>\n") != std::string::npos);  // no ESMTP params
}

TEST_CASE("client: STARTTLS with tls=may and tls=require") {
  moat::test::TestCert cert;
  REQUIRE(cert.ok());
  std::string error;
  auto trusting = tls::TlsContext::client(true, cert.caFile(), error);
  auto untrusting = tls::TlsContext::client(true, "", error);
  ScriptedServer tlsServer("\"pipelining\": true, \"cert\": \"" + cert.certFile() + "\", \"key\": \"" +
                           cert.keyFile() + "\"");
  ScriptedServer plainServer("\"pipelining\": true");
  uv::Loop loop;

  for (auto mode : {TlsMode::May, TlsMode::Require}) {
    auto o = plainOptions();
    o.tls = mode;
    o.tlsCtx = trusting;
    o.sni = "localhost";
    auto c = connectTo(loop, tlsServer.port(), o);
    REQUIRE(c.client);
    REQUIRE(c.client->tlsActive());
    REQUIRE(c.client->tlsVerified());
    REQUIRE(c.client->tlsSummary().rfind("TLSv1.", 0) == 0);
    REQUIRE_FALSE(c.client->supports("STARTTLS"));  // the EHLO after TLS replaced the list
    auto r = sendTx(loop, *c.client, simpleTx({"a@example.test"}, "Subject: tls\r\n\r\n.secret\r\n"));
    REQUIRE(r.data.code == 250);
    c.client->quit();
  }
  REQUIRE(tlsServer.file("msg1.env").find("tls=True") != std::string::npos);
  REQUIRE(tlsServer.file("msg2.eml") == "Subject: tls\r\n\r\n.secret\r\n");

  auto may = plainOptions();
  may.tls = TlsMode::May;
  may.tlsCtx = trusting;
  auto c = connectTo(loop, plainServer.port(), may);
  REQUIRE(c.client);  // not offered: plain text is fine with "may"
  REQUIRE_FALSE(c.client->tlsActive());
  REQUIRE(sendTx(loop, *c.client, simpleTx({"a@example.test"})).data.code == 250);

  auto req = may;
  req.tls = TlsMode::Require;
  auto f = connectTo(loop, plainServer.port(), req);
  REQUIRE_FALSE(f.client);
  REQUIRE(f.error.find("STARTTLS") != std::string::npos);

  req.tlsCtx = untrusting;
  req.sni = "localhost";
  auto v = connectTo(loop, tlsServer.port(), req);
  REQUIRE_FALSE(v.client);
  REQUIRE(v.error.find("verify") != std::string::npos);
}

TEST_CASE("client: REQUIRETLS (RFC 8689) goes on MAIL only over TLS to a server offering it, else not sent") {
  moat::test::TestCert cert;
  REQUIRE(cert.ok());
  std::string error;
  auto trusting = tls::TlsContext::client(true, cert.caFile(), error);
  const std::string tlsJson =
      "\"pipelining\": true, \"cert\": \"" + cert.certFile() + "\", \"key\": \"" + cert.keyFile() + "\"";
  ScriptedServer offering(tlsJson + ", \"requiretls\": true");
  ScriptedServer notOffering(tlsJson);
  ScriptedServer plain("\"pipelining\": true, \"requiretls\": true");
  uv::Loop loop;
  auto o = plainOptions();
  o.tls = TlsMode::Require;
  o.tlsCtx = trusting;
  o.sni = "localhost";

  auto c = connectTo(loop, offering.port(), o);
  REQUIRE(c.client);
  REQUIRE(c.client->supports("REQUIRETLS"));
  auto tx = simpleTx({"a@example.test"});
  tx.requireTls = true;
  REQUIRE(sendTx(loop, *c.client, tx).data.code == 250);
  REQUIRE(offering.commands().find("MAIL FROM:<sender@example.org> REQUIRETLS") != std::string::npos);

  auto n = connectTo(loop, notOffering.port(), o);
  REQUIRE(n.client);
  auto r = sendTx(loop, *n.client, tx);
  REQUIRE(r.local);
  REQUIRE(r.mail.code == 550);
  REQUIRE(r.rcpts[0].text.find("5.7.30") != std::string::npos);
  REQUIRE(notOffering.commands().find("MAIL") == std::string::npos);
  // A DSN (null sender) is never held back: it goes, without the keyword it cannot use.
  auto dsn = tx;
  dsn.mailFrom = "";
  REQUIRE(sendTx(loop, *n.client, dsn).data.code == 250);
  REQUIRE(notOffering.commands().find("MAIL FROM:<>") != std::string::npos);
  REQUIRE(notOffering.commands().find("REQUIRETLS") == std::string::npos);

  auto p = plainOptions();  // plain text: never REQUIRETLS, whatever the server says
  auto pc = connectTo(loop, plain.port(), p);
  REQUIRE(pc.client);
  REQUIRE(sendTx(loop, *pc.client, tx).mail.code == 550);
  tx.requireTls = false;  // an ordinary message is unaffected
  REQUIRE(sendTx(loop, *pc.client, tx).data.code == 250);
  REQUIRE(plain.commands().find("REQUIRETLS") == std::string::npos);
}

TEST_CASE("client: tls=may goes on in plain text over a new connection when the handshake fails") {
  ScriptedServer server("\"pipelining\": true, \"starttls_break\": true");
  uv::Loop loop;
  std::string err;
  auto ctx = tls::TlsContext::client(false, "", err);  // opportunistic: no verification
  REQUIRE(ctx);

  auto o = plainOptions();
  o.tls = TlsMode::May;
  o.tlsCtx = ctx;
  auto c = connectTo(loop, server.port(), o);
  REQUIRE(c.client);
  REQUIRE_FALSE(c.client->tlsActive());
  REQUIRE_FALSE(c.client->tlsFallback().empty());
  auto r = sendTx(loop, *c.client, simpleTx({"a@example.test"}));
  REQUIRE(r.data.code == 250);
  // first connection: EHLO, STARTTLS; second: EHLO and the message, no STARTTLS again
  auto cmds = server.commands();
  REQUIRE(cmds.find("1 STARTTLS") != std::string::npos);
  REQUIRE(cmds.find("2 STARTTLS") == std::string::npos);
  REQUIRE(cmds.find("2 MAIL FROM:<sender@example.org>") != std::string::npos);

  o.tls = TlsMode::Require;  // no fallback when TLS is required
  auto strict = connectTo(loop, server.port(), o);
  REQUIRE_FALSE(strict.client);
  REQUIRE_FALSE(strict.error.empty());
}

// README, [[route]] tls = "may": a handshake that fails goes on in plain text over a new
// connection, and one that never finishes is a failed one (RFC 7435), not a deferral.
TEST_CASE("client: tls=may goes on in plain text when the STARTTLS handshake never finishes") {
  ScriptedServer server("\"pipelining\": true, \"starttls_hang\": true");
  uv::Loop loop;
  std::string err;
  auto ctx = tls::TlsContext::client(false, "", err);
  REQUIRE(ctx);
  auto o = plainOptions();
  o.tls = TlsMode::May;
  o.tlsCtx = ctx;
  o.commandTimeoutMs = 500;
  auto c = connectTo(loop, server.port(), o);
  INFO(c.error);
  REQUIRE(c.client);
  REQUIRE_FALSE(c.client->tlsActive());
  REQUIRE(c.client->tlsFallback() == "timeout in TLS handshake");
  auto r = sendTx(loop, *c.client, simpleTx({"a@example.test"}));
  REQUIRE(r.data.code == 250);
  REQUIRE(r.bodyAnswered);
  auto cmds = server.commands();
  REQUIRE(cmds.find("1 STARTTLS") != std::string::npos);
  REQUIRE(cmds.find("2 STARTTLS") == std::string::npos);
  REQUIRE(cmds.find("2 MAIL FROM:<sender@example.org>") != std::string::npos);

  o.tls = TlsMode::Require;  // required TLS never falls back: the timeout fails the connection
  auto strict = connectTo(loop, server.port(), o);
  REQUIRE_FALSE(strict.client);
  REQUIRE(strict.error == "timeout in TLS handshake");
}

TEST_CASE("client: a reply injected in plaintext behind the STARTTLS 220 is ignored") {
  moat::test::TestCert cert;
  std::string error;
  ScriptedServer server("\"pipelining\": true, \"starttls_extra\": \"250 2.0.0 injected\\r\\n\", \"cert\": \"" +
                        cert.certFile() + "\", \"key\": \"" + cert.keyFile() + "\"");
  uv::Loop loop;
  auto o = plainOptions();
  o.tls = TlsMode::Require;
  o.tlsCtx = tls::TlsContext::client(true, cert.caFile(), error);
  o.sni = "localhost";
  auto c = connectTo(loop, server.port(), o);
  INFO(c.error);
  REQUIRE(c.client);  // had the injected 250 been read, it would answer the EHLO out of turn
  REQUIRE(c.client->tlsActive());
  auto r = sendTx(loop, *c.client, simpleTx({"a@example.test"}));
  REQUIRE(r.mail.code == 250);
  REQUIRE(r.data.code == 250);
}

// RFC 5321 §4.1.1.10: the client closes the channel only after QUIT; §3.1: a server that
// greets with 554 waits for it. A 421 needs none: the server closes the channel itself.
TEST_CASE("client: a refused greeting or EHLO is followed by QUIT, a 421 greeting is not") {
  uv::Loop loop;
  for (std::string config :
       {"\"greeting\": \"554 5.3.2 no SMTP service here\"", "\"lmtp\": true, \"ehlo_reply\": \"554 5.7.1 go away\"",
        "\"greeting\": \"421 4.3.2 busy\""}) {
    INFO(config);
    ScriptedServer server(config);
    auto o = plainOptions();
    o.lmtp = config.find("lmtp") != std::string::npos;
    auto c = connectTo(loop, server.port(), o);
    REQUIRE_FALSE(c.client);
    bool busy = config.find("421") != std::string::npos;
    REQUIRE(c.reply.code == (busy ? 421 : 554));
    REQUIRE(c.error == (busy || !o.lmtp ? "greeting refused" : "LHLO refused"));
    REQUIRE((server.commands().find("QUIT") != std::string::npos) == !busy);
  }
}

TEST_CASE("client: greeting and end-of-data timeouts, overlong replies, refused connects") {
  uv::Loop loop;
  {
    ScriptedServer slow("\"greeting_delay\": 3");
    auto o = plainOptions();
    o.greetingTimeoutMs = 300;
    auto c = connectTo(loop, slow.port(), o);
    REQUIRE_FALSE(c.client);
    REQUIRE(c.error.find("timeout") != std::string::npos);
  }
  {
    ScriptedServer slow("\"pipelining\": true, \"data_done_delay\": 3");
    auto o = plainOptions();
    o.dataDoneTimeoutMs = 300;
    auto c = connectTo(loop, slow.port(), o);
    INFO(c.error << " " << c.reply.text);
    REQUIRE(c.client);
    auto r = sendTx(loop, *c.client, simpleTx({"a@example.test"}));
    REQUIRE(r.error.find("timeout") != std::string::npos);
    REQUIRE(r.rcpts[0].code == 250);
    REQUIRE_FALSE(c.client->usable());
  }
  {
    ScriptedServer chatty("\"greeting\": \"220 " + std::string(5000, 'x') + "\"");
    auto c = connectTo(loop, chatty.port(), plainOptions());
    REQUIRE_FALSE(c.client);
    REQUIRE(c.error.find("too long") != std::string::npos);
  }
  {
    ScriptedServer busy("\"greeting\": \"421 4.3.2 busy\"");
    auto c = connectTo(loop, busy.port(), plainOptions());
    REQUIRE_FALSE(c.client);
    REQUIRE(c.reply.code == 421);
  }
  uint16_t closedPort;
  {
    ScriptedServer gone;
    closedPort = gone.port();
  }
  auto c = connectTo(loop, closedPort, plainOptions());
  REQUIRE_FALSE(c.client);
  REQUIRE(c.error.find("connect") != std::string::npos);
}

namespace {

// A port that was free a moment ago (smtp-sink cannot report the port it bound).
uint16_t freePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// Postfix's smtp-sink; dumps each transaction into DIR/msg.<random>.
struct Sink {
  explicit Sink(std::vector<std::string> extra) : dir(makeTempDir()), port(freePort()) {
    std::vector<std::string> argv{"/usr/sbin/smtp-sink"};
    if (getuid() == 0) argv.insert(argv.end(), {"-u", "root"});
    argv.insert(argv.end(), extra.begin(), extra.end());
    argv.insert(argv.end(), {"-d", dir + "/msg.", "127.0.0.1:" + std::to_string(port), "10"});
    child = std::make_unique<Child>(argv);
  }
  ~Sink() {
    child.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  std::vector<std::string> dumps() const {
    std::vector<std::string> out;
    for (auto& e : std::filesystem::directory_iterator(dir)) out.push_back(readFile(e.path()));
    return out;
  }
  std::string dir;
  uint16_t port;
  std::unique_ptr<Child> child;
};

Connected connectRetrying(uv::Loop& loop, uint16_t port) {
  Connected c;
  for (int i = 0; i < 50 && !c.client; ++i) {  // until smtp-sink listens
    c = connectTo(loop, port, plainOptions());
    if (!c.client) loop.runUntil([] { return false; }, 50);
  }
  return c;
}

}  // namespace

TEST_CASE("client: delivers through Postfix smtp-sink with pipelining, and handles its rejects") {
  uv::Loop loop;
  {
    Sink sink({});
    auto c = connectRetrying(loop, sink.port);
    REQUIRE(c.client);
    REQUIRE(c.client->supports("PIPELINING"));
    for (int i = 0; i < 2; ++i) {
      auto r = sendTx(loop, *c.client, simpleTx({"x@example.test", "y@example.test"},
                                                "Subject: sink\r\n\r\n..dotted\r\n.\r\nend"));
      REQUIRE(r.error.empty());
      REQUIRE(r.rcpts[1].code == 250);
      REQUIRE(r.data.text == "250 2.0.0 Ok");
    }
    c.client->quit();
    REQUIRE(loop.runUntil([&] { return sink.dumps().size() == 2; }, 5000));
    for (auto& d : sink.dumps()) {
      REQUIRE(d.find("X-Rcpt-Args: <y@example.test>") != std::string::npos);
      INFO(d);
      REQUIRE(d.find("\n\n..dotted\n.\nend\n") != std::string::npos);  // the sink un-stuffs
    }
  }
  {
    Sink sink({"-r", "RCPT"});  // every RCPT gets a 4xx
    auto c = connectRetrying(loop, sink.port);
    REQUIRE(c.client);
    auto r = sendTx(loop, *c.client, simpleTx({"x@example.test"}));
    REQUIRE(r.mail.code == 250);
    REQUIRE(r.rcpts[0].code / 100 == 4);
    REQUIRE(r.data.code != 250);
    REQUIRE(c.client->usable());
  }
}

TEST_CASE("AUTH PLAIN's initial response is base64 of NUL, name, NUL, password (RFC 4616 §2)") {
  // RFC 4616 §4's example, without an authorization identity.
  CHECK(client::saslPlainResponse("tim", "tanstaaftanstaaf") == "AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
  CHECK(client::saslPlainResponse("u@example.test", "p:w") == "AHVAZXhhbXBsZS50ZXN0AHA6dw==");
}

// ---- LMTP (RFC 2033) -----------------------------------------------------------------------

namespace {
client::Options lmtpOptions() {
  auto o = plainOptions();
  o.lmtp = true;
  return o;
}

Connected connectUnixTo(uv::Loop& loop, const std::string& path, client::Options opts) {
  return awaitConnected(loop, [&](SmtpClient::ConnectDone cb) {
    SmtpClient::connectUnix(loop.get(), path, std::move(opts), std::move(cb));
  });
}
}  // namespace

TEST_CASE("client: LMTP says LHLO, never BDAT, and reads one reply per accepted recipient in RCPT order") {
  for (bool pipelining : {true, false}) {
    ScriptedServer server(std::string("\"lmtp\": true, \"chunking\": true, \"pipelining\": ") +
                          (pipelining ? "true" : "false") +
                          ", \"reject_rcpt\": {\"bad@example.test\": \"550 5.1.1 No such user\"},"
                          " \"lmtp_reply\": {\"full@example.test\": \"452 4.2.2 Mailbox full\","
                          " \"gone@example.test\": \"550 5.2.1 Mailbox disabled\"}");
    uv::Loop loop;
    auto c = connectTo(loop, server.port(), lmtpOptions());
    INFO(c.error);
    REQUIRE(c.client);
    REQUIRE(c.client->supports("ENHANCEDSTATUSCODES"));
    REQUIRE(c.client->supports("CHUNKING"));
    std::string body = "Subject: lmtp\r\n\r\n.dot\r\nbody\r\n";
    auto r = sendTx(
        loop, *c.client,
        simpleTx({"ok@example.test", "bad@example.test", "full@example.test", "gone@example.test", "two@example.test"},
                 body));
    INFO(r.error);
    REQUIRE(r.error.empty());
    REQUIRE(r.lmtp);
    REQUIRE(r.bodyAnswered);
    REQUIRE(r.rcptData.size() == 5);
    REQUIRE(r.rcpts[1].code == 550);
    REQUIRE(r.rcptData[1].code == 0);  // refused at RCPT: no reply after the dot
    REQUIRE(r.rcptData[0].code == 250);
    REQUIRE(r.rcptData[0].text.find("<ok@example.test>") != std::string::npos);
    REQUIRE(r.rcptData[2].text == "452 4.2.2 Mailbox full");
    REQUIRE(r.rcptData[3].text == "550 5.2.1 Mailbox disabled");
    REQUIRE(r.rcptData[4].code == 250);
    REQUIRE(r.rcptData[4].text.find("<two@example.test>") != std::string::npos);
    REQUIRE(server.file("msg1.eml") == body);
    std::string cmds = server.commands();
    REQUIRE(cmds.find("1 LHLO moat.test\n") != std::string::npos);
    REQUIRE(cmds.find("EHLO") == std::string::npos);
    REQUIRE(cmds.find("BDAT") == std::string::npos);
    // Every reply was read: the connection carries the next message in step.
    REQUIRE(c.client->usable());
    auto again = sendTx(loop, *c.client, simpleTx({"two@example.test"}));
    REQUIRE(again.rcptData.size() == 1);
    REQUIRE(again.rcptData[0].code == 250);
    REQUIRE(again.rcptData[0].text.find("M2 delivered") != std::string::npos);
  }
}

TEST_CASE("client: an LMTP connection that ends among the per-recipient replies leaves the rest unanswered") {
  ScriptedServer server("\"lmtp\": true, \"pipelining\": true, \"lmtp_drop_after\": 1");
  uv::Loop loop;
  auto c = connectTo(loop, server.port(), lmtpOptions());
  REQUIRE(c.client);
  auto r = sendTx(loop, *c.client, simpleTx({"a@example.test", "b@example.test", "c@example.test"}));
  REQUIRE_FALSE(r.error.empty());
  REQUIRE(r.rcptData.size() == 3);
  REQUIRE(r.rcptData[0].code == 250);
  REQUIRE(r.rcptData[1].code == 0);
  REQUIRE(r.rcptData[2].code == 0);
  REQUIRE_FALSE(c.client->usable());
}

TEST_CASE("client: over LMTP a refused LHLO fails the connection, with no HELO fallback") {
  ScriptedServer server("\"pipelining\": true");  // an SMTP server: LHLO is an unknown command
  uv::Loop loop;
  auto c = connectTo(loop, server.port(), lmtpOptions());
  REQUIRE_FALSE(c.client);
  REQUIRE(c.error == "LHLO refused");
  REQUIRE(server.commands().find("HELO") == std::string::npos);
}

TEST_CASE("client: LMTP over a Unix socket, on the loop") {
  std::string dir = makeTempDir();
  std::string path = dir + "/lmtp.sock";
  {
    ScriptedServer server("\"lmtp\": true, \"pipelining\": true, \"unix\": \"" + path + "\"");
    uv::Loop loop;
    auto c = connectUnixTo(loop, path, lmtpOptions());
    INFO(c.error);
    REQUIRE(c.client);
    REQUIRE(c.client->source().empty());
    std::string body = "Subject: unix\r\n\r\nover a socket\r\n";
    auto r = sendTx(loop, *c.client, simpleTx({"u@example.test"}, body));
    REQUIRE(r.rcptData.size() == 1);
    REQUIRE(r.rcptData[0].code == 250);
    REQUIRE(server.file("msg1.eml") == body);
  }
  uv::Loop loop;
  auto missing = connectUnixTo(loop, dir + "/none.sock", lmtpOptions());
  REQUIRE_FALSE(missing.client);
  REQUIRE(missing.error.find("connect") != std::string::npos);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

TEST_CASE("client: a reply code outside 2xx to 5xx is a protocol error, never a reply (RFC 5321 4.2)") {
  uv::Loop loop;
  {
    ScriptedServer server("\"greeting\": \"000 mx.example.test\"");
    auto c = connectTo(loop, server.port(), plainOptions());
    REQUIRE_FALSE(c.client);
    REQUIRE(c.error.find("malformed reply line: 000") != std::string::npos);
  }
  ScriptedServer server("\"reject_rcpt\": {\"odd@example.test\": \"099 what\"}");
  auto c = connectTo(loop, server.port(), plainOptions());
  REQUIRE(c.client);
  auto r = sendTx(loop, *c.client, simpleTx({"odd@example.test"}));
  // Code 0 would read as "no reply": the connection fails instead, and the message is retried.
  REQUIRE(r.error.find("malformed reply line: 099") != std::string::npos);
  REQUIRE(r.rcpts[0].code != 99);
  REQUIRE_FALSE(r.bodyAnswered);
  REQUIRE_FALSE(c.client->usable());
}

TEST_CASE("client: a server given up on before a transaction (no STARTTLS under require) hears QUIT") {
  moat::test::TestCert cert;
  REQUIRE(cert.ok());
  std::string error;
  auto trusting = tls::TlsContext::client(true, cert.caFile(), error);
  uv::Loop loop;
  auto o = plainOptions();
  o.tls = TlsMode::Require;
  o.tlsCtx = trusting;
  o.sni = "localhost";
  for (std::string config : {"\"pipelining\": true", "\"starttls_reply\": \"454 4.7.0 TLS not available\"",
                             "\"starttls_reply\": \"421 4.3.2 going down\""}) {
    INFO(config);
    ScriptedServer server(config);
    auto c = connectTo(loop, server.port(), o);
    REQUIRE_FALSE(c.client);
    const bool offered = config.find("starttls_reply") != std::string::npos;
    REQUIRE(c.error == (offered ? "STARTTLS refused" : "STARTTLS not offered by the server"));
    const bool busy = config.find("421") != std::string::npos;  // the server closes itself
    if (offered) REQUIRE(c.reply.code == (busy ? 421 : 454));
    REQUIRE((server.commands().find("QUIT") != std::string::npos) == !busy);
  }
}
