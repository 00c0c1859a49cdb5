// filters/mime/mime.h — the MIME structure of one message (RFC 2045-2049), with RFC 2047
// encoded words and RFC 2231 parameter continuations/charsets decoded, leaves decoded
// (base64, quoted-printable) and text converted to UTF-8 (glibc iconv).
//
// Untrusted input: the whole message. The parser never throws on bad input and never uses
// unbounded memory: nesting depth, part count and total decoded size are bounded by
// Limits; going past one sets Message::limitExceeded (with a reason) and parsing stops
// descending or decoding there. Broken structure (missing boundary parameter, missing
// final boundary, bad encodings) is tolerated the way mail clients tolerate it.
// Logs nothing; the MIME filter (mime_filter.h) logs its summary through the pipeline.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moat::filters::mime {

// How much parse() does. Each filter that reads the tree says what it needs
// (Filter::mimeDepth), and the MIME filter parses to the deepest of them.
enum class Depth : uint8_t {
  Structure,  // parts, headers, types, names, decoded sizes: the limits and attachment list
  Bodies,     // + each leaf's decoded bytes (Part::body): antivirus, attachments
  Text,       // + text leaves as UTF-8, Message::bodyText and uris: the rules
};

struct Limits {
  unsigned maxDepth = 20;                  // nesting of multipart and message/rfc822
  unsigned maxParts = 500;                 // parts in the whole tree, the root included
  uint64_t maxDecodedSize = 100ull << 20;  // bytes of decoded leaf bodies in total
  // Distinct URIs kept in Message::uris; past it the rest are dropped and urisTruncated
  // set. Not a limit that rejects: the `uri` rules see the first maxUris.
  unsigned maxUris = 10000;
};

// Where a header field or a part lies in the raw message given to parse(), for filters
// that rewrite the message by byte edits (filters/edit.h). kNoOffset when the bytes are not
// a slice of the raw message (inside a base64/quoted-printable encoded message/rfc822).
inline constexpr uint64_t kNoOffset = UINT64_MAX;

struct HeaderField {
  std::string name;     // as written (compare case-insensitively)
  std::string raw;      // unfolded value, leading blanks removed
  std::string decoded;  // RFC 2047 encoded words decoded, as UTF-8
  uint64_t offset = kNoOffset;       // the first byte of the name
  uint64_t valueOffset = kNoOffset;  // the byte after the colon
  uint64_t endOffset = kNoOffset;    // after the line break of the field's last line
};

struct Part {
  std::vector<HeaderField> headers;
  std::string contentType = "text/plain";    // lower-case type/subtype
  std::map<std::string, std::string> params;  // lower-case names; values RFC 2231-decoded (UTF-8)
  std::string charset;                        // lower-case, from params, "" if none
  std::string disposition;                    // lower-case: "attachment", "inline" or ""
  std::string filename;                       // UTF-8; disposition filename= or type name=
  std::string transferEncoding = "7bit";      // lower-case
  unsigned depth = 0;
  // Leaves: the decoded bytes (capped by Limits::maxDecodedSize), from Depth::Bodies on,
  // and their number at every depth.
  std::string body;
  uint64_t size = 0;
  // Text leaves (text/*), at Depth::Text: the body as UTF-8. charsetUnknown: iconv did
  // not know the charset and `text` holds the bytes unchanged.
  std::string text;
  bool charsetUnknown = false;
  bool truncated = false;  // body cut by the decoded-size limit
  std::vector<Part> children;  // multipart: the body parts; message/rfc822: one, the message
  // Byte offsets in the raw message (kNoOffset: see HeaderField). A body part of a
  // multipart runs from the line after its delimiter to the line break before the next
  // delimiter (that line break belongs to the delimiter, RFC 2046 5.1.1), so replacing
  // [offset, endOffset) keeps the delimiters intact.
  uint64_t offset = kNoOffset;      // the first byte of the header block
  uint64_t headerEnd = kNoOffset;   // after the last header field (where the blank line is)
  uint64_t bodyOffset = kNoOffset;  // the first byte of the body
  uint64_t endOffset = kNoOffset;   // one past the last byte of the body
  bool hasOffsets() const { return offset != kNoOffset; }

  bool isMultipart() const { return contentType.rfind("multipart/", 0) == 0; }
  bool isMessage() const { return contentType == "message/rfc822" || contentType == "message/global"; }
  bool isText() const { return contentType.rfind("text/", 0) == 0; }
  // The first header with this name (case-insensitive), or nullptr.
  const HeaderField* header(std::string_view name) const;
};

struct Attachment {
  std::string name;  // UTF-8 file name, may be empty
  std::string type;  // content type
  uint64_t size = 0; // decoded size
};

struct Message {
  Part root;
  // The body text rules run on (SpamAssassin's rendered body): the decoded text parts as
  // UTF-8, HTML rendered to text; in multipart/alternative the text/plain part is used
  // when there is one. Parts are separated by a blank line. Without the Subject.
  std::string bodyText;
  // URIs in text and HTML parts (http, https, ftp, mailto, schemeless www. as http://)
  // and href/src targets, in order of appearance, without duplicates; at most
  // Limits::maxUris of them (urisTruncated: there were more).
  std::vector<std::string> uris;
  bool urisTruncated = false;
  std::vector<Attachment> attachments;
  unsigned partCount = 0;
  uint64_t decodedSize = 0;
  bool limitExceeded = false;
  std::string limitReason;  // "max_depth", "max_parts" or "max_decoded_size"

  // The decoded value of the first top-level header with this name, or "".
  std::string header(std::string_view name) const;
};

// Parses `raw` (CRLF line endings; bare LF tolerated). Never fails: a message that is not
// MIME is one text/plain part. Below Depth::Text, bodyText and uris stay empty; below
// Depth::Bodies, so do the parts' body and text.
std::shared_ptr<const Message> parse(std::string_view raw, const Limits& limits, Depth depth = Depth::Text);

// How many bytes past its header block parse(raw, limits, depth) would decode, copy or scan:
// none for a message that is one identity-encoded part (7bit, 8bit, binary) at
// Depth::Structure, its whole body otherwise. Reads only the header block, and counts one
// longer than `headerLimit` as all work. Lets a caller parse a cheap message where it is.
uint64_t parseWork(std::string_view raw, Depth depth, size_t headerLimit = 64 * 1024);

// Building blocks, exposed for the rules and antivirus filters and for tests.
std::string decodeBase64(std::string_view in);
std::string decodeQuotedPrintable(std::string_view in);
// Converts `bytes` in `charset` to UTF-8. Returns false if iconv does not know the
// charset (out then holds the bytes unchanged). Invalid sequences become U+FFFD.
bool toUtf8(std::string_view bytes, std::string_view charset, std::string& out);
// Decodes RFC 2047 encoded words in a header value; adjacent words joined.
std::string decodeHeaderWords(std::string_view value);
// HTML to text: tags removed, script/style dropped, entities decoded; href/src targets
// appended to `links` when not null.
std::string htmlToText(std::string_view html, std::vector<std::string>* links);
// What extractUris() did: the scheme searches it started and the bytes they passed over,
// so tests can check that the work stays linear in the text.
struct UriScanStats {
  uint64_t searches = 0;
  uint64_t bytesSearched = 0;
};
// Appends the URIs found in plain text to `out`, in order (duplicates included). Linear in
// the text: each scheme is searched for again only once the scan has passed its last match.
void extractUris(std::string_view text, std::vector<std::string>& out, UriScanStats* stats = nullptr);
bool iequals(std::string_view a, std::string_view b);
std::string toLower(std::string_view s);

}  // namespace moat::filters::mime
