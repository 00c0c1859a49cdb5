// mta/client/smtp_client.h — one outbound SMTP connection that carries one transaction at a
// time, several in a row (RFC 5321 client side; RFC 2920 PIPELINING; RFC 3207 STARTTLS;
// RFC 6152 8BITMIME, RFC 1870 SIZE, RFC 6531 SMTPUTF8, RFC 3461 DSN parameters, RFC 8689
// REQUIRETLS; RFC 4954 AUTH with PLAIN (RFC 4616) or LOGIN, over TLS only, when the caller
// gives credentials). 8-bit mail for a next hop without 8BITMIME goes converted by the
// caller's Transaction::downgrade, and UTF-8 mail for one without SMTPUTF8 by
// Transaction::utf8Downgrade when the caller has one.
//
// With Options::lmtp the same client speaks LMTP (RFC 2033) to a final delivery agent, over
// TCP or a Unix socket (connectUnix): LHLO instead of EHLO (no HELO fallback, §4.1), never
// BDAT, and after the message's final dot one reply per recipient accepted at RCPT, in RCPT
// order (§4.2), each that recipient's own outcome (TransactionResult::rcptData).
//
// Untrusted input: every reply from the server, read by reply.h (bounded: 4096 bytes a line,
// 100 lines a reply; more is a protocol error that ends the connection). Logs nothing: the queue manager
// logs `deliver`/`defer` with the replies this returns; no error or reply it returns holds
// the password or its base64.
#pragma once
#include <uv.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mta/client/reply.h"
#include "mta/net/connection.h"
#include "mta/runtime/ip.h"
#include "mta/runtime/uv.h"
#include "mta/tls/tls.h"

