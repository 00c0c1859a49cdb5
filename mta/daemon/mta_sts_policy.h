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

// The policy cache file (RFC 8461 §5.1: a policy outlives a restart): a first line
// "moat-mta-sts-cache 1", one line per policy "DOMAIN EXPIRES ID MODE MAX_AGE MX,MX,..." (EXPIRES
// in Unix seconds, "-" for no mx), and a last line "end COUNT". Read back through
// parsePolicy, so a policy from the file is held to the same rules as one fetched.
struct CachedPolicy {
  std::string domain;
  Policy policy;
  int64_t expires = 0;  // Unix seconds
};
// At most `maxEntries` lines and `maxBytes` octets: the policies that expire last are kept.
// A domain that cannot be written on one line (a space or a control character) is left out.
std::string encodeCache(std::vector<CachedPolicy> entries, size_t maxEntries, size_t maxBytes);
// The most octets `domain`'s line can take in the file, whatever its expiry: what the
// in-memory cache counts a policy as, so that what it holds fits the file's bound.
size_t cacheLineBytes(const std::string& domain, const Policy& policy);
// False (with `error`) for a file that is not one encodeCache() wrote, or has more than
// `maxEntries` policies. Policies expired at `now` (Unix seconds) are left out; an expiry
// further away than the policy's max_age (the clock went back) is brought back to it.
bool decodeCache(std::string_view text, int64_t now, size_t maxEntries, std::vector<CachedPolicy>& out,
                 std::string& error);

// A bounded HTTP/1.1 response: feed() the bytes as they come, end() at the peer's close.
// Headers at most kMaxHead octets, the body at most `maxBody` (after chunked decoding). A
// body is delimited by Content-Length, by "Transfer-Encoding: chunked" (RFC 9112 §7.1: each
// chunk-size line, extensions included, at most kMaxChunkLine octets, the trailer section at
// most kMaxHead; malformed chunking is an error) or by the close. Any other transfer coding,
// or both Transfer-Encoding and Content-Length (RFC 9112 §6.3), is an error.
class HttpResponse {
 public:
  static constexpr size_t kMaxHead = 8192;
  static constexpr size_t kMaxChunkLine = 1024;
  explicit HttpResponse(size_t maxBody = 65536) : maxBody_(maxBody) {}
  enum class State { Incomplete, Done, Error };
  State feed(std::string_view data);
  State end();  // the peer closed
  State state() const { return state_; }
  int status() const { return status_; }
  const std::string& body() const { return body_; }
  const std::string& error() const { return error_; }
  bool headDone() const { return headDone_; }  // the status line and headers came whole
  // A header's value (first of the name, any case), "" if absent.
  std::string header(std::string_view name) const;

 private:
  // Where chunked decoding is: a chunk-size line, chunk data, the CRLF after it, a trailer line.
  enum class Chunk { Size, Data, DataEnd, Trailer };
  State fail(std::string why);
  bool parseHead(std::string_view head);
  State feedChunked(std::string_view data);
  size_t maxBody_;
  State state_ = State::Incomplete;
  bool headDone_ = false;
  std::string buf_;  // the head until it is complete; then (chunked) the line being read
  std::string body_;
  int status_ = 0;
  long long contentLength_ = -1;
  bool chunked_ = false;
  Chunk chunk_ = Chunk::Size;
  size_t chunkLeft_ = 0;     // octets of chunk data still to come
  size_t trailerBytes_ = 0;  // the trailer section so far
  std::vector<std::pair<std::string, std::string>> headers_;
  std::string error_;
};

}  // namespace moat::mta::sts
