// filters/rewrite/address_rewrite.cc — see address_rewrite.h.
#include "filters/rewrite/address_rewrite.h"

#include "mta/runtime/log.h"
#include "mta/runtime/scan.h"

namespace moat::filters::rewrite {

namespace {

using Span = std::pair<size_t, size_t>;

bool isBlank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

// Past the quoted string that starts at v[i] ('"'), or npos when it does not end.
size_t skipQuoted(std::string_view v, size_t i) {
  for (++i; i < v.size(); ++i) {
    if (v[i] == '\\') {
      ++i;
    } else if (v[i] == '"') {
      return i + 1;
    }
  }
  return std::string_view::npos;
}

// Past the (nested) comment that starts at v[i] ('('), or npos when it does not end.
size_t skipComment(std::string_view v, size_t i) {
  int depth = 0;
  for (; i < v.size(); ++i) {
    if (v[i] == '\\') {
      ++i;
    } else if (v[i] == '(') {
      ++depth;
    } else if (v[i] == ')' && --depth == 0) {
      return i + 1;
    }
  }
  return std::string_view::npos;
}

// The words of v[s, e) that are not blanks or comments (a quoted string is part of its
// word). The range holds no unbalanced quote or comment (addressSpans checked).
std::vector<Span> words(std::string_view v, size_t s, size_t e) {
  std::vector<Span> out;
  size_t i = s;
  while (i < e) {
    if (isBlank(v[i])) {
      ++i;
    } else if (v[i] == '(') {
      i = skipComment(v, i);
    } else {
      size_t start = i;
      while (i < e && !isBlank(v[i]) && v[i] != '(') i = v[i] == '"' ? skipQuoted(v, i) : i + 1;
      out.emplace_back(start, i);
    }
  }
  return out;
}

// One member of the list, v[s, e): a mailbox (name-addr or addr-spec), or nothing.
bool member(std::string_view v, size_t s, size_t e, size_t angleOpen, size_t angleClose, std::vector<Span>& out) {
  if (angleOpen == std::string_view::npos) {
    auto w = words(v, s, e);
    if (w.size() > 1) return false;  // "John jsmith@x": a display name needs the angle brackets
    if (w.size() == 1) out.push_back(w[0]);
    return true;
  }
  if (!words(v, angleClose + 1, e).empty()) return false;  // text after the angle-addr
  auto inner = words(v, angleOpen + 1, angleClose);        // blanks around it (folding) are allowed
  if (inner.empty()) return true;                          // "<>"
  // Blanks inside ("<a @b>") or a source route ("<@a,@b:x@y>"): not an address Moat rewrites.
  if (inner.size() > 1) return false;
  if (v.substr(inner[0].first, inner[0].second - inner[0].first).find(':') != std::string_view::npos) return false;
  out.push_back(inner[0]);
  return true;
}

std::string_view lowerName(std::string_view name, std::string& buf) {
  buf.assign(name);
  for (auto& c : buf)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  return buf;
}

}  // namespace

std::optional<std::vector<Span>> addressSpans(std::string_view v) {
  std::vector<Span> out;
  size_t segStart = 0, angleOpen = std::string_view::npos, angleClose = 0;
  bool inGroup = false;
  size_t i = 0;
  auto endMember = [&](size_t end) {
    bool ok = member(v, segStart, end, angleOpen, angleClose, out);
    segStart = end + 1;
    angleOpen = std::string_view::npos;
    return ok;
  };
  while (i < v.size()) {
    char c = v[i];
    if (c == '"') {
      i = skipQuoted(v, i);
      if (i == std::string_view::npos) return std::nullopt;
    } else if (c == '(') {
      i = skipComment(v, i);
      if (i == std::string_view::npos) return std::nullopt;
    } else if (c == ')' || c == '>') {
      return std::nullopt;
    } else if (c == '<') {
      if (angleOpen != std::string_view::npos) return std::nullopt;  // a second angle-addr
      angleOpen = i;
      // To its '>', skipping quoted local parts; a ',' ';' or '(' before it is no address.
      size_t j = i + 1;
      while (j < v.size() && v[j] != '>') {
        if (v[j] == '"') {
          j = skipQuoted(v, j);
          if (j == std::string_view::npos) return std::nullopt;
          continue;
        }
        if (v[j] == '<' || v[j] == ',' || v[j] == ';' || v[j] == '(') return std::nullopt;
        ++j;
      }
      if (j >= v.size()) return std::nullopt;
      angleClose = j;
      i = j + 1;
    } else if (c == ':') {
      // A group's display name ends here (RFC 5322 §3.4: "Team: a@x, b@y;").
      if (inGroup || angleOpen != std::string_view::npos) return std::nullopt;
      inGroup = true;
      segStart = i + 1;
      ++i;
    } else if (c == ',') {
      if (!endMember(i)) return std::nullopt;
      ++i;
    } else if (c == ';') {
      if (!inGroup || !endMember(i)) return std::nullopt;
      inGroup = false;
      ++i;
    } else {
      ++i;
    }
  }
  if (!endMember(v.size())) return std::nullopt;
  return out;
}

HeaderRewrites rewriteHeaderFields(std::string_view message, const std::vector<std::string_view>& fields,
                                   const std::function<std::string(std::string_view)>& map) {
  HeaderRewrites out;
  std::string_view header = mta::headerBlock(message);
  std::string buf, want;
  size_t pos = 0;
  while (pos < header.size()) {
    // One field: its first line and every continuation line (beginning with a blank).
    size_t start = pos, end = pos;
    do {
      size_t nl = header.find('\n', end);
      end = nl == std::string_view::npos ? header.size() : nl + 1;
    } while (end < header.size() && (header[end] == ' ' || header[end] == '\t'));
    pos = end;
    size_t colon = header.find(':', start);
    if (colon == std::string_view::npos || colon >= end) continue;
    std::string_view name = header.substr(start, colon - start);
    const std::string_view* spelled = nullptr;
    for (const auto& f : fields)
      if (lowerName(name, buf) == lowerName(f, want)) spelled = &f;
    if (!spelled) continue;
    size_t valueAt = colon + 1;
    size_t valueEnd = end;
    while (valueEnd > valueAt && (header[valueEnd - 1] == '\n' || header[valueEnd - 1] == '\r')) --valueEnd;
    std::string_view value = header.substr(valueAt, valueEnd - valueAt);
    auto spans = addressSpans(value);
    if (!spans) {
      out.skipped.emplace_back(name);
      continue;
    }
    for (const auto& [a, b] : *spans) {
      std::string_view address = value.substr(a, b - a);
      std::string to = map(address);
      if (to.empty() || to == address) continue;
      std::string where = "header:" + std::string(*spelled);
      out.edits.push_back({valueAt + a, b - a, to, where + " " + std::string(address) + " rewritten to " + to});
      out.rewrites.push_back({std::string(address), to, where});
    }
  }
  return out;
}

const std::vector<std::string_view> kOutboundFields = {"From",        "Sender",        "Reply-To",  "To",       "Cc",
                                                       "Resent-From", "Resent-Sender", "Resent-To", "Resent-Cc"};
const std::vector<std::string_view> kInboundFields = {"To", "Cc", "Resent-To", "Resent-Cc"};

namespace {

class RewriteFilter : public Filter {
 public:
  explicit RewriteFilter(std::shared_ptr<const policy::RewriteMap> map) : map_(std::move(map)) {}
  std::string_view name() const override { return "address_rewrite"; }
  Stage stage() const override { return Stage::Data; }

  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override {
    bool outbound = isOutbound(*ctx);
    auto found = std::make_shared<HeaderRewrites>();
    auto work = [ctx, outbound, found, map = map_] {
      // Outbound, the internal addresses among the recipients shown (a colleague in Cc:)
      // would leak as much as the sender's: as Exchange does, every address field, the
      // resent ones (RFC 5322 §3.6.6: a message forwarded on) as their counterparts.
      if (outbound)
        *found =
            rewriteHeaderFields(ctx->message, kOutboundFields, [&](std::string_view a) { return map->outbound(a); });
      else
        *found = rewriteHeaderFields(ctx->message, kInboundFields, [&](std::string_view a) { return map->inbound(a); });
    };
    auto after = [ctx, outbound, found, map = map_, done = std::move(done)] {
      Result r = Result::pass("none");
      r.detail.add("direction", outbound ? "outbound" : "inbound");
      // A sender a milter set (the session applies it after this stage, ctx->envelope) is the
      // one that leaves: the milters run before the rewriting, so it is rewritten with a change
      // of its own, applied after the milter's (its RET and ENVID kept).
      std::optional<std::string> milterSender;
      for (const auto& c : ctx->envelope)
        if (c.kind == EnvelopeChange::Kind::ChgFrom) milterSender = c.address;
      if (outbound && milterSender && !milterSender->empty()) {
        std::string to = map->outbound(*milterSender);
        if (!to.empty() && to != *milterSender) {
          ctx->rewrites.push_back({*milterSender, to, "mail_from"});
          EnvelopeChange c;
          c.kind = EnvelopeChange::Kind::ChgFrom;
          c.address = std::move(to);
          c.source = "address_rewrite";
          r.envelope.push_back(std::move(c));
          r.summary = "rewritten";
        }
      } else if (outbound && !milterSender && !ctx->mailFrom.empty()) {
        std::string to = map->outbound(ctx->mailFrom);
        if (!to.empty() && to != ctx->mailFrom) {
          ctx->rewrites.push_back({ctx->mailFrom, to, "mail_from"});
          ctx->mailFrom = std::move(to);
          r.summary = "rewritten";
        }
      }
      // Inbound, a malformed To: is common in spam: no warning for each one.
      for (const auto& name : found->skipped) {
        auto line = outbound ? mta::log::warn("rewrite_skipped") : mta::log::info("rewrite_skipped");
        line.add("session", ctx->sessionId)
            .add("queue_id", ctx->queueId)
            .add("header", name)
            .add("reason", "cannot parse the address list");
      }
      if (!found->edits.empty()) r.summary = "rewritten";
      for (auto& x : found->rewrites) ctx->rewrites.push_back(std::move(x));
      r.edits = std::move(found->edits);
      done(std::move(r));
    };
    // A hostile header section is read on the pool, as the other header readers do.
    if (largeHeaderSection(ctx->message)) {
      env.offload(std::move(work), std::move(after), ctx->message.size());
      return;
    }
    work();
    after();
  }

 private:
  // Mail a relay client sends on to the internet: a recipient it gave is outside
  // relay.domains (the session notes it at RCPT, before rewriting turns an external address
  // of ours into an internal one that is no relay domain).
  static bool isOutbound(const MessageContext& ctx) {
    return (ctx.fromRelayNetwork || ctx.authenticated) && ctx.relayed;
  }

  std::shared_ptr<const policy::RewriteMap> map_;
};

}  // namespace

std::shared_ptr<const Filter> makeRewriteFilter(std::shared_ptr<const policy::RewriteMap> map) {
  if (!map) return nullptr;
  return std::make_shared<RewriteFilter>(std::move(map));
}

}  // namespace moat::filters::rewrite
