// filters/milter/protocol.h — the wire format of the Sendmail milter protocol, version 6
// (as libmilter 8.14+ and Postfix's milter8 speak it; there is no RFC): packets are a 4-byte
// network-order length (counting the command byte), one command byte and the data. Strings
// in the data are NUL-terminated. This file only encodes and decodes: building the packets
// Moat sends (OPTNEG, MACRO, CONNECT, HELO, MAIL, RCPT, DATA, HEADER, EOH, BODY, EOM, QUIT),
// splitting the milter's bytes into packets (bounded: a packet longer than kMaxPacket is a
// protocol error, so a peer cannot make Moat buffer without limit), and reading the milter's
// replies (OPTNEG, header and envelope changes, SMFIR_REPLYCODE). The conversation is in milter.cc.
//
// Untrusted input: every byte the milter sends (Decoder, parse*). Logs nothing.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moat::filters::milter {

constexpr uint32_t kVersion = 6;
constexpr size_t kBodyChunk = 65535;        // MILTER_CHUNK_SIZE: the largest BODY packet sent
constexpr size_t kMaxPacket = 1024 * 1024;  // the largest packet taken from a milter

// Commands (MTA to milter).
namespace cmd {
constexpr char kAbort = 'A', kBody = 'B', kConnect = 'C', kMacro = 'D', kEom = 'E', kHelo = 'H', kHeader = 'L',
               kMail = 'M', kEoh = 'N', kOptneg = 'O', kQuit = 'Q', kRcpt = 'R', kData = 'T';
}
// Replies (milter to MTA).
namespace reply {
constexpr char kAddRcpt = '+', kDelRcpt = '-', kAddRcptPar = '2', kAccept = 'a', kReplBody = 'b', kContinue = 'c',
               kDiscard = 'd', kChgFrom = 'e', kConnFail = 'f', kAddHeader = 'h', kInsHeader = 'i', kChgHeader = 'm',
               kProgress = 'p', kQuarantine = 'q', kReject = 'r', kSkip = 's', kTempFail = 't', kReplyCode = 'y',
               kOptneg = 'O';
}
// Actions the MTA allows (SMFIF_*).
namespace action {
constexpr uint32_t kAddHeaders = 0x01, kChgBody = 0x02, kAddRcpt = 0x04, kDelRcpt = 0x08, kChgHeaders = 0x10,
                   kQuarantine = 0x20, kChgFrom = 0x40, kAddRcptPar = 0x80, kSetSymList = 0x100;
}
// Protocol flags (SMFIP_*): steps the milter does not want (NO*), replies it will not send
// (NR_*), and options.
namespace proto {
constexpr uint32_t kNoConnect = 0x1, kNoHelo = 0x2, kNoMail = 0x4, kNoRcpt = 0x8, kNoBody = 0x10, kNoHeaders = 0x20,
                   kNoEoh = 0x40, kNrHeader = 0x80, kNoUnknown = 0x100, kNoData = 0x200, kSkip = 0x400,
                   kRcptRej = 0x800, kNrConnect = 0x1000, kNrHelo = 0x2000, kNrMail = 0x4000, kNrRcpt = 0x8000,
                   kNrData = 0x10000, kNrUnknown = 0x20000, kNrEoh = 0x40000, kNrBody = 0x80000,
                   kHeaderLeadSpace = 0x100000;
constexpr uint32_t kAll = 0x1FFFFF;  // every flag of version 6
}  // namespace proto

// What Moat offers in OPTNEG: the actions it carries out (header, body and envelope changes,
// quarantine; not SETSYMLIST), and every protocol flag (it can skip any step and do without
// any reply but EOM's).
constexpr uint32_t kOfferedActions = action::kAddHeaders | action::kChgBody | action::kChgHeaders |
                                     action::kQuarantine | action::kAddRcpt | action::kDelRcpt | action::kChgFrom |
                                     action::kAddRcptPar;
constexpr uint32_t kOfferedProtocol = proto::kAll;

struct Packet {
  char command = 0;
  std::string data;
};

