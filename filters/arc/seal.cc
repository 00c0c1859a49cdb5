// filters/arc/seal.cc — the `arc_seal` filter: ARC sealing (RFC 8617 section 5.1) of inbound
// mail Moat accepts, so a mailbox provider behind the gateway (Exchange Online's "trusted ARC
// sealers", Gmail) can trust the authentication Moat did before its own changes (header
// firewall, Subject tags, stripped attachments, address rewriting) broke the senders' DKIM.
//
// One ARC set i=N+1 (N the latest instance of the chain the `arc` filter checked, 0 without
// one): ARC-Authentication-Results with the payload of Moat's Authentication-Results;
// ARC-Message-Signature (rsa-sha256, relaxed/relaxed, the DKIM signer's header list plus
// DKIM-Signature, From oversigned) over the message as delivered, prepared by the DKIM
// signer's code (dkim::prepareForSigning; the sealer runs last): the pipeline's edits
// applied and in the lines the SMTP client sends, the line breaks stored as the filter's
// edits (a Maildir copy is what was sealed). An 8-bit body is sealed as it came, not
// converted as the DKIM signer converts outbound mail: converting would break the author's
// own DKIM signature at every mailbox, to keep the seal only at a next hop without 8BITMIME
// (rare behind a gateway); ARC-Seal with cv= the chain's result (none for i=1)
// over the sets 1..N+1 (only its own set with cv=fail, as RFC 8617 5.1.2 and dkimpy do).
// No set when N is already kMaxInstances or when the chain could not be read at all (a fail
// without an instance).
// DKIM's canonicalization, header selection, folding and signing (filters/dkim) are used.
// Config [arc]: seal_domain, seal_selector, seal_key_file (all three or none; an RSA key of
// at least 1024 bits, checked at load time); it needs verify = true.
// Untrusted: the message. Logs: the pipeline's `filter` event (summary sealed, skipped,
// outbound, error; detail: sealed, instance, cv, reason).
#include <ctime>

#include "filters/arc/arc.h"
#include "filters/dkim/internal.h"

namespace moat::filters::arc {

using namespace dkim::detail;

namespace {

Result withSummary(std::string summary) {
  Result r;
  r.summary = std::move(summary);
  return r;
}

Result notSealed(std::string summary, const std::string& reason) {
  Result r = withSummary(std::move(summary));
  r.detail.add("sealed", false);
  r.detail.add("reason", reason);
  return r;
}

// A signature field's value with b= filled in, folded as the unsigned value was (the same
// lines up to b=; b= is not signed, so its own folding changes nothing).
std::optional<std::string> withB(const std::string& unsigned_, const std::string& folded, const std::string& b,
                                 size_t width) {
  std::string whole = foldSignature(unsigned_ + b, width);
  if (whole.compare(0, folded.size(), folded) != 0) return std::nullopt;
  return whole;
}

constexpr size_t kWidth = 78;
// foldSignature counts "DKIM-Signature: " (16 octets) on the first line.
constexpr size_t kAmsWidth = kWidth - (sizeof("ARC-Message-Signature: ") - sizeof("DKIM-Signature: "));

struct SealJob {
  std::string domain, selector, pem;
  std::string aarValue;  // "i=N; " + the Authentication-Results payload
  int instance = 1;
  std::string cv;
  dkim::Prepared prepared;      // the message as delivered and the edits that make it so
  std::vector<Header> headers;  // out: AS, AMS, AAR in that order
  std::string error;
};

// Thread pool side: signs `delivered` (the message as it will leave).
bool seal(std::string_view delivered, SealJob& job) {
  std::string error;
  PkeyPtr key = loadPrivateKey(job.pem, error);
  if (!key) return job.error = error, false;
  auto split = splitMessage(delivered);
  std::vector<ArcSet> sets;
  Chain chain;             // owns nothing: its views point into `delivered`
  if (job.cv == "pass") {  // the earlier sets as delivered, all of them read
    chain = readChain(delivered);
    if (chain.sets.size() != static_cast<size_t>(job.instance - 1))
      return job.error = "the ARC sets changed after the check", false;
    sets = chain.sets;
  }
  std::string t = std::to_string(static_cast<long long>(std::time(nullptr)));
  std::string i = std::to_string(job.instance);
  // ARC-Message-Signature (RFC 8617 4.1.2): a DKIM signature with i= and without v=.
  std::vector<std::string> names = signHeaderNames();
  names.emplace_back("dkim-signature");
  auto [hList, block] = selectHeaders(split, names, {"from"});
  std::string amsUnsigned = "i=" + i + "; a=rsa-sha256; c=relaxed/relaxed; d=" + job.domain + "; s=" + job.selector +
                            "; t=" + t + "; h=" + hList + "; bh=" + bodyHashRelaxed(split.body) + "; b=";
  std::string amsFolded = foldSignature(amsUnsigned, kAmsWidth);
  auto amsB = rsaSha256Sign(key.get(), block + relaxedHeader("ARC-Message-Signature: " + amsFolded), error);
  if (!amsB) return job.error = error, false;
  auto ams = withB(amsUnsigned, amsFolded, *amsB, kAmsWidth);
  if (!ams) return job.error = "folding the ARC-Message-Signature changed its signed part", false;
  // ARC-Seal (4.1.3): over the sets 1..i, this one with b= empty.
  std::string asUnsigned =
      "i=" + i + "; a=rsa-sha256; cv=" + job.cv + "; d=" + job.domain + "; s=" + job.selector + "; t=" + t + "; b=";
  std::string asFolded = foldSignature(asUnsigned, kWidth);
  std::string aarRaw = "ARC-Authentication-Results: " + job.aarValue;
  std::string amsRaw = "ARC-Message-Signature: " + *ams;
  std::string asRaw = "ARC-Seal: " + asFolded;
  sets.push_back({aarRaw, amsRaw, asRaw});
  auto asB = rsaSha256Sign(key.get(), sealInput(sets, sets.size()), error);
  if (!asB) return job.error = error, false;
  auto as = withB(asUnsigned, asFolded, *asB, kWidth);
  if (!as) return job.error = "folding the ARC-Seal changed its signed part", false;
  job.headers = {{"ARC-Seal", *as}, {"ARC-Message-Signature", *ams}, {"ARC-Authentication-Results", job.aarValue}};
  return true;
}

class SealFilter : public Filter {
 public:
  explicit SealFilter(SealConfig config) : config_(std::make_shared<const SealConfig>(std::move(config))) {}
  std::string_view name() const override { return "arc_seal"; }
  Stage stage() const override { return Stage::Data; }

  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override {
    if (ctx->authenticated || ctx->fromRelayNetwork) return done(withSummary("outbound"));
    if (!ctx->arc.checked) return done(notSealed("skipped", "the ARC chain was not checked"));
    int n = ctx->arc.instances;
    std::string cv = ctx->arc.result == "pass" || ctx->arc.result == "fail" ? ctx->arc.result : "none";
    if (cv == "fail" && n == 0) return done(notSealed("skipped", "the existing ARC chain could not be read"));
    if (cv == "none" && n != 0) return done(notSealed("skipped", "the existing ARC chain could not be read"));
    if (n >= kMaxInstances)
      return done(notSealed("skipped", "the chain has " + std::to_string(kMaxInstances) + " instances already"));
    auto job = std::make_shared<SealJob>();
    job->domain = config_->domain;
    job->selector = config_->selector;
    job->pem = config_->keyPem;
    job->instance = n + 1;
    job->cv = cv;
    job->aarValue = "i=" + std::to_string(n + 1) + "; " +
                    authenticationResults(env.hostname, gatewayAuthResults(ctx->authResults, false));
    env.offload(
        [ctx, job] {
          // The message as delivered, prepared as the DKIM signer prepares what it signs: the
          // edits of every filter before, in the SMTP client's lines (over-long lines broken,
          // bare line ends completed), 8-bit as it came. Kept as edits only when sealed.
          job->prepared = dkim::prepareForSigning(*ctx, 0, false);
          seal(job->prepared.message, *job);
        },
        [job, done = std::move(done)] {
          if (!job->error.empty()) return done(notSealed("error", job->error));
          Result r = withSummary("sealed");
          r.headers = std::move(job->headers);
          r.detail.add("sealed", true);
          r.detail.add("instance", static_cast<int64_t>(job->instance));
          r.detail.add("cv", job->cv);
          dkim::takePrepared(std::move(job->prepared), r);
          done(std::move(r));
        },
        ctx->message.size());
  }

