// filters/attachments/zip.h — lists the file names inside a zip archive (PKWARE APPNOTE
// 6.3: end of central directory, zip64 locator, central directory and local file headers)
// without extracting anything, so the attachment filter can look one level into archives.
//
// Untrusted input: the whole archive. Every offset and length is checked against the
// buffer before it is read; the work is linear in the archive's size and the number of
// names is capped. Names come from the central directory AND from the local file headers
// (an archive may list a harmless name in one and the real one in the other; extractors
// differ in which they trust). Logs nothing.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace moat::filters::attachments {

struct ZipListing {
  std::vector<std::string> names;  // raw bytes as stored (UTF-8 or CP437), duplicates removed
  bool isZip = false;              // a zip signature was found at all
  bool malformed = false;          // a structure pointed outside the buffer or was cut short
  bool truncated = false;          // more than maxNames names: the rest were not read
};

// True when `data` starts like a zip archive (local header, empty-archive or spanned marker).
bool looksLikeZip(std::string_view data);

ZipListing listZipNames(std::string_view data, size_t maxNames = 10000);

}  // namespace moat::filters::attachments
