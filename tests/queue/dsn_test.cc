// Tests for queue/dsn: the built DSN is parsed back (a small MIME reader below) and checked
// against RFC 3464 / RFC 3462: multipart/report with report-type=delivery-status, three
// parts, the per-message and per-recipient fields, the original as message/rfc822 or, for
// RET=HDRS and oversized originals, text/rfc822-headers; CRLF only, lines ≤ 998, and no
// header injection through peer-supplied text.
#include "queue/dsn.h"

#include <catch2/catch.hpp>
#include <map>

using namespace moat::queue;

namespace {

struct Part {
  std::multimap<std::string, std::string> headers;  // lower-case names, unfolded values
  std::string body;
  std::string get(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Parses "headers CRLF CRLF body" with unfolding.
Part parsePart(std::string_view text) {
  Part p;
  size_t end = text.find("\r\n\r\n");
  std::string_view hdrs = text.substr(0, end == std::string_view::npos ? text.size() : end + 2);
  p.body = end == std::string_view::npos ? "" : std::string(text.substr(end + 4));
  std::string name, value;
  auto flush = [&] {
    if (!name.empty()) p.headers.emplace(lower(name), value);
    name.clear();
  };
  while (!hdrs.empty()) {
    size_t nl = hdrs.find("\r\n");
    std::string_view line = hdrs.substr(0, nl);
    hdrs.remove_prefix(nl + 2);
    if (!line.empty() && (line[0] == ' ' || line[0] == '\t')) {
      value += std::string(line);
      continue;
    }
    flush();
    size_t colon = line.find(':');
    REQUIRE(colon != std::string_view::npos);
    name = std::string(line.substr(0, colon));
    value = std::string(line.substr(colon + 1));
    while (!value.empty() && value[0] == ' ') value.erase(0, 1);
  }
  flush();
  return p;
}

std::string param(const std::string& ct, const std::string& key) {
  size_t p = lower(ct).find(key + "=");
  REQUIRE(p != std::string::npos);
  std::string v = ct.substr(p + key.size() + 1);
  if (!v.empty() && v[0] == '"') return v.substr(1, v.find('"', 1) - 1);
  return v.substr(0, v.find(';'));
}

std::vector<std::string_view> splitMultipart(std::string_view body, const std::string& boundary) {
  std::vector<std::string_view> parts;
  std::string delim = "\r\n--" + boundary;
  std::string_view b = body;
  size_t first = b.find("--" + boundary + "\r\n");
  REQUIRE(first != std::string_view::npos);
  b.remove_prefix(first + boundary.size() + 4);
  for (;;) {
    size_t next = b.find(delim);
    REQUIRE(next != std::string_view::npos);
    parts.push_back(b.substr(0, next));
    b.remove_prefix(next + delim.size());
    if (b.substr(0, 2) == "--") break;
    REQUIRE(b.substr(0, 2) == "\r\n");
    b.remove_prefix(2);
  }
  return parts;
}

// delivery-status body: blocks of fields separated by blank lines.
std::vector<Part> statusBlocks(const std::string& body) {
  std::vector<Part> blocks;
  size_t start = 0;
  for (;;) {
    size_t end = body.find("\r\n\r\n", start);
    std::string block = body.substr(start, end == std::string::npos ? std::string::npos : end + 2 - start);
    if (!block.empty()) blocks.push_back(parsePart(block + "\r\n"));
    if (end == std::string::npos) break;
    start = end + 4;
  }
  return blocks;
}

void checkLines(const std::string& m) {
  for (size_t i = 0; i < m.size(); ++i) {
    if (m[i] == '\n') REQUIRE((i > 0 && m[i - 1] == '\r'));
    if (m[i] == '\r') REQUIRE((i + 1 < m.size() && m[i + 1] == '\n'));
  }
  size_t start = 0;
  while (start < m.size()) {
    size_t nl = m.find("\r\n", start);
    REQUIRE(nl != std::string::npos);
    REQUIRE(nl - start <= 998);
    start = nl + 2;
  }
}

const std::string kOriginal =
    "From: Sender <s@example.test>\r\nTo: r@remote.test\r\nSubject: hello\r\nMessage-ID: <m1@example.test>\r\n"
    "\r\nThe body text.\r\n";

DsnInput failedInput() {
  DsnInput in;
  in.reportingMta = "mx.example.test";
  in.sender = "s@example.test";
  in.envid = "ENV-42";
  in.originalMessageId = "<m1@example.test>";
  in.arrivalMs = 1'700'000'000'000;
  in.nowMs = 1'700'000'100'000;
  DsnRecipient a;
  a.address = "r@remote.test";
  a.orcpt = "rfc822;R@remote.test";
  a.action = "failed";
  a.status = "5.1.1";
  a.diagnostic = "smtp; 550 5.1.1 <r@remote.test>: no such user";
  a.remoteMta = "mx.remote.test";
  a.lastAttemptMs = 1'700'000'050'000;
  DsnRecipient b = a;
  b.address = "q@remote.test";
  b.orcpt = "";
  b.status = "5.4.7";
  b.diagnostic = "";
  b.remoteMta = "";
  in.rcpts = {a, b};
  return in;
}

}  // namespace

TEST_CASE("DSN for a failed delivery is an RFC 3464 multipart/report") {
  std::string m = buildDsn(failedInput(), kOriginal);
  checkLines(m);
  Part top = parsePart(m);
  REQUIRE(top.get("from").starts_with("MAILER-DAEMON@mx.example.test"));
  REQUIRE(top.get("to") == "<s@example.test>");
  REQUIRE(top.get("subject") == "Undelivered Mail Returned to Sender");
  REQUIRE(top.get("auto-submitted") == "auto-replied");
  REQUIRE(top.get("mime-version") == "1.0");
  REQUIRE(top.get("date") == "Tue, 14 Nov 2023 22:15:00 +0000");
  REQUIRE(top.get("message-id").ends_with("@mx.example.test>"));
  std::string ct = top.get("content-type");
  REQUIRE(lower(ct).starts_with("multipart/report"));
  REQUIRE(param(ct, "report-type") == "delivery-status");
  auto parts = splitMultipart(top.body, param(ct, "boundary"));
  REQUIRE(parts.size() == 3);

  Part human = parsePart(parts[0]);
  REQUIRE(human.get("content-type").starts_with("text/plain"));
  REQUIRE(human.body.find("<r@remote.test>: failed") != std::string::npos);

  Part status = parsePart(parts[1]);
  REQUIRE(status.get("content-type") == "message/delivery-status");
  auto blocks = statusBlocks(status.body);
  REQUIRE(blocks.size() == 3);
  REQUIRE(blocks[0].get("reporting-mta") == "dns; mx.example.test");
  REQUIRE(blocks[0].get("original-envelope-id") == "ENV-42");
  REQUIRE(blocks[0].get("arrival-date") == "Tue, 14 Nov 2023 22:13:20 +0000");
  REQUIRE(blocks[1].get("final-recipient") == "rfc822; r@remote.test");
  REQUIRE(blocks[1].get("original-recipient") == "rfc822;R@remote.test");
  REQUIRE(blocks[1].get("action") == "failed");
  REQUIRE(blocks[1].get("status") == "5.1.1");
  REQUIRE(blocks[1].get("remote-mta") == "dns; mx.remote.test");
  REQUIRE(blocks[1].get("diagnostic-code") == "smtp; 550 5.1.1 <r@remote.test>: no such user");
  REQUIRE(blocks[1].get("last-attempt-date") == "Tue, 14 Nov 2023 22:14:10 +0000");
  REQUIRE(blocks[1].get("will-retry-until").empty());
  REQUIRE(blocks[2].get("final-recipient") == "rfc822; q@remote.test");
  REQUIRE(blocks[2].get("status") == "5.4.7");
  REQUIRE(blocks[2].headers.count("remote-mta") == 0);

  Part orig = parsePart(parts[2]);
  REQUIRE(orig.get("content-type") == "message/rfc822");
  REQUIRE(orig.body == kOriginal);
}

TEST_CASE("DSN with RET=HDRS or an oversized original returns only the headers") {
  DsnInput in = failedInput();
  in.headersOnly = true;
  for (int round = 0; round < 2; ++round) {
    std::string m = buildDsn(in, kOriginal);
    checkLines(m);
    Part top = parsePart(m);
    auto parts = splitMultipart(top.body, param(top.get("content-type"), "boundary"));
    REQUIRE(parts.size() == 3);
    Part orig = parsePart(parts[2]);
    REQUIRE(orig.get("content-type") == "text/rfc822-headers");
    REQUIRE(orig.body.find("Subject: hello\r\n") != std::string::npos);
    REQUIRE(orig.body.find("The body text.") == std::string::npos);
    in.headersOnly = false;
    in.maxOriginalBytes = 20;  // second round: too big
  }
}

TEST_CASE("delay DSN names the retry horizon") {
  DsnInput in = failedInput();
  in.rcpts.resize(1);
  in.rcpts[0].action = "delayed";
  in.rcpts[0].status = "4.4.1";
  in.rcpts[0].willRetryUntilMs = 1'700'172'800'000;
  std::string m = buildDsn(in, kOriginal);
  Part top = parsePart(m);
  REQUIRE(top.get("subject") == "Delayed Mail (still being retried)");
  auto parts = splitMultipart(top.body, param(top.get("content-type"), "boundary"));
  auto blocks = statusBlocks(parsePart(parts[1]).body);
  REQUIRE(blocks.size() == 2);
  REQUIRE(blocks[1].get("action") == "delayed");
  REQUIRE(blocks[1].get("will-retry-until") == "Thu, 16 Nov 2023 22:13:20 +0000");
}

TEST_CASE("DSN: peer text cannot inject lines, long fields are folded under 998") {
  DsnInput in = failedInput();
  in.rcpts[0].diagnostic = "smtp; 550 bad\r\nX-Evil: 1\r\n\r\nboundary" + std::string(2500, 'z') + " end";
  in.rcpts[0].address = "r@remote.test\r\nBcc: victim@example.test";
  std::string original = "Subject: x\r\nX-Long: " + std::string(1500, 'h') + "\r\n\r\nbody\r\n";
  std::string m = buildDsn(in, original);
  checkLines(m);
  REQUIRE(m.find("\r\nX-Evil") == std::string::npos);
  REQUIRE(m.find("\r\nBcc:") == std::string::npos);
  Part top = parsePart(m);
  auto parts = splitMultipart(top.body, param(top.get("content-type"), "boundary"));
  REQUIRE(parts.size() == 3);
  auto blocks = statusBlocks(parsePart(parts[1]).body);
  REQUIRE(blocks[1].get("diagnostic-code").find(std::string(900, 'z')) != std::string::npos);
  // A line over 998 cannot travel as message/rfc822: headers only, folded.
  REQUIRE(parsePart(parts[2]).get("content-type") == "text/rfc822-headers");
}

TEST_CASE("foldHeader folds at spaces near 78 columns") {
  std::string v;
  for (int i = 0; i < 30; ++i) v += "word" + std::to_string(i) + " ";
  std::string h = foldHeader("Subject", v);
  REQUIRE(h.ends_with("\r\n"));
  size_t lines = 0, start = 0;
  while (start < h.size()) {
    size_t nl = h.find("\r\n", start);
    REQUIRE(nl - start <= 78);
    if (lines > 0) REQUIRE(h[start] == ' ');
    ++lines;
    start = nl + 2;
  }
  REQUIRE(lines > 1);
}
