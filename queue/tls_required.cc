// queue/tls_required.cc — see tls_required.h.
#include "queue/tls_required.h"

#include <string>

#include "mta/runtime/scan.h"

namespace moat::queue {
bool tlsRequiredNo(std::string_view message) {
  std::string_view head = message.substr(0, kMaxTlsRequiredHeaderBytes);
  size_t pos = 0;
  while (pos < head.size()) {
    // One field: its first line and every continuation line (starting with SP or HTAB).
    size_t end = pos;
    for (;;) {
      size_t nl = head.find('\n', end);
      if (nl == std::string_view::npos) {
        end = head.size();
        break;
      }
      end = nl + 1;
      if (end >= head.size() || (head[end] != ' ' && head[end] != '\t')) break;
    }
    std::string_view field = head.substr(pos, end - pos);
    pos = end;
    if (mta::trimWhite(field).empty()) return false;  // the empty line: the body starts
    size_t colon = field.find(':');
    if (colon == std::string_view::npos) continue;
    if (!mta::iequalsAscii(mta::trimWhite(field.substr(0, colon)), "TLS-Required")) continue;
    if (mta::iequalsAscii(mta::trimWhite(field.substr(colon + 1)), "No")) return true;
  }
  return false;
}

}  // namespace moat::queue
