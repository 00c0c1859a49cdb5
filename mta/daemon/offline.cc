// mta/daemon/offline.cc — see offline.h.
#include "mta/daemon/offline.h"

#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <unordered_set>

#include "filters/dkim/dkim.h"
#include "filters/recipient_key.h"
#include "filters/spf/spf.h"
#include "mta/dns/cares_resolver.h"
#include "mta/runtime/clock.h"
#include "mta/runtime/json.h"
#include "mta/runtime/uv.h"
#include "mta/server/envelope_recipients.h"
#include "mta/server/snapshot.h"
#include "policy/batv.h"

namespace moat::mta::daemon {
namespace {

// The wire form of a message: every line ending CRLF (files on disk often use LF).
std::string toCrlf(const std::string& in) {
  std::string out;
  out.reserve(in.size() + in.size() / 32);
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '\r') {
      out += "\r\n";
      if (i + 1 < in.size() && in[i + 1] == '\n') ++i;
    } else if (c == '\n') {
      out += "\r\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string reportsJson(const std::vector<filters::FilterReport>& reports) {
  JsonObject o;
  for (const auto& r : reports) {
    JsonObject f;
    f.add("verdict", std::string(filters::verdictName(r.result.verdict))).add("result", r.result.summary);
    if (r.result.code) f.add("reply", std::to_string(r.result.code) + " " + r.result.enhanced + " " + r.result.text);
    if (r.result.score != 0) f.add("score", r.result.score);
    if (!r.result.authResults.empty()) f.add("auth_results", r.result.authResults);
    if (!r.result.detail.empty()) f.addRaw("detail", r.result.detail.str());
    f.add("elapsed_us", static_cast<int64_t>(r.elapsedUs));
    o.addRaw(r.name, f.str());
  }
  return o.str();
}

// [bcc]: the copies serve adds to `rcpts` as it queues a message whose filters let it through
// (a quarantined one keeps them), by the same lookups (server::addBccRecipients).
std::vector<std::string> addBccCopies(const server::Snapshot& snap, const std::string& sender,
                                      std::vector<std::string>& rcpts) {
  std::vector<server::RcptDsn> dsns;
  std::unordered_set<std::string> keys;
  for (const auto& r : rcpts) keys.insert(filters::recipientKey(r));
  std::vector<queue::ExpandedRecipient> expanded;
  return server::addBccRecipients({rcpts, dsns, keys, expanded},
                                  {snap.config->bccAlways, snap.bccSenders.get(), snap.bccRecipients.get()}, sender,
                                  server::kMaxEnvelopeRecipients);
}

}  // namespace

int runScan(const ScanOptions& opts) {
  policy::Errors errors;
  auto snap = server::Snapshot::load(opts.config, errors);
  for (const auto& e : errors.all()) std::fprintf(stderr, "%s\n", e.str().c_str());
  if (!snap) return 1;
  std::ifstream in(opts.messageFile, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "moat: cannot read %s\n", opts.messageFile.c_str());
    return 1;
  }
  std::stringstream buf;
  buf << in.rdbuf();
  std::string message = toCrlf(buf.str());
  auto ip = IpAddress::parse(opts.clientIp);
  if (!ip) {
    std::fprintf(stderr, "moat: --client-ip %s is not an IP address\n", opts.clientIp.c_str());
    return 2;
  }
  // The antivirus engine loads in the background at start; a scan waits for it.
  snap->waitReady();

