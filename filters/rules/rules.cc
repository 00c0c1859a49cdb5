// filters/rules/rules.cc — compiling a rule set (RE2, PCRE2 fallback, RE2::Set per kind)
// and evaluating it on one message (see rules.h). Untrusted input: the message; matching
// is linear-time in RE2, and PCRE2 runs under a match and depth limit. Logs nothing.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include "filters/rules/rules_impl.h"

namespace moat::filters::rules {

namespace {
constexpr uint32_t kPcre2MatchLimit = 100000;
constexpr uint32_t kPcre2DepthLimit = 1000;
}  // namespace

RE2::Options re2Options() {
  RE2::Options o;
  o.set_log_errors(false);
  o.set_max_mem(8 << 20);
  // Bytes, as Perl matches SpamAssassin rules: \xc3\xaf in a rule is two bytes of UTF-8.
  o.set_encoding(RE2::Options::EncodingLatin1);
  return o;
}

// True when the pattern names a code point over 0xFF with \x{...}.
static bool needsUtf(std::string_view p) {
  for (size_t i = 0; i + 3 < p.size(); ++i) {
    if (p[i] == '\\' && p[i + 1] == '\\') {
      ++i;
      continue;
    }
    if (p[i] != '\\' || p[i + 1] != 'x' || p[i + 2] != '{') continue;
    size_t end = p.find('}', i + 3);
    if (end == std::string_view::npos) return false;
    unsigned long v = 0;
    for (size_t k = i + 3; k < end; ++k) {
      char c = p[k];
      int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
      if (d < 0 || v > 0x10FFFF) return false;
      v = v * 16 + static_cast<unsigned long>(d);
    }
    if (v > 0xFF) return true;
  }
  return false;
}

std::unique_ptr<Pcre2Regex> Pcre2Regex::compile(const PerlRegex& regex, std::string& error) {
  uint32_t opts = 0;
  for (char f : regex.flags) {
    if (f == 'i') opts |= PCRE2_CASELESS;
    if (f == 'm') opts |= PCRE2_MULTILINE;
    if (f == 's') opts |= PCRE2_DOTALL;
    if (f == 'x') opts |= PCRE2_EXTENDED;
  }
  // A code point over 255 (\x{0456}) exists only in UTF mode: the pattern then matches
  // UTF-8 as characters, and PCRE2_MATCH_INVALID_UTF keeps a subject that is not valid
  // UTF-8 (raw headers, raw bodies) safe to match rather than undefined.
  if (needsUtf(regex.pattern)) opts |= PCRE2_UTF | PCRE2_MATCH_INVALID_UTF;
  int code = 0;
  PCRE2_SIZE offset = 0;
  std::unique_ptr<Pcre2Regex> re(new Pcre2Regex());
  re->code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(regex.pattern.data()), regex.pattern.size(), opts, &code,
                            &offset, nullptr);
  if (!re->code_) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(code, buf, sizeof buf);
    error = "PCRE2: " + std::string(reinterpret_cast<char*>(buf)) + " at offset " + std::to_string(offset);
    return nullptr;
  }
  pcre2_jit_compile(re->code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
  re->mctx_ = pcre2_match_context_create(nullptr);
  pcre2_set_match_limit(re->mctx_, kPcre2MatchLimit);
  pcre2_set_depth_limit(re->mctx_, kPcre2DepthLimit);
  return re;
}

bool Pcre2Regex::match(std::string_view text) const {
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
  if (!md) return false;
  int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0, 0, md, mctx_);
  pcre2_match_data_free(md);
  return rc >= 0;  // a hit limit counts as no match: the rule simply does not fire
}

Pcre2Regex::~Pcre2Regex() {
  if (mctx_) pcre2_match_context_free(mctx_);
  if (code_) pcre2_code_free(code_);
}

