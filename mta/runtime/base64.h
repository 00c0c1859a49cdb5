// mta/runtime/base64.h — base64 (RFC 4648 §4) for the parts of Moat that speak it: DKIM
// keys and signatures, SASL exchanges (RFC 4954), MIME bodies (RFC 2045 §6.8).
//
// Decoding reads untrusted text: nothing throws, the output is at most 3/4 of the input.
#pragma once
#include <optional>
#include <string>
#include <string_view>

namespace moat::mta {

std::string base64Encode(std::string_view bytes);
// The same in lines of 76 characters joined by CRLF, none after the last: the
// Content-Transfer-Encoding of MIME (RFC 2045 §6.8).
std::string base64EncodeLines(std::string_view bytes);

// Whitespace (as in DNS TXT records and PEM-like key files) is skipped; nullopt for any
// other character outside the alphabet, for more than two '=' or for data after '='.
std::optional<std::string> base64Decode(std::string_view text);

// A MIME body part's base64 (RFC 2045 §6.8): characters outside the alphabet (line breaks,
// junk) are ignored and the first '=' ends the data. Never fails.
std::string base64DecodeMime(std::string_view text);

// RFC 4648 §3.3/§3.5 as a protocol line carries it: no whitespace, a length that is a
// multiple of 4 and '=' only as its last one or two characters. nullopt otherwise.
std::optional<std::string> base64DecodeStrict(std::string_view text);

}  // namespace moat::mta
