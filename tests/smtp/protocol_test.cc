// Tests for mta/smtp/protocol: command parsing (RFC 5321 §4.1), mailbox syntax and limits
// (§4.1.2, §4.5.3.1), ESMTP parameters, SMTPUTF8 (RFC 6531 §3.5) and reply formatting.
#include <catch2/catch.hpp>

#include "mta/smtp/protocol.h"

using namespace moat::mta::smtp;

namespace {

Command ok(std::string_view line, bool utf8 = false) {
  auto r = parseCommand(line, utf8);
  if (auto* rep = std::get_if<Reply>(&r)) FAIL("rejected: " << line << " -> " << rep->code << " " << rep->text);
  return std::get<Command>(r);
}

Reply bad(std::string_view line, bool utf8 = false) {
  auto r = parseCommand(line, utf8);
  if (std::holds_alternative<Command>(r)) FAIL("accepted: " << line);
  return std::get<Reply>(r);
}

}  // namespace

TEST_CASE("every verb parses, case-insensitively") {
  struct Case {
    const char* line;
    Verb verb;
  };
  const Case cases[] = {
      {"HELO client.example", Verb::Helo}, {"ehlo client.example", Verb::Ehlo},
      {"MAIL FROM:<a@b.example>", Verb::Mail}, {"rcpt to:<a@b.example>", Verb::Rcpt},
      {"DATA", Verb::Data}, {"BDAT 10", Verb::Bdat}, {"RSET", Verb::Rset}, {"NOOP", Verb::Noop},
      {"noop anything", Verb::Noop}, {"QUIT", Verb::Quit}, {"VRFY user", Verb::Vrfy},
      {"EXPN list", Verb::Expn}, {"HELP", Verb::Help}, {"help MAIL", Verb::Help},
      {"StartTLS", Verb::StartTls}, {"AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q=", Verb::Auth},
  };
  for (const Case& c : cases) {
    INFO(c.line);
    Command cmd = ok(c.line);
    REQUIRE(cmd.verb == c.verb);
    REQUIRE(parseVerb(cmd.verbText) == c.verb);
  }
  REQUIRE(ok("ehlo client.example").verbText == "ehlo");
  REQUIRE(ok("EHLO  client.example ").arg == "client.example");
  REQUIRE(ok("AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q=").arg == "PLAIN dGVzdAB0ZXN0AHRlc3Q=");
  REQUIRE(ok("VRFY <user@example.test>").arg == "<user@example.test>");
  REQUIRE(verbName(Verb::StartTls) == "STARTTLS");
  REQUIRE(verbName(Verb::Unknown).empty());
}

TEST_CASE("unknown verbs, empty lines and control characters are rejected") {
  Reply r = bad("GET / HTTP/1.1");
  REQUIRE(r.code == 500);
  REQUIRE(r.enhanced == "5.5.2");  // RFC 3463 §3.6: "the command is unrecognized"
  REQUIRE(parseVerb("GET") == Verb::Unknown);
  REQUIRE(bad("").code == 500);
  REQUIRE(bad("   ").enhanced == "5.5.2");
  REQUIRE(bad("MAILFROM:<a@b.example>").code == 500);
  REQUIRE(bad(std::string_view("NOOP a\0b", 8)).enhanced == "5.5.2");
  REQUIRE(bad("NOOP a\rb").code == 500);
  REQUIRE(bad("MAIL FROM:<a@b.example>\r").code == 500);
}

TEST_CASE("verbs that take no argument refuse one, verbs that need one require it") {
  for (const char* line : {"DATA x", "RSET x", "QUIT now", "STARTTLS x"}) {
    INFO(line);
    Reply r = bad(line);
    REQUIRE(r.code == 501);
    REQUIRE(r.enhanced == "5.5.4");
  }
  for (const char* line : {"HELO", "EHLO   ", "VRFY", "EXPN", "AUTH"}) {
    INFO(line);
    REQUIRE(bad(line).code == 501);
  }
  REQUIRE(ok("DATA ").verb == Verb::Data);  // trailing space tolerated
}

