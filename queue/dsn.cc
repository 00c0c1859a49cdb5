// queue/dsn.cc — the RFC 3464 DSN builder (dsn.h). Untrusted input: recipient addresses,
// remote replies and the original message. Logs nothing.
#include "queue/dsn.h"

#include <atomic>
#include <chrono>
#include <ctime>

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
      out.append(line.substr(0, kMaxLine - 1));
      out += "\r\n ";
      line.remove_prefix(kMaxLine - 1);
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
  std::string t;
  std::string host = clean(in.reportingMta);
  t += "This is the mail system at host " + host + ".\r\n\r\n";
  if (anyAction(in, "failed"))
    t += "I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more "
         "recipients. It's attached below.\r\n\r\n";
  if (anyAction(in, "delayed"))
    t += "Your message could not be delivered yet to one or more recipients.\r\nIt will be retried "
         "until it is too old; you do not need to resend it.\r\n\r\n";
  for (auto& r : in.rcpts) {
    std::string line = "<" + clean(r.address) + ">: " + clean(r.action);
    if (!r.diagnostic.empty()) line += ": " + clean(r.diagnostic);
    appendLines(t, line, true);
  }
  return t;
}

std::string statusPart(const DsnInput& in) {
  std::string s;
  s += foldHeader("Reporting-MTA", "dns; " + clean(in.reportingMta));
  if (!in.envid.empty()) s += foldHeader("Original-Envelope-Id", clean(in.envid));
  if (in.arrivalMs > 0) s += foldHeader("Arrival-Date", rfc5322Date(in.arrivalMs));
  for (auto& r : in.rcpts) {
    s += "\r\n";
    s += foldHeader("Final-Recipient", "rfc822; " + clean(r.address));
    if (!r.orcpt.empty()) {
      std::string o = clean(r.orcpt);
      s += foldHeader("Original-Recipient", o.find(';') == std::string::npos ? "rfc822; " + o : o);
    }
    s += foldHeader("Action", clean(r.action));
    s += foldHeader("Status", clean(r.status));
    if (!r.remoteMta.empty()) s += foldHeader("Remote-MTA", "dns; " + clean(r.remoteMta));
    if (!r.diagnostic.empty()) s += foldHeader("Diagnostic-Code", clean(r.diagnostic));
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
  std::string part = full ? "Content-Type: message/rfc822\r\n" : "Content-Type: text/rfc822-headers\r\n";
  part += mta::hasEightBit(body) ? "Content-Transfer-Encoding: 8bit\r\n" : "Content-Transfer-Encoding: 7bit\r\n";
  part +=
      "Content-Description: " + std::string(full ? "Undelivered Message" : "Undelivered Message Headers") + "\r\n\r\n";
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
      size_t take = kMaxLine - lineLen - 1;
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

std::string buildDsn(const DsnInput& in, std::string_view original) {
  int64_t now = in.nowMs > 0 ? in.nowMs : nowMs();
  std::string host = clean(in.reportingMta);
  std::string boundary = makeBoundary(now, original);
  std::string human = humanPart(in), status = statusPart(in), orig = originalPart(in, original);
  bool eightBit = mta::hasEightBit(orig);

  std::string m;
  m += foldHeader("Date", rfc5322Date(now));
  m += foldHeader("From", "MAILER-DAEMON@" + host + " (Mail Delivery System)");
  m += foldHeader("To", "<" + clean(in.sender) + ">");
  m += foldHeader("Subject", subjectFor(in));
  m += foldHeader("Message-ID", in.messageId.empty() ? makeMessageId(now, host) : clean(in.messageId));
  if (!in.originalMessageId.empty()) m += foldHeader("References", clean(in.originalMessageId));
  m += foldHeader("Auto-Submitted", "auto-replied");
  m += foldHeader("MIME-Version", "1.0");
  m += foldHeader("Content-Type", "multipart/report; report-type=delivery-status; boundary=\"" + boundary + "\"");
  m += foldHeader("Content-Transfer-Encoding", eightBit ? "8bit" : "7bit");
  m += "\r\nThis is a MIME-encapsulated message.\r\n\r\n";

  m += "--" + boundary + "\r\n";
  m += "Content-Type: text/plain; charset=us-ascii\r\nContent-Description: Notification\r\n\r\n";
  m += human;
  m += "\r\n--" + boundary + "\r\n";
  m += "Content-Type: message/delivery-status\r\nContent-Description: Delivery report\r\n\r\n";
  m += status;
  m += "\r\n--" + boundary + "\r\n";
  m += orig;
  m += "\r\n--" + boundary + "--\r\n";
  return m;
}

}  // namespace moat::queue
