// tests/fuzz/fuzz_peer.cc — libFuzzer target for what comes back to Moat from the servers it
// connects to and from its own spool: the SMTP/LMTP client's reply reader, EHLO keywords and
// reply status (mta/client/reply.h), the milter protocol decoder and reply parsers
// (filters/milter/protocol.h), and the spool's envelope records with their edits
// (queue/envelope.h, filters/edit.h) as start-up recovery reads them from disk, and clamd's
// reply to INSTREAM (filters/antivirus/clamd.h).
// Input layout: byte 0 picks the parser (modulo 7; 0-5 kept their meaning when clamd's
// reply came as 6, so the committed corpus still means what it did), byte 1 is a parameter
// (how the bytes are split into reads, which milter reply, how many bytes were sent to
// clamd), the rest is what the peer or the disk holds.
// Checked:
//   - replies: the same replies and the same error whether the bytes come in one read or
//     split anywhere; every reply's code is 200..599 (RFC 5321 §4.2), each of its lines
//     starts with that code, is within kMaxReplyLine and there are at most kMaxReplyLines;
//     EHLO keywords are upper-case words, SIZE is the number announced (or 0), AUTH
//     mechanisms are upper-case words; after an error nothing more is read;
//   - reply status (the DSN Status: of a stored reply, RFC 3463): class.subject.detail, 1-3
//     digits each, the class that of the reply's code;
//   - milter packets: the same packets however the bytes are split, each no longer than the
//     input and kMaxPacket, encode() giving back the bytes they came from; SMFIR_REPLYCODE
//     gives a 4xx/5xx code with an enhanced code of its class (or none) and printable text;
//     header changes a valid name and every byte of the packet accounted for; envelope
//     requests strings without NUL within the packet;
//   - envelopes (raw bytes, and the same bytes behind a correct END checksum so the fuzzer
//     reaches the records): one that parses writes back to one that parses to the same
//     value and to the same bytes again; its edits apply to a message of its size giving
//     editedSize bytes;
//   - clamd replies: Clean only for "stream: OK" (or "OK"), never for anything else; a
//     Found or Limit signature non-empty, printable ASCII without spaces, at most 200 bytes
//     (it goes into the SMTP reply), only for a reply ending in " FOUND"; an Error with a
//     non-empty, bounded text naming StreamMaxLength when the reply says the size limit was
//     exceeded; the same result for the same reply.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "filters/antivirus/clamd.h"
#include "filters/edit.h"
#include "filters/milter/protocol.h"
#include "mta/client/reply.h"
#include "queue/envelope.h"
#include "tests/fuzz/fuzz_check.h"

namespace antivirus = moat::filters::antivirus;
namespace client = moat::mta::client;
namespace milter = moat::filters::milter;
namespace queue = moat::queue;

