// queue/dsn.cc — the RFC 3464 DSN builder, RFC 6533 global DSNs, and their 7-bit form for a
// return path without SMTPUTF8 (dsn.h). Untrusted input: recipient addresses, remote replies
// and the original message (inside a DSN to downgrade too). Logs nothing.
#include "queue/dsn.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <ctime>

#include "mta/runtime/qp.h"
#include "mta/runtime/scan.h"

namespace moat::queue {
namespace {

constexpr size_t kMaxLine = 998;
constexpr size_t kFoldAt = 78;
constexpr size_t kMaxHeaderBlock = 256u << 10;

int64_t nowMs() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

// A field value safe for a header line: no CR/LF/controls, ASCII only.
std::string clean(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c == '\t' || c == '\r' || c == '\n') c = ' ';
    if (c < 0x20 || c == 0x7f) continue;
    out += c >= 0x80 ? '?' : static_cast<char>(c);
  }
  return out;
}

// The code point of the well-formed sequence `seq` (utf8Seq said how long it is).
uint32_t codePoint(std::string_view seq) {
  static constexpr unsigned char kLeadMask[] = {0, 0, 0x1F, 0x0F, 0x07};
  uint32_t cp = static_cast<unsigned char>(seq[0]) & kLeadMask[seq.size()];
  for (size_t k = 1; k < seq.size(); ++k) cp = cp << 6 | (static_cast<unsigned char>(seq[k]) & 0x3F);
  return cp;
}

void appendUtf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | cp >> 6);
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | cp >> 12);
    out += static_cast<char>(0x80 | (cp >> 6 & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | cp >> 18);
    out += static_cast<char>(0x80 | (cp >> 12 & 0x3F));
    out += static_cast<char>(0x80 | (cp >> 6 & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// A field value safe for a header line of a global DSN (RFC 6532 §3.2: UTF-8 allowed): no
// CR/LF/controls (C0, DEL and the C1 controls U+0080-U+009F), and non-ASCII only where it is
// well-formed UTF-8; any other byte becomes U+FFFD, so a peer can neither start a line nor
// hand malformed UTF-8 to the sender's mail reader.
std::string cleanUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      if (c == '\t' || c == '\r' || c == '\n') c = ' ';
      if (c >= 0x20 && c != 0x7f) out += static_cast<char>(c);
      ++i;
      continue;
    }
    size_t n = mta::utf8Seq(s, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD REPLACEMENT CHARACTER, one for each bad byte
      ++i;
      continue;
    }
    if (c != 0xC2 || static_cast<unsigned char>(s[i + 1]) >= 0xA0) out.append(s.substr(i, n));
    i += n;
  }
  return out;
}

// A field value for a global DSN or a plain one.
std::string field(std::string_view s, bool global) { return global ? cleanUtf8(s) : clean(s); }

// An address in RFC 6533 §3's utf-8-addr-xtext form, which a 7-bit report can carry:
// QCHARs as they are, any other character (non-ASCII, and backslash, '+', '=', space) as
// \x{HEXPOINT}, uppercase, no leading zeros. Controls are dropped and bytes that are not
// UTF-8 taken as U+FFFD first (cleanUtf8). At most 8 octets out for one in; the SMTP parser
// bounds addresses (RFC 5321 §4.5.3.1) and ORCPTs.
std::string xtextAddress(std::string_view addr) {
  std::string in = cleanUtf8(addr), out;
  for (size_t i = 0; i < in.size();) {
    auto c = static_cast<unsigned char>(in[i]);
    size_t n = c < 0x80 ? 1 : mta::utf8Seq(in, i);  // never 0: cleanUtf8 left only whole sequences
    uint32_t cp = c < 0x80 ? c : codePoint(std::string_view(in).substr(i, n));
    if (cp > 0x20 && cp < 0x7f && cp != '\\' && cp != '+' && cp != '=') {
      out += static_cast<char>(cp);
    } else {
      char buf[16];
      snprintf(buf, sizeof buf, "\\x{%X}", static_cast<unsigned>(cp));
      out += buf;
    }
    i += n;
  }
  return out;
}