namespace moat::mta::client {

enum class TlsMode { None, May, Require };  // route tls = "none" | "may" | "require"

// What the client authenticates as (RFC 4954). The password is wiped when the last
// holder lets go.
struct Credentials {
  std::string username, password;
  Credentials(std::string u, std::string p) : username(std::move(u)), password(std::move(p)) {}
  ~Credentials();
  Credentials(const Credentials&) = delete;
  Credentials& operator=(const Credentials&) = delete;
};

// The initial response of AUTH PLAIN (RFC 4616 §2) with no authorization identity:
// base64("\0" username "\0" password).
std::string saslPlainResponse(std::string_view username, std::string_view password);

// What a connection learnt of itself, kept when connect() fails: TLS reporting (RFC 8460 §4.4)
// names them in a failed session's row. `localIp`: the address the connection came from;
// `serverName`: the name the server gave in its greeting, then in its EHLO reply's first line
// (as the server sent it: untrusted, at most a reply line long).
struct PeerNotes {
  std::string localIp, serverName;
};

struct Options {
  std::string heloName;                      // our host name for EHLO/HELO
  TlsMode tls = TlsMode::May;
  std::shared_ptr<tls::TlsContext> tlsCtx;   // client context (null with TlsMode::None); a
                                             // TlsContext::withDane one requires DANE (with Require)
  std::string sni;                           // next-hop host name, for SNI / verification
  // AUTH after the EHLO that follows STARTTLS (never without TLS); null = no AUTH.
  std::shared_ptr<const Credentials> auth;
  // BDAT (RFC 3030) instead of DATA when the next hop offers CHUNKING and PIPELINING: no
  // 354 round trip (a message of up to 64 KiB goes in the same write as its MAIL and RCPTs)
  // and no dot-stuffing. Route key `chunking`.
  bool chunking = true;
  // The local address to connect from, per destination family ([queue] / [[route]]
  // source_ipv4, source_ipv6); none: the kernel picks. A source that cannot be bound fails
  // the connect ("cannot bind source address ...", net::connect).
  std::optional<IpAddress> sourceIpv4, sourceIpv6;
  // LMTP (RFC 2033) instead of SMTP: see the top of this file.
  bool lmtp = false;
  // Filled in as the connection goes (see PeerNotes); null: not wanted.
  std::shared_ptr<PeerNotes> notes;
  uint64_t connectTimeoutMs = 30000, greetingTimeoutMs = 300000, commandTimeoutMs = 300000,
           dataBlockTimeoutMs = 180000, dataDoneTimeoutMs = 600000;  // RFC 5321 §4.5.3.2
};

// Converts a message (prefix + body, the body kept valid by keepAlive) for a next hop that
// lacks an extension it needs: to 7-bit MIME without 8BITMIME (RFC 6152 §3), or to a form
// that needs no SMTPUTF8; then calls done(true, converted, "") or done(false, "", why not)
// once, from the loop: at once, or later (a large message is joined and converted on the
// thread pool). Supplied by the caller, which links the MIME and DSN code the client must not.
using DowngradeDone = std::function<void(bool ok, std::string converted, std::string reason)>;
using Downgrade = std::function<void(std::string prefix, std::string_view body, std::shared_ptr<const void> keepAlive,
                                     DowngradeDone done)>;

struct Transaction {
  std::string mailFrom;                      // "" = null sender
  std::vector<std::string> rcpts;
  bool eightBit = false, smtputf8 = false;   // BODY=8BITMIME / SMTPUTF8 when offered
  uint64_t size = 0;                         // SIZE= when offered (0: not sent)
  std::string envid, ret;                    // DSN ENVID= (xtext) and RET=FULL|HDRS when offered
  // RFC 8689: REQUIRETLS on MAIL. Refused locally (550 5.7.30, not sent) unless the session
  // is encrypted and the server offers REQUIRETLS; the caller checks the certificate. With the
  // null sender (a DSN, §5) it is sent where offered and never stops the message.
  bool requireTls = false;
  // RFC 3461 NOTIFY= and ORCPT= per recipient (parallel to rcpts; "" = none), sent when the
  // next hop offers DSN; a UTF-8 ORCPT or ENVID only with SMTPUTF8 in use.
  struct RcptDsn {
    std::string notify, orcpt;
  };
  std::vector<RcptDsn> rcptDsn;
  std::string prefix;                        // headers prepended by the gateway, CRLF lines
  std::string_view body;                     // the message (CRLF, NOT dot-stuffed)
  std::shared_ptr<const void> keepAlive;     // keeps `body` valid until done runs
  // For a next hop without 8BITMIME, when the prefix or body has a byte over 0x7f; without
  // it (or when it fails) such a message is refused locally: 554 5.6.3.
  Downgrade downgrade;
  // For a next hop without SMTPUTF8, when the message was to go with it (smtputf8) and has a
  // byte over 0x7f: the caller's conversion to a message that needs no SMTPUTF8 (the daemon
  // has one for its own global DSNs, queue/dsn.h). The converted message then goes like any
  // other (8BITMIME and `downgrade` as above) without SMTPUTF8. Without it, or when it
  // fails, the message goes as it is when its headers are ASCII, else it is refused locally:
  // 554 5.6.9 (with the converter's reason). UTF-8 addresses are refused before: 553 5.6.7.
  Downgrade utf8Downgrade;
  // Recipient verification (Postfix's verify(8)): MAIL and RCPT only, then RSET; no DATA and
  // no message. The result's `data` stays empty (code 0) and bodyAnswered false.
  bool probe = false;
};

// Outcome per recipient i: if mail.code is not 2xx → mail; else if rcpts[i] is not 2xx →
// rcpts[i]; else data, which means delivered only with bodyAnswered (a 2xx in `data` without
// it is never taken for delivery). When MAIL was refused, rcpts[] and data are copies of
// `mail`, so a 4xx at MAIL never turns into a 5xx for a recipient. An envelope with CR, LF or
// NUL is not sent: every reply is a local "501 5.5.4 ..." and the connection stays usable; so
// is 8-bit mail that a next hop without 8BITMIME could only take converted, when it cannot be
// ("554 5.6.3 ..."), and a message over the next hop's fixed SIZE (RFC 1870: "552 5.3.4 ...").
//
// A reply to DATA other than 354, 4xx or 5xx (a 250, say: a broken server, or replies out of
// step) is a protocol error: the body was not sent, `data` is the client's own "451 4.5.0
// unexpected reply to DATA: ..." and the connection is closed. So is the connection after any
// 421 (RFC 5321 §3.8): the transaction ends with that reply for every recipient not yet
// answered, and the client is no longer usable, so the caller's next message gets a new one.
struct TransactionResult {
  std::string error;          // non-empty: the connection failed mid-transaction (4xx for all)
  bool local = false;         // the replies are the client's own: nothing was sent
  bool downgraded = false;    // the message went converted to 7-bit MIME (Transaction::downgrade)
  bool utf8Downgraded = false;  // the message went converted to need no SMTPUTF8 (Transaction::utf8Downgrade)
  // The next hop offers DSN (RFC 3461): the DSN requests went on with the message, and
  // reporting its delivery is now that hop's (§5.2.1); without it, a relaying MTA reports
  // success itself ("relayed", §5.2.2).
  bool dsnOffered = false;
  std::string authUser;  // the name the connection authenticated as (RFC 4954), "" = none
  // The server asked for a client certificate and the connection presented the route's
  // (TlsContext::withClientCertificate, mutual TLS).
  bool clientCertificate = false;
  std::string source;    // the local address the connection was bound to, "" = the kernel's choice
  Reply mail;
  std::vector<Reply> rcpts;   // one per rcpt, same order
  Reply data;                 // final reply after the message (or to DATA if refused)
  // LMTP (RFC 2033 §4.2): set for a transaction over LMTP, and then, parallel to rcpts, each
  // recipient's own reply after the message's final dot (code 0: not accepted at RCPT, or no
  // reply came: the connection ended first, and `error` or a 421 in `data` says why). A 2xx
  // here is that recipient delivered; `data` holds the last of these replies.
  bool lmtp = false;
  std::vector<Reply> rcptData;
  // `data` is the server's reply to the final "." of the message: the only reply that can
  // accept it (RFC 5321 §4.3.2, §3.3). False for a refused DATA, a protocol error, a local
  // refusal or a failed connection.
  bool bodyAnswered = false;
};

class SmtpClient : public std::enable_shared_from_this<SmtpClient> {
 public:
  using ConnectDone = std::function<void(std::shared_ptr<SmtpClient>, const std::string& error, const Reply& reply)>;

