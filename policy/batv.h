// policy/batv.h — bounce address tag validation ([bounce_verification]), the "prvs" scheme
// of draft-levine-smtp-batv-01 §4 ("simple private signature"), as Cisco's bounce
// verification and Exim's prvs do. Outbound mail leaves with the envelope sender
//
//     prvs=KDDDSSSSSS=local@domain
//
// K: the key number (one decimal digit: bounce_verification.key_number, 0 by default). DDD: the day the tag expires,
// as days since 1970-01-01 (UTC) modulo 1000, three digits. SSSSSS: the first three octets
// of HMAC-SHA1 (RFC 2104; OpenSSL's) under the secret over "K" "DDD" and the mailbox
// local@domain, in lower-case hex. The mailbox is lower-cased for the HMAC: nearly every
// system compares local parts without case, and some bounce with the address lower-cased.
// A bounce (null sender) is genuine only when it comes back to such an address whose tag
// verifies and has not expired.
//
// Key rotation: tags are made with the current key only; a tag verifies under the current
// key or any previous one (Keys). K names the key a tag was made with, so the verifier tries
// the current key first when K is its number and the previous keys first otherwise; every
// key is tried either way (a rotation need not change the number), at most 1 + 9 HMACs.
//
// Untrusted input: the addresses of RCPT commands (verify()). The secret comes from a file
// of at least kMinKeyBytes octets (loadKey), as each previous one. Logs nothing: Checked::key
// says which key made a tag, and the session logs a tag of a previous key (batv_previous_key).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "policy/errors.h"

namespace moat::policy::batv {

inline constexpr size_t kMinKeyBytes = 16;
inline constexpr size_t kMaxKeyBytes = 4096;
inline constexpr int kMaxAgeDays = 30;  // the longest bounce_verification.max_age
inline constexpr size_t kMaxPreviousKeys = 9;  // bounce_verification.previous_key_files

// The secrets in use: tags are made with `current` and number `number`; a tag made with any
// of `previous` (the keys of before a rotation) still verifies until it expires.
struct Keys {
  std::string current;
  int number = 0;  // 0-9, the K of the tags made
  std::vector<std::string> previous;
};

// Whole days since 1970-01-01 UTC of `unixSeconds`.
int64_t dayNumber(int64_t unixSeconds);

// `address` (local@domain, not null, not tagged) tagged with `key`, expiring `maxAgeDays`
// after day `today`.
std::string tag(std::string_view address, std::string_view key, int64_t today, int maxAgeDays, int keyNumber = 0);

// Whether the local part of `address` begins with "prvs=" (any case): a tag, valid or not.
bool looksTagged(std::string_view address);

// `address` without a tag of the form prvs=KDDDSSSSSS= (whether or not it verifies: no key
// is asked), else as given. What a sender is matched by where the tag says nothing
// ([[route]] senders).
std::string untagged(std::string_view address);

enum class Result { NotTagged, Valid, Expired, Invalid };
const char* resultName(Result r);  // "none", "valid", "expired", "invalid"

struct Checked {
  Result result = Result::NotTagged;
  std::string address;  // Valid, Expired, Invalid: the address without its tag; else as given
  // Valid, Expired: the key that made the tag: 0 the current one, N previous[N - 1] (the Nth
  // of bounce_verification.previous_key_files). Else -1.
  int key = -1;
};
// `address` checked on day `today`: a tag is valid when its signature is the one `key`
// makes (compared in constant time) and its expiry day is today or within `maxAgeDays`
// after it (modulo 1000, as the day is written).
Checked verify(std::string_view address, std::string_view key, int64_t today, int maxAgeDays);
// The same under several keys: valid when the signature is the one any of `keys` makes (the
// current key first when the tag's K is keys.number, else the previous ones first), expired
// when one of them made it and it has expired.
Checked verify(std::string_view address, const Keys& keys, int64_t today, int maxAgeDays);

// The text of the 550 5.7.1 a refused bounce gets at RCPT (`moat serve` and `moat scan`).
std::string refusalText(std::string_view address);

// The secret in `path` (trailing CR, LF, space and tab dropped): at least kMinKeyBytes,
// at most kMaxKeyBytes. Else nullptr, with "FILE:LINE: KEYNAME: ..." reported at
// `configPath`:`line` (`keyName`: bounce_verification.key_file or .previous_key_files).
std::shared_ptr<const std::string> loadKey(const std::string& path, const std::string& configPath, int line,
                                           Errors& errors, const std::string& keyName = "bounce_verification.key_file");

}  // namespace moat::policy::batv