namespace {

bool isDigit(char c) { return c >= '0' && c <= '9'; }

// Read sizes from `seed`: 1 to 64 bytes each, different for every seed.
std::vector<std::string_view> split(std::string_view bytes, uint8_t seed) {
  std::vector<std::string_view> out;
  uint32_t x = seed * 2654435761u + 1;
  while (!bytes.empty()) {
    x = x * 1103515245u + 12345u;
    size_t n = std::min<size_t>(bytes.size(), 1 + (x >> 16) % 64);
    out.push_back(bytes.substr(0, n));
    bytes.remove_prefix(n);
  }
  return out;
}

// RFC 3463: class "." subject "." detail, 1 to 3 digits each after a class of 2, 4 or 5.
bool wellFormedStatus(std::string_view s) {
  if (s.size() < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.') return false;
  s.remove_prefix(2);
  for (int part = 0; part < 2; ++part) {
    size_t n = 0;
    while (n < s.size() && isDigit(s[n])) ++n;
    if (n < 1 || n > 3) return false;
    s.remove_prefix(n);
    if (part == 0) {
      if (s.empty() || s[0] != '.') return false;
      s.remove_prefix(1);
    }
  }
  return s.empty();
}

struct ReadResult {
  std::vector<client::Reply> replies;
  std::string error;
};

ReadResult readAll(const std::vector<std::string_view>& reads) {
  ReadResult out;
  client::ReplyReader reader;
  for (std::string_view piece : reads) {
    while (!piece.empty() && reader.error().empty()) {
      size_t before = piece.size();
      auto r = reader.feed(piece);
      FUZZ_CHECK(piece.size() <= before);
      if (r) out.replies.push_back(std::move(*r));
      if (!reader.error().empty()) break;
      FUZZ_CHECK(r || piece.empty());  // nullopt without an error: every byte taken
    }
    if (!reader.error().empty()) {
      std::string_view more = "250 more\r\n";
      FUZZ_CHECK(!reader.feed(more));  // failed stays failed
      break;
    }
  }
  out.error = reader.error();
  return out;
}

void checkReply(const client::Reply& r) {
  FUZZ_CHECK(r.code >= 200 && r.code <= 599);
  std::string code = std::to_string(r.code);
  size_t lines = 0;
  std::string_view text(r.text);
  while (true) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    FUZZ_CHECK(line.size() >= 3 && line.substr(0, 3) == code && line.size() <= client::kMaxReplyLine);
    FUZZ_CHECK(line.size() == 3 || line[3] == (nl == std::string_view::npos ? ' ' : '-'));
    ++lines;
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  FUZZ_CHECK(lines <= client::kMaxReplyLines);

  // As the queue keeps it: one line.
  std::string stored = r.text;
  for (auto& c : stored)
    if (c == '\n') c = ' ';
  std::string status = client::replyStatus(stored);
  FUZZ_CHECK(wellFormedStatus(status));
  if (code[0] != '3') FUZZ_CHECK(status[0] == code[0]);

  auto ext = client::parseEhlo(r);
  for (const auto& [key, value] : ext) {
    for (char c : key) FUZZ_CHECK(c != ' ' && c != '\n' && !(c >= 'a' && c <= 'z'));
    FUZZ_CHECK(value.find('\n') == std::string::npos);
  }
  // SIZE: the decimal number announced when it fits, else no fixed maximum.
  uint64_t size = client::fixedMaxSize(ext);
  uint64_t want = 0;
  if (auto it = ext.find("SIZE"); it != ext.end() && !it->second.empty()) {
    bool fits = true;
    for (char c : it->second) {
      if (!isDigit(c) || want > (UINT64_MAX - static_cast<uint64_t>(c - '0')) / 10) {
        fits = false;
        break;
      }
      want = want * 10 + static_cast<uint64_t>(c - '0');
    }
    if (!fits) want = 0;
  }
  FUZZ_CHECK(size == want);
  for (const auto& m : client::authMechanisms(ext)) {
    FUZZ_CHECK(!m.empty());
    for (char c : m) FUZZ_CHECK(c != ' ' && c != '\n' && !(c >= 'a' && c <= 'z'));
  }
}

void fuzzReplies(std::string_view bytes, uint8_t param) {
  ReadResult whole = readAll({bytes});
  ReadResult pieces = readAll(split(bytes, param));
  FUZZ_CHECK(whole.error == pieces.error);
  FUZZ_CHECK(whole.replies.size() == pieces.replies.size());
  for (size_t i = 0; i < whole.replies.size(); ++i) {
    FUZZ_CHECK(whole.replies[i].code == pieces.replies[i].code && whole.replies[i].text == pieces.replies[i].text);
    checkReply(whole.replies[i]);
  }
}

void fuzzReplyStatus(std::string_view reply) {
  std::string status = client::replyStatus(reply);
  FUZZ_CHECK(wellFormedStatus(status));
  if (reply.size() >= 4 && isDigit(reply[0]) && isDigit(reply[1]) && isDigit(reply[2]) &&
      (reply[3] == ' ' || reply[3] == '-') && (reply[0] == '2' || reply[0] == '4' || reply[0] == '5'))
    FUZZ_CHECK(status[0] == reply[0]);
}

void checkReplyCode(std::string_view data) {
  auto r = milter::parseReplyCode(data);
  if (!r) return;
  FUZZ_CHECK(r->code >= 400 && r->code <= 599);
  if (!r->enhanced.empty()) {
    FUZZ_CHECK(wellFormedStatus(r->enhanced));
    FUZZ_CHECK(r->enhanced[0] - '0' == r->code / 100);
  }
  FUZZ_CHECK(r->text.size() <= 512);
  for (unsigned char c : r->text) FUZZ_CHECK(c >= 0x20 && c < 0x7f);
}

void checkHeaderChange(std::string_view data, bool withIndex) {
  auto h = milter::parseHeaderChange(data, withIndex);
  if (!h) return;
  FUZZ_CHECK(milter::validFieldName(h->name));
  FUZZ_CHECK(h->value.find('\0') == std::string::npos);
  FUZZ_CHECK((withIndex ? 4 : 0) + h->name.size() + 1 + h->value.size() + 1 == data.size());
}

void checkEnvelopeRequest(std::string_view data, bool withArgs) {
  auto e = milter::parseEnvelopeRequest(data, withArgs);
  if (!e) return;
  FUZZ_CHECK(e->address.find('\0') == std::string::npos && e->args.find('\0') == std::string::npos);
  FUZZ_CHECK(e->address.size() + 1 + (e->args.empty() ? 0 : e->args.size() + 1) <= data.size());
  if (!withArgs) FUZZ_CHECK(e->args.empty() && e->address.size() + 1 == data.size());
}

// A milter reply packet's data, parsed as Moat reads that command.
void checkPacket(const milter::Packet& p) {
  namespace reply = milter::reply;
  switch (p.command) {
    case reply::kReplyCode: checkReplyCode(p.data); break;
    case reply::kAddHeader: checkHeaderChange(p.data, false); break;
    case reply::kInsHeader:
    case reply::kChgHeader: checkHeaderChange(p.data, true); break;
    case reply::kAddRcpt:
    case reply::kDelRcpt: checkEnvelopeRequest(p.data, false); break;
    case reply::kAddRcptPar:
    case reply::kChgFrom: checkEnvelopeRequest(p.data, true); break;
    case reply::kOptneg: FUZZ_CHECK(milter::parseOptneg(p.data).has_value() == (p.data.size() >= 12)); break;
    default: break;
  }
}

std::vector<milter::Packet> decodeAll(const std::vector<std::string_view>& reads, std::string& error, size_t& left) {
  milter::Decoder d(64 * 1024);
  std::vector<milter::Packet> out;
  size_t fed = 0, taken = 0;
  for (std::string_view piece : reads) {
    d.feed(piece);
    fed += piece.size();
    while (auto p = d.next()) {
      FUZZ_CHECK(p->data.size() + 1 <= 64 * 1024);
      taken += 5 + p->data.size();
      FUZZ_CHECK(taken <= fed);
      out.push_back(std::move(*p));
    }
    if (!d.error().empty()) break;
  }
  if (d.error().empty()) FUZZ_CHECK(taken + d.buffered() == fed);
  error = d.error();
  left = d.buffered();
  return out;
}

void fuzzMilterStream(std::string_view bytes, uint8_t param) {
  std::string e1, e2;
  size_t left1 = 0, left2 = 0;
  auto whole = decodeAll({bytes}, e1, left1);
  auto pieces = decodeAll(split(bytes, param), e2, left2);
  FUZZ_CHECK(e1 == e2 && whole.size() == pieces.size());
  if (e1.empty()) FUZZ_CHECK(left1 == left2);
  std::string again;
  for (size_t i = 0; i < whole.size(); ++i) {
    FUZZ_CHECK(whole[i].command == pieces[i].command && whole[i].data == pieces[i].data);
    again += milter::encode(whole[i].command, whole[i].data);
    checkPacket(whole[i]);
  }
  FUZZ_CHECK(bytes.substr(0, again.size()) == again);
}

void fuzzMilterData(std::string_view data, uint8_t param) {
  milter::Packet p;
  static const char kCommands[] = {milter::reply::kReplyCode,  milter::reply::kAddHeader, milter::reply::kInsHeader,
                                   milter::reply::kChgHeader,  milter::reply::kAddRcpt,   milter::reply::kDelRcpt,
                                   milter::reply::kAddRcptPar, milter::reply::kChgFrom,   milter::reply::kOptneg};
  p.command = kCommands[param % sizeof kCommands];
  p.data = std::string(data);
  checkPacket(p);
}

void checkEnvelope(std::string_view text) {
  std::string error;
  auto env = queue::parseEnvelope(text, error);
  FUZZ_CHECK(env.has_value() == error.empty());
  if (!env) return;
  std::string written = queue::serializeEnvelope(*env);
  std::string error2;
  auto again = queue::parseEnvelope(written, error2);
  if (!again) std::fprintf(stderr, "written back: %s\n", error2.c_str());
  FUZZ_CHECK(again.has_value());
  FUZZ_CHECK(*again == *env);
  FUZZ_CHECK(queue::serializeEnvelope(*again) == written);
  FUZZ_CHECK(moat::filters::editsValid(env->edits, env->size));
  if (env->size <= 1 << 16) {
    std::string message(env->size, 'x');
    std::string edited = moat::filters::applyEdits(message, env->edits);
    FUZZ_CHECK(edited.size() == moat::filters::editedSize(env->size, env->edits));
  }
}

void fuzzEnvelope(std::string_view text, bool addEnd) {
  if (!addEnd) return checkEnvelope(text);
  std::string withEnd(text);
  if (!withEnd.empty() && withEnd.back() != '\n') withEnd += '\n';
  char end[16];
  std::snprintf(end, sizeof end, "end\t%08x\n", queue::crc32(withEnd));
  checkEnvelope(withEnd + end);
}

bool endsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

void fuzzClamdReply(std::string_view reply, uint8_t param) {
  using Status = antivirus::ScanResult::Status;
  const size_t sent = static_cast<size_t>(param) * 65536;
  auto r = antivirus::parseInstreamReply(reply, sent);
  FUZZ_CHECK(r.scans == 0);
  // Never a pass for what is not clamd's "clean".
  FUZZ_CHECK((r.status == Status::Clean) == (reply == "stream: OK" || reply == "OK"));
  if (r.status == Status::Clean) FUZZ_CHECK(r.signature.empty() && r.error.empty());
  if (r.status == Status::Found || r.status == Status::Limit) {
    FUZZ_CHECK(endsWith(reply, " FOUND"));
    FUZZ_CHECK(r.error.empty());
    FUZZ_CHECK(!r.signature.empty() && r.signature.size() <= 200);
    for (unsigned char c : r.signature) FUZZ_CHECK(c > 0x20 && c < 0x7f);
    if (r.status == Status::Limit) FUZZ_CHECK(reply.find("Heuristics.Limits.Exceeded.") != std::string_view::npos);
  }
  if (r.status == Status::Error) {
    FUZZ_CHECK(!r.error.empty() && r.error.size() <= 300);
    if (reply.find("size limit exceeded") != std::string_view::npos)
      FUZZ_CHECK(r.error.find("StreamMaxLength") != std::string::npos &&
                 r.error.find(std::to_string(sent)) != std::string::npos);
  }
  auto again = antivirus::parseInstreamReply(reply, sent);
  FUZZ_CHECK(again.status == r.status && again.signature == r.signature && again.error == r.error);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  uint8_t param = data[1];
  std::string_view rest(reinterpret_cast<const char*>(data) + 2, size - 2);
  switch (data[0] % 7) {
    case 0: fuzzReplies(rest, param); break;
    case 1: fuzzReplyStatus(rest); break;
    case 2: fuzzMilterStream(rest, param); break;
    case 3: fuzzMilterData(rest, param); break;
    case 4: fuzzEnvelope(rest, false); break;
    case 5: fuzzEnvelope(rest, true); break;
    case 6: fuzzClamdReply(rest, param); break;
  }
  return 0;
}
