// filters/spf/filter.cc — the [spf] filter: runs at MAIL FROM, checks the HELO identity
// (RFC 7208 §2.3) and the MAIL FROM identity (§2.4), records both in the message context
// for DMARC, and maps the deciding result to a verdict: fail 550 5.7.23, permerror
// 550 5.7.24, temperror 451 4.7.24 (RFC 7372) or a tag (Received-SPF, §9.1).
//
// Untrusted: client IP, HELO, MAIL FROM. Config comes from moat.toml [spf]; unknown keys
// and bad values are FILE:LINE errors. Logs through the pipeline's `filter` event (the
// result's summary and detail: result, identity, domain, mechanism, lookups).
#include <algorithm>
#include <cctype>

#include "filters/spf/record.h"
#include "filters/spf/spf.h"

namespace moat::filters::spf {

namespace {

struct Settings {
  bool heloCheck = true;
  std::string fail = "tag";
  std::string softfail = "tag";
  std::string temperror = "tempfail";
  std::string permerror = "tag";
  std::string explanation;
  bool skipNetworks = true;
};

SpfOutcome toOutcome(const SpfAnswer& a, const char* identity) {
  SpfOutcome o;
  o.checked = true;
  o.result = std::string(resultName(a.result));
  o.identity = identity;
  o.domain = a.domain;
  o.explanation = a.explanation;
  return o;
}

// A key=value pair's value (RFC 7208 §9.1, RFC 8601 §2.2): a dot-atom as it is, else a
// quoted-string. What the client chose (its HELO, its sender) cannot end the field or
// start pairs of its own: quotes and backslashes are escaped, control characters, and
// 8-bit bytes unless `utf8` (an SMTPUTF8 message, RFC 6532), become '?'.
std::string pairValue(std::string_view s, bool utf8, bool alwaysQuote = false) {
  static constexpr std::string_view kAtext = "!#$%&'*+-/=?^_`{|}~.";
  bool atom = !s.empty() && !alwaysQuote && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || kAtext.find(c) != std::string_view::npos;
  });
  if (atom) return std::string(s);
  std::string out = "\"";
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') out += '\\';
    out += u < 0x20 || u == 0x7f || (u >= 0x80 && !utf8) ? '?' : c;
  }
  return out + "\"";
}

// Text for a header comment: the checked domain is the client's choice (with a null
// sender and no usable HELO check it is the raw HELO argument), so nothing in it may end
// the comment or make the header 8-bit: parentheses, backslashes, control characters and
// 8-bit bytes become '?'.
std::string commentText(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 255)) {
    auto u = static_cast<unsigned char>(c);
    out += c == '(' || c == ')' || c == '\\' || u < 0x20 || u >= 0x7f ? '?' : c;
  }
  return out;
}

// §9.1 Received-SPF: result, a comment, then key=value pairs.
Header receivedSpf(const SpfAnswer& a, const MessageContext& ctx, const std::string& host, bool helo) {
  std::string v(resultName(a.result));
  v += " (" + host + ": domain of " + commentText(a.domain) + ") client-ip=" + ctx.clientIp.str() + ";";
  // 8-bit in the sender is UTF-8 of an SMTPUTF8 transaction (the session refuses it otherwise).
  v += " envelope-from=" + pairValue(ctx.mailFrom, true, true) + ";";
  v += " helo=" + (ctx.helo.empty() ? std::string("unknown") : pairValue(ctx.helo, false)) + ";";
  v += std::string(" identity=") + (helo ? "helo" : "mailfrom") + ";";
  if (!host.empty()) v += " receiver=" + host + ";";
  return Header{"Received-SPF", v};
}

class SpfFilter : public Filter, public std::enable_shared_from_this<SpfFilter> {
 public:
  explicit SpfFilter(Settings s, std::vector<mta::Network> relayNets)
      : s_(std::move(s)), relayNets_(std::move(relayNets)) {}
  std::string_view name() const override { return "spf"; }
  Stage stage() const override { return Stage::Mail; }

  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override {
    if (skip(*ctx) || !env.resolver) return done(Result::pass("skipped"));
    CheckParams p;
    p.ip = ctx->clientIp;
    p.helo = ctx->helo;
    p.mailFrom = ctx->mailFrom;
    p.receiver = env.hostname.empty() ? "unknown" : env.hostname;
    p.defaultExplanation = s_.explanation;
    mta::dns::Resolver& resolver = *env.resolver;
    std::string host = env.hostname;
    bool heloValid = validIdentityDomain(ctx->helo);
    // The check may outlive a policy reload: keep this filter alive until it ends.
    auto self = shared_from_this();
    auto afterHelo = [self, ctx, p, &resolver, host, done](std::optional<SpfAnswer> helo) {
      if (helo) ctx->spfHelo = toOutcome(*helo, "helo");
      if (ctx->mailFrom.empty() && helo) {
        ctx->spfMailFrom = toOutcome(*helo, "helo");
        return done(self->decide(*helo, *ctx, host, true));
      }
      checkHost(resolver, p, [self, ctx, host, done](SpfAnswer a) {
        bool null = ctx->mailFrom.empty();
        ctx->spfMailFrom = toOutcome(a, null ? "helo" : "mailfrom");
        done(self->decide(a, *ctx, host, null));
      });
    };
    if (s_.heloCheck && heloValid) {
      return checkHelo(resolver, p, [afterHelo](SpfAnswer a) { afterHelo(std::move(a)); });
    }
    afterHelo(std::nullopt);
  }

