// filters/mime/html.cc — HTML rendered to plain text for body rules (what a reader sees:
// tags removed, script and style dropped, entities decoded, block tags as line breaks) and
// URI extraction from text and from href/src attributes, as SpamAssassin's `uri` rules
// expect. Untrusted input: all of it; a single linear pass, output bounded by the input
// (entity expansion is at most 4 bytes for a reference of 3 or more). Logs nothing.
#include <cstdint>
#include <cctype>
#include <cstring>

#include "filters/mime/mime.h"

namespace moat::filters::mime {
namespace {

void appendUtf8(uint32_t cp, std::string& out) {
  if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

struct NamedEntity {
  const char* name;
  uint32_t cp;
};
constexpr NamedEntity kEntities[] = {
    {"amp", '&'},      {"lt", '<'},       {"gt", '>'},       {"quot", '"'},     {"apos", '\''},
    {"nbsp", 0xA0},    {"copy", 0xA9},    {"reg", 0xAE},     {"trade", 0x2122}, {"euro", 0x20AC},
    {"pound", 0xA3},   {"yen", 0xA5},     {"cent", 0xA2},    {"hellip", 0x2026}, {"mdash", 0x2014},
    {"ndash", 0x2013}, {"laquo", 0xAB},   {"raquo", 0xBB},   {"rsquo", 0x2019}, {"lsquo", 0x2018},
    {"rdquo", 0x201D}, {"ldquo", 0x201C}, {"bull", 0x2022},  {"middot", 0xB7},  {"shy", 0xAD},
    {"zwnj", 0x200C},  {"zwj", 0x200D},   {"eacute", 0xE9},  {"egrave", 0xE8},  {"agrave", 0xE0},
    {"uuml", 0xFC},    {"ouml", 0xF6},    {"auml", 0xE4},    {"szlig", 0xDF},   {"ccedil", 0xE7},
};

// Decodes one entity at s[i] == '&'; returns the characters consumed (0: not an entity).
size_t decodeEntity(std::string_view s, size_t i, std::string& out) {
  // Only the 12 bytes an entity can span are looked at: "&&&&..." without a ';' would
  // otherwise scan to the end once per '&'.
  size_t semi = s.substr(0, i + 13).find(';', i + 1);
  if (semi == std::string_view::npos) return 0;
  std::string_view name = s.substr(i + 1, semi - i - 1);
  if (name.size() >= 2 && name[0] == '#') {
    uint32_t cp = 0;
    bool hex = name[1] == 'x' || name[1] == 'X';
    std::string_view digits = name.substr(hex ? 2 : 1);
    if (digits.empty()) return 0;
    for (char c : digits) {
      int d = (c >= '0' && c <= '9') ? c - '0'
              : hex && c >= 'a' && c <= 'f' ? c - 'a' + 10
              : hex && c >= 'A' && c <= 'F' ? c - 'A' + 10
                                            : -1;
      if (d < 0) return 0;
      cp = cp * (hex ? 16 : 10) + static_cast<uint32_t>(d);
      if (cp > 0x10FFFF) cp = 0x110000;
    }
    appendUtf8(cp, out);
    return semi - i + 1;
  }
  for (const auto& e : kEntities) {
    if (name == e.name) {
      appendUtf8(e.cp == 0xA0 ? ' ' : e.cp, out);
      return semi - i + 1;
    }
  }
  return 0;
}

std::string decodeEntities(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    size_t n = s[i] == '&' ? decodeEntity(s, i, out) : 0;
    if (n) {
      i += n - 1;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

bool isBlockTag(std::string_view tag) {
  static const char* kBlocks[] = {"p",  "br", "div", "tr", "li", "h1",  "h2",    "h3",         "h4", "h5",
                                  "h6", "ul", "ol",  "table", "hr", "pre", "title", "blockquote", "td", "th"};
  for (const char* b : kBlocks)
    if (iequals(tag, b)) return true;
  return false;
}

// The value of attribute `attr` in the tag text (between '<' and '>'), or "".
std::string attribute(std::string_view tag, std::string_view attr) {
  std::string lower = toLower(tag);
  size_t pos = 0;
  while ((pos = lower.find(attr, pos)) != std::string::npos) {
    bool startOk = pos > 0 && (lower[pos - 1] == ' ' || lower[pos - 1] == '\t' || lower[pos - 1] == '\n' ||
                               lower[pos - 1] == '\r' || lower[pos - 1] == '/');
    size_t p = pos + attr.size();
    while (p < tag.size() && (tag[p] == ' ' || tag[p] == '\t' || tag[p] == '\r' || tag[p] == '\n')) ++p;
    if (!startOk || p >= tag.size() || tag[p] != '=') {
      pos += attr.size();
      continue;
    }
    ++p;
    while (p < tag.size() && (tag[p] == ' ' || tag[p] == '\t' || tag[p] == '\r' || tag[p] == '\n')) ++p;
    if (p >= tag.size()) return "";
    char q = tag[p];
    size_t end;
    if (q == '"' || q == '\'') {
      ++p;
      end = tag.find(q, p);
    } else {
      end = tag.find_first_of(" \t\r\n>", p);
    }
    if (end == std::string_view::npos) end = tag.size();
    return decodeEntities(tag.substr(p, end - p));
  }
  return "";
}

// Where "</name" (any case) starts at or after `from`, or npos. `name` is lower-case.
size_t findEndTag(std::string_view html, size_t from, std::string_view name) {
  for (size_t p = html.find("</", from); p != std::string_view::npos; p = html.find("</", p + 2)) {
    if (iequals(html.substr(p + 2, name.size()), name)) return p;
  }
  return std::string_view::npos;
}

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && static_cast<unsigned char>(s[b]) <= ' ') ++b;
  while (e > b && static_cast<unsigned char>(s[e - 1]) <= ' ') --e;
  return std::string(s.substr(b, e - b));
}

}  // namespace

std::string htmlToText(std::string_view html, std::vector<std::string>* links) {
  std::string out;
  std::string text;  // pending text between tags, entities not yet decoded
  auto flushText = [&] {
    out += decodeEntities(text);
    text.clear();
  };
  size_t i = 0;
  while (i < html.size()) {
    if (html[i] != '<') {
      char c = html[i++];
      // Source line breaks and tabs are blanks in rendered HTML.
      text.push_back(c == '\r' || c == '\n' || c == '\t' ? ' ' : c);
      continue;
    }
    if (html.compare(i, 4, "<!--") == 0) {
      size_t end = html.find("-->", i + 4);
      i = end == std::string_view::npos ? html.size() : end + 3;
      continue;
    }
    size_t close = html.find('>', i + 1);
    if (close == std::string_view::npos) break;  // an unclosed tag hides the rest, as in browsers
    std::string_view tag = html.substr(i + 1, close - i - 1);
    i = close + 1;
    size_t nameEnd = tag.find_first_of(" \t\r\n/>", tag.size() && tag[0] == '/' ? 1 : 0);
    std::string name = toLower(tag.substr(tag.size() && tag[0] == '/' ? 1 : 0,
                                          (nameEnd == std::string_view::npos ? tag.size() : nameEnd) -
                                              (tag.size() && tag[0] == '/' ? 1 : 0)));
    bool closing = !tag.empty() && tag[0] == '/';
    if (!closing && (name == "script" || name == "style")) {
      // Searched in place: a lower-case copy of the rest per element made a page of many
      // short scripts quadratic.
      size_t end = findEndTag(html, i, name);
      if (end == std::string_view::npos) {
        i = html.size();
      } else {
        size_t gt = html.find('>', end);
        i = gt == std::string_view::npos ? html.size() : gt + 1;
      }
      continue;
    }
    if (links && !closing) {
      for (const char* attr : {"href", "src", "action"}) {
        std::string v = trim(attribute(tag, attr));
        if (!v.empty() && v[0] != '#') links->push_back(v);
      }
    }
    if (isBlockTag(name)) {
      flushText();
      out += '\n';
    } else if (name == "img" || name == "td") {
      text.push_back(' ');
    }
  }
  flushText();
  // Collapse runs of blanks the way a renderer does.
  std::string collapsed;
  collapsed.reserve(out.size());
  for (char c : out) {
    if (c == ' ' && (collapsed.empty() || collapsed.back() == ' ' || collapsed.back() == '\n')) continue;
    if (c == '\n' && !collapsed.empty() && collapsed.back() == ' ') collapsed.pop_back();
    collapsed.push_back(c);
  }
  return collapsed;
}

void extractUris(std::string_view text, std::vector<std::string>& out, UriScanStats* stats) {
  static const char* kSchemes[] = {"http://", "https://", "ftp://", "mailto:", "www."};
  constexpr size_t kCount = sizeof kSchemes / sizeof kSchemes[0];
  // A lower-case copy to search in. Each pool thread keeps its buffer for texts up to
  // 1 MB: a fresh allocation of that size is an mmap, page faults and an munmap per message.
  constexpr size_t kKeep = 1 << 20;
  thread_local std::string kept;
  std::string own;
  std::string& lower = text.size() <= kKeep ? kept : own;
  lower.assign(text);
  for (auto& c : lower)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  // Each scheme's next occurrence at or after the position it was searched from. It stays
  // right while it is not behind `i` (nothing lies between), so a scheme is searched for
  // again only once passed: each byte is searched over once per scheme, and a scheme that
  // never appears costs one pass, not one pass per URI (the audit's F1: quadratic).
  size_t next[kCount];
  bool searched[kCount] = {};
  size_t i = 0;
  while (i < lower.size()) {
    size_t best = std::string::npos;
    const char* scheme = nullptr;
    for (size_t k = 0; k < kCount; ++k) {
      if (!searched[k] || (next[k] != std::string::npos && next[k] < i)) {
        next[k] = lower.find(kSchemes[k], i);
        searched[k] = true;
        if (stats) {
          ++stats->searches;
          size_t stop = next[k] == std::string::npos ? lower.size() : next[k] + std::strlen(kSchemes[k]);
          stats->bytesSearched += stop - i;
        }
      }
      if (next[k] < best) {
        best = next[k];
        scheme = kSchemes[k];
      }
    }
    if (best == std::string::npos) return;
    // "www." inside a longer word or URL (http://www.x) is found through the scheme.
    bool wordStart = best == 0 || !(std::isalnum(static_cast<unsigned char>(lower[best - 1])) ||
                                    lower[best - 1] == '.' || lower[best - 1] == '/' || lower[best - 1] == '@');
    size_t end = lower.find_first_of(" \t\r\n<>\"'`{}|\\^[]", best);
    if (end == std::string::npos) end = lower.size();
    std::string uri(text.substr(best, end - best));
    while (!uri.empty() && std::strchr(".,;:!?)", uri.back())) uri.pop_back();
    size_t minLen = std::strlen(scheme) + 1;
    if (wordStart && uri.size() >= minLen) {
      if (std::strcmp(scheme, "www.") == 0) uri = "http://" + uri;
      out.push_back(std::move(uri));
    }
    i = end > best ? end : best + 1;
  }
}

}  // namespace moat::filters::mime
