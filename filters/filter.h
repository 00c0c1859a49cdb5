// filters/filter.h — the one interface every filter implements (DESIGN.md, decision 3).
//
// A Filter is built once per policy snapshot from the config (bad policy is rejected at
// load time with FILE:LINE through policy::Errors), is immutable and thread-safe, and runs
// per message through run(). Filters run in a stage (connect, helo, mail, rcpt, data) and
// end with one closed Result. DNS goes through env.resolver on the loop thread; CPU-heavy
// work (DKIM crypto, antivirus, big regex scans, MIME decoding) goes to the thread pool
// through env.offload. A filter never includes the SMTP session (DESIGN.md, Structure).
//
// Lookups have three outcomes — found, not found, temporary error — and a temporary error
// becomes a TempFail or a temperror result, never a silent accept and never a 5xx.
#pragma once
#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "filters/edit.h"
#include "mta/dns/resolver.h"
#include "mta/runtime/ip.h"
#include "mta/runtime/json.h"
#include "mta/runtime/scan.h"
#include "mta/runtime/uv.h"

namespace moat::filters {

namespace mime {
struct Message;              // filters/mime/mime.h
enum class Depth : uint8_t;  // filters/mime/mime.h
}

enum class Stage { Connect, Helo, Mail, Rcpt, Data };
std::string_view stageName(Stage stage);

enum class Verdict { Continue, Tag, Quarantine, Reject, TempFail, Disconnect };
std::string_view verdictName(Verdict verdict);

struct Header {
  std::string name;
  std::string value;  // unfolded; the writer folds long values
  // Placed above the gateway's own Received field rather than below it (a milter's insert at
  // index 0: the top of the header as the milter saw it).
  bool aboveReceived = false;
};

// Data stage: a change of the envelope a filter asks for (a milter's SMFIR_ADDRCPT,
// SMFIR_ADDRCPT_PAR, SMFIR_DELRCPT, SMFIR_CHGFROM). The filter has checked the address (as
// the SMTP server checks MAIL and RCPT) and the parameters; the session applies the changes,
// in order, to the envelope it queues. Routed like any recipient, without relay control.
struct EnvelopeChange {
  enum class Kind { AddRcpt, DelRcpt, ChgFrom } kind = Kind::AddRcpt;
  std::string address;               // without <>; "" is the null sender (ChgFrom only)
  std::string notify, orcpt;         // AddRcpt: RFC 3461 NOTIFY and ORCPT, checked, or empty
  std::string ret, envid;            // ChgFrom: RFC 3461 RET and ENVID, checked, or empty
  std::vector<std::string> ignored;  // ESMTP parameters not applied (unknown here), as sent
  std::string source;                // who asked, for the log: the milter's name
};
std::string_view envelopeChangeName(EnvelopeChange::Kind kind);  // "add_rcpt", "del_rcpt", "chg_from"

struct Result {
  Verdict verdict = Verdict::Continue;
  // Reject / TempFail / Disconnect: the SMTP reply, e.g. 550 "5.7.1" "Message rejected ...".
  int code = 0;
  std::string enhanced;
  std::string text;
  double score = 0;              // spam-score contribution (rules); shown in the log
  std::vector<Header> headers;   // to prepend at delivery (DESIGN.md, decision 6)
  // Data stage: byte edits of ctx->message (filters/edit.h), applied at delivery. An edit
  // that collides with an earlier filter's is dropped (the pipeline logs it).
  std::vector<Edit> edits;
  // Data stage: with `edits` the message is 7-bit MIME (the DKIM signer converts an 8-bit
  // body before it signs, RFC 6376 §5.3): it is stored and delivered without BODY=8BITMIME.
  bool convertedTo7Bit = false;
  std::vector<EnvelopeChange> envelope;  // Data stage: envelope changes, applied before queueing
  // Data stage: `edits` are the whole set of edits of ctx->message, replacing the ones
  // accepted so far (ctx->edits) rather than added to them: a filter that was shown the
  // message with those applied (a milter) composed its edits with them (composeEdits).
  bool replacesEdits = false;
  std::vector<std::string> authResults;  // RFC 8601 resinfo, e.g. "spf=pass smtp.mailfrom=example.test"
  std::string summary;           // short result for the log: "pass", "clean", "FOUND Eicar" ...
  std::string quarantineReason;  // Quarantine: why, kept with the message
  mta::JsonObject detail;        // more log fields for the `filter` event

