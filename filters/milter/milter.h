// filters/milter/milter.h — a milter client ([[milter]]): each message Moat still accepts
// after its own filters is shown to external milters (rspamd's proxy, opendkim,
// clamav-milter, pymilter scripts) over the Sendmail milter protocol version 6
// (protocol.h), as Postfix's smtpd_milters does, and their verdicts and changes are applied.
//
// When: at the Data stage, after Moat's own checks (rules included) and before address
// rewriting and the DKIM signer. The pipeline stops at the first Reject or TempFail, so no
// milter time is spent on mail Moat refuses anyway, and the signer signs the message with
// the milters' changes. One conversation per milter per message, on a fresh connection,
// replaying the session: OPTNEG, CONNECT, HELO, MAIL, each RCPT, DATA, the header fields
// (the ones Moat prepends at delivery first, in delivery order: its Received field, as Postfix
// sends its own, Authentication-Results, the session's and its filters' fields:
// gatewayHeaders), EOH, the body in chunks of at most 65535 bytes, EOM —
// each with its SMFIC_MACRO (j, _, {daemon_name}, {client_addr}, {client_port}, {client_name}, {auth_authen},
// {tls_version}, i, {mail_addr}, {rcpt_addr}; CONNECT carries the client's address and port), skipping the steps the
// milter declines (SMFIP_NO*) and not waiting for replies it will not send (SMFIP_NR_*). The message is sent as
// delivery will render it so far: with Moat's own filters' edits applied (ctx->edits: a stripped part, a Subject
// prefix; they compose with the milters' as a milter 0's). Milters run in config order; each is sent the message and
// envelope with the earlier milters' changes applied, as Sendmail and Postfix do (View): the header fields they added
// (where they are delivered: around Moat's Received field), the message with their edits (applyEdits, the renderer
// delivery uses; the next milter's edits are composed with them, composeEdits), the sender they set (with its RET and
// ENVID; one not given keeps its value, as in the session) and the recipients after their adds and deletes. A milter
// that changed nothing costs nothing: the next one is sent the same bytes (the message as received, not copied, while
// neither Moat's filters nor a milter changed it). A changed message is one in-memory copy, made on the thread pool
// when large, and bounded like a replaced body (max_message_size): past it the next milter is not asked (its
// default_action applies).
//
// Replies: continue, accept (this milter is done), reject (550 5.7.1 Command rejected),
// tempfail (451 4.7.1 Service unavailable - try again later), SMFIR_REPLYCODE (its own 4xx /
// 5xx, checked; a malformed one is the default_action), discard (never silent: Moat's
// quarantine, reason "milter NAME: discard"), quarantine (reason given), progress (the
// timeout restarts), add header (prepended at delivery like every header Moat adds), insert
// header at its index (libmilter's: 0 is above the first field the milter was sent, Moat's
// own Received or a field an earlier milter put above it; among Moat's own fields, just below
// them; N below the Nth field sent, an earlier milter's field or the message's; past the
// last, at the end of the header), change header (the Nth field of that name as sent: an
// earlier milter's added field is changed in place, a message field by an edit; Moat's own
// fields are not changed: refused and logged;
// an empty value deletes it; past the last, it is added), replace body (an edit), add recipient (SMFIR_ADDRCPT, and
// SMFIR_ADDRCPT_PAR with NOTIFY and ORCPT), delete recipient, change sender (SMFIR_CHGFROM,
// with RET and ENVID): envelope changes (filter.h EnvelopeChange) the session applies before
// it queues the message. Their addresses and parameters pass the SMTP server's own checks
// (a malformed one is a protocol error: the default_action); other ESMTP parameters are
// ignored, as Postfix does, and named in the log. Moat offers ADDHDRS, CHGHDRS, CHGBODY,
// QUARANTINE, ADDRCPT, ADDRCPT_PAR, DELRCPT and CHGFROM (not SETSYMLIST).
// A reject or tempfail at RCPT is for the whole message (the recipients were accepted).
//
// default_action (tempfail | accept | reject, as Postfix's milter_default_action) applies
// when a milter cannot be reached, times out, fails negotiation or breaks the protocol.
// Network: non-blocking on the loop (TCP to an IP literal or "localhost", or a unix
// socket), connect_timeout to connect, command_timeout for each reply up to DATA,
// content_timeout for the header, body and end-of-message replies; every packet bounded
// (protocol.h), the replacement body bounded by max_message_size; the connection closed on
// every path. Untrusted input: everything the milter sends.
// Logs: the pipeline's `filter` line (detail `milters`: each milter's outcome) and
// `milter_error` (warn: the milter, the error, the action taken; or a change not made). The
// session logs each envelope change it applies (`milter_envelope`).
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "filters/filter.h"
#include "policy/config.h"
#include "policy/errors.h"