// An address with its address type (RFC 3464 §2.1.2): "rfc822" when it is ASCII, as a DSN
// always had it; otherwise RFC 6533 §3's "utf-8", with the address itself in a global DSN
// (utf-8-address) and its utf-8-addr-xtext form in a plain, 7-bit one.
std::string typedAddress(std::string_view addr, bool global) {
  if (!mta::hasEightBit(addr)) return "rfc822; " + clean(addr);
  return "utf-8; " + (global ? cleanUtf8(addr) : xtextAddress(addr));
}

// An address as the notification text shows it: UTF-8 in a global DSN; in a plain one the
// xtext form, which keeps the text 7-bit and still tells the sender which address it was.
std::string shownAddress(std::string_view addr, bool global) {
  if (global) return cleanUtf8(addr);
  return mta::hasEightBit(addr) ? xtextAddress(addr) : clean(addr);
}

int hexValue(char h) {
  if (h >= '0' && h <= '9') return h - '0';
  if (h >= 'A' && h <= 'F') return h - 'A' + 10;
  if (h >= 'a' && h <= 'f') return h - 'a' + 10;
  return -1;
}

// The address a utf-8-addr-xtext or utf-8-addr-unitext stands for (RFC 6533 §3): each
// EmbeddedUnicodeChar \x{HEX} decoded. An escape that names no Unicode scalar value stays
// as it is. Never longer than its input.
std::string decodeEmbedded(std::string_view v) {
  std::string out;
  for (size_t i = 0; i < v.size();) {
    if (v.substr(i, 3) == "\\x{") {
      size_t close = v.find('}', i + 3);
      size_t len = close == std::string_view::npos ? 0 : close - i - 3;
      uint32_t cp = 0;
      bool ok = len >= 1 && len <= 6;
      for (size_t k = 0; ok && k < len; ++k) {
        int d = hexValue(v[i + 3 + k]);
        ok = d >= 0;
        cp = cp << 4 | static_cast<uint32_t>(d);
      }
      if (ok && cp > 0 && cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF)) {
        appendUtf8(out, cp);
        i = close + 1;
        continue;
      }
    }
    out += v[i++];
  }
  return out;
}

// xtext (RFC 3461 §4): each "+HH" decoded.
std::string decodeXtext(std::string_view v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] == '+' && i + 2 < v.size() && hexValue(v[i + 1]) >= 0 && hexValue(v[i + 2]) >= 0) {
      out += static_cast<char>(hexValue(v[i + 1]) << 4 | hexValue(v[i + 2]));
      i += 2;
    } else {
      out += v[i];
    }
  }
  return out;
}

std::string_view trimSpaces(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  return s;
}

// Original-Recipient (RFC 3464 §2.3.1) from the ORCPT as received (RFC 3461 §4.2). An ASCII
// one goes as it came, as it always did, except that a global DSN names the address of a
// "utf-8" one decoded (utf-8-address, RFC 6533 §3). Non-ASCII in an ORCPT (raw UTF-8, which
// only an SMTPUTF8 client can send) makes it a "utf-8" address like any other.
std::string originalRecipient(std::string_view orcpt, bool global) {
  size_t semi = orcpt.find(';');
  std::string_view type = semi == std::string_view::npos ? "" : trimSpaces(orcpt.substr(0, semi));
  std::string_view value = semi == std::string_view::npos ? orcpt : trimSpaces(orcpt.substr(semi + 1));
  bool utf8Type = mta::iequalsAscii(type, "utf-8");
  bool knownType = utf8Type || type.empty() || mta::iequalsAscii(type, "rfc822");
  if (knownType && (mta::hasEightBit(orcpt) || (global && utf8Type))) {
    std::string addr = utf8Type ? decodeEmbedded(value) : decodeXtext(value);
    return "utf-8; " + (global ? cleanUtf8(addr) : xtextAddress(addr));
  }
  std::string o = field(orcpt, global);
  return o.find(';') == std::string::npos ? "rfc822; " + o : o;
}