  // Inline, so the filter libraries that moat_filters links (SPF, DKIM, ARC) use them too.
  static Result pass(std::string summary = "pass") { return make(Verdict::Continue, 0, "", "", std::move(summary)); }
  static Result reject(int code, std::string enhanced, std::string text, std::string summary = "reject") {
    return make(Verdict::Reject, code, std::move(enhanced), std::move(text), std::move(summary));
  }
  static Result tempFail(int code, std::string enhanced, std::string text, std::string summary = "temperror") {
    return make(Verdict::TempFail, code, std::move(enhanced), std::move(text), std::move(summary));
  }
  static Result quarantine(std::string reason, std::string summary = "quarantine") {
    Result r = make(Verdict::Quarantine, 0, "", "", std::move(summary));
    r.quarantineReason = std::move(reason);
    return r;
  }
  // Any verdict with its reply (code 0 and empty texts for none).
  static Result make(Verdict verdict, int code, std::string enhanced, std::string text, std::string summary) {
    Result r;
    r.verdict = verdict;
    r.code = code;
    r.enhanced = std::move(enhanced);
    r.text = std::move(text);
    r.summary = std::move(summary);
    return r;
  }
};

// What the authentication filters found; later filters (DMARC) read earlier ones.
struct SpfOutcome {
  bool checked = false;
  std::string result;       // none neutral pass fail softfail temperror permerror
  std::string identity;     // "mailfrom" or "helo"
  std::string domain;       // the domain checked
  std::string explanation;  // exp= text or the default, for fail
};

struct DkimOutcome {
  std::string result;     // pass fail neutral temperror permerror (policy = RFC 8601 names)
  std::string domain;     // d=
  std::string selector;   // s=
  std::string bPrefix;    // the first characters of b= (header.b)
  std::string algorithm;  // a=
  std::string reason;     // for fail/permerror
};

// ARC (RFC 8617), read by DMARC: a passing chain whose latest sealer is trusted
// ([arc] trusted_sealers) overrides a DMARC reject or quarantine.
struct ArcOutcome {
  bool checked = false;
  std::string result;    // none pass fail
  std::string sealer;    // d= of the latest ARC-Seal (lower-case), when it could be read
  int instances = 0;     // N, the latest instance
  bool trusted = false;  // pass, and `sealer` is one of [arc] trusted_sealers
};

struct DmarcOutcome {
  bool checked = false;
  std::string result;   // none pass fail temperror permerror
  std::string fromDomain;
  std::string policy;   // none quarantine reject (p= or sp= as applied)
  std::string applied;  // what Moat did: none, quarantine, reject, tag, override
  // For aggregate reports (RFC 7489 §7.2), set when a DMARC record applied (policy not empty):
  std::string recordDomain;            // where the record was found: the report's policy domain
  std::string adkim, aspf, p, sp, fo;  // the record as published (policy_published)
  int pct = 100;
  bool spfAligned = false, dkimAligned = false;  // the DMARC-aligned results
  std::string disposition;                       // none quarantine reject: what Moat did (Appendix C DispositionType)
  std::string overrideReason;                    // "" or an Appendix C PolicyOverrideType: trusted_forwarder,
                                                 // local_policy (the config acted more mildly), sampled_out (pct=)
  std::string overrideComment;                   // with trusted_forwarder by ARC: "arc=pass sealer=D"
};

// One address the address rewriting ([relay] rewrite) changed, for the `accept` line.
struct AddressRewrite {
  std::string from, to;
  std::string where;  // "rcpt", "mail_from", "header:From", "header:To"...
};
// The `rewritten` field of the accept line and of `moat scan`: [{"from":..,"to":..,"where":..}, ...].
std::string rewritesJson(const std::vector<AddressRewrite>& rewrites);

// "Authentication-Results" value per RFC 8601: "host; spf=pass ...; dkim=..." or
// "host; none" when nothing was checked.
std::string authenticationResults(const std::string& authservId, const std::vector<std::string>& resinfo);
// The resinfo of the gateway's Authentication-Results field: `resinfo` with "METHOD=none
// (not checked...)" added for each of spf, dkim and dmarc no check reported (CONTRACT.md).
std::vector<std::string> gatewayAuthResults(std::vector<std::string> resinfo, bool outbound);

// The header fields Moat prepends to a message at delivery, in delivery order (DESIGN.md
// decision 6): the `added` fields placed aboveReceived, the Received field (`received`; none
// when empty), Authentication-Results (`authResults`, the value), the session's fields
// (`sessionHeaders`: the earlier stages' and X-Moat-BATV), the other `added` fields (the Data
// filters', in filter order). The session stores them with the message; a milter is sent
// them as delivery will place them.
std::vector<Header> gatewayHeaders(const std::string& received, const std::string& authResults,
                                   const std::vector<Header>& sessionHeaders, const std::vector<Header>& added);

// Everything known about one message (or, before MAIL, one session). Owned by a
// shared_ptr so an in-flight filter keeps it alive if the client disconnects.
struct MessageContext {
  // Session
  std::string sessionId;
  mta::IpAddress clientIp;
  uint16_t clientPort = 0;  // the client's TCP port (as the PROXY header gave it, behind a balancer)
  std::string clientName;   // verified reverse DNS, or empty
  std::string helo;
  bool tls = false;
  std::string tlsVersion;  // Data stage: the TLS protocol ("TLSv1.3") when tls, else empty
  bool authenticated = false;
  std::string authUser;
  bool fromRelayNetwork = false;  // client is in relay.networks: outbound mail
  // Envelope
  std::string mailFrom;  // without <>; empty for the null sender
  std::vector<std::string> rcpts;
  std::string currentRcpt;  // during the Rcpt stage
  bool smtputf8 = false;    // Data stage: MAIL carried SMTPUTF8 (RFC 6531)
  std::string ret, envid;   // Data stage: MAIL's RFC 3461 RET and ENVID (as given), or empty
  // A recipient outside relay.domains (as the client gave it, before any rewriting or
  // alias) was taken: the message leaves for the internet.
  bool relayed = false;
  std::string queueId;
  // The message as received: CRLF line endings, dot-unstuffed, without the gateway's own
  // headers. Valid during the Data stage; backed by memory the caller owns.
  std::string_view message;
  std::shared_ptr<const mime::Message> mime;  // set by the MIME filter, first at Data
  // Data stage: the value of the gateway's own Received field (CRLF-folded), prepended at
  // delivery; milters are sent it first in the header. Empty when there is none (moat scan).
  std::string received;
  // The edits accepted so far in this Data stage, sorted (the pipeline keeps it): a filter
  // that must see the message as delivered (the DKIM signer) applies them to `message`.
  std::vector<Edit> edits;
  // Data stage: the header fields the session prepends below Authentication-Results (the
  // earlier stages' and X-Moat-BATV), set before the Data filters run, and the ones the Data
  // filters added so far (Result::headers, in filter order; the pipeline keeps it): a milter
  // is sent them where delivery places them (gatewayHeaders).
  std::vector<Header> sessionHeaders;
  std::vector<Header> headers;
  // Data stage: the envelope changes asked for so far (Result::envelope, in filter order; the
  // pipeline keeps it), which the session applies after the stage: the address rewriting
  // rewrites a sender a milter set.
  std::vector<EnvelopeChange> envelope;
  // Results so far
  // The Authentication-Results resinfo so far: the session's and the earlier stages' (the
  // session sets them before the Data stage), then each filter's as the pipeline takes it.
  std::vector<std::string> authResults;
  SpfOutcome spfMailFrom;
  SpfOutcome spfHelo;
  std::vector<DkimOutcome> dkim;
  ArcOutcome arc;
  DmarcOutcome dmarc;
  double spamScore = 0;
  // Mail stage: the [dnsbl] score is at most dnsbl.allowlist_threshold (a DNS allowlist such
  // as list.dnswl.org lists the client): it is not greylisted. Reset by each MAIL.
  bool dnsblAllowlisted = false;
  // What [relay] rewrite changed: recipients at RCPT (the session), the envelope sender and
  // header fields at Data (the address_rewrite filter, which alone changes mailFrom here).
  std::vector<AddressRewrite> rewrites;
};

// Filters that read header fields (DKIM's signatures, DMARC's From) do it on the loop while
// the header section is small, which is nearly always; past this size (only a hostile or
// broken message has 64 KiB of header fields) the reading goes to the thread pool, so a
// client cannot stall the loop with tens of megabytes of header fields.
constexpr size_t kInlineHeaderBytes = 64 * 1024;
inline bool largeHeaderSection(std::string_view message) {
  return mta::headerBlock(message).size() > kInlineHeaderBytes;
}
// Filter work shares the libuv thread pool with the spool's writes and fsyncs (the 250
// after DATA) and with deliveries. CPU-heavy content (a hostile message, a costly rule set)
// must not hold all of it, or every client waits for its reply: at most filterWorkSlots()
// filter jobs run at once, leaving two threads to the rest, and the others wait here in
// order. One of those slots is kept for light jobs (messages of at most kLightWorkBytes),
// so ordinary mail is not queued behind big messages. Loop thread only: the counts belong
// to the calling thread, the one loop thread of the daemon.
inline constexpr uint64_t kLightWorkBytes = 64 * 1024;
unsigned filterWorkSlots();  // the pool's size less two, at least 1
struct FilterWorkState {
  unsigned running = 0;       // jobs on the pool
  unsigned heavyRunning = 0;  // of which heavy (more than kLightWorkBytes, or not said)
  size_t waiting = 0;         // jobs queued for a slot
};
FilterWorkState filterWorkState();
// Runs `work` on the pool once a slot is free, then `after` on the loop thread. `bytes`:
// the size of the message the job works on (UINT64_MAX: unknown, counted heavy).
void offloadFilterWork(uv_loop_t* loop, std::function<void()> work, std::function<void()> after,
                       uint64_t bytes = UINT64_MAX);

struct Env {
  uv_loop_t* loop = nullptr;
  mta::dns::Resolver* resolver = nullptr;
  std::string hostname;  // the gateway's own name (Authentication-Results authserv-id)

