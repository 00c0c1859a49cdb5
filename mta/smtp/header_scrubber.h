// mta/smtp/header_scrubber.h — removes, while the message streams in, the header fields
// that claim to come from this gateway: Authentication-Results whose authserv-id is our
// own host name (RFC 8601 §5: a border MTA MUST delete them, or a forger could make mail
// look verified), and, in mail from the internet, the fields named by [headers]
// strip_inbound (the spam verdict and the filters' own fields, which the internal servers
// trust: Exchange Edge Transport's header firewall). Only the header section is examined;
// the body passes through untouched.
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
#include <vector>

namespace moat::mta::smtp {

class HeaderScrubber {
 public:
  static constexpr size_t kMaxField = 64 * 1024;
  // `strip`: field names to remove whatever their value, lower-case; an entry ending in
  // '*' is a prefix ("x-spam-*").
  explicit HeaderScrubber(std::string authservId, std::vector<std::string> strip = {});
  // Appends the bytes to keep to `out`. Input is the decoded message (CRLF lines), in any
  // chunking.
  void feed(std::string_view in, std::string& out);
  // At the end of the message: flushes a field still held back.
  void finish(std::string& out);
  unsigned removed() const { return removed_; }    // forged Authentication-Results
  unsigned stripped() const { return stripped_; }  // fields removed by name
  // The distinct names of the fields removed by name, as they were written (at most
  // kMaxNames, for the log line).
  static constexpr size_t kMaxNames = 8;
  const std::vector<std::string>& strippedNames() const { return strippedNames_; }
  // Past the header section: feed() appends its input unchanged, so a caller may use the
  // input itself instead.
  bool inBody() const { return !inHeaders_; }

 private:
  void endField(std::string& out);
  bool claimsUs(std::string_view field) const;
  bool toStrip(std::string_view field) const;  // its name matches `strip_`
  void noteStripped(std::string_view field);

  std::string authservId_;  // lower-case
  bool inHeaders_ = true;
  bool atLineStart_ = true;
  bool passThrough_ = false;  // the current field is too long to judge
  bool dropping_ = false;     // ...and it is removed (Authentication-Results, or stripped)
  bool firstLineChecked_ = false;  // the current field's first line was seen whole
  std::string field_;         // the current (possibly folded) field, held back
  unsigned removed_ = 0;
  unsigned stripped_ = 0;
  std::vector<std::string> strip_;
  std::vector<std::string> strippedNames_;
};

}  // namespace moat::mta::smtp