std::string Stats::str() const {
  std::ostringstream o;
  o << "rules: " << (re2 + pcre2 + meta) << " loaded (re2 " << re2 << ", pcre2 " << pcre2 << ", meta " << meta
    << "), " << skipped << " skipped";
  if (!skipReasons.empty()) {
    o << " (";
    bool first = true;
    for (const auto& [reason, n] : skipReasons) {
      o << (first ? "" : ", ") << reason << " " << n;
      first = false;
    }
    o << ")";
  }
  o << ", " << ignoredDirectives << " directives ignored, " << ifSkippedLines << " lines in false if-blocks";
  return o.str();
}

namespace {

class Compiler {
 public:
  Compiler(RuleSet::Impl& impl, const Options& options, policy::Errors& errors)
      : impl_(impl), options_(options), errors_(errors) {}

  void run(ParsedRules& parsed) {
    impl_.stats = parsed.stats;
    impl_.descriptions = parsed.descriptions;
    for (auto& def : parsed.defs) add(std::move(def), parsed.scores);
    checkMetaNames();
    orderMetas();
    buildSet(impl_.body, Kind::Body);
    buildSet(impl_.rawbody, Kind::Rawbody);
    buildSet(impl_.uri, Kind::Uri);
    buildSet(impl_.full, Kind::Full);
  }

 private:
  void skip(const RuleDef& def, const std::string& reason, const std::string& detail) {
    ++impl_.stats.skipped;
    ++impl_.stats.skipReasons[reason];
    skippedNames_.insert(def.name);
    errors_.warning(def.file, def.line, def.name + ": rule skipped: " + detail);
  }

  void add(RuleDef def, const std::map<std::string, std::vector<double>>& scores) {
    Rule rule;
    if (!def.unsupported.empty()) {
      // eval: tests are SpamAssassin Perl code: counted, not warned one by one.
      if (def.unsupported == "eval") {
        ++impl_.stats.skipped;
        ++impl_.stats.skipReasons["eval"];
        skippedNames_.insert(def.name);
      } else {
        skip(def, def.unsupported, def.unsupported + " is not supported");
      }
      return;
    }
    if (def.kind == Kind::Meta) {
      std::string err;
      rule.meta = Expr::parse(def.metaText, err);
      if (!rule.meta) return;  // already reported by the reader
      ++impl_.stats.meta;
    } else if (!def.exists && !compileRegex(def, rule)) {
      return;
    }
    setScore(def.name, rule, scores);
    rule.def = std::move(def);
    size_t index = impl_.rules.size();
    impl_.byName[rule.def.name] = index;
    if (rule.def.kind == Kind::Header) impl_.headerRules.push_back(index);
    if (rule.def.kind == Kind::Meta) impl_.metaRules.push_back(index);
    impl_.rules.push_back(std::move(rule));
  }

  bool compileRegex(const RuleDef& def, Rule& rule) {
    if (def.regex.pattern.empty() && def.regex.consumed == 0) return false;  // a syntax error, reported
    Translation t = toRe2(def.regex);
    std::string reason = t.reason, detail;
    if (reason.empty()) {
      rule.re2 = std::make_unique<RE2>(t.re2, re2Options());
      if (rule.re2->ok()) {
        ++impl_.stats.re2;
        return true;
      }
      reason = "RE2 compile error";
      detail = "RE2 cannot compile /" + def.regex.pattern + "/: " + rule.re2->error();
      rule.re2.reset();
    } else {
      detail = "RE2 cannot run /" + def.regex.pattern + "/ (" + reason + ")";
    }
    if (options_.pcre2Fallback) {
      std::string err;
      rule.pcre = Pcre2Regex::compile(def.regex, err);
      if (rule.pcre) {
        ++impl_.stats.pcre2;
        return true;
      }
      detail += "; " + err;
    }
    skip(def, reason, detail);
    return false;
  }

  static void setScore(const std::string& name, Rule& rule, const std::map<std::string, std::vector<double>>& scores) {
    auto it = scores.find(name);
    if (it != scores.end()) {
      rule.score = it->second.front();  // score set 0: no Bayes, no network tests
    } else if (name.rfind("T_", 0) == 0) {
      rule.score = 0.01;
    } else if (name.rfind("__", 0) == 0) {
      rule.score = 0;
    }
    rule.reported = name.rfind("__", 0) != 0 && rule.score != 0;
  }