// Where to break `s` at most `max` octets in: before the UTF-8 sequence `max` falls in, so a
// break never splits a character (at most 3 octets back: bytes that are not UTF-8 cannot
// make it go further).
size_t breakAt(std::string_view s, size_t max) {
  size_t cut = max;
  while (cut > 1 && max - cut < 3 && cut < s.size() && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return cut;
}

// Splits `text` into lines (CRLF or bare LF), calling fn(line) for each without its ending.
template <typename Fn>
void forEachLine(std::string_view text, Fn fn) {
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    fn(line);
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
}

// Appends `text` with CRLF endings; lines longer than 998 are broken with CRLF SP, which
// in a header block is a fold (used for headers only).
void appendLines(std::string& out, std::string_view text, bool breakLong) {
  forEachLine(text, [&](std::string_view line) {
    while (breakLong && line.size() > kMaxLine) {
      size_t take = breakAt(line, kMaxLine - 1);
      out.append(line.substr(0, take));
      out += "\r\n ";
      line.remove_prefix(take);
    }
    out.append(line);
    out += "\r\n";
  });
}

bool hasLongLine(std::string_view text) {
  bool longLine = false;
  forEachLine(text, [&](std::string_view l) { longLine = longLine || l.size() > kMaxLine; });
  return longLine;
}

std::string makeBoundary(int64_t now, std::string_view original) {
  static std::atomic<uint64_t> counter{0};
  for (;;) {
    uint64_t n = counter.fetch_add(1) * 0x9E3779B97F4A7C15ULL ^ static_cast<uint64_t>(now);
    char buf[64];
    snprintf(buf, sizeof buf, "=_moat_dsn_%016llx", static_cast<unsigned long long>(n));
    if (original.find(buf) == std::string_view::npos) return buf;
  }
}

std::string makeMessageId(int64_t now, std::string_view host) {
  static std::atomic<uint64_t> counter{0};
  char buf[64];
  snprintf(buf, sizeof buf, "%lld.%llu.dsn", static_cast<long long>(now),
           static_cast<unsigned long long>(counter.fetch_add(1)));
  return "<" + std::string(buf) + "@" + clean(host) + ">";
}

bool anyAction(const DsnInput& in, std::string_view action) {
  for (auto& r : in.rcpts)
    if (r.action == action) return true;
  return false;
}

std::string subjectFor(const DsnInput& in) {
  if (anyAction(in, "failed")) return "Undelivered Mail Returned to Sender";
  if (anyAction(in, "delayed")) return "Delayed Mail (still being retried)";
  return "Successful Mail Delivery Report";
}

std::string humanPart(const DsnInput& in) {
  bool global = in.international;
  std::string t;
  std::string host = clean(in.reportingMta);
  t += "This is the mail system at host " + host + ".\r\n\r\n";
  if (anyAction(in, "failed"))
    t += "I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more "
         "recipients. It's attached below.\r\n\r\n";
  if (anyAction(in, "delayed"))
    t += "Your message could not be delivered yet to one or more recipients.\r\nIt will be retried "
         "until it is too old; you do not need to resend it.\r\n\r\n";
  if (anyAction(in, "delivered"))
    t += "Your message was delivered to the mailbox of each recipient marked\r\n\"delivered\" below, "
         "as you asked.\r\n\r\n";
  if (anyAction(in, "relayed"))
    t += "Your message was passed on to each recipient marked \"relayed\" below,\r\nto a mail system "
         "that does not report delivery: you may hear nothing\r\nmore of it unless a later system "
         "cannot deliver it.\r\n\r\n";
  if (anyAction(in, "expanded"))
    t += "Each address marked \"expanded\" below took your message and passes it on\r\nto other "
         "recipients; you will hear of them only if one cannot be\r\nreached.\r\n\r\n";
  for (auto& r : in.rcpts) {
    std::string line = "<" + shownAddress(r.address, global) + ">: " + clean(r.action);
    if (!r.diagnostic.empty()) line += ": " + field(r.diagnostic, global);
    appendLines(t, line, true);
  }
  return t;
}

// RFC 3464 §2.3.4 with RFC 3463 §3.1: the Status class matches the Action. A "delayed"
// recipient is one still being retried, so its status is transient even when the last reply
// was a 5xx that is retried (a 552 to RCPT, RFC 5321 §4.5.3.1.10): 5.2.2 becomes 4.2.2. The
// Diagnostic-Code keeps what the server said.
std::string statusFor(const DsnRecipient& r) {
  std::string status = clean(r.status);
  if (r.action != "delayed" || status.rfind("4.", 0) == 0) return status;
  return status.rfind("5.", 0) == 0 ? "4" + status.substr(1) : "4.0.0";
}

// The report's fields. In a global DSN (RFC 6533 §6.4) they may hold UTF-8: addresses typed
// "utf-8" (§3) and the remote reply, which an SMTPUTF8 server may write in UTF-8 (§6.2).
std::string statusPart(const DsnInput& in) {
  bool global = in.international;
  std::string s;
  s += foldHeader("Reporting-MTA", "dns; " + clean(in.reportingMta));
  if (!in.envid.empty()) s += foldHeader("Original-Envelope-Id", field(in.envid, global));
  if (in.arrivalMs > 0) s += foldHeader("Arrival-Date", rfc5322Date(in.arrivalMs));
  for (auto& r : in.rcpts) {
    s += "\r\n";
    s += foldHeader("Final-Recipient", typedAddress(r.address, global));
    if (!r.orcpt.empty()) s += foldHeader("Original-Recipient", originalRecipient(r.orcpt, global));
    s += foldHeader("Action", clean(r.action));
    s += foldHeader("Status", statusFor(r));
    if (!r.remoteMta.empty()) s += foldHeader("Remote-MTA", "dns; " + clean(r.remoteMta));
    if (!r.diagnostic.empty()) s += foldHeader("Diagnostic-Code", field(r.diagnostic, global));
    if (r.lastAttemptMs > 0) s += foldHeader("Last-Attempt-Date", rfc5322Date(r.lastAttemptMs));
    if (r.action == "delayed" && r.willRetryUntilMs > 0)
      s += foldHeader("Will-Retry-Until", rfc5322Date(r.willRetryUntilMs));
  }
  return s;
}

// The third part: its headers (Content-Type, maybe CTE) and body.
std::string originalPart(const DsnInput& in, std::string_view original) {
  bool full = !in.headersOnly && original.size() <= in.maxOriginalBytes && !hasLongLine(original);
  std::string body;
  if (full) {
    appendLines(body, original, false);
  } else {
    std::string_view hdrs = mta::headerBlock(original);
    if (hdrs.size() > kMaxHeaderBlock) hdrs = hdrs.substr(0, hdrs.rfind('\n', kMaxHeaderBlock) + 1);
    appendLines(body, hdrs, true);
  }
  // A global DSN returns the original as message/global (RFC 6532 §3.7), its headers as
  // message/global-headers (RFC 6533 §6.3): the types that may hold UTF-8 header fields.
  const char* type = in.international ? (full ? "message/global" : "message/global-headers")
                                      : (full ? "message/rfc822" : "text/rfc822-headers");
  std::string part = "Content-Type: " + std::string(type) + "\r\n";
  part += mta::hasEightBit(body) ? "Content-Transfer-Encoding: 8bit\r\n" : "Content-Transfer-Encoding: 7bit\r\n";
  part += "Content-Description: " +
          std::string(anyAction(in, "failed") || anyAction(in, "delayed")
                          ? (full ? "Undelivered Message" : "Undelivered Message Headers")
                          : "Message Headers") +  // a success report: nothing is undelivered
          "\r\n\r\n";
  return part + body;
}

}  // namespace

