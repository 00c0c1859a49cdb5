// filters/rules/rules_parse.cc — the reader of SpamAssassin rule files (syntax in rules.h).
// Input: operator-written rule files; every mistake is reported as FILE:LINE and the rest
// of the file is still read, so `moat check` shows every problem at once. Logs nothing.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <regex>

#include "filters/rules/rules_impl.h"

namespace moat::filters::rules {
namespace {

// Far above any real rule's score (SpamAssassin's own go to 100), and small enough that
// the sum over any number of rules stays finite.
constexpr double kMaxScore = 1000;

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Splits off the first blank-separated word.
std::string_view word(std::string_view& s) {
  s = trim(s);
  size_t end = 0;
  while (end < s.size() && !std::isspace(static_cast<unsigned char>(s[end]))) ++end;
  std::string_view w = s.substr(0, end);
  s = trim(s.substr(end));
  return w;
}

bool validName(std::string_view n) {
  return !n.empty() && std::all_of(n.begin(), n.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
}

// SpamAssassin drops everything from an unescaped '#' and turns "\#" into "#".
std::string stripComment(std::string_view line) {
  std::string out;
  for (size_t i = 0; i < line.size(); ++i) {
    if (line[i] == '\\' && i + 1 < line.size() && line[i + 1] == '#') {
      out += '#';
      ++i;
    } else if (line[i] == '#') {
      break;
    } else {
      out += line[i];
    }
  }
  return out;
}

// `if` conditions: version is 4.000000 (the SpamAssassin rule syntax Moat follows);
// can(...) and plugin(...) name Perl features and plugins Moat does not have.
bool evalIf(std::string_view cond, std::string& error) {
  std::string text(cond);
  static const std::regex kCalls(R"((can|plugin|has)\s*\([^)]*\))");
  text = std::regex_replace(text, kCalls, "0");
  auto expr = Expr::parse(text, error);
  if (!expr) return false;
  return expr->eval([](const std::string& name) { return name == "version" ? 4.0 : name == "perl_version" ? 5.036 : 0.0; }) != 0;
}

class Reader {
 public:
  Reader(const std::string& file, ParsedRules& out, policy::Errors& errors) : file_(file), out_(out), errors_(errors) {}

  void line(std::string_view raw, int lineNo) {
    line_ = lineNo;
    std::string text = stripComment(raw);
    std::string_view rest = trim(text);
    if (rest.empty()) return;
    std::string directive = lower(word(rest));
    if (conditional(directive, rest)) return;
    if (skipping()) {
      ++out_.stats.ifSkippedLines;
      return;
    }
    if (directive == "header") return regexRule(Kind::Header, rest);
    if (directive == "body") return regexRule(Kind::Body, rest);
    if (directive == "rawbody") return regexRule(Kind::Rawbody, rest);
    if (directive == "uri") return regexRule(Kind::Uri, rest);
    if (directive == "full") return regexRule(Kind::Full, rest);
    if (directive == "meta") return meta(rest);
    if (directive == "score") return score(rest);
    if (directive == "describe") return describe(rest);
    if (directive == "tflags" || directive == "lang") return ignore(directive);
    ignore(directive);
  }

  void finish() {
    if (!conds_.empty()) error(condLine_, "if/ifplugin without endif");
  }

 private:
  static std::string lower(std::string_view s) {
    std::string o(s);
    for (auto& c : o) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return o;
  }

  bool skipping() const { return std::any_of(conds_.begin(), conds_.end(), [](bool b) { return !b; }); }

  bool conditional(const std::string& directive, std::string_view rest) {
    if (directive == "ifplugin") {
      push(false);
    } else if (directive == "if") {
      std::string err;
      bool value = evalIf(rest, err);
      if (!err.empty() && !skipping()) error(line_, "if: " + err);
      push(value);
    } else if (directive == "else") {
      if (conds_.empty()) error(line_, "else without if");
      else conds_.back() = !conds_.back();
    } else if (directive == "endif") {
      if (conds_.empty()) error(line_, "endif without if");
      else conds_.pop_back();
    } else {
      return false;
    }
    return true;
  }

  void push(bool v) {
    if (conds_.empty()) condLine_ = line_;
    conds_.push_back(v);
  }

  void ignore(const std::string& directive) {
    ++out_.stats.ignoredDirectives;
    ++out_.stats.ignoredByDirective[directive];
  }

  void error(int line, const std::string& msg) { errors_.error(file_, line, msg); }

  RuleDef* define(std::string_view name, Kind kind) {
    if (!validName(name)) {
      error(line_, "bad rule name \"" + std::string(name) + "\"");
      return nullptr;
    }
    RuleDef def;
    def.name = std::string(name);
    def.kind = kind;
    def.file = file_;
    def.line = line_;
    // By name, not a scan of every rule so far: a file of 100,000 rules loads in linear time.
    auto [it, added] = out_.defIndex.emplace(def.name, out_.defs.size());
    if (!added) return &(out_.defs[it->second] = std::move(def));
    out_.defs.push_back(std::move(def));
    return &out_.defs.back();
  }

  void regexRule(Kind kind, std::string_view rest) {
    std::string_view name = word(rest);
    if (rest.empty()) return error(line_, "rule " + std::string(name) + " has no pattern");
    RuleDef* d = define(name, kind);
    if (!d) return;
    if (rest.rfind("eval:", 0) == 0 || rest.rfind("rbleval:", 0) == 0) {
      d->unsupported = "eval";
      return;
    }
    if (kind == Kind::Header) return headerRule(*d, rest);
    std::string err = readPerlRegex(rest, d->regex);
    if (err.empty() && !trim(rest.substr(d->regex.consumed)).empty()) err = "unexpected text after the pattern";
    if (!err.empty()) error(line_, d->name + ": " + err);
  }

  void headerRule(RuleDef& d, std::string_view rest) {
    if (rest.rfind("exists:", 0) == 0) {
      d.exists = true;
      d.header = std::string(trim(rest.substr(7)));
      if (!validHeaderName(d.header)) error(line_, d.name + ": bad header name");
      return;
    }
    std::string_view target = word(rest);
    size_t colon = target.find(':');
    d.header = std::string(target.substr(0, colon));
    // Modifiers chain, as in From:name:raw.
    for (size_t at = colon; at != std::string_view::npos;) {
      size_t next = target.find(':', at + 1);
      std::string mod = lower(target.substr(at + 1, next == std::string_view::npos ? next : next - at - 1));
      if (mod == "raw") d.raw = true;
      else if (mod == "addr") d.mode = HeaderMode::Addr;
      else if (mod == "name") d.mode = HeaderMode::Name;
      else d.unsupported = "header modifier :" + mod;
      at = next;
    }
    if (!validHeaderName(d.header)) return error(line_, d.name + ": bad header name");
    std::string_view op = word(rest);
    if (op != "=~" && op != "!~") return error(line_, d.name + ": expected =~ or !~ after the header name");
    d.negate = op == "!~";
    std::string err = readPerlRegex(rest, d.regex);
    if (!err.empty()) return error(line_, d.name + ": " + err);
    std::string_view tail = trim(rest.substr(d.regex.consumed));
    if (tail.rfind("[if-unset:", 0) == 0 && tail.back() == ']') {
      d.hasIfUnset = true;
      d.ifUnset = std::string(trim(tail.substr(10, tail.size() - 11)));
    } else if (!tail.empty()) {
      error(line_, d.name + ": unexpected text after the pattern");
    }
  }

  static bool validHeaderName(const std::string& h) {
    return !h.empty() && std::all_of(h.begin(), h.end(), [](char c) { return c > ' ' && c < 127 && c != ':'; });
  }

  void meta(std::string_view rest) {
    std::string_view name = word(rest);
    RuleDef* d = define(name, Kind::Meta);
    if (!d) return;
    d->metaText = std::string(rest);
    std::string err;
    if (!Expr::parse(rest, err)) error(line_, d->name + ": bad meta expression: " + err);
  }

  void score(std::string_view rest) {
    std::string_view name = word(rest);
    if (!validName(name)) return error(line_, "score: bad rule name \"" + std::string(name) + "\"");
    std::vector<double> values;
    while (!rest.empty()) {
      std::string w(word(rest));
      if (w.size() > 2 && w.front() == '(' && w.back() == ')') w = w.substr(1, w.size() - 2);
      char* end = nullptr;
      double v = std::strtod(w.c_str(), &end);
      // strtod also reads "nan" and "inf": a NaN score makes every threshold comparison
      // false (a message over `reject` delivered), an infinite one a NaN sum.
      if (w.empty() || *end != '\0' || !std::isfinite(v))
        return error(line_, "score " + std::string(name) + ": \"" + w + "\" is not a number");
      if (std::fabs(v) > kMaxScore)
        return error(line_, "score " + std::string(name) + ": " + w + " is out of range (-1000 to 1000)");
      values.push_back(v);
    }
    if (values.size() != 1 && values.size() != 4) return error(line_, "score " + std::string(name) + ": expected 1 or 4 numbers");
    out_.scores[std::string(name)] = values;
  }

  void describe(std::string_view rest) {
    std::string_view name = word(rest);
    out_.descriptions[std::string(name)] = std::string(rest);
  }

  std::string file_;
  ParsedRules& out_;
  policy::Errors& errors_;
  int line_ = 0;
  int condLine_ = 0;
  std::vector<bool> conds_;
};

}  // namespace

void parseRuleText(std::string_view text, const std::string& file, ParsedRules& out, policy::Errors& errors) {
  Reader reader(file, out, errors);
  int lineNo = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    std::string_view line = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    reader.line(line, ++lineNo);
    if (nl == std::string_view::npos) break;
    pos = nl + 1;
  }
  reader.finish();
}

}  // namespace moat::filters::rules
