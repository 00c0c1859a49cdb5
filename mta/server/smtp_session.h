// mta/server/smtp_session.h — one inbound SMTP session: the RFC 5321 state machine with
// PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152), ENHANCEDSTATUSCODES
// (RFC 2034/3463), SMTPUTF8 (RFC 6531), STARTTLS (RFC 3207), CHUNKING (RFC 3030), DSN
// (RFC 3461: the requests are kept in the envelope for the queue manager), REQUIRETLS
// (RFC 8689: offered and taken only over TLS, kept in the envelope), and AUTH
// (RFC 4954: PLAIN and LOGIN, offered only over TLS, on listeners with auth_users; a
// submission listener takes mail only after it, RFC 6409 §4.3).
//
// Untrusted input: everything the peer sends. Command lines are bounded (LineReader: 2048
// octets; SASL responses and AUTH lines about 12 KB, as RFC 4954 §4 wants), the message
// streams to the spool as it arrives (memory per session stays bounded whatever the message
// size: reading stops while the spool's buffer is over its high-water mark), and every
// async step (filters, spool commit) stops reading so pipelined input cannot pile
// up. A 250 to the end of DATA goes out only after the spool reports the message durable.
//
// The client's verified name (FCrDNS, mta/dns/client_name.h; [server] reverse_dns) is
// looked up from the connect on, without delaying the greeting or anything else; only the
// end of a message's data waits for it, at most until dns.timeout after the connect, to give
// the data filters (ctx_->clientName) and the Received header the name, else "unknown"; and
// a RCPT that greylisting would defer, when [greylist] exempt_client_names might exempt it.
//
// The pregreet test ([connection] pregreet_wait, as Postfix postscreen's): the greeting's
// first line (220-) goes out at once and its last (220) after the wait, on a timer; a client
// that sends anything before the last line is a pregreeter (RFC 5321 §3.1, §4.3.1: clients
// wait for the greeting; many bots do not). Its bytes are held, not read past, until the
// greeting is complete. Relay networks, connection.allow and submission/smtps listeners get
// the one-line greeting at once.
//
// [rate_limits] (rate_counter.h): messages are counted when accepted (the 250 to the end of
// the data) and refused at MAIL once the count reaches the limit; recipients are counted at
// each 250 to RCPT and refused at RCPT. So a client with several sessions at once may pass
// a message limit by one message per open session (limits.max_connections_per_ip).
//
// Logs: connect, disconnect, pregreet, reject (with the reply sent), accept (queued, with queue_id),
// filter (each filter's result at the data stage), auth (each AUTH's outcome; never the
// password), verify (each RCPT answered by recipient verification, recipient_verifier.h),
// greylist (a triplet first deferred, and when it gets through: one line each; the
// deferrals are `reject` lines at debug only), rate_limited (a [rate_limits] limit reached: once per key and window;
// the refusals themselves are `reject` lines at debug only, so a client that keeps trying cannot flood the log).
// accept, disconnect and a reject at the end of the data carry client_name.
#pragma once
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "filters/filter.h"
#include "filters/pipeline.h"
#include "mta/net/connection.h"
#include "mta/runtime/log.h"
#include "mta/runtime/uv.h"
#include "mta/server/envelope_recipients.h"
#include "mta/server/smtp_server.h"
#include "mta/smtp/data_decoder.h"
#include "mta/smtp/header_scrubber.h"
#include "mta/smtp/protocol.h"
#include "mta/smtp/sasl.h"
#include "queue/spool.h"

namespace moat::mta::server {

class SmtpSession : public std::enable_shared_from_this<SmtpSession> {
 public:
  SmtpSession(ServerShared& shared, std::shared_ptr<const Snapshot> snapshot, const policy::Listener& listener,
              std::shared_ptr<net::Connection> conn, const SessionPeer& peer, std::function<void(SmtpSession*)> onEnd);
  ~SmtpSession();
  SmtpSession(const SmtpSession&) = delete;
  SmtpSession& operator=(const SmtpSession&) = delete;

  // `blocked` ([connection] block): the greeting is 554 5.7.1 and every command but QUIT
  // gets 503 (RFC 5321 §3.1), so the client ends the session itself.
  void start(bool blocked = false);
  // Graceful stop: an idle session gets 421 now; a busy one after its transaction.
  void drain();
  // The drain deadline passed: unless its message is past the end of its data (in the
  // filters or being committed, so it will be answered), the session gets 421 now. Returns
  // whether it is still waited for.
  bool drainExpired();
  const std::string& id() const { return id_; }

