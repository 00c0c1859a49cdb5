// Tests for mta/smtp/data_decoder: end of data only at <CRLF>.<CRLF> (RFC 5321 §4.1.1.4),
// never at the SMTP-smuggling fakes of shared/conformance/smtp/smtp-smuggling-eod-sequences.yml,
// dot-unstuffing (§4.5.2), bare CR/LF policies (§2.3.8), the size bound, pipelined bytes after
// the mark, and Received: counting across chunks.
#include "mta/smtp/data_decoder.h"

#include <catch2/catch.hpp>
#include <fstream>
#include <map>
#include <sstream>

#include "tests/support/data_decoder_run.h"

using namespace moat::mta::smtp;

namespace {

using Result = moat::test::DataDecoderRun;

// Feeds `in` in pieces of `step` bytes (0: all at once), as a session reading the socket would.
Result decode(std::string_view in, BareLinePolicy policy, size_t step = 0, uint64_t maxSize = 1 << 20) {
  DataDecoder d(policy, maxSize);
  Result r;
  if (step == 0) step = in.size() ? in.size() : 1;
  for (size_t i = 0; i < in.size() && !d.done(); i += step) r.consumed += d.feed(in.substr(i, step), r.out);
  r.readState(d);
  return r;
}

// The two-piece feeds at every split point and the one-byte feed all equal the whole feed.
void requireSplitInvariant(std::string_view in, BareLinePolicy policy) {
  const Result whole = decode(in, policy);
  REQUIRE(decode(in, policy, 1) == whole);
  for (size_t cut = 1; cut < in.size(); ++cut) {
    DataDecoder d(policy, 1 << 20);
    Result r;
    r.consumed = d.feed(in.substr(0, cut), r.out);
    if (!d.done()) r.consumed += d.feed(in.substr(cut), r.out);
    INFO("cut at " << cut);
    REQUIRE(r.out == whole.out);
    REQUIRE(r.consumed == whole.consumed);
    REQUIRE(d.done() == whole.done);
  }
}

std::string unescapeYaml(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    switch (s[++i]) {
      case 'r': out += '\r'; break;
      case 'n': out += '\n'; break;
      case '0': out += '\0'; break;
      case 't': out += '\t'; break;
      default: out += s[i];
    }
  }
  return out;
}

// The lists of the YAML file: "key:" at column 0 starts one; `  - "..."` items follow.
std::map<std::string, std::vector<std::string>> readSequences() {
  std::ifstream f(MOAT_SHARED_DIR "/conformance/smtp/smtp-smuggling-eod-sequences.yml");
  REQUIRE(f.good());
  std::map<std::string, std::vector<std::string>> lists;
  std::string key, line;
  while (std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line[0] != ' ' && line[0] != '-') {
      key = line.substr(0, line.find(':'));
      continue;
    }
    size_t dash = line.find("- \"");
    if (dash == std::string::npos) continue;
    size_t close = line.rfind('"');
    lists[key].push_back(unescapeYaml(std::string_view(line).substr(dash + 3, close - dash - 3)));
  }
  return lists;
}

const char* kSmuggled =
    "mail FROM:<smuggled@attacker.example>\r\n"
    "rcpt TO:<victim@example.test>\r\n"
    "data\r\n"
    "From: smuggled@attacker.example\r\n"
    "Subject: smuggled\r\n"
    "\r\n"
    "NO SMUGGLING\r\n";

}  // namespace

TEST_CASE("a plain message ends at CRLF.CRLF and keeps its last CRLF") {
  Result r = decode("Subject: hi\r\n\r\nbody\r\n.\r\n", BareLinePolicy::Normalize);
  REQUIRE(r.done);
  REQUIRE(r.out == "Subject: hi\r\n\r\nbody\r\n");
  REQUIRE(r.consumed == 24);
  Result empty = decode(".\r\n", BareLinePolicy::Reject);  // the DATA line's CRLF is the first one
  REQUIRE(empty.done);
  REQUIRE(empty.out.empty());
  REQUIRE_FALSE(decode("body\r\n.", BareLinePolicy::Normalize).done);
  REQUIRE_FALSE(decode("body\r\n.\r", BareLinePolicy::Normalize).done);
  REQUIRE_FALSE(decode("body\r\n. \r\n", BareLinePolicy::Normalize).done);
}

