// filters/pipeline.h — runs the filters of one stage in order and folds their results into
// one outcome: the first Reject / TempFail / Disconnect ends the stage; Tag scores add up;
// a Quarantine is remembered and lets later filters still reject. Every filter's result is
// kept for the `filter` log event and Authentication-Results. Data-stage edits (edit.h) are
// collected in filter order; one that collides with an earlier one is dropped and logged
// (`edit_dropped`, warn); the rest, sorted, are in the outcome and in ctx->edits. A filter
// that edited the message with those applied (the milters) returns the whole set, composed
// (Result::replacesEdits). Header fields and envelope changes (a milter's) are collected in
// filter order (and kept in ctx->headers, ctx->envelope) for the session to apply.
#pragma once
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "filters/filter.h"
#include "policy/config.h"
#include "policy/rewrite_map.h"

namespace moat::filters {

struct FilterReport {
  std::string name;
  Result result;
  int64_t elapsedUs = 0;
};

struct StageOutcome {
  Verdict verdict = Verdict::Continue;  // Continue, Tag, Quarantine, Reject, TempFail, Disconnect
  int code = 0;
  std::string enhanced, text;  // the reply for Reject / TempFail / Disconnect
  double score = 0;
  std::string quarantineReason;
  std::vector<Header> headers;
  std::vector<Edit> edits;  // sorted, no collisions (addEdit); dropped with a rejected message
  // A filter's edits (all of them kept) made the message 7-bit MIME (Result::convertedTo7Bit):
  // the envelope's 8-bit flag is cleared.
  bool convertedTo7Bit = false;
  std::vector<EnvelopeChange> envelope;  // in filter order; dropped with a rejected message
  std::vector<std::string> authResults;
  std::vector<FilterReport> reports;
  // The `filters` field of log events: {"spf":"pass","dkim":"pass",...}
  std::string logJson() const;
};

class Pipeline {
 public:
  explicit Pipeline(std::vector<std::shared_ptr<const Filter>> filters) : filters_(std::move(filters)) {}
  // Builds every configured filter; problems go to `errors` with FILE:LINE. `rewrite`: the
  // [relay] rewrite map the snapshot loaded (the session rewrites recipients with it too).
  static std::shared_ptr<const Pipeline> build(const policy::Config& config, policy::Errors& errors,
                                               std::shared_ptr<const policy::RewriteMap> rewrite = nullptr);

  bool hasStage(Stage stage) const;
  const std::vector<std::shared_ptr<const Filter>>& filters() const { return filters_; }
  void run(Stage stage, std::shared_ptr<MessageContext> ctx, const Env& env,
           std::function<void(StageOutcome)> done) const;

 private:
  std::vector<std::shared_ptr<const Filter>> filters_;
};

}  // namespace moat::filters
