// filters/milter/protocol.cc — see protocol.h.
#include "filters/milter/protocol.h"

#include <cctype>

#include "mta/runtime/scan.h"
#include "mta/smtp/protocol.h"

namespace moat::filters::milter {

void putU32(std::string& out, uint32_t v) {
  out.push_back(static_cast<char>((v >> 24) & 0xff));
  out.push_back(static_cast<char>((v >> 16) & 0xff));
  out.push_back(static_cast<char>((v >> 8) & 0xff));
  out.push_back(static_cast<char>(v & 0xff));
}

void putString(std::string& out, std::string_view s) {
  // A NUL inside would end the string early on the milter's side: cut it there.
  out.append(s.substr(0, s.find('\0')));
  out.push_back('\0');
}

namespace {

uint32_t getU32(std::string_view d, size_t at) {
  auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(d[at + i])); };
  return b(0) << 24 | b(1) << 16 | b(2) << 8 | b(3);
}

}  // namespace

std::string encode(char command, std::string_view data) {
  std::string out;
  out.reserve(5 + data.size());
  putU32(out, static_cast<uint32_t>(data.size() + 1));
  out.push_back(command);
  out.append(data);
  return out;
}

std::string optnegPacket(uint32_t actions, uint32_t protocol) {
  std::string d;
  putU32(d, kVersion);
  putU32(d, actions);
  putU32(d, protocol);
  return encode(cmd::kOptneg, d);
}

std::string macroPacket(char forCommand, const std::vector<std::pair<std::string, std::string>>& macros) {
  std::string d(1, forCommand);
  for (const auto& [name, value] : macros) {
    putString(d, name);
    putString(d, value);
  }
  return encode(cmd::kMacro, d);
}

std::string connectPacket(std::string_view hostname, char family, uint16_t port, std::string_view address) {
  std::string d;
  putString(d, hostname);
  d.push_back(family);
  if (family != 'U') {
    d.push_back(static_cast<char>(port >> 8));
    d.push_back(static_cast<char>(port & 0xff));
    putString(d, address);
  }
  return encode(cmd::kConnect, d);
}

std::string heloPacket(std::string_view helo) {
  std::string d;
  putString(d, helo);
  return encode(cmd::kHelo, d);
}

std::string envelopePacket(char command, std::string_view address, const std::vector<std::string>& args) {
  std::string d;
  putString(d, "<" + std::string(address) + ">");
  for (const auto& a : args) putString(d, a);
  return encode(command, d);
}

std::string headerPacket(std::string_view name, std::string_view value) {
  std::string d;
  putString(d, name);
  putString(d, value);
  return encode(cmd::kHeader, d);
}

std::optional<Packet> Decoder::next() {
  if (!error_.empty() || buffered() < 4) return std::nullopt;
  uint32_t len = getU32(buf_, pos_);
  if (len == 0 || len > max_) {
    error_ = "packet length " + std::to_string(len) + (len == 0 ? " (empty)" : " over " + std::to_string(max_));
    return std::nullopt;
  }
  if (buffered() < 4 + static_cast<size_t>(len)) return std::nullopt;
  Packet p;
  p.command = buf_[pos_ + 4];
  p.data.assign(buf_, pos_ + 5, len - 1);
  pos_ += 4 + len;
  if (pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  } else if (pos_ > 64 * 1024) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  return p;
}

std::optional<Optneg> parseOptneg(std::string_view data) {
  if (data.size() < 12) return std::nullopt;
  return Optneg{getU32(data, 0), getU32(data, 4), getU32(data, 8)};
}

bool validFieldName(std::string_view name) {
  if (name.empty() || name.size() > 255) return false;
  for (unsigned char c : name)
    if (c <= 0x20 || c >= 0x7f || c == ':') return false;
  return true;
}

std::optional<HeaderChange> parseHeaderChange(std::string_view data, bool withIndex) {
  HeaderChange h;
  if (withIndex) {
    if (data.size() < 4) return std::nullopt;
    h.index = getU32(data, 0);
    data.remove_prefix(4);
  }
  size_t nul = data.find('\0');
  if (nul == std::string_view::npos) return std::nullopt;
  h.name = std::string(data.substr(0, nul));
  data.remove_prefix(nul + 1);
  size_t end = data.find('\0');
  if (end == std::string_view::npos || end + 1 != data.size()) return std::nullopt;
  h.value = std::string(data.substr(0, end));
  if (!validFieldName(h.name)) return std::nullopt;
  for (unsigned char c : h.value)
    if (c < 0x20 && c != '\t' && c != '\r' && c != '\n') return std::nullopt;
  return h;
}

