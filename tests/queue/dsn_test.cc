// Tests for queue/dsn: the built DSN is parsed back (a small MIME reader below) and checked
// against RFC 3464 / RFC 3462: multipart/report with report-type=delivery-status, three
// parts, the per-message and per-recipient fields, the original as message/rfc822 or, for
// RET=HDRS and oversized originals, text/rfc822-headers; CRLF only, lines ≤ 998, and no
// header injection through peer-supplied text.
#include "queue/dsn.h"

#include <algorithm>
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

// A report as buildDsn writes it: the message, its three parts, and the status blocks of
// the second (the per-message block first).
struct Report {
  Part top, human, original;
  std::vector<Part> blocks;
};
Report parseReport(const std::string& m) {
  Report r;
  r.top = parsePart(m);
  auto parts = splitMultipart(r.top.body, param(r.top.get("content-type"), "boundary"));
  REQUIRE(parts.size() == 3);
  r.human = parsePart(parts[0]);
  r.blocks = statusBlocks(parsePart(parts[1]).body);
  r.original = parsePart(parts[2]);
  return r;
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
    Part orig = parseReport(m).original;
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
  auto [top, human, original, blocks] = parseReport(buildDsn(in, kOriginal));
  REQUIRE(top.get("subject") == "Delayed Mail (still being retried)");
  REQUIRE(blocks.size() == 2);
  REQUIRE(blocks[1].get("action") == "delayed");
  REQUIRE(blocks[1].get("will-retry-until") == "Thu, 16 Nov 2023 22:13:20 +0000");
}

// RFC 3464 §2.3.4 / RFC 3463 §3.1: a recipient still being retried has a transient status,
// even when the reply that keeps it queued was a 5xx that is retried (552 to RCPT).
TEST_CASE("delay DSN: a permanent status class is reported as transient, the diagnostic as said") {
  DsnInput in = failedInput();
  in.rcpts.resize(1);
  in.rcpts[0].action = "delayed";
  in.rcpts[0].status = "5.2.2";
  in.rcpts[0].diagnostic = "smtp; 552 5.2.2 mailbox full";
  in.rcpts[0].willRetryUntilMs = 1'700'172'800'000;
  DsnRecipient odd = in.rcpts[0];
  odd.address = "odd@remote.test";
  odd.status = "2.0.0";  // never right for a delay: the generic transient status
  DsnRecipient fine = in.rcpts[0];
  fine.address = "fine@remote.test";
  fine.status = "4.4.1";
  in.rcpts.push_back(odd);
  in.rcpts.push_back(fine);
  auto [top, human, original, blocks] = parseReport(buildDsn(in, kOriginal));
  REQUIRE(blocks.size() == 4);
  REQUIRE(blocks[1].get("action") == "delayed");
  REQUIRE(blocks[1].get("status") == "4.2.2");
  REQUIRE(blocks[1].get("diagnostic-code") == "smtp; 552 5.2.2 mailbox full");
  REQUIRE(blocks[2].get("status") == "4.0.0");
  REQUIRE(blocks[3].get("status") == "4.4.1");

  in.rcpts.resize(1);  // a failed recipient keeps its 5.x.y
  in.rcpts[0].action = "failed";
  auto failed = parseReport(buildDsn(in, kOriginal));
  REQUIRE(failed.blocks[1].get("status") == "5.2.2");
}

TEST_CASE("success DSN (RFC 3461 NOTIFY=SUCCESS): delivered and relayed, 2.0.0, says so to the sender") {
  DsnInput in = failedInput();
  in.headersOnly = true;  // the queue manager returns the headers only with a success report
  in.rcpts[0].action = "relayed";
  in.rcpts[0].status = "2.0.0";
  in.rcpts[0].diagnostic = "smtp; 250 2.0.0 queued as 12345";
  in.rcpts[1].action = "delivered";
  in.rcpts[1].status = "2.0.0";
  in.rcpts[1].diagnostic = "X-Moat; 250 2.0.0 delivered to maildir";
  std::string m = buildDsn(in, kOriginal);
  checkLines(m);
  auto [top, human, original, blocks] = parseReport(m);
  REQUIRE(top.get("subject") == "Successful Mail Delivery Report");
  REQUIRE(human.body.find("delivered to the mailbox") != std::string::npos);
  REQUIRE(human.body.find("does not report delivery") != std::string::npos);
  REQUIRE(human.body.find("could not") == std::string::npos);
  REQUIRE(blocks.size() == 3);
  REQUIRE(blocks[0].get("original-envelope-id") == "ENV-42");
  REQUIRE(blocks[1].get("action") == "relayed");
  REQUIRE(blocks[1].get("status") == "2.0.0");
  REQUIRE(blocks[1].get("original-recipient") == "rfc822;R@remote.test");
  REQUIRE(blocks[1].get("remote-mta") == "dns; mx.remote.test");
  REQUIRE(blocks[2].get("action") == "delivered");
  REQUIRE(original.get("content-type") == "text/rfc822-headers");
  REQUIRE(original.get("content-description") == "Message Headers");  // nothing undelivered
}