 private:
  std::shared_ptr<const SealConfig> config_;
};

}  // namespace

std::optional<SealConfig> readSealConfig(policy::Section& s, bool verify) {
  SealConfig c;
  c.domain = lower(s.getString("seal_domain"));
  if (!c.domain.empty() && c.domain.back() == '.') c.domain.pop_back();
  c.selector = s.getString("seal_selector");
  std::string file = s.getPath("seal_key_file");
  bool given[3] = {!c.domain.empty(), !c.selector.empty(), !file.empty()};
  if (!given[0] && !given[1] && !given[2]) return std::nullopt;
  if (!given[0] || !given[1] || !given[2]) {
    const char* keys[3] = {"seal_domain", "seal_selector", "seal_key_file"};
    for (size_t k = 0; k < 3; ++k)
      if (!given[k]) s.error(keys[k], "missing: seal_domain, seal_selector and seal_key_file go together");
    return std::nullopt;
  }
  if (!validDomain(c.domain)) {
    s.error("seal_domain", "\"" + c.domain + "\" is not a domain name");
    return std::nullopt;
  }
  if (!validSelector(c.selector)) {
    s.error("seal_selector", "\"" + c.selector + "\" is not a selector");
    return std::nullopt;
  }
  auto text = dkim::readKeyFile(s, "seal_key_file", file);
  if (!text) return std::nullopt;
  c.keyPem = std::move(*text);
  // The DKIM signer's checks: RSA (RFC 8617 defines rsa-sha256 only), at least 1024 bits.
  std::string error;
  if (!dkim::checkSignKey({c.domain, c.selector, "rsa-sha256", c.keyPem}, error)) {
    s.error("seal_key_file", file + ": " + error);
    return std::nullopt;
  }
  if (!verify) {
    s.error("seal_domain", "sealing needs verify = true (the seal states the chain's result)");
    return std::nullopt;
  }
  return c;
}

std::shared_ptr<const Filter> makeSealFilter(SealConfig config) {
  return std::make_shared<SealFilter>(std::move(config));
}

}  // namespace moat::filters::arc
