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

std::vector<Edit> composeEdits(const std::vector<Edit>& applied, std::string_view edited,
                               const std::vector<Edit>& over) {
  // Where each applied edit's replacement sits in `edited`: [start[i], stop[i]).
  std::vector<uint64_t> start(applied.size()), stop(applied.size());
  uint64_t mPos = 0, ePos = 0;
  for (size_t i = 0; i < applied.size(); ++i) {
    ePos += applied[i].offset - mPos;
    start[i] = ePos;
    ePos += applied[i].replacement.size();
    stop[i] = ePos;
    mPos = applied[i].end();
  }
  // Over edit `b` touches applied edit `i`: shares a byte of its replacement or an edge.
  auto touches = [&](const Edit& b, size_t i) { return b.offset <= stop[i] && b.end() >= start[i]; };
  // The message offset of edited offset `e`, in text no applied edit wrote, before applied[i]
  // (or after the last one when i == applied.size()).
  auto toMessage = [&](uint64_t e, size_t i) -> uint64_t {
    if (i < applied.size()) return applied[i].offset - (start[i] - e);
    if (applied.empty()) return e;
    return applied.back().end() + (e - stop.back());
  };
  auto join = [](std::string& why, const std::string& more) {
    if (more.empty()) return;
    if (!why.empty()) why += "; ";
    why += more;
  };
  std::vector<Edit> out;
  out.reserve(applied.size() + over.size());
  size_t i = 0, j = 0;
  while (i < applied.size() || j < over.size()) {
    if (j == over.size() || (i < applied.size() && over[j].offset > stop[i])) {
      out.push_back(applied[i++]);  // untouched by the later edits
      continue;
    }
    if (i == applied.size() || over[j].end() < start[i]) {
      Edit m = over[j];  // in text as received: moved to the message's offsets
      m.offset = toMessage(over[j].offset, i);
      out.push_back(std::move(m));
      ++j;
      continue;
    }
    // over[j] touches applied[i]: one edit for them and every edit chained to them.
    size_t i0 = i++, j0 = j++;
    for (bool grew = true; grew;) {
      grew = false;
      for (; j < over.size() && touches(over[j], i - 1); ++j) grew = true;
      for (; i < applied.size() && touches(over[j - 1], i); ++i) grew = true;
    }
    uint64_t gStart = std::min(start[i0], over[j0].offset);
    uint64_t gEnd = std::max(stop[i - 1], over[j - 1].end());
    Edit g;
    g.offset = toMessage(gStart, i0);
    g.length = applied[i - 1].end() + (gEnd - stop[i - 1]) - g.offset;
    std::vector<Edit> local(over.begin() + static_cast<std::ptrdiff_t>(j0),
                            over.begin() + static_cast<std::ptrdiff_t>(j));
    for (auto& b : local) b.offset -= gStart;
    g.replacement = applyEdits(edited.substr(gStart, gEnd - gStart), local);
    // The reasons in the order the changes were made: the earlier ones first.
    for (size_t k = i0; k < i; ++k) join(g.why, applied[k].why);
    for (size_t k = j0; k < j; ++k) join(g.why, over[k].why);
    out.push_back(std::move(g));
  }
  return out;
}

}  // namespace moat::filters
