// tests/filters/milter/milter_test.cc — the milter protocol's packets (filters/milter/
// protocol.h) byte for byte as libmilter reads them, the decoder's bounds, the replies Moat
// reads from a milter, the header walk behind SMFIC_HEADER and SMFIR_CHGHEADER, and the
// [[milter]] address syntax.
#include "filters/milter/milter.h"

#include <catch2/catch.hpp>
#include <string>

#include "filters/milter/protocol.h"

using namespace moat::filters::milter;
using namespace std::string_literals;

TEST_CASE("milter packets are length, command, data") {
  CHECK(encode('T', "") == "\0\0\0\1T"s);
  CHECK(encode('H', "mx\0"s) == "\0\0\0\4Hmx\0"s);
  CHECK(optnegPacket(0x33, 0x1FFFFF) == "\0\0\0\x0dO\0\0\0\6\0\0\0\x33\0\x1f\xff\xff"s);
  CHECK(macroPacket('M', {{"i", "ABC"}, {"{mail_addr}", "a@b"}}) ==
        "\0\0\0\x18"
        "DMi\0ABC\0{mail_addr}\0a@b\0"s);
  CHECK(connectPacket("host.test", '4', 2525, "192.0.2.1") ==
        "\0\0\0\x18"
        "Chost.test\0"
        "4\x09\xdd"
        "192.0.2.1\0"s);
  CHECK(connectPacket("unknown", 'U', 0, "") ==
        "\0\0\0\x0a"
        "Cunknown\0U"s);
  CHECK(envelopePacket('M', "a@b", {"SIZE=10"}) == "\0\0\0\x0fM<a@b>\0SIZE=10\0"s);
  CHECK(headerPacket("Subject", "hi") == "\0\0\0\x0cLSubject\0hi\0"s);
  // A NUL inside a string would end it early on the milter's side: it is cut there.
  CHECK(heloPacket("a\0b"s) == "\0\0\0\3Ha\0"s);
}

TEST_CASE("the milter decoder splits packets and bounds their length") {
  Decoder d;
  std::string wire = encode('c', "") + encode('h', "X-A\0v\0"s);
  d.feed(wire.substr(0, 3));
  CHECK_FALSE(d.next());
  d.feed(wire.substr(3, 5));
  auto p = d.next();
  REQUIRE(p);
  CHECK(p->command == 'c');
  CHECK(p->data.empty());
  CHECK_FALSE(d.next());  // the second one is not whole yet
  d.feed(wire.substr(8));
  p = d.next();
  REQUIRE(p);
  CHECK(p->command == 'h');
  CHECK(p->data == "X-A\0v\0"s);
  CHECK(d.buffered() == 0);

  Decoder big(1024);
  big.feed("\0\0\x04\x01"s);  // 1025 bytes announced
  CHECK_FALSE(big.next());
  CHECK_FALSE(big.error().empty());
  big.feed(std::string(2000, 'x'));
  CHECK_FALSE(big.next());  // stays in error

  Decoder empty;
  empty.feed("\0\0\0\0"s);
  CHECK_FALSE(empty.next());
  CHECK_FALSE(empty.error().empty());
}

TEST_CASE("the milter's OPTNEG reply is read") {
  auto o = parseOptneg("\0\0\0\6\0\0\0\x01\0\0\0\x30"s + "extra"s);
  REQUIRE(o);
  CHECK(o->version == 6);
  CHECK(o->actions == 1);
  CHECK(o->protocol == 0x30);
  CHECK_FALSE(parseOptneg("\0\0\0\6\0\0"s));
  // What Moat offers: header, body and envelope changes, quarantine; not SETSYMLIST.
  CHECK(kOfferedActions == (action::kAddHeaders | action::kChgBody | action::kChgHeaders | action::kQuarantine |
                            action::kAddRcpt | action::kDelRcpt | action::kChgFrom | action::kAddRcptPar));
  CHECK((kOfferedActions & action::kSetSymList) == 0);
}