 private:
  enum class Mode { Command, Data, Bdat, Closed };

  // Input
  void onData(std::string_view data);
  void processInput();
  bool checkOutputBound();
  void onOutputDrained();
  void readIfReady();
  void handleLine(const std::string& line);
  void feedData();
  size_t decodeData(std::string_view rest);
  void dataStep();
  void feedBdat();

  // Commands
  void cmdHelo(const smtp::Command& c, bool extended);
  void cmdMail(const smtp::Command& c);
  void cmdRcpt(const smtp::Command& c);
  void cmdData();
  void cmdBdat(const smtp::Command& c);
  void cmdRset();
  void cmdStartTls(const smtp::Command& c);
  void cmdAuth(const smtp::Command& c);

  // AUTH (RFC 4954): one SASL step's outcome; the credentials checked on the thread pool.
  void saslStep(smtp::SaslStep step);
  void verifyCredentials(smtp::SaslCredentials credentials);
  void authFailed(const std::string& user, std::string_view reason, const smtp::Reply& reply);
  bool authOffered() const { return users_ && conn_->tlsActive(); }
  // "ESMTP", with "S" for TLS and "A" for AUTH (RFC 3848), "UTF8SMTP..." (RFC 6531 §3.7.3).
  std::string protocolName() const;

  // Transaction
  bool startTransactionData();
  bool heloIsDomainOrLiteral() const;
  std::string printableHelo() const;
  void replySpoolError(std::string_view error, const std::string& queueId);
  void endOfData();
  void runDataFilters();
  // Client name (FCrDNS): the lookup started at connect, its result, and the data filters'
  // wait for it (bounded by nameDeadline_).
  void startNameLookup();
  void nameKnown(std::string name);
  // `then` once the client's name is known or the lookup's deadline passed (nameThen_; not
  // run if the session closed meanwhile), for a lookup in flight with its deadline ahead.
  void waitForName(std::function<void()> then);
  void nameWaitOver();
  std::string clientNameField() const;  // the verified name, or "unknown"
  // The fields every `reject` line starts with, in this order (deploy/monitoring's fail2ban
  // filters match on it): `reply` is replyLine(code, enhanced, text), the reply sent;
  // `from`: the sender refused at MAIL, else the transaction's. Counts the refusal
  // (moat_rejects_total and, at MAIL and DATA, moat_messages_*_total).
  void rejectFields(log::Line& line, std::string_view stage, int code, std::string_view enhanced, std::string_view text,
                    std::optional<std::string_view> from = std::nullopt) const;
  // Sends reply(code, enhanced, text) after its `reject` line, which says exactly that and
  // carries the fields `more` adds. Refusals that close the connection use rejectFields.
  void refuse(std::string_view stage, int code, std::string_view enhanced, std::string_view text,
              const std::function<void(log::Line&)>& more = nullptr,
              std::optional<std::string_view> from = std::nullopt, log::Level level = log::Level::Info);
  void refuseData(int code, std::string_view enhanced, std::string_view text);
  // The transaction's recipients (ctx_->rcpts, txRcptDsn_, txRcptKeys_, txExpanded_).
  RecipientList txRecipients();
  void addRecipient(const std::string& address, RcptDsn dsn);
  void takeRecipient(const std::string& address, RcptDsn dsn);  // into the envelope, and 250
  // relay.verify_recipients: the RCPT is answered once the next hop has been asked (or the
  // cache knows), paused meanwhile.
  void verifyRecipient(const std::string& address, RcptDsn dsn, const policy::Route& route);
  void recipientVerified(const std::string& address, RcptDsn dsn, const VerifyOutcome& outcome);
  bool recipientExists(const std::string& address) const;  // relay.recipients
  void rejectUnknownRecipient(const std::string& address);
  // After relay control and inbound rewriting: aliases, relay.recipients, verification.
  void checkRecipient(const std::string& address, RcptDsn dsn);
  void recipientTaken(const std::string& address);  // counts a 250 to RCPT (rcptGivenDomain_, rcptRewrite_)
  void takeAliasedRecipient(const std::string& address, RcptDsn dsn, const policy::AliasTable::Expansion& e);
  // [rate_limits]: the limits, in metrics().rateLimited's order.
  enum class RateLimit { MessagesPerClient = 0, RecipientsPerClient = 1, MessagesPerSender = 2 };
  // What `which` counts this session (and `sender`) by: "" when it does not apply (off, an
  // exempt client, a client of the other kind, the null sender).
  std::string rateKey(RateLimit which, const std::string& sender) const;
  // Whether one more is over the limit: if so, 450 4.7.1 sent (the session goes on), a
  // rate_limited line once per key and window, and true.
  bool rateLimited(RateLimit which, std::string_view stage, const std::string& sender);
  void countRate(RateLimit which, const std::string& sender);
  // [greylist]: whether the recipient is greylisted for this client and sender: if so, 450
  // 4.7.1 sent (the session goes on) and true. Also true when the answer waits for the
  // client's name (exempt_client_names): the session is paused, and checkRecipient runs
  // again once the name or its deadline comes.
  bool greylisted(const std::string& address, const RcptDsn& dsn);
  void authFields(log::Line& line) const;
  // One `filter` log line per filter result.
  void logFilters(const std::vector<filters::FilterReport>& reports, filters::Stage stage) const;
  // moat_filter_* for every filter that ran, and the authentication results the stage settled.
  void countFilters(const std::vector<filters::FilterReport>& reports, filters::Stage stage) const;
  void commitMessage(filters::StageOutcome outcome);
  // The milters' envelope changes (outcome.envelope), in order, to the envelope about to be
  // queued, each logged (`milter_envelope`). Changes that would leave no recipient are not
  // made: the message is quarantined instead, with its envelope as received.
  void applyEnvelopeChanges(filters::StageOutcome& outcome);
  // What a recipient a milter added became: [relay] rewrite's inbound rewriting and [relay]
  // aliases applied, as to a RCPT's address after relay control.
  struct MilterRcpt {
    const char* result = "applied";                  // the milter_envelope line's
    std::optional<filters::AddressRewrite> rewrite;  // relay.rewrite's change of it (where "milter_rcpt")
    std::vector<std::string> targets;                // relay.aliases replaced it by these
    std::string aliasError;                          // the expansion failed: it went on unexpanded
    bool expandedReport = false;                     // an "expanded" report was added (NOTIFY=SUCCESS)
  };
  MilterRcpt addMilterRecipient(const filters::EnvelopeChange& c, RecipientList list, std::vector<std::string>& shown);
  void resetTransaction();
  // The value of this message's Received field (RFC 5321 §4.4), made once, before the data
  // filters (milters are sent it), kept in ctx_->received.
  std::string receivedValue() const;
  std::vector<filters::Header> gatewayHeaders(const filters::StageOutcome& outcome) const;

