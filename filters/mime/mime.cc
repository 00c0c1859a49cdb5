// filters/mime/mime.cc — the MIME tree parser (RFC 2045 headers and encodings, RFC 2046
// multipart and message/rfc822, RFC 2231 parameters, RFC 2183 Content-Disposition).
// Untrusted input: the whole message. Bounded by Limits (depth, parts, decoded bytes);
// tolerant of broken structure the way mail readers are. Logs nothing.
#include "filters/mime/mime.h"

#include <algorithm>
#include <cctype>
#include <unordered_set>

namespace moat::filters::mime {

const HeaderField* Part::header(std::string_view name) const {
  for (const auto& h : headers)
    if (iequals(h.name, name)) return &h;
  return nullptr;
}

std::string Message::header(std::string_view name) const {
  const HeaderField* h = root.header(name);
  return h ? h->decoded : std::string();
}

namespace {

std::string_view trimView(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r' || s.front() == '\n'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

// One line of `data` starting at `pos`: [pos, contentEnd) without the line break, `next`
// the start of the following line.
struct Line {
  size_t contentEnd, next;
};
Line lineAt(std::string_view data, size_t pos) {
  size_t nl = data.find('\n', pos);
  if (nl == std::string_view::npos) return {data.size(), data.size()};
  size_t end = nl > pos && data[nl - 1] == '\r' ? nl - 1 : nl;
  return {end, nl + 1};
}

uint64_t at(uint64_t base, size_t pos) { return base == kNoOffset ? kNoOffset : base + pos; }

// Splits the header block off; returns the offset of the body. `headerEnd`: where the
// header block ends (the blank line). `base`: the offset of `data` in the raw message.
size_t parseHeaders(std::string_view data, uint64_t base, std::vector<HeaderField>& out, size_t& headerEnd) {
  size_t pos = 0;
  headerEnd = 0;
  while (pos < data.size()) {
    Line l = lineAt(data, pos);
    std::string_view line = data.substr(pos, l.contentEnd - pos);
    if (line.empty()) return headerEnd = pos, l.next;
    if ((line[0] == ' ' || line[0] == '\t') && !out.empty()) {
      out.back().raw += line;  // unfolding keeps the blank, drops the line break (RFC 5322 2.2.3)
      out.back().endOffset = at(base, l.next);
    } else {
      size_t colon = line.find(':');
      if (colon != std::string_view::npos && colon > 0 &&
          line.substr(0, colon).find_first_of(" \t") == std::string_view::npos) {
        out.push_back({std::string(line.substr(0, colon)), std::string(line.substr(colon + 1)), "", at(base, pos),
                       at(base, pos + colon + 1), at(base, l.next)});
      } else if (out.empty() && pos == 0 && line.rfind("From ", 0) != 0) {
        return 0;  // not a header at all: the whole thing is body
      }
    }
    pos = l.next;
    headerEnd = pos;
  }
  return data.size();
}

// Splits "a; b=c; d=\"e;f\"" at semicolons outside quotes.
std::vector<std::string_view> splitParams(std::string_view v) {
  std::vector<std::string_view> out;
  bool quoted = false;
  size_t start = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] == '\\' && quoted) {
      ++i;
    } else if (v[i] == '"') {
      quoted = !quoted;
    } else if (v[i] == ';' && !quoted) {
      out.push_back(v.substr(start, i - start));
      start = i + 1;
    }
  }
  out.push_back(v.substr(start));
  return out;
}

std::string unquote(std::string_view v) {
  v = trimView(v);
  if (v.size() < 2 || v.front() != '"') return std::string(v);
  std::string out;
  for (size_t i = 1; i < v.size(); ++i) {
    if (v[i] == '"') break;
    if (v[i] == '\\' && i + 1 < v.size()) ++i;
    out.push_back(v[i]);
  }
  return out;
}