  // A meta using a name no rule defines evaluates it as 0; say so once per meta.
  void checkMetaNames() {
    for (size_t i : impl_.metaRules) {
      const Rule& r = impl_.rules[i];
      std::vector<std::string> names;
      r.meta->names(names);
      for (const auto& n : names) {
        if (!impl_.byName.count(n) && !skippedNames_.count(n))
          errors_.warning(r.def.file, r.def.line, r.def.name + ": meta uses unknown rule " + n + " (counts as 0)");
      }
    }
  }

  // Depth-first, without recursion (a chain of 100,000 metas must not exhaust the stack):
  // post-order is the evaluation order. A meta reached again while it is still open closes
  // a cycle: a warning at the meta that uses it, and it counts as 0 there, as at run time
  // before.
  void orderMetas() {
    std::vector<char> state(impl_.rules.size(), 0);  // 0 new, 1 open, 2 done
    std::vector<std::vector<size_t>> uses(impl_.rules.size());
    for (size_t i : impl_.metaRules) {
      std::vector<std::string> names;
      impl_.rules[i].meta->names(names);
      for (const auto& n : names) {
        auto it = impl_.byName.find(n);
        if (it != impl_.byName.end() && impl_.rules[it->second].def.kind == Kind::Meta) uses[i].push_back(it->second);
      }
    }
    struct Frame {
      size_t rule, next;
    };
    std::vector<Frame> stack;
    for (size_t root : impl_.metaRules) {
      if (state[root]) continue;
      state[root] = 1;
      stack.push_back({root, 0});
      while (!stack.empty()) {
        Frame& f = stack.back();
        if (f.next < uses[f.rule].size()) {
          size_t dep = uses[f.rule][f.next++];
          if (state[dep] == 0) {
            state[dep] = 1;
            stack.push_back({dep, 0});
          } else if (state[dep] == 1) {
            const Rule& r = impl_.rules[f.rule];
            errors_.warning(
                r.def.file, r.def.line,
                r.def.name + ": meta dependency cycle through " + impl_.rules[dep].def.name + " (counts as 0 here)");
          }
          continue;
        }
        state[f.rule] = 2;
        impl_.metaOrder.push_back(f.rule);
        stack.pop_back();
      }
    }
  }

  void buildSet(KindSet& ks, Kind kind) {
    auto set = std::make_unique<RE2::Set>(setOptions(), RE2::UNANCHORED);
    std::vector<size_t> inSet;
    for (size_t i = 0; i < impl_.rules.size(); ++i) {
      const Rule& r = impl_.rules[i];
      if (r.def.kind != kind) continue;
      if (r.re2 && set->Add(r.re2->pattern(), nullptr) >= 0) {
        inSet.push_back(i);
      } else {
        ks.single.push_back(i);
      }
    }
    if (inSet.empty()) return;
    if (set->Compile()) {
      ks.set = std::move(set);
      ks.setRules = std::move(inSet);
    } else {
      ks.single.insert(ks.single.end(), inSet.begin(), inSet.end());  // too big for one Set
    }
  }

  static RE2::Options setOptions() {
    RE2::Options o = re2Options();
    o.set_max_mem(256 << 20);
    return o;
  }

