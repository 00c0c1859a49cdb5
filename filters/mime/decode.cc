// filters/mime/decode.cc — the content decoders of MIME: base64 and quoted-printable
// (RFC 2045 section 6), RFC 2047 encoded words, and charset conversion to UTF-8 through
// glibc iconv. Untrusted input: every byte; decoders skip what they cannot read rather than
// fail, as mail readers do. Logs nothing.
#include <iconv.h>

#include <cerrno>
#include <cstring>

#include "filters/mime/mime.h"
#include "mta/runtime/base64.h"

namespace moat::filters::mime {

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

std::string toLower(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

namespace {

int hexValue(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

void appendReplacement(std::string& out) { out += "\xEF\xBF\xBD"; }

// iconv_t with RAII; (iconv_t)-1 when the charset is unknown.
class Iconv {
 public:
  Iconv(const std::string& to, const std::string& from) : cd_(iconv_open(to.c_str(), from.c_str())) {}
  ~Iconv() {
    if (ok()) iconv_close(cd_);
  }
  Iconv(const Iconv&) = delete;
  Iconv& operator=(const Iconv&) = delete;
  bool ok() const { return cd_ != reinterpret_cast<iconv_t>(-1); }
  iconv_t get() const { return cd_; }

 private:
  iconv_t cd_;
};

bool isUtf8Name(std::string_view cs) { return iequals(cs, "utf-8") || iequals(cs, "utf8"); }
bool isAsciiName(std::string_view cs) {
  return cs.empty() || iequals(cs, "us-ascii") || iequals(cs, "ascii");
}

// Copies valid UTF-8, replacing invalid sequences, so later stages see valid UTF-8.
void sanitizeUtf8(std::string_view in, std::string& out) {
  out.reserve(out.size() + in.size());
  size_t i = 0, run = 0;  // [run, i) is valid and not yet appended: copied in one go
  while (i < in.size()) {
    // ASCII eight bytes at a time: most text is all ASCII.
    while (i + 8 <= in.size()) {
      uint64_t w;
      std::memcpy(&w, in.data() + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= in.size()) break;
    unsigned char c = static_cast<unsigned char>(in[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    bool good = n > 0 && i + n <= in.size() && !(n == 2 && c < 0xC2);
    for (size_t k = 1; good && k < n; ++k) good = (static_cast<unsigned char>(in[i + k]) & 0xC0) == 0x80;
    if (good) {
      i += n;
      continue;
    }
    out.append(in.substr(run, i - run));
    appendReplacement(out);
    run = ++i;
  }
  out.append(in.substr(run));
}

}  // namespace

std::string decodeBase64(std::string_view in) { return mta::base64DecodeMime(in); }

std::string decodeQuotedPrintable(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  size_t i = 0;
  while (i < in.size()) {
    size_t eol = in.find('\n', i);
    size_t end = eol == std::string_view::npos ? in.size() : eol;
    size_t lineEnd = end;
    if (lineEnd > i && in[lineEnd - 1] == '\r') --lineEnd;
    // Trailing blanks were added in transport (RFC 2045 6.7 rule 3).
    while (lineEnd > i && (in[lineEnd - 1] == ' ' || in[lineEnd - 1] == '\t')) --lineEnd;
    bool soft = lineEnd > i && in[lineEnd - 1] == '=';
    if (soft) --lineEnd;
    for (size_t k = i; k < lineEnd; ++k) {
      int hi = k + 2 < lineEnd ? hexValue(static_cast<unsigned char>(in[k + 1])) : -1;
      int lo = k + 2 < lineEnd ? hexValue(static_cast<unsigned char>(in[k + 2])) : -1;
      if (in[k] == '=' && hi >= 0 && lo >= 0) {
        out.push_back(static_cast<char>(hi * 16 + lo));
        k += 2;
      } else {
        out.push_back(in[k]);
      }
    }
    if (eol == std::string_view::npos) break;
    if (!soft) out += "\r\n";
    i = eol + 1;
  }
  return out;
}

bool toUtf8(std::string_view bytes, std::string_view charset, std::string& out) {
  std::string cs = toLower(charset);
  if (isUtf8Name(cs) || isAsciiName(cs)) {
    sanitizeUtf8(bytes, out);
    return true;
  }
  Iconv cd("UTF-8", cs);
  if (!cd.ok()) {
    out.append(bytes);
    return false;
  }
  std::string in(bytes);
  char* src = in.data();
  size_t left = in.size();
  char buf[4096];
  while (left > 0) {
    char* dst = buf;
    size_t room = sizeof buf;
    size_t r = iconv(cd.get(), &src, &left, &dst, &room);
    out.append(buf, static_cast<size_t>(dst - buf));
    if (r != static_cast<size_t>(-1)) continue;
    if (errno == E2BIG) continue;
    // EILSEQ / EINVAL: skip one byte and mark it.
    appendReplacement(out);
    ++src;
    --left;
    iconv(cd.get(), nullptr, nullptr, nullptr, nullptr);
  }
  char* dst = buf;
  size_t room = sizeof buf;
  iconv(cd.get(), nullptr, nullptr, &dst, &room);
  out.append(buf, static_cast<size_t>(dst - buf));
  return true;
}

namespace {

struct EncodedWord {
  size_t begin = 0, end = 0;  // in the header value
  std::string charset;
  std::string bytes;
};

std::string decodeQWord(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    int hi = i + 2 < text.size() ? hexValue(static_cast<unsigned char>(text[i + 1])) : -1;
    int lo = i + 2 < text.size() ? hexValue(static_cast<unsigned char>(text[i + 2])) : -1;
    if (text[i] == '_') {
      out.push_back(' ');
    } else if (text[i] == '=' && hi >= 0 && lo >= 0) {
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

// The first occurrence of `needle` at or after a position, remembered: while the one found
// is not behind the position asked about, nothing lies between and it is still the answer.
// decodeHeaderWords asks at increasing positions, so a value full of "=?" without a "?="
// is scanned once, not once per "=?" (which was quadratic in the header's length).
class NextOf {
 public:
  NextOf(std::string_view v, std::string_view needle) : v_(v), needle_(needle) {}
  size_t at(size_t pos) {
    if (!known_ || pos < from_ || (found_ != std::string_view::npos && found_ < pos)) {
      found_ = v_.find(needle_, pos);
      from_ = pos;
      known_ = true;
    }
    return found_;
  }

 private:
  std::string_view v_, needle_;
  size_t from_ = 0, found_ = std::string_view::npos;
  bool known_ = false;
};

// Where the encoded words of one header value end: the next "?=" and the next blank.
struct WordScan {
  explicit WordScan(std::string_view v) : close(v, "?="), blank(v, " ") {}
  NextOf close, blank;
};

// Reads one encoded word =?charset?X?text?= at `pos`.
bool readEncodedWord(std::string_view v, size_t pos, EncodedWord& w, WordScan& scan) {
  if (v.compare(pos, 2, "=?") != 0) return false;
  size_t q1 = v.find('?', pos + 2);
  if (q1 == std::string_view::npos || q1 + 2 >= v.size() || v[q1 + 2] != '?') return false;
  char enc = v[q1 + 1];
  size_t q3 = scan.close.at(q1 + 3);
  if (q3 == std::string_view::npos) return false;
  std::string_view charset = v.substr(pos + 2, q1 - pos - 2);
  std::string_view text = v.substr(q1 + 3, q3 - q1 - 3);
  if (charset.empty() || scan.blank.at(q1 + 3) < q3) return false;
  if (auto star = charset.find('*'); star != std::string_view::npos) charset = charset.substr(0, star);  // RFC 2231 language
  if (enc == 'B' || enc == 'b') {
    w.bytes = decodeBase64(text);
  } else if (enc == 'Q' || enc == 'q') {
    w.bytes = decodeQWord(text);
  } else {
    return false;
  }
  w.charset = toLower(charset);
  w.begin = pos;
  w.end = q3 + 2;
  return true;
}

}  // namespace

std::string decodeHeaderWords(std::string_view v) {
  std::string out;
  std::string pendingBytes, pendingCharset;
  auto flush = [&] {
    if (!pendingBytes.empty()) toUtf8(pendingBytes, pendingCharset, out);
    pendingBytes.clear();
  };
  WordScan scan(v);
  size_t i = 0;
  bool lastWasWord = false;
  while (i < v.size()) {
    EncodedWord w;
    if (v[i] == '=' && readEncodedWord(v, i, w, scan)) {
      // Blanks between two encoded words are dropped (RFC 2047 section 6.2); bytes of
      // adjacent words in one charset are joined so split multibyte characters survive.
      if (!lastWasWord || w.charset != pendingCharset) flush();
      pendingCharset = w.charset;
      pendingBytes += w.bytes;
      i = w.end;
      lastWasWord = true;
      continue;
    }
    if (lastWasWord && (v[i] == ' ' || v[i] == '\t')) {
      size_t j = i;
      while (j < v.size() && (v[j] == ' ' || v[j] == '\t')) ++j;
      EncodedWord next;
      if (j < v.size() && readEncodedWord(v, j, next, scan)) {
        i = j;
        continue;
      }
    }
    flush();
    lastWasWord = false;
    size_t next = v.find("=?", i + 1);
    size_t stop = next == std::string_view::npos ? v.size() : next;
    // Raw 8-bit header text (RFC 6532) is taken as UTF-8.
    sanitizeUtf8(v.substr(i, stop - i), out);
    i = stop;
  }
  flush();
  return out;
}

}  // namespace moat::filters::mime
