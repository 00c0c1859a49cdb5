// mta/smtp/protocol.cc — SMTP command parsing, mailbox/domain syntax, reply formatting and the
// command-phase line reader. RFC 5321 §4.1 (commands), §4.1.2 (path syntax), §4.5.3.1 (size
// limits); RFC 6531 (SMTPUTF8), RFC 1870 (SIZE), RFC 6152 (BODY), RFC 3461 (NOTIFY, ORCPT,
// RET, ENVID), RFC 4954 §5 (AUTH=), RFC 3030 (BDAT), RFC 8689 (REQUIRETLS), RFC 2034/3463
// (enhanced codes).
// Untrusted input: every byte of every line. Nothing here logs or throws.
#include "mta/smtp/protocol.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <limits>

#include "mta/runtime/ip.h"
#include "mta/runtime/scan.h"

namespace moat::mta::smtp {
namespace {

constexpr size_t kMaxLocalPart = 64;   // RFC 5321 §4.5.3.1.1
constexpr size_t kMaxDomain = 255;     // RFC 5321 §4.5.3.1.2
constexpr size_t kMaxPath = 256;       // RFC 5321 §4.5.3.1.3, including the <>
constexpr size_t kMaxLabel = 63;       // RFC 1035 §2.3.4
constexpr size_t kMaxSizeDigits = 20;  // RFC 1870: 1*20DIGIT
constexpr size_t kMaxEnvid = 100;      // RFC 3461 §4.4
constexpr size_t kMaxOrcpt = 500;      // RFC 3461 §4.2
// More parameters than any known set holds; bounds the duplicate check on a hostile line.
constexpr size_t kMaxParams = 16;

bool isAlpha(unsigned char c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }
bool isDigit(unsigned char c) { return c >= '0' && c <= '9'; }
bool isAlnum(unsigned char c) { return isAlpha(c) || isDigit(c); }
char toLower(char c) { return (c >= 'A' && c <= 'Z') ? char(c + 32) : c; }
char toUpper(char c) { return (c >= 'a' && c <= 'z') ? char(c - 32) : c; }

bool istartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequalsAscii(s.substr(0, prefix.size()), prefix);
}

std::string upper(std::string_view s) {
  std::string r(s);
  for (char& c : r) c = toUpper(c);
  return r;
}

std::string_view trimSpaces(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// RFC 5322 atext, as RFC 5321 §4.1.2 uses it for Dot-string.
bool isAtext(unsigned char c) {
  return isAlnum(c) || (c != 0 && std::strchr("!#$%&'*+-/=?^_`{|}~", c) != nullptr);
}

// Dot-string = Atom *("." Atom); with utf8, atext also takes UTF-8 (RFC 6531 §3.3).
bool isDotString(std::string_view s, bool utf8) {
  if (s.empty() || s.front() == '.' || s.back() == '.') return false;
  for (size_t i = 0; i < s.size();) {
    unsigned char c = s[i];
    if (c == '.') {
      if (s[i + 1] == '.') return false;
      ++i;
    } else if (c < 0x80) {
      if (!isAtext(c)) return false;
      ++i;
    } else {
      size_t n = utf8 ? utf8Seq(s, i) : 0;
      if (n == 0) return false;
      i += n;
    }
  }
  return true;
}

// Quoted-string = DQUOTE *QcontentSMTP DQUOTE (RFC 5321 §4.1.2; RFC 6531 adds UTF-8 qtext).
bool isQuotedString(std::string_view s, bool utf8) {
  if (s.size() < 2 || s.front() != '"' || s.back() != '"') return false;
  for (size_t i = 1; i + 1 < s.size();) {
    unsigned char c = s[i];
    if (c == '\\') {
      if (i + 2 >= s.size()) return false;  // the escape would eat the closing quote
      unsigned char q = s[i + 1];
      if (q < 32 || q > 126) return false;
      i += 2;
    } else if (c == '"') {
      return false;
    } else if (c < 0x80) {
      if (c < 32 || c > 126) return false;
      ++i;
    } else {
      size_t n = utf8 ? utf8Seq(s, i) : 0;
      if (n == 0) return false;
      i += n;
    }
  }
  return true;
}

// Where the local part ends: the '@' after a quoted string or the first '@' of a Dot-string.
size_t localPartEnd(std::string_view mailbox) {
  if (!mailbox.empty() && mailbox.front() == '"') {
    for (size_t i = 1; i < mailbox.size(); ++i) {
      if (mailbox[i] == '\\') {
        ++i;
      } else if (mailbox[i] == '"') {
        return i + 1 < mailbox.size() && mailbox[i + 1] == '@' ? i + 1 : std::string_view::npos;
      }
    }
    return std::string_view::npos;
  }
  return mailbox.find('@');
}

bool isLabel(std::string_view label, bool utf8) {
  if (label.empty() || label.size() > kMaxLabel) return false;
  if (label.front() == '-' || label.back() == '-') return false;
  for (size_t i = 0; i < label.size();) {
    unsigned char c = label[i];
    if (c < 0x80) {
      if (!isAlnum(c) && c != '-') return false;
      ++i;
    } else {
      size_t n = utf8 ? utf8Seq(label, i) : 0;
      if (n == 0) return false;
      i += n;
    }
  }
  return true;
}

// address-literal (RFC 5321 §4.1.3): [IPv4] or [IPv6:...]; general literals are refused
// because nothing can be delivered to them.
bool isAddressLiteral(std::string_view lit) { return parseAddressLiteral(lit).has_value(); }

Reply makeReply(int code, const char* enhanced, std::string text) {
  return Reply{code, enhanced, std::move(text)};
}

Reply argSyntax(std::string_view usage) {
  return makeReply(501, "5.5.4", "Syntax: " + std::string(usage));
}

// esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
bool isEsmtpKeyword(std::string_view k) {
  if (k.empty() || !isAlnum(k.front())) return false;
  return std::all_of(k.begin(), k.end(), [](unsigned char c) { return isAlnum(c) || c == '-'; });
}

// esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 under SMTPUTF8 (RFC 6531 §3.3).
bool isEsmtpValue(std::string_view v, bool utf8) {
  if (v.empty()) return false;
  for (size_t i = 0; i < v.size();) {
    unsigned char c = v[i];
    if (c < 0x80) {
      if (c < 33 || c > 126 || c == '=') return false;
      ++i;
    } else {
      size_t n = utf8 ? utf8Seq(v, i) : 0;
      if (n == 0) return false;
      i += n;
    }
  }
  return true;
}

bool isHexUpper(unsigned char c) { return isDigit(c) || (c >= 'A' && c <= 'F'); }

// xtext (RFC 3461 §4): printable ASCII except '+' and '=', or "+HH". Under SMTPUTF8 the
// value may also carry UTF-8 (RFC 6533 utf-8-addr-xtext), which esmtp-value already vetted.
bool isXtext(std::string_view v) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] != '+') continue;
    if (i + 2 >= v.size() || !isHexUpper(v[i + 1]) || !isHexUpper(v[i + 2])) return false;
    i += 2;
  }
  return !v.empty();
}