  // Output and flow
  void reply(int code, std::string_view enhanced, std::string_view text);
  void flush();
  void pause();
  void resume();
  void protocolError();
  void junkCommand();
  bool closeIfDraining();
  // The pregreet test: the greeting's last line, when the wait ends (or the session closes).
  void finishGreeting();
  void notePregreet(std::string_view early);
  void closeWith(int code, std::string_view enhanced, std::string_view text);
  void closeGracefully();
  // The timeout for what the session waits on now: a command line (armed when a command is
  // awaited, not re-armed by part of a line) or a line of the message, never past the
  // message's max_data_time deadline. Re-armed per line, never per byte.
  void armTimer();
  void onClosed(const std::string& error);
  // Our own work in flight (filters, the spool): the token's last copy going away ends it.
  // A session that closes meanwhile reports its end (onEnd_) only after the work, so the
  // server's drain, and the daemon's teardown behind it, never overtake a commit.
  std::shared_ptr<void> work();
  void workDone();

  ServerShared& shared_;
  std::shared_ptr<const Snapshot> snap_;
  const policy::Config& cfg_;
  policy::Listener listener_;
  std::shared_ptr<net::Connection> conn_;
  SessionPeer peer_;  // the client (ctx_->clientIp) and, behind a balancer, the balancer
  std::function<void(SmtpSession*)> onEnd_;
  std::string id_;
  uv::Timer timer_;
  std::chrono::steady_clock::time_point started_;
  uv::Timer nameTimer_;  // the end of the data waiting for the client name
  uv::Timer greetTimer_;  // pregreet_wait: the greeting's last line

