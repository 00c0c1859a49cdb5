// mta/server/recipient_verifier.h — recipient verification by asking the next hop
// ([relay] verify_recipients; Postfix's reject_unverified_recipient with verify(8)). For a
// RCPT whose domain is a relay domain routed to smtp: or lmtp: next hops, Moat connects to the
// route's first next hop that answers, in the route's order (the route's TLS and AUTH, as a
// delivery would), sends EHLO (LHLO to an lmtp: one, RFC 2033 §4.1; over TCP or its Unix
// socket), MAIL FROM:<>, RCPT TO:<address>, RSET and QUIT (mta/client/smtp_client.h, probe),
// and answers the client's RCPT with what it learnt: a 2xx makes the address valid, a 5xx
// invalid (550 5.1.1 at RCPT: no bounce is owed later, so no backscatter), anything else
// (4xx, no connection, verify_timeout) unknown (450 4.1.1, or taken with verify_unknown =
// "accept").
//
// All on the event loop: DNS through the Resolver, the probe through the SMTP client, the
// whole of it bounded by verify_timeout (the wait for a probe slot included). Answers are
// kept in a bounded in-memory cache keyed on the lower-cased address and the route's next
// hops (valid: verify_positive_ttl, invalid: verify_negative_ttl, unknown: kUnknownTtl at
// most, so a next hop that is down is not asked once per RCPT). RCPTs for an address whose
// probe is under way wait for that probe; at most kMaxProbesPerHop probes run at once per
// next hop, the others wait in order.
//
// Untrusted input: the next hop's replies (bounded by the SMTP client; quoted in a reply to
// our client only as one printable line of at most kQuotedReply characters). Logs nothing:
// the session logs a `verify` line per RCPT it decided this way.
#pragma once
#include <uv.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "mta/client/smtp_client.h"
#include "mta/dns/resolver.h"
#include "mta/server/snapshot.h"

namespace moat::mta::server {

enum class VerifyResult { Valid, Invalid, Unknown };
const char* verifyResultName(VerifyResult r);  // "valid", "invalid", "unknown"

struct VerifyOutcome {
  VerifyResult result = VerifyResult::Unknown;
  // The next hop's reply to the probe's RCPT (or MAIL), one printable line ("550 5.1.1 no
  // such user"), or why it could not be asked ("connect to 127.0.0.1:2626 failed: ...").
  std::string reply;
  // The next hop asked ("127.0.0.1:2626"; "lmtp:127.0.0.1:24", "lmtp:unix:/run/dovecot/lmtp"
  // for an LMTP one, as the `deliver` line names it), "" when none answered.
  std::string relay;
  bool cached = false;  // from the cache, not a probe of this RCPT's own
};

// The decision on one probe: `error` (the connection or the client failed) or the replies
// to MAIL FROM:<> and RCPT TO. A MAIL refused says nothing about the recipient: unknown.
VerifyOutcome decideProbe(const std::string& error, const client::Reply& mail, const client::Reply& rcpt);

// `text` as one printable line of at most `max` characters, for a reply to our client.
std::string quoteReply(std::string_view text, size_t max);

// Answers by address and route, bounded: at most `maxEntries`, the least recently used
// going first. Times are the loop's milliseconds (uv_now).
class VerifyCache {
 public:
  explicit VerifyCache(size_t maxEntries) : max_(maxEntries) {}
  struct Entry {
    VerifyResult result = VerifyResult::Unknown;
    std::string reply, relay;
    uint64_t expiresMs = 0;
  };
  // The entry for `key` while it has not expired (an expired one is dropped), else null.
  const Entry* find(const std::string& key, uint64_t nowMs);
  void put(const std::string& key, Entry entry);
  size_t size() const { return map_.size(); }
  // "user@example.test\nsmtp:10.0.0.5:25,tls=may": the address lower-cased (ASCII).
  static std::string key(std::string_view address, std::string_view route);

 private:
  size_t max_;
  std::list<std::string> order_;  // least recently used first
  struct Slot {
    Entry entry;
    std::list<std::string>::iterator pos;
  };
  std::unordered_map<std::string, Slot> map_;
};

class RecipientVerifier {
 public:
  static constexpr size_t kMaxEntries = 100'000;     // ~20 MB at most
  static constexpr unsigned kMaxProbesPerHop = 5;    // a mailbox server is not to be flooded
  static constexpr uint64_t kUnknownTtlMs = 60'000;  // a next hop down: asked again after a minute
  static constexpr size_t kQuotedReply = 120;

  RecipientVerifier(uv_loop_t* loop, dns::Resolver* resolver);
  ~RecipientVerifier();
  RecipientVerifier(const RecipientVerifier&) = delete;
  RecipientVerifier& operator=(const RecipientVerifier&) = delete;

  // The route whose next hops verify recipients of `domain` under `c`: verify_recipients on,
  // a relay domain, routed to smtp: or lmtp: next hops; else null (not verified). `routeDomain`, when
  // not empty, is the domain the address has after [relay] rewrite (its route is asked).
  // `sender`: the transaction's MAIL FROM ("" for the null sender), which the routes'
  // senders are matched against, so the probe asks the next hop the mail would go to.
  static const policy::Route* routeToVerify(const policy::Config& c, const std::string& domain,
                                            const std::string& routeDomain = "", std::string_view sender = "");

  using Done = std::function<void(const VerifyOutcome&)>;
  // A cached answer at once (cached = true, `done` not called); else nullopt, and `done`
  // runs later, once, from the loop, within snap's verify_timeout. `route` is one of
  // snap's routes (routeToVerify).
  std::optional<VerifyOutcome> verify(const std::shared_ptr<const Snapshot>& snap, const policy::Route& route,
                                      const std::string& address, Done done);

  size_t cacheSize() const { return cache_.size(); }
  // The probes to `route`'s next hops under way and waiting for a slot (for tests).
  struct Load {
    unsigned active = 0;
    size_t waiting = 0;
  };
  Load load(const policy::Route& route) const;

 private:
  struct Probe;
  struct Hop {
    unsigned active = 0;
    std::deque<std::shared_ptr<Probe>> waiting;
  };
  void start(const std::shared_ptr<Probe>& p);
  void tryAddress(const std::shared_ptr<Probe>& p);
  void asked(const std::shared_ptr<Probe>& p, std::shared_ptr<client::SmtpClient> c, const std::string& relay);
  void finish(const std::shared_ptr<Probe>& p, VerifyOutcome outcome);

  uv_loop_t* loop_;
  dns::Resolver* resolver_;
  VerifyCache cache_{kMaxEntries};
  std::map<std::string, std::shared_ptr<Probe>> inFlight_;  // by cache key
  std::map<std::string, Hop> hops_;                         // by route key
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace moat::mta::server