// One packet on the wire.
std::string encode(char command, std::string_view data);
// Data pieces: a 32-bit big-endian integer, a NUL-terminated string.
void putU32(std::string& out, uint32_t v);
void putString(std::string& out, std::string_view s);

std::string optnegPacket(uint32_t actions, uint32_t protocol);
// SMFIC_MACRO for the command `forCommand`: each name and value NUL-terminated.
std::string macroPacket(char forCommand, const std::vector<std::pair<std::string, std::string>>& macros);
// family: '4', '6', 'L' (unix), 'U' (unknown: no port or address follow).
std::string connectPacket(std::string_view hostname, char family, uint16_t port, std::string_view address);
std::string heloPacket(std::string_view helo);
// MAIL / RCPT: "<address>" then each ESMTP argument.
std::string envelopePacket(char command, std::string_view address, const std::vector<std::string>& args = {});
std::string headerPacket(std::string_view name, std::string_view value);

// Splits the bytes a milter sends into packets. feed() appends; next() returns the next
// whole packet, nullopt when more bytes are needed; error() is set (and stays set) when a
// packet's length is 0 or over the bound.
class Decoder {
 public:
  explicit Decoder(size_t maxPacket = kMaxPacket) : max_(maxPacket) {}
  void feed(std::string_view bytes) { buf_.append(bytes); }
  std::optional<Packet> next();
  const std::string& error() const { return error_; }
  size_t buffered() const { return buf_.size() - pos_; }

 private:
  std::string buf_;
  size_t pos_ = 0;
  size_t max_;
  std::string error_;
};

struct Optneg {
  uint32_t version = 0, actions = 0, protocol = 0;
};
// The milter's OPTNEG reply (extra data after the three numbers, macro lists, is ignored).
std::optional<Optneg> parseOptneg(std::string_view data);

// ADDHEADER "name\0value\0", INSHEADER / CHGHEADER "index(u32) name\0value\0".
struct HeaderChange {
  uint32_t index = 0;
  std::string name, value;
};
std::optional<HeaderChange> parseHeaderChange(std::string_view data, bool withIndex);
// A header field name a milter may add: printable ASCII without ':' or space, 1-255 bytes.
bool validFieldName(std::string_view name);

// SMFIR_ADDRCPT and SMFIR_DELRCPT "address\0"; SMFIR_ADDRCPT_PAR and SMFIR_CHGFROM
// "address\0" and optionally "args\0" (ESMTP parameters separated by spaces). The address
// as sent, with or without its <>; nullopt when a string is not NUL-terminated or more follows.
struct EnvelopeRequest {
  std::string address, args;
};
std::optional<EnvelopeRequest> parseEnvelopeRequest(std::string_view data, bool withArgs);

// SMFIR_REPLYCODE's "550 5.7.1 text" (NUL-terminated): the first line, checked to be a 4xx
// or 5xx code with, optionally, an enhanced status code of the same class, and printable
// text. Multi-line replies keep the first line's code and join the texts.
struct ReplyCode {
  int code = 0;
  std::string enhanced, text;
};
std::optional<ReplyCode> parseReplyCode(std::string_view data);

// The header fields of a message as received (CRLF or LF, folded lines joined): each field's
// name, its raw value (after the colon, folding kept, line ends as in the message), and the
// byte range of the whole field with its line end(s).
struct Field {
  std::string_view name;
  std::string_view rawValue;
  uint64_t offset = 0, length = 0;
};
std::vector<Field> headerFields(std::string_view message);
// Where the body begins (after the empty line); message.size() when there is no body.
uint64_t bodyOffset(std::string_view message);
// A raw value as a milter reads it: line ends as LF; without SMFIP_HDR_LEADSPC the
// whitespace after the colon is dropped.
std::string milterHeaderValue(std::string_view rawValue, bool leadingSpace);
// LF or CRLF line ends to CRLF (a milter's replacement body or header value).
std::string toCrlf(std::string_view s);

}  // namespace moat::filters::milter
