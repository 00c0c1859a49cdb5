// queue/tls_required.h — the TLS-Required header field of RFC 8689 §3: "TLS-Required: No"
// asks that recipient-side TLS policies (MTA-STS, DANE) be ignored when the message is
// relayed, so it goes even where they would stop it (§4.2.2).
//
// Untrusted input: the message's header section, as a client sent it. Only the header
// section is read (up to the first empty line, at most kMaxHeaderBytes); folded fields are
// unfolded; the field name is matched case-insensitively, the value "No" likewise, with
// surrounding white space and a trailing comment-free value only. Logs nothing.
#pragma once
#include <cstddef>
#include <string_view>

namespace moat::queue {

// Header bytes read at most: a field past them is not looked for.
inline constexpr size_t kMaxTlsRequiredHeaderBytes = 256 * 1024;

// True when the message's header section has a TLS-Required field whose value is "No".
bool tlsRequiredNo(std::string_view message);

}  // namespace moat::queue