TEST_CASE("SMFIR_REPLYCODE is checked to be a 4xx or 5xx reply") {
  auto r = parseReplyCode("554 5.7.0 Refused by policy\0"s);
  REQUIRE(r);
  CHECK(r->code == 554);
  CHECK(r->enhanced == "5.7.0");
  CHECK(r->text == "Refused by policy");
  r = parseReplyCode("451 Try later\0"s);
  REQUIRE(r);
  CHECK(r->code == 451);
  CHECK(r->enhanced.empty());
  CHECK(r->text == "Try later");
  r = parseReplyCode("550-5.7.1 first\r\n550 5.7.1 second\0"s);
  REQUIRE(r);
  CHECK(r->text == "first second");
  CHECK_FALSE(parseReplyCode("250 2.0.0 ok\0"s));  // not a refusal
  CHECK_FALSE(parseReplyCode("55 short\0"s));
  CHECK_FALSE(parseReplyCode("550x no separator\0"s));
  CHECK_FALSE(parseReplyCode("550 5.7.1 bad\x01text\0"s));
  CHECK_FALSE(parseReplyCode("550-a\r\n451 b\0"s));  // codes differ
  CHECK_FALSE(parseReplyCode("550 no terminator"s));
  // An enhanced code of another class is text, not the code.
  r = parseReplyCode("550 4.7.1 mixed\0"s);
  REQUIRE(r);
  CHECK(r->enhanced.empty());
  CHECK(r->text == "4.7.1 mixed");
  // So is one that is not RFC 3463's class.subject.detail of 1 to 3 digits each: Moat would
  // pass it on in its own reply to the client.
  for (std::string word :
       std::vector<std::string>{"5." + std::string(60, '9') + ".1", "5.7.1234", "5.1.1.1", "5.x.1"}) {
    r = parseReplyCode("550 " + word + " odd" + '\0');
    REQUIRE(r);
    CHECK(r->enhanced.empty());
    CHECK(r->text == word + " odd");
  }
}

TEST_CASE("header changes from a milter are parsed and checked") {
  auto h = parseHeaderChange("X-Spam\0yes\0"s, false);
  REQUIRE(h);
  CHECK(h->name == "X-Spam");
  CHECK(h->value == "yes");
  h = parseHeaderChange("\0\0\0\2Subject\0\0"s, true);
  REQUIRE(h);
  CHECK(h->index == 2);
  CHECK(h->value.empty());
  CHECK_FALSE(parseHeaderChange("Bad Name\0v\0"s, false));
  CHECK_FALSE(parseHeaderChange("X-A\0v"s, false));  // no NUL
  CHECK_FALSE(parseHeaderChange("X-A\0v\x01\0"s, false));
  CHECK_FALSE(parseHeaderChange("\0\0"s, true));
}

TEST_CASE("envelope change requests from a milter are split into address and arguments") {
  auto r = parseEnvelopeRequest("<a@example.test>\0"s, false);
  REQUIRE(r);
  CHECK(r->address == "<a@example.test>");
  CHECK(r->args.empty());
  r = parseEnvelopeRequest("<a@example.test>\0NOTIFY=NEVER\0"s, true);
  REQUIRE(r);
  CHECK(r->args == "NOTIFY=NEVER");
  CHECK_FALSE(parseEnvelopeRequest("<a@example.test>\0NOTIFY=NEVER\0"s, false));  // ADDRCPT takes no args
  CHECK_FALSE(parseEnvelopeRequest("<a@example.test>"s, false));                  // no NUL
  CHECK_FALSE(parseEnvelopeRequest("<a@example.test>\0x"s, true));
}

