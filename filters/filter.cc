// filters/filter.cc — the small helpers of filters/filter.h, in their own library
// (moat_filter_api) so every filter can link them without linking the pipeline.
#include "filters/filter.h"

#include "filters/mime/mime.h"

namespace moat::filters {

std::string_view stageName(Stage stage) {
  switch (stage) {
    case Stage::Connect: return "connect";
    case Stage::Helo: return "helo";
    case Stage::Mail: return "mail";
    case Stage::Rcpt: return "rcpt";
    case Stage::Data: return "data";
  }
  return "?";
}

std::string_view verdictName(Verdict v) {
  switch (v) {
    case Verdict::Continue: return "continue";
    case Verdict::Tag: return "tag";
    case Verdict::Quarantine: return "quarantine";
    case Verdict::Reject: return "reject";
    case Verdict::TempFail: return "tempfail";
    case Verdict::Disconnect: return "disconnect";
  }
  return "?";
}

Result Result::pass(std::string summary) {
  Result r;
  r.summary = std::move(summary);
  return r;
}

static Result withReply(Verdict verdict, int code, std::string enhanced, std::string text, std::string summary) {
  Result r;
  r.verdict = verdict;
  r.code = code;
  r.enhanced = std::move(enhanced);
  r.text = std::move(text);
  r.summary = std::move(summary);
  return r;
}

Result Result::reject(int code, std::string enhanced, std::string text, std::string summary) {
  return withReply(Verdict::Reject, code, std::move(enhanced), std::move(text), std::move(summary));
}

Result Result::tempFail(int code, std::string enhanced, std::string text, std::string summary) {
  return withReply(Verdict::TempFail, code, std::move(enhanced), std::move(text), std::move(summary));
}

Result Result::quarantine(std::string reason, std::string summary) {
  Result r;
  r.verdict = Verdict::Quarantine;
  r.quarantineReason = std::move(reason);
  r.summary = std::move(summary);
  return r;
}

mime::Depth Filter::mimeDepth() const { return mime::Depth::Structure; }

}  // namespace moat::filters
