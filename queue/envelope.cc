// queue/envelope.cc — the typed-record envelope format described in envelope.h.
// Untrusted input: every string field (peer-supplied addresses, HELO, headers) and, at
// recovery, the whole file (it may be torn or damaged). Logs nothing.
#include "queue/envelope.h"

#include <array>
#include <charconv>

namespace moat::queue {
namespace {

constexpr std::string_view kMagic = "moat-envelope";

std::array<uint32_t, 256> makeCrcTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[i] = c;
  }
  return t;
}

void appendEscaped(std::string& out, std::string_view s) {
  static const char* hex = "0123456789ABCDEF";
  out.reserve(out.size() + s.size());
  for (size_t i = 0; i < s.size();) {
    // Bytes kept as they are go a run at a time (most of an envelope: addresses, headers).
    size_t run = i;
    while (run < s.size()) {
      unsigned char c = static_cast<unsigned char>(s[run]);
      if (c < 0x20 || c == 0x7f || c == '%') break;
      ++run;
    }
    out.append(s.data() + i, run - i);
    if (run == s.size()) break;
    unsigned char c = static_cast<unsigned char>(s[run]);
    const char esc[] = {'%', hex[c >> 4], hex[c & 15]};
    out.append(esc, sizeof esc);
    i = run + 1;
  }
}

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;  // only the uppercase form we write: one spelling per byte
}