  RuleSet::Impl& impl_;
  const Options& options_;
  policy::Errors& errors_;
  std::set<std::string> skippedNames_;
};

// Runs one kind over a list of texts; marks hits.
void runKind(const RuleSet::Impl& impl, const KindSet& ks, const std::vector<std::string_view>& texts,
             std::vector<char>& hit) {
  std::vector<int> matched;
  for (auto text : texts) {
    if (ks.set) {
      matched.clear();
      RE2::Set::ErrorInfo info;
      if (ks.set->Match(text, &matched, &info)) {
        for (int m : matched) hit[ks.setRules[static_cast<size_t>(m)]] = 1;
      } else if (info.kind != RE2::Set::kNoError) {
        // The Set's DFA ran out of memory on this text: match its rules one by one.
        for (size_t i : ks.setRules)
          if (!hit[i] && impl.rules[i].match(text)) hit[i] = 1;
      }
    }
    for (size_t i : ks.single)
      if (!hit[i] && impl.rules[i].match(text)) hit[i] = 1;
  }
}

std::string trimmed(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return std::string(s);
}

// The address of a header value: inside <...>, else the first word with an '@'.
std::string addrOf(std::string_view v) {
  size_t lt = v.find('<');
  if (lt != std::string_view::npos) {
    size_t gt = v.find('>', lt);
    return std::string(v.substr(lt + 1, (gt == std::string_view::npos ? v.size() : gt) - lt - 1));
  }
  size_t paren = v.find('(');
  std::string s = trimmed(v.substr(0, paren));
  size_t comma = s.find(',');
  return trimmed(s.substr(0, comma));
}

// The display name: before <...> (unquoted), or a trailing (comment).
std::string nameOf(std::string_view v) {
  size_t lt = v.find('<');
  if (lt != std::string_view::npos) {
    std::string n = trimmed(v.substr(0, lt));
    if (n.size() >= 2 && n.front() == '"' && n.back() == '"') n = n.substr(1, n.size() - 2);
    return n;
  }
  size_t open = v.find('('), close = v.rfind(')');
  if (open != std::string_view::npos && close != std::string_view::npos && close > open)
    return std::string(v.substr(open + 1, close - open - 1));
  return "";
}

struct HeaderLookup {
  bool found = false;
  std::string value;
};

HeaderLookup headerValue(const Rule& r, const Input& in) {
  const auto& headers = in.mime->root.headers;
  HeaderLookup out;
  const std::string& name = r.def.header;
  bool raw = r.def.raw;
  auto valueOf = [&](const mime::HeaderField& h) -> std::string {
    const std::string& v = raw ? h.raw : h.decoded;
    if (r.def.mode == HeaderMode::Addr) return addrOf(v);
    if (r.def.mode == HeaderMode::Name) return nameOf(v);
    return v;
  };
  if (name == "ALL") {
    for (const auto& h : headers) out.value += h.name + ": " + (raw ? h.raw : h.decoded) + "\n";
    out.found = !headers.empty();
    return out;
  }
  if (name == "EnvelopeFrom") {
    out.value = in.envelopeFrom;
    out.found = !in.envelopeFrom.empty();
    return out;
  }
  // Pseudo-headers: ToCc is To and Cc; MESSAGEID is every message-id header there is.
  auto wanted = [&](const std::string& n) {
    if (name == "ToCc") return mime::iequals(n, "To") || mime::iequals(n, "Cc");
    if (name == "MESSAGEID")
      return mime::iequals(n, "Message-Id") || mime::iequals(n, "Resent-Message-Id") ||
             mime::iequals(n, "X-Message-Id") || mime::iequals(n, "X-Original-Message-ID");
    return mime::iequals(n, name);
  };
  for (const auto& h : headers) {
    bool match = wanted(h.name);
    if (!match) continue;
    if (out.found) out.value += "\n";
    out.value += valueOf(h);
    out.found = true;
    // :addr and :name use the first header only, as SpamAssassin does.
    if (r.def.mode == HeaderMode::Addr || r.def.mode == HeaderMode::Name) break;
  }
  return out;
}

bool headerHit(const Rule& r, const Input& in) {
  HeaderLookup h = headerValue(r, in);
  if (r.def.exists) return h.found;
  std::string value = h.found ? h.value : (r.def.hasIfUnset ? r.def.ifUnset : "");
  bool m = r.match(value);
  return r.def.negate ? !m : m;
}

// SpamAssassin's rendered body: the Subject first, then the text; one string per
// paragraph, line breaks inside a paragraph turned into spaces.
std::vector<std::string> paragraphs(const Input& in) {
  std::vector<std::string> out;
  std::string subject = in.mime->header("Subject");
  out.push_back(subject);
  std::string cur;
  auto flush = [&] {
    std::string t = trimmed(cur);
    if (!t.empty()) out.push_back(std::move(t));
    cur.clear();
  };
  std::string_view text = in.mime->bodyText;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    std::string_view line = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (trimmed(line).empty()) {
      flush();
    } else {
      if (!cur.empty()) cur += ' ';
      cur.append(line);
    }
    if (nl == std::string_view::npos) break;
    pos = nl + 1;
  }
  flush();
  return out;
}

