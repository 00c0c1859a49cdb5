// filters/dmarc/dmarc_filter.cc — see dmarc_filter.h.
#include "filters/dmarc/dmarc_filter.h"

#include "filters/dmarc/org_domain.h"

namespace moat::filters::dmarc {

namespace {

bool withinDomain(const std::string& name, const std::string& domain) {
  auto n = normalizeDomain(name);
  if (n.empty()) return false;
  if (n == domain) return true;
  return n.size() > domain.size() && n.compare(n.size() - domain.size(), domain.size(), domain) == 0 &&
         n[n.size() - domain.size() - 1] == '.';
}

// An A-R comment. Evaluation::reason holds only fixed wording and checked domain names;
// this is the second line of defence: nothing that could end the comment, start a resinfo
// of its own (";" for readers that split naively), or make the header 8-bit.
std::string commentText(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (out.size() >= 120) break;
    auto u = static_cast<unsigned char>(c);
    if (c == '(' || c == ')' || c == '\\' || c == ';' || c == '"' || u < 0x20 || u >= 0x7f)
      out += ' ';
    else out += c;
  }
  return out;
}

// Results are built here rather than with Result::pass()/reject() (defined in pipeline.cc,
// part of moat_filters, which links this library): moat_filter_dmarc links on its own.
Result makeResult(Verdict verdict, std::string summary, int code = 0, std::string enhanced = "", std::string text = "") {
  Result r;
  r.verdict = verdict;
  r.summary = std::move(summary);
  r.code = code;
  r.enhanced = std::move(enhanced);
  r.text = std::move(text);
  return r;
}

std::string replyDomain(const Evaluation& e) { return e.fromDomain.empty() ? "the From domain" : e.fromDomain; }

class DmarcFilter : public Filter, public std::enable_shared_from_this<DmarcFilter> {
 public:
  DmarcFilter(FilterConfig config, PctDraw draw) : config_(std::move(config)), draw_(std::move(draw)) {}
  std::string_view name() const override { return "dmarc"; }
  Stage stage() const override { return Stage::Data; }

  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override {
    if (ctx->authenticated || ctx->fromRelayNetwork) {
      ctx->dmarc = {};
      return done(makeResult(Verdict::Continue, "skipped"));
    }
    if (!env.resolver) {
      Evaluation e;
      e.result = "temperror";
      e.reason = "no resolver";
      e.disposition = "none";
      return done(act(config_, *ctx, e));
    }
    // The filter may be dropped by a reload while a lookup is in flight: keep it alive.
    auto self = shared_from_this();
    auto finish = [self, ctx, done](Evaluation e) { done(act(self->config_, *ctx, e)); };
    if (!largeHeaderSection(ctx->message))
      return evaluate(*env.resolver, ctx->message, ctx->spfMailFrom, ctx->dkim, finish, draw_);
    // Reading the From fields of a large header section is work for the pool (filter.h).
    auto authors = std::make_shared<FromAuthors>();
    mta::dns::Resolver* resolver = env.resolver;
    env.offload([ctx, authors] { *authors = fromAuthors(ctx->message); },
                [self, ctx, authors, resolver, finish] {
                  evaluateAuthors(*resolver, *authors, ctx->spfMailFrom, ctx->dkim, finish, self->draw_);
                });
  }

 private:
  FilterConfig config_;
  PctDraw draw_;
};

}  // namespace

