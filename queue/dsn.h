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
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moat::queue {

struct DsnRecipient {
  std::string address, orcpt;
  std::string action;      // failed | delayed | delivered | relayed | expanded
  std::string status;      // "5.1.1"
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

// RFC 5322 date-time in UTC, e.g. "Sun, 22 Nov 2026 12:00:00 +0000".
std::string rfc5322Date(int64_t ms);
// One header field "Name: value" folded at spaces to lines of at most 78 octets where
// possible (998 always; a longer word is broken between, never inside, UTF-8 sequences),
// CRLF-terminated.
std::string foldHeader(std::string_view name, std::string_view value);

}  // namespace moat::queue
