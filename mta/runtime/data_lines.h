// mta/runtime/data_lines.h — the text lines a message travels in over SMTP DATA: bare CR and
// bare LF become CRLF, a line longer than RFC 5321 §4.5.3.1.6 allows (1,000 octets with its
// CRLF) is broken with CRLF SPACE, and lines starting with '.' are dot-stuffed (§4.5.2).
//
// One implementation for two users: the SMTP client streams every message through it at
// delivery, and the DKIM signer (filters/dkim) applies the same repair before it signs, so
// what it signs is what the next hop receives (RFC 6376 §5.3: a signer signs the message in
// the form it goes out in). Pure; untrusted input: any bytes. Logs nothing.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace moat::mta {

// Streams prefix + body, carrying state across pieces so a line split between two pieces is
// handled like any other. The line break follows Postfix's smtp_line_length_limit: a next
// hop may refuse an over-long line whole, and the space keeps a header field folded and
// does little harm to MIME bodies. A line's length is counted on the wire, so a line that
// starts with '.' holds one content octet less (the stuffed dot counts).
struct DataLines {
  static constexpr size_t kMaxLine = 998;  // octets before the CRLF
  std::string_view parts[2];
  // false: the content as the next hop stores it (dot-stuffing removed, no ".\r\n" at the
  // end); line lengths are still counted as on the wire, so both modes break alike.
  bool dotStuff = true;
  size_t part = 0, pos = 0;
  size_t col = 0;  // octets of the current wire line so far
  bool lineStart = true, prevCr = false, done = false;

  // Appends up to `limit` input bytes' worth of output bytes to `out`; true when finished
  // (then a last line without CRLF has got one, and with dotStuff the terminating ".\r\n").
  bool next(std::string& out, size_t limit);
  void put(std::string& out, char c);
};

// `message` as the next hop receives it from Moat's SMTP client (DataLines with dotStuff
// off): the same bytes when it has CRLF line ends and no line over 998 octets.
std::string asDelivered(std::string_view message);

}  // namespace moat::mta
