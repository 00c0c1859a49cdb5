// mta/runtime/state_text.h — the text of the line-based state files under SPOOL_DIR
// (greylist.state, rate_limit.state): a version line, one line per record of space-separated
// fields, an `end N` line that counts them (so a file cut short is told from a whole one).
// Each owner encodes its own records; this is the frame and the fields they share.
//
// Untrusted input: the text read back (a damaged disk, another program); every reader is
// bounded (the owner's maximum size, its own caps on records). Logs nothing.
#pragma once
#include <charconv>
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace moat::mta::state_text {

// Keys hold NULs and whatever a peer put in an address: bytes that would end a field or a
// line (controls, space, DEL) and '%' itself are written as %XX.
std::string escape(std::string_view s);
// False for a '%' not followed by two upper-case hex digits.
bool unescape(std::string_view s, std::string& out);

// The whole of `s` as a number (no sign for an unsigned type, no spaces).
template <typename T>
bool number(std::string_view s, T& v) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && p == s.data() + s.size();
}

// The fields of one line, split at single spaces; at most `most` (the last then holds the
// rest of the line, so a line with too many fields is not taken for a shorter one).
std::vector<std::string_view> fields(std::string_view line, size_t most = 8);

// The file: `version`, the `lines` (each ending in '\n'), `end N`. Past `maxBytes` the first
// lines are left out, so an owner puts the ones it minds losing least (the stalest) first.
std::string frame(std::string_view version, const std::vector<std::string>& lines, size_t maxBytes);
// Each record line of a file frame() wrote to `line` (without its '\n'), in order. False,
// at once, when `line` is; and for any text frame() did not write with this `version`: over
// `maxBytes`, cut short (no end line, or a last line without its '\n'), a count that does
// not match, anything after the end line.
bool unframe(std::string_view text, std::string_view version, size_t maxBytes,
             const std::function<bool(std::string_view line)>& line);

}  // namespace moat::mta::state_text
