// mta/smtp/header_scrubber.cc — see header_scrubber.h.
#include "mta/smtp/header_scrubber.h"

#include <algorithm>
#include <cctype>

namespace moat::mta::smtp {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

}  // namespace

HeaderScrubber::HeaderScrubber(std::string authservId) : authservId_(lower(authservId)) {}

// "Authentication-Results: host.example; spf=pass" -> true when host.example is ours.
// The authserv-id may be preceded by CFWS and followed by a version number (RFC 8601 §2.2).
bool HeaderScrubber::claimsUs(std::string_view field) const {
  static constexpr std::string_view kName = "authentication-results:";
  if (field.size() < kName.size() || lower(field.substr(0, kName.size())) != kName) return false;
  std::string_view v = field.substr(kName.size());
  size_t i = 0;
  // skip folding white space and (comments)
  for (;;) {
    while (i < v.size() && (v[i] == ' ' || v[i] == '\t' || v[i] == '\r' || v[i] == '\n')) ++i;
    if (i < v.size() && v[i] == '(') {
      int depth = 0;
      for (; i < v.size(); ++i) {
        if (v[i] == '\\') { ++i; continue; }
        if (v[i] == '(') ++depth;
        if (v[i] == ')' && --depth == 0) { ++i; break; }
      }
      continue;
    }
    break;
  }
  size_t start = i;
  while (i < v.size() && v[i] != ';' && v[i] != ' ' && v[i] != '\t' && v[i] != '\r' && v[i] != '(') ++i;
  std::string id = lower(v.substr(start, i - start));
  if (!id.empty() && id.back() == '.') id.pop_back();
  return id == authservId_;
}

void HeaderScrubber::endField(std::string& out) {
  if (field_.empty()) return;
  if (claimsUs(field_)) {
    ++removed_;
  } else {
    out += field_;
  }
  field_.clear();
}

void HeaderScrubber::feed(std::string_view in, std::string& out) {
  size_t i = 0;
  while (i < in.size() && inHeaders_) {
    if (atLineStart_) {
      char c = in[i];
      if (c == ' ' || c == '\t') {
        // a continuation line belongs to the field held back
      } else {
        endField(out);
        passThrough_ = false;
        if (c == '\r' || c == '\n') {  // the empty line that ends the header section
          inHeaders_ = false;
          break;
        }
      }
    }
    size_t nl = in.find('\n', i);
    size_t end = nl == std::string_view::npos ? in.size() : nl + 1;
    std::string_view piece = in.substr(i, end - i);
    if (passThrough_) {
      out.append(piece);
    } else {
      field_.append(piece);
      if (field_.size() > kMaxField) {  // too long to hold: pass it on as it is
        out += field_;
        field_.clear();
        passThrough_ = true;
      }
    }
    atLineStart_ = nl != std::string_view::npos;
    i = end;
  }
  if (i < in.size()) out.append(in.substr(i));
}

void HeaderScrubber::finish(std::string& out) {
  if (inHeaders_) endField(out);
}

}  // namespace moat::mta::smtp
