// mta/runtime/qp.h — quoted-printable (RFC 2045 §6.7), the transfer encoding for text that
// must travel 7-bit: the MIME down-conversion for a next hop without 8BITMIME
// (filters/mime/downgrade.h) and the 7-bit form of a global DSN for one without SMTPUTF8
// (queue/dsn.h) both write it. Pure; untrusted input: any bytes.
#pragma once
#include <string>
#include <string_view>

namespace moat::mta {

// Quoted-printable for text (RFC 2045 §6.7): CRLF, and a bare CR or LF, are hard line breaks
// (CRLF out); '=', control characters, bytes over 0x7e and a blank that ends a line are
// escaped; lines are at most 76 characters, soft line breaks ("=" CRLF) included. Input that
// does not end in a line break gives output that does not either.
std::string encodeQuotedPrintable(std::string_view text);

}  // namespace moat::mta
