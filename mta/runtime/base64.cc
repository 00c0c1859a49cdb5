// mta/runtime/base64.cc — see base64.h.
#include "mta/runtime/base64.h"

#include <cstdint>

namespace moat::mta {

namespace {

const char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int valueOf(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

bool isSpace(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; }

// What a decoder does with what is not base64: refuse it, skip whitespace (and refuse the
// rest), or skip anything, the first '=' ending the data (RFC 2045 §6.8).
enum class Junk { Refuse, SkipSpace, SkipAll };

std::optional<std::string> decode(std::string_view text, Junk junk) {
  std::string out;
  out.reserve(text.size() / 4 * 3);
  uint32_t acc = 0;
  int bits = 0, pad = 0;
  for (char c : text) {
    if (junk == Junk::SkipSpace && isSpace(c)) continue;
    if (c == '=') {
      if (junk == Junk::SkipAll) break;
      if (++pad > 2) return std::nullopt;
      continue;
    }
    int v = valueOf(c);
    if (v < 0 && junk == Junk::SkipAll) continue;
    if (v < 0 || pad) return std::nullopt;  // not base64, or data after padding
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

void appendBase64(std::string_view bytes, std::string& out) {
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    uint32_t n = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out.push_back(kAlphabet[(n >> s) & 63]);
  }
  if (i < bytes.size()) {
    uint32_t n = uint8_t(bytes[i]) << 16;
    if (i + 1 < bytes.size()) n |= uint8_t(bytes[i + 1]) << 8;
    out.push_back(kAlphabet[(n >> 18) & 63]);
    out.push_back(kAlphabet[(n >> 12) & 63]);
    out.push_back(i + 1 < bytes.size() ? kAlphabet[(n >> 6) & 63] : '=');
    out.push_back('=');
  }
}

}  // namespace

std::string base64Encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  appendBase64(bytes, out);
  return out;
}

std::string base64EncodeLines(std::string_view bytes) {
  constexpr size_t kLineBytes = 57;  // 76 characters
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4 + bytes.size() / kLineBytes * 2 + 4);
  for (size_t i = 0; i < bytes.size(); i += kLineBytes) {
    if (i > 0) out += "\r\n";
    appendBase64(bytes.substr(i, kLineBytes), out);
  }
  return out;
}

std::optional<std::string> base64Decode(std::string_view text) { return decode(text, Junk::SkipSpace); }

std::string base64DecodeMime(std::string_view text) { return *decode(text, Junk::SkipAll); }

std::optional<std::string> base64DecodeStrict(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  return decode(text, Junk::Refuse);
}

}  // namespace moat::mta
