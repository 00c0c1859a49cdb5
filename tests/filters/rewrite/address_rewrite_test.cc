// Tests for filters/rewrite/address_rewrite.h: the address lists of header fields read as
// RFC 5322 §3.4 writes them, the edits that rewrite only their addresses, and the fields the
// filter rewrites each way.
#include "filters/rewrite/address_rewrite.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "tests/support/temp_file.h"

using moat::filters::applyEdits;
using moat::filters::rewrite::addressSpans;
using moat::filters::rewrite::rewriteHeaderFields;

namespace {

// The addresses addressSpans finds in `value`, or {"UNPARSED"}.
std::vector<std::string> addresses(std::string_view value) {
  auto spans = addressSpans(value);
  if (!spans) return {"UNPARSED"};
  std::vector<std::string> out;
  for (auto [a, b] : *spans) out.emplace_back(value.substr(a, b - a));
  return out;
}

using V = std::vector<std::string>;

std::string mapped(std::string_view a) {
  static const std::map<std::string, std::string, std::less<>> m = {{"jsmith@corp.internal", "john.smith@example.com"},
                                                                    {"mary@corp.internal", "mary@example.com"},
                                                                    {"\"j s\"@corp.internal", "js@example.com"}};
  auto it = m.find(a);
  return it == m.end() ? "" : it->second;
}

}  // namespace

TEST_CASE("address lists: the addr-spec of every mailbox, and nothing of the names around it") {
  CHECK(addresses(" jsmith@corp.internal") == V{"jsmith@corp.internal"});
  CHECK(addresses(" John Smith <jsmith@corp.internal>") == V{"jsmith@corp.internal"});
  CHECK(addresses(" \"Smith, John\" <jsmith@corp.internal> (work)") == V{"jsmith@corp.internal"});
  CHECK(addresses(" jsmith@corp.internal (John <x@y>, Smith)") == V{"jsmith@corp.internal"});
  CHECK(addresses(" a@x, \"B, b\" <b@y>,\r\n\tc@z") == V{"a@x", "b@y", "c@z"});
  CHECK(addresses(" Team: a@x, <b@y>;, c@z") == V{"a@x", "b@y", "c@z"});
  CHECK(addresses(" undisclosed-recipients:;") == V{});
  CHECK(addresses(" <>") == V{});
  CHECK(addresses(" < a@x >") == V{"a@x"});
  CHECK(addresses(" \"j s\"@corp.internal") == V{"\"j s\"@corp.internal"});
  CHECK(addresses(" John <\"j>s\"@x>") == V{"\"j>s\"@x"});
  CHECK(addresses(" a@x,,") == V{"a@x"});
  CHECK(addresses("") == V{});
  // Not readable: the field is left alone.
  CHECK(addresses(" \"John <jsmith@corp.internal>") == V{"UNPARSED"});  // unclosed quote
  CHECK(addresses(" (John jsmith@corp.internal") == V{"UNPARSED"});     // unclosed comment
  CHECK(addresses(" John <jsmith@corp.internal") == V{"UNPARSED"});     // unclosed angle
  CHECK(addresses(" John jsmith@corp.internal>") == V{"UNPARSED"});
  CHECK(addresses(" John jsmith@corp.internal") == V{"UNPARSED"});  // a name without angle brackets
  CHECK(addresses(" <a@x> <b@y>") == V{"UNPARSED"});
  CHECK(addresses(" <a@x> junk") == V{"UNPARSED"});
  CHECK(addresses(" <a (c) @x>") == V{"UNPARSED"});
  CHECK(addresses(" <@relay.test:a@x>") == V{"UNPARSED"});
  CHECK(addresses(" a@x; b@y") == V{"UNPARSED"});  // ';' outside a group
  CHECK(addresses(" g1: g2: a@x;;") == V{"UNPARSED"});
}