  const auto& cfg = *snap->config;
  uv::Loop loop;
  dns::CaresResolver resolver(loop.get(), cfg.nameservers, static_cast<unsigned>(cfg.dnsTimeout.count()));
  auto ctx = std::make_shared<filters::MessageContext>();
  ctx->sessionId = "scan";
  ctx->clientIp = *ip;
  ctx->helo = opts.helo.empty() ? ip->literal() : opts.helo;
  ctx->mailFrom = opts.mailFrom;
  ctx->fromRelayNetwork = cfg.isRelayClient(*ip);
  const int64_t today = policy::batv::dayNumber(wallClockMs() / 1000);
  JsonArray refused;  // recipients serve would refuse at RCPT (bounce verification)
  std::string refusedReply;
  bool batvFailed = false;
  for (const auto& given : opts.rcpts) {
    std::string r = given;
    size_t at = r.rfind('@');
    const std::string domain = at != std::string::npos ? r.substr(at + 1) : "";
    const bool relayDomain = at != std::string::npos && cfg.isRelayDomain(domain);
    if (!relayDomain) ctx->relayed = true;  // as the session notes it at RCPT: outbound mail
    // [bounce_verification], as the session does at RCPT: a validly tagged recipient is taken
    // as its plain address; a null-sender message from outside to one that is not (and not
    // exempt) is refused, or marked with X-Moat-BATV: fail.
    std::optional<filters::AddressRewrite> rewritten;
    if (snap->batvKeys && at != std::string::npos && cfg.isBatvDomain(domain)) {
      auto checked = policy::batv::verify(r, *snap->batvKeys, today, cfg.batvMaxAgeDays);
      const bool valid = checked.result == policy::batv::Result::Valid;
      if (valid) {
        rewritten = filters::AddressRewrite{r, checked.address, "batv"};
        r = checked.address;
      }
      if (!valid && ctx->mailFrom.empty() && !ctx->fromRelayNetwork && !cfg.isBatvExempt(checked.address)) {
        if (cfg.batvReject) {
          std::string reply = "550 5.7.1 " + policy::batv::refusalText(r);
          if (refusedReply.empty()) refusedReply = reply;
          refused.addRaw(JsonObject()
                             .add("to", r)
                             .add("reply", reply)
                             .add("reason", "bounce verification")
                             .add("batv", policy::batv::resultName(checked.result))
                             .str());
          continue;
        }
        batvFailed = true;
      }
    }
    // [relay] rewrite, inbound, as the session does at RCPT: a recipient in relay.domains
    // is the filters' (and the output's) in its internal form.
    std::string internal = relayDomain && snap->rewrite ? snap->rewrite->inbound(r) : "";
    if (!internal.empty() && internal != r) {
      // After an untagging, the address given (the tagged one) is the one named.
      rewritten = filters::AddressRewrite{rewritten ? rewritten->from : r, internal, "rcpt"};
      r = std::move(internal);
    }
    if (rewritten) ctx->rewrites.push_back(std::move(*rewritten));
    ctx->rcpts.push_back(std::move(r));
  }
  // Every recipient refused at RCPT: serve would never see the message.
  if (!opts.rcpts.empty() && ctx->rcpts.empty() && !refusedReply.empty()) {
    JsonObject out;
    out.add("verdict", std::string(filters::verdictName(filters::Verdict::Reject)));
    out.add("reply", refusedReply);
    out.add("score", 0.0);
    out.add("from", ctx->mailFrom);
    out.addRaw("to", JsonArray().str());
    out.addRaw("refused", refused.str());
    out.addRaw("bcc", JsonArray().str());  // a refused message gets no copy
    out.addRaw("filters", JsonObject().str());
    std::printf("%s\n", out.str().c_str());
    return 0;
  }
  ctx->message = message;
  filters::Env env{loop.get(), &resolver, cfg.hostname};