TEST_CASE("expanded DSN (RFC 3461 §5.2.7.3): an alias passed the message on, 2.0.0") {
  DsnInput in = failedInput();
  in.headersOnly = true;
  in.rcpts.resize(1);
  in.rcpts[0].address = "sales@example.test";
  in.rcpts[0].orcpt = "rfc822;sales@example.test";
  in.rcpts[0].action = "expanded";
  in.rcpts[0].status = "2.0.0";
  in.rcpts[0].diagnostic = "X-Moat; 250 2.1.5 alias expanded";
  in.rcpts[0].remoteMta.clear();
  std::string m = buildDsn(in, kOriginal);
  checkLines(m);
  auto [top, human, original, blocks] = parseReport(m);
  REQUIRE(top.get("subject") == "Successful Mail Delivery Report");
  REQUIRE(human.body.find("marked \"expanded\" below took your message and passes it on") != std::string::npos);
  REQUIRE(human.body.find("could not") == std::string::npos);
  REQUIRE(blocks.size() == 2);
  REQUIRE(blocks[1].get("final-recipient") == "rfc822; sales@example.test");
  REQUIRE(blocks[1].get("original-recipient") == "rfc822;sales@example.test");
  REQUIRE(blocks[1].get("action") == "expanded");
  REQUIRE(blocks[1].get("status") == "2.0.0");
  REQUIRE(original.get("content-description") == "Message Headers");
}

