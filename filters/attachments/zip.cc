// filters/attachments/zip.cc — see zip.h. All reads go through Reader, which refuses any
// offset or length that leaves the buffer; nothing here trusts a size the archive states.
#include "filters/attachments/zip.h"

#include <zlib.h>

#include <algorithm>
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
  // Returns false once the cap is reached. A name seen already (the directory and the
  // local headers both list it) does not count towards it.
  bool add(std::string_view name) {
    std::string key(name);
    if (seen_.count(key)) return true;
    if (out_.names.size() >= max_) {
      out_.truncated = true;
      return false;
    }
    seen_.insert(key);
    out_.names.push_back(std::move(key));
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
    if (!in_.sigAt(d.offset, kCentralSig) && d.size <= end && in_.sigAt(end - d.size, kCentralSig)) {
      shift_ = static_cast<int64_t>(end - d.size) - static_cast<int64_t>(d.offset);
      d.offset = end - d.size;
    }
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
      addMember(pos, *name);
      pos += kCentralSize + n + e + c;
    }
  }

  // The zip64 extended information extra field (APPNOTE 4.5.3): the 8-byte values that
  // replace the 0xFFFFFFFF ones, in the order uncompressed, compressed, offset.
  void zip64Extra(uint64_t extra, uint64_t len, uint64_t usize, uint64_t& csize, uint64_t& offset) const {
    uint64_t end = extra + len;
    while (extra + 4 <= end && in_.has(extra, 4)) {
      uint64_t id = *in_.le(extra, 2), size = *in_.le(extra + 2, 2);
      if (id == 1) {
        uint64_t at = extra + 4;
        if (usize == 0xFFFFFFFF) at += 8;
        if (csize == 0xFFFFFFFF) {
          if (auto v = in_.le(at, 8)) csize = *v;
          at += 8;
        }
        if (offset == 0xFFFFFFFF)
          if (auto v = in_.le(at, 8)) offset = *v;
        return;
      }
      extra += 4 + size;
    }
  }

  // The member a central directory entry at `pos` describes, its data found through its
  // local header (whose own name and extra lengths say where the data starts).
  void addMember(uint64_t pos, std::string_view name) {
    if (out_.members.size() >= max_) return;
    uint64_t flags = *in_.le(pos + 8, 2), method = *in_.le(pos + 10, 2);
    uint64_t csize = *in_.le(pos + 20, 4), usize = *in_.le(pos + 24, 4), offset = *in_.le(pos + 42, 4);
    uint64_t n = *in_.le(pos + 28, 2), e = *in_.le(pos + 30, 2);
    zip64Extra(pos + kCentralSize + n, e, usize, csize, offset);
    uint64_t local = offset + static_cast<uint64_t>(shift_);
    if (!in_.sigAt(local, kLocalSig)) local = offset;
    if (!in_.sigAt(local, kLocalSig) || !in_.has(local, kLocalSize)) {
      out_.malformed = true;
      return;
    }
    ZipMember m;
    m.name = std::string(name);
    m.dataOffset = local + kLocalSize + *in_.le(local + 26, 2) + *in_.le(local + 28, 2);
    m.compressedSize = csize;
    m.method = static_cast<uint16_t>(method);
    m.encrypted = (flags & 0x41) != 0;
    if (seenLocal_.insert(local).second) out_.members.push_back(std::move(m));
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
      // A member the central directory did not list (cut short, or hidden from it).
      if (out_.members.size() < max_ && seenLocal_.insert(pos).second) {
        ZipMember m;
        m.name = std::string(*name);
        m.dataOffset = dataAt;
        m.compressedSize = sizeKnown ? compressed : 0;
        m.sizeKnown = sizeKnown;
        m.method = static_cast<uint16_t>(*in_.le(pos + 8, 2));
        m.encrypted = (flags & 0x41) != 0;
        out_.members.push_back(std::move(m));
      }
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
  std::unordered_set<uint64_t> seenLocal_;  // local header offsets with a member
  int64_t shift_ = 0;                       // bytes in front of the archive (see directory())
  bool noEnd_ = false;
};

// zlib's inflate state, ended on every path.
class Inflater {
 public:
  Inflater() { ok_ = inflateInit2(&z_, -MAX_WBITS) == Z_OK; }  // raw deflate, no zlib header
  ~Inflater() {
    if (ok_) inflateEnd(&z_);
  }
  Inflater(const Inflater&) = delete;
  Inflater& operator=(const Inflater&) = delete;
  bool ok() const { return ok_; }
  z_stream& z() { return z_; }