  // Connects, reads the greeting, EHLO (HELO if EHLO gets a 5xx), STARTTLS per Options
  // (Require: fail if not offered or the handshake fails; May: use it when offered, stay in
  // plain text if not offered or refused, and if the handshake fails, go on over a new
  // plain-text connection, RFC 7435, also when the handshake does not finish within the
  // command timeout; EHLO again after TLS). done(client, error, reply)
  // runs once: client is null on failure, and `reply` is the greeting on success or the
  // reply that made it fail (code 0 for network/TLS/timeouts). A refused greeting, EHLO or
  // HELO (but a 421) fails once the QUIT that follows it is answered (RFC 5321 §4.1.1.10).
  //
  // With Options::auth, AUTH follows that last EHLO: PLAIN (initial response) when offered,
  // else LOGIN. It fails (client null) when the connection is not encrypted, the server
  // offers neither, or refuses the credentials (`reply`: its reply to AUTH); the error then
  // begins with "4.7.0 " (the queue manager defers, never bounces: a wrong password in
  // Moat's config must not return everyone's mail).
  static void connect(uv_loop_t* loop, const IpAddress& ip, uint16_t port, Options opts, ConnectDone done);
  // The same over a Unix-domain socket (an LMTP server's, Options::lmtp), on the loop.
  static void connectUnix(uv_loop_t* loop, const std::string& path, Options opts, ConnectDone done);

  explicit SmtpClient(uv_loop_t* loop, Options opts);  // use connect()
  ~SmtpClient();
  SmtpClient(const SmtpClient&) = delete;
  SmtpClient& operator=(const SmtpClient&) = delete;

  // One transaction at a time (usable() must be true, else done gets an error at once).
  // `done` runs exactly once, from the loop; the client keeps itself alive until then.
  void send(Transaction t, std::function<void(TransactionResult)> done);
  bool usable() const;        // connected, greeted and idle
  // QUIT, wait for the reply (bounded by the command timeout), close; idempotent. `done`
  // runs once the connection is closed: at the reply, an error or the timeout, or at once
  // when there is nothing to close.
  void quit(std::function<void()> done = nullptr);
  void abort();               // close now; a running transaction gets an error

  bool tlsActive() const;
  std::string tlsSummary() const;  // "TLSv1.3 TLS_AES_256_GCM_SHA384", "" without TLS
  bool tlsVerified() const;        // the peer's certificate verified (client context verifying)
  bool tlsDane() const;            // the peer was authenticated by DANE TLSA records (RFC 7672)
  bool tlsClientCertificate() const;  // the server asked for a client certificate and got ours
  const std::string& peerName() const { return peerName_; }         // from the greeting
  const std::string& authenticatedAs() const { return authUser_; }  // "" = no AUTH
  // The source address bound for this connection's family (Options), "" = none.
  std::string source() const;
  // Non-empty (the handshake's error) when TlsMode::May fell back to plain text.
  const std::string& tlsFallback() const { return tlsFallback_; }
  bool supports(std::string_view ext) const;                 // EHLO keyword, upper-case
  // The EHLO parameter of a keyword ("35882577" for SIZE), "" if none or not offered.
  std::string extensionParam(std::string_view ext) const;

 private:
  enum class State { Connecting, Idle, Busy, Quitting, Closed };
  struct Expect {
    std::function<void(const Reply&)> fn;
    uint64_t timeoutMs;
  };
  struct Body;  // the dot-stuffing writer