  Mode mode_ = Mode::Command;
  std::string in_;         // bytes received and not yet consumed
  size_t inPos_ = 0;       // consumed prefix of in_
  std::string out_;        // replies not yet written (batched, RFC 2920)
  smtp::LineReader reader_;
  bool paused_ = false;    // an async step is running: do not process input
  bool outputBlocked_ = false;   // replies queued past kMaxPendingOutput: not reading
  bool tlsHandshaking_ = false;  // STARTTLS handshake running (paused, but timed)
  bool draining_ = false;
  bool closed_ = false;
  unsigned work_ = 0;        // tokens from work() alive
  bool endPending_ = false;  // closed while work_ > 0: onEnd_ waits for the work
  unsigned errors_ = 0;
  unsigned junkCommands_ = 0;  // NOOP, RSET, VRFY, HELP (limits.max_junk_commands)
  unsigned messages_ = 0;

  // Session state
  bool blocked_ = false;   // greeted with 554: nothing but QUIT is taken
  bool greetWait_ = false;   // the 220- line is out, the last one not yet: input is held
  bool pregreeted_ = false;  // the client talked during greetWait_
  // pregreet_action "reject": the first command after the greeting gets 554 5.5.1 (QUIT
  // excepted), and then the session is blocked_.
  bool pregreetRefuse_ = false;
  bool greeted_ = false;   // HELO/EHLO seen
  bool esmtp_ = false;
  std::string helo_;
  // The client's verified name ("" until known, and when none verifies). The filters see it
  // as ctx_->clientName, copied on the loop only while no filter runs (at MAIL and before the
  // data filters), never from the lookup's callback.
  std::string clientName_;
  bool nameLookup_ = false;                       // the FCrDNS lookup is in flight
  bool nameWait_ = false;                         // the end of the data or a RCPT waits for it (nameThen_)
  std::function<void()> nameThen_;                // what runs when the name or the deadline comes
  uint64_t nameDeadline_ = 0;                     // loop time (uv_now) after which it is not waited for
  std::shared_ptr<filters::MessageContext> ctx_;  // session facts + current transaction
  std::vector<std::string> sessionAuthResults_;
  std::shared_ptr<const policy::UserDb> users_;  // this listener's AUTH credentials, or none
  smtp::SaslServer sasl_;
  bool saslActive_ = false;  // a 334 went out: the next line is a SASL response
  unsigned authFailures_ = 0;

  // Transaction state
  bool inTransaction_ = false;
  bool eightBit_ = false, smtputf8_ = false, bdatUsed_ = false;
  bool requireTls_ = false;  // MAIL carried REQUIRETLS (RFC 8689)
  uint64_t declaredSize_ = 0;
  std::vector<std::string> txAuthResults_;
  // DSN requests (RFC 3461): MAIL's RET and ENVID, each RCPT's NOTIFY and ORCPT (as
  // received; parallel to ctx_->rcpts).
  std::string txRet_, txEnvid_;
  std::vector<RcptDsn> txRcptDsn_;
  // RCPT commands taken (limits.max_recipients counts these, not what aliases expand them
  // to) and the first one's address, as the client gave it (Received: ... for <...>).
  size_t txRcptsTaken_ = 0;
  std::string txFirstRcpt_;
  // The RCPT being answered (one at a time: the session pauses for a probe): its domain as
  // the client gave it, and its inbound rewrite, kept for the accept line once it is taken.
  std::string rcptGivenDomain_;
  std::optional<filters::AddressRewrite> rcptRewrite_;
  std::unordered_set<std::string> txRcptKeys_;        // ctx_->rcpts' recipientKeys: each address once
  std::vector<queue::ExpandedRecipient> txExpanded_;  // aliases owing an "expanded" report
  std::vector<filters::Header> txHeaders_;
  bool txBatvFailed_ = false;  // "X-Moat-BATV: fail" is among txHeaders_ ([bounce_verification] action = "tag")
  double txScore_ = 0;
  std::vector<filters::FilterReport> txReports_;
  std::shared_ptr<queue::IncomingMessage> incoming_;
  std::optional<smtp::DataDecoder> decoder_;
  std::optional<smtp::HeaderScrubber> scrubber_;  // drops forged Authentication-Results
  std::string decoded_, scrubbed_;
  void appendMessage(std::string_view bytes);
  // Loop time (uv_now) by which the message's data must be in (limits.max_data_time), from
  // the 354 or the first BDAT to the end of the data; 0 when no data is being received.
  uint64_t dataDeadline_ = 0;
  bool dataEnded_ = false;  // past the end of the data: the filters and the commit answer it
  uint64_t bdatRemaining_ = 0;
  uint64_t bdatChunkSize_ = 0;  // as the BDAT command declared it, for its reply
  bool bdatLast_ = false;
  bool bdatDiscard_ = false;  // the chunk was refused at its command: read and dropped
};

}  // namespace moat::mta::server