bool isNotify(std::string_view v) {
  if (iequalsAscii(v, "NEVER")) return true;
  size_t start = 0;
  while (start <= v.size()) {
    size_t comma = v.find(',', start);
    std::string_view item = v.substr(start, comma == std::string_view::npos ? v.npos : comma - start);
    if (!iequalsAscii(item, "SUCCESS") && !iequalsAscii(item, "FAILURE") && !iequalsAscii(item, "DELAY")) return false;
    if (comma == std::string_view::npos) return true;
    start = comma + 1;
  }
  return false;
}

// ORCPT = addr-type ";" xtext, addr-type an atom (RFC 3461 §4.2).
bool isOrcpt(std::string_view v) {
  size_t semi = v.find(';');
  if (semi == 0 || semi == std::string_view::npos || v.size() > kMaxOrcpt) return false;
  std::string_view type = v.substr(0, semi);
  if (!std::all_of(type.begin(), type.end(), [](unsigned char c) { return isAtext(c); })) return false;
  return isXtext(v.substr(semi + 1));
}

// The value check for a known parameter; nullopt when it is fine. Keyword values are
// upper-cased in place so the session can compare them directly.
std::optional<Reply> checkParamValue(Verb verb, Param& p) {
  auto bad = [&] { return makeReply(501, "5.5.4", "Bad " + p.key + " parameter value"); };
  const std::string& k = p.key;
  if (verb == Verb::Mail) {
    if (k == "SIZE") {
      if (p.value.empty() || p.value.size() > kMaxSizeDigits ||
          !std::all_of(p.value.begin(), p.value.end(), [](unsigned char c) { return isDigit(c); }))
        return bad();
      return std::nullopt;
    }
    if (k == "BODY") {
      p.value = upper(p.value);
      if (p.value != "7BIT" && p.value != "8BITMIME" && p.value != "BINARYMIME") return bad();
      return std::nullopt;
    }
    if (k == "SMTPUTF8" || k == "REQUIRETLS") {  // RFC 8689 §3: REQUIRETLS takes no value
      if (!p.value.empty()) return bad();
      return std::nullopt;
    }
    if (k == "AUTH") {
      if (p.value != "<>" && !isXtext(p.value)) return bad();
      return std::nullopt;
    }
    if (k == "RET") {
      p.value = upper(p.value);
      if (p.value != "FULL" && p.value != "HDRS") return bad();
      return std::nullopt;
    }
    if (k == "ENVID") {
      if (p.value.size() > kMaxEnvid || !isXtext(p.value)) return bad();
      return std::nullopt;
    }
  } else {
    if (k == "NOTIFY") {
      p.value = upper(p.value);
      if (!isNotify(p.value)) return bad();
      return std::nullopt;
    }
    if (k == "ORCPT") {
      if (!isOrcpt(p.value)) return bad();
      return std::nullopt;
    }
  }
  return makeReply(555, "5.5.4", "Unsupported parameter " + k);
}