 private:
  bool skip(const MessageContext& ctx) const {
    if (!s_.skipNetworks) return false;
    // Outbound mail from our own networks (or authenticated submission) is not the
    // sender-domain's business to authorize here.
    if (ctx.fromRelayNetwork || ctx.authenticated) return true;
    for (const auto& n : relayNets_) {
      if (n.contains(ctx.clientIp)) return true;
    }
    return false;
  }

  Result decide(const SpfAnswer& a, const MessageContext& ctx, const std::string& host, bool helo) const {
    std::string name(resultName(a.result));
    Result r;
    const std::string& action = actionFor(a.result);
    if (action == "reject" && a.result == SpfResult::Fail) {
      std::string text = a.explanation.empty() ? "SPF check failed for " + a.domain : a.explanation;
      r = Result::reject(550, "5.7.23", text, name);
    } else if (action == "reject") {
      r = Result::reject(550, "5.7.24", "SPF record of " + a.domain + " is invalid", name);
    } else if (action == "tempfail") {
      r = Result::tempFail(451, "4.7.24", "Temporary error evaluating the SPF record of " + a.domain, name);
    } else {
      r = Result::make(action == "tag" ? Verdict::Tag : Verdict::Continue, 0, "", "", name);
    }
    r.summary = name;
    // RFC 8601 §2.7.2 pvalues: a domain is a dot-atom as it is; an address literal
    // ("[192.0.2.1]": brackets are not token characters) or a name with 8-bit bytes is
    // quoted (8-bit in MAIL FROM means an SMTPUTF8 transaction, RFC 6532).
    std::string prop = helo ? "smtp.helo=" + pairValue(ctx.helo, false) : "smtp.mailfrom=" + pairValue(a.domain, true);
    r.authResults.push_back("spf=" + name + " " + prop);
    r.headers.push_back(receivedSpf(a, ctx, host, helo));
    r.detail.add("spf_result", name);
    r.detail.add("spf_identity", std::string(helo ? "helo" : "mailfrom"));
    r.detail.add("spf_domain", a.domain);
    r.detail.add("spf_mechanism", a.mechanism);
    r.detail.add("spf_lookups", a.lookups);
    return r;
  }

  const std::string& actionFor(SpfResult result) const {
    static const std::string none = "none";
    switch (result) {
      case SpfResult::Fail: return s_.fail;
      case SpfResult::SoftFail: return s_.softfail;
      case SpfResult::TempError: return s_.temperror;
      case SpfResult::PermError: return s_.permerror;
      default: return none;
    }
  }

  Settings s_;
  std::vector<mta::Network> relayNets_;
};

}  // namespace

std::shared_ptr<const Filter> makeSpfFilter(const policy::Config& config, policy::Errors& errors) {
  policy::Section sec = config.section("spf", errors);
  Settings s;
  bool enabled = sec.getBool("enabled", true);
  s.heloCheck = sec.getBool("helo_check", true);
  s.fail = sec.getEnum("fail", "tag", {"reject", "tag", "none"});
  s.softfail = sec.getEnum("softfail", "tag", {"tag", "none"});
  s.temperror = sec.getEnum("temperror", "tempfail", {"tempfail", "tag"});
  s.permerror = sec.getEnum("permerror", "tag", {"reject", "tag"});
  s.explanation = sec.getString("explanation", "");
  s.skipNetworks = sec.getBool("skip_networks", true);
  if (!s.explanation.empty() && !expandMacros(s.explanation, MacroContext{}, true, nullptr)) {
    sec.error("explanation", "invalid SPF macro-string (RFC 7208 §7)");
  }
  sec.rejectUnknownKeys();
  if (!enabled || errors.hasErrors()) return nullptr;
  return std::make_shared<SpfFilter>(std::move(s), config.relayNetworks);
}

}  // namespace moat::filters::spf