TEST_CASE("dot-unstuffing removes one leading dot") {
  Result r = decode("..\r\n..leading\r\n...\r\nmid.dle\r\n.x\r\n.\r\n", BareLinePolicy::Normalize);
  REQUIRE(r.done);
  REQUIRE(r.out == ".\r\n.leading\r\n..\r\nmid.dle\r\nx\r\n");
}

TEST_CASE("bytes after the mark are left to the caller") {
  const std::string in = "a\r\n.\r\nQUIT\r\n";
  for (size_t step : {0, 1, 2, 3, 5}) {
    DataDecoder d(BareLinePolicy::Normalize, 1000);
    std::string out, rest;
    for (size_t i = 0; i < in.size(); i += step ? step : in.size()) {
      std::string_view piece = std::string_view(in).substr(i, step ? step : in.size());
      size_t used = d.feed(piece, out);
      if (d.done()) rest.append(piece.substr(used));
    }
    INFO("step " << step);
    REQUIRE(out == "a\r\n");
    REQUIRE(rest == "QUIT\r\n");
    REQUIRE(d.feed("more", out) == 0);
  }
}

TEST_CASE("the end mark is found at every split point") {
  for (const char* in : {"Subject: x\r\n\r\nline\r\n..dots\r\n.\r\nMAIL FROM:<a@b.example>\r\n",
                         ".\r\n", "a\r\n.\r\n", "a\n.\r\n.\r\nrest", "\r\r\n.\r\n", "a\r.\r\n.\r\nx",
                         "x\r\n.\r\r\n.\r\n", "\n.\n\r.\r\n.\r\r\n.\r\nafter"}) {
    requireSplitInvariant(in, BareLinePolicy::Normalize);
    requireSplitInvariant(in, BareLinePolicy::Reject);
  }
  const char nulInput[] = "x\r\n\0.\r\nmore\r\n.\r\nQUIT\r\n";
  const std::string withNul(nulInput, sizeof(nulInput) - 1);
  requireSplitInvariant(withNul, BareLinePolicy::Normalize);
  Result r = decode(withNul, BareLinePolicy::Normalize);
  REQUIRE(r.done);
  REQUIRE(r.nul);
  REQUIRE(r.consumed == withNul.size() - 6);
}

TEST_CASE("random bodies decode the same whole, byte by byte and at every split") {
  // Byte-by-byte feeding takes the one-line-at-a-time path; a whole read takes the runs
  // of whole lines: both must give the same bytes, flags and counts.
  uint32_t x = 2463534242u;
  auto next = [&] { return x ^= x << 13, x ^= x >> 17, x ^= x << 5; };
  const char alphabet[] = {'a', 'b', '.', '.', '\r', '\n', '\r', '\n', ':', ' ', '\0'};
  for (int round = 0; round < 300; ++round) {
    std::string in = round % 2 ? "Received: x\r\nSubject: y\r\n\r\n" : "";
    size_t len = next() % 120;
    for (size_t i = 0; i < len; ++i) {
      uint32_t r = next() % 16;
      in += r < 6 ? std::string("\r\n") : std::string(1, alphabet[r % sizeof alphabet]);
    }
    in += "\r\n.\r\nQUIT\r\n";
    INFO("input " << round);
    requireSplitInvariant(in, BareLinePolicy::Normalize);
    requireSplitInvariant(in, BareLinePolicy::Reject);
  }
}

TEST_CASE("bare LF and bare CR: normalized or rejected") {
  const std::string in = "a\nb\rc\r\r\nd\r\n.\r\n";
  Result n = decode(in, BareLinePolicy::Normalize);
  REQUIRE(n.done);
  REQUIRE(n.out == "a\r\nb\r\nc\r\n\r\nd\r\n");
  REQUIRE(n.bareLf);
  REQUIRE(n.bareCr);
  REQUIRE_FALSE(n.rejected);
  Result j = decode(in, BareLinePolicy::Reject);
  REQUIRE(j.done);
  REQUIRE(j.rejected);
  REQUIRE(j.out == "a\nb\rc\r\r\nd\r\n");
  Result clean = decode("a\r\n.\r\n", BareLinePolicy::Reject);
  REQUIRE_FALSE(clean.rejected);
  REQUIRE_FALSE(clean.bareLf);
}

