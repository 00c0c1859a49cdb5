// mta/client/reply.cc — see reply.h.
#include "mta/client/reply.h"

#include <algorithm>
#include <cctype>
#include <charconv>

#include "mta/smtp/protocol.h"

namespace moat::mta::client {

namespace {

std::string upper(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

bool digit(char c) { return std::isdigit(static_cast<unsigned char>(c)); }

}  // namespace

void ReplyReader::clear() {
  partial_.clear();
  lines_.clear();
}

std::optional<Reply> ReplyReader::feed(std::string_view& bytes) {
  while (error_.empty() && !bytes.empty()) {
    size_t nl = bytes.find('\n');
    size_t take = nl == std::string_view::npos ? bytes.size() : nl + 1;
    if (partial_.size() + take > kMaxReplyLine + 2) {
      error_ = "reply line too long";
      break;
    }
    partial_.append(bytes.substr(0, take));
    bytes.remove_prefix(take);
    if (nl == std::string_view::npos) break;
    std::string l;
    l.swap(partial_);
    l.pop_back();
    if (!l.empty() && l.back() == '\r') l.pop_back();
    if (auto r = line(l)) return r;
  }
  return std::nullopt;
}

std::optional<Reply> ReplyReader::line(std::string_view line) {
  // RFC 5321 §4.2: the first digit is 2 to 5. Anything else ("000", "177") is no reply this
  // client can act on, and code 0 would read as "no reply came".
  bool wellFormed = line.size() >= 3 && line[0] >= '2' && line[0] <= '5' && digit(line[1]) && digit(line[2]) &&
                    (line.size() == 3 || line[3] == ' ' || line[3] == '-');
  if (!wellFormed) {
    error_ = "malformed reply line: " + std::string(line.substr(0, 80));
    return std::nullopt;
  }
  if (!lines_.empty() && line.substr(0, 3) != std::string_view(lines_.front()).substr(0, 3)) {
    error_ = "reply code changed within a multi-line reply";
    return std::nullopt;
  }
  if (lines_.size() >= kMaxReplyLines) {
    error_ = "reply has too many lines";
    return std::nullopt;
  }
  lines_.emplace_back(line);
  if (line.size() > 3 && line[3] == '-') return std::nullopt;
  Reply r;
  r.code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
  for (auto& l : lines_) {
    if (!r.text.empty()) r.text += '\n';
    r.text += l;
  }
  lines_.clear();
  return r;
}

Extensions parseEhlo(const Reply& r) {
  Extensions ext;
  std::string_view rest(r.text);
  size_t nl = rest.find('\n');
  while (nl != std::string_view::npos) {
    rest.remove_prefix(nl + 1);
    nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    if (line.size() <= 4) continue;
    line.remove_prefix(4);
    size_t sp = line.find(' ');
    ext[upper(line.substr(0, sp))] = sp == std::string_view::npos ? "" : std::string(line.substr(sp + 1));
  }
  return ext;
}

uint64_t fixedMaxSize(const Extensions& ext) {
  auto it = ext.find("SIZE");
  if (it == ext.end()) return 0;
  const std::string& param = it->second;
  uint64_t limit = 0;
  auto [end, ec] = std::from_chars(param.data(), param.data() + param.size(), limit);
  // "SIZE" alone or "SIZE 0": no fixed maximum (RFC 1870 §4); anything else odd: none known.
  if (ec != std::errc() || end != param.data() + param.size()) return 0;
  return limit;
}

std::vector<std::string> authMechanisms(const Extensions& ext) {
  std::vector<std::string> out;
  auto add = [&out](std::string_view list) {
    while (!list.empty()) {
      size_t sp = list.find(' ');
      if (sp != 0) out.push_back(upper(list.substr(0, sp)));
      list = sp == std::string_view::npos ? std::string_view() : list.substr(sp + 1);
    }
  };
  for (const auto& [key, value] : ext) {
    if (key == "AUTH") add(value);
    if (key.rfind("AUTH=", 0) == 0) {
      add(std::string_view(key).substr(5));
      add(value);
    }
  }
  return out;
}

std::string replyStatus(std::string_view reply) {
  bool coded = reply.size() >= 3 && digit(reply[0]) && digit(reply[1]) && digit(reply[2]) &&
               (reply.size() == 3 || reply[3] == ' ' || reply[3] == '-');
  std::string_view word = reply.substr(coded ? std::min<size_t>(4, reply.size()) : 0);
  word = word.substr(0, word.find(' '));
  // A code the reply's class does not have ("550 4.1.1") or that is not one ("550 5.1.x")
  // would put a status in the DSN that contradicts the action or breaks its syntax.
  if (smtp::isEnhancedCode(word, coded ? reply[0] : 0)) return std::string(word);
  if (!reply.empty() && (reply[0] == '5' || reply[0] == '4' || reply[0] == '2'))
    return std::string(1, reply[0]) + ".0.0";
  return "4.0.0";
}

}  // namespace moat::mta::client