  // Runs `work` on the thread pool, then `after` on the loop thread, within the filters'
  // share of the pool (offloadFilterWork). `bytes`: the message's size, when known.
  void offload(std::function<void()> work, std::function<void()> after, uint64_t bytes = UINT64_MAX) const {
    offloadFilterWork(loop, std::move(work), std::move(after), bytes);
  }
};

// Whether a client's mail is looked up in blocklists: not outbound (relay.networks, an
// authenticated client) and not in [connection] allow (`allow`). [dnsbl], [uribl] and the MAIL checks agree.
bool looksUp(const MessageContext& ctx, const std::vector<mta::Network>& allow);
// Whether the checks of a client's DNS and its words at MAIL ([connection]
// reject_unknown_client, [helo], [senders] reject_unknown_domain) pass it over, and why:
// "skipped" when it is not looked up (looksUp), "allowlisted" when [dnsbl] allowlisted it (as
// postscreen's allowlist threshold spares a client the tests left); "" when it is checked.
// They run after [dnsbl], which sets MessageContext::dnsblAllowlisted.
std::string_view sparedBy(const MessageContext& ctx, const std::vector<mta::Network>& allow);

class Filter {
 public:
  using Done = std::function<void(Result)>;
  virtual ~Filter() = default;
  virtual std::string_view name() const = 0;
  virtual Stage stage() const = 0;
  // Called on the loop thread. Must call `done` exactly once, on the loop thread (it may
  // be called before run() returns).
  virtual void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const = 0;
  // How much of ctx->mime this filter reads; the MIME filter parses no deeper than the
  // pipeline's filters need. Default: the structure only (no filter reads less).
  virtual mime::Depth mimeDepth() const;
};

}  // namespace moat::filters