namespace moat::filters::milter {

struct Address {
  enum class Kind { Inet, Unix } kind = Kind::Inet;
  std::string host;  // Inet: an IP literal
  uint16_t port = 0;
  std::string path;  // Unix
};
// "inet:HOST:PORT" (HOST an IPv4 literal, [IPv6] or localhost), "inet6:[::1]:PORT" (or
// inet6:::1:PORT), "unix:/path" (relative to `baseDir`). nullopt with `error` set.
std::optional<Address> parseAddress(std::string_view text, const std::string& baseDir, std::string& error);

enum class DefaultAction { TempFail, Accept, Reject };

struct MilterConfig {
  std::string name;     // for logs; the address as written by default
  std::string address;  // as written
  Address target;
  std::chrono::milliseconds connectTimeout{5000};
  std::chrono::milliseconds commandTimeout{30000};
  std::chrono::milliseconds contentTimeout{120000};
  DefaultAction defaultAction = DefaultAction::TempFail;
  bool outbound = true;
};

// What one milter of the chain is sent: the message and envelope with the earlier milters'
// changes applied. viewOf: the envelope as received, the message as received (the filter
// renders Moat's own filters' edits into `storage` before the first milter).
struct View {
  std::string_view message;                    // ctx->message, or `storage`
  std::shared_ptr<const std::string> storage;  // the message with the earlier edits
  // The header fields earlier milters added or inserted, as delivered: the aboveReceived
  // ones above Moat's Received field, the others below it, each in list order.
  std::vector<Header> headers;
  std::string mailFrom;                            // without <>
  std::vector<std::string> mailArgs;               // RET= and ENVID=: the client's, or as an earlier milter set
  std::vector<std::string> rcpts;                  // without <>
  std::vector<std::vector<std::string>> rcptArgs;  // per recipient: NOTIFY= and ORCPT= an earlier milter set
};
View viewOf(const MessageContext& ctx);
// `view` with a milter's envelope changes applied, as the session applies them to the
// envelope it queues (a recipient once, the domain folded; deleting one deletes every copy;
// a changed sender's RET or ENVID not given keeps its value).
void applyEnvelope(View& view, const std::vector<EnvelopeChange>& changes);

// What one milter decided about one message.
struct Outcome {
  enum class Kind { Continue, Accept, Reject, TempFail, Quarantine, Error, Skipped } kind = Kind::Continue;
  int code = 0;
  std::string enhanced, text;  // Reject / TempFail
  std::string quarantineReason;
  // Continue / Quarantine: the milter-added header fields after this milter, the view's with
  // its changes (the first milter's: the ones it added).
  std::vector<Header> headers;
  std::vector<Edit> edits;  // of the message it was sent (View::message)
  std::vector<EnvelopeChange> envelope;
  std::string error;  // Error: why
};

// A milter's envelope change (`command`: reply::kAddRcpt, kAddRcptPar, kDelRcpt or kChgFrom)
// checked as the SMTP server checks MAIL and RCPT (`utf8`: the transaction is SMTPUTF8):
// the address a mailbox (or <> for the sender), NOTIFY / ORCPT (recipients) and RET / ENVID
// (the sender) valid. Other ESMTP parameters go to `ignored`. nullopt with `error` set when
// the packet or its address or a parameter is malformed.
std::optional<EnvelopeChange> envelopeChange(char command, std::string_view data, bool utf8, std::string& error);

class MilterFilter final : public Filter {
 public:
  MilterFilter(std::vector<MilterConfig> milters, uint64_t maxMessageSize);
  std::string_view name() const override { return "milter"; }
  Stage stage() const override { return Stage::Data; }
  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override;
  const std::vector<MilterConfig>& milters() const { return milters_; }

 private:
  std::vector<MilterConfig> milters_;
  uint64_t maxMessageSize_;
};

// One conversation with one milter about one message (as `view` shows it; without one, as
// received); `done` runs once, on the loop.
void converse(const MilterConfig& milter, std::shared_ptr<MessageContext> ctx, const Env& env, uint64_t maxBody,
              std::function<void(Outcome)> done);
void converse(const MilterConfig& milter, std::shared_ptr<MessageContext> ctx, View view, const Env& env,
              uint64_t maxBody, std::function<void(Outcome)> done);

// Null when no [[milter]] is configured.
std::shared_ptr<const MilterFilter> makeMilterFilter(const policy::Config& config, policy::Errors& errors);

}  // namespace moat::filters::milter
