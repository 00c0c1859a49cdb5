// mta/smtp/data_decoder.h — the DATA phase (and BDAT chunks, see Framing) as a streaming
// decoder: finds the end of mail data, removes dot-stuffing (RFC 5321 §4.5.2), handles bare
// CR / bare LF per policy (RFC 5321 §2.3.8), bounds the output size (RFC 1870) and counts
// Received: header fields for loop detection (RFC 5321 §6.3).
//
// Only the exact <CRLF>.<CRLF> ends the data (RFC 5321 §4.1.1.4); the CRLF of the DATA
// command line counts as the first CRLF, so ".\r\n" at once is an empty message. The
// SMTP-smuggling fakes ("\n.\n", "\r.\r", "\n.\r\n", "\r\n.\r", "\r\n\0.\r\n" ... see
// shared/conformance/smtp/smtp-smuggling-eod-sequences.yml) never end it.
//
// Untrusted input: all of it. Memory is bounded by maxSize (plus one chunk); nothing logs
// and nothing throws; the session logs the outcome (size, bare line ends, reject).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace moat::mta::smtp {

// What to do with a bare LF or a bare CR (one not part of CRLF) inside the message:
//   Normalize: it ends the line and becomes CRLF in the output (Postfix's
//              smtpd_forbid_bare_newline=normalize); the end of data still needs a real CRLF.CRLF.
//   Reject:    bytes pass through as sent; rejected() turns true, the decoder reads on to the
//              real end and the session answers 550 5.5.2.
enum class BareLinePolicy { Normalize, Reject };

// How the message is framed on the wire:
//   Dotted:  DATA — ends at <CRLF>.<CRLF>, dot-stuffed (RFC 5321 §4.5.2).
//   Chunked: BDAT — the session counts the octets (RFC 3030), so there is no end mark and
//            no stuffing: a leading dot is content. Bare CR/LF, the size bound and the
//            Received: count work as for DATA, so both paths give the header scrubber and
//            the loop check the same lines (a bare CR must not hide a header field).
enum class Framing { Dotted, Chunked };

class DataDecoder {
 public:
  DataDecoder(BareLinePolicy policy, uint64_t maxSize, Framing framing = Framing::Dotted);

  // Consumes input up to and including the end-of-data mark and appends the decoded bytes
  // to `out`. Returns how many bytes of `in` it consumed: the bytes after the mark are
  // pipelined commands that the caller keeps. After done() it consumes nothing. Decoded
  // bytes past maxSize are counted but not appended.
  size_t feed(std::string_view in, std::string& out);
  // At the end of a chunked message (BDAT LAST): a CR held back to see whether LF follows
  // is a bare CR after all. Dotted framing never ends with one held.
  void finish(std::string& out);

  bool done() const { return done_; }
  bool sizeExceeded() const { return size_ > maxSize_; }
  uint64_t size() const { return size_; }  // decoded size, also past the limit
  bool sawBareLf() const { return bareLf_; }
  bool sawBareCr() const { return bareCr_; }
  bool sawNul() const { return nul_; }
  bool rejected() const { return policy_ == BareLinePolicy::Reject && (bareLf_ || bareCr_); }

  // Received: header fields in the header section (a session answers 554 5.4.6 above 100).
  unsigned receivedCount() const { return received_; }
  // The header section ended: an empty line, or a line that is no header field.
  bool headersEnded() const { return headerState_ == HeaderState::Ended; }
  // Changes whenever a line of the message ends (not a count: a run of body lines taken at
  // once moves it by one). The session's data timeout is per line (RFC 5321 §4.5.3.2.6).
  uint64_t lineMark() const { return lineMark_; }

 private:
  enum class State : uint8_t { LineStart, Dot, DotCr, Mid, Cr };
  enum class HeaderState : uint8_t { LineBegin, Name, AfterName, Skip, Ended };

  void content(std::string_view bytes, std::string& out);
  void lineEnd(bool real, std::string_view ending, std::string& out);
  void bareLineEnd(bool lf, std::string& out);
  void put(std::string_view bytes, std::string& out);
  void scanHeader(std::string_view bytes);
  void headerLineEnd();

  BareLinePolicy policy_;
  uint64_t maxSize_;
  Framing framing_;
  uint64_t size_ = 0;
  State state_ = State::LineStart;
  bool realStart_ = true;  // the current line follows a real CRLF (or the DATA command)
  bool done_ = false;
  bool bareLf_ = false;
  bool bareCr_ = false;
  bool nul_ = false;

  HeaderState headerState_ = HeaderState::LineBegin;
  char name_[9] = {};  // the first octets of the current field name, lower-cased
  size_t nameLen_ = 0;
  unsigned received_ = 0;
  uint64_t lineMark_ = 0;
};

}  // namespace moat::mta::smtp
