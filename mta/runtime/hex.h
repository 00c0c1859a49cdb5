// mta/runtime/hex.h — one octet as two lower-case hex digits, for the places that spell
// binary out in text: pool keys (DANE's TLSA data) and log fields (a peer's raw bytes).
#pragma once
#include <string>

namespace moat::mta {

inline void appendHex(std::string& out, unsigned char c) {
  static constexpr char kDigits[] = "0123456789abcdef";
  out.push_back(kDigits[c >> 4]);
  out.push_back(kDigits[c & 15]);
}

}  // namespace moat::mta
