// tests/fuzz/fuzz_smtp_command.cc — libFuzzer target for the SMTP command phase: LineReader
// fed in input-derived chunks, every line through parseCommand (with and without SMTPUTF8)
// and every reply through formatReply; the same lines drive AUTH's SASL exchange (each line
// starts one, or answers the challenge before it). Input layout: byte 0 = flags (bit 0: utf8, bits 1..7:
// the line limit), byte 1 = chunking seed, the rest = bytes from the peer.
// Invariants: the lines equal those of a plain reference splitter over the whole input;
// no line exceeds the limit or holds a LF; memory stays under the limit after draining;
// accepted MAIL/RCPT addresses are valid mailboxes; replies are well-formed 5xx lines; SASL
// yields only bounded, well-formed credentials and well-formed 5xx refusals.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mta/runtime/scan.h"
#include "mta/smtp/protocol.h"
#include "mta/smtp/sasl.h"
#include "tests/fuzz/fuzz_check.h"

using namespace moat::mta::smtp;

namespace {

const std::string kTooLong = std::string("\0<TOO LONG>", 11);

// The lines a correct reader yields for the whole input: split on LF, one CR before it
// dropped, a line over the limit (or an unterminated tail at the limit) reported as too long.
std::vector<std::string> referenceLines(std::string_view in, size_t maxLine) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t lf = in.find('\n', start);
    if (lf == std::string_view::npos) {
      if (in.size() - start >= maxLine) out.push_back(kTooLong);
      return out;
    }
    std::string_view line = in.substr(start, lf - start);
    if (line.size() + 1 > maxLine) {
      out.push_back(kTooLong);
    } else {
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      out.emplace_back(line);
    }
    start = lf + 1;
  }
}

void checkReply(const Reply& r) {
  FUZZ_CHECK(r.code >= 500 && r.code <= 599);
  FUZZ_CHECK(!r.enhanced.empty() && r.enhanced[0] == '5');
  std::string wire = formatReply(r);
  FUZZ_CHECK(wire.size() >= 5 && wire.compare(wire.size() - 2, 2, "\r\n") == 0);
  FUZZ_CHECK(wire.find('\n') == wire.size() - 1);  // one line
  FUZZ_CHECK(wire.find('\r') == wire.size() - 2);
  FUZZ_CHECK(wire.compare(0, 3, std::to_string(r.code)) == 0);
}

void checkCommand(const Command& c, bool utf8) {
  FUZZ_CHECK(c.verb != Verb::Unknown);
  FUZZ_CHECK(parseVerb(c.verbText) == c.verb);
  if (c.verb == Verb::Mail || c.verb == Verb::Rcpt) {
    const bool u = utf8 || (c.verb == Verb::Mail && findParam(c, "SMTPUTF8") != nullptr);
    const bool postmaster = c.verb == Verb::Rcpt && c.address.size() == 10 && domainOf(c.address).empty();
    if (c.address.empty()) {
      FUZZ_CHECK(c.verb == Verb::Mail);
    } else if (!postmaster) {
      FUZZ_CHECK(isValidMailbox(c.address, u));
      FUZZ_CHECK(c.address.size() <= 254);
      FUZZ_CHECK(isValidDomain(c.address.substr(c.address.rfind('@') + 1), u));
    }
    for (const Param& p : c.params) {
      FUZZ_CHECK(!p.key.empty());
      FUZZ_CHECK(findParam(c, p.key) == &p);  // no duplicates
    }
  } else {
    FUZZ_CHECK(c.address.empty() && c.params.empty());
  }
  if (c.verb != Verb::Bdat) FUZZ_CHECK(c.chunkSize == 0 && !c.last);
}

// One SASL step: a challenge is base64 (or empty), credentials are within RFC 4616's bounds,
// a refusal is a 5xx with an enhanced code. Returns whether the exchange goes on.
bool checkSasl(const SaslStep& st) {
  switch (st.kind) {
    case SaslStep::Kind::Challenge:
      FUZZ_CHECK(st.challenge.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") ==
                 std::string::npos);
      return true;
    case SaslStep::Kind::Done:
      FUZZ_CHECK(!st.credentials.user.empty() && st.credentials.user.size() <= 255);
      FUZZ_CHECK(moat::mta::isPrintableUtf8(st.credentials.user));
      FUZZ_CHECK(!st.credentials.password.empty() && st.credentials.password.size() <= 1024);
      FUZZ_CHECK(st.credentials.password.find('\0') == std::string::npos);
      return false;
    case SaslStep::Kind::Refused:
      FUZZ_CHECK(st.reply.code >= 500 && st.reply.code <= 599);
      FUZZ_CHECK(!st.reply.enhanced.empty() && st.reply.enhanced[0] == '5');
      return false;
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const bool utf8 = data[0] & 1;
  const size_t maxLine = (data[0] >> 1) == 127 ? 2048 : 3 + (data[0] >> 1) * 8;
  uint32_t seed = data[1] * 2654435761u + 1;
  std::string_view in(reinterpret_cast<const char*>(data) + 2, size - 2);

  LineReader reader(maxLine);
  SaslServer sasl;
  bool saslActive = false;
  std::vector<std::string> got;
  std::string line;
  for (size_t i = 0; i < in.size();) {
    seed = seed * 1103515245u + 12345u;
    size_t n = std::min<size_t>(in.size() - i, 1 + (seed >> 16) % 97);
    reader.feed(in.substr(i, n));
    i += n;
    for (int guard = 0; guard <= static_cast<int>(in.size()) + 1; ++guard) {
      LineReader::Status st = reader.next(line);
      if (st == LineReader::Status::NeedMore) break;
      if (st == LineReader::Status::TooLong) {
        got.push_back(kTooLong);
        continue;
      }
      FUZZ_CHECK(line.size() + 1 <= maxLine);
      FUZZ_CHECK(line.find('\n') == std::string::npos);
      got.push_back(line);
      for (bool u : {utf8, !utf8}) {
        auto parsed = parseCommand(line, u);
        if (auto* r = std::get_if<Reply>(&parsed))
          checkReply(*r);
        else
          checkCommand(std::get<Command>(parsed), u);
      }
      domainOf(line);
      isValidDomain(line, utf8);
      saslActive = checkSasl(saslActive ? sasl.respond(line) : sasl.start(line));
    }
    FUZZ_CHECK(reader.buffered() < maxLine);
  }
  FUZZ_CHECK(got == referenceLines(in, maxLine));
  std::string rest = reader.takeRemainder();
  FUZZ_CHECK(rest.size() < maxLine && rest.find('\n') == std::string::npos);
  FUZZ_CHECK(reader.buffered() == 0);
  return 0;
}
