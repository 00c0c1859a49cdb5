// mta/runtime/state_text.cc — see state_text.h.
#include "mta/runtime/state_text.h"

namespace moat::mta::state_text {

namespace {

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string escape(std::string_view s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c == 0x7F || c == '%') {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += ch;
    }
  }
  return out;
}

bool unescape(std::string_view s, std::string& out) {
  out.clear();
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) return false;
    int hi = hexValue(s[i + 1]), lo = hexValue(s[i + 2]);
    if (hi < 0 || lo < 0) return false;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return true;
}

std::vector<std::string_view> fields(std::string_view line, size_t most) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (start <= line.size() && out.size() + 1 < most) {
    size_t sp = line.find(' ', start);
    if (sp == std::string_view::npos) sp = line.size();
    out.push_back(line.substr(start, sp - start));
    start = sp + 1;
  }
  if (start <= line.size() && most > 0) out.push_back(line.substr(start));
  return out;
}

std::string frame(std::string_view version, const std::vector<std::string>& lines, size_t maxBytes) {
  size_t total = version.size() + 32;
  for (const auto& l : lines) total += l.size();
  // Over the bound: the first lines are left out.
  size_t skip = 0;
  while (total > maxBytes && skip < lines.size()) total -= lines[skip++].size();
  std::string out;
  out.reserve(total);
  out += version;
  out += '\n';
  for (size_t i = skip; i < lines.size(); ++i) out += lines[i];
  out += "end " + std::to_string(lines.size() - skip) + "\n";
  return out;
}

bool unframe(std::string_view text, std::string_view version, size_t maxBytes,
             const std::function<bool(std::string_view line)>& line) {
  if (text.size() > maxBytes) return false;
  size_t pos = 0;
  auto nextLine = [&](std::string_view& l) {
    if (pos >= text.size()) return false;
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) return false;  // a last line without its end: cut short
    l = text.substr(pos, nl - pos);
    pos = nl + 1;
    return true;
  };
  std::string_view l;
  if (!nextLine(l) || l != version) return false;
  size_t records = 0;
  while (nextLine(l)) {
    if (l.substr(0, 4) == "end ") {
      size_t n = 0;
      return number(l.substr(4), n) && n == records && pos == text.size();
    }
    if (!line(l)) return false;
    ++records;
  }
  return false;  // no end line
}

}  // namespace moat::mta::state_text
