// filters/mime/mime_filter.h — the MIME filter: parses the message at the Data stage on the
// thread pool and publishes the tree as MessageContext::mime for the filters after it
// (antivirus, rules, attachments), as deep as they read it (mime::Depth): a gateway with
// none of them only checks the structure against the limits, copying no body.
//
// Config [mime]:
//   max_depth = 20            nesting of multipart / message/rfc822
//   max_parts = 500           parts in the whole message
//   max_decoded_size = "100M" decoded bytes in total
//   max_uris = 10000          distinct URIs kept for the `uri` rules; the rest are dropped
//                             (logged as uris_truncated), the message is not refused
//   on_limit = "reject"       reject | accept: a message past a limit is refused with
//                             554 5.6.0 (RFC 3463: "other or undefined media error"), or
//                             accepted with what could be parsed (later filters see a
//                             partial tree; the limit is in the log detail).
// Untrusted input: the message. Logs through the pipeline's `filter` event: summary
// "parts=N attachments=M" and detail {parts, attachments, limit, uris_truncated}.
#pragma once
#include <memory>

#include "filters/filter.h"
#include "filters/mime/mime.h"
#include "policy/config.h"

namespace moat::filters::mime {

struct FilterConfig {
  Limits limits;
  bool rejectOnLimit = true;
};

// Reads [mime]; problems go to `errors` as FILE:LINE.
FilterConfig readConfig(const policy::Config& config, policy::Errors& errors);

// The result a parsed message gives (exposed for tests).
Result resultFor(const Message& msg, const FilterConfig& config);

// `depth`: the deepest Filter::mimeDepth() of the filters after it.
std::shared_ptr<const Filter> makeMimeFilter(const policy::Config& config, policy::Errors& errors,
                                             Depth depth = Depth::Text);

}  // namespace moat::filters::mime
