// filters/mime/downgrade.h — converts an 8-bit message to 7-bit MIME for a next hop that does
// not offer 8BITMIME (RFC 6152 §3), the way Postfix and sendmail do it:
//   - a leaf whose body has bytes over 0x7f (labelled 7bit, 8bit or not at all) is
//     re-encoded: text/* quoted-printable (RFC 2045 §6.7), anything else base64 (§6.8); a
//     leaf labelled binary is always base64; base64 or quoted-printable bodies holding 8-bit
//     junk are re-encoded from what a reader decodes of them;
//   - multipart/* and message/rfc822 are never encoded (RFC 2045 §6.4): their children are
//     converted, and their own label 8bit (or binary) becomes 7bit;
//   - a message that is not MIME becomes MIME: MIME-Version: 1.0 and, without a Content-Type,
//     text/plain; charset=unknown-8bit (RFC 1428);
//   - every other byte (delimiters, parts left alone) stays as it was.
// What cannot be converted is refused with a reason: 8-bit bytes in a header (that mail needs
// SMTPUTF8, RFC 6532), outside every part (a preamble or epilogue), under a transfer encoding
// Moat does not know, or a structure past the parser's limits.
//
// Untrusted input: the whole message. Pure and bounded: no I/O, no logging, never throws on
// bad input; memory is the parser's (bounded by Limits) plus the output, at most a little over
// three times the input (quoted-printable of bytes that all need escaping).
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "filters/edit.h"
#include "filters/mime/mime.h"
#include "mta/runtime/base64.h"
#include "mta/runtime/qp.h"

namespace moat::filters::mime {

struct Downgraded {
  bool ok = false;       // false: the message cannot be converted, `reason` says why
  bool changed = false;  // ok and `message` differs from the input
  std::string message;   // ok: the 7-bit message (CRLF line ends)
  std::string reason;    // !ok: one line of printable ASCII, e.g. "8-bit bytes in a header"
};

// `message`: the whole message as it will be sent (the gateway's header lines and the
// spooled message; CRLF). A message without any 8-bit byte comes back unchanged unless one of
// its leaves is labelled binary.
Downgraded downgradeTo7Bit(std::string_view message, const Limits& limits = {});

// The same conversion as byte edits of `message` (filters/edit.h; sorted, apart, inside it),
// for a caller that stores the converted message as edits: the DKIM signer converts before
// it signs (RFC 6376 §5.3). ok: applyEdits(message, edits) is downgradeTo7Bit's message,
// byte for byte, and holds no 8-bit byte; no edits when nothing needs converting.
struct DowngradeEdits {
  bool ok = false;
  std::vector<Edit> edits;
  std::string reason;  // !ok: as Downgraded::reason
};
DowngradeEdits downgradeEdits(std::string_view message, const Limits& limits = {});

// Quoted-printable for text (RFC 2045 §6.7), in mta/runtime/qp.h so that the DSN builder can
// use it too.
using mta::encodeQuotedPrintable;

// Base64 (RFC 2045 §6.8) in lines of 76 characters, in mta/runtime/base64.h.
inline std::string encodeBase64(std::string_view bytes) { return mta::base64EncodeLines(bytes); }

}  // namespace moat::filters::mime
