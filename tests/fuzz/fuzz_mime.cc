// tests/fuzz/fuzz_mime.cc — libFuzzer target for the MIME parser (filters/mime/mime.h), which
// reads every inbound message: its structure, base64 and quoted-printable bodies, RFC 2047
// encoded words, RFC 2231 parameters, charsets, HTML rendered to text and the URIs found.
// Input layout: byte 0 = max_depth (1..8), byte 1 = max_parts (1..64), byte 2 = the decoded-size
// limit in units of 64 octets (1..256), byte 3 = max_uris (0..31); the rest = the message.
// Small limits, so that the fuzzer reaches them. The message is parsed at every Depth.
// Checked:
//   - the limits hold: nesting, part count, decoded bytes (in total and per leaf), URIs;
//     limitExceeded and limitReason agree, urisTruncated only at max_uris;
//   - the tree does not depend on the Depth: the same parts, types, names and sizes at
//     Structure, Bodies and Text (Depth only adds bodies and text); a kept body is exactly
//     `size` octets;
//   - offsets (what filters edit the message by) lie inside the message and inside the
//     parent part, in order, and a header field's offset points at its name and colon;
//   - the URIs are distinct; text converted from a known charset is valid UTF-8;
//   - the building blocks: base64 never grows, quoted-printable at most doubles (bare LF to
//     CRLF), HTML rendering never outputs more than its input, parseWork <= the message.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "filters/mime/mime.h"
#include "tests/fuzz/fuzz_check.h"

using namespace moat::filters::mime;

namespace {

bool validUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size() || (n == 2 && c < 0xC2)) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

struct Totals {
  unsigned parts = 0;
  uint64_t leafBytes = 0;
};

void checkPart(const Part& p, const Limits& limits, Depth depth, std::string_view raw, const Part* parent, Totals& t) {
  ++t.parts;
  FUZZ_CHECK(p.depth <= limits.maxDepth);
  if (parent) FUZZ_CHECK(p.depth == parent->depth + 1);
  FUZZ_CHECK(p.contentType.find('/') != std::string::npos);
  if (p.isMultipart()) FUZZ_CHECK(p.params.count("boundary"));
  if (p.isMessage()) FUZZ_CHECK(p.children.size() <= 1);
  if (!p.isMultipart() && !p.isMessage()) {
    FUZZ_CHECK(p.children.empty());
    FUZZ_CHECK(p.size <= limits.maxDecodedSize);
    t.leafBytes += p.size;
    if (depth == Depth::Structure)
      FUZZ_CHECK(p.body.empty());
    else
      FUZZ_CHECK(p.body.size() == p.size);
    if (depth != Depth::Text || !p.isText()) FUZZ_CHECK(p.text.empty());
    if (depth == Depth::Text && p.isText() && !p.charsetUnknown) FUZZ_CHECK(validUtf8(p.text));
  }
  if (p.hasOffsets()) {
    FUZZ_CHECK(p.offset <= p.headerEnd && p.headerEnd <= p.bodyOffset && p.bodyOffset <= p.endOffset);
    FUZZ_CHECK(p.endOffset <= raw.size());
    if (parent && parent->hasOffsets()) FUZZ_CHECK(p.offset >= parent->bodyOffset && p.endOffset <= parent->endOffset);
    for (const auto& h : p.headers) {
      FUZZ_CHECK(h.offset != kNoOffset);
      FUZZ_CHECK(h.offset >= p.offset && h.valueOffset <= h.endOffset && h.endOffset <= p.headerEnd);
      FUZZ_CHECK(raw.compare(h.offset, h.name.size(), h.name) == 0);
      FUZZ_CHECK(h.valueOffset == h.offset + h.name.size() + 1 && raw[h.valueOffset - 1] == ':');
    }
  } else {
    FUZZ_CHECK(p.offset == kNoOffset && p.endOffset == kNoOffset);
    for (const auto& h : p.headers) FUZZ_CHECK(h.offset == kNoOffset);
  }
  uint64_t prevEnd = 0;
  for (const auto& c : p.children) {
    if (c.hasOffsets()) {
      FUZZ_CHECK(c.offset >= prevEnd);  // siblings in order, not overlapping
      prevEnd = c.endOffset;
    }
    checkPart(c, limits, depth, raw, &p, t);
  }
}

