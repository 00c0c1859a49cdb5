// mta/smtp/header_scrubber.cc — see header_scrubber.h.
#include "mta/smtp/header_scrubber.h"

#include <algorithm>
#include <cctype>
#include <optional>

namespace moat::mta::smtp {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

// The field's value when its name is Authentication-Results, with or without white space
// before the colon (obs-optional, RFC 5322 §4.5.8: a receiver must not treat
// "Authentication-Results :" as anything else); nullopt for any other field.
std::optional<std::string_view> authResultsValue(std::string_view field) {
  static constexpr std::string_view kName = "authentication-results";
  if (field.size() < kName.size() || lower(field.substr(0, kName.size())) != kName) return std::nullopt;
  size_t i = kName.size();
  while (i < field.size() && (field[i] == ' ' || field[i] == '\t')) ++i;
  if (i == field.size() || field[i] != ':') return std::nullopt;
  return field.substr(i + 1);
}

// The field's name, without white space before the colon.
std::string_view fieldName(std::string_view field) {
  size_t k = 0;
  while (k < field.size() && field[k] > ' ' && field[k] < 0x7f && field[k] != ':') ++k;
  return field.substr(0, k);
}

// RFC 5322 §2.2 / §4.5: a field name (printable ASCII but ':'), optional white space, ':'.
bool looksLikeField(std::string_view line) {
  size_t k = 0;
  while (k < line.size() && line[k] > ' ' && line[k] < 0x7f && line[k] != ':') ++k;
  if (k == 0) return false;
  while (k < line.size() && (line[k] == ' ' || line[k] == '\t')) ++k;
  return k < line.size() && line[k] == ':';
}

}  // namespace

HeaderScrubber::HeaderScrubber(std::string authservId, std::vector<std::string> strip)
    : authservId_(lower(authservId)), strip_(std::move(strip)) {}

bool HeaderScrubber::toStrip(std::string_view field) const {
  if (strip_.empty()) return false;
  const std::string name = lower(fieldName(field));
  if (name.empty()) return false;
  for (const auto& s : strip_) {
    if (!s.empty() && s.back() == '*' ? name.compare(0, s.size() - 1, s, 0, s.size() - 1) == 0 : name == s) return true;
  }
  return false;
}

void HeaderScrubber::noteStripped(std::string_view field) {
  ++stripped_;
  std::string_view name = fieldName(field);
  if (strippedNames_.size() >= kMaxNames) return;
  for (const auto& n : strippedNames_)
    if (lower(n) == lower(name)) return;
  strippedNames_.emplace_back(name);
}

// "Authentication-Results: host.example; spf=pass" -> true when host.example is ours.
// The authserv-id may be preceded by CFWS and followed by a version number (RFC 8601 §2.2),
// and it is a `value` (RFC 2045): a token or a quoted-string, so "host.example" counts too.
bool HeaderScrubber::claimsUs(std::string_view field) const {
  auto value = authResultsValue(field);
  if (!value) return false;
  std::string_view v = *value;
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
  std::string id;
  if (i < v.size() && v[i] == '"') {
    for (++i; i < v.size() && v[i] != '"'; ++i) {
      if (v[i] == '\\' && i + 1 < v.size()) ++i;     // quoted-pair
      if (v[i] != '\r' && v[i] != '\n') id += v[i];  // a fold inside the quotes is not content
    }
    // Spaces inside the quotes would not stop a reader from taking it for our name.
    size_t b = id.find_first_not_of(" \t"), e = id.find_last_not_of(" \t");
    id = b == std::string::npos ? "" : lower(std::string_view(id).substr(b, e - b + 1));
  } else {
    // A token (RFC 2045 §5.1) ends at a control character too: "ours\0; dkim=pass" names
    // us to any reader that drops the NUL.
    static constexpr std::string_view kEnds = " ;()<>@,:\\\"/[]?=";
    size_t start = i;
    while (i < v.size() && static_cast<unsigned char>(v[i]) > ' ' && v[i] != 0x7f &&
           kEnds.find(v[i]) == std::string_view::npos)
      ++i;
    id = lower(v.substr(start, i - start));
  }
  if (!id.empty() && id.back() == '.') id.pop_back();
  return id == authservId_;
}

void HeaderScrubber::endField(std::string& out) {
  if (field_.empty()) return;
  if (toStrip(field_)) {
    noteStripped(field_);
  } else if (claimsUs(field_)) {
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
      if ((c == ' ' || c == '\t') && (!field_.empty() || passThrough_)) {
        // a continuation line belongs to the field held back
      } else {
        endField(out);
        passThrough_ = false;
        dropping_ = false;
        firstLineChecked_ = false;
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
      if (!dropping_) out.append(piece);
    } else {
      field_.append(piece);
      if (!firstLineChecked_ && nl != std::string_view::npos) {
        firstLineChecked_ = true;
        if (!looksLikeField(field_)) {
          // A line that is no header field starts the body (RFC 5322 §2.1): the empty line
          // that should have come first is supplied, as Postfix's cleanup does, or the
          // trace fields Moat puts on top would run into the text.
          out += "\r\n";
          out += field_;
          field_.clear();
          inHeaders_ = false;
          atLineStart_ = true;
          i = end;
          break;
        }
      }
      if (field_.size() > kMaxField) {
        // Too long to hold. Any other field passes on as it is; an Authentication-Results
        // field this long is no honest one, and the authserv-id could hide past what we
        // hold (a long comment before it), so it is removed rather than judged.
        if (toStrip(field_)) {
          noteStripped(field_);
          dropping_ = true;
        } else if (authResultsValue(field_)) {
          ++removed_;
          dropping_ = true;
        } else {
          out += field_;
        }
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
  if (!inHeaders_) return;
  if (!field_.empty() && !firstLineChecked_ && !looksLikeField(field_)) out += "\r\n";  // as in feed()
  endField(out);
}

}  // namespace moat::mta::smtp