// Splits "KEY[=VALUE] KEY[=VALUE]..." (several spaces tolerated) into params.
std::optional<Reply> splitParams(std::string_view text, std::vector<Param>& out) {
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] == ' ') {
      ++i;
      continue;
    }
    size_t end = text.find(' ', i);
    std::string_view tok = text.substr(i, end == std::string_view::npos ? text.npos : end - i);
    i = end == std::string_view::npos ? text.size() : end;
    size_t eq = tok.find('=');
    std::string_view key = tok.substr(0, eq);
    if (out.size() == kMaxParams) return makeReply(501, "5.5.4", "Too many parameters");
    if (!isEsmtpKeyword(key)) return makeReply(501, "5.5.4", "Bad parameter syntax");
    Param p{upper(key), ""};
    if (eq != std::string_view::npos) {
      p.value.assign(tok.substr(eq + 1));
      if (p.value.empty()) return makeReply(501, "5.5.4", "Bad parameter syntax");
    }
    for (const Param& q : out)
      if (q.key == p.key) return makeReply(501, "5.5.4", "Duplicate parameter " + p.key);
    out.push_back(std::move(p));
  }
  return std::nullopt;
}

std::optional<Reply> checkParams(Verb verb, std::vector<Param>& params, bool utf8) {
  for (Param& p : params) {
    if (!p.value.empty() && !isEsmtpValue(p.value, utf8)) return makeReply(501, "5.5.4", "Bad parameter syntax");
    if (auto r = checkParamValue(verb, p)) return r;
  }
  return std::nullopt;
}

// A source route "@a,@b:" (RFC 5321 §4.1.1.3): checked for syntax, then dropped.
bool skipSourceRoute(std::string_view& inner) {
  if (inner.empty() || inner.front() != '@') return true;
  size_t i = 0;
  while (i < inner.size() && inner[i] == '@') {
    size_t start = ++i;
    if (i < inner.size() && inner[i] == '[') {
      size_t close = inner.find(']', i);
      if (close == std::string_view::npos) return false;
      i = close + 1;
    } else {
      while (i < inner.size() && inner[i] != ',' && inner[i] != ':') ++i;
    }
    if (!isValidDomain(inner.substr(start, i - start), false)) return false;
    if (i >= inner.size()) return false;
    if (inner[i] == ':') {
      inner.remove_prefix(i + 1);
      return true;
    }
    ++i;  // ','
  }
  return false;
}

// Finds the '>' that closes a path starting at text[0] == '<', skipping quoted strings.
size_t pathEnd(std::string_view text) {
  bool quoted = false;
  for (size_t i = 1; i < text.size(); ++i) {
    char c = text[i];
    if (quoted && c == '\\') {
      ++i;
    } else if (c == '"') {
      quoted = !quoted;
    } else if (c == '>' && !quoted) {
      return i;
    }
  }
  return std::string_view::npos;
}

bool hasParam(const std::vector<Param>& params, std::string_view key) {
  return std::any_of(params.begin(), params.end(), [&](const Param& p) { return p.key == key; });
}

