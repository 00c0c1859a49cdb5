// filters/mime/downgrade.cc — see downgrade.h. RFC 6152 §3 (what a client owes a next hop
// without 8BITMIME), RFC 2045 §6 (transfer encodings), RFC 2046 §5 (composite types), RFC
// 1428 (unknown-8bit). Untrusted input: the whole message; every offset used comes from the
// parser and is checked against the message before a slice is taken. Logs nothing.
#include "filters/mime/downgrade.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "filters/edit.h"
#include "mta/runtime/scan.h"

namespace moat::filters::mime {

namespace {

bool isIdentity(std::string_view cte) { return cte == "7bit" || cte == "8bit" || cte == "binary"; }

// Peer-supplied text for a reason: printable ASCII only, and short.
std::string printable(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 40)) out += c >= 0x20 && c < 0x7f ? c : '?';
  return out;
}

// A message being converted: the edits, in the raw message's offsets, that make it 7-bit.
class Converter {
 public:
  explicit Converter(std::string_view raw) : raw_(raw) {}

  // Converts `p` and what it contains; false (with reason_) when it cannot be. `changed`:
  // whether anything in it was edited. `isMessage`: `p` is a message's top (the root or a
  // message/rfc822 body), where MIME-Version belongs (RFC 2045 §4).
  bool part(const Part& p, bool isMessage, bool& changed) {
    changed = false;
    if (!p.hasOffsets() || !inside(p.offset, p.headerEnd) || !inside(p.bodyOffset, p.endOffset) ||
        p.headerEnd > p.bodyOffset)
      return refuse("8-bit data inside an encoded message/rfc822");
    if (mta::hasEightBit(slice(p.offset, p.headerEnd))) return refuse("8-bit bytes in a header");
    bool needsMimeVersion = isMessage && !p.header("MIME-Version");
    bool container =
        (p.isMultipart() || p.contentType == "message/rfc822") && isIdentity(p.transferEncoding) && !p.children.empty();
    if (!container) return leaf(p, needsMimeVersion, changed);
    for (const auto& child : p.children) {
      bool childChanged = false;
      if (!part(child, p.contentType == "message/rfc822", childChanged)) return false;
      changed = changed || childChanged;
    }
    if (!changed) return true;
    // RFC 2045 §6.4: a composite part is labelled 7bit, 8bit or binary and never encoded;
    // with its children now 7-bit, so is it.
    if (p.transferEncoding != "7bit" && !setEncoding(p, "7bit")) return false;
    return !needsMimeVersion || add(p.headerEnd, 0, "MIME-Version: 1.0\r\n");
  }

  std::string_view reason() const { return reason_; }
  std::vector<Edit> takeEdits() { return std::move(edits_); }

 private:
  bool leaf(const Part& p, bool needsMimeVersion, bool& changed) {
    std::string_view body = slice(p.bodyOffset, p.endOffset);
    const std::string& cte = p.transferEncoding;
    bool eightBit = mta::hasEightBit(body);
    std::string encoded, newCte;
    if (cte == "binary") {  // cannot go over SMTP without BINARYMIME (RFC 3030), 8-bit or not
      newCte = "base64";
    } else if (!eightBit) {
      return true;
    } else if (cte == "7bit" || cte == "8bit") {
      newCte = p.isText() ? "quoted-printable" : "base64";
    } else if (cte == "quoted-printable") {  // literal 8-bit bytes in it: readers take them as they are
      encoded = encodeQuotedPrintable(decodeQuotedPrintable(body));
    } else if (cte == "base64") {  // RFC 2045 §6.8: readers ignore what is not base64
      encoded = encodeBase64(decodeBase64(body));
      if (endsInLineBreak(body)) encoded += "\r\n";
    } else {
      return refuse("8-bit data under Content-Transfer-Encoding " + printable(cte));
    }
    if (!newCte.empty()) {
      encoded = newCte == "base64" ? encodeBase64(body) : encodeQuotedPrintable(body);
      if (newCte == "base64" && endsInLineBreak(body)) encoded += "\r\n";
      // The new header lines go where the header block ends, before the blank line.
      std::string fields;
      if (needsMimeVersion) fields += "MIME-Version: 1.0\r\n";
      if (!p.header("Content-Type") && p.isText() && eightBit)
        fields += "Content-Type: text/plain; charset=unknown-8bit\r\n";
      if (!setEncoding(p, newCte, &fields)) return false;
      if (p.bodyOffset == p.headerEnd) fields += "\r\n";  // no blank line yet: the body began at once
      if (!add(p.headerEnd, 0, std::move(fields))) return false;
    }
    changed = true;
    return add(p.bodyOffset, p.endOffset - p.bodyOffset, std::move(encoded));
  }