  void start(std::shared_ptr<net::Connection> conn);
  void onData(std::string_view piece);
  void onReply(const Reply& r);
  void expect(uint64_t timeoutMs, std::function<void(const Reply&)> fn);
  void armTimer();
  void command(const std::string& line, uint64_t timeoutMs, std::function<void(const Reply&)> fn);
  void fail(const std::string& error, const Reply& reply = {});

  void onGreeting(const Reply& r);
  void sendEhlo();
  void onEhlo(const Reply& r);
  void onHelo(const Reply& r);
  // RFC 5321 §4.1.1.10: the channel is closed only after a QUIT, also when the server refused
  // the session (§3.1: one that greets with 554 waits for the QUIT) or Moat gives it up before
  // a transaction (no STARTTLS under tls = "require", AUTH refused). The connection then fails
  // with `error` and `r` once the QUIT is answered, the server closes or the command timeout
  // passes. After a 421 it fails at once.
  void quitThenFail(const std::string& error, const Reply& r = {});
  void afterHello();
  void onStartTls(const Reply& r);
  void reconnectPlain(const std::string& error);
  void authenticate();
  void onAuthLoginStep(const Reply& r, int step);
  void onAuthDone(const Reply& r);
  void connected();

  bool envelopeSafe(const Transaction& t) const;
  // The message against the next hop's SMTPUTF8 and 8BITMIME: converted where it must be and
  // can be, refused locally where it cannot; then begin(). Busy, with txDone_ set.
  // `utf8Failure`: why utf8Downgrade could not convert it ("" when it was not tried).
  void prepare(Transaction t, std::string utf8Failure = "");
  // Runs the converter `fn` over t's message; `then` runs with the result unless the
  // transaction ended meanwhile (the connection failed).
  using Converted = std::function<void(SmtpClient&, Transaction, bool ok, std::string converted, std::string reason)>;
  void convert(const Downgrade& fn, Transaction t, Converted then);
  void refuseNow(int code, std::string text);  // a local refusal while Busy: finish()es
  void begin(Transaction t);
  uint64_t fixedMaxSize() const;  // the next hop's SIZE (RFC 1870), 0: none announced
  std::string mailCommand() const;
  std::string rcptCommand(size_t i) const;
  bool dsnValueFits(std::string_view value) const;  // ENVID/ORCPT: UTF-8 only with SMTPUTF8 in use
  void onMail(const Reply& r);
  void sendRcpt(size_t i);
  void onRcpt(size_t i, const Reply& r);
  void onDataReply(const Reply& r);
  void pumpBody();
  void onDataDone(const Reply& r);
  void onLmtpReply(size_t i, const Reply& r);  // RFC 2033 §4.2: recipient i's reply after the dot
  // BDAT: the message in chunks of at most kBodyPiece octets, each "BDAT SIZE[ LAST]" with
  // its octets and a reply of its own (pipelined); appended to `batch` when given.
  void writeChunk(std::string piece, bool last, std::string* batch = nullptr);
  void pumpChunks();
  void startChunks();  // a large message, once every RCPT is answered
  void onChunkReply(const Reply& r, bool last);
  void resetThenFinish();
  // A 421 (RFC 5321 §3.8: the server is closing the channel) ends the transaction at once:
  // every reply not yet received becomes `r`, and the connection is closed. False otherwise.
  bool closingReply(const Reply& r);
  // Reports the transaction; with a non-empty `closeWhy`, closes the connection first, so the
  // caller never sees it as usable (and never starts the next message on it).
  void finish(const std::string& closeWhy = "");

  uv_loop_t* loop_;
  Options opts_;
  std::shared_ptr<net::Connection> conn_;
  std::shared_ptr<SmtpClient> self_;  // set while an operation runs, so it can finish
  uv::Timer timer_;
  State state_ = State::Connecting;
  ConnectDone connectDone_;
  Reply greeting_;
  std::string peerName_;
  Extensions ext_;
  bool tlsTried_ = false;
  IpAddress ip_;
  uint16_t port_ = 0;
  std::string path_;  // connectUnix(): the socket's path ("" over TCP)
  std::string tlsFallback_;
  std::string authUser_;

  // Reply parsing.
  ReplyReader reader_;
  std::deque<Expect> expects_;  // in order; front is answered next

  // The running transaction.
  Transaction tx_;
  TransactionResult result_;
  std::function<void(TransactionResult)> txDone_;
  bool pipelining_ = false, mailOk_ = false;
  // BDAT in use for this transaction; a chunk was refused (no more are sent, RSET at the end);
  // a large message waiting for the RCPT replies before its chunks go.
  bool chunking_ = false, chunkFailed_ = false, chunksAfterRcpts_ = false;
  size_t accepted_ = 0;
  std::unique_ptr<Body> body_;
  std::function<void()> quitDone_;
};

}  // namespace moat::mta::client