// The mailbox of a MAIL or RCPT path: syntax, lengths and the 8-bit rule of RFC 6531.
std::optional<Reply> checkMailbox(Verb verb, std::string_view path, std::string_view mailbox, bool utf8) {
  const char* enh = verb == Verb::Mail ? "5.1.7" : "5.1.3";
  const std::string who = verb == Verb::Mail ? "sender" : "recipient";
  if (hasEightBit(mailbox) && !utf8)
    return makeReply(553, "5.6.7", "Non-ASCII addresses not permitted without SMTPUTF8");
  if (path.size() > kMaxPath) return makeReply(501, enh, "Path too long");
  size_t at = localPartEnd(mailbox);
  if (at == std::string_view::npos) return makeReply(501, enh, "Bad " + who + " address syntax");
  if (at > kMaxLocalPart) return makeReply(501, enh, "Local part too long");
  if (mailbox.size() - at - 1 > kMaxDomain) return makeReply(501, enh, "Domain too long");
  if (!isValidMailbox(mailbox, utf8)) return makeReply(501, enh, "Bad " + who + " address syntax");
  return std::nullopt;
}

// MAIL FROM:<path> [params] / RCPT TO:<path> [params]
std::optional<Reply> parsePathCommand(Command& cmd, bool utf8) {
  const bool mail = cmd.verb == Verb::Mail;
  const std::string_view usage = mail ? "MAIL FROM:<address>" : "RCPT TO:<address>";
  std::string_view rest = cmd.arg;
  std::string_view prefix = mail ? "FROM:" : "TO:";
  if (!istartsWith(rest, prefix)) return argSyntax(usage);
  rest.remove_prefix(prefix.size());
  while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);  // "FROM: <a@b>"
  if (rest.empty() || rest.front() != '<') return argSyntax(usage);
  size_t close = pathEnd(rest);
  if (close == std::string_view::npos) return argSyntax(usage);
  std::string_view path = rest.substr(0, close + 1);
  std::string_view after = rest.substr(close + 1);
  if (!after.empty() && after.front() != ' ') return argSyntax(usage);
  if (auto r = splitParams(after, cmd.params)) return r;
  // MAIL opens a transaction: only its own SMTPUTF8 counts (RFC 6531 §3.4), never what an
  // earlier MAIL of the session asked for. RCPT follows the transaction's MAIL.
  const bool utf8Path = mail ? hasParam(cmd.params, "SMTPUTF8") : utf8;
  if (auto r = checkParams(cmd.verb, cmd.params, utf8Path)) return r;

  std::string_view inner = path.substr(1, path.size() - 2);
  if (!skipSourceRoute(inner)) return makeReply(501, mail ? "5.1.7" : "5.1.3", "Bad source route");
  if (inner.empty()) {
    if (mail && path.size() == 2) return std::nullopt;  // the null reverse-path
    return makeReply(501, mail ? "5.1.7" : "5.1.3", "Empty address");
  }
  if (!mail && iequalsAscii(inner, "postmaster")) {  // RFC 5321 §4.5.1
    cmd.address.assign(inner);
    return std::nullopt;
  }
  if (auto r = checkMailbox(cmd.verb, path, inner, utf8Path)) return r;
  cmd.address.assign(inner);
  return std::nullopt;
}

// BDAT chunk-size [SP "LAST"] (RFC 3030 §2)
std::optional<Reply> parseBdat(Command& cmd) {
  std::string_view a = cmd.arg;
  size_t sp = a.find(' ');
  std::string_view size = a.substr(0, sp);
  std::string_view tail = sp == std::string_view::npos ? std::string_view() : trimSpaces(a.substr(sp));
  if (size.empty() || size.size() > kMaxSizeDigits ||
      !std::all_of(size.begin(), size.end(), [](unsigned char c) { return isDigit(c); }))
    return argSyntax("BDAT size [LAST]");
  auto [ptr, ec] = std::from_chars(size.data(), size.data() + size.size(), cmd.chunkSize);
  if (ec != std::errc() || ptr != size.data() + size.size()) return argSyntax("BDAT size [LAST]");
  if (!tail.empty() && !iequalsAscii(tail, "LAST")) return argSyntax("BDAT size [LAST]");
  cmd.last = !tail.empty();
  return std::nullopt;
}