TEST_CASE("MAIL FROM: paths, null sender, source routes") {
  REQUIRE(ok("MAIL FROM:<user@example.test>").address == "user@example.test");
  REQUIRE(ok("MAIL FROM: <user@example.test>").address == "user@example.test");  // tolerated space
  Command null = ok("MAIL FROM:<>");
  REQUIRE(null.address.empty());
  REQUIRE(null.params.empty());
  REQUIRE(ok("mail from:<> SIZE=100").params.size() == 1);
  REQUIRE(ok("MAIL FROM:<@relay1.example,@relay2.example:user@example.test>").address == "user@example.test");
  REQUIRE(ok("MAIL FROM:<@[192.0.2.1]:user@example.test>").address == "user@example.test");
  REQUIRE(ok("MAIL FROM:<\"john doe\"@example.test>").address == "\"john doe\"@example.test");
  REQUIRE(ok("MAIL FROM:<\"a>b\\\"c\"@example.test>").address == "\"a>b\\\"c\"@example.test");
  REQUIRE(ok("MAIL FROM:<user@[192.0.2.1]>").address == "user@[192.0.2.1]");
  REQUIRE(ok("MAIL FROM:<user@[IPv6:2001:db8::1]>").address == "user@[IPv6:2001:db8::1]");
  REQUIRE(ok("MAIL FROM:<first.last+tag@sub-domain.example.test>").address == "first.last+tag@sub-domain.example.test");
}

TEST_CASE("MAIL parameters: SIZE, BODY, SMTPUTF8, AUTH, RET, ENVID") {
  Command c = ok("MAIL FROM:<a@example.test> SIZE=12345 BODY=8bitmime SMTPUTF8 AUTH=<> RET=hdrs ENVID=QQ314159");
  REQUIRE(c.params.size() == 6);
  REQUIRE(findParam(c, "SIZE")->value == "12345");
  REQUIRE(declaredSize(c) == 12345u);
  REQUIRE(findParam(c, "BODY")->value == "8BITMIME");
  REQUIRE(findParam(c, "SMTPUTF8")->value.empty());
  REQUIRE(findParam(c, "AUTH")->value == "<>");
  REQUIRE(findParam(c, "RET")->value == "HDRS");
  REQUIRE(findParam(c, "ENVID")->value == "QQ314159");
  REQUIRE(findParam(c, "NOTIFY") == nullptr);
  REQUIRE(ok("MAIL FROM:<a@example.test>   size=10   body=7BIT").params[0].key == "SIZE");
  REQUIRE(ok("MAIL FROM:<a@example.test> AUTH=e+3Dmc2@example.com").params[0].value == "e+3Dmc2@example.com");
  REQUIRE(declaredSize(ok("MAIL FROM:<a@example.test> SIZE=99999999999999999999")) == UINT64_MAX);
  REQUIRE_FALSE(declaredSize(ok("MAIL FROM:<a@example.test>")));

  for (const char* line : {"MAIL FROM:<a@example.test> SIZE=12x", "MAIL FROM:<a@example.test> SIZE=",
                           "MAIL FROM:<a@example.test> SIZE=123456789012345678901", "MAIL FROM:<a@example.test> BODY=9BIT",
                           "MAIL FROM:<a@example.test> SMTPUTF8=yes", "MAIL FROM:<a@example.test> RET=ALL",
                           "MAIL FROM:<a@example.test> AUTH=a+zz", "MAIL FROM:<a@example.test> SIZE=1 SIZE=2",
                           "MAIL FROM:<a@example.test> -X=1", "MAIL FROM:<a@example.test> =1",
                           "MAIL FROM:<a@example.test>SIZE=1"}) {
    INFO(line);
    Reply r = bad(line);
    REQUIRE(r.code == 501);
    REQUIRE(r.enhanced == "5.5.4");
  }
  Reply unknown = bad("MAIL FROM:<a@example.test> X-FOO=bar");
  REQUIRE(unknown.code == 555);
  REQUIRE(unknown.enhanced == "5.5.4");
  REQUIRE(bad("MAIL FROM:<a@example.test> NOTIFY=NEVER").code == 555);  // an RCPT parameter
  std::string many = "MAIL FROM:<a@example.test>";
  for (int i = 0; i < 17; ++i) many += " P" + std::to_string(i);
  REQUIRE(bad(many).text == "Too many parameters");
}

TEST_CASE("MAIL parameter REQUIRETLS (RFC 8689 §3) takes no value and is MAIL's alone") {
  Command c = ok("MAIL FROM:<a@example.test> requiretls SIZE=10");
  REQUIRE(c.params.size() == 2);
  REQUIRE(findParam(c, "REQUIRETLS") != nullptr);
  REQUIRE(findParam(c, "REQUIRETLS")->value.empty());
  REQUIRE(findParam(ok("MAIL FROM:<> REQUIRETLS"), "REQUIRETLS") != nullptr);
  for (const char* line : {"MAIL FROM:<a@example.test> REQUIRETLS=yes", "MAIL FROM:<a@example.test> REQUIRETLS=",
                           "MAIL FROM:<a@example.test> REQUIRETLS REQUIRETLS"}) {
    INFO(line);
    Reply r = bad(line);
    REQUIRE(r.code == 501);
    REQUIRE(r.enhanced == "5.5.4");
  }
  REQUIRE(bad("RCPT TO:<b@example.test> REQUIRETLS").code == 555);
}

