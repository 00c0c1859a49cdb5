// mta/daemon/https_client.h — one HTTPS/1.1 exchange on the loop (RFC 9110, RFC 9112 over
// TLS, RFC 2818 §3.1 server identity): the host's addresses through the Resolver, a
// net::Connection per address tried, the certificate verified against the caller's client
// context and the host name (SNI too), the request written whole, the response read by
// sts::HttpResponse within its bounds. Shared by the MTA-STS policy fetch (mta_sts.h, RFC 8461
// §3.3) and the TLS report upload (RFC 8460 §5.2). Untrusted input: DNS answers and the
// server's response (bounded: HttpResponse::kMaxHead of head, Request::maxBody of body, one
// timeout for the whole exchange, at most kMaxAddresses addresses). Logs nothing: the callers
// log the outcome.
#pragma once
#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "mta/daemon/mta_sts_policy.h"
#include "mta/dns/resolve_host.h"
#include "mta/dns/resolver.h"
#include "mta/tls/tls.h"

namespace moat::mta::https {

// The local address an exchange's connection leaves from, per family of the server's address
// ([queue] source_ipv4 / source_ipv6: the address the organisation's reputation is tied to);
// none: the kernel picks.
struct Source {
  std::optional<IpAddress> ipv4, ipv6;
};

struct Request {
  std::string host;  // a DNS name: looked up, sent as SNI and verified in the certificate
  uint16_t port = 443;
  std::string text;  // the whole request: request line, headers (Host included), body
  size_t maxBody = 65536;
  // What the exchange is, for the timeout's error text: "policy fetch" gives "policy fetch
  // timed out".
  std::string what = "HTTPS request";
  Source source;
};

// The host's addresses (of `families`, at most kMaxAddresses, in resolveHost's order) are
// tried in order until one gives an HTTP reply, each within what is left of `timeoutMs`: a
// failure before the reply's head (connect, TLS, a close) moves on to the next address;
// once the server has answered, its answer is the exchange's. `done(response, error)` runs
// once on the loop: `response` non-null with a whole response (any status), else null with
// the error. The returned function cancels the exchange (`done` then runs at once with the
// error "cancelled"); it does nothing once `done` has run. A null `tls` fails at once ("no
// TLS client context"), before this returns.
constexpr size_t kMaxAddresses = 10;
using Done = std::function<void(const sts::HttpResponse* response, const std::string& error)>;
std::function<void()> exchange(uv_loop_t* loop, dns::Resolver& resolver, std::shared_ptr<tls::TlsContext> tls,
                               uint64_t timeoutMs, Request request, Done done, dns::Families families = {});

}  // namespace moat::mta::https
