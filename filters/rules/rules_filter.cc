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
  // Rewriting Subject needs header replacement at delivery, which the filter interface does
  // not have yet: refuse the key rather than accept it and do nothing.
  if (!fc.subjectPrefix.empty()) s.error("subject_prefix", "not supported yet (the X-Spam-* headers are added)");
  if (fc.tag > fc.quarantine) s.error("quarantine", "must be at least tag");
  if (fc.quarantine > fc.reject) s.error("reject", "must be at least quarantine");
  s.rejectUnknownKeys();
  if (!fc.files.empty()) fc.rules = RuleSet::load(fc.files, Options{fc.pcre2Fallback}, errors);
  return fc;
}

std::string formatScore(double score) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", score);
  return buf;
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
  if (spam && !config.subjectPrefix.empty()) r.detail.add("subject", config.subjectPrefix + " " + subject);
  return r;
}

namespace {

class RulesFilter final : public Filter {
 public:
  explicit RulesFilter(FilterConfig config) : config_(std::make_shared<const FilterConfig>(std::move(config))) {}
  std::string_view name() const override { return "rules"; }
  Stage stage() const override { return Stage::Data; }

  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override {
    struct Work {
      Evaluation ev;
      std::string subject;
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
        },
        [ctx, work, config, done = std::move(done)] {
          ctx->spamScore += work->ev.score;
          done(resultFor(work->ev, *config, work->subject));
        });
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