TEST_CASE("NOTIFY: what a recipient asked for, and NOTIFY without SUCCESS") {
  using moat::queue::notifyWants;
  using moat::queue::notifyWithout;
  REQUIRE(notifyWants("", "FAILURE"));  // RFC 3461 §5.2.5-6: the default
  REQUIRE(notifyWants("", "DELAY"));
  REQUIRE_FALSE(notifyWants("", "SUCCESS"));
  REQUIRE(notifyWants("SUCCESS,FAILURE", "FAILURE"));
  REQUIRE(notifyWants("SUCCESS,FAILURE", "SUCCESS"));
  REQUIRE_FALSE(notifyWants("SUCCESS,FAILURE", "DELAY"));
  REQUIRE_FALSE(notifyWants("NEVER", "FAILURE"));
  REQUIRE_FALSE(notifyWants("SUCCESSFUL", "SUCCESS"));  // whole words only
  REQUIRE(notifyWithout("SUCCESS,FAILURE", "SUCCESS") == "FAILURE");
  REQUIRE(notifyWithout("DELAY,SUCCESS,FAILURE", "SUCCESS") == "DELAY,FAILURE");
  REQUIRE(notifyWithout("SUCCESS", "SUCCESS") == "NEVER");
  REQUIRE(notifyWithout("FAILURE", "SUCCESS") == "FAILURE");
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
  auto report = parseReport(m);
  REQUIRE(report.blocks[1].get("diagnostic-code").find(std::string(900, 'z')) != std::string::npos);
  // A line over 998 cannot travel as message/rfc822: headers only, folded.
  REQUIRE(report.original.get("content-type") == "text/rfc822-headers");
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

// --- RFC 6533: global DSNs for internationalized originals -------------------------------

namespace {

// UTF-8 text as hex escapes, none of them followed by a hex digit.
const std::string kJoerg = "j\xC3\xB6rg@example.test";          // jörg@
const std::string kMueller = "m\xC3\xBCller@b\xC3\xBCro.test";  // müller@büro.
const std::string kFFFD = "\xEF\xBF\xBD";                       // U+FFFD

const std::string kUtf8Original = "From: " + kJoerg + "\r\nTo: " + kMueller +
                                  "\r\nSubject: Gr\xC3\xBC\xC3\x9F Gott\r\nMessage-ID: <m2@example.test>\r\n"
                                  "\r\nDer Text.\r\n";

DsnInput globalInput() {
  DsnInput in = failedInput();
  in.international = true;
  in.sender = kJoerg;
  in.rcpts[0].address = kMueller;
  in.rcpts[0].orcpt = "utf-8;m\\x{FC}ller@b\\x{FC}ro.test";  // utf-8-addr-xtext (RFC 6533 §3)
  in.rcpts[0].diagnostic = "smtp; 550 5.1.1 <" + kMueller + ">: unbekannt";
  return in;  // rcpts[1] stays q@remote.test: ASCII
}

// Well-formed UTF-8 (RFC 3629), checked independently of the builder's own code.
bool validUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : c & (0x7F >> n);
    for (size_t k = 1; k < n; ++k) {
      auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = cp << 6 | (d & 0x3F);
    }
    static const uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

// Every line on its own must be well-formed: a break inside a sequence leaves two halves
// that are not.
void checkUtf8Lines(const std::string& m) {
  size_t start = 0;
  while (start < m.size()) {
    size_t nl = m.find("\r\n", start);
    INFO("line at offset " << start);
    REQUIRE(validUtf8(std::string_view(m).substr(start, nl - start)));
    start = nl + 2;
  }
}

bool eightBit(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return true;
  return false;
}

std::string noSpaces(std::string s) {
  s.erase(std::remove(s.begin(), s.end(), ' '), s.end());
  return s;
}

struct Dsn {
  Part top;
  std::vector<Part> parts;
};

Dsn parseDsn(const std::string& m) {
  Dsn d;
  d.top = parsePart(m);
  for (auto p : splitMultipart(d.top.body, param(d.top.get("content-type"), "boundary")))
    d.parts.push_back(parsePart(p));
  REQUIRE(d.parts.size() == 3);
  return d;
}

}  // namespace

TEST_CASE("global DSN (RFC 6533): global report types, utf-8 addresses, UTF-8 To:") {
  std::string m = buildDsn(globalInput(), kUtf8Original);
  checkLines(m);
  checkUtf8Lines(m);
  Dsn d = parseDsn(m);
  // RFC 6532 §3.2: the sender's address as it is, not "j?rg".
  REQUIRE(d.top.get("to") == "<" + kJoerg + ">");
  REQUIRE(lower(d.top.get("content-type")).starts_with("multipart/report"));
  REQUIRE(param(d.top.get("content-type"), "report-type") == "delivery-status");
  REQUIRE(d.top.get("content-transfer-encoding") == "8bit");

  REQUIRE(d.parts[0].get("content-type") == "text/plain; charset=utf-8");
  REQUIRE(d.parts[0].get("content-transfer-encoding") == "8bit");
  REQUIRE(d.parts[0].body.find("<" + kMueller + ">: failed: smtp; 550 5.1.1 <" + kMueller + ">: unbekannt\r\n") !=
          std::string::npos);

  REQUIRE(d.parts[1].get("content-type") == "message/global-delivery-status");
  REQUIRE(d.parts[1].get("content-transfer-encoding") == "8bit");
  auto blocks = statusBlocks(d.parts[1].body);
  REQUIRE(blocks.size() == 3);
  REQUIRE(blocks[1].get("final-recipient") == "utf-8; " + kMueller);
  // The ORCPT's utf-8-addr-xtext decoded: the utf-8-address form (RFC 6533 §3).
  REQUIRE(blocks[1].get("original-recipient") == "utf-8; " + kMueller);
  REQUIRE(blocks[1].get("diagnostic-code") == "smtp; 550 5.1.1 <" + kMueller + ">: unbekannt");
  // An ASCII address keeps the rfc822 type.
  REQUIRE(blocks[2].get("final-recipient") == "rfc822; q@remote.test");

  REQUIRE(d.parts[2].get("content-type") == "message/global");  // RFC 6532 §3.7
  REQUIRE(d.parts[2].get("content-transfer-encoding") == "8bit");
  REQUIRE(d.parts[2].body == kUtf8Original);

  // RET=HDRS, and an original over the size limit: message/global-headers (RFC 6533 §6.3).
  DsnInput in = globalInput();
  in.headersOnly = true;
  for (int round = 0; round < 2; ++round) {
    Dsn h = parseDsn(buildDsn(in, kUtf8Original));
    REQUIRE(h.parts[2].get("content-type") == "message/global-headers");
    REQUIRE(h.parts[2].body.find("Subject: Gr\xC3\xBC\xC3\x9F Gott\r\n") != std::string::npos);
    REQUIRE(h.parts[2].body.find("Der Text.") == std::string::npos);
    in.headersOnly = false;
    in.maxOriginalBytes = 20;
  }
}

TEST_CASE("global DSN of an all-ASCII SMTPUTF8 original: global types, 7-bit content") {
  DsnInput in = failedInput();
  in.international = true;
  std::string m = buildDsn(in, kOriginal);
  REQUIRE_FALSE(eightBit(m));
  Dsn d = parseDsn(m);
  REQUIRE(d.top.get("content-transfer-encoding") == "7bit");
  REQUIRE(d.parts[0].get("content-type") == "text/plain; charset=us-ascii");
  REQUIRE(d.parts[1].get("content-type") == "message/global-delivery-status");
  REQUIRE(d.parts[1].headers.count("content-transfer-encoding") == 0);
  REQUIRE(d.parts[2].get("content-type") == "message/global");
  auto blocks = statusBlocks(d.parts[1].body);
  REQUIRE(blocks[1].get("final-recipient") == "rfc822; r@remote.test");
  REQUIRE(blocks[1].get("original-recipient") == "rfc822;R@remote.test");
}

TEST_CASE("global DSN: bad UTF-8 and controls from peers are replaced, no line is injected") {
  DsnInput in = globalInput();
  // A lone lead byte, 0xFF, an overlong '/', a UTF-16 surrogate, CR LF, and U+0085 (NEL, a
  // C1 control some readers take for a line break).
  in.rcpts[0].diagnostic = "smtp; 550 bad \xC3(\xFF\xC0\xAF\xED\xA0\x80 end\r\nX-Evil: 1\r\n\r\n\xC2\x85next";
  in.rcpts[0].address = "m\xFCller@remote.test\r\nBcc: victim@example.test";  // a Latin-1 byte
  in.sender = "j\xF6rg@example.test\nX-Injected: 1";
  in.envid = "ENV\xE2\x82";  // a truncated sequence
  std::string m = buildDsn(in, kOriginal);
  checkLines(m);
  REQUIRE(validUtf8(m));
  for (const char* injected : {"\r\nX-Evil", "\r\nBcc:", "\r\nX-Injected", "\xC2\x85"})
    REQUIRE(m.find(injected) == std::string::npos);
  Dsn d = parseDsn(m);
  REQUIRE(d.top.get("to") == "<j" + kFFFD + "rg@example.test X-Injected: 1>");
  auto blocks = statusBlocks(d.parts[1].body);
  REQUIRE(blocks[0].get("original-envelope-id") == "ENV" + kFFFD + kFFFD);
  REQUIRE(blocks[1].get("final-recipient") == "utf-8; m" + kFFFD + "ller@remote.test Bcc: victim@example.test");
  std::string six;
  for (int i = 0; i < 6; ++i) six += kFFFD;
  REQUIRE(blocks[1].get("diagnostic-code") == "smtp; 550 bad " + kFFFD + "(" + six + " end X-Evil: 1 next");
  REQUIRE(d.parts[0].body.find("<m" + kFFFD + "ller@remote.test  Bcc: victim@example.test>: failed") !=
          std::string::npos);
}

TEST_CASE("global DSN: folding and line breaks never split a UTF-8 sequence") {
  DsnInput in = globalInput();
  // One "word" far over 998 octets of 2-, 3- and 4-byte characters: foldHeader must break it
  // hard, and the notification line must be broken too.
  std::string word;
  for (int i = 0; i < 400; ++i) word += "\xC3\xB6\xE5\xB1\xB1\xF0\x9F\x93\xA7";  // ö 山 📧
  in.rcpts[0].diagnostic = "smtp; 550 " + word;
  in.sender = word + "@example.test";
  // A header line over 998 octets: only the headers are returned, that line folded.
  std::string original = "Subject: " + word + "\r\n\r\nbody\r\n";
  for (size_t shift = 0; shift < 4; ++shift) {  // every alignment of the break against the characters
    in.rcpts[0].diagnostic = "smtp; 550 " + std::string(shift, 'x') + word;
    std::string m = buildDsn(in, std::string(shift, 'x') + original);
    checkLines(m);
    checkUtf8Lines(m);
    Dsn d = parseDsn(m);
    auto blocks = statusBlocks(d.parts[1].body);
    // Nothing is lost: unfolded, a hard break leaves only a space between the pieces.
    REQUIRE(noSpaces(blocks[1].get("diagnostic-code")) == "smtp;550" + std::string(shift, 'x') + word);
    REQUIRE(noSpaces(d.top.get("to")) == "<" + word + "@example.test>");
    REQUIRE(d.parts[2].get("content-type") == "message/global-headers");
  }
}

TEST_CASE("plain DSN: a non-ASCII address takes the utf-8-addr-xtext form, not '?'") {
  DsnInput in = failedInput();  // an ASCII original: not international
  // Non-ASCII of 2, 3 and 4 octets, and the ASCII that utf-8-addr-xtext escapes too.
  in.rcpts[0].address = "m\xC3\xBCller+\xE5\xB1\xB1=a\\b\xF0\x9F\x93\xA7@example.test";
  in.rcpts[0].orcpt = "utf-8;" + kMueller;                          // raw UTF-8: utf-8-addr-unitext
  in.rcpts[0].diagnostic = "smtp; 550 <" + kMueller + "> unknown";  // not an address field: '?'
  in.rcpts[1].address = "a+b=c@remote.test";                        // ASCII: as it always was
  in.rcpts[1].orcpt = "utf-8;j\\x{F6}rg@example.test";              // 7-bit already: as received
  std::string m = buildDsn(in, kOriginal);
  checkLines(m);
  REQUIRE_FALSE(eightBit(m));
  Dsn d = parseDsn(m);
  REQUIRE(d.top.get("content-transfer-encoding") == "7bit");
  REQUIRE(d.parts[0].get("content-type") == "text/plain; charset=us-ascii");
  REQUIRE(d.parts[1].get("content-type") == "message/delivery-status");
  REQUIRE(d.parts[2].get("content-type") == "message/rfc822");
  const std::string xtext = "m\\x{FC}ller\\x{2B}\\x{5C71}\\x{3D}a\\x{5C}b\\x{1F4E7}@example.test";
  auto blocks = statusBlocks(d.parts[1].body);
  REQUIRE(blocks[1].get("final-recipient") == "utf-8; " + xtext);
  REQUIRE(blocks[1].get("original-recipient") == "utf-8; m\\x{FC}ller@b\\x{FC}ro.test");
  REQUIRE(blocks[1].get("diagnostic-code") == "smtp; 550 <m??ller@b??ro.test> unknown");
  REQUIRE(blocks[2].get("final-recipient") == "rfc822; a+b=c@remote.test");
  REQUIRE(blocks[2].get("original-recipient") == "utf-8;j\\x{F6}rg@example.test");
  REQUIRE(d.parts[0].body.find("<" + xtext + ">: failed") != std::string::npos);
}

TEST_CASE("an ASCII DSN is byte for byte what it was before global DSNs") {
  // Built by the DSN builder as it was before RFC 6533 support, with the boundary (which
  // changes from call to call) written as BOUNDARY.
  std::string golden = R"(Date: Tue, 14 Nov 2023 22:15:00 +0000
From: MAILER-DAEMON@mx.example.test (Mail Delivery System)
To: <s@example.test>
Subject: Undelivered Mail Returned to Sender
Message-ID: <dsn-1@mx.example.test>
References: <m1@example.test>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
 boundary="BOUNDARY"
Content-Transfer-Encoding: 7bit

This is a MIME-encapsulated message.

--BOUNDARY
Content-Type: text/plain; charset=us-ascii
Content-Description: Notification

This is the mail system at host mx.example.test.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

<r@remote.test>: failed: smtp; 550 5.1.1 <r@remote.test>: no such user
<q@remote.test>: failed

--BOUNDARY
Content-Type: message/delivery-status
Content-Description: Delivery report

Reporting-MTA: dns; mx.example.test
Original-Envelope-Id: ENV-42
Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000

Final-Recipient: rfc822; r@remote.test
Original-Recipient: rfc822;R@remote.test
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.remote.test
Diagnostic-Code: smtp; 550 5.1.1 <r@remote.test>: no such user
Last-Attempt-Date: Tue, 14 Nov 2023 22:14:10 +0000

Final-Recipient: rfc822; q@remote.test
Action: failed
Status: 5.4.7
Last-Attempt-Date: Tue, 14 Nov 2023 22:14:10 +0000

--BOUNDARY
Content-Type: message/rfc822
Content-Transfer-Encoding: 7bit
Content-Description: Undelivered Message

From: Sender <s@example.test>
To: r@remote.test
Subject: hello
Message-ID: <m1@example.test>

The body text.

--BOUNDARY--
)";
  std::string crlf;
  for (char c : golden) crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
  DsnInput in = failedInput();
  in.messageId = "<dsn-1@mx.example.test>";
  std::string m = buildDsn(in, kOriginal);
  std::string boundary = param(parsePart(m).get("content-type"), "boundary");
  for (size_t p; (p = m.find(boundary)) != std::string::npos;) m.replace(p, boundary.size(), "BOUNDARY");
  REQUIRE(m == crlf);
}

