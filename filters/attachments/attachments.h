// filters/attachments/attachments.h — the attachment filter (Data stage, after the MIME
// filter): blocks messages carrying files by name extension, declared Content-Type or
// name pattern, also looking at the names inside zip archives and inside the zip archives
// nested in them, to a bounded depth.
//
// Config [attachments] (unknown keys are errors):
//   enabled = true                 default: true when any block list is set
//   block_extensions = ["exe"]     case-insensitive, with or without the dot; matched as a
//                                  suffix of the name, so "invoice.pdf.exe" is caught by
//                                  "exe" and "tar.gz" entries work. Trailing dots and
//                                  blanks (ignored by Windows) are removed first.
//   block_types = ["application/x-msdownload", "application/x-*"...]
//                                  the declared Content-Type (lower-case); "type/*" matches
//                                  every subtype
//   block_names = ["(?i)^invoice.*\\.zip$"]
//                                  RE2 patterns searched in the file name (UTF-8), compiled
//                                  at load; a bad pattern is a FILE:LINE error
//   scan_zip = true                check the names inside zip attachments (zip.h)
//   max_archive_depth = 5          levels of archives looked into, the attached one being
//                                  level 1 (1: only the attached zip's own names). A member
//                                  is opened as an archive when its name ends in ".zip" or,
//                                  stored, its bytes start like a zip.
//   max_zip_entries = 10000        names read per message, all archives and levels together
//   max_archive_bytes = "64M"      bytes unpacked (inflated, or read stored) from archives
//                                  inside archives per message; the scan holds at most about
//                                  twice that in memory, whatever the archive claims
//   limits_exceeded = action       what a message gets when an archive in it could not be
//                                  fully looked into: a bound above hit (max_archive_depth,
//                                  max_zip_entries, max_archive_bytes), or an archive that is
//                                  malformed or cut short, an inner archive that is encrypted
//                                  or uses a compression other than stored and deflate:
//                                  reject (554 5.7.1) | quarantine | strip (the attachment
//                                  replaced by a note) | tempfail (451 4.7.1) | pass
//                                  (delivered). Never reported as clean: summary "limit
//                                  NAME", detail {limit, unchecked}. Default: as `action`.
//                                  A blocked name found anyway wins over a limit.
//   action = "reject"              reject: 554 5.7.1 naming the file | quarantine: held
//                                  with the reason | strip: the message is accepted and
//                                  every blocked part is replaced, at delivery, by a
//                                  text/plain part saying which file Moat removed and why
//                                  (byte edits, filters/edit.h; the delimiters stay, so the
//                                  MIME structure stays valid). A zip with a blocked name
//                                  inside, at any level, goes whole. A part inside a
//                                  base64-encoded attached message takes the attached
//                                  message with it. When the message itself is the blocked
//                                  file (single part), its Content-* headers and body
//                                  become the notice: the recipient still learns that mail
//                                  came, and from whom.
// Every name a part gives its file is checked: Content-Disposition filename= and
// Content-Type name=, the RFC 2231 and plain forms, each of duplicated parameters (clients
// differ in which they use), and in text bodies the names of uuencoded files ("begin 644
// NAME" lines).
// A part is an attachment when the MIME filter would list it (Message::attachments): a
// file name, disposition attachment, or a non-text leaf below the top. Attached messages
// (message/rfc822) are walked like the rest of the tree.
//
// Untrusted input: the message's MIME tree (file names, types, zip bytes). Names put in
// the SMTP reply are reduced to printable ASCII and shortened; a nested archive is named by
// its path ("outer.zip/inner.zip"), each step at most 100 bytes. Logs through the
// pipeline's `filter` event: summary "clean", "blocked NAME [in PATH]", "stripped NAME[,
// NAME]" or "limit LIMIT", detail {attachments, file, archive, reason, stripped,
// archive_entries, archive_bytes, limit, unchecked}.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "filters/filter.h"
#include "filters/mime/mime.h"
#include "policy/config.h"

namespace re2 {
class RE2;
}

namespace moat::filters::attachments {

enum class Action { Reject, Quarantine, Strip };

struct NamePattern {
  std::string pattern;
  std::shared_ptr<const re2::RE2> re;
};

struct FilterConfig {
  bool enabled = false;
  std::vector<std::string> extensions;  // lower-case, without the leading dot
  std::vector<std::string> types;       // lower-case; "type/*" allowed
  std::vector<NamePattern> names;
  bool scanZip = true;
  size_t maxZipEntries = 10000;  // per message, all levels
  unsigned maxArchiveDepth = 5;
  uint64_t maxArchiveBytes = 64ull << 20;
  Action action = Action::Reject;
  enum class OnLimit { Reject, Quarantine, Strip, TempFail, Pass } onLimit = OnLimit::Reject;
};

// Reads [attachments]; problems go to `errors` as FILE:LINE (a bad regex at the line of
// its array element, action "strip" at the action line).
FilterConfig readConfig(const policy::Config& config, policy::Errors& errors);

struct Finding {
  std::string file;       // the blocked name as written (UTF-8, untrusted)
  std::string archive;    // the zip it was found in, or "" ("outer.zip/inner.zip" when nested)
  std::string reason;     // "extension .exe", "type application/x-msdownload", "name /re/";
                          // for a limit, the limit ("max_archive_depth", "encrypted"...)
  bool limit = false;     // not a blocked file: `file` is an archive not fully looked into
  std::string attachment;  // the attached archive it is in (what strip removes), or ""
};

struct Blocked {
  Finding finding;
  // The part to replace when stripping: the blocked part or, inside an encoded attached
  // message, the nearest enclosing part with offsets. Points into the mime::Message given
  // to check(); valid while it lives.
  const mime::Part* part = nullptr;
  bool isRoot = false;  // the part is the whole message
};

struct CheckResult {
  std::optional<Finding> blocked;  // the first blocked file
  std::optional<Finding> limit;    // the first archive that could not be fully looked into
  std::vector<Blocked> all;        // every blocked file (only the first unless action is
                                   // strip), and every limit when limits_exceeded is strip
  std::vector<Edit> edits;         // strip: stripEdits(), set by the filter
  unsigned attachments = 0;        // attachments looked at
  unsigned archiveEntries = 0;     // names read from zips
  uint64_t archiveBytes = 0;       // bytes unpacked from nested archives
  bool archiveMalformed = false;   // some zip could not be fully read
};

// Why one name is blocked, or nullopt (exposed for tests).
std::optional<std::string> blockReason(std::string_view name, const FilterConfig& config);
CheckResult check(const mime::Message& msg, const FilterConfig& config);
// Strip: the edits that replace each blocked part of `raw` (the message check() looked at,
// while its mime::Message lives) by a text/plain notice naming the file and the reason.
std::vector<Edit> stripEdits(const CheckResult& check, std::string_view raw);
Result resultFor(const CheckResult& check, const FilterConfig& config);
// A peer-supplied name made safe for an SMTP reply: printable ASCII, at most 100 bytes.
std::string replySafe(std::string_view name);

// nullptr when the filter is off (disabled, or no block list set).
std::shared_ptr<const Filter> makeAttachmentsFilter(const policy::Config& config, policy::Errors& errors);

}  // namespace moat::filters::attachments
