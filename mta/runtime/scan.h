// mta/runtime/scan.h — scans over message bytes. findLineBreak finds the next line break
// 16 bytes at a time: the DATA decoder and the SMTP client's dot-stuffing look for the end
// of every line of every message, and a byte loop or two memchr calls per line were a tenth
// of the CPU of relaying a 256 KB message. hasEightBit, utf8Seq and headerBlock are what the
// SMTP parser, the client and the DSN builder ask of addresses and messages. Untrusted input:
// any bytes; reads only the range given.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace moat::mta {

// The index of the first '\r' or '\n' in [p, p + n), or n if there is none.
inline size_t findLineBreak(const char* p, size_t n) {
  size_t i = 0;
#if defined(__SSE2__)
  const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
  for (; i + 16 <= n; i += 16) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
    auto mask = static_cast<unsigned>(_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf))));
    if (mask != 0) return i + static_cast<size_t>(__builtin_ctz(mask));
  }
#endif
  for (; i < n; ++i)
    if (p[i] == '\r' || p[i] == '\n') return i;
  return n;
}

// Whether any byte is outside US-ASCII: 8-bit data (RFC 6152), or UTF-8 (RFC 6531).
// 16 bytes at a time: the SMTP client asks it of whole messages for a next hop without
// 8BITMIME, on the event loop.
inline bool hasEightBit(std::string_view s) {
  const char* p = s.data();
  size_t i = 0, n = s.size();
#if defined(__SSE2__)
  for (; i + 16 <= n; i += 16)
    if (_mm_movemask_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i))) != 0) return true;
#endif
  for (; i < n; ++i)
    if (static_cast<unsigned char>(p[i]) >= 0x80) return true;
  return false;
}

// Length of the well-formed UTF-8 sequence for one non-ASCII code point at s[i] (RFC 3629:
// no overlong forms, no surrogates, nothing above U+10FFFF), 0 if there is none. i < size.
inline size_t utf8Seq(std::string_view s, size_t i) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  auto cont = [&](size_t k) { return i + k < s.size() && (b(k) & 0xC0) == 0x80; };
  unsigned char c = b(0);
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && b(1) < 0xA0) return 0;  // overlong
    if (c == 0xED && b(1) > 0x9F) return 0;  // surrogate
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && b(1) < 0x90) return 0;  // overlong
    if (c == 0xF4 && b(1) > 0x8F) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

// Well-formed UTF-8 with no control characters (C0, DEL): a name a person typed, such as a
// SASL authentication identity (RFC 4616 §2).
inline bool isPrintableUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) return false;
    size_t n = c < 0x80 ? 1 : utf8Seq(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

// ASCII case-insensitive equality (SMTP verbs, parameters, DSN address types).
inline bool iequalsAscii(std::string_view a, std::string_view b) {
  auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; };
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [&](char x, char y) { return lower(x) == lower(y); });
}

// White space as folded header values and DNS records hold it: SP, HTAB, CR, LF (wider than
// RFC 5234's WSP, which is SP and HTAB alone).
inline bool isWhite(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

// `s` without the white space (isWhite) at either end.
inline std::string_view trimWhite(std::string_view s) {
  while (!s.empty() && isWhite(s.front())) s.remove_prefix(1);
  while (!s.empty() && isWhite(s.back())) s.remove_suffix(1);
  return s;
}

// A message's header section (RFC 5322 §2.1): up to and including the line end before the
// first empty line (CRLF or bare LF); all of it when there is no empty line, nothing when
// it starts with one.
inline std::string_view headerBlock(std::string_view msg) {
  if (msg.rfind("\r\n", 0) == 0 || msg.rfind("\n", 0) == 0) return {};
  size_t end = msg.find("\r\n\r\n");
  // A bare-LF empty line counts only before the CRLF one: the body is never scanned.
  size_t end2 = msg.substr(0, end == std::string_view::npos ? end : end + 3).find("\n\n");
  if (end == std::string_view::npos && end2 == std::string_view::npos) return msg;
  if (end == std::string_view::npos || (end2 != std::string_view::npos && end2 < end)) return msg.substr(0, end2 + 1);
  return msg.substr(0, end + 2);
}

}  // namespace moat::mta
