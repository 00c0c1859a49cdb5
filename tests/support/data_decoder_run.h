// tests/support/data_decoder_run.h — what one DATA decoding produced and what the DataDecoder
// reports after it, for the decoder's unit test (tests/smtp) and its fuzz target (tests/fuzz),
// which compare runs fed in different pieces. Header-only. Untrusted input: none.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "mta/smtp/data_decoder.h"

namespace moat::test {

struct DataDecoderRun {
  std::string out;      // the decoded bytes (the caller feeds them)
  size_t consumed = 0;  // input bytes the decoder took (the caller counts them)
  bool done = false, bareLf = false, bareCr = false, nul = false, rejected = false, exceeded = false;
  uint64_t size = 0;
  unsigned received = 0;
  bool headersEnded = false;
  bool operator==(const DataDecoderRun&) const = default;

  // Copies what `d` reports once the feeding is over.
  void readState(const mta::smtp::DataDecoder& d) {
    done = d.done();
    bareLf = d.sawBareLf();
    bareCr = d.sawBareCr();
    nul = d.sawNul();
    rejected = d.rejected();
    exceeded = d.sizeExceeded();
    size = d.size();
    received = d.receivedCount();
    headersEnded = d.headersEnded();
  }
};

}  // namespace moat::test