TEST_CASE("envelope changes pass the SMTP server's address and parameter checks") {
  using Kind = moat::filters::EnvelopeChange::Kind;
  std::string error;
  auto c = envelopeChange(reply::kAddRcpt, "new@example.test\0"s, false, error);  // <> optional
  REQUIRE(c);
  CHECK(c->kind == Kind::AddRcpt);
  CHECK(c->address == "new@example.test");

  c = envelopeChange(reply::kAddRcptPar, "<n@example.test>\0NOTIFY=failure,delay ORCPT=rfc822;x+2By@e.test XFOO=1\0"s,
                     false, error);
  REQUIRE(c);
  CHECK(c->notify == "FAILURE,DELAY");
  CHECK(c->orcpt == "rfc822;x+2By@e.test");
  CHECK(c->ignored == std::vector<std::string>{"XFOO=1"});

  c = envelopeChange(reply::kDelRcpt, "<Bob@Example.test>\0"s, false, error);
  REQUIRE(c);
  CHECK(c->kind == Kind::DelRcpt);
  CHECK(c->address == "Bob@Example.test");

  c = envelopeChange(reply::kChgFrom, "<>\0"s, false, error);  // the null sender
  REQUIRE(c);
  CHECK(c->kind == Kind::ChgFrom);
  CHECK(c->address.empty());
  c = envelopeChange(reply::kChgFrom, "<s@example.test>\0RET=hdrs ENVID=abc SIZE=10 BODY=8BITMIME\0"s, false, error);
  REQUIRE(c);
  CHECK(c->address == "s@example.test");
  CHECK(c->ret == "HDRS");
  CHECK(c->envid == "abc");
  CHECK(c->ignored == std::vector<std::string>{"SIZE=10", "BODY=8BITMIME"});

  // Malformed: the default_action.
  CHECK_FALSE(envelopeChange(reply::kAddRcpt, "<no-domain>\0"s, false, error));
  CHECK_FALSE(envelopeChange(reply::kAddRcpt, "<Postmaster>\0"s, false, error));
  CHECK_FALSE(envelopeChange(reply::kAddRcpt, "<a b@example.test>\0"s, false, error));
  CHECK_FALSE(envelopeChange(reply::kAddRcpt, "<>\0"s, false, error));
  CHECK_FALSE(envelopeChange(reply::kAddRcpt, "<j\xc3\xb6@example.test>\0"s, false, error));
  CHECK(envelopeChange(reply::kAddRcpt, "<j\xc3\xb6@example.test>\0"s, true, error));  // SMTPUTF8
  CHECK_FALSE(envelopeChange(reply::kAddRcptPar, "<a@example.test>\0NOTIFY=SOMETIMES\0"s, false, error));
  CHECK(error.find("NOTIFY") != std::string::npos);
  CHECK_FALSE(envelopeChange(reply::kChgFrom, "<s@example.test>\0RET=ALL\0"s, false, error));
  CHECK_FALSE(envelopeChange(reply::kChgFrom, "s@example.test\r\nRSET\0"s, false, error));
  CHECK_FALSE(envelopeChange(reply::kDelRcpt, "<a@example.test>\0NOTIFY=NEVER\0"s, false, error));
}

TEST_CASE("header fields and the body offset of a message") {
  std::string msg = "Subject: one\r\nX-Long: a\r\n\tb\r\nnot a field\r\nTo:x\r\n\r\nbody\r\n";
  auto f = headerFields(msg);
  REQUIRE(f.size() == 3);
  CHECK(f[0].name == "Subject");
  CHECK(f[0].offset == 0);
  CHECK(f[0].length == 14);
  CHECK(f[1].name == "X-Long");
  CHECK(f[1].rawValue == " a\r\n\tb");
  CHECK(msg.substr(f[1].offset, f[1].length) == "X-Long: a\r\n\tb\r\n");
  CHECK(f[2].name == "To");
  CHECK(bodyOffset(msg) == msg.size() - 6);
  CHECK(milterHeaderValue(" a\r\n\tb", false) == "a\n\tb");
  CHECK(milterHeaderValue(" a\r\n\tb", true) == " a\n\tb");
  CHECK(bodyOffset("Subject: x\r\n") == 12);  // no body
  CHECK(toCrlf("a\nb\r\nc\n") == "a\r\nb\r\nc\r\n");
}

TEST_CASE("milter addresses are inet, inet6 or unix") {
  std::string error;
  auto a = parseAddress("inet:127.0.0.1:11332", "/etc/moat", error);
  REQUIRE(a);
  CHECK(a->kind == Address::Kind::Inet);
  CHECK(a->host == "127.0.0.1");
  CHECK(a->port == 11332);
  a = parseAddress("inet6:[::1]:8891", "/etc/moat", error);
  REQUIRE(a);
  CHECK(a->host == "::1");
  a = parseAddress("inet:localhost:8891", "/etc/moat", error);
  REQUIRE(a);
  CHECK(a->host == "127.0.0.1");
  a = parseAddress("unix:run/m.sock", "/etc/moat", error);
  REQUIRE(a);
  CHECK(a->kind == Address::Kind::Unix);
  CHECK(a->path == "/etc/moat/run/m.sock");
  for (const char* bad : {"inet:mail.example.test:25", "inet:127.0.0.1", "inet:127.0.0.1:0", "inet:127.0.0.1:70000",
                          "tcp:127.0.0.1:25", "unix:", "127.0.0.1:25"}) {
    INFO(bad);
    error.clear();
    CHECK_FALSE(parseAddress(bad, "/etc/moat", error));
    CHECK_FALSE(error.empty());
  }
}