// --- the 7-bit form of a global DSN, for a return path without SMTPUTF8 -------------------

namespace {

// Quoted-printable decoded (RFC 2045 §6.7), independently of the encoder: "=" CRLF is a soft
// break, "=HH" an octet.
std::string decodeQp(std::string_view s) {
  auto hex = [](char c) { return c <= '9' ? c - '0' : c - 'A' + 10; };
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '=') {
      out += s[i];
    } else if (s.substr(i + 1, 2) == "\r\n") {
      i += 2;
    } else {
      REQUIRE(i + 2 < s.size());
      REQUIRE(std::isxdigit(static_cast<unsigned char>(s[i + 1])));
      REQUIRE(std::isxdigit(static_cast<unsigned char>(s[i + 2])));
      out += static_cast<char>(hex(s[i + 1]) << 4 | hex(s[i + 2]));
      i += 2;
    }
  }
  return out;
}

// What the queue manager sends: its Received line, then the DSN.
const std::string kDsnPrefix =
    "Received: by mx.example.test (Moat) id DSN1 (DSN for ORIG1); Tue, 14 Nov 2023 22:15:00 +0000\r\n";

// A global DSN for the ASCII sender s@example.test (so its To: is ASCII), its recipient
// and ORCPT in UTF-8.
DsnInput asciiSenderInput() {
  DsnInput in = globalInput();
  in.sender = "s@example.test";
  return in;
}