TEST_CASE("RCPT parameters: NOTIFY and ORCPT") {
  Command c = ok("RCPT TO:<b@example.test> NOTIFY=success,Failure ORCPT=rfc822;b+40example.test");
  REQUIRE(c.address == "b@example.test");
  REQUIRE(findParam(c, "NOTIFY")->value == "SUCCESS,FAILURE");
  REQUIRE(findParam(c, "ORCPT")->value == "rfc822;b+40example.test");
  REQUIRE(ok("RCPT TO:<b@example.test> NOTIFY=NEVER").params.size() == 1);
  REQUIRE(bad("RCPT TO:<b@example.test> NOTIFY=NEVER,SUCCESS").code == 501);
  REQUIRE(bad("RCPT TO:<b@example.test> NOTIFY=SOMETIMES").code == 501);
  REQUIRE(bad("RCPT TO:<b@example.test> ORCPT=rfc822").code == 501);
  REQUIRE(bad("RCPT TO:<b@example.test> ORCPT=;x").code == 501);
  REQUIRE(bad("RCPT TO:<b@example.test> SIZE=10").code == 555);
}

TEST_CASE("RCPT TO: postmaster without a domain, null path refused") {
  REQUIRE(ok("RCPT TO:<Postmaster>").address == "Postmaster");
  REQUIRE(ok("RCPT TO:<postMASTER>").address == "postMASTER");
  REQUIRE(domainOf("Postmaster").empty());
  REQUIRE(ok("RCPT TO:<postmaster@example.test>").address == "postmaster@example.test");
  Reply r = bad("RCPT TO:<>");
  REQUIRE(r.code == 501);
  REQUIRE(r.enhanced == "5.1.3");
  REQUIRE(bad("MAIL FROM:<Postmaster>").enhanced == "5.1.7");  // only RCPT may omit the domain
}

TEST_CASE("path syntax errors") {
  struct Case {
    const char* line;
    int code;
    const char* enhanced;
  };
  const Case cases[] = {
      {"MAIL FROM<a@example.test>", 501, "5.5.4"},          // missing colon
      {"MAIL <a@example.test>", 501, "5.5.4"},              // missing FROM:
      {"MAIL", 501, "5.5.4"},
      {"MAIL FROM:", 501, "5.5.4"},
      {"MAIL FROM:a@example.test", 501, "5.5.4"},           // no angle brackets
      {"MAIL FROM:<a@example.test", 501, "5.5.4"},          // unbalanced
      {"MAIL FROM:a@example.test>", 501, "5.5.4"},
      {"MAIL FROM : <a@example.test>", 501, "5.5.4"},
      {"RCPT TO <a@example.test>", 501, "5.5.4"},
      {"RCPT FROM:<a@example.test>", 501, "5.5.4"},
      {"MAIL FROM:<a b@example.test>", 501, "5.1.7"},       // space in a dot-string
      {"MAIL FROM:< a@example.test>", 501, "5.1.7"},
      {"MAIL FROM:<a@example.test >", 501, "5.1.7"},
      {"MAIL FROM:<<a@example.test>>", 501, "5.5.4"},
      {"MAIL FROM:<a@@example.test>", 501, "5.1.7"},
      {"MAIL FROM:<a..b@example.test>", 501, "5.1.7"},
      {"MAIL FROM:<.a@example.test>", 501, "5.1.7"},
      {"MAIL FROM:<a.@example.test>", 501, "5.1.7"},
      {"MAIL FROM:<@example.test>", 501, "5.1.7"},
      {"MAIL FROM:<a@>", 501, "5.1.7"},
      {"MAIL FROM:<a>", 501, "5.1.7"},
      {"MAIL FROM:<a@-example.test>", 501, "5.1.7"},
      {"MAIL FROM:<a@example-.test>", 501, "5.1.7"},
      {"MAIL FROM:<a@example..test>", 501, "5.1.7"},
      {"MAIL FROM:<a@example.test.>", 501, "5.1.7"},
      {"MAIL FROM:<a@exa_mple.test>", 501, "5.1.7"},
      {"MAIL FROM:<a@[192.0.2.300]>", 501, "5.1.7"},
      {"MAIL FROM:<a@[IPv6:192.0.2.1]>", 501, "5.1.7"},
      {"MAIL FROM:<a@[x-tag:stuff]>", 501, "5.1.7"},
      {"MAIL FROM:<\"unterminated@example.test>", 501, "5.5.4"},
      {"MAIL FROM:<@relay.example user@example.test>", 501, "5.1.7"},
      {"MAIL FROM:<@:user@example.test>", 501, "5.1.7"},
      {"RCPT TO:<b c@example.test>", 501, "5.1.3"},
      {"RCPT TO:<b@exa mple.test>", 501, "5.1.3"},
  };
  for (const Case& c : cases) {
    INFO(c.line);
    Reply r = bad(c.line);
    REQUIRE(r.code == c.code);
    REQUIRE(r.enhanced == c.enhanced);
  }
}

