// mta/smtp/protocol.h — the SMTP command phase as pure functions: command-line parsing
// (RFC 5321 §4.1, with the ESMTP parameters of RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 3030
// BDAT, RFC 3461 DSN, RFC 4954 AUTH=, RFC 6531 SMTPUTF8 and RFC 8689 REQUIRETLS), mailbox and domain syntax
// (RFC 5321 §4.1.2, §4.5.3.1), reply formatting with enhanced status codes (RFC 2034,
// RFC 3463) and a line reader for the command phase (RFC 5321 §2.3.8, §4.5.3.1.4).
//
// Untrusted input: everything here comes straight from the peer. Nothing throws, every
// buffer is bounded (LineReader by maxLine; parsed strings by the line they came from).
// No I/O and no logging: the session logs what it decides (reply, from, to).
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace moat::mta::smtp {

enum class Verb { Helo, Ehlo, Mail, Rcpt, Data, Bdat, Rset, Noop, Quit, Vrfy, Expn, Help, StartTls, Auth, Unknown };

struct Param {
  std::string key;    // upper-cased
  std::string value;  // as sent; empty when the parameter has no "=value"
};

struct Command {
  Verb verb = Verb::Unknown;
  std::string verbText;  // as sent, for logs
  // Everything after the verb, with leading and trailing spaces removed (HELO name, VRFY
  // argument, AUTH mechanism and initial response, NOOP/HELP text, the raw MAIL/RCPT text).
  std::string arg;
  // MAIL/RCPT: the mailbox without <> and without a source route (RFC 5321 §4.1.1.3,
  // Appendix C); "" for MAIL FROM:<>; "Postmaster" (as sent) for RCPT TO:<Postmaster>.
  std::string address;
  std::vector<Param> params;  // MAIL/RCPT ESMTP parameters, in the order sent
  uint64_t chunkSize = 0;     // BDAT
  bool last = false;          // BDAT ... LAST
};

struct Reply {
  int code = 0;
  std::string enhanced;  // "5.5.2", or "" for none
  std::string text;
};

// Parses one command line given WITHOUT its CRLF. Returns the Command, or the Reply to send
// for a line that cannot be accepted:
//   500 5.5.2  empty line, NUL/CR/LF inside the line
//   500 5.5.2  unknown verb (parseVerb tells which word it was; RFC 3463 §3.6)
//   501 5.5.4  argument syntax (missing "FROM:"/"TO:", unbalanced <>, text after a verb that
//              takes none, a bad BDAT size, bad ESMTP parameter syntax or value, a duplicate
//              parameter)
//   501 5.1.7  MAIL: bad sender mailbox syntax or length (64 local / 255 domain / 256 path)
//   501 5.1.3  RCPT: bad recipient mailbox syntax or length
//   553 5.6.7  non-ASCII in a path without SMTPUTF8 (RFC 6531 §3.5)
//   555 5.5.4  an ESMTP parameter this server does not know (RFC 5321 §4.1.1.11)
// Known parameters: MAIL SIZE BODY SMTPUTF8 AUTH RET ENVID REQUIRETLS (RFC 8689, no value);
// RCPT NOTIFY ORCPT.
// Tolerated beyond RFC 5321: a space between "FROM:"/"TO:" and the path, several spaces
// between parameters, trailing spaces. Not tolerated: a path without angle brackets.
// `utf8` is true once the transaction's MAIL carried SMTPUTF8, for RCPT; MAIL ignores it
// (it starts a new transaction): only an SMTPUTF8 parameter on its own line counts.
// HELO/EHLO names are not validated here (real clients send odd ones); use isValidDomain
// when policy wants it.
std::variant<Command, Reply> parseCommand(std::string_view line, bool utf8);

// The verb of a command word, case-insensitive ("mail" -> Mail); Unknown otherwise.
Verb parseVerb(std::string_view word);
// The canonical upper-case name of a verb ("STARTTLS"); "" for Unknown.
std::string_view verbName(Verb verb);

// The parameter with this (upper-case) key, or nullptr.
const Param* findParam(const Command& cmd, std::string_view key);
// MAIL SIZE=: the declared size, saturating at UINT64_MAX; nullopt when not given.
std::optional<uint64_t> declaredSize(const Command& cmd);

// Mailbox syntax of RFC 5321 §4.1.2 (and RFC 6531 with utf8), with its length limits.
// "Postmaster" alone is NOT a mailbox (only RCPT accepts it).
bool isValidMailbox(std::string_view mailbox, bool utf8);
// Domain of an address (after its last '@'), lower-cased ASCII; "" when it has none.
std::string domainOf(std::string_view address);
// A Domain (dot-separated labels of letters, digits and inner hyphens, each 1..63 octets,
// total <= 255; with utf8 also U-labels in UTF-8) or an address literal [IPv4] / [IPv6:...].
bool isValidDomain(std::string_view domain, bool utf8);

// Whether `word` is an RFC 3463 §2 enhanced status code: class "." subject "." detail, the
// class 2, 4 or 5 (and `cls` when given), subject and detail 1 to 3 digits each. Replies Moat
// passes on or keeps (a next hop's, a milter's) carry a code only when it is one.
bool isEnhancedCode(std::string_view word, char cls = 0);

// "250-first\r\n250 last\r\n": text is split on '\n' (a trailing '\n' adds no line); each
// line carries the enhanced code when it is non-empty ("250-2.0.0 first"). Control
// characters in the text are replaced by '?' so peer-supplied text cannot inject lines.
std::string formatReply(int code, std::string_view enhanced, std::string_view text);
inline std::string formatReply(const Reply& r) { return formatReply(r.code, r.enhanced, r.text); }

// Accumulates command-phase bytes and yields lines. A line may be at most `maxLine` octets
// including its line end (RFC 5321 §4.5.3.1.4 says 512; extensions add parameters, so the
// default is 2048). A longer line is consumed up to its end and reported once as TooLong;
// the lines after it are returned normally. Lines end in CRLF; a bare LF also ends a line
// (tolerated and counted in bareLfLines()); a CR not followed by LF stays in the line (so
// parseCommand rejects it). Lines are cut only when next() is called, so bytes after a
// command (BDAT chunks, pipelined input after DATA) stay intact for takeRemainder().
// Memory: the bytes fed since next() last returned NeedMore plus less than the largest
// limit; once next() has reported a line as too long, the rest of it is dropped as it
// arrives. The session should call next() until NeedMore after each feed(), or stop reading
// while buffered() is large. The limits may change between lines (RFC 4954 §4: a SASL
// response after a 334 may be far longer than a command).
class LineReader {
 public:
  static constexpr size_t kDefaultMaxLine = 2048;
  explicit LineReader(size_t maxLine = kDefaultMaxLine);
  enum class Status { Line, NeedMore, TooLong };

  // The limit for the lines next() cuts from now on, a partly buffered one included.
  void setMaxLine(size_t maxLine);
  // A line starting with `prefix` (ASCII case-insensitive, e.g. "AUTH ") may be up to
  // `maxLine` octets instead, if that is more: AUTH with an initial response.
  void allowLongerLines(std::string_view prefix, size_t maxLine);

  void feed(std::string_view data);
  Status next(std::string& line);  // line without its CRLF (or LF)
  // Bytes received but not yet returned as lines; the reader is empty afterwards (and stops
  // discarding a too-long line). For pipelined input after DATA, or to drop after STARTTLS.
  std::string takeRemainder();
  size_t buffered() const { return buf_.size() - pos_; }
  uint64_t bareLfLines() const { return bareLf_; }
  uint64_t tooLongLines() const { return tooLong_; }

 private:
  void compact();
  size_t limitFor(std::string_view line) const;

  size_t maxLine_;
  std::string longPrefix_;  // "" for none
  size_t longMaxLine_ = 0;
  std::string buf_;
  size_t pos_ = 0;      // start of the unread bytes in buf_
  size_t scanned_ = 0;  // bytes from pos_ already known to hold no LF
  bool discarding_ = false;
  uint64_t bareLf_ = 0;
  uint64_t tooLong_ = 0;
};

}  // namespace moat::mta::smtp