  // Labels `p` with `cte`: its first Content-Transfer-Encoding field is rewritten and any
  // other one removed; without one, the field is appended to `fields` (nullptr: added at
  // the end of the header block).
  bool setEncoding(const Part& p, std::string_view cte, std::string* fields = nullptr) {
    std::string field = "Content-Transfer-Encoding: " + std::string(cte) + "\r\n";
    bool first = true;
    for (const auto& h : p.headers) {
      if (!iequals(h.name, "Content-Transfer-Encoding")) continue;
      if (!inside(h.offset, h.endOffset)) return refuse("8-bit data inside an encoded message/rfc822");
      if (!add(h.offset, h.endOffset - h.offset, first ? field : std::string())) return false;
      first = false;
    }
    if (!first) return true;
    if (fields) {
      *fields += field;
      return true;
    }
    return add(p.headerEnd, 0, std::move(field));
  }

  static bool endsInLineBreak(std::string_view s) { return !s.empty() && (s.back() == '\n' || s.back() == '\r'); }

  bool inside(uint64_t from, uint64_t to) const { return from != kNoOffset && from <= to && to <= raw_.size(); }
  std::string_view slice(uint64_t from, uint64_t to) const { return raw_.substr(from, to - from); }

  bool add(uint64_t offset, uint64_t length, std::string replacement) {
    if (!addEdit(edits_, Edit{offset, length, std::move(replacement), ""}, raw_.size()))
      return refuse("overlapping MIME parts");  // the parser's offsets never overlap
    return true;
  }

  bool refuse(std::string why) {
    reason_ = std::move(why);
    return false;
  }

  std::string_view raw_;
  std::vector<Edit> edits_;
  std::string reason_;
};

}  // namespace

DowngradeEdits downgradeEdits(std::string_view message, const Limits& limits) {
  DowngradeEdits result;
  auto parsed = parse(message, limits, Depth::Structure);
  if (parsed->limitExceeded) {
    result.reason = "the MIME structure is past the parser's limits (" + printable(parsed->limitReason) + ")";
    return result;
  }
  Converter converter(message);
  bool changed = false;
  if (!converter.part(parsed->root, true, changed)) {
    result.reason = std::string(converter.reason());
    return result;
  }
  if (changed) result.edits = converter.takeEdits();
  // What no part holds (a preamble, an epilogue, bytes the parser skipped) was left alone:
  // the bytes between the edits must be 7-bit already (the replacements are).
  uint64_t pos = 0;
  bool eightBit = false;
  for (const auto& e : result.edits) {
    eightBit = eightBit || mta::hasEightBit(message.substr(pos, e.offset - pos)) || mta::hasEightBit(e.replacement);
    pos = e.end();
  }
  if (eightBit || mta::hasEightBit(message.substr(pos))) {
    result.edits.clear();
    result.reason = "8-bit bytes outside every MIME part";
    return result;
  }
  result.ok = true;
  return result;
}

Downgraded downgradeTo7Bit(std::string_view message, const Limits& limits) {
  Downgraded result;
  auto converted = downgradeEdits(message, limits);
  if (!converted.ok) {
    result.reason = std::move(converted.reason);
    return result;
  }
  result.ok = true;
  result.changed = !converted.edits.empty();
  result.message = result.changed ? applyEdits(message, converted.edits) : std::string(message);
  return result;
}

}  // namespace moat::filters::mime
