// tests/fuzz/fuzz_zip.cc — libFuzzer target for the zip reader the attachment filter runs on
// every zip a sender attaches (filters/attachments/zip.h). Input layout: byte 0 = the name cap
// (1..256), byte 1 = the unpacking budget in KB (1..256), the rest = the archive. Each archive
// is listed, each member peeked at and unpacked, and an unpacked member that starts like a
// zip is walked the same way, three levels at most, as the filter does. Checked:
//   - listings stay within the name cap (names and members);
//   - an unpacked member costs no more than the budget, holds no more than budget plus one
//     inflate step, and a stored one's bytes lie inside the archive;
//   - a peek gives at most the bytes asked for and reads no more input than allowed.
// Memory and time are the sanitizers' and libFuzzer's to watch (-rss_limit_mb, -timeout).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "filters/attachments/zip.h"
#include "tests/fuzz/fuzz_check.h"

using namespace moat::filters::attachments;

namespace {

constexpr uint64_t kInflateStep = 64 * 1024;  // zip.cc's output step

void walk(std::string_view archive, size_t maxNames, uint64_t budget, int depth) {
  ZipListing l = listZipNames(archive, maxNames);
  FUZZ_CHECK(l.names.size() <= maxNames);
  FUZZ_CHECK(l.members.size() <= maxNames);
  for (const auto& m : l.members) {
    uint64_t read = 0;
    std::string head = peekDeflated(archive, m, 4, 512, &read);
    FUZZ_CHECK(head.size() <= 4);
    FUZZ_CHECK(read <= 512);
    Unpacked u = unpackMember(archive, m, budget);
    FUZZ_CHECK(u.cost <= budget);
    FUZZ_CHECK(u.owned.size() <= budget + kInflateStep);
    std::string_view bytes = u.data();
    if (!u.inflated && !bytes.empty())
      FUZZ_CHECK(bytes.data() >= archive.data() && bytes.data() + bytes.size() <= archive.data() + archive.size());
    if (u.status == Unpacked::Status::Ok && depth < 3 && looksLikeZip(bytes)) walk(bytes, maxNames, budget, depth + 1);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  size_t maxNames = 1 + data[0];
  uint64_t budget = (1 + static_cast<uint64_t>(data[1])) * 1024;
  walk(std::string_view(reinterpret_cast<const char*>(data) + 2, size - 2), maxNames, budget, 1);
  return 0;
}
