// Tests for filters/attachments/zip: members found through the central directory and the
// local headers (also with bytes in front), and unpackMember on stored and deflated
// members: the bytes back, a budget that stops a bomb where it says (cost and memory), a
// stream cut short, encrypted and unsupported members, offsets past the buffer.
#include "filters/attachments/zip.h"

#include <zlib.h>

#include <catch2/catch.hpp>
#include <string>
#include <utility>
#include <vector>

using namespace moat::filters::attachments;

namespace {

void le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out += static_cast<char>((v >> (8 * i)) & 0xFF);
}

std::string rawDeflate(const std::string& in) {
  z_stream z{};
  REQUIRE(deflateInit2(&z, 9, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  std::string out(deflateBound(&z, in.size()), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&z, Z_FINISH) == Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

struct Entry {
  std::string name, data;
  uint16_t method = 0;  // data is already compressed when 8
  uint16_t flags = 0;
};

// A zip written by hand (CRCs 0: nothing here checks them), with `prefix` in front.
std::string makeZip(const std::vector<Entry>& entries, const std::string& prefix = "") {
  std::string local = prefix, central;
  for (const auto& e : entries) {
    uint64_t offset = local.size() - prefix.size();
    local += std::string("PK\x03\x04", 4);
    le(local, 20, 2);
    le(local, e.flags, 2);
    le(local, e.method, 2);
    le(local, 0, 4);
    le(local, 0, 4);
    le(local, e.data.size(), 4);
    le(local, 0, 4);
    le(local, e.name.size(), 2);
    le(local, 0, 2);
    local += e.name + e.data;
    central += std::string("PK\x01\x02", 4);
    le(central, 20, 2);
    le(central, 20, 2);
    le(central, e.flags, 2);
    le(central, e.method, 2);
    le(central, 0, 4);
    le(central, 0, 4);
    le(central, e.data.size(), 4);
    le(central, 0, 4);
    le(central, e.name.size(), 2);
    le(central, 0, 2);
    le(central, 0, 2);
    le(central, 0, 2);
    le(central, 0, 2);
    le(central, 0, 4);
    le(central, offset, 4);
    central += e.name;
  }
  std::string end("PK\x05\x06", 4);
  le(end, 0, 2);
  le(end, 0, 2);
  le(end, entries.size(), 2);
  le(end, entries.size(), 2);
  le(end, central.size(), 4);
  le(end, local.size() - prefix.size(), 4);
  le(end, 0, 2);
  return local + central + end;
}

}  // namespace

TEST_CASE("zip members: stored and deflated bytes back, found with bytes in front of the archive") {
  std::string text(5000, 'q');
  for (size_t i = 0; i < text.size(); i += 7) text[i] = static_cast<char>('a' + i % 26);
  for (const std::string& prefix : {std::string(), std::string(1000, 'M')}) {
    std::string zip = makeZip({{"s.txt", "stored bytes"}, {"d.txt", rawDeflate(text), 8}}, prefix);
    ZipListing l = listZipNames(zip);
    REQUIRE_FALSE(l.malformed);
    REQUIRE(l.members.size() == 2);
    Unpacked s = unpackMember(zip, l.members[0], 1 << 20);
    REQUIRE(s.status == Unpacked::Status::Ok);
    REQUIRE(s.data() == "stored bytes");
    REQUIRE(s.cost == 12);
    Unpacked d = unpackMember(zip, l.members[1], 1 << 20);
    REQUIRE(d.status == Unpacked::Status::Ok);
    REQUIRE(d.data() == text);
    REQUIRE(d.cost == text.size());
  }
  // Without the central directory (cut before it), the local headers still give the members.
  std::string zip = makeZip({{"a.txt", "AAAA"}, {"b.txt", "BBBB"}});
  std::string cut = zip.substr(0, zip.find(std::string("PK\x01\x02", 4)));
  ZipListing l = listZipNames(cut);
  REQUIRE(l.malformed);
  REQUIRE(l.members.size() == 2);
  REQUIRE(unpackMember(cut, l.members[1], 100).data() == "BBBB");
  // The first bytes of a deflated member, inflating no more of it than asked.
  {
    std::string big(200000, 'z');
    std::string zz = makeZip({{"big.txt", rawDeflate(big), 8}, {"s.txt", "stored"}});
    ZipListing zl = listZipNames(zz);
    uint64_t read = 0;
    REQUIRE(peekDeflated(zz, zl.members.at(0), 4, 1 << 16, &read) == "zzzz");
    REQUIRE(read > 0);
    REQUIRE(read < 1000);  // a few bytes of the stream, not its whole
    REQUIRE(peekDeflated(zz, zl.members.at(0), 4, 0, &read).empty());
    REQUIRE(read == 0);
    REQUIRE(peekDeflated(zz, zl.members.at(1), 4, 1 << 16, &read).empty());  // stored: not deflated
  }
  // A short inflated member (its string inside the object) still reads right once moved.
  std::string small = makeZip({{"t.txt", rawDeflate("tiny"), 8}});
  std::vector<Unpacked> kept;
  kept.push_back(unpackMember(small, listZipNames(small).members.at(0), 100));
  kept.reserve(16);  // moves it again
  REQUIRE(kept[0].status == Unpacked::Status::Ok);
  REQUIRE(kept[0].data() == "tiny");
}

TEST_CASE("unpackMember: the budget stops a bomb, cut streams and hostile members are reported") {
  // 64 MB of zeros deflate to ~64 KB: stopped at the budget, memory bounded by it.
  std::string bomb = rawDeflate(std::string(64u << 20, '\0'));
  REQUIRE(bomb.size() < (1u << 20));
  std::string zip = makeZip({{"bomb.zip", bomb, 8}});
  ZipListing l = listZipNames(zip);
  REQUIRE(l.members.size() == 1);
  Unpacked u = unpackMember(zip, l.members[0], 3u << 20);
  REQUIRE(u.status == Unpacked::Status::Budget);
  REQUIRE(u.cost == 3u << 20);
  REQUIRE(u.owned.size() <= 3u << 20);
  REQUIRE(u.owned.capacity() <= 6u << 20);
  REQUIRE(unpackMember(zip, l.members[0], 0).status == Unpacked::Status::Budget);

  // A stream cut short (its stated size halved), and one that is garbage.
  std::string data = rawDeflate(std::string(100000, 'x') + "tail");
  std::string half = makeZip({{"h.zip", data.substr(0, data.size() / 2), 8}});
  REQUIRE(unpackMember(half, listZipNames(half).members.at(0), 1 << 20).status == Unpacked::Status::Malformed);
  std::string junk = makeZip({{"j.zip", std::string(64, '\xFF'), 8}});
  REQUIRE(unpackMember(junk, listZipNames(junk).members.at(0), 1 << 20).status == Unpacked::Status::Malformed);

  // Stored: a stated size past the buffer, or over the budget.
  std::string stored = makeZip({{"s.zip", std::string(1000, 'z')}});
  ZipMember s = listZipNames(stored).members.at(0);
  REQUIRE(unpackMember(stored, s, 999).status == Unpacked::Status::Budget);
  s.compressedSize = stored.size();
  REQUIRE(unpackMember(stored, s, 1u << 30).status == Unpacked::Status::Malformed);
  s.dataOffset = stored.size() + 10;
  REQUIRE(unpackMember(stored, s, 1u << 30).status == Unpacked::Status::Malformed);

  // Encrypted (flag bit 0) and bzip2 (method 12) members are not unpacked.
  std::string enc = makeZip({{"e.zip", "xxxx", 0, 1}, {"b.zip", "xxxx", 12}});
  ZipListing el = listZipNames(enc);
  REQUIRE(el.members.size() == 2);
  REQUIRE(el.members[0].encrypted);
  REQUIRE(unpackMember(enc, el.members[0], 100).status == Unpacked::Status::Encrypted);
  REQUIRE(unpackMember(enc, el.members[1], 100).status == Unpacked::Status::Unsupported);
}