TEST_CASE("header fields: only the named fields' matching addresses change, byte for byte elsewhere") {
  std::string msg =
      "Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
      "from: \"Smith, John\" <JSMITH@corp.internal> (work)\r\n"
      "Sender: mary@corp.internal\r\n"
      "To: Bob <bob@other.test>,\r\n"
      " jsmith@corp.internal\r\n"
      "Reply-To: Team: mary@corp.internal, \"j s\"@corp.internal;\r\n"
      "Subject: jsmith@corp.internal\r\n"
      "Cc: \"broken <jsmith@corp.internal>\r\n"
      "\r\n"
      "From: jsmith@corp.internal in the body\r\n";
  auto lower = [](std::string_view a) {
    std::string s(a);
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return mapped(s.find('"') == std::string::npos ? s : std::string(a));
  };
  auto r = rewriteHeaderFields(msg, {"From", "Sender", "Reply-To"}, lower);
  CHECK(r.skipped.empty());
  REQUIRE(r.rewrites.size() == 4);
  CHECK(r.rewrites[0].from == "JSMITH@corp.internal");
  CHECK(r.rewrites[0].to == "john.smith@example.com");
  CHECK(r.rewrites[0].where == "header:From");  // the spelling asked for, not the message's "from"
  CHECK(r.rewrites[1].where == "header:Sender");
  CHECK(r.rewrites[2].where == "header:Reply-To");
  CHECK(r.rewrites[3].from == "\"j s\"@corp.internal");
  std::string out = applyEdits(msg, r.edits);
  CHECK(out ==
        "Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        "from: \"Smith, John\" <john.smith@example.com> (work)\r\n"
        "Sender: mary@example.com\r\n"
        "To: Bob <bob@other.test>,\r\n"
        " jsmith@corp.internal\r\n"
        "Reply-To: Team: mary@example.com, js@example.com;\r\n"
        "Subject: jsmith@corp.internal\r\n"
        "Cc: \"broken <jsmith@corp.internal>\r\n"
        "\r\n"
        "From: jsmith@corp.internal in the body\r\n");
  CHECK(r.edits[0].why == "header:From JSMITH@corp.internal rewritten to john.smith@example.com");

  // To and Cc: a folded address list, and a field that cannot be read (left alone, named).
  r = rewriteHeaderFields(msg, {"To", "Cc"}, lower);
  REQUIRE(r.rewrites.size() == 1);
  CHECK(r.rewrites[0].where == "header:To");
  CHECK(r.skipped == V{"Cc"});
  out = applyEdits(msg, r.edits);
  CHECK(out.find("To: Bob <bob@other.test>,\r\n john.smith@example.com\r\nReply-To") != std::string::npos);
  CHECK(out.find("Cc: \"broken <jsmith@corp.internal>\r\n") != std::string::npos);

  // Bare LF line ends and a message without a body.
  std::string lf = "From: jsmith@corp.internal\nTo: x@y\n";
  r = rewriteHeaderFields(lf, {"From"}, lower);
  CHECK(applyEdits(lf, r.edits) == "From: john.smith@example.com\nTo: x@y\n");
}

namespace {
// The filter run on `message` with a map of two entries: its edits applied, and what it
// says it rewrote.
struct FilterRun {
  std::string message;
  std::vector<moat::filters::AddressRewrite> rewrites;
};
FilterRun runFilter(const std::string& message, bool outbound) {
  const std::string path = moat::test::writeTempFile(
      "rewrite-filter", "jsmith@corp.internal john.smith@example.com\n@corp.internal @example.com\n");
  moat::policy::Errors errors;
  auto map = moat::policy::RewriteMap::load(path, errors);
  ::unlink(path.c_str());
  REQUIRE(map);
  auto filter = moat::filters::rewrite::makeRewriteFilter(map);
  REQUIRE(filter);
  auto ctx = std::make_shared<moat::filters::MessageContext>();
  ctx->fromRelayNetwork = outbound;
  ctx->relayed = outbound;
  ctx->mailFrom = "someone@far.test";
  ctx->message = message;
  std::optional<moat::filters::Result> result;
  // A small header section is read at once, without the loop.
  filter->run(ctx, moat::filters::Env{}, [&](moat::filters::Result r) { result = std::move(r); });
  REQUIRE(result);
  return {applyEdits(message, result->edits), ctx->rewrites};
}
}  // namespace