std::string percentDecode(std::string_view v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] == '%' && i + 2 < v.size() && std::isxdigit(static_cast<unsigned char>(v[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(v[i + 2]))) {
      out.push_back(static_cast<char>(std::stoi(std::string(v.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(v[i]);
    }
  }
  return out;
}

struct Segment {
  int index;
  bool encoded;
  std::string value;
};

// RFC 2231: name*0*=us-ascii'en'a%20b; name*1="cd"; name*=utf-8''x — assembled per name.
void assembleParams(std::map<std::string, std::vector<Segment>>& segs, std::map<std::string, std::string>& out) {
  for (auto& [name, list] : segs) {
    std::sort(list.begin(), list.end(), [](const Segment& a, const Segment& b) { return a.index < b.index; });
    std::string charset, bytes;
    bool anyEncoded = false;
    for (size_t k = 0; k < list.size(); ++k) {
      std::string_view v = list[k].value;
      if (list[k].encoded) {
        anyEncoded = true;
        if (k == 0) {
          size_t q1 = v.find('\''), q2 = q1 == std::string_view::npos ? q1 : v.find('\'', q1 + 1);
          if (q2 != std::string_view::npos) {
            charset = std::string(v.substr(0, q1));
            v = v.substr(q2 + 1);
          }
        }
        bytes += percentDecode(v);
      } else {
        bytes += v;
      }
    }
    std::string value;
    if (anyEncoded) {
      toUtf8(bytes, charset.empty() ? "us-ascii" : charset, value);
    } else {
      value = bytes;
    }
    out[name] = std::move(value);
  }
}

// Parses a Content-Type / Content-Disposition value into its lower-case first token and
// its parameters.
std::string parseStructured(std::string_view value, std::map<std::string, std::string>& params) {
  auto pieces = splitParams(value);
  std::string first = toLower(trimView(pieces[0]));
  if (auto paren = first.find('('); paren != std::string::npos) first = std::string(trimView(first.substr(0, paren)));
  std::map<std::string, std::vector<Segment>> segs;
  for (size_t i = 1; i < pieces.size(); ++i) {
    std::string_view p = trimView(pieces[i]);
    size_t eq = p.find('=');
    if (eq == std::string_view::npos) continue;
    std::string name = toLower(trimView(p.substr(0, eq)));
    std::string val = unquote(p.substr(eq + 1));
    size_t star = name.find('*');
    if (star == std::string::npos) {
      if (!segs.count(name)) segs[name].push_back({0, false, val});
      continue;
    }
    std::string base = name.substr(0, star);
    std::string rest = name.substr(star + 1);  // "", "*", "0", "0*", "1"...
    bool encoded = !rest.empty() && rest.back() == '*';
    if (encoded) rest.pop_back();
    if (rest.empty() && !name.empty() && name.back() == '*' && name.size() == base.size() + 1) encoded = true;
    int index = 0;
    if (!rest.empty()) {
      if (rest.size() > 3 || !std::all_of(rest.begin(), rest.end(), ::isdigit)) continue;
      index = std::stoi(rest);
    }
    auto& list = segs[base];
    // An RFC 2231 form wins over a plain one of the same name.
    list.erase(std::remove_if(list.begin(), list.end(), [&](const Segment& s) { return s.index == index; }),
               list.end());
    list.push_back({index, encoded, val});
  }
  assembleParams(segs, params);
  return first;
}

class Parser {
 public:
  Parser(const Limits& limits, Depth depth, Message& msg) : limits_(limits), depth_(depth), msg_(msg) {}

  // Whether parsePart() at this depth, given a part whose header block is `head`, would
  // decode, copy or scan its body: multipart, message/*, base64 and quoted-printable do,
  // as does any leaf at Depth::Bodies or Depth::Text; an identity leaf below that does not.
  bool bodyNeedsWork(std::string_view head) {
    Part part;
    size_t headerEnd = 0;
    parseHeaders(head, 0, part.headers, headerEnd);
    for (auto& h : part.headers) h.raw = std::string(trimView(h.raw));
    readContentHeaders(part, "text/plain");
    bool identity = part.transferEncoding != "base64" && part.transferEncoding != "quoted-printable";
    return part.isMultipart() || part.isMessage() || !identity || depth_ != Depth::Structure;
  }

  // `base`: the offset of `data` in the raw message, or kNoOffset.
  void parsePart(std::string_view data, uint64_t base, unsigned depth, const char* defaultType, Part& part) {
    ++msg_.partCount;
    part.depth = depth;
    size_t headerEnd = 0;
    size_t bodyAt = parseHeaders(data, base, part.headers, headerEnd);
    part.offset = at(base, 0);
    part.headerEnd = at(base, headerEnd);
    part.bodyOffset = at(base, bodyAt);
    part.endOffset = at(base, data.size());
    for (auto& h : part.headers) {
      h.raw = std::string(trimView(h.raw));
      h.decoded = decodeHeaderWords(h.raw);
    }
    readContentHeaders(part, defaultType);
    std::string_view body = data.substr(bodyAt);
    if (part.isMultipart()) {
      parseMultipart(body, part.bodyOffset, depth, part);
    } else if (part.isMessage()) {
      parseEmbedded(body, part.bodyOffset, depth, part);
    } else {
      decodeLeaf(body, part);
    }
  }

 private:
  void readContentHeaders(Part& part, const char* defaultType) {
    part.contentType = defaultType;
    if (const HeaderField* ct = part.header("Content-Type")) {
      std::string type = parseStructured(ct->raw, part.params);
      if (type.find('/') != std::string::npos && type.find(' ') == std::string::npos) part.contentType = type;
    }
    if (auto it = part.params.find("charset"); it != part.params.end()) part.charset = toLower(it->second);
    if (const HeaderField* cte = part.header("Content-Transfer-Encoding"))
      part.transferEncoding = toLower(trimView(cte->raw));
    std::map<std::string, std::string> dispParams;
    if (const HeaderField* cd = part.header("Content-Disposition")) {
      part.disposition = parseStructured(cd->raw, dispParams);
      if (auto it = dispParams.find("filename"); it != dispParams.end()) part.filename = it->second;
    }
    if (part.filename.empty())
      if (auto it = part.params.find("name"); it != part.params.end()) part.filename = it->second;
    // Mail clients put RFC 2047 words in quoted filenames, against RFC 2047 section 5.
    if (part.filename.find("=?") != std::string::npos) part.filename = decodeHeaderWords(part.filename);
    if (part.isMultipart() && !part.params.count("boundary")) part.contentType = "text/plain";
  }

  bool enter(unsigned depth) {
    if (depth + 1 > limits_.maxDepth) return flag("max_depth");
    if (msg_.partCount >= limits_.maxParts) return flag("max_parts");
    return true;
  }

  bool flag(const char* reason) {
    if (!msg_.limitExceeded) {
      msg_.limitExceeded = true;
      msg_.limitReason = reason;
    }
    return false;
  }

  // RFC 2046 5.1.1: a delimiter is "--boundary" at a line start, followed by "--" (the
  // close delimiter) or optional blanks; the line break before it belongs to it.
  static int delimiterKind(std::string_view line, std::string_view boundary) {
    if (line.size() < boundary.size() + 2 || line.compare(0, 2, "--") != 0 ||
        line.compare(2, boundary.size(), boundary) != 0)
      return 0;
    std::string_view rest = line.substr(boundary.size() + 2);
    if (rest.rfind("--", 0) == 0) return 2;
    return trimView(rest).empty() ? 1 : 0;
  }

  void parseMultipart(std::string_view body, uint64_t base, unsigned depth, Part& part) {
    std::string boundary = part.params["boundary"];
    const char* childType = part.contentType == "multipart/digest" ? "message/rfc822" : "text/plain";
    std::vector<std::pair<size_t, std::string_view>> pieces;  // offset in `body`, bytes
    size_t pos = 0, partStart = std::string_view::npos;
    bool closed = false;
    while (pos < body.size() && !closed) {
      Line l = lineAt(body, pos);
      int kind = delimiterKind(body.substr(pos, l.contentEnd - pos), boundary);
      if (kind) {
        if (partStart != std::string_view::npos) {
          size_t end = pos;
          if (end > partStart && body[end - 1] == '\n') --end;
          if (end > partStart && body[end - 1] == '\r') --end;
          pieces.emplace_back(partStart, body.substr(partStart, end - partStart));
        }
        partStart = l.next;
        closed = kind == 2;
      }
      pos = l.next;
    }
    // A missing close delimiter: the last part runs to the end of the message.
    if (!closed && partStart != std::string_view::npos && partStart < body.size())
      pieces.emplace_back(partStart, body.substr(partStart));
    if (pieces.empty()) {
      // No delimiter at all: show the body as text so rules and scanners still see it.
      part.contentType = "text/plain";
      decodeLeaf(body, part);
      return;
    }
    for (auto [offset, piece] : pieces) {
      if (!enter(depth)) return;
      part.children.emplace_back();
      parsePart(piece, at(base, offset), depth + 1, childType, part.children.back());
    }
  }

  void parseEmbedded(std::string_view body, uint64_t base, unsigned depth, Part& part) {
    std::string decoded;
    if (part.transferEncoding == "base64" || part.transferEncoding == "quoted-printable") {
      // Not allowed by RFC 2046 5.2.1, but sent; decode so the inner message is seen.
      decoded = part.transferEncoding == "base64" ? decodeBase64(body) : decodeQuotedPrintable(body);
      if (!account(decoded.size())) return;
      body = decoded;
      base = kNoOffset;  // the inner message's bytes are not in the raw message
    }
    if (!enter(depth)) return;
    part.children.emplace_back();
    parsePart(body, base, depth + 1, "text/plain", part.children.back());
  }

  bool account(uint64_t n) {
    if (msg_.decodedSize + n > limits_.maxDecodedSize) {
      msg_.decodedSize = limits_.maxDecodedSize;
      return flag("max_decoded_size");
    }
    msg_.decodedSize += n;
    return true;
  }

  void decodeLeaf(std::string_view body, Part& part) {
    uint64_t room = limits_.maxDecodedSize - std::min(msg_.decodedSize, limits_.maxDecodedSize);
    // Decoded base64/qp is at most twice as long as its source (quoted-printable writes a
    // bare LF as CRLF), so cutting the source first keeps memory bounded.
    if (body.size() > room * 2 + 8) body = body.substr(0, room * 2 + 8);
    bool keep = depth_ != Depth::Structure;
    bool identity = part.transferEncoding != "base64" && part.transferEncoding != "quoted-printable";
    if (identity) {
      part.size = body.size();
      if (keep) part.body = std::string(body.substr(0, std::min<uint64_t>(body.size(), room)));
    } else {
      std::string decoded = part.transferEncoding == "base64" ? decodeBase64(body) : decodeQuotedPrintable(body);
      part.size = decoded.size();
      if (keep) part.body = std::move(decoded);
    }
    if (part.size > room) {
      part.size = room;
      if (part.body.size() > room) part.body.resize(room);
      part.truncated = true;
      flag("max_decoded_size");
    }
    msg_.decodedSize += part.size;
    if (part.isText() && depth_ == Depth::Text) part.charsetUnknown = !toUtf8(part.body, part.charset, part.text);
  }

  const Limits& limits_;
  Depth depth_;
  Message& msg_;
};

class Renderer {
 public:
  Renderer(Message& msg, bool text, unsigned maxUris) : msg_(msg), text_(text), maxUris_(maxUris) {}

  void walk(const Part& part, bool inBody) {
    if (part.isMultipart()) {
      const Part* chosen = part.contentType == "multipart/alternative" ? preferred(part) : nullptr;
      for (const auto& c : part.children) walk(c, inBody && (!chosen || chosen == &c));
      return;
    }
    if (part.isMessage()) {
      for (const auto& c : part.children) walk(c, inBody);
      return;
    }
    collectAttachment(part);
    if (!text_ || !part.isText()) return;
    std::vector<std::string> found;
    std::string rendered;  // HTML only: plain text is used where it is, not copied
    if (part.contentType == "text/html") rendered = htmlToText(part.text, &found);
    const std::string& text = part.contentType == "text/html" ? rendered : part.text;
    extractUris(text, found);
    addUnique(found);
    if (inBody && part.disposition != "attachment") {
      if (!msg_.bodyText.empty()) msg_.bodyText += "\n\n";
      msg_.bodyText += text;
    }
  }

 private:
  // In multipart/alternative the plain-text version, else the last (richest) one.
  static const Part* preferred(const Part& part) {
    for (const auto& c : part.children)
      if (c.contentType == "text/plain") return &c;
    return part.children.empty() ? nullptr : &part.children.back();
  }

  void collectAttachment(const Part& part) {
    bool isAttachment = part.disposition == "attachment" || !part.filename.empty() ||
                        (part.depth > 0 && !part.isText());
    if (isAttachment) msg_.attachments.push_back({part.filename, part.contentType, part.size});
  }

  // Keeps the URIs not seen before, in order, up to maxUris_. A hash set, not a search of
  // the list: a body of many distinct URIs would otherwise cost their number squared.
  void addUnique(std::vector<std::string>& found) {
    for (auto& u : found) {
      if (seen_.count(u)) continue;
      if (msg_.uris.size() >= maxUris_) {
        msg_.urisTruncated = true;
        break;
      }
      seen_.insert(u);
      msg_.uris.push_back(std::move(u));
    }
    found.clear();
  }

  Message& msg_;
  bool text_;
  unsigned maxUris_;
  std::unordered_set<std::string> seen_;
};

}  // namespace

uint64_t parseWork(std::string_view raw, Depth depth, size_t headerLimit) {
  // Only the header block is read; one longer than headerLimit counts as all work.
  std::string_view head = raw.substr(0, headerLimit);
  size_t end = 0;
  if (head.rfind("\r\n", 0) == 0 || head.rfind("\n", 0) == 0) {
    end = head[0] == '\r' ? 2 : 1;  // no header block at all
  } else {
    size_t crlf = head.find("\n\r\n"), lf = head.find("\n\n");
    if (crlf == std::string_view::npos && lf == std::string_view::npos) return raw.size();
    end = std::min(crlf == std::string_view::npos ? head.size() : crlf + 3,
                   lf == std::string_view::npos ? head.size() : lf + 2);
  }
  Message scratch;
  Limits limits;
  Parser parser(limits, depth, scratch);
  return parser.bodyNeedsWork(raw.substr(0, end)) ? raw.size() - end : 0;
}

std::shared_ptr<const Message> parse(std::string_view raw, const Limits& limits, Depth depth) {
  auto msg = std::make_shared<Message>();
  Parser parser(limits, depth, *msg);
  parser.parsePart(raw, 0, 0, "text/plain", msg->root);
  Renderer(*msg, depth == Depth::Text, limits.maxUris).walk(msg->root, true);
  return msg;
}

}  // namespace moat::filters::mime