TEST_CASE("every SMTP-smuggling sequence in the shared list fails to end DATA") {
  auto lists = readSequences();
  // The file is what the test believes it is: both lists, with their known members.
  REQUIRE(lists["inbound_eod_sequences"].size() == 7);
  REQUIRE(lists["outbound_eod_sequences"].size() == 9);
  REQUIRE(lists["inbound_eod_sequences"][0] == "\n.\n");
  REQUIRE(lists["outbound_eod_sequences"][6] == "\r\n.\r\r\n");
  REQUIRE(lists["outbound_eod_sequences"][8] == std::string("\r\n\0.\r\n", 6));
  for (const auto& [name, seqs] : lists) {
    for (const std::string& seq : seqs) {
      const std::string in = std::string("Subject: first\r\n\r\nfirst body") + seq + kSmuggled + "\r\n.\r\nQUIT\r\n";
      for (auto policy : {BareLinePolicy::Normalize, BareLinePolicy::Reject}) {
        for (size_t step : {0, 1, 2, 7}) {
          INFO(name << " #" << (&seq - seqs.data()) << " policy " << int(policy) << " step " << step);
          Result r = decode(in, policy, step);
          REQUIRE(r.done);
          REQUIRE(r.consumed == in.size() - 6);  // only "QUIT\r\n" is left: one message
          REQUIRE(r.out.find("NO SMUGGLING") != std::string::npos);
          REQUIRE(r.out.find("first body") != std::string::npos);
          if (seq.find('\0') != std::string::npos) REQUIRE(r.nul);
          const bool hasBareEnd = r.bareLf || r.bareCr;
          if (std::string_view(seq) != std::string_view("\r\n\0.\r\n", 6)) REQUIRE(hasBareEnd);
          REQUIRE(r.rejected == (policy == BareLinePolicy::Reject && hasBareEnd));
        }
      }
    }
  }
}

TEST_CASE("the size limit bounds memory but the end is still found") {
  const std::string line = "0123456789012345678901234567890123456789012345678901234567890123456789\r\n";
  std::string in;
  while (in.size() < 1'000'000) in += line;
  const size_t body = in.size();
  in += ".\r\nQUIT\r\n";
  DataDecoder d(BareLinePolicy::Normalize, 1000);
  std::string out;
  size_t consumed = 0;
  for (size_t i = 0; i < in.size() && !d.done(); i += 4096) {
    consumed += d.feed(std::string_view(in).substr(i, 4096), out);
    REQUIRE(out.size() <= 1000);
  }
  REQUIRE(d.done());
  REQUIRE(d.sizeExceeded());
  REQUIRE(d.size() == body);
  REQUIRE(out == in.substr(0, 1000));
  REQUIRE(consumed == in.size() - 6);
  DataDecoder exact(BareLinePolicy::Normalize, 6);
  std::string o2;
  exact.feed("abcd\r\n.\r\n", o2);
  REQUIRE_FALSE(exact.sizeExceeded());
  REQUIRE(o2 == "abcd\r\n");
}

TEST_CASE("Received: fields are counted in the header section only, across chunks and folds") {
  const std::string in =
      "Received: from a.example\r\n"
      "\tby b.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
      "RECEIVED : from c.example\r\n"  // obsolete WSP before the colon
      "X-Note: fold\r\n"
      " Received: not a field\r\n"
      "Received-SPF: pass\r\n"
      "received:x\r\n"
      "\r\n"
      "Received: in the body\r\n"
      ".\r\n";
  for (size_t step : {0, 1, 3, 10}) {
    DataDecoder d(BareLinePolicy::Normalize, 1 << 20);
    std::string out;
    for (size_t i = 0; i < in.size(); i += step ? step : in.size())
      d.feed(std::string_view(in).substr(i, step ? step : in.size()), out);
    INFO("step " << step);
    REQUIRE(d.done());
    REQUIRE(d.headersEnded());
    REQUIRE(d.receivedCount() == 3);
  }
  DataDecoder open(BareLinePolicy::Normalize, 1000);
  std::string out;
  open.feed("Received: a\r\nReceived: b\r\n", out);
  REQUIRE(open.receivedCount() == 2);
  REQUIRE_FALSE(open.headersEnded());
  open.feed("no colon here\r\nReceived: c\r\n", out);  // not a header field: the body began
  REQUIRE(open.headersEnded());
  REQUIRE(open.receivedCount() == 2);
}