std::string headersOf(const std::string& message) { return message.substr(0, message.find("\r\n\r\n") + 2); }

}  // namespace

TEST_CASE("global DSN downgraded for a return path without SMTPUTF8: a plain, 7-bit DSN") {
  DsnInput in = asciiSenderInput();
  std::string global = buildDsn(in, kUtf8Original);
  REQUIRE(eightBit(global));
  DsnDowngrade d = downgradeGlobalDsn(kDsnPrefix + global);
  INFO(d.reason);
  REQUIRE(d.ok);
  const std::string& m = d.message;
  REQUIRE_FALSE(eightBit(m));  // no byte over 0x7f anywhere
  checkLines(m);
  Dsn g = parseDsn(global), p = parseDsn(m);

  // The top-level header: as it was (Received, Date, From, Subject, Message-ID, References),
  // labelled 7bit; To: is the ASCII sender.
  REQUIRE(m.starts_with(kDsnPrefix));
  REQUIRE(p.top.get("to") == "<s@example.test>");
  REQUIRE(p.top.get("references") == "<m1@example.test>");
  for (const char* name : {"date", "from", "subject", "message-id", "auto-submitted", "mime-version", "content-type"})
    REQUIRE(p.top.get(name) == g.top.get(name));
  REQUIRE(lower(p.top.get("content-type")).starts_with("multipart/report"));
  REQUIRE(param(p.top.get("content-type"), "report-type") == "delivery-status");
  REQUIRE(p.top.get("content-transfer-encoding") == "7bit");

  // The notification: the same text, quoted-printable.
  REQUIRE(p.parts[0].get("content-type") == "text/plain; charset=utf-8");
  REQUIRE(p.parts[0].get("content-transfer-encoding") == "quoted-printable");
  REQUIRE(p.parts[0].get("content-description") == "Notification");
  REQUIRE(decodeQp(p.parts[0].body) == g.parts[0].body);

  // The report: message/delivery-status, 7bit; the UTF-8 addresses in their
  // utf-8-addr-xtext form (RFC 6533 §3), UTF-8 elsewhere '?' as in a plain report.
  REQUIRE(p.parts[1].get("content-type") == "message/delivery-status");
  REQUIRE(p.parts[1].headers.count("content-transfer-encoding") == 0);
  REQUIRE(p.parts[1].get("content-description") == "Delivery report");
  auto blocks = statusBlocks(p.parts[1].body);
  REQUIRE(blocks.size() == 3);
  REQUIRE(blocks[0].get("reporting-mta") == "dns; mx.example.test");
  REQUIRE(blocks[0].get("original-envelope-id") == "ENV-42");
  REQUIRE(blocks[0].get("arrival-date") == "Tue, 14 Nov 2023 22:13:20 +0000");
  REQUIRE(blocks[1].get("final-recipient") == "utf-8; m\\x{FC}ller@b\\x{FC}ro.test");
  REQUIRE(blocks[1].get("original-recipient") == "utf-8; m\\x{FC}ller@b\\x{FC}ro.test");
  REQUIRE(blocks[1].get("action") == "failed");
  REQUIRE(blocks[1].get("status") == "5.1.1");
  REQUIRE(blocks[1].get("remote-mta") == "dns; mx.remote.test");
  REQUIRE(blocks[1].get("diagnostic-code") == "smtp; 550 5.1.1 <m??ller@b??ro.test>: unbekannt");
  REQUIRE(blocks[1].get("last-attempt-date") == "Tue, 14 Nov 2023 22:14:10 +0000");
  REQUIRE(blocks[2].get("final-recipient") == "rfc822; q@remote.test");
  REQUIRE(blocks[2].get("status") == "5.4.7");
  // No "utf-8" type holds anything but utf-8-addr-xtext: QCHARs and \x{HEX} only.
  for (const auto& block : blocks)
    for (const auto& [name, value] : block.headers)
      if (value.starts_with("utf-8;"))
        for (char c : value.substr(7)) REQUIRE((c > ' ' && c < 0x7f && c != '+' && c != '='));
  // Field for field what buildDsn writes in a plain report of the same recipients, but the
  // ORCPT, which the plain report returns as received (already xtext, without a space).
  DsnInput plainIn = in;
  plainIn.international = false;
  auto plainBlocks = statusBlocks(parseDsn(buildDsn(plainIn, kUtf8Original)).parts[1].body);
  REQUIRE(plainBlocks.size() == blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i)
    for (const auto& [name, value] : plainBlocks[i].headers)
      if (name != "original-recipient") REQUIRE(blocks[i].get(name) == value);

  // The original: its header section, text/rfc822-headers, quoted-printable UTF-8; no body.
  REQUIRE(p.parts[2].get("content-type") == "text/rfc822-headers; charset=utf-8");
  REQUIRE(p.parts[2].get("content-transfer-encoding") == "quoted-printable");
  REQUIRE(p.parts[2].get("content-description") == "Undelivered Message Headers");
  REQUIRE(decodeQp(p.parts[2].body) == headersOf(kUtf8Original));
  REQUIRE(p.parts[2].body.find("Subject: Gr=C3=BC=C3=9F Gott\r\n") != std::string::npos);
  REQUIRE(m.find("Der Text.") == std::string::npos);
}

