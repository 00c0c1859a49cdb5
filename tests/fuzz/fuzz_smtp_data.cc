// tests/fuzz/fuzz_smtp_data.cc — libFuzzer target for the DATA decoder. Input layout:
// byte 0 = flags (bit 0: Reject policy, bits 1..7: the size limit), byte 1 = chunking seed,
// the rest = bytes from the peer after "354". The input is decoded once whole and once in
// input-derived chunks (1..64 bytes), and checked against:
//   - done() exactly when "\r\n" + input holds "\r\n.\r\n" (the only end of data), and the
//     consumed count ends right after the first such mark;
//   - chunked and whole decoding agree on everything;
//   - the output equals a plain line-by-line reference decoder (when done);
//   - the output is bounded by the size limit and by the input (Reject: out <= in;
//     Normalize: out <= in + bare line ends), and under Normalize has only CRLF line ends.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "mta/smtp/data_decoder.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/support/data_decoder_run.h"

using namespace moat::mta::smtp;

namespace {

using Run = moat::test::DataDecoderRun;

template <typename NextChunk>
Run decode(std::string_view in, BareLinePolicy policy, uint64_t maxSize, NextChunk nextChunk) {
  DataDecoder d(policy, maxSize);
  Run r;
  for (size_t i = 0; i < in.size() && !d.done();) {
    size_t n = std::min(in.size() - i, nextChunk());
    size_t used = d.feed(in.substr(i, n), r.out);
    FUZZ_CHECK(used <= n);
    FUZZ_CHECK(d.done() || used == n);
    r.consumed += used;
    i += n;
    FUZZ_CHECK(r.out.size() <= maxSize);
  }
  r.readState(d);
  return r;
}

// A second, line-by-line decoder for a complete message body (the bytes before the final
// ".\r\n"): lines end at CRLF, a bare LF or a bare CR; a leading dot is dropped when more
// follows on the line; a lone "." line is content (it did not end the data).
std::string referenceDecode(std::string_view body, BareLinePolicy policy) {
  std::string out;
  size_t i = 0;
  while (i < body.size()) {
    size_t j = i;
    while (j < body.size() && body[j] != '\r' && body[j] != '\n') ++j;
    std::string_view line = body.substr(i, j - i);
    std::string_view ending;
    if (j < body.size()) {
      if (body[j] == '\r' && j + 1 < body.size() && body[j + 1] == '\n')
        ending = body.substr(j, 2);
      else
        ending = body.substr(j, 1);
    }
    if (line.size() > 1 && line[0] == '.') line.remove_prefix(1);
    out.append(line);
    if (!ending.empty()) out.append(policy == BareLinePolicy::Normalize ? std::string_view("\r\n") : ending);
    i = j + ending.size();
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const BareLinePolicy policy = (data[0] & 1) ? BareLinePolicy::Reject : BareLinePolicy::Normalize;
  const uint64_t maxSize = (data[0] >> 1) == 127 ? UINT64_MAX : (data[0] >> 1) * 7;
  uint32_t seed = data[1] * 2654435761u + 1;
  std::string_view in(reinterpret_cast<const char*>(data) + 2, size - 2);

  const Run whole = decode(in, policy, maxSize, [&] { return in.size() + 1; });
  const Run chunked = decode(in, policy, maxSize, [&] {
    seed = seed * 1103515245u + 12345u;
    return size_t(1 + (seed >> 16) % 64);
  });
  FUZZ_CHECK(whole == chunked);

  // The only end of data is the first CRLF.CRLF, the DATA line's CRLF counting as the first.
  const std::string framed = "\r\n" + std::string(in);
  const size_t mark = framed.find("\r\n.\r\n");
  FUZZ_CHECK(whole.done == (mark != std::string::npos));
  FUZZ_CHECK(whole.consumed == (whole.done ? mark + 3 : in.size()));

  FUZZ_CHECK(whole.exceeded == (whole.size > maxSize));
  FUZZ_CHECK(whole.out.size() == std::min<uint64_t>(whole.size, maxSize));
  FUZZ_CHECK(whole.rejected == (policy == BareLinePolicy::Reject && (whole.bareLf || whole.bareCr)));
  const size_t lineEnds = std::count(in.begin(), in.begin() + whole.consumed, '\n') +
                          std::count(in.begin(), in.begin() + whole.consumed, '\r');
  if (policy == BareLinePolicy::Reject) FUZZ_CHECK(whole.size <= whole.consumed);
  FUZZ_CHECK(whole.size <= whole.consumed + lineEnds);
  if (policy == BareLinePolicy::Normalize) {
    for (size_t i = 0; i < whole.out.size(); ++i) {
      if (whole.out[i] == '\r') FUZZ_CHECK(i + 1 == whole.out.size() || whole.out[i + 1] == '\n');
      if (whole.out[i] == '\n') FUZZ_CHECK(i > 0 && whole.out[i - 1] == '\r');
    }
  }
  if (whole.done) {
    std::string_view body = in.substr(0, whole.consumed - 3);  // before ".\r\n"
    std::string ref = referenceDecode(body, policy);
    FUZZ_CHECK(ref.size() == whole.size);
    FUZZ_CHECK(ref.compare(0, whole.out.size(), whole.out) == 0);
    bool bareLf = false, bareCr = false;
    for (size_t i = 0; i < body.size(); ++i) {
      if (body[i] == '\n' && (i == 0 || body[i - 1] != '\r')) bareLf = true;
      if (body[i] == '\r' && (i + 1 == body.size() || body[i + 1] != '\n')) bareCr = true;
    }
    FUZZ_CHECK(whole.bareLf == bareLf);
    FUZZ_CHECK(whole.bareCr == bareCr);
    FUZZ_CHECK(whole.nul == (body.find('\0') != std::string_view::npos));
  }
  return 0;
}