std::string rfc5322Date(int64_t ms) {
  time_t t = static_cast<time_t>(ms / 1000);
  struct tm tm {};
  gmtime_r(&t, &tm);
  char buf[64];
  strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S +0000", &tm);
  return buf;
}

std::string foldHeader(std::string_view name, std::string_view value) {
  std::string out(name);
  out += ":";
  size_t lineLen = out.size();
  // Words are separated by single spaces; each goes on the current line if it fits.
  while (!value.empty()) {
    size_t sp = value.find(' ');
    std::string_view word = value.substr(0, sp);
    value = sp == std::string_view::npos ? std::string_view() : value.substr(sp + 1);
    if (word.empty()) continue;
    if (lineLen + 1 + word.size() > kFoldAt && lineLen > name.size() + 1) {
      out += "\r\n";
      lineLen = 0;
    }
    while (lineLen + 1 + word.size() > kMaxLine) {  // one huge word: hard break
      size_t take = breakAt(word, kMaxLine - lineLen - 1);
      out += ' ';
      out.append(word.substr(0, take));
      out += "\r\n";
      lineLen = 0;
      word.remove_prefix(take);
    }
    out += ' ';
    out.append(word);
    lineLen += 1 + word.size();
  }
  out += "\r\n";
  return out;
}

bool notifyWants(std::string_view notify, std::string_view word) {
  if (notify.empty()) return word != "SUCCESS";
  for (size_t start = 0;;) {
    size_t comma = notify.find(',', start);
    if (notify.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start) == word)
      return true;
    if (comma == std::string_view::npos) return false;
    start = comma + 1;
  }
}