FilterConfig readConfig(const policy::Config& config, policy::Errors& errors) {
  FilterConfig c;
  auto s = config.section("dmarc", errors);
  c.enabled = s.getBool("enabled", true);
  c.rejectAction = s.getEnum("reject_action", "reject", {"reject", "quarantine", "tag"});
  c.quarantineAction = s.getEnum("quarantine_action", "quarantine", {"quarantine", "tag"});
  c.temperror = s.getEnum("temperror", "tempfail", {"tempfail", "tag"});
  c.malformedFrom = s.getEnum("malformed_from", "reject", {"reject", "quarantine", "tag"});
  for (const auto& entry : s.getStringArray("trusted_forwarders")) {
    if (auto net = mta::Network::parse(entry)) {
      c.forwarderNetworks.push_back(*net);
      continue;
    }
    auto domain = normalizeDomain(entry);
    if (validDomain(domain) && domain.find(':') == std::string::npos) {
      c.forwarderDomains.push_back(domain);
      continue;
    }
    s.error("trusted_forwarders", "\"" + entry + "\" is neither an IP network nor a domain name");
  }
  s.rejectUnknownKeys();
  return c;
}

std::shared_ptr<const Filter> makeDmarcFilter(const policy::Config& config, policy::Errors& errors) {
  return makeDmarcFilter(config, errors, {});
}

std::shared_ptr<const Filter> makeDmarcFilter(const policy::Config& config, policy::Errors& errors, PctDraw draw) {
  policy::Errors mine;
  auto c = readConfig(config, mine);
  for (const auto& e : mine.all()) {
    if (e.warning) errors.warning(e.file, e.line, e.message);
    else errors.error(e.file, e.line, e.message);
  }
  if (mine.hasErrors() || !c.enabled) return nullptr;
  return makeDmarcFilter(std::move(c), std::move(draw));
}

std::shared_ptr<const Filter> makeDmarcFilter(FilterConfig config, PctDraw draw) {
  return std::make_shared<DmarcFilter>(std::move(config), std::move(draw));
}

bool isTrustedForwarder(const FilterConfig& config, const MessageContext& ctx) {
  for (const auto& net : config.forwarderNetworks)
    if (net.contains(ctx.clientIp)) return true;
  for (const auto& d : config.forwarderDomains) {
    if (withinDomain(ctx.clientName, d)) return true;
    if (ctx.spfMailFrom.result == "pass" && withinDomain(ctx.spfMailFrom.domain, d)) return true;
    if (ctx.spfHelo.result == "pass" && withinDomain(ctx.spfHelo.domain, d)) return true;
  }
  return false;
}

std::string authResult(const Evaluation& e, const std::string& dis, const std::string& reason) {
  std::string out = "dmarc=" + e.result;
  std::string comment;
  if (!e.policy.empty()) {
    comment = "p=" + e.record.p;
    if (!e.record.sp.empty()) comment += " sp=" + e.record.sp;
    comment += " dis=" + dis;
    if (e.pctSampledOut) comment += " pct=" + std::to_string(e.record.pct);
    if (!reason.empty()) comment += " reason=" + reason;
  } else if (!e.reason.empty()) {
    comment = commentText(e.reason);
    if (e.malformedFrom && dis != "none") comment += " dis=" + dis;
    if (e.malformedFrom && !reason.empty()) comment += " reason=" + reason;
  }
  if (!comment.empty()) out += " (" + comment + ")";
  if (!e.fromDomain.empty()) out += " header.from=" + e.fromDomain;
  if (!e.policy.empty()) out += " policy.dmarc=" + e.policy;
  return out;
}