std::optional<Reply> parseArguments(Command& cmd, bool utf8) {
  switch (cmd.verb) {
    case Verb::Helo:
    case Verb::Ehlo:
      if (cmd.arg.empty()) return argSyntax(cmd.verb == Verb::Helo ? "HELO hostname" : "EHLO hostname");
      return std::nullopt;
    case Verb::Mail:
    case Verb::Rcpt:
      return parsePathCommand(cmd, utf8);
    case Verb::Bdat:
      return parseBdat(cmd);
    case Verb::Data:
    case Verb::Rset:
    case Verb::Quit:
    case Verb::StartTls:
      if (!cmd.arg.empty()) return argSyntax(std::string(verbName(cmd.verb)) + " (no parameters allowed)");
      return std::nullopt;
    case Verb::Vrfy:
    case Verb::Expn:
    case Verb::Auth:
      if (cmd.arg.empty()) return argSyntax(std::string(verbName(cmd.verb)) + " argument");
      return std::nullopt;
    case Verb::Noop:
    case Verb::Help:
    case Verb::Unknown:
      return std::nullopt;
  }
  return std::nullopt;
}

constexpr std::array<std::pair<Verb, std::string_view>, 14> kVerbs{{
    {Verb::Helo, "HELO"}, {Verb::Ehlo, "EHLO"}, {Verb::Mail, "MAIL"}, {Verb::Rcpt, "RCPT"},
    {Verb::Data, "DATA"}, {Verb::Bdat, "BDAT"}, {Verb::Rset, "RSET"}, {Verb::Noop, "NOOP"},
    {Verb::Quit, "QUIT"}, {Verb::Vrfy, "VRFY"}, {Verb::Expn, "EXPN"}, {Verb::Help, "HELP"},
    {Verb::StartTls, "STARTTLS"}, {Verb::Auth, "AUTH"},
}};

}  // namespace

Verb parseVerb(std::string_view word) {
  for (const auto& [verb, name] : kVerbs)
    if (iequalsAscii(word, name)) return verb;
  return Verb::Unknown;
}

std::string_view verbName(Verb verb) {
  for (const auto& [v, name] : kVerbs)
    if (v == verb) return name;
  return "";
}

std::variant<Command, Reply> parseCommand(std::string_view line, bool utf8) {
  if (line.find_first_of(std::string_view("\0\r\n", 3)) != std::string_view::npos)
    return makeReply(500, "5.5.2", "Syntax error: control character in command");
  while (!line.empty() && (line.back() == ' ' || line.back() == '\t')) line.remove_suffix(1);
  size_t sp = line.find(' ');
  std::string_view word = line.substr(0, sp);
  if (word.empty()) return makeReply(500, "5.5.2", "Syntax error");
  Command cmd;
  cmd.verb = parseVerb(word);
  cmd.verbText.assign(word);
  // RFC 3463 §3.6: X.5.2 is the code for a command that "could not be interpreted, either
  // because the syntax was wrong or the command is unrecognized" (X.5.1 is for commands out
  // of sequence or not implemented, as EXPN's 502). Postfix answers 5.5.2 too.
  if (cmd.verb == Verb::Unknown) return makeReply(500, "5.5.2", "Command unrecognized");
  if (sp != std::string_view::npos) cmd.arg.assign(trimSpaces(line.substr(sp + 1)));
  if (auto r = parseArguments(cmd, utf8)) return std::move(*r);
  return cmd;
}

const Param* findParam(const Command& cmd, std::string_view key) {
  for (const Param& p : cmd.params)
    if (p.key == key) return &p;
  return nullptr;
}

std::optional<uint64_t> declaredSize(const Command& cmd) {
  const Param* p = findParam(cmd, "SIZE");
  if (!p) return std::nullopt;
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(p->value.data(), p->value.data() + p->value.size(), v);
  if (ec == std::errc::result_out_of_range) return std::numeric_limits<uint64_t>::max();
  if (ec != std::errc() || ptr != p->value.data() + p->value.size()) return std::nullopt;
  return v;
}

bool isValidMailbox(std::string_view mailbox, bool utf8) {
  if (mailbox.size() + 2 > kMaxPath) return false;
  size_t at = localPartEnd(mailbox);
  if (at == std::string_view::npos || at == 0 || at > kMaxLocalPart) return false;
  std::string_view local = mailbox.substr(0, at);
  std::string_view domain = mailbox.substr(at + 1);
  bool localOk = local.front() == '"' ? isQuotedString(local, utf8) : isDotString(local, utf8);
  return localOk && isValidDomain(domain, utf8);
}

std::string domainOf(std::string_view address) {
  size_t at = address.rfind('@');
  if (at == std::string_view::npos) return "";
  std::string d(address.substr(at + 1));
  for (char& c : d) c = toLower(c);
  return d;
}