std::string notifyWithout(std::string_view notify, std::string_view word) {
  std::string out;
  for (size_t start = 0; start <= notify.size();) {
    size_t comma = std::min(notify.find(',', start), notify.size());
    std::string_view w = notify.substr(start, comma - start);
    if (!w.empty() && w != word) out.append(out.empty() ? "" : ",").append(w);
    start = comma + 1;
  }
  return out.empty() ? "NEVER" : out;
}

std::string defaultOrcpt(std::string_view address) {
  if (address.empty() || mta::hasEightBit(address)) return "";
  static const char kHex[] = "0123456789ABCDEF";
  std::string out = "rfc822;";
  for (char ch : address) {
    auto c = static_cast<unsigned char>(ch);
    if (c >= 33 && c <= 126 && c != '+' && c != '=') {
      out += ch;
    } else {
      out += '+';
      out += kHex[c >> 4];
      out += kHex[c & 0xF];
    }
  }
  return out;
}

std::string buildDsn(const DsnInput& in, std::string_view original) {
  int64_t now = in.nowMs > 0 ? in.nowMs : nowMs();
  std::string host = clean(in.reportingMta);
  std::string boundary = makeBoundary(now, original);
  std::string human = humanPart(in), status = statusPart(in), orig = originalPart(in, original);
  bool eightBit = mta::hasEightBit(human) || mta::hasEightBit(status) || mta::hasEightBit(orig);

  std::string m;
  m += foldHeader("Date", rfc5322Date(now));
  m += foldHeader("From", "MAILER-DAEMON@" + host + " (Mail Delivery System)");
  m += foldHeader("To", "<" + field(in.sender, in.international) + ">");  // RFC 6532 §3.2: UTF-8 as is
  m += foldHeader("Subject", subjectFor(in));
  m += foldHeader("Message-ID", in.messageId.empty() ? makeMessageId(now, host) : clean(in.messageId));
  if (!in.originalMessageId.empty()) m += foldHeader("References", field(in.originalMessageId, in.international));
  m += foldHeader("Auto-Submitted", "auto-replied");
  m += foldHeader("MIME-Version", "1.0");
  // A global DSN is still a "delivery-status" report: RFC 6533 changes the types of its
  // second and third parts (§6.3, §6.4), not the kind of report, and readers that look for
  // DSNs match on report-type=delivery-status (as Postfix sends global DSNs).
  m += foldHeader("Content-Type", "multipart/report; report-type=delivery-status; boundary=\"" + boundary + "\"");
  m += foldHeader("Content-Transfer-Encoding", eightBit ? "8bit" : "7bit");
  m += "\r\nThis is a MIME-encapsulated message.\r\n\r\n";

  m += "--" + boundary + "\r\n";
  // Only a global DSN's parts can hold 8-bit text: the sender's mail reader is then told it.
  m += mta::hasEightBit(human) ? "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
                               : "Content-Type: text/plain; charset=us-ascii\r\n";
  m += "Content-Description: Notification\r\n\r\n";
  m += human;
  m += "\r\n--" + boundary + "\r\n";
  m += in.international ? "Content-Type: message/global-delivery-status\r\n"
                        : "Content-Type: message/delivery-status\r\n";
  if (mta::hasEightBit(status)) m += "Content-Transfer-Encoding: 8bit\r\n";
  m += "Content-Description: Delivery report\r\n\r\n";
  m += status;
  m += "\r\n--" + boundary + "\r\n";
  m += orig;
  m += "\r\n--" + boundary + "--\r\n";
  return m;
}

