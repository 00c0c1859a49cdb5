// filters/edit.cc — see edit.h.
#include "filters/edit.h"

#include <algorithm>

namespace moat::filters {

namespace {

// The order addEdit keeps and editsValid expects.
bool before(const Edit& a, const Edit& b) { return a.offset != b.offset ? a.offset < b.offset : a.end() < b.end(); }

}  // namespace

bool editsCollide(const Edit& a, const Edit& b) {
  if (a.length == 0 && b.length == 0) return false;
  if (a.length == 0) return a.offset > b.offset && a.offset < b.end();
  if (b.length == 0) return b.offset > a.offset && b.offset < a.end();
  return a.offset < b.end() && b.offset < a.end();
}

bool addEdit(std::vector<Edit>& accepted, Edit e, uint64_t messageSize) {
  if (e.offset > messageSize || e.length > messageSize - e.offset) return false;
  for (const auto& a : accepted)
    if (editsCollide(a, e)) return false;
  // upper_bound: an edit equal in order to earlier ones goes after them (arrival order).
  auto at = std::upper_bound(accepted.begin(), accepted.end(), e, before);
  accepted.insert(at, std::move(e));
  return true;
}

bool editsValid(const std::vector<Edit>& edits, uint64_t messageSize) {
  uint64_t cursor = 0;
  for (size_t i = 0; i < edits.size(); ++i) {
    const Edit& e = edits[i];
    if (e.offset > messageSize || e.length > messageSize - e.offset) return false;
    if (e.offset < cursor) return false;  // overlaps the previous one, or out of order
    if (i > 0 && before(e, edits[i - 1])) return false;
    cursor = e.end();
  }
  return true;
}

uint64_t editedSize(uint64_t messageSize, const std::vector<Edit>& edits) {
  uint64_t size = messageSize;
  for (const auto& e : edits) size = size - e.length + e.replacement.size();
  return size;
}

std::string applyEdits(std::string_view message, const std::vector<Edit>& edits) {
  std::string out;
  if (editsValid(edits, message.size())) out.reserve(editedSize(message.size(), edits));
  uint64_t cursor = 0;
  for (const auto& e : edits) {
    if (e.offset < cursor || e.offset > message.size() || e.length > message.size() - e.offset) continue;
    out.append(message.substr(cursor, e.offset - cursor));
    out.append(e.replacement);
    cursor = e.end();
  }
  out.append(message.substr(cursor));
  return out;
}

}  // namespace moat::filters