bool unescape(std::string_view in, std::string& out) {
  out.clear();
  for (size_t i = 0; i < in.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(in[i]);
    if (c == '%') {
      if (i + 2 >= in.size()) return false;
      int hi = hexValue(in[i + 1]), lo = hexValue(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      unsigned char v = static_cast<unsigned char>(hi * 16 + lo);
      if (!(v < 0x20 || v == 0x7f || v == '%')) return false;  // must have been written raw
      out += static_cast<char>(v);
      i += 2;
    } else if (c < 0x20 || c == 0x7f) {
      return false;
    } else {
      out += static_cast<char>(c);
    }
  }
  return true;
}

class Writer {
 public:
  void record(std::string_view type, std::initializer_list<std::string_view> fields) {
    out_ += type;
    for (auto f : fields) {
      out_ += '\t';
      appendEscaped(out_, f);
    }
    out_ += '\n';
  }
  void str(std::string_view type, std::string_view v) { record(type, {v}); }
  void num(std::string_view type, int64_t v) { str(type, std::to_string(v)); }
  void unum(std::string_view type, uint64_t v) { str(type, std::to_string(v)); }
  void flag(std::string_view type, bool v) { str(type, v ? "1" : "0"); }
  std::string finish() {
    char buf[16];
    snprintf(buf, sizeof buf, "%08x", crc32(out_));
    out_ += "end\t";
    out_ += buf;
    out_ += '\n';
    return std::move(out_);
  }
  std::string out_;
};

std::string_view statusName(RcptStatus s) {
  switch (s) {
    case RcptStatus::Pending:
      return "pending";
    case RcptStatus::Delivered:
      return "delivered";
    case RcptStatus::Failed:
      return "failed";
  }
  return "pending";
}

std::optional<RcptStatus> parseStatus(std::string_view s) {
  if (s == "pending") return RcptStatus::Pending;
  if (s == "delivered") return RcptStatus::Delivered;
  if (s == "failed") return RcptStatus::Failed;
  return std::nullopt;
}

std::optional<Area> parseArea(std::string_view s) {
  if (s == "queue") return Area::Active;
  if (s == "hold") return Area::Hold;
  if (s == "quarantine") return Area::Quarantine;
  return std::nullopt;
}

template <typename T>
bool parseInt(std::string_view s, T& out) {
  if (s.empty() || s.size() > 20) return false;
  if (s.size() > 1 && s[0] == '0') return false;  // canonical form only
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

bool parseFlag(std::string_view s, bool& out) {
  if (s == "1") return out = true, true;
  if (s == "0") return out = false, true;
  return false;
}

std::vector<std::string_view> splitTabs(std::string_view line) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  for (;;) {
    size_t t = line.find('\t', start);
    parts.push_back(line.substr(start, t == std::string_view::npos ? std::string_view::npos : t - start));
    if (t == std::string_view::npos) break;
    start = t + 1;
  }
  return parts;
}

// Applies one record to `env`; false + error on anything unexpected.
class Parser {
 public:
  Parser(Envelope& env, int version) : env_(env), version_(version) {}

  bool apply(std::string_view type, const std::vector<std::string>& f, std::string& error) {
    error = "bad record '" + std::string(type) + "'";
    if (type == "rcpt") return rcpt(f);
    if (type == "hdr") return f.size() == 2 && (env_.headers.emplace_back(f[0], f[1]), true);
    if (type == "edit")
      return version_ >= 2 ? edit(f) : (error = "unknown record type 'edit' in a version 1 envelope", false);
    if (type == "expanded") {
      if (version_ < 3)
        return error = "unknown record type 'expanded' in a version " + std::to_string(version_) + " envelope", false;
      return f.size() == 3 && !f[0].empty() && (env_.expanded.push_back({f[0], f[1], f[2]}), true);
    }
    if (type == "requiretls" && version_ < 4)
      return error = "unknown record type 'requiretls' in a version " + std::to_string(version_) + " envelope", false;
    if (f.size() != 1) return false;
    const std::string& v = f[0];
    if (has(type)) return error = "duplicate record '" + std::string(type) + "'", false;
    seen_.emplace_back(type);
    if (type == "id") return !v.empty() && (env_.id = v, true);
    if (type == "gen") return parseInt(v, env_.generation);
    if (type == "area") return setArea(v);
    if (type == "qreason") return env_.quarantineReason = v, true;
    if (type == "from") return env_.mailFrom = v, true;
    if (type == "arrival") return parseInt(v, env_.arrivalMs);
    if (type == "client_ip") return env_.clientIp = v, true;
    if (type == "client_name") return env_.clientName = v, true;
    if (type == "helo") return env_.helo = v, true;
    if (type == "proto") return env_.protocol = v, true;
    if (type == "msgid") return env_.messageId = v, true;
    if (type == "8bit") return parseFlag(v, env_.eightBit);
    if (type == "utf8") return parseFlag(v, env_.smtputf8);
    if (type == "requiretls") return parseFlag(v, env_.requireTls);
    if (type == "envid") return env_.envid = v, true;
    if (type == "ret") return env_.ret = v, true;
    if (type == "size") return parseInt(v, env_.size);
    if (type == "bounce") return parseFlag(v, env_.isBounce);
    if (type == "attempts") return parseInt(v, env_.attempts) && env_.attempts >= 0;
    if (type == "next") return parseInt(v, env_.nextAttemptMs);
    if (type == "warned") return parseFlag(v, env_.delayWarned);
    error = "unknown record type '" + std::string(type) + "' (written by a newer version?)";
    return false;
  }

  bool complete(std::string& error) const {
    for (auto req : {"id", "arrival", "size", "from"}) {
      if (!has(req)) return error = std::string("missing record '") + req + "'", false;
    }
    if (!filters::editsValid(env_.edits, env_.size)) return error = "edits overlap or pass the end of the message", false;
    return true;
  }

 private:
  bool rcpt(const std::vector<std::string>& f) {
    if (f.size() != 7) return false;
    Recipient r;
    auto st = parseStatus(f[0]);
    if (!st || !parseInt(f[1], r.attempts) || r.attempts < 0 || f[2].empty()) return false;
    r.status = *st;
    r.address = f[2];
    r.orcpt = f[3];
    r.notify = f[4];
    r.relay = f[5];
    r.lastReply = f[6];
    env_.rcpts.push_back(std::move(r));
    return true;
  }
  bool edit(const std::vector<std::string>& f) {
    if (f.size() != 4) return false;
    filters::Edit e;
    if (!parseInt(f[0], e.offset) || !parseInt(f[1], e.length)) return false;
    e.replacement = f[2];
    e.why = f[3];
    env_.edits.push_back(std::move(e));
    return true;
  }
  bool setArea(const std::string& v) {
    auto a = parseArea(v);
    if (!a) return false;
    env_.area = *a;
    return true;
  }
  bool has(std::string_view t) const {
    for (auto& s : seen_)
      if (s == t) return true;
    return false;
  }
  Envelope& env_;
  int version_;
  std::vector<std::string> seen_;
};

}  // namespace

uint32_t crc32(std::string_view data, uint32_t crc) {
  static const auto table = makeCrcTable();
  crc = ~crc;
  for (unsigned char c : data) crc = table[(crc ^ c) & 0xff] ^ (crc >> 8);
  return ~crc;
}

std::string_view areaName(Area a) {
  switch (a) {
    case Area::Active:
      return "queue";
    case Area::Hold:
      return "hold";
    case Area::Quarantine:
      return "quarantine";
  }
  return "queue";
}