// ---- the 7-bit form of a global DSN ------------------------------------------------------

namespace {

// One header field: its lines as they are (folding kept, CRLF included), its name, and its
// value unfolded (RFC 5322 §2.2.3) without the blanks that start it.
struct Field {
  std::string_view raw, name;
  std::string value;
};

// The field that starts at text[pos] (its first line and every next one that starts with a
// blank); pos moves past it. False when there is none: no CRLF, or no "name:" (printable
// ASCII name, RFC 5322 §3.6.8).
bool nextField(std::string_view text, size_t& pos, Field& f) {
  size_t end = pos;
  do {
    size_t nl = text.find("\r\n", end);
    if (nl == std::string_view::npos) return false;
    end = nl + 2;
  } while (end < text.size() && (text[end] == ' ' || text[end] == '\t'));
  f.raw = text.substr(pos, end - pos);
  size_t colon = f.raw.find(':');
  if (colon == 0 || colon == std::string_view::npos) return false;
  f.name = f.raw.substr(0, colon);
  for (char c : f.name)
    if (c <= ' ' || c > '~') return false;
  std::string_view v = f.raw.substr(colon + 1, f.raw.size() - colon - 3);
  f.value.clear();
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] == '\r' && i + 1 < v.size() && v[i + 1] == '\n') {
      ++i;
      continue;
    }
    f.value += v[i];
  }
  size_t lead = f.value.find_first_not_of(" \t");
  f.value.erase(0, lead == std::string::npos ? f.value.size() : lead);
  pos = end;
  return true;
}

// A header section (CRLF lines, no blank line) as fields.
bool splitFields(std::string_view block, std::vector<Field>& fields) {
  for (size_t pos = 0; pos < block.size();) {
    Field f;
    if (!nextField(block, pos, f)) return false;
    fields.push_back(std::move(f));
  }
  return true;
}

const Field* findField(const std::vector<Field>& fields, std::string_view name) {
  for (const auto& f : fields)
    if (mta::iequalsAscii(f.name, name)) return &f;
  return nullptr;
}

// A media type without its parameters, lower case: "message/global".
std::string mediaType(const std::vector<Field>& fields) {
  const Field* ct = findField(fields, "Content-Type");
  std::string t = ct ? std::string(trimSpaces(ct->value.substr(0, ct->value.find(';')))) : "";
  for (auto& c : t) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return t;
}

// A body part's header: Content-Type and Content-Transfer-Encoding ("" = none, 7bit) as
// given, then the part's other fields as they were (Content-Description), which buildDsn
// writes in ASCII.
bool partHeader(const std::vector<Field>& fields, std::string_view type, std::string_view cte, std::string& out) {
  out = "Content-Type: " + std::string(type) + "\r\n";
  if (!cte.empty()) out += "Content-Transfer-Encoding: " + std::string(cte) + "\r\n";
  for (const auto& f : fields) {
    if (mta::iequalsAscii(f.name, "Content-Type") || mta::iequalsAscii(f.name, "Content-Transfer-Encoding")) continue;
    if (mta::hasEightBit(f.raw)) return false;
    out.append(f.raw);
  }
  out += "\r\n";
  return true;
}

