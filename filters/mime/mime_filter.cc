// filters/mime/mime_filter.cc — see mime_filter.h.
#include "filters/mime/mime_filter.h"

namespace moat::filters::mime {

FilterConfig readConfig(const policy::Config& config, policy::Errors& errors) {
  FilterConfig fc;
  auto s = config.section("mime", errors);
  fc.limits.maxDepth = static_cast<unsigned>(s.getInt("max_depth", 20, 1, 1000));
  fc.limits.maxParts = static_cast<unsigned>(s.getInt("max_parts", 500, 1, 1000000));
  fc.limits.maxDecodedSize = s.getSize("max_decoded_size", 100ull << 20);
  fc.limits.maxUris = static_cast<unsigned>(s.getInt("max_uris", 10000, 1, 1000000));
  fc.rejectOnLimit = s.getEnum("on_limit", "reject", {"reject", "accept"}) == "reject";
  s.rejectUnknownKeys();
  return fc;
}

Result resultFor(const Message& msg, const FilterConfig& config) {
  std::string summary =
      "parts=" + std::to_string(msg.partCount) + " attachments=" + std::to_string(msg.attachments.size());
  Result r;
  if (msg.limitExceeded) {
    summary += " limit=" + msg.limitReason;
    if (config.rejectOnLimit)
      r = Result::reject(554, "5.6.0", "Message structure exceeds limits (" + msg.limitReason + ")", summary);
  }
  if (r.verdict == Verdict::Continue) r.summary = summary;
  r.detail.add("parts", msg.partCount);
  r.detail.add("attachments", static_cast<uint64_t>(msg.attachments.size()));
  if (msg.limitExceeded) r.detail.add("limit", msg.limitReason);
  // Not a limit that refuses the message: the rules saw the first max_uris.
  if (msg.urisTruncated) r.detail.add("uris_truncated", true);
  return r;
}

namespace {

class MimeFilter final : public Filter {
 public:
  static constexpr size_t kInlineParseBytes = 64 * 1024;
  MimeFilter(FilterConfig config, Depth depth) : config_(config), depth_(depth) {}
  std::string_view name() const override { return "mime"; }
  Stage stage() const override { return Stage::Data; }

  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override {
    auto parsed = std::make_shared<std::shared_ptr<const Message>>();
    auto limits = config_.limits;
    auto depth = depth_;
    auto raw = ctx->message;  // the caller keeps the bytes alive for the Data stage
    if (raw.size() <= kInlineParseBytes || parseWork(raw, depth) <= kInlineParseBytes) {
      // A small message, or a large one whose body the parse does not touch (one plain
      // part at Depth::Structure), parses in microseconds: cheaper here than two thread
      // switches.
      ctx->mime = parse(raw, limits, depth);
      done(resultFor(*ctx->mime, config_));
      return;
    }
    env.offload([parsed, raw, limits, depth] { *parsed = parse(raw, limits, depth); },
                [ctx, parsed, done = std::move(done), config = config_] {
                  ctx->mime = *parsed;
                  done(resultFor(**parsed, config));
                },
                raw.size());
  }

 private:
  FilterConfig config_;
  Depth depth_;
};

}  // namespace

std::shared_ptr<const Filter> makeMimeFilter(const policy::Config& config, policy::Errors& errors, Depth depth) {
  return std::make_shared<MimeFilter>(readConfig(config, errors), depth);
}

}  // namespace moat::filters::mime