std::string serializeEnvelope(const Envelope& e) {
  Writer w;
  // The oldest version that holds what this envelope has, so older builds keep reading it.
  w.num(kMagic, e.requireTls          ? kEnvelopeVersion
                : !e.expanded.empty() ? kEnvelopeVersionNoRequireTls
                : !e.edits.empty()    ? kEnvelopeVersionNoExpanded
                                      : kEnvelopeVersionNoEdits);
  w.str("id", e.id);
  w.unum("gen", e.generation);
  w.str("area", areaName(e.area));
  if (!e.quarantineReason.empty()) w.str("qreason", e.quarantineReason);
  w.str("from", e.mailFrom);
  w.num("arrival", e.arrivalMs);
  w.str("client_ip", e.clientIp);
  w.str("client_name", e.clientName);
  w.str("helo", e.helo);
  w.str("proto", e.protocol);
  w.str("msgid", e.messageId);
  w.flag("8bit", e.eightBit);
  w.flag("utf8", e.smtputf8);
  if (e.requireTls) w.flag("requiretls", true);
  w.str("envid", e.envid);
  w.str("ret", e.ret);
  w.unum("size", e.size);
  w.flag("bounce", e.isBounce);
  w.num("attempts", e.attempts);
  w.num("next", e.nextAttemptMs);
  w.flag("warned", e.delayWarned);
  for (auto& [name, value] : e.headers) w.record("hdr", {name, value});
  for (auto& x : e.edits) w.record("edit", {std::to_string(x.offset), std::to_string(x.length), x.replacement, x.why});
  for (auto& x : e.expanded) w.record("expanded", {x.address, x.orcpt, x.notify});
  for (auto& r : e.rcpts)
    w.record("rcpt",
             {statusName(r.status), std::to_string(r.attempts), r.address, r.orcpt, r.notify, r.relay, r.lastReply});
  return w.finish();
}

namespace {

// Checks the framing (magic+version first, END+CRC last) and returns the record lines.
bool checkFrame(std::string_view text, std::string_view& body, std::string& error) {
  if (text.empty() || text.back() != '\n') return error = "truncated: no final newline", false;
  size_t lastStart = text.rfind('\n', text.size() - 2);
  lastStart = lastStart == std::string_view::npos ? 0 : lastStart + 1;
  std::string_view last = text.substr(lastStart, text.size() - 1 - lastStart);
  if (last.size() != 12 || last.substr(0, 4) != "end\t") return error = "truncated: no END record", false;
  uint32_t want = 0;
  for (char c : last.substr(4)) {
    int v = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (v < 0) return error = "bad END record", false;
    want = want * 16 + static_cast<uint32_t>(v);
  }
  body = text.substr(0, lastStart);
  if (crc32(body) != want) return error = "checksum mismatch", false;
  return true;
}

bool checkVersion(std::string_view line, int& version, std::string& error) {
  auto parts = splitTabs(line);
  if (parts.size() != 2 || parts[0] != kMagic || !parseInt(parts[1], version))
    return error = "not a Moat envelope", false;
  if (version < 1 || version > kEnvelopeVersion)
    return error = "unsupported envelope version " + std::to_string(version), false;
  return true;
}

}  // namespace

std::optional<Envelope> parseEnvelope(std::string_view text, std::string& error) {
  std::string_view body;
  if (!checkFrame(text, body, error)) return std::nullopt;
  Envelope env;
  int version = 0;
  std::optional<Parser> parser;
  bool first = true;
  std::vector<std::string> fields;
  while (!body.empty()) {
    size_t nl = body.find('\n');
    std::string_view line = body.substr(0, nl);
    body.remove_prefix(nl + 1);
    if (first) {
      if (!checkVersion(line, version, error)) return std::nullopt;
      parser.emplace(env, version);
      first = false;
      continue;
    }
    auto parts = splitTabs(line);
    fields.resize(parts.size() - 1);
    for (size_t i = 1; i < parts.size(); ++i) {
      if (!unescape(parts[i], fields[i - 1])) return error = "bad escape in record", std::nullopt;
    }
    if (!parser->apply(parts[0], fields, error)) return std::nullopt;
  }
  if (first) return error = "not a Moat envelope", std::nullopt;
  if (!parser->complete(error)) return std::nullopt;
  error.clear();
  return env;
}

}  // namespace moat::queue
