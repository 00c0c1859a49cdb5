// mta/daemon/mta_sts_policy.h — the pure parts of MTA-STS (RFC 8461): the _mta-sts TXT
// record, the policy file, its mx patterns, and a bounded HTTP/1.1 response parser for the
// policy fetch. All input is untrusted (DNS, the policy host). No I/O, no logs.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moat::mta::sts {

enum class Mode { Enforce, Testing, None };
std::string_view modeName(Mode m);  // "enforce", "testing", "none"

struct Policy {
  Mode mode = Mode::None;
  std::vector<std::string> mx;  // lower-case patterns: "mx.example.test" or "*.example.test"
  uint32_t maxAge = 0;          // seconds, 0..31557600 (§3.2)
  std::string id;               // the TXT record's id the policy was fetched under
  // Whether `host` (an MX name, any case, no trailing dot) matches one of the patterns.
  bool allows(std::string_view host) const;
};

// RFC 8461 §3.1: of the TXT records at _mta-sts.DOMAIN, exactly one must begin "v=STSv1";
// it needs an id of 1 to 32 letters and digits. Returns that id, or "" (no usable record:
// no policy). `error` says why for the log.
std::string parseTxt(const std::vector<std::string>& records, std::string& error);

// §3.2: "key: value" lines (LF or CRLF); version STSv1 first is not required but present;
// mode, max_age and (for enforce and testing) at least one mx. Unknown keys are ignored.
// False (with `error`) for a malformed policy.
bool parsePolicy(std::string_view body, Policy& out, std::string& error);

// §4.1: a pattern "*.example.test" matches one leftmost label ("mx.example.test", not
// "a.b.example.test" nor "example.test"); otherwise the names must be equal (any case,
// a trailing dot on either side ignored).
bool mxMatches(std::string_view pattern, std::string_view host);

// A bounded HTTP/1.1 response: feed() the bytes as they come, end() at the peer's close.
// Headers at most kMaxHead octets, the body at most `maxBody`. A body is delimited by
// Content-Length or by the close; "Transfer-Encoding: chunked" (or any other coding) is
// refused as an error: a policy host has no need of it for a file of a few lines.
class HttpResponse {
 public:
  static constexpr size_t kMaxHead = 8192;
  explicit HttpResponse(size_t maxBody = 65536) : maxBody_(maxBody) {}
  enum class State { Incomplete, Done, Error };
  State feed(std::string_view data);
  State end();  // the peer closed
  State state() const { return state_; }
  int status() const { return status_; }
  const std::string& body() const { return body_; }
  const std::string& error() const { return error_; }
  // A header's value (first of the name, any case), "" if absent.
  std::string header(std::string_view name) const;

 private:
  State fail(std::string why);
  bool parseHead(std::string_view head);
  size_t maxBody_;
  State state_ = State::Incomplete;
  bool headDone_ = false;
  std::string buf_;  // the head until it is complete
  std::string body_;
  int status_ = 0;
  long long contentLength_ = -1;
  std::vector<std::pair<std::string, std::string>> headers_;
  std::string error_;
};

}  // namespace moat::mta::sts