TEST_CASE("the filter rewrites the Resent- fields (RFC 5322 §3.6.6) as their counterparts") {
  const std::string msg =
      "Resent-From: John <jsmith@corp.internal>\r\n"
      "Resent-Sender: mary@corp.internal\r\n"
      "Resent-To: bob@corp.internal, friend@far.test\r\n"
      "Resent-Cc: Team: ann@corp.internal;\r\n"
      "Resent-Bcc: secret@corp.internal\r\n"
      "Resent-Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
      "From: jsmith@corp.internal\r\n"
      "To: Bob <bob@example.com>\r\n"
      "Subject: fwd\r\n"
      "\r\n"
      "Resent-From: jsmith@corp.internal\r\n";
  SECTION("outbound: INTERNAL to EXTERNAL in every address field") {
    auto r = runFilter(msg, true);
    CHECK(r.message ==
          "Resent-From: John <john.smith@example.com>\r\n"
          "Resent-Sender: mary@example.com\r\n"
          "Resent-To: bob@example.com, friend@far.test\r\n"
          "Resent-Cc: Team: ann@example.com;\r\n"
          "Resent-Bcc: secret@corp.internal\r\n"  // removed by the sender's MTA, not shown to recipients
          "Resent-Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
          "From: john.smith@example.com\r\n"
          "To: Bob <bob@example.com>\r\n"
          "Subject: fwd\r\n"
          "\r\n"
          "Resent-From: jsmith@corp.internal\r\n");
    std::vector<std::string> where;
    for (const auto& x : r.rewrites) where.push_back(x.where);
    CHECK(where ==
          V{"header:Resent-From", "header:Resent-Sender", "header:Resent-To", "header:Resent-Cc", "header:From"});
  }
  SECTION("inbound: EXTERNAL to INTERNAL in the recipient fields only") {
    const std::string in =
        "Resent-From: john.smith@example.com\r\n"
        "Resent-To: john.smith@example.com\r\n"
        "resent-cc: <mary@example.com>\r\n"
        "To: Bob <bob@example.com>\r\n"
        "\r\n"
        "x\r\n";
    auto r = runFilter(in, false);
    CHECK(r.message ==
          "Resent-From: john.smith@example.com\r\n"
          "Resent-To: jsmith@corp.internal\r\n"
          "resent-cc: <mary@corp.internal>\r\n"
          "To: Bob <bob@corp.internal>\r\n"
          "\r\n"
          "x\r\n");
    REQUIRE(r.rewrites.size() == 3);
    CHECK(r.rewrites[1].where == "header:Resent-Cc");
  }
}

TEST_CASE("outbound, a sender a milter set is rewritten after it, with a change of its own") {
  const std::string path = moat::test::writeTempFile("rewrite-filter", "jsmith@corp.internal john.smith@example.com\n");
  moat::policy::Errors errors;
  auto map = moat::policy::RewriteMap::load(path, errors);
  ::unlink(path.c_str());
  REQUIRE(map);
  auto filter = moat::filters::rewrite::makeRewriteFilter(map);
  REQUIRE(filter);
  using Kind = moat::filters::EnvelopeChange::Kind;
  auto run = [&](bool outbound) {
    auto ctx = std::make_shared<moat::filters::MessageContext>();
    ctx->fromRelayNetwork = outbound;
    ctx->relayed = outbound;
    ctx->mailFrom = "jsmith@corp.internal";
    static const std::string message = "Subject: x\r\n\r\nbody\r\n";
    ctx->message = message;
    // What the pipeline keeps of the milters' results: one changed the sender (with RET).
    moat::filters::EnvelopeChange chg;
    chg.kind = Kind::ChgFrom;
    chg.address = "jsmith@corp.internal";
    chg.ret = "HDRS";
    chg.source = "m";
    ctx->envelope = {chg};
    std::optional<moat::filters::Result> result;
    filter->run(ctx, moat::filters::Env{}, [&](moat::filters::Result r) { result = std::move(r); });
    REQUIRE(result);
    return std::make_pair(*result, ctx);
  };
  SECTION("outbound") {
    auto [r, ctx] = run(true);
    REQUIRE(r.envelope.size() == 1);
    CHECK(r.envelope[0].kind == Kind::ChgFrom);
    CHECK(r.envelope[0].address == "john.smith@example.com");
    CHECK(r.envelope[0].ret.empty());  // the milter's RET stays (the session keeps it)
    CHECK(r.envelope[0].source == "address_rewrite");
    REQUIRE(ctx->rewrites.size() == 1);
    CHECK(ctx->rewrites[0].where == "mail_from");
    CHECK(ctx->rewrites[0].to == "john.smith@example.com");
  }
  SECTION("inbound: left alone") {
    auto [r, ctx] = run(false);
    CHECK(r.envelope.empty());
    CHECK(ctx->rewrites.empty());
  }
}