  std::vector<filters::FilterReport> reports;
  std::vector<std::string> authResults;
  std::vector<filters::Header> headers;
  filters::StageOutcome final;
  bool done = false;
  auto stages = std::make_shared<std::vector<filters::Stage>>(
      std::vector<filters::Stage>{filters::Stage::Connect, filters::Stage::Helo, filters::Stage::Mail,
                                  filters::Stage::Rcpt, filters::Stage::Data});
  std::function<void(size_t)> runStage = [&](size_t i) {
    if (i == stages->size()) {
      done = true;
      return;
    }
    if ((*stages)[i] == filters::Stage::Data) {  // as the session: the fields a milter is sent before its filters'
      ctx->sessionHeaders.clear();
      if (batvFailed) ctx->sessionHeaders.push_back({"X-Moat-BATV", "fail"});
      for (const auto& h : headers) ctx->sessionHeaders.push_back(h);
    }
    snap->pipeline->run((*stages)[i], ctx, env, [&, i](filters::StageOutcome out) {
      for (auto& r : out.reports) reports.push_back(r);
      for (auto& a : out.authResults) authResults.push_back(a);
      for (auto& h : out.headers) headers.push_back(h);
      for (auto& e : out.edits) final.edits.push_back(e);
      final.score += out.score;
      if (out.verdict != filters::Verdict::Continue &&
          (final.verdict == filters::Verdict::Continue || final.verdict == filters::Verdict::Tag)) {
        final.verdict = out.verdict;
        final.code = out.code;
        final.enhanced = out.enhanced;
        final.text = out.text;
        final.quarantineReason = out.quarantineReason;
      }
      bool decisive = out.verdict == filters::Verdict::Reject || out.verdict == filters::Verdict::TempFail ||
                      out.verdict == filters::Verdict::Disconnect;
      if (decisive) {
        done = true;
        return;
      }
      runStage(i + 1);
    });
  };
  runStage(0);
  if (!loop.runUntil([&] { return done; }, 120'000)) {
    std::fprintf(stderr, "moat: the filters did not finish within 120 s\n");
    return 1;
  }
  JsonObject out;
  out.add("verdict", std::string(filters::verdictName(final.verdict)));
  if (final.code) out.add("reply", std::to_string(final.code) + " " + final.enhanced + " " + final.text);
  if (!final.quarantineReason.empty()) out.add("quarantine_reason", final.quarantineReason);
  out.add("score", final.score);
  // The envelope as serve's accept line gives it: the recipients after rewriting with the
  // [bcc] copies, what [relay] rewrite changed (at RCPT, and in the header fields), and the
  // copies again; none when the verdict refuses the message. The sender looked up is the one
  // serve looks up: after the filters, before a milter's change (scan applies none).
  std::vector<std::string> queued = ctx->rcpts;
  std::vector<std::string> bcc;
  if (final.verdict != filters::Verdict::Reject && final.verdict != filters::Verdict::TempFail &&
      final.verdict != filters::Verdict::Disconnect)
    bcc = addBccCopies(*snap, ctx->mailFrom, queued);
  out.add("from", ctx->mailFrom);
  out.add("to", queued);
  if (!ctx->rewrites.empty()) out.addRaw("rewritten", filters::rewritesJson(ctx->rewrites));
  out.add("bcc", bcc);
  out.add("authentication_results", filters::authenticationResults(cfg.hostname, authResults));
  if (!refused.empty()) out.addRaw("refused", refused.str());
  JsonArray hs;
  if (batvFailed) hs.add("X-Moat-BATV: fail");  // added at RCPT, before the filters' fields
  for (const auto& h : headers) hs.add(h.name + ": " + h.value);
  out.addRaw("headers", hs.str());
  if (!final.edits.empty()) {  // what delivery would rewrite (strip, Subject prefix)
    JsonArray es;
    for (const auto& e : final.edits)
      es.addRaw(JsonObject().add("offset", e.offset).add("length", e.length).add("why", e.why).str());
    out.addRaw("edits", es.str());
  }
  out.addRaw("filters", reportsJson(reports));
  std::printf("%s\n", out.str().c_str());
  return 0;
}

int runSpf(const std::string& config, const std::string& ip, const std::string& helo, const std::string& mailFrom) {
  policy::Errors errors;
  auto cfg = policy::loadConfig(config, errors);
  for (const auto& e : errors.all()) std::fprintf(stderr, "%s\n", e.str().c_str());
  if (!cfg) return 1;
  auto addr = IpAddress::parse(ip);
  if (!addr) {
    std::fprintf(stderr, "moat: --ip %s is not an IP address\n", ip.c_str());
    return 2;
  }
  uv::Loop loop;
  dns::CaresResolver resolver(loop.get(), cfg->nameservers, static_cast<unsigned>(cfg->dnsTimeout.count()));
  filters::spf::CheckParams params;
  params.ip = *addr;
  params.helo = helo;
  params.mailFrom = mailFrom;
  params.receiver = cfg->hostname;
  std::optional<filters::spf::SpfAnswer> answer;
  filters::spf::checkHost(resolver, params, [&](filters::spf::SpfAnswer a) { answer = std::move(a); });
  if (!loop.runUntil([&] { return answer.has_value(); }, 120'000)) {
    std::fprintf(stderr, "moat: the SPF check did not finish\n");
    return 1;
  }
  std::string text = answer->explanation;
  if (text.empty()) text = answer->mechanism.empty() ? answer->domain : answer->mechanism;
  std::printf("%s %s\n", std::string(filters::spf::resultName(answer->result)).c_str(), text.c_str());
  return 0;
}

int runDkimKeygen(const std::string& domain, const std::string& selector, const std::string& type,
                  const std::string& out, bool replace) {
  std::string txt, error;
  if (!filters::dkim::keygen(type, out, replace, txt, error)) {
    std::fprintf(stderr, "moat: %s\n", error.c_str());
    return 1;
  }
  // A zone-file line; long records are split into 255-octet strings (RFC 1035 §3.3.14).
  std::string quoted;
  for (size_t i = 0; i < txt.size(); i += 255) quoted += (i ? " \"" : "\"") + txt.substr(i, 255) + "\"";
  std::printf("%s._domainkey.%s. IN TXT ( %s )\n", selector.c_str(), domain.c_str(), quoted.c_str());
  return 0;
}

}  // namespace moat::mta::daemon