void rawTexts(const mime::Part& p, std::vector<std::string_view>& out) {
  for (const auto& c : p.children) rawTexts(c, out);
  if (p.children.empty() && p.isText()) out.push_back(p.text);
}

}  // namespace

RuleSet::RuleSet() : impl_(std::make_unique<Impl>()) {}
RuleSet::~RuleSet() = default;

std::shared_ptr<const RuleSet> RuleSet::fromText(std::string_view text, const std::string& file,
                                                 const Options& options, policy::Errors& errors) {
  ParsedRules parsed;
  parseRuleText(text, file, parsed, errors);
  auto rs = std::make_shared<RuleSet>();
  Compiler(*rs->impl_, options, errors).run(parsed);
  return rs;
}

std::shared_ptr<const RuleSet> RuleSet::load(const std::vector<std::string>& files, const Options& options,
                                             policy::Errors& errors) {
  ParsedRules parsed;
  bool ok = true;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) {
      errors.error(f, 0, "cannot read rule file");
      ok = false;
      continue;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    parseRuleText(ss.str(), f, parsed, errors);
  }
  if (!ok) return nullptr;
  auto rs = std::make_shared<RuleSet>();
  Compiler(*rs->impl_, options, errors).run(parsed);
  return rs;
}

Evaluation RuleSet::evaluate(const Input& in) const {
  const Impl& impl = *impl_;
  std::vector<char> hit(impl.rules.size(), 0);
  for (size_t i : impl.headerRules) hit[i] = headerHit(impl.rules[i], in) ? 1 : 0;

  auto paras = paragraphs(in);
  std::vector<std::string_view> views(paras.begin(), paras.end());
  runKind(impl, impl.body, views, hit);
  std::vector<std::string_view> raws;
  rawTexts(in.mime->root, raws);
  runKind(impl, impl.rawbody, raws, hit);
  std::vector<std::string_view> uris(in.mime->uris.begin(), in.mime->uris.end());
  runKind(impl, impl.uri, uris, hit);
  runKind(impl, impl.full, {in.raw}, hit);

  // Metas in dependency order (metaOrder): a meta not evaluated yet when another uses it
  // is in a cycle with it and counts as 0.
  std::vector<char> done(impl.rules.size(), 0);
  std::function<double(const std::string&)> resolve = [&](const std::string& name) -> double {
    auto it = impl.byName.find(name);
    if (it == impl.byName.end()) return 0;
    size_t i = it->second;
    if (impl.rules[i].def.kind == Kind::Meta && !done[i]) return 0;
    return hit[i];
  };
  for (size_t i : impl.metaOrder) {
    hit[i] = impl.rules[i].meta->eval(resolve) != 0 ? 1 : 0;
    done[i] = 1;
  }

  Evaluation ev;
  for (size_t i = 0; i < impl.rules.size(); ++i) {
    if (!hit[i] || !impl.rules[i].reported) continue;
    ev.score += impl.rules[i].score;
    ev.hits.push_back(impl.rules[i].def.name);
  }
  std::sort(ev.hits.begin(), ev.hits.end());
  ev.score = std::round(ev.score * 1000) / 1000;
  return ev;
}

const Stats& RuleSet::stats() const { return impl_->stats; }
size_t RuleSet::ruleCount() const { return impl_->rules.size(); }

double RuleSet::scoreOf(const std::string& name) const {
  auto it = impl_->byName.find(name);
  return it == impl_->byName.end() ? 0 : impl_->rules[it->second].score;
}

std::string RuleSet::describe(const std::string& name) const {
  auto it = impl_->descriptions.find(name);
  return it == impl_->descriptions.end() ? "" : it->second;
}

}  // namespace moat::filters::rules
