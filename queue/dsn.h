// queue/dsn.h — builds delivery status notifications: RFC 3464 (message/delivery-status)
// inside RFC 3462/6522 multipart/report, auto-replied per RFC 3834, with the original
// message as message/rfc822 (or its header block as text/rfc822-headers for RET=HDRS, or
// when the original is too big or has lines a DSN could not carry). CRLF line endings,
// lines ≤ 998 octets, long header fields folded, never inside a UTF-8 sequence.
// For an internationalized original (DsnInput::international) the DSN is RFC 6533's global
// one: the report is message/global-delivery-status (§6.4) with non-ASCII addresses typed
// "utf-8" (§3), the original message/global (RFC 6532 §3.7) or its headers
// message/global-headers (§6.3), and To: and the notification carry UTF-8 (RFC 6532 §3.2).
// Untrusted input: the recipients' addresses, the remote replies (Diagnostic-Code) and the
// original message all come from peers: control characters are removed from fields, so a
// peer cannot inject header lines; non-ASCII bytes in fields are replaced in a plain DSN,
// and in a global one kept only as well-formed UTF-8 (U+FFFD otherwise). A non-ASCII address
// in a plain DSN takes the 7-bit utf-8-addr-xtext form (\x{HHHH}, RFC 6533 §3). Logs nothing.
// The caller never builds a DSN for the null sender or for a DSN (Envelope::isBounce).
//
// downgradeGlobalDsn turns a global DSN that Moat built into a plain, 7-bit one for a next hop
// without SMTPUTF8 (see there).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moat::queue {

struct DsnRecipient {
  std::string address, orcpt;
  std::string action;      // failed | delayed | delivered | relayed | expanded
  std::string status;      // "5.1.1"; with "delayed", class 5 is written as 4 (RFC 3464 §2.3.4)
  std::string diagnostic;  // "smtp; 550 5.1.1 no such user"
  std::string remoteMta;   // host name or address of the MTA that answered ("" = none)
  int64_t lastAttemptMs = 0;
  int64_t willRetryUntilMs = 0;  // delayed only: when the message expires
};

struct DsnInput {
  std::string reportingMta;  // our hostname
  std::string sender;        // envelope sender = To of the DSN
  std::string envid;
  std::string originalMessageId;
  int64_t arrivalMs = 0;
  std::vector<DsnRecipient> rcpts;
  bool headersOnly = false;  // RET=HDRS
  // The original is internationalized (RFC 6530): it came with SMTPUTF8, or an address in it
  // (sender, recipient, ORCPT) is not ASCII. Its DSN is then a global one (RFC 6533).
  bool international = false;
  // Additions: the DSN's own Date (0 = now), Message-ID ("" = generated), and the size over
  // which only the original's headers are returned.
  int64_t nowMs = 0;
  std::string messageId;
  uint64_t maxOriginalBytes = 10u << 20;
};

std::string buildDsn(const DsnInput& in, std::string_view originalMessage);

// A global DSN of buildDsn's made fit for a return path without SMTPUTF8: UTF-8 in the DSN's
// own header fields needs SMTPUTF8 (RFC 6531 §3.4), and a mail system without it cannot be
// counted on to read RFC 6533's global types; RFC 6533 §3 gives a non-ASCII address a 7-bit
// form for a plain report (utf-8-addr-xtext). `message`: the DSN as it goes, the gateway's
// header lines then buildDsn's bytes. The result is a plain DSN, every byte 7-bit:
//   - message/global-delivery-status becomes message/delivery-status, each "utf-8" address
//     in its utf-8-addr-xtext form (utf-8; m\x{FC}ller@...) and any other non-ASCII in a
//     field '?', as buildDsn writes a plain report;
//   - the original (message/global, or message/global-headers) is returned by its header
//     section only, as text/rfc822-headers; with UTF-8 in it, charset=utf-8 and
//     quoted-printable (as RFC 6522's registration of the type allows for headers that
//     are not 7-bit), so nothing of them is lost;
//   - a UTF-8 notification is quoted-printable, charset=utf-8;
//   - a non-ASCII References field (the original's Message-ID) is left out: a message
//     identifier has no 7-bit form. Every other line stays as it was.
// Only a DSN whose envelope recipient, and so To:, is ASCII can be downgraded. Anything that
// is not a DSN as buildDsn writes them (three parts, its boundary), or has UTF-8 in another
// top-level header field, is refused with a reason. Pure, and linear in the message's size;
// the output is at most about three times the notification and the original's header
// section (bounded as in buildDsn) plus the report.
struct DsnDowngrade {
  bool ok = false;
  std::string message;  // ok: the 7-bit DSN (CRLF)
  std::string reason;   // !ok: one line of printable ASCII
};
DsnDowngrade downgradeGlobalDsn(std::string_view message);

// RFC 3461 §4.1: whether a recipient's NOTIFY (as received, upper-case) names `word`
// (SUCCESS, FAILURE, DELAY). Without NOTIFY, failures and delays are reported (§5.2.5,
// §5.2.6), success is not.
bool notifyWants(std::string_view notify, std::string_view word);
// NOTIFY without `word`; "NEVER" when nothing is left.
std::string notifyWithout(std::string_view notify, std::string_view word);

// RFC 5322 date-time in UTC, e.g. "Sun, 22 Nov 2026 12:00:00 +0000".
std::string rfc5322Date(int64_t ms);

// The ORCPT a relaying MTA adds for a recipient received without one (RFC 3461 §4.2): the
// address as received, "rfc822;" and xtext ('+', '=' and what is not printable ASCII as
// "+HH"). "" for an address with a byte over 0x7f, which needs RFC 6533's utf-8 type and
// SMTPUTF8: it then goes without.
std::string defaultOrcpt(std::string_view address);
// One header field "Name: value" folded at spaces to lines of at most 78 octets where
// possible (998 always; a longer word is broken between, never inside, UTF-8 sequences),
// CRLF-terminated.
std::string foldHeader(std::string_view name, std::string_view value);

}  // namespace moat::queue