Result act(const FilterConfig& config, MessageContext& ctx, const Evaluation& e) {
  std::string applied = "none";
  std::string reason;
  std::string arcSealer;  // the trusted ARC sealer that overrode the policy
  bool malformed = e.malformedFrom && config.malformedFrom != "tag";
  bool enforce = (e.result == "fail" && e.disposition != "none") || malformed;
  if (enforce && isTrustedForwarder(config, ctx)) {
    applied = "override";
    reason = "trusted_forwarder";
  } else if (enforce && !malformed && ctx.arc.result == "pass" && ctx.arc.trusted) {
    // A forwarder whose ARC seal is trusted ([arc] trusted_sealers) vouches for the
    // authentication it saw before it changed the message (RFC 8617).
    applied = "override";
    reason = "trusted_forwarder";
    arcSealer = ctx.arc.sealer;
  } else if (malformed) {
    applied = config.malformedFrom;
  } else if (enforce) {
    applied = e.disposition == "reject" ? config.rejectAction : config.quarantineAction;
  } else if (e.malformedFrom) {
    applied = "tag";
  } else if (e.result == "temperror") {
    applied = config.temperror;
  }

  Result r;
  if (applied == "reject" && e.malformedFrom) {
    // e.reason is fixed wording (evaluate.cc): the client's From text is not echoed.
    r = makeResult(Verdict::Reject, e.result, 550, "5.7.1",
                   "Message rejected: malformed From header field, " + e.reason + " (RFC 5322 3.6, RFC 7489 6.6.1)");
  } else if (applied == "reject") {
    r = makeResult(Verdict::Reject, e.result, 550, "5.7.1", "Message rejected: DMARC policy of " + replyDomain(e) + " (p=reject)");
  } else if (applied == "quarantine" && e.malformedFrom) {
    r = makeResult(Verdict::Quarantine, e.result);
    r.quarantineReason = "DMARC " + e.result + ": malformed From header field, " + e.reason;
  } else if (applied == "quarantine") {
    r = makeResult(Verdict::Quarantine, e.result);
    r.quarantineReason = "DMARC " + e.result + " for " + replyDomain(e) + " (policy " + e.disposition + ")";
  } else if (applied == "tempfail") {
    r = makeResult(Verdict::TempFail, e.result, 451, "4.4.3",
                   "Temporary DNS failure looking up the DMARC policy of " + replyDomain(e) + "; try again later");
  } else {
    r = makeResult(applied == "tag" ? Verdict::Tag : Verdict::Continue, e.result);
  }
  std::string dis = (applied == "reject" || applied == "quarantine") ? applied : "none";
  r.authResults.push_back(authResult(e, dis, reason));
  r.detail.add("from", e.fromDomain);
  if (!e.policy.empty()) r.detail.add("policy", e.policy);
  r.detail.add("applied", applied);
  if (!e.reason.empty()) r.detail.add("reason", e.reason);
  if (!e.problem.empty()) r.detail.add("problem", e.problem);
  if (e.malformedFrom) r.detail.add("malformed_from", true);
  if (e.pctSampledOut) r.detail.add("pct_sampled_out", true);
  if (!arcSealer.empty()) r.detail.add("override", "arc").add("arc_sealer", arcSealer);

  ctx.dmarc.checked = true;
  ctx.dmarc.result = e.result;
  ctx.dmarc.fromDomain = e.fromDomain;
  ctx.dmarc.policy = e.policy;
  ctx.dmarc.applied = applied;
  if (!e.policy.empty()) {
    ctx.dmarc.recordDomain = e.recordDomain;
    ctx.dmarc.adkim = e.record.adkim;
    ctx.dmarc.aspf = e.record.aspf;
    ctx.dmarc.p = e.record.p;
    ctx.dmarc.sp = e.record.sp;
    ctx.dmarc.fo = e.record.fo;
    ctx.dmarc.pct = e.record.pct;
    ctx.dmarc.spfAligned = e.spfAligned;
    ctx.dmarc.dkimAligned = e.dkimAligned;
    ctx.dmarc.disposition = dis;
    ctx.dmarc.overrideComment.clear();
    if (!arcSealer.empty()) ctx.dmarc.overrideComment = "arc=pass sealer=" + arcSealer;
    if (!reason.empty())
      ctx.dmarc.overrideReason = reason;
    else if (e.result == "fail" && dis != e.disposition)
      ctx.dmarc.overrideReason = "local_policy";  // reject_action / quarantine_action asked for less
    else if (e.pctSampledOut)
      ctx.dmarc.overrideReason = "sampled_out";
  }
  return r;
}

}  // namespace moat::filters::dmarc