TEST_CASE("many Received: fields are counted for loop detection") {
  std::string in;
  for (int i = 0; i < 150; ++i) in += "Received: from hop" + std::to_string(i) + ".example\r\n";
  in += "\r\nbody\r\n.\r\n";
  Result r = decode(in, BareLinePolicy::Normalize, 13);
  REQUIRE(r.done);
  REQUIRE(r.received == 150);
}

// BDAT (RFC 3030): octet-counted, so no end mark and no dot-stuffing; but bare CR/LF and the
// Received: count are handled as for DATA, or a bare CR could hide a header field.
TEST_CASE("chunked framing: no end mark, no unstuffing, bare CR/LF normalized, Received counted") {
  std::string in =
      "Received: from a\r\nX-A: b\rAuthentication-Results: mx.example.test; dkim=pass\n"
      "received: from b\r\n\r\n.leading dot\r\n.\r\nmore\r";
  std::string want =
      "Received: from a\r\nX-A: b\r\nAuthentication-Results: mx.example.test; dkim=pass\r\n"
      "received: from b\r\n\r\n.leading dot\r\n.\r\nmore\r\n";
  for (size_t step : {size_t(1), size_t(2), size_t(7), in.size()}) {
    INFO("step " << step);
    DataDecoder d(BareLinePolicy::Normalize, 1 << 20, Framing::Chunked);
    std::string out;
    size_t used = 0;
    for (size_t i = 0; i < in.size(); i += step) used += d.feed(std::string_view(in).substr(i, step), out);
    REQUIRE(used == in.size());
    REQUIRE_FALSE(d.done());
    d.finish(out);  // the trailing CR was bare
    REQUIRE(d.done());
    REQUIRE(out == want);
    REQUIRE(d.receivedCount() == 2);
    REQUIRE(d.sawBareCr());
    REQUIRE(d.sawBareLf());
  }
}

TEST_CASE("chunked framing: a CRLF split between chunks is one line end, the size bound holds") {
  DataDecoder d(BareLinePolicy::Normalize, 8, Framing::Chunked);
  std::string out;
  d.feed("abc\r", out);
  d.feed("\ndefghij", out);
  d.finish(out);
  REQUIRE(out == "abc\r\ndef");  // 8 octets
  REQUIRE_FALSE(d.sawBareCr());
  REQUIRE(d.sizeExceeded());
}

TEST_CASE("lineMark moves when a line ends, not on part of a line (the session's per-line data timeout)") {
  for (auto framing : {Framing::Dotted, Framing::Chunked}) {
    DataDecoder d(BareLinePolicy::Normalize, 1 << 20, framing);
    std::string out;
    uint64_t mark = d.lineMark();
    for (char c : std::string("Subject: trickled")) {  // a byte per read, never a line end
      d.feed(std::string_view(&c, 1), out);
      CHECK(d.lineMark() == mark);
    }
    d.feed("\r", out);
    CHECK(d.lineMark() == mark);  // a CR alone may yet be part of CRLF
    d.feed("\n", out);
    CHECK(d.lineMark() != mark);
    mark = d.lineMark();
    d.feed("\r\nbody line\r\nanother\r\nand a part", out);  // header end, then a run of lines
    CHECK(d.lineMark() != mark);
    mark = d.lineMark();
    d.feed(" of a line", out);
    CHECK(d.lineMark() == mark);
    d.feed("\n", out);  // a bare LF ends a line too
    CHECK(d.lineMark() != mark);
  }
}