bool isValidDomain(std::string_view domain, bool utf8) {
  if (!domain.empty() && domain.front() == '[') return isAddressLiteral(domain);
  if (domain.empty() || domain.size() > kMaxDomain) return false;
  size_t start = 0;
  while (true) {
    size_t dot = domain.find('.', start);
    std::string_view label = domain.substr(start, dot == std::string_view::npos ? domain.npos : dot - start);
    if (!isLabel(label, utf8)) return false;
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

bool isEnhancedCode(std::string_view word, char cls) {
  if (word.size() < 5 || (word[0] != '2' && word[0] != '4' && word[0] != '5') || (cls && word[0] != cls) ||
      word[1] != '.')
    return false;
  word.remove_prefix(2);
  for (int part = 0; part < 2; ++part) {
    size_t n = 0;
    while (n < word.size() && word[n] >= '0' && word[n] <= '9') ++n;
    if (n < 1 || n > 3 || (part == 0 && (n == word.size() || word[n] != '.'))) return false;
    word.remove_prefix(part == 0 ? n + 1 : n);
  }
  return word.empty();
}

std::string formatReply(int code, std::string_view enhanced, std::string_view text) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start <= text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) {
      if (start < text.size() || lines.empty()) lines.push_back(text.substr(start));
      break;
    }
    lines.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  std::string out;
  const std::string codeText = std::to_string(code);
  for (size_t i = 0; i < lines.size(); ++i) {
    std::string_view l = lines[i];
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    const bool last = i + 1 == lines.size();
    out += codeText;
    if (enhanced.empty() && l.empty()) {
      if (!last) out += '-';
      out += "\r\n";
      continue;
    }
    out += last ? ' ' : '-';
    out += enhanced;
    if (!enhanced.empty() && !l.empty()) out += ' ';
    for (char c : l) out += (static_cast<unsigned char>(c) < 32 || c == 127) ? '?' : c;
    out += "\r\n";
  }
  return out;
}

// ---- LineReader ----

LineReader::LineReader(size_t maxLine) : maxLine_(std::max<size_t>(maxLine, 3)) {}

void LineReader::setMaxLine(size_t maxLine) { maxLine_ = std::max<size_t>(maxLine, 3); }

void LineReader::allowLongerLines(std::string_view prefix, size_t maxLine) {
  longPrefix_ = prefix;
  longMaxLine_ = maxLine;
}

// A line too short yet to show its prefix is under maxLine_ anyway (the prefix is short).
size_t LineReader::limitFor(std::string_view line) const {
  if (longPrefix_.empty() || line.size() < longPrefix_.size() ||
      !iequalsAscii(line.substr(0, longPrefix_.size()), longPrefix_))
    return maxLine_;
  return std::max(maxLine_, longMaxLine_);
}

void LineReader::compact() {
  if (pos_ == 0) return;
  if (pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  } else if (pos_ >= buf_.size() / 2) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
}

void LineReader::feed(std::string_view data) {
  if (discarding_) {  // the rest of a line already reported as too long
    size_t lf = data.find('\n');
    if (lf == std::string_view::npos) return;
    discarding_ = false;
    data.remove_prefix(lf + 1);
  }
  compact();
  buf_.append(data);
}

LineReader::Status LineReader::next(std::string& line) {
  const size_t avail = buf_.size() - pos_;
  const char* base = buf_.data() + pos_;
  const size_t maxLine = limitFor(std::string_view(base, avail));
  const void* lfp = std::memchr(base + scanned_, '\n', avail - scanned_);
  if (lfp == nullptr) {
    scanned_ = avail;
    if (avail < maxLine) return Status::NeedMore;
    // Already maxLine octets and no line end: too long whatever comes; drop it as it arrives.
    buf_.clear();
    pos_ = scanned_ = 0;
    discarding_ = true;
    ++tooLong_;
    return Status::TooLong;
  }
  const size_t lf = static_cast<const char*>(lfp) - base;
  pos_ += lf + 1;
  scanned_ = 0;
  if (lf + 1 > maxLine) {
    ++tooLong_;
    return Status::TooLong;
  }
  size_t len = lf;
  if (len > 0 && base[len - 1] == '\r')
    --len;
  else
    ++bareLf_;
  line.assign(base, len);
  return Status::Line;
}

std::string LineReader::takeRemainder() {
  std::string rest = buf_.substr(pos_);
  buf_.clear();
  pos_ = scanned_ = 0;
  discarding_ = false;
  return rest;
}

}  // namespace moat::mta::smtp
