// mta/smtp/header_scrubber.h — removes, while the message streams in, the header fields
// that claim to come from this gateway: Authentication-Results whose authserv-id is our
// own host name (RFC 8601 §5: a border MTA MUST delete them, or a forger could make mail
// look verified). Only the header section is examined; the body passes through untouched.
// A line in the header section that is no header field starts the body: the empty line
// that should precede it is inserted.
//
// Untrusted input: the whole message. Memory is bounded: a header field longer than
// kMaxField is passed through as it is, without being examined further, except an
// Authentication-Results field, which is then removed (it cannot be judged, so it cannot
// be trusted).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace moat::mta::smtp {

class HeaderScrubber {
 public:
  static constexpr size_t kMaxField = 64 * 1024;
  explicit HeaderScrubber(std::string authservId);
  // Appends the bytes to keep to `out`. Input is the decoded message (CRLF lines), in any
  // chunking.
  void feed(std::string_view in, std::string& out);
  // At the end of the message: flushes a field still held back.
  void finish(std::string& out);
  unsigned removed() const { return removed_; }
  // Past the header section: feed() appends its input unchanged, so a caller may use the
  // input itself instead.
  bool inBody() const { return !inHeaders_; }

 private:
  void endField(std::string& out);
  bool claimsUs(std::string_view field) const;

  std::string authservId_;  // lower-case
  bool inHeaders_ = true;
  bool atLineStart_ = true;
  bool passThrough_ = false;  // the current field is too long to judge
  bool dropping_ = false;     // ...and it is an Authentication-Results field: removed
  bool firstLineChecked_ = false;  // the current field's first line was seen whole
  std::string field_;         // the current (possibly folded) field, held back
  unsigned removed_ = 0;
};

}  // namespace moat::mta::smtp
