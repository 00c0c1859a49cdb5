// filters/rules/rules_filter.cc — see rules_filter.h.
#include "filters/rules/rules_filter.h"

#include <cstdio>


namespace moat::filters::rules {

FilterConfig readConfig(const policy::Config& config, policy::Errors& errors) {
  FilterConfig fc;
  auto s = config.section("rules", errors);
  fc.files = s.getPathArray("files");
  fc.tag = s.getDouble("tag", 5.0);
  fc.quarantine = s.getDouble("quarantine", 10.0);
  fc.reject = s.getDouble("reject", 15.0);
  fc.pcre2Fallback = s.getEnum("fallback", "none", {"none", "pcre2"}) == "pcre2";
  fc.subjectPrefix = s.getString("subject_prefix", "");
  // The prefix becomes header bytes: a line break in it would forge a header.
  if (fc.subjectPrefix.find_first_of("\r\n") != std::string::npos) s.error("subject_prefix", "must be one line");
  if (fc.tag > fc.quarantine) s.error("quarantine", "must be at least tag");
  if (fc.quarantine > fc.reject) s.error("reject", "must be at least quarantine");
  s.rejectUnknownKeys();
  // A rule file that cannot be read is reported where the config names it.
  bool readable = true;
  for (const auto& f : fc.files) readable = s.readable("files", f) && readable;
  if (!fc.files.empty() && readable) fc.rules = RuleSet::load(fc.files, Options{fc.pcre2Fallback}, errors);
  return fc;
}

std::string formatScore(double score) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", score);
  return buf;
}

namespace {

bool isBlank(char c) { return c == ' ' || c == '\t'; }

// The first top-level header field with this name, with offsets, or nullptr.
const mime::HeaderField* topHeader(const mime::Message& msg, std::string_view name) {
  for (const auto& h : msg.root.headers)
    if (mime::iequals(h.name, name)) return &h;
  return nullptr;
}

}  // namespace

std::optional<Edit> subjectPrefixEdit(const mime::Message& msg, std::string_view raw, const std::string& prefix) {
  if (prefix.empty() || !msg.root.hasOffsets()) return std::nullopt;
  const mime::HeaderField* subject = topHeader(msg, "Subject");
  std::string why = "Subject prefix " + prefix;
  if (!subject) {
    // No Subject: one goes at the end of the header block, where the signer sees it too.
    uint64_t at = msg.root.headerEnd;
    if (at > raw.size()) return std::nullopt;
    bool noHeaderBlock = msg.root.headers.empty() && msg.root.bodyOffset == 0;  // all body
    return Edit{at, 0, "Subject: " + prefix + "\r\n" + (noHeaderBlock ? "\r\n" : ""), why};
  }
  if (subject->valueOffset == mime::kNoOffset || subject->endOffset > raw.size()) return std::nullopt;
  // Already marked (a second pass, or a sender's own tag): once is enough.
  if (subject->raw.rfind(prefix, 0) == 0) return std::nullopt;
  // Insert before the first character of the value on the field's first line: the fold
  // structure after it is untouched (RFC 5322 2.2.3).
  uint64_t at = subject->valueOffset;
  while (at < subject->endOffset && isBlank(raw[at])) ++at;
  bool lineEnds = at >= subject->endOffset || raw[at] == '\r' || raw[at] == '\n';
  std::string text = (at == subject->valueOffset ? " " : "") + prefix;
  if (!lineEnds) text += " ";
  else if (!subject->raw.empty()) text += " ";  // the value continues on a folded line
  return Edit{at, 0, std::move(text), why};
}

Result resultFor(const Evaluation& ev, const FilterConfig& config, const std::string& subject) {
  std::string s = formatScore(ev.score);
  std::string tests;
  for (const auto& h : ev.hits) tests += (tests.empty() ? "" : ",") + h;
  bool spam = ev.score >= config.tag;
  Result r;
  if (ev.score >= config.reject) {
    r = Result::reject(550, "5.7.1", "Message rejected as spam (score " + s + ")", "reject");
  } else if (ev.score >= config.quarantine) {
    r = Result::quarantine("spam score " + s + " >= " + formatScore(config.quarantine), "quarantine");
  } else if (spam) {
    r.verdict = Verdict::Tag;
  }
  r.summary = "score=" + s;
  r.score = ev.score;
  r.headers.push_back({"X-Spam-Score", s});
  r.headers.push_back({"X-Spam-Status", std::string(spam ? "Yes" : "No") + ", score=" + s +
                                            " required=" + formatScore(config.tag) + " tests=" + (tests.empty() ? "none" : tests)});
  r.detail.add("score", ev.score);
  r.detail.add("tests", ev.hits);
  return r;
}

namespace {

class RulesFilter final : public Filter {
 public:
  explicit RulesFilter(FilterConfig config) : config_(std::make_shared<const FilterConfig>(std::move(config))) {}
  std::string_view name() const override { return "rules"; }
  Stage stage() const override { return Stage::Data; }
  mime::Depth mimeDepth() const override { return mime::Depth::Text; }

  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override {
    struct Work {
      Evaluation ev;
      std::string subject;
      std::optional<Edit> prefix;
    };
    auto work = std::make_shared<Work>();
    auto config = config_;
    auto mimeTree = ctx->mime;
    std::string_view raw = ctx->message;  // valid for the Data stage
    std::string envFrom = ctx->mailFrom;
    env.offload(
        [work, config, mimeTree, raw, envFrom] {
          // Without the MIME filter in front, parse here with the default limits.
          auto tree = mimeTree ? mimeTree : mime::parse(raw, mime::Limits{});
          Input in{tree.get(), raw, envFrom};
          work->ev = config->rules->evaluate(in);
          work->subject = tree->header("Subject");
          // Tag and quarantine (not reject): the recipient or the admin who releases it
          // sees the mark in the Subject.
          if (work->ev.score >= config->tag && work->ev.score < config->reject)
            work->prefix = subjectPrefixEdit(*tree, raw, config->subjectPrefix);
        },
        [ctx, work, config, done = std::move(done)] {
          ctx->spamScore += work->ev.score;
          Result r = resultFor(work->ev, *config, work->subject);
          if (work->prefix) {
            r.detail.add("subject_prefix", true);
            r.edits.push_back(std::move(*work->prefix));
          }
          done(std::move(r));
        },
        raw.size());
  }

 private:
  std::shared_ptr<const FilterConfig> config_;
};

}  // namespace

std::shared_ptr<const Filter> makeRulesFilter(const policy::Config& config, policy::Errors& errors) {
  FilterConfig fc = readConfig(config, errors);
  if (!fc.rules) return nullptr;
  return std::make_shared<RulesFilter>(std::move(fc));
}

std::string checkReport(const policy::Config& config, policy::Errors& errors) {
  FilterConfig fc = readConfig(config, errors);
  return fc.rules ? fc.rules->stats().str() : "";
}

}  // namespace moat::filters::rules
