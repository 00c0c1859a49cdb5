// Tests for mta/smtp/sasl.h: the PLAIN and LOGIN exchanges of SMTP AUTH (RFC 4954, RFC 4616)
// as a client drives them, with and without an initial response, and every way a client's
// response can be refused.
#include "mta/smtp/sasl.h"

#include <catch2/catch.hpp>
#include <string>

#include "mta/runtime/base64.h"

using moat::mta::base64Encode;
using moat::mta::smtp::SaslServer;
using moat::mta::smtp::SaslStep;
using Kind = SaslStep::Kind;
using namespace std::string_literals;

TEST_CASE("PLAIN with an initial response gives the credentials at once") {
  SaslServer s;
  auto st = s.start("PLAIN " + base64Encode("\0alice\0s3cret"s));
  REQUIRE(st.kind == Kind::Done);
  REQUIRE(st.credentials.user == "alice");
  REQUIRE(st.credentials.password == "s3cret");
  REQUIRE(s.mechanism() == "PLAIN");
}

TEST_CASE("PLAIN without an initial response sends an empty challenge, then reads the response") {
  SaslServer s;
  auto st = s.start("plain");
  REQUIRE(st.kind == Kind::Challenge);
  REQUIRE(st.challenge.empty());
  st = s.respond(base64Encode("alice\0alice\0pass word"s));  // authzid = authcid is allowed
  REQUIRE(st.kind == Kind::Done);
  REQUIRE(st.credentials.user == "alice");
  REQUIRE(st.credentials.password == "pass word");
}

TEST_CASE("PLAIN refuses acting for another identity and malformed messages") {
  SaslServer s;
  auto st = s.start("PLAIN " + base64Encode("bob\0alice\0pw"s));
  REQUIRE(st.kind == Kind::Refused);
  REQUIRE(st.reply.code == 535);
  REQUIRE(st.reply.enhanced == "5.7.8");
  REQUIRE(st.credentials.user == "alice");
  REQUIRE(st.credentials.password.empty());
  for (std::string bad : {"alice\0pw"s, "\0\0pw"s, "\0alice\0"s, "\0al\x01ice\0pw"s, "\0\xff\xfe\0pw"s,
                          "\0" + std::string(256, 'a') + "\0pw", "\0alice\0" + std::string(1025, 'p')}) {
    CAPTURE(bad);
    st = s.start("PLAIN " + base64Encode(bad));
    REQUIRE(st.kind == Kind::Refused);
    REQUIRE(st.reply.code == 501);
    REQUIRE(st.reply.enhanced == "5.5.2");
  }
  // "=" is the empty initial response (RFC 4954 §4): an empty PLAIN message is malformed.
  st = s.start("PLAIN =");
  REQUIRE(st.kind == Kind::Refused);
  REQUIRE(st.reply.code == 501);
}

TEST_CASE("LOGIN prompts for the name and the password") {
  SaslServer s;
  auto st = s.start("LOGIN");
  REQUIRE(st.kind == Kind::Challenge);
  REQUIRE(st.challenge == base64Encode("Username:"));
  st = s.respond(base64Encode("alice"));
  REQUIRE(st.kind == Kind::Challenge);
  REQUIRE(st.challenge == base64Encode("Password:"));
  st = s.respond(base64Encode("s3cret"));
  REQUIRE(st.kind == Kind::Done);
  REQUIRE(st.credentials.user == "alice");
  REQUIRE(st.credentials.password == "s3cret");
}

TEST_CASE("LOGIN takes the name as an initial response, as mail clients send it") {
  SaslServer s;
  auto st = s.start("LOGIN " + base64Encode("alice"));
  REQUIRE(st.kind == Kind::Challenge);
  REQUIRE(st.challenge == base64Encode("Password:"));
  st = s.respond(base64Encode("s3cret"));
  REQUIRE(st.kind == Kind::Done);
  REQUIRE(st.credentials.user == "alice");
}

TEST_CASE("a response of * cancels the exchange with 501 5.0.0") {
  SaslServer s;
  REQUIRE(s.start("LOGIN").kind == Kind::Challenge);
  auto st = s.respond("*");
  REQUIRE(st.kind == Kind::Refused);
  REQUIRE(st.reply.code == 501);
  REQUIRE(st.reply.enhanced == "5.0.0");
  // The exchange is over: a further response is out of place.
  REQUIRE(s.respond(base64Encode("x")).reply.code == 503);
}

TEST_CASE("responses that are not strict base64 are refused with 501 5.5.2") {
  for (std::string bad : {"YWxpY2U", "YWxp Y2U=", "YWxpY2U=\t", "!!!!", "YQ==YQ=="}) {
    CAPTURE(bad);
    SaslServer s;
    REQUIRE(s.start("LOGIN").kind == Kind::Challenge);
    auto st = s.respond(bad);
    REQUIRE(st.kind == Kind::Refused);
    REQUIRE(st.reply.code == 501);
    REQUIRE(st.reply.enhanced == "5.5.2");
    REQUIRE(s.start("PLAIN " + bad).reply.code == 501);
  }
}

TEST_CASE("unknown mechanisms get 504, a missing one or extra words 501") {
  SaslServer s;
  auto st = s.start("CRAM-MD5");
  REQUIRE(st.reply.code == 504);
  REQUIRE(st.reply.enhanced == "5.5.4");
  REQUIRE(s.mechanism().empty());
  REQUIRE(s.start("").reply.code == 501);
  REQUIRE(s.start("PLAIN AAAA BBBB").reply.code == 501);
}

TEST_CASE("a LOGIN name must be a name and a password must not be empty") {
  SaslServer s;
  REQUIRE(s.start("LOGIN").kind == Kind::Challenge);
  REQUIRE(s.respond(base64Encode("al\nice")).reply.code == 501);
  REQUIRE(s.start("LOGIN " + base64Encode("alice")).kind == Kind::Challenge);
  REQUIRE(s.respond(base64Encode("")).reply.code == 501);
}

// sasl.h promises that passwords are wiped when the credentials holding them go away. Moving
// a short password (most are: up to 15 octets, libstdc++'s in-object buffer) copies it and
// leaves all but its first octet in the moved-from string's buffer, past its size(); the
// session moves credentials three times on their way to the thread pool. The check reads
// the moved-from buffer (capacity() octets of a string's own storage).
TEST_CASE("moving credentials leaves no copy of a short password behind") {
  using moat::mta::smtp::SaslCredentials;
  auto leftover = [](const std::string& s) { return std::string(s.data(), s.capacity()); };
  SaslCredentials a;
  a.password = "hunter2secret";
  SaslCredentials b(std::move(a));
  REQUIRE(b.password == "hunter2secret");
  REQUIRE(leftover(a.password).find("unter2secret") == std::string::npos);
  SaslCredentials c;
  c = std::move(b);
  REQUIRE(c.password == "hunter2secret");
  REQUIRE(leftover(b.password).find("unter2secret") == std::string::npos);
}
