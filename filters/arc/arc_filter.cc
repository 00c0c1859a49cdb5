// filters/arc/arc_filter.cc — the `arc` filter (Stage::Data, after DKIM, before DMARC) and its
// [arc] config: verify = true, trusted_sealers = [] (domain names, exact match on the latest
// ARC-Seal's d=). It checks the ARC chain of inbound mail (arc.h), adds the arc resinfo of
// Authentication-Results (RFC 8617 section 10.2) and fills ctx.arc, which the DMARC filter
// reads to honour a trusted sealer. It never rejects. Mail from relay.networks or from an
// authenticated client is not checked (summary "skipped", no resinfo).
// Untrusted: the message. Logs: the pipeline's `filter` event (summary: none, pass, fail;
// detail: instances, sealer, reason, trusted_sealer).
#include <algorithm>

#include "filters/arc/arc.h"
#include "filters/dkim/internal.h"

namespace moat::filters::arc {

namespace {

// An A-R comment: fixed wording, numbers and checked names; nothing that could end it.
std::string commentText(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (out.size() >= 120) break;
    auto u = static_cast<unsigned char>(c);
    out += (c == '(' || c == ')' || c == '\\' || c == ';' || c == '"' || u < 0x20 || u >= 0x7f) ? ' ' : c;
  }
  return out;
}

class ArcFilter : public Filter {
 public:
  explicit ArcFilter(std::vector<std::string> trusted)
      : trusted_(std::make_shared<const std::vector<std::string>>(std::move(trusted))) {}
  std::string_view name() const override { return "arc"; }
  Stage stage() const override { return Stage::Data; }

  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override {
    ctx->arc = {};
    if (ctx->authenticated || ctx->fromRelayNetwork) return done(Result::pass("skipped"));
    verifyMessage(env, ctx->message, ctx, [ctx, trusted = trusted_, done = std::move(done)](ChainResult r) {
      done(toResult(*ctx, *trusted, r));
    });
  }

 private:
  static Result toResult(MessageContext& ctx, const std::vector<std::string>& trusted, const ChainResult& c) {
    ctx.arc.checked = true;
    ctx.arc.result = c.result;
    ctx.arc.sealer = c.sealer;
    ctx.arc.instances = c.instances;
    ctx.arc.trusted =
        c.result == "pass" && !c.sealer.empty() && std::find(trusted.begin(), trusted.end(), c.sealer) != trusted.end();
    Result r = Result::pass(c.result);
    std::string resinfo = "arc=" + c.result;
    if (c.result == "pass")
      resinfo += " (i=" + std::to_string(c.instances) + " sealer=" + c.sealer + ")";
    else if (c.result == "fail")
      resinfo += " (" + commentText(c.reason) + ")";
    r.authResults.push_back(resinfo);
    if (c.instances > 0) r.detail.add("instances", static_cast<int64_t>(c.instances));
    if (!c.sealer.empty()) r.detail.add("sealer", c.sealer);
    if (!c.reason.empty()) r.detail.add("reason", c.reason);
    if (ctx.arc.trusted) r.detail.add("trusted_sealer", true);
    return r;
  }

  std::shared_ptr<const std::vector<std::string>> trusted_;
};

}  // namespace

ArcFilters makeArcFilters(const policy::Config& config, policy::Errors& errors) {
  auto s = config.section("arc", errors);
  bool enabled = s.getBool("verify", true);
  std::vector<std::string> trusted;
  for (const auto& entry : s.getStringArray("trusted_sealers")) {
    std::string d = dkim::detail::lower(entry);
    if (!d.empty() && d.back() == '.') d.pop_back();
    if (dkim::detail::validDomain(d))
      trusted.push_back(d);
    else
      s.error("trusted_sealers", "\"" + entry + "\" is not a domain name");
  }
  auto sealing = readSealConfig(s, enabled);
  s.rejectUnknownKeys();
  ArcFilters out;
  if (enabled) out.verify = std::make_shared<ArcFilter>(std::move(trusted));
  if (sealing) out.seal = makeSealFilter(std::move(*sealing));
  return out;
}

std::shared_ptr<const Filter> makeArcFilter(const policy::Config& config, policy::Errors& errors) {
  return makeArcFilters(config, errors).verify;
}

}  // namespace moat::filters::arc
