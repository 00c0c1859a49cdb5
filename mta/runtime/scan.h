// mta/runtime/scan.h — finding the next line break in message bytes, 16 bytes at a time.
// The DATA decoder and the SMTP client's dot-stuffing look for the end of every line of
// every message; a byte loop or two memchr calls per line were a tenth of the CPU of
// relaying a 256 KB message. Untrusted input: any bytes; reads only [p, p + n).
#pragma once
#include <cstddef>
#include <cstdint>

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

}  // namespace moat::mta
