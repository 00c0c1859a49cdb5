// filters/attachments/zip.cc — see zip.h. All reads go through Reader, which refuses any
// offset or length that leaves the buffer; nothing here trusts a size the archive states.
#include "filters/attachments/zip.h"

#include <cstdint>
#include <optional>
#include <unordered_set>

namespace moat::filters::attachments {

namespace {

constexpr std::string_view kLocalSig{"PK\x03\x04", 4};
constexpr std::string_view kCentralSig{"PK\x01\x02", 4};
constexpr std::string_view kEndSig{"PK\x05\x06", 4};
constexpr std::string_view kEnd64Sig{"PK\x06\x06", 4};
constexpr std::string_view kLocator64Sig{"PK\x06\x07", 4};
constexpr size_t kEndSize = 22;
constexpr size_t kLocator64Size = 20;
constexpr size_t kEnd64Size = 56;
constexpr size_t kCentralSize = 46;
constexpr size_t kLocalSize = 30;
constexpr size_t kMaxComment = 65535;

class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}
  size_t size() const { return data_.size(); }
  bool has(uint64_t pos, uint64_t len) const { return pos <= data_.size() && len <= data_.size() - pos; }
  bool sigAt(uint64_t pos, std::string_view sig) const { return has(pos, 4) && data_.substr(pos, 4) == sig; }
  std::optional<uint64_t> le(uint64_t pos, unsigned bytes) const {
    if (!has(pos, bytes)) return std::nullopt;
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; ++i) v |= uint64_t(uint8_t(data_[pos + i])) << (8 * i);
    return v;
  }
  std::optional<std::string_view> bytes(uint64_t pos, uint64_t len) const {
    if (!has(pos, len)) return std::nullopt;
    return data_.substr(pos, len);
  }
  size_t find(std::string_view sig, size_t from) const { return data_.find(sig, from); }
  std::string_view data() const { return data_; }

 private:
  std::string_view data_;
};

class Lister {
 public:
  Lister(std::string_view data, size_t maxNames) : in_(data), max_(maxNames) {}

  ZipListing run() {
    readCentralDirectory();
    readLocalHeaders();
    return std::move(out_);
  }

 private:
  // Returns false once the cap is reached.
  bool add(std::string_view name) {
    if (out_.names.size() >= max_) {
      out_.truncated = true;
      return false;
    }
    if (seen_.insert(std::string(name)).second) out_.names.emplace_back(name);
    return true;
  }

  // The end record is within the last 22 + 65535 bytes; the last one found wins.
  std::optional<uint64_t> findEnd() const {
    if (in_.size() < kEndSize) return std::nullopt;
    uint64_t lowest = in_.size() > kEndSize + kMaxComment ? in_.size() - kEndSize - kMaxComment : 0;
    for (uint64_t p = in_.size() - kEndSize + 1; p-- > lowest;)
      if (in_.sigAt(p, kEndSig)) return p;
    return std::nullopt;
  }

  struct Directory {
    uint64_t offset = 0, size = 0, entries = 0;
  };

  std::optional<Directory> directory(uint64_t end) {
    auto entries = in_.le(end + 10, 2), size = in_.le(end + 12, 4), offset = in_.le(end + 16, 4);
    if (!entries || !size || !offset) return std::nullopt;
    Directory d{*offset, *size, *entries};
    if (*offset == 0xFFFFFFFF || *size == 0xFFFFFFFF || *entries == 0xFFFF) zip64(end, d);
    // An archive with bytes in front (self-extractors, mail tools) has stated offsets that
    // are off by that prefix; the directory ends where the end record starts.
    if (!in_.sigAt(d.offset, kCentralSig) && d.size <= end && in_.sigAt(end - d.size, kCentralSig))
      d.offset = end - d.size;
    return d;
  }

  void zip64(uint64_t end, Directory& d) {
    if (end < kLocator64Size || !in_.sigAt(end - kLocator64Size, kLocator64Sig)) return;
    auto at = in_.le(end - kLocator64Size + 8, 8);
    if (!at || !in_.sigAt(*at, kEnd64Sig) || !in_.has(*at, kEnd64Size)) {
      out_.malformed = true;
      return;
    }
    d.entries = *in_.le(*at + 32, 8);
    d.size = *in_.le(*at + 40, 8);
    d.offset = *in_.le(*at + 48, 8);
  }

  void readCentralDirectory() {
    auto end = findEnd();
    if (!end) {
      noEnd_ = true;
      return;
    }
    out_.isZip = true;
    auto dir = directory(*end);
    if (!dir) {
      out_.malformed = true;
      return;
    }
    uint64_t pos = dir->offset;
    // Bounded by the entry count, the cap and the buffer: each step moves forward >= 46.
    for (uint64_t i = 0; i < dir->entries; ++i) {
      if (!in_.sigAt(pos, kCentralSig) || !in_.has(pos, kCentralSize)) {
        out_.malformed = true;
        return;
      }
      uint64_t n = *in_.le(pos + 28, 2), e = *in_.le(pos + 30, 2), c = *in_.le(pos + 32, 2);
      auto name = in_.bytes(pos + kCentralSize, n);
      if (!name) {
        out_.malformed = true;
        return;
      }
      if (!add(*name)) return;
      pos += kCentralSize + n + e + c;
    }
  }

  // Walks the local headers by their stated sizes; where a size is unknown (a data
  // descriptor follows, zip64) or wrong, searches for the next header signature.
  void readLocalHeaders() {
    size_t pos = in_.find(kLocalSig, 0);
    if (pos == std::string_view::npos) return;
    out_.isZip = true;
    if (noEnd_) out_.malformed = true;  // cut short: the central directory is missing
    while (pos != std::string_view::npos) {
      if (!in_.has(pos, kLocalSize)) {
        out_.malformed = true;
        return;
      }
      uint64_t flags = *in_.le(pos + 6, 2), compressed = *in_.le(pos + 18, 4);
      uint64_t n = *in_.le(pos + 26, 2), e = *in_.le(pos + 28, 2);
      auto name = in_.bytes(pos + kLocalSize, n);
      if (!name) {
        out_.malformed = true;
        return;
      }
      if (!add(*name)) return;
      uint64_t dataAt = pos + kLocalSize + n + e;
      bool sizeKnown = !(flags & 0x8) && compressed != 0xFFFFFFFF;
      if (sizeKnown && in_.has(dataAt, compressed) && in_.sigAt(dataAt + compressed, kLocalSig)) {
        pos = dataAt + compressed;
      } else if (sizeKnown && in_.has(dataAt, compressed)) {
        return;  // the data ends where the central directory (or junk) starts
      } else {
        if (sizeKnown) out_.malformed = true;  // the stated data runs past the end
        pos = in_.find(kLocalSig, pos + 4);
      }
    }
  }

  Reader in_;
  size_t max_;
  ZipListing out_;
  std::unordered_set<std::string> seen_;
  bool noEnd_ = false;
};

}  // namespace

bool looksLikeZip(std::string_view data) {
  return data.substr(0, 4) == kLocalSig || data.substr(0, 4) == kEndSig ||
         data.substr(0, 4) == std::string_view("PK\x07\x08", 4);
}

ZipListing listZipNames(std::string_view data, size_t maxNames) { return Lister(data, maxNames).run(); }

}  // namespace moat::filters::attachments
