// filters/attachments/zip.h — lists the file names inside a zip archive (PKWARE APPNOTE
// 6.3: end of central directory, zip64 locator, central directory and local file headers)
// and unpacks single members (stored, or deflated per RFC 1951 through zlib), so the
// attachment filter can look into archives nested in archives.
//
// Untrusted input: the whole archive. Every offset and length is checked against the
// buffer before it is read; listing is linear in the archive's size and the number of
// names is capped; unpacking stops at a byte budget the caller gives (a zip bomb costs at
// most that much memory and inflate time). Names come from the central directory AND from
// the local file headers (an archive may list a harmless name in one and the real one in
// the other; extractors differ in which they trust). Logs nothing.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moat::filters::attachments {

// One member's stored bytes, from its local file header (the central directory's sizes
// are used where the local header defers them to a data descriptor).
struct ZipMember {
  std::string name;         // raw bytes as stored
  uint64_t dataOffset = 0;  // into the archive
  uint64_t compressedSize = 0;
  bool sizeKnown = true;   // false: no size anywhere (data descriptor, no directory)
  uint16_t method = 0;     // 0 stored, 8 deflated; others are not unpacked
  bool encrypted = false;  // general purpose flag bit 0 (or 6, strong encryption)
};

struct ZipListing {
  std::vector<std::string> names;  // raw bytes as stored (UTF-8 or CP437), duplicates removed
  std::vector<ZipMember> members;  // one per distinct local header, at most maxNames
  bool isZip = false;              // a zip signature was found at all
  bool malformed = false;          // a structure pointed outside the buffer or was cut short
  bool truncated = false;          // more than maxNames names: the rest were not read
};

// True when `data` starts like a zip archive (local header, empty-archive or spanned marker).
bool looksLikeZip(std::string_view data);

ZipListing listZipNames(std::string_view data, size_t maxNames = 10000);

struct Unpacked {
  enum class Status { Ok, Budget, Malformed, Encrypted, Unsupported } status = Status::Ok;
  std::string_view stored;  // a stored member's bytes, in the archive
  std::string owned;        // a deflated member, inflated
  bool inflated = false;
  uint64_t cost = 0;  // bytes unpacked, to charge against the budget (see unpackMember)
  // The member's bytes. Made on each call, not kept: a view kept into `owned` would point
  // into the old object once an Unpacked is moved (a short string lives inside it).
  std::string_view data() const { return inflated ? std::string_view(owned) : stored; }
};

// The bytes of one member of `archive`. Stops, with status Budget, before the cost would
// pass `budget`; cost is the larger of the bytes read and the bytes produced, so a stream
// of empty deflate blocks costs what it reads and a bomb what it inflates. Memory: at most
// `budget` bytes plus one 64 KB step.
Unpacked unpackMember(std::string_view archive, const ZipMember& member, uint64_t budget);

// The first `n` bytes of a deflated member, inflating no more of its stream than `maxInput`
// bytes (*read: how many it read): enough to tell an archive by its signature without
// unpacking the rest. Fewer (or none) when the stream is shorter, broken, or gives nothing
// in that much input; none for a member that is not deflated or is encrypted.
std::string peekDeflated(std::string_view archive, const ZipMember& member, size_t n, uint64_t maxInput,
                         uint64_t* read);

}  // namespace moat::filters::attachments
