// policy/batv.h — bounce address tag validation ([bounce_verification]), the "prvs" scheme
// of draft-levine-smtp-batv-01 §4 ("simple private signature"), as Cisco's bounce
// verification and Exim's prvs do. Outbound mail leaves with the envelope sender
//
//     prvs=KDDDSSSSSS=local@domain
//
// K: the key number (one decimal digit; Moat signs with 0). DDD: the day the tag expires,
// as days since 1970-01-01 (UTC) modulo 1000, three digits. SSSSSS: the first three octets
// of HMAC-SHA1 (RFC 2104; OpenSSL's) under the secret over "K" "DDD" and the mailbox
// local@domain, in lower-case hex. The mailbox is lower-cased for the HMAC: nearly every
// system compares local parts without case, and some bounce with the address lower-cased.
// A bounce (null sender) is genuine only when it comes back to such an address whose tag
// verifies and has not expired.
//
// Untrusted input: the addresses of RCPT commands (verify()). The secret comes from a file
// of at least kMinKeyBytes octets (loadKey). Logs nothing.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "policy/errors.h"

namespace moat::policy::batv {

inline constexpr size_t kMinKeyBytes = 16;
inline constexpr size_t kMaxKeyBytes = 4096;
inline constexpr int kMaxAgeDays = 30;  // the longest bounce_verification.max_age

// Whole days since 1970-01-01 UTC of `unixSeconds`.
int64_t dayNumber(int64_t unixSeconds);

// `address` (local@domain, not null, not tagged) tagged with `key`, expiring `maxAgeDays`
// after day `today`.
std::string tag(std::string_view address, std::string_view key, int64_t today, int maxAgeDays, int keyNumber = 0);

// Whether the local part of `address` begins with "prvs=" (any case): a tag, valid or not.
bool looksTagged(std::string_view address);

enum class Result { NotTagged, Valid, Expired, Invalid };
const char* resultName(Result r);  // "none", "valid", "expired", "invalid"

struct Checked {
  Result result = Result::NotTagged;
  std::string address;  // Valid, Expired, Invalid: the address without its tag; else as given
};
// `address` checked on day `today`: a tag is valid when its signature is the one `key`
// makes (compared in constant time) and its expiry day is today or within `maxAgeDays`
// after it (modulo 1000, as the day is written).
Checked verify(std::string_view address, std::string_view key, int64_t today, int maxAgeDays);

// The secret in `path` (trailing CR, LF, space and tab dropped): at least kMinKeyBytes,
// at most kMaxKeyBytes. Else nullptr, with "FILE:LINE: bounce_verification.key_file: ..."
// reported at `configPath`:`line`.
std::shared_ptr<const std::string> loadKey(const std::string& path, const std::string& configPath, int line,
                                           Errors& errors);

}  // namespace moat::policy::batv