 private:
  z_stream z_{};
  bool ok_ = false;
};

constexpr uint64_t kInflateStep = 64 * 1024;

void inflateInto(std::string_view in, bool complete, uint64_t budget, Unpacked& u) {
  Inflater inf;
  if (!inf.ok()) {
    u.status = Unpacked::Status::Malformed;
    return;
  }
  z_stream& z = inf.z();
  uint64_t consumed = 0;
  for (;;) {
    uint64_t outRoom = budget - std::min<uint64_t>(budget, u.owned.size());
    uint64_t inRoom = std::min<uint64_t>(in.size() - consumed, budget - std::min(budget, consumed));
    if (outRoom == 0 || (inRoom == 0 && consumed < in.size())) {
      u.status = Unpacked::Status::Budget;
      break;
    }
    size_t old = u.owned.size();
    size_t step = static_cast<size_t>(std::min(kInflateStep, outRoom));
    u.owned.resize(old + step);
    uInt feed = static_cast<uInt>(std::min<uint64_t>(inRoom, 1u << 30));
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data() + consumed));
    z.avail_in = feed;
    z.next_out = reinterpret_cast<Bytef*>(u.owned.data() + old);
    z.avail_out = static_cast<uInt>(step);
    int rc = inflate(&z, Z_NO_FLUSH);
    consumed += feed - z.avail_in;
    u.owned.resize(old + step - z.avail_out);
    if (rc == Z_STREAM_END) break;
    // No progress with input left is a broken stream; with none left, one cut short.
    bool stuck = rc == Z_BUF_ERROR && z.avail_out == step && z.avail_in == feed;
    if ((rc != Z_OK && rc != Z_BUF_ERROR) || stuck) {
      u.status = Unpacked::Status::Malformed;
      break;
    }
  }
  if (u.status == Unpacked::Status::Ok && !complete) u.status = Unpacked::Status::Malformed;
  u.cost = std::max<uint64_t>(consumed, u.owned.size());
  u.inflated = true;
}

}  // namespace

bool looksLikeZip(std::string_view data) {
  return data.substr(0, 4) == kLocalSig || data.substr(0, 4) == kEndSig ||
         data.substr(0, 4) == std::string_view("PK\x07\x08", 4);
}

ZipListing listZipNames(std::string_view data, size_t maxNames) { return Lister(data, maxNames).run(); }

Unpacked unpackMember(std::string_view archive, const ZipMember& member, uint64_t budget) {
  Unpacked u;
  if (member.encrypted) {
    u.status = Unpacked::Status::Encrypted;
    return u;
  }
  if (member.method != 0 && member.method != 8) {
    u.status = Unpacked::Status::Unsupported;
    return u;
  }
  if (member.dataOffset > archive.size()) {
    u.status = Unpacked::Status::Malformed;
    return u;
  }
  std::string_view rest = archive.substr(member.dataOffset);
  if (member.method == 0) {
    if (!member.sizeKnown || member.compressedSize > rest.size()) {
      u.status = Unpacked::Status::Malformed;
    } else if (member.compressedSize > budget) {
      u.status = Unpacked::Status::Budget;
      u.cost = budget;
    } else {
      u.stored = rest.substr(0, member.compressedSize);
      u.cost = member.compressedSize;
    }
    return u;
  }
  // Deflate ends itself: without a known size the stream is read to where it stops.
  bool complete = !member.sizeKnown || member.compressedSize <= rest.size();
  inflateInto(member.sizeKnown ? rest.substr(0, member.compressedSize) : rest, complete, budget, u);
  if (u.status == Unpacked::Status::Budget) u.cost = budget;
  return u;
}

std::string peekDeflated(std::string_view archive, const ZipMember& member, size_t n, uint64_t maxInput,
                         uint64_t* read) {
  *read = 0;
  if (member.encrypted || member.method != 8 || member.dataOffset >= archive.size()) return {};
  std::string_view in = archive.substr(member.dataOffset);
  if (member.sizeKnown) in = in.substr(0, member.compressedSize);
  in = in.substr(0, maxInput);
  Inflater inf;
  if (!inf.ok() || in.empty()) return {};
  std::string out(n, '\0');
  z_stream& z = inf.z();
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(n);
  inflate(&z, Z_NO_FLUSH);  // as far as the output or the input goes; an error keeps what came before
  out.resize(n - z.avail_out);
  *read = in.size() - z.avail_in;
  return out;
}

}  // namespace moat::filters::attachments
