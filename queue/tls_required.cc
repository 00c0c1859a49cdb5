// queue/tls_required.cc — see tls_required.h.
#include "queue/tls_required.h"

#include <string>

#include "mta/runtime/scan.h"

namespace moat::queue {
namespace {

bool isWsp(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && isWsp(s.front())) s.remove_prefix(1);
  while (!s.empty() && isWsp(s.back())) s.remove_suffix(1);
  return s;
}

}  // namespace

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
    if (trim(field).empty()) return false;  // the empty line: the body starts
    size_t colon = field.find(':');
    if (colon == std::string_view::npos) continue;
    if (!mta::iequalsAscii(trim(field.substr(0, colon)), "TLS-Required")) continue;
    if (mta::iequalsAscii(trim(field.substr(colon + 1)), "No")) return true;
  }
  return false;
}

}  // namespace moat::queue