TEST_CASE("downgraded DSN: RET=HDRS, oversized and all-ASCII originals, a delay DSN") {
  DsnInput in = asciiSenderInput();
  in.headersOnly = true;  // message/global-headers
  for (int round = 0; round < 2; ++round) {
    DsnDowngrade d = downgradeGlobalDsn(buildDsn(in, kUtf8Original));  // without a prefix too
    INFO(d.reason);
    REQUIRE(d.ok);
    REQUIRE_FALSE(eightBit(d.message));
    Dsn p = parseDsn(d.message);
    REQUIRE(p.parts[2].get("content-type") == "text/rfc822-headers; charset=utf-8");
    REQUIRE(decodeQp(p.parts[2].body) == headersOf(kUtf8Original));
    in.headersOnly = false;
    in.maxOriginalBytes = 20;  // second round: too big, message/global-headers as well
  }

  // An original with ASCII headers: they go 7bit as they are.
  in = asciiSenderInput();
  in.rcpts[0].action = "delayed";
  in.rcpts[0].status = "4.4.1";
  in.rcpts[0].willRetryUntilMs = 1'700'172'800'000;
  std::string original = "Subject: plain\r\n\r\nK\xC3\xA4se\r\n";
  DsnDowngrade d = downgradeGlobalDsn(buildDsn(in, original));
  REQUIRE(d.ok);
  REQUIRE_FALSE(eightBit(d.message));
  Dsn p = parseDsn(d.message);
  REQUIRE(p.top.get("subject") == "Undelivered Mail Returned to Sender");  // rcpts[1] failed
  REQUIRE(p.parts[2].get("content-type") == "text/rfc822-headers");
  REQUIRE(p.parts[2].get("content-transfer-encoding") == "7bit");
  REQUIRE(p.parts[2].body == "Subject: plain\r\n");
  auto blocks = statusBlocks(p.parts[1].body);
  REQUIRE(blocks[1].get("action") == "delayed");
  REQUIRE(blocks[1].get("will-retry-until") == "Thu, 16 Nov 2023 22:13:20 +0000");
}