std::optional<EnvelopeRequest> parseEnvelopeRequest(std::string_view data, bool withArgs) {
  EnvelopeRequest r;
  size_t nul = data.find('\0');
  if (nul == std::string_view::npos) return std::nullopt;
  r.address = std::string(data.substr(0, nul));
  data.remove_prefix(nul + 1);
  if (data.empty()) return r;
  if (!withArgs) return std::nullopt;
  size_t end = data.find('\0');
  if (end == std::string_view::npos || end + 1 != data.size()) return std::nullopt;
  r.args = std::string(data.substr(0, end));
  return r;
}

std::optional<ReplyCode> parseReplyCode(std::string_view data) {
  if (data.empty() || data.back() != '\0') return std::nullopt;
  data.remove_suffix(1);
  if (data.size() > 4096) return std::nullopt;
  ReplyCode r;
  bool first = true;
  while (!data.empty()) {
    size_t eol = data.find('\n');
    std::string_view line = data.substr(0, eol);
    data.remove_prefix(eol == std::string_view::npos ? data.size() : eol + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.size() < 3 || (line[0] != '4' && line[0] != '5') || !std::isdigit(static_cast<unsigned char>(line[1])) ||
        !std::isdigit(static_cast<unsigned char>(line[2])))
      return std::nullopt;
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (!first && code != r.code) return std::nullopt;
    r.code = code;
    std::string_view rest = line.substr(3);
    if (!rest.empty()) {
      if (rest[0] != ' ' && rest[0] != '-') return std::nullopt;
      rest.remove_prefix(1);
    }
    // An enhanced code: class.subject.detail, the class that of the reply (RFC 3463).
    size_t sp = rest.find(' ');
    std::string_view word = rest.substr(0, sp);
    if (mta::smtp::isEnhancedCode(word, line[0])) {
      if (first) r.enhanced = std::string(word);
      rest = sp == std::string_view::npos ? std::string_view() : rest.substr(sp + 1);
    }
    for (unsigned char c : rest)
      if (c < 0x20 || c >= 0x7f) return std::nullopt;
    if (!r.text.empty() && !rest.empty()) r.text += ' ';
    r.text += rest;
    first = false;
  }
  if (first) return std::nullopt;
  if (r.text.size() > 512) r.text.resize(512);
  return r;
}

std::vector<Field> headerFields(std::string_view message) {
  std::vector<Field> out;
  std::string_view block = mta::headerBlock(message);
  size_t at = 0;
  while (at < block.size()) {
    size_t start = at;
    // The field's lines: this one and every continuation (starting with SP or HT).
    do {
      size_t eol = block.find('\n', at);
      at = eol == std::string_view::npos ? block.size() : eol + 1;
    } while (at < block.size() && (block[at] == ' ' || block[at] == '\t'));
    std::string_view field = block.substr(start, at - start);
    size_t colon = field.find(':');
    if (colon == std::string_view::npos || colon == 0) continue;  // not a field: not sent, not counted
    std::string_view name = field.substr(0, colon);
    while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.remove_suffix(1);
    std::string_view value = field.substr(colon + 1);
    if (!value.empty() && value.back() == '\n') value.remove_suffix(1);
    if (!value.empty() && value.back() == '\r') value.remove_suffix(1);
    out.push_back({name, value, start, at - start});
  }
  return out;
}

uint64_t bodyOffset(std::string_view message) {
  size_t h = mta::headerBlock(message).size();
  if (h < message.size() && message[h] == '\r' && h + 1 < message.size() && message[h + 1] == '\n') return h + 2;
  if (h < message.size() && message[h] == '\n') return h + 1;
  return message.size();
}

std::string milterHeaderValue(std::string_view rawValue, bool leadingSpace) {
  std::string out;
  out.reserve(rawValue.size());
  for (size_t i = 0; i < rawValue.size(); ++i) {
    if (rawValue[i] == '\r' && i + 1 < rawValue.size() && rawValue[i + 1] == '\n') continue;
    out.push_back(rawValue[i]);
  }
  if (!leadingSpace) {
    size_t i = 0;
    while (i < out.size() && (out[i] == ' ' || out[i] == '\t')) ++i;
    out.erase(0, i);
  }
  return out;
}

std::string toCrlf(std::string_view s) {
  std::string out;
  out.reserve(s.size() + s.size() / 32);
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r')) out.push_back('\r');
    out.push_back(s[i]);
  }
  return out;
}

}  // namespace moat::filters::milter