// The parts of two parses of one message at different depths are the same tree.
void sameTree(const Part& a, const Part& b) {
  FUZZ_CHECK(a.contentType == b.contentType && a.params == b.params && a.charset == b.charset);
  FUZZ_CHECK(a.disposition == b.disposition && a.filename == b.filename && a.transferEncoding == b.transferEncoding);
  FUZZ_CHECK(a.size == b.size && a.truncated == b.truncated && a.depth == b.depth);
  FUZZ_CHECK(a.offset == b.offset && a.headerEnd == b.headerEnd && a.bodyOffset == b.bodyOffset &&
             a.endOffset == b.endOffset);
  FUZZ_CHECK(a.headers.size() == b.headers.size());
  for (size_t i = 0; i < a.headers.size(); ++i)
    FUZZ_CHECK(a.headers[i].name == b.headers[i].name && a.headers[i].raw == b.headers[i].raw &&
               a.headers[i].decoded == b.headers[i].decoded);
  FUZZ_CHECK(a.children.size() == b.children.size());
  for (size_t i = 0; i < a.children.size(); ++i) sameTree(a.children[i], b.children[i]);
}

void checkMessage(const Message& m, const Limits& limits, Depth depth, std::string_view raw) {
  Totals t;
  checkPart(m.root, limits, depth, raw, nullptr, t);
  FUZZ_CHECK(t.parts == m.partCount);
  FUZZ_CHECK(m.partCount <= std::max(limits.maxParts, 1u));
  FUZZ_CHECK(m.decodedSize <= limits.maxDecodedSize);
  FUZZ_CHECK(t.leafBytes <= m.decodedSize);
  FUZZ_CHECK(m.attachments.size() <= m.partCount);
  FUZZ_CHECK(m.limitExceeded == !m.limitReason.empty());
  if (m.limitExceeded)
    FUZZ_CHECK(m.limitReason == "max_depth" || m.limitReason == "max_parts" || m.limitReason == "max_decoded_size");
  FUZZ_CHECK(m.uris.size() <= limits.maxUris);
  if (m.urisTruncated) FUZZ_CHECK(m.uris.size() == limits.maxUris);
  FUZZ_CHECK(std::set<std::string>(m.uris.begin(), m.uris.end()).size() == m.uris.size());
  if (depth != Depth::Text) FUZZ_CHECK(m.bodyText.empty() && m.uris.empty() && !m.urisTruncated);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  Limits limits;
  limits.maxDepth = 1 + data[0] % 8;
  limits.maxParts = 1 + data[1] % 64;
  limits.maxDecodedSize = 64ull * (1 + data[2]);
  limits.maxUris = data[3] % 32;
  std::string_view raw(reinterpret_cast<const char*>(data) + 4, size - 4);

  auto structure = parse(raw, limits, Depth::Structure);
  auto bodies = parse(raw, limits, Depth::Bodies);
  auto text = parse(raw, limits, Depth::Text);
  checkMessage(*structure, limits, Depth::Structure, raw);
  checkMessage(*bodies, limits, Depth::Bodies, raw);
  checkMessage(*text, limits, Depth::Text, raw);
  sameTree(structure->root, bodies->root);
  sameTree(structure->root, text->root);
  for (const auto* m : {bodies.get(), text.get()}) {
    FUZZ_CHECK(m->partCount == structure->partCount && m->decodedSize == structure->decodedSize);
    FUZZ_CHECK(m->limitReason == structure->limitReason);
  }
  for (Depth d : {Depth::Structure, Depth::Bodies, Depth::Text}) FUZZ_CHECK(parseWork(raw, d) <= raw.size());

  // The building blocks on the whole input, as a body would reach them.
  FUZZ_CHECK(decodeBase64(raw).size() <= raw.size());
  FUZZ_CHECK(decodeQuotedPrintable(raw).size() <= 2 * raw.size() + 2);
  std::vector<std::string> links;
  std::string rendered = htmlToText(raw, &links);
  FUZZ_CHECK(rendered.size() <= raw.size());
  for (const auto& l : links) FUZZ_CHECK(!l.empty() && l.size() <= raw.size());
  std::vector<std::string> uris;
  UriScanStats stats;
  extractUris(raw, uris, &stats);
  // Linear: each byte once per scheme, plus a scheme's length each time it is looked for again.
  FUZZ_CHECK(stats.searches <= 5 * (raw.size() + 1));
  FUZZ_CHECK(stats.bytesSearched <= 5 * raw.size() + 8 * stats.searches);
  for (const auto& u : uris) FUZZ_CHECK(u.size() <= raw.size() + 7);  // "www." gains "http://"
  std::string header = decodeHeaderWords(raw);
  (void)header;
  return 0;
}
