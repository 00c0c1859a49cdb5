// filters/pipeline.cc — see pipeline.h.
#include "filters/pipeline.h"

#include "filters/antivirus/antivirus_filter.h"
#include "filters/arc/arc.h"
#include "filters/attachments/attachments.h"
#include "filters/dkim/dkim.h"
#include "filters/dmarc/dmarc.h"
#include "filters/dnsbl/dnsbl.h"
#include "filters/helo/helo.h"
#include "filters/milter/milter.h"
#include "filters/mime/mime_filter.h"
#include "filters/reverse_dns/reverse_dns.h"
#include "filters/rewrite/address_rewrite.h"
#include "filters/rules/rules_filter.h"
#include "filters/sender_domain/sender_domain.h"
#include "filters/spf/spf.h"
#include "filters/uribl/uribl.h"
#include "mta/runtime/log.h"

namespace moat::filters {

std::string StageOutcome::logJson() const {
  mta::JsonObject o;
  for (const auto& r : reports) {
    if (r.result.detail.empty()) {
      o.add(r.name, r.result.summary);
    } else {
      mta::JsonObject d;
      d.add("result", r.result.summary);
      o.addRaw(r.name, "{" + d.members() + "," + r.result.detail.members() + "}");
    }
  }
  return o.str();
}

bool Pipeline::hasStage(Stage stage) const {
  for (const auto& f : filters_)
    if (f->stage() == stage) return true;
  return false;
}

namespace {

struct Run : std::enable_shared_from_this<Run> {
  std::vector<std::shared_ptr<const Filter>> filters;  // of this stage only
  std::shared_ptr<MessageContext> ctx;
  Env env;
  std::function<void(StageOutcome)> done;
  StageOutcome out;
  size_t next = 0;
  std::chrono::steady_clock::time_point started;

  void step() {
    if (next == filters.size()) {
      auto d = std::move(done);
      d(std::move(out));
      return;
    }
    const auto& f = filters[next++];
    started = std::chrono::steady_clock::now();
    auto self = shared_from_this();
    f->run(ctx, env, [self, name = std::string(f->name())](Result r) { self->finish(name, std::move(r)); });
  }

  void takeEdits(const std::string& name, Result& r) {
    // Composed with the ones accepted so far (a milter's): the whole set, when it is one.
    if (r.replacesEdits && editsValid(r.edits, ctx->message.size())) {
      out.edits = std::move(r.edits);
      r.edits.clear();
      ctx->edits = out.edits;
      return;
    }
    bool allKept = true;
    for (auto& e : r.edits) {
      uint64_t offset = e.offset, length = e.length;
      std::string why = e.why;
      if (!addEdit(out.edits, std::move(e), ctx->message.size())) {
        allKept = false;
        mta::log::warn("edit_dropped").add("session", ctx->sessionId).add("queue_id", ctx->queueId)
            .add("filter", name).add("offset", offset).add("length", length).add("why", why);
      }
    }
    // Only the whole set of a conversion's edits makes the message 7-bit.
    if (r.convertedTo7Bit && allKept) out.convertedTo7Bit = true;
    r.edits.clear();  // the report keeps the summary; the edits live in `out`
    ctx->edits = out.edits;
  }

  void finish(const std::string& name, Result r) {
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started).count();
    for (auto& h : r.headers) out.headers.push_back(h);
    ctx->headers = out.headers;
    takeEdits(name, r);
    for (auto& c : r.envelope) out.envelope.push_back(std::move(c));
    r.envelope.clear();
    ctx->envelope = out.envelope;
    for (auto& a : r.authResults) {
      out.authResults.push_back(a);
      ctx->authResults.push_back(a);
    }
    out.score += r.score;
    bool decisive = false;
    switch (r.verdict) {
      case Verdict::Continue: break;
      case Verdict::Tag:
        if (out.verdict == Verdict::Continue) out.verdict = Verdict::Tag;
        break;
      case Verdict::Quarantine:
        out.verdict = Verdict::Quarantine;
        if (out.quarantineReason.empty()) out.quarantineReason = r.quarantineReason.empty() ? name : r.quarantineReason;
        break;
      case Verdict::Reject:
      case Verdict::TempFail:
      case Verdict::Disconnect:
        out.verdict = r.verdict;
        out.code = r.code;
        out.enhanced = r.enhanced;
        out.text = r.text;
        decisive = true;
        break;
    }
    out.reports.push_back({name, std::move(r), us});
    if (decisive) next = filters.size();
    step();
  }
};

}  // namespace

void Pipeline::run(Stage stage, std::shared_ptr<MessageContext> ctx, const Env& env,
                   std::function<void(StageOutcome)> done) const {
  auto run = std::make_shared<Run>();
  for (const auto& f : filters_)
    if (f->stage() == stage) run->filters.push_back(f);
  if (stage == Stage::Data) {  // a new message: nothing accepted yet
    ctx->edits.clear();
    ctx->headers.clear();
    ctx->envelope.clear();
  }
  run->ctx = std::move(ctx);
  run->env = env;
  run->done = std::move(done);
  run->step();
}

std::shared_ptr<const Pipeline> Pipeline::build(const policy::Config& config, policy::Errors& errors,
                                                std::shared_ptr<const policy::RewriteMap> rewrite) {
  std::vector<std::shared_ptr<const Filter>> filters;
  // Pipeline order (DESIGN.md, The flow of one message); each factory returns null when
  // its filter is turned off.
  auto add = [&filters](std::shared_ptr<const Filter> f) {
    if (f) filters.push_back(std::move(f));
  };
  add(dnsbl::makeDnsblFilter(config, errors));          // mail: a listed client goes first
  add(reverse_dns::makeReverseDnsFilter(config, errors));  // mail: the client, then its words
  add(helo::makeHeloFilter(config, errors));            // mail
  add(sender_domain::makeSenderDomainFilter(config, errors));  // mail
  add(spf::makeSpfFilter(config, errors));              // mail
  size_t mimeAt = filters.size();                       // data: first, the others read ctx->mime
  add(dkim::makeDkimVerifyFilter(config, errors));      // data
  auto arcFilters = arc::makeArcFilters(config, errors);
  add(arcFilters.verify);                               // data, before DMARC, which reads a trusted sealer
  add(dmarc::makeDmarcFilter(config, errors));          // data, reads the SPF and DKIM results
  add(uribl::makeUriblFilter(config, errors));          // data, reads ctx->mime: links' domains, before the scans
  add(antivirus::makeAntivirusFilter(config, errors));  // data
  add(attachments::makeAttachmentsFilter(config, errors));  // data, reads ctx->mime
  add(rules::makeRulesFilter(config, errors));          // data: it scores what the others found
  // data: external milters see only the mail Moat's own checks still accept (the stage ends
  // at the first reject or tempfail), and before the signer, which signs their changes.
  add(milter::makeMilterFilter(config, errors));
  // data: after every check has read the message as received, before the signer, whose
  // signature must cover the rewritten From.
  add(rewrite::makeRewriteFilter(std::move(rewrite)));
  add(dkim::makeDkimSignFilter(config, errors));        // data: last, signs the message as delivered
  add(arcFilters.seal);  // data: with the signer (outbound) last, seals inbound mail as delivered
  // Made last, once it is known how deep the others read the tree.
  mime::Depth depth = mime::Depth::Structure;
  for (const auto& f : filters) depth = std::max(depth, f->mimeDepth());
  filters.insert(filters.begin() + static_cast<std::ptrdiff_t>(mimeAt), mime::makeMimeFilter(config, errors, depth));
  return std::make_shared<Pipeline>(std::move(filters));
}

}  // namespace moat::filters