TEST_CASE("length limits of RFC 5321 §4.5.3.1") {
  const std::string local64(64, 'l');
  REQUIRE(ok("MAIL FROM:<" + local64 + "@example.test>").address.size() == 64 + 13);
  Reply r = bad("MAIL FROM:<" + local64 + "l@example.test>");
  REQUIRE(r.code == 501);
  REQUIRE(r.text == "Local part too long");
  REQUIRE(bad("RCPT TO:<" + local64 + "l@example.test>").enhanced == "5.1.3");
  // 63-octet labels are fine; a 64-octet label is not.
  REQUIRE(ok("RCPT TO:<a@" + std::string(63, 'd') + ".test>").verb == Verb::Rcpt);
  REQUIRE(bad("RCPT TO:<a@" + std::string(64, 'd') + ".test>").code == 501);
  // The whole path is at most 256 octets including <>.
  std::string domain;
  while (domain.size() < 240) domain += std::string(9, 'x') + ".";
  domain += "test";  // 244 octets
  const std::string fits = std::string(9, 'l') + "@" + domain;  // 254 octets, 256 with <>
  REQUIRE(ok("RCPT TO:<" + fits + ">").address == fits);
  REQUIRE(isValidMailbox(fits, false));
  const std::string longPath = "l" + fits;
  REQUIRE(bad("RCPT TO:<" + longPath + ">").text == "Path too long");
  REQUIRE_FALSE(isValidMailbox(longPath, false));
}

TEST_CASE("8-bit paths need SMTPUTF8 (RFC 6531 §3.5)") {
  const std::string utf8Addr = "j\xC3\xB6rg@b\xC3\xBC" "cher.example";
  Reply r = bad("MAIL FROM:<" + utf8Addr + ">");
  REQUIRE(r.code == 553);
  REQUIRE(r.enhanced == "5.6.7");
  REQUIRE(bad("RCPT TO:<" + utf8Addr + ">").code == 553);
  // SMTPUTF8 on the same MAIL line allows it; later RCPTs get utf8=true from the session.
  REQUIRE(ok("MAIL FROM:<" + utf8Addr + "> SMTPUTF8").address == utf8Addr);
  REQUIRE(ok("RCPT TO:<" + utf8Addr + ">", true).address == utf8Addr);
  // A MAIL starts a new transaction: an earlier MAIL's SMTPUTF8 (say one its filters refused)
  // does not carry over to it.
  Reply again = bad("MAIL FROM:<" + utf8Addr + ">", true);
  REQUIRE(again.code == 553);
  REQUIRE(again.enhanced == "5.6.7");
  REQUIRE(ok("RCPT TO:<\"\xE5\xB1\xB1 \xE7\x94\xB0\"@example.test>", true).verb == Verb::Rcpt);
  // Even with SMTPUTF8, bytes must be well-formed UTF-8.
  for (const char* badUtf8 : {"\xC3", "\xC0\xAF", "\xED\xA0\x80", "\xF5\x80\x80\x80", "\xFF"}) {
    Reply e = bad("RCPT TO:<a" + std::string(badUtf8) + "@example.test>", true);
    REQUIRE(e.code == 501);
    REQUIRE(e.enhanced == "5.1.3");
  }
  // An 8-bit parameter value without SMTPUTF8 is a syntax error.
  REQUIRE(bad("RCPT TO:<a@example.test> ORCPT=utf-8;\xC3\xB6").code == 501);
  REQUIRE(ok("RCPT TO:<a@example.test> ORCPT=utf-8;\xC3\xB6", true).params.size() == 1);
}