TEST_CASE("downgraded DSN: a UTF-8 References is left out, a UTF-8 To: or another message is refused") {
  DsnInput in = asciiSenderInput();
  in.originalMessageId =
      "<gr\xC3\xBC\xC3\x9F"
      "e@example.test>";
  DsnDowngrade d = downgradeGlobalDsn(kDsnPrefix + buildDsn(in, kUtf8Original));
  REQUIRE(d.ok);
  REQUIRE_FALSE(eightBit(d.message));
  REQUIRE(parseDsn(d.message).top.headers.count("references") == 0);

  // A UTF-8 sender: its address is the envelope recipient too, which has no 7-bit form.
  d = downgradeGlobalDsn(buildDsn(globalInput(), kUtf8Original));
  REQUIRE_FALSE(d.ok);
  REQUIRE(d.reason == "UTF-8 in the header field To");
  REQUIRE(d.message.empty());

  // Not a global DSN of Moat's: a plain one, another multipart/report, a message, nothing.
  DsnInput plainIn = failedInput();
  REQUIRE_FALSE(downgradeGlobalDsn(buildDsn(plainIn, kOriginal)).ok);
  std::string other = buildDsn(asciiSenderInput(), kUtf8Original);
  size_t b = other.find("=_moat_dsn_");
  REQUIRE_FALSE(downgradeGlobalDsn(std::string(other).replace(b, 11, "=_other_ds_")).ok);
  REQUIRE_FALSE(downgradeGlobalDsn(kUtf8Original).ok);
  REQUIRE_FALSE(downgradeGlobalDsn("").ok);
  REQUIRE(downgradeGlobalDsn("").reason == "not a DSN: no header section");
}

