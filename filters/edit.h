// filters/edit.h — byte edits over a message as received: how a content filter rewrites a
// message without rewriting the spool file (DESIGN.md decision 6). A filter returns edits
// in its Result; the pipeline keeps the ones that do not collide; the session stores them
// in the envelope; every reader that delivers the message (SMTP and maildir delivery,
// DSNs, DKIM signing, quarantine release) applies them with applyEdits().
//
// Offsets are into the message exactly as spooled (CRLF, dot-unstuffed, without the
// gateway's prepended headers). No RFC of its own; the filters that make edits keep MIME
// (RFC 2046) and header (RFC 5322) syntax valid. Untrusted input: replacement bytes may
// carry peer-supplied names; the envelope escapes them. Logs nothing.
//
// A plain library (moat_edit, no dependencies) so the queue can store edits without
// linking any filter.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moat::filters {

struct Edit {
  uint64_t offset = 0;      // first byte replaced
  uint64_t length = 0;      // bytes replaced; 0 = insert before `offset`
  std::string replacement;  // the new bytes (CRLF line ends)
  std::string why;          // for the log and `moat queue show`, e.g. "stripped x.exe"
  uint64_t end() const { return offset + length; }
  bool operator==(const Edit&) const = default;
};

// True when `b` cannot be applied together with `a`: their replaced ranges share a byte,
// or one inserts strictly inside the other's range. Two inserts at one offset do not
// collide (they apply in list order); neither does an insert at a range's edge.
bool editsCollide(const Edit& a, const Edit& b);

// Adds `e` to `accepted` (kept sorted by offset, then end; ties keep arrival order) unless
// it collides with one already there or reaches past `messageSize`. Returns false (and
// leaves `accepted` unchanged) when refused: the first filter's edit wins.
bool addEdit(std::vector<Edit>& accepted, Edit e, uint64_t messageSize);

// True when `edits` is what addEdit builds: sorted, no collisions, inside `messageSize`.
bool editsValid(const std::vector<Edit>& edits, uint64_t messageSize);

// The size of the message after the edits (valid edits).
uint64_t editedSize(uint64_t messageSize, const std::vector<Edit>& edits);

// The message with the edits applied. Edits must be valid (editsValid); an edit that is not
// (out of order or out of range) is skipped rather than read out of bounds.
std::string applyEdits(std::string_view message, const std::vector<Edit>& edits);

// Edits made over an edited message, as edits of the message as received: `applied` are
// valid edits of the message, `edited` is the message with them
// applied, `over` are valid edits of `edited` (a later filter's, made on what it was shown:
// a chained milter). Returns valid edits of the message such that
//   applyEdits(message, result) == applyEdits(edited, over).
// An edit of `over` in text no edit of `applied` touched is moved to the message's offsets;
// one that reaches into, or touches the edge of, an earlier replacement or insert is merged
// with it into one edit (the earlier replacement rewritten; `why` joined with "; "). The
// untouched edits of `applied` stay as they are.
std::vector<Edit> composeEdits(const std::vector<Edit>& applied, std::string_view edited,
                               const std::vector<Edit>& over);

}  // namespace moat::filters