TEST_CASE("BDAT sizes and LAST") {
  Command c = ok("BDAT 1000 LAST");
  REQUIRE(c.chunkSize == 1000);
  REQUIRE(c.last);
  Command d = ok("bdat 0");
  REQUIRE(d.chunkSize == 0);
  REQUIRE_FALSE(d.last);
  REQUIRE(ok("BDAT 5 last").last);
  REQUIRE(ok("BDAT 18446744073709551615").chunkSize == UINT64_MAX);
  for (const char* line : {"BDAT", "BDAT x", "BDAT -1", "BDAT 10 FIRST", "BDAT 18446744073709551616", "BDAT 1 LAST x"}) {
    INFO(line);
    REQUIRE(bad(line).code == 501);
  }
}

TEST_CASE("domains and domainOf") {
  REQUIRE(isValidDomain("example.test", false));
  REQUIRE(isValidDomain("localhost", false));
  REQUIRE(isValidDomain("xn--bcher-kva.example", false));
  REQUIRE(isValidDomain("1.example", false));
  REQUIRE(isValidDomain("[192.0.2.1]", false));
  REQUIRE(isValidDomain("[IPv6:::1]", false));
  REQUIRE(isValidDomain("[ipv6:2001:db8::1]", false));
  REQUIRE_FALSE(isValidDomain("[2001:db8::1]", false));
  REQUIRE_FALSE(isValidDomain("[192.0.2.1", false));
  REQUIRE_FALSE(isValidDomain("", false));
  REQUIRE_FALSE(isValidDomain(".example", false));
  REQUIRE_FALSE(isValidDomain(std::string(256, 'a'), false));
  REQUIRE_FALSE(isValidDomain("b\xC3\xBC" "cher.example", false));
  REQUIRE(isValidDomain("b\xC3\xBC" "cher.example", true));
  REQUIRE(domainOf("User@Example.TEST") == "example.test");
  REQUIRE(domainOf("\"a@b\"@C.example") == "c.example");
  REQUIRE(domainOf("u@[IPv6:2001:DB8::1]") == "[ipv6:2001:db8::1]");
  REQUIRE(domainOf("").empty());
}

TEST_CASE("reply formatting") {
  REQUIRE(formatReply(250, "2.1.0", "Ok") == "250 2.1.0 Ok\r\n");
  REQUIRE(formatReply(250, "2.0.0", "first\nlast") == "250-2.0.0 first\r\n250 2.0.0 last\r\n");
  REQUIRE(formatReply(250, "", "mx.example.test\nPIPELINING\nSIZE 1000\n") ==
          "250-mx.example.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n");
  REQUIRE(formatReply(221, "", "") == "221\r\n");
  REQUIRE(formatReply(354, "", "End data with <CR><LF>.<CR><LF>") == "354 End data with <CR><LF>.<CR><LF>\r\n");
  REQUIRE(formatReply(550, "5.1.1", "") == "550 5.1.1\r\n");
  // Peer text cannot inject a line: CR and other controls become '?'.
  REQUIRE(formatReply(Reply{501, "5.1.3", "bad <a\rb\x01>"}) == "501 5.1.3 bad <a?b?>\r\n");
  REQUIRE(formatReply(250, "", "a\r\nb") == "250-a\r\n250 b\r\n");
}

TEST_CASE("enhanced status codes (RFC 3463)") {
  REQUIRE(isEnhancedCode("5.7.1"));
  REQUIRE(isEnhancedCode("2.0.0"));
  REQUIRE(isEnhancedCode("4.123.999"));
  REQUIRE(isEnhancedCode("5.7.1", '5'));
  REQUIRE_FALSE(isEnhancedCode("5.7.1", '4'));
  // Only classes 2, 4 and 5 exist, whatever class is asked for.
  REQUIRE_FALSE(isEnhancedCode("3.7.1"));
  REQUIRE_FALSE(isEnhancedCode("3.7.1", '3'));
  REQUIRE_FALSE(isEnhancedCode("5.1234.1"));
  REQUIRE_FALSE(isEnhancedCode("5.1.1234"));
  REQUIRE_FALSE(isEnhancedCode("5.1.1.1"));
  REQUIRE_FALSE(isEnhancedCode("5.1."));
  REQUIRE_FALSE(isEnhancedCode("5..1"));
  REQUIRE_FALSE(isEnhancedCode("5.7n.1"));
  REQUIRE_FALSE(isEnhancedCode(""));
}