// A report field as a plain report has it: a "utf-8" address in its utf-8-addr-xtext form
// (a global report holds the address itself, utf-8-address: RFC 6533 §3), anything else
// ASCII ('?' for what is not), as buildDsn writes a plain report.
std::string plainReportValue(const Field& f) {
  if (mta::iequalsAscii(f.name, "Final-Recipient") || mta::iequalsAscii(f.name, "Original-Recipient")) {
    size_t semi = f.value.find(';');
    if (semi != std::string::npos && mta::iequalsAscii(trimSpaces(std::string_view(f.value).substr(0, semi)), "utf-8"))
      return "utf-8; " + xtextAddress(trimSpaces(std::string_view(f.value).substr(semi + 1)));
  }
  return clean(f.value);
}

// A body part of a multipart: its header's fields, and what follows the blank line.
struct BodyPart {
  std::vector<Field> fields;
  std::string_view content;
};

DsnDowngrade refused(std::string why) {
  DsnDowngrade d;
  d.reason = std::move(why);
  return d;
}

// A name from the DSN for a reason: printable ASCII only, and short.
std::string printableName(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 40)) out += c > ' ' && c <= '~' ? c : '?';
  return out;
}

}  // namespace

DsnDowngrade downgradeGlobalDsn(std::string_view message) {
  size_t headerEnd = message.find("\r\n\r\n");
  if (headerEnd == std::string_view::npos) return refused("not a DSN: no header section");
  std::vector<Field> top;
  if (!splitFields(message.substr(0, headerEnd + 2), top)) return refused("not a DSN: a header line is not a field");
  std::string_view body = message.substr(headerEnd + 4);

  // Moat's own multipart/report, by its boundary: buildDsn chose it so that no part holds it.
  const Field* ct = findField(top, "Content-Type");
  std::string ctValue = ct ? ct->value : "";
  for (auto& c : ctValue) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  size_t b = ctValue.find("boundary=\"");
  if (mediaType(top) != "multipart/report" || b == std::string::npos)
    return refused("not a DSN: not a multipart/report");
  std::string_view rest = std::string_view(ct->value).substr(b + 10);
  std::string boundary(rest.substr(0, rest.find('"')));
  if (!boundary.starts_with("=_moat_dsn_") || boundary.size() > 70 || rest.find('"') == std::string_view::npos)
    return refused("not a DSN of Moat's own making");

  // The top-level header: every line as it was, but a 7bit label, and no References in UTF-8.
  std::string out;
  for (const auto& f : top) {
    if (mta::iequalsAscii(f.name, "Content-Transfer-Encoding")) {
      out += "Content-Transfer-Encoding: 7bit\r\n";
    } else if (!mta::hasEightBit(f.raw)) {
      out.append(f.raw);
    } else if (!mta::iequalsAscii(f.name, "References")) {
      return refused("UTF-8 in the header field " + printableName(f.name));
    }
  }
  out += "\r\n";

  // The parts (RFC 2046 §5.1.1): a delimiter line starts the first; "CRLF --boundary" ends each.
  std::string first = "--" + boundary + "\r\n", delimiter = "\r\n--" + boundary;
  size_t pos = body.starts_with(first) ? 0 : body.find("\r\n" + first);
  if (pos == std::string_view::npos) return refused("not a DSN: no body part");
  if (pos > 0) pos += 2;  // the CRLF ends the preamble's last line
  std::string_view preamble = body.substr(0, pos), epilogue;
  pos += first.size();
  std::vector<BodyPart> parts;
  for (;;) {
    size_t end = body.find(delimiter, pos);
    if (end == std::string_view::npos || parts.size() == 3) return refused("not a DSN: not three body parts");
    std::string_view text = body.substr(pos, end - pos);
    size_t blank = text.starts_with("\r\n") ? 0 : text.find("\r\n\r\n");
    if (blank == std::string_view::npos) return refused("not a DSN: a body part without a header");
    BodyPart p;
    size_t headerLen = blank == 0 ? 0 : blank + 2;
    if (!splitFields(text.substr(0, headerLen), p.fields))
      return refused("not a DSN: a part's header line is not a field");
    p.content = text.substr(headerLen + 2);
    parts.push_back(std::move(p));
    pos = end + delimiter.size();
    if (body.substr(pos, 2) == "--") {
      epilogue = body.substr(pos + 2);
      break;
    }
    if (body.substr(pos, 2) != "\r\n") return refused("not a DSN: a bad delimiter line");
    pos += 2;
  }
  if (parts.size() != 3) return refused("not a DSN: not three body parts");
  if (mta::hasEightBit(preamble) || mta::hasEightBit(epilogue)) return refused("UTF-8 outside the body parts");

  // 1. The notification: quoted-printable when it holds UTF-8.
  const BodyPart& human = parts[0];
  std::string humanHeader, humanText;
  if (mediaType(human.fields) != "text/plain") return refused("not a DSN: the first part is not text/plain");
  bool humanUtf8 = mta::hasEightBit(human.content);
  if (!partHeader(human.fields, humanUtf8 ? "text/plain; charset=utf-8" : "text/plain; charset=us-ascii",
                  humanUtf8 ? "quoted-printable" : "", humanHeader))
    return refused("UTF-8 in the notification's header");
  humanText = humanUtf8 ? mta::encodeQuotedPrintable(human.content) : std::string(human.content);

  // 2. The report: message/delivery-status, its fields as a plain report has them.
  const BodyPart& report = parts[1];
  std::string reportType = mediaType(report.fields), reportHeader, reportText;
  if (reportType != "message/global-delivery-status")
    return refused("not a global DSN: the second part is not message/global-delivery-status");
  if (!partHeader(report.fields, "message/delivery-status", "", reportHeader))
    return refused("UTF-8 in the report's header");
  for (size_t p = 0; p < report.content.size();) {
    if (report.content.substr(p, 2) == "\r\n") {  // the blank line between groups of fields
      reportText += "\r\n";
      p += 2;
      continue;
    }
    Field f;
    if (!nextField(report.content, p, f)) return refused("not a DSN: a report line is not a field");
    reportText += foldHeader(f.name, plainReportValue(f));
  }

  // 3. The original: its header section as text/rfc822-headers, at most as much of it as
  // buildDsn returns.
  const BodyPart& original = parts[2];
  std::string originalType = mediaType(original.fields);
  std::string_view hdrs = original.content;
  if (originalType == "message/global") {
    hdrs = mta::headerBlock(original.content);
    if (hdrs.size() > kMaxHeaderBlock) hdrs = hdrs.substr(0, hdrs.rfind('\n', kMaxHeaderBlock) + 1);
  } else if (originalType != "message/global-headers") {
    return refused("not a global DSN: the third part is not message/global or message/global-headers");
  }
  bool originalUtf8 = mta::hasEightBit(hdrs);
  std::string originalPart = originalUtf8 ? "Content-Type: text/rfc822-headers; charset=utf-8\r\n"
                                            "Content-Transfer-Encoding: quoted-printable\r\n"
                                          : "Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: 7bit\r\n";
  originalPart += "Content-Description: Undelivered Message Headers\r\n\r\n";
  originalPart += originalUtf8 ? mta::encodeQuotedPrintable(hdrs) : std::string(hdrs);

  out += preamble;
  out += first;
  out += humanHeader + humanText;
  out += delimiter + "\r\n" + reportHeader + reportText;
  out += delimiter + "\r\n" + originalPart;
  out += delimiter + "--";
  out.append(epilogue);
  // Nothing written may hold the boundary: quoted-printable writes '=' as =3D, xtext as
  // \x{3D}, and the rest was in the DSN, where buildDsn made sure it was not. Checked anyway.
  size_t delimiters = 0;
  for (size_t at = out.find("--" + boundary); at != std::string::npos; at = out.find("--" + boundary, at + 1))
    ++delimiters;
  if (delimiters != 4) return refused("the boundary occurs inside a part");
  if (mta::hasEightBit(out)) return refused("8-bit data left after the conversion");
  DsnDowngrade d;
  d.ok = true;
  d.message = std::move(out);
  return d;
}

}  // namespace moat::queue
