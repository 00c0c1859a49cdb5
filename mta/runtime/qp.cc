// mta/runtime/qp.cc — see qp.h. RFC 2045 §6.7 rules 1-5.
#include "mta/runtime/qp.h"

#include "mta/runtime/scan.h"

namespace moat::mta {

namespace {

constexpr size_t kMaxLine = 76;  // RFC 2045 §6.7 rule 5

const char kHex[] = "0123456789ABCDEF";

// One line's worth of quoted-printable (RFC 2045 §6.7 rules 1-5), written to `out`.
void encodeQpLine(std::string_view line, std::string& out) {
  size_t col = 0;
  for (size_t i = 0; i < line.size(); ++i) {
    auto c = static_cast<unsigned char>(line[i]);
    bool last = i + 1 == line.size();
    bool literal = (c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !last);
    size_t width = literal ? 1 : 3;
    // A soft break takes a column of its own, except on the line's last piece.
    if (col + width > (last ? kMaxLine : kMaxLine - 1)) {
      out += "=\r\n";
      col = 0;
    }
    if (literal) {
      out += static_cast<char>(c);
    } else {
      out += '=';
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
    col += width;
  }
}

}  // namespace

std::string encodeQuotedPrintable(std::string_view text) {
  std::string out;
  out.reserve(text.size() + text.size() / 4 + 8);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t n = findLineBreak(text.data() + pos, text.size() - pos);
    encodeQpLine(text.substr(pos, n), out);
    pos += n;
    if (pos == text.size()) break;
    // CRLF, or a bare CR or LF, is one hard break.
    pos += text[pos] == '\r' && pos + 1 < text.size() && text[pos + 1] == '\n' ? 2 : 1;
    out += "\r\n";
  }
  return out;
}

}  // namespace moat::mta
