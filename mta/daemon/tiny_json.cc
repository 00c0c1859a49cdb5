// mta/daemon/tiny_json.cc — see tiny_json.h.
#include "mta/daemon/tiny_json.h"

#include <cstdlib>

namespace moat::mta::daemon::json {
namespace {

struct Parser {
  std::string_view s;
  size_t i = 0;
  int depth = 0;

  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  }
  bool lit(std::string_view w) {
    if (s.substr(i, w.size()) != w) return false;
    i += w.size();
    return true;
  }
  static void utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) out.push_back(static_cast<char>(cp));
    else if (cp < 0x800) { out.push_back(static_cast<char>(0xC0 | (cp >> 6))); out.push_back(static_cast<char>(0x80 | (cp & 0x3F))); }
    else if (cp < 0x10000) { out.push_back(static_cast<char>(0xE0 | (cp >> 12))); out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F))); out.push_back(static_cast<char>(0x80 | (cp & 0x3F))); }
    else { out.push_back(static_cast<char>(0xF0 | (cp >> 18))); out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F))); out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F))); out.push_back(static_cast<char>(0x80 | (cp & 0x3F))); }
  }
  bool hex4(unsigned& v) {
    if (i + 4 > s.size()) return false;
    v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s[i++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<unsigned>(c - 'A' + 10);
      else return false;
    }
    return true;
  }
  bool string(std::string& out) {
    if (i >= s.size() || s[i] != '"') return false;
    ++i;
    while (i < s.size()) {
      char c = s[i++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c != '\\') { out.push_back(c); continue; }
      if (i >= s.size()) return false;
      char e = s[i++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          unsigned cp;
          if (!hex4(cp)) return false;
          if (cp >= 0xD800 && cp <= 0xDBFF && s.substr(i, 2) == "\\u") {
            i += 2;
            unsigned lo;
            if (!hex4(lo) || lo < 0xDC00 || lo > 0xDFFF) return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          utf8(out, cp);
          break;
        }
        default: return false;
      }
    }
    return false;
  }
  bool value(Value& v) {
    if (++depth > 64) return false;
    ws();
    if (i >= s.size()) return false;
    char c = s[i];
    bool ok = true;
    if (c == '{') {
      v.type = Value::Type::Object;
      ++i;
      ws();
      if (i < s.size() && s[i] == '}') { ++i; --depth; return true; }
      for (;;) {
        ws();
        std::string k;
        Value child;
        if (!string(k)) return false;
        ws();
        if (i >= s.size() || s[i++] != ':') return false;
        if (!value(child)) return false;
        v.object.emplace_back(std::move(k), std::move(child));
        ws();
        if (i < s.size() && s[i] == ',') { ++i; continue; }
        if (i < s.size() && s[i] == '}') { ++i; break; }
        return false;
      }
    } else if (c == '[') {
      v.type = Value::Type::Array;
      ++i;
      ws();
      if (i < s.size() && s[i] == ']') { ++i; --depth; return true; }
      for (;;) {
        Value child;
        if (!value(child)) return false;
        v.array.push_back(std::move(child));
        ws();
        if (i < s.size() && s[i] == ',') { ++i; continue; }
        if (i < s.size() && s[i] == ']') { ++i; break; }
        return false;
      }
    } else if (c == '"') {
      v.type = Value::Type::String;
      ok = string(v.str);
    } else if (lit("true")) {
      v.type = Value::Type::Bool;
      v.boolean = true;
    } else if (lit("false")) {
      v.type = Value::Type::Bool;
    } else if (lit("null")) {
      v.type = Value::Type::Null;
    } else {
      size_t start = i;
      while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '-' || s[i] == '+' || s[i] == '.' || s[i] == 'e' || s[i] == 'E')) ++i;
      if (start == i) return false;
      std::string num(s.substr(start, i - start));
      char* end = nullptr;
      v.type = Value::Type::Number;
      v.number = std::strtod(num.c_str(), &end);
      ok = end && *end == 0;
    }
    --depth;
    return ok;
  }
};

}  // namespace

std::optional<Value> parse(std::string_view text) {
  Parser p{text};
  Value v;
  if (!p.value(v)) return std::nullopt;
  p.ws();
  if (p.i != text.size()) return std::nullopt;
  return v;
}

}  // namespace moat::mta::daemon::json
