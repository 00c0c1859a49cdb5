// mta/runtime/data_lines.cc — see data_lines.h. RFC 5321 §4.5.2, §4.5.3.1.6.
#include "mta/runtime/data_lines.h"

#include <algorithm>
#include <cstdint>

#include "mta/runtime/scan.h"

namespace moat::mta {

bool DataLines::next(std::string& out, size_t limit) {
  size_t taken = 0;
  while (part < 2 && taken < limit) {
    std::string_view p = parts[part];
    size_t n = std::min(p.size() - pos, limit - taken);
    size_t end = pos + n;
    while (pos < end) {
      // Inside a line, everything up to the next CR or LF goes out as it is, and so do
      // the lines after it while each ends in CRLF and the next does not start with '.':
      // copied in one piece instead of byte by byte (put() handles the rest).
      if (!prevCr && !lineStart) {
        const char* b = p.data() + pos;
        size_t len = end - pos, k = 0;
        for (;;) {
          size_t br = findLineBreak(b + k, len - k);
          if (col + br > kMaxLine) {  // up to the limit; put() breaks the line there
            k += kMaxLine - col;
            col = kMaxLine;
            break;
          }
          k += br;
          col += br;
          if (k + 2 < len && b[k] == '\r' && b[k + 1] == '\n' && b[k + 2] != '.') {
            k += 2;
            col = 0;
            continue;
          }
          break;
        }
        out.append(b, k);
        pos += k;
        if (pos == end) break;
      }
      put(out, p[pos++]);
    }
    taken += n;
    if (pos == p.size()) {
      ++part;
      pos = 0;
    }
  }
  if (part < 2) return false;
  if (prevCr)
    out += '\n';
  else if (!lineStart)
    out += "\r\n";
  if (dotStuff) out += ".\r\n";
  done = true;
  return true;
}

void DataLines::put(std::string& out, char c) {
  bool wasCr = prevCr;
  prevCr = false;
  if (wasCr && c != '\n') {  // a bare CR ends the line
    out += '\n';
    lineStart = true;
    col = 0;
  }
  if (c == '\r') {
    out += '\r';
    prevCr = true;
    return;
  }
  if (c == '\n') {
    if (!wasCr) out += '\r';
    out += '\n';
    lineStart = true;
    col = 0;
    return;
  }
  if (col >= kMaxLine) {
    out += "\r\n ";
    col = 1;
  }
  if (lineStart && c == '.') {
    if (dotStuff) out += '.';
    ++col;
  }
  out += c;
  ++col;
  lineStart = false;
}

std::string asDelivered(std::string_view message) {
  DataLines lines;
  lines.dotStuff = false;
  lines.parts[0] = message;
  std::string out;
  out.reserve(message.size() + message.size() / 256 + 2);
  lines.next(out, SIZE_MAX);  // one piece: the whole message
  return out;
}

}  // namespace moat::mta