TEST_CASE("downgraded DSN: truncated or damaged input is refused or stays 7-bit, never read out of bounds") {
  DsnInput in = asciiSenderInput();
  in.originalMessageId =
      "<gr\xC3\xBC\xC3\x9F"
      "e@example.test>";
  std::string global = kDsnPrefix + buildDsn(in, kUtf8Original);
  size_t ok = 0;
  for (size_t cut = 0; cut <= global.size(); ++cut) {
    DsnDowngrade d = downgradeGlobalDsn(std::string_view(global).substr(0, cut));
    if (d.ok) {
      ++ok;
      REQUIRE_FALSE(eightBit(d.message));
    } else {
      REQUIRE_FALSE(d.reason.empty());
    }
  }
  REQUIRE(ok >= 1);  // the whole one (a cut in the epilogue still converts)
  for (size_t at = 0; at < global.size(); ++at) {
    for (char c : {'\r', '\n', '-', ':', ' ', '\x80'}) {
      std::string bad = global;
      bad[at] = c;
      DsnDowngrade d = downgradeGlobalDsn(bad);
      if (d.ok) {
        REQUIRE_FALSE(eightBit(d.message));
        size_t n = 0;
        std::string boundary = param(parsePart(d.message).get("content-type"), "boundary");
        for (size_t p = d.message.find("--" + boundary); p != std::string::npos;
             p = d.message.find("--" + boundary, p + 1))
          ++n;
        REQUIRE(n == 4);
      }
    }
  }
}

TEST_CASE("downgraded DSN: long UTF-8 fields and header lines stay within line limits") {
  DsnInput in = asciiSenderInput();
  std::string word;
  for (int i = 0; i < 400; ++i) word += "\xC3\xB6\xE5\xB1\xB1\xF0\x9F\x93\xA7";  // ö 山 📧
  in.rcpts[0].diagnostic = "smtp; 550 " + word;
  in.rcpts[0].address = std::string(60, 'x') + "\xC3\xB6@example.test";
  std::string original = "Subject: " + word + "\r\nX-Long: " + std::string(2000, 'h') + "\r\n\r\nbody\r\n";
  DsnDowngrade d = downgradeGlobalDsn(buildDsn(in, original));
  REQUIRE(d.ok);
  REQUIRE_FALSE(eightBit(d.message));
  checkLines(d.message);
  Dsn p = parseDsn(d.message);
  // Quoted-printable lines are at most 76 characters (RFC 2045 §6.7).
  for (size_t i : {0, 2}) {
    std::string_view body = p.parts[i].body;
    for (size_t start = 0, nl; start < body.size(); start = nl + 2) {
      nl = body.find("\r\n", start);
      if (nl == std::string_view::npos) nl = body.size();
      REQUIRE(nl - start <= 76);
    }
  }
  auto blocks = statusBlocks(p.parts[1].body);
  REQUIRE(blocks[1].get("final-recipient") == "utf-8; " + std::string(60, 'x') + "\\x{F6}@example.test");
  // As in a plain report: each octet of UTF-8 a '?'; unfolded, a hard break leaves a space.
  REQUIRE(noSpaces(blocks[1].get("diagnostic-code")) == "smtp;550" + std::string(word.size(), '?'));
}

TEST_CASE("the ORCPT a relay adds is the address as received, in xtext (RFC 3461 §4.2)") {
  using moat::queue::defaultOrcpt;
  REQUIRE(defaultOrcpt("user@example.test") == "rfc822;user@example.test");
  REQUIRE(defaultOrcpt("a+b=c@example.test") == "rfc822;a+2Bb+3Dc@example.test");
  REQUIRE(defaultOrcpt("\"sp ace\"@example.test") == "rfc822;\"sp+20ace\"@example.test");
  REQUIRE(defaultOrcpt("j\xc3\xb6rg@example.test").empty());  // UTF-8: goes without
  REQUIRE(defaultOrcpt("").empty());
}
