// policy/batv.cc — see batv.h.
#include "policy/batv.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>

#include "mta/runtime/hex.h"
#include "policy/section.h"

namespace moat::policy::batv {
namespace {

constexpr std::string_view kPrefix = "prvs=";
constexpr size_t kTagLength = 10;  // K DDD SSSSSS

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& ch : out)
    if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
  return out;
}

bool startsWithPrefix(std::string_view s) { return s.size() >= kPrefix.size() && lower(s.substr(0, 5)) == kPrefix; }

// The six hex digits of the signature over `keyDigit` `day` and the mailbox.
std::string signature(std::string_view key, std::string_view keyDigitAndDay, std::string_view mailbox) {
  std::string input(keyDigitAndDay);
  input += lower(mailbox);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(EVP_sha1(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(input.data()),
            input.size(), mac, &len) ||
      len < 3)
    return "";
  std::string out;
  for (int i = 0; i < 3; ++i) mta::appendHex(out, mac[i]);
  return out;
}

std::string threeDigits(int64_t day) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%03d", static_cast<int>(((day % 1000) + 1000) % 1000));
  return buf;
}

}  // namespace

int64_t dayNumber(int64_t unixSeconds) {
  return unixSeconds >= 0 ? unixSeconds / 86400 : -((-unixSeconds + 86399) / 86400);
}

std::string tag(std::string_view address, std::string_view key, int64_t today, int maxAgeDays, int keyNumber) {
  std::string head = std::to_string(keyNumber % 10) + threeDigits(today + maxAgeDays);
  return std::string(kPrefix) + head + signature(key, head, address) + "=" + std::string(address);
}

bool looksTagged(std::string_view address) { return startsWithPrefix(address); }

std::string untagged(std::string_view address) {
  if (!startsWithPrefix(address)) return std::string(address);
  std::string_view rest = address.substr(kPrefix.size());
  if (address.rfind('@') == std::string_view::npos || rest.size() < kTagLength + 1 || rest[kTagLength] != '=')
    return std::string(address);
  std::string_view mailbox = rest.substr(kTagLength + 1);
  if (mailbox.empty() || mailbox.front() == '@') return std::string(address);
  return std::string(mailbox);
}

const char* resultName(Result r) {
  switch (r) {
    case Result::NotTagged: return "none";
    case Result::Valid: return "valid";
    case Result::Expired: return "expired";
    case Result::Invalid: return "invalid";
  }
  return "none";
}

Checked verify(std::string_view address, std::string_view key, int64_t today, int maxAgeDays) {
  Keys keys;
  keys.current = std::string(key);
  keys.number = -1;  // whatever K the tag names
  return verify(address, keys, today, maxAgeDays);
}

Checked verify(std::string_view address, const Keys& keys, int64_t today, int maxAgeDays) {
  Checked out;
  out.address = std::string(address);
  if (!startsWithPrefix(address)) return out;
  // prvs=KDDDSSSSSS=local@domain: anything else after "prvs=" is a tag that does not verify,
  // and the address stays as given (there is no untagged form to name).
  size_t at = address.rfind('@');
  std::string_view rest = address.substr(kPrefix.size());
  if (at == std::string_view::npos || rest.size() < kTagLength + 1 || rest[kTagLength] != '=') {
    out.result = Result::Invalid;
    return out;
  }
  std::string_view tagVal = rest.substr(0, kTagLength);
  std::string_view mailbox = rest.substr(kTagLength + 1);
  bool digits = true;
  for (size_t i = 0; i < 4; ++i) digits = digits && tagVal[i] >= '0' && tagVal[i] <= '9';
  if (!digits || mailbox.empty() || mailbox.front() == '@') {
    out.result = Result::Invalid;
    return out;
  }
  out.address = std::string(mailbox);
  const std::string got = lower(tagVal.substr(4));
  auto signedWith = [&](std::string_view key) {
    std::string want = signature(key, tagVal.substr(0, 4), mailbox);
    return want.size() == got.size() && CRYPTO_memcmp(want.data(), got.data(), want.size()) == 0;
  };
  // The key the tag's K names first: the current one when K is its number, else the previous
  // ones (K is a hint, not a selector: a rotation that kept the number leaves tags of both).
  const bool currentFirst = keys.number < 0 || tagVal[0] - '0' == keys.number;
  if (currentFirst && signedWith(keys.current)) out.key = 0;
  for (size_t i = 0; out.key < 0 && i < keys.previous.size(); ++i)
    if (signedWith(keys.previous[i])) out.key = static_cast<int>(i) + 1;
  if (out.key < 0 && !currentFirst && signedWith(keys.current)) out.key = 0;
  if (out.key < 0) {
    out.result = Result::Invalid;
    return out;
  }
  // Days from today to the expiry day, read modulo 1000 as it is written.
  int64_t expiry = (tagVal[1] - '0') * 100 + (tagVal[2] - '0') * 10 + (tagVal[3] - '0');
  int64_t left = ((expiry - today % 1000) % 1000 + 1000) % 1000;
  out.result = left <= maxAgeDays ? Result::Valid : Result::Expired;
  return out;
}

std::string refusalText(std::string_view address) {
  return "<" + std::string(address) +
         ">: Recipient address rejected: bounce verification failed (no message of ours went out with this return "
         "path)";
}

std::shared_ptr<const std::string> loadKey(const std::string& path, const std::string& configPath, int line,
                                           Errors& errors, const std::string& keyName) {
  const std::string& key = keyName;
  if (std::string reason = unreadableReason(path); !reason.empty()) {
    reportUnreadable(errors, configPath, line, key, path, reason);
    return nullptr;
  }
  std::ifstream in(path, std::ios::binary);
  std::string secret;
  char buf[1024];
  while (in && secret.size() <= kMaxKeyBytes) {
    in.read(buf, sizeof buf);
    secret.append(buf, static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) {
    reportUnreadable(errors, configPath, line, key, path, std::strerror(errno));
    return nullptr;
  }
  while (!secret.empty() &&
         (secret.back() == '\n' || secret.back() == '\r' || secret.back() == ' ' || secret.back() == '\t'))
    secret.pop_back();
  if (secret.size() > kMaxKeyBytes) {
    errors.error(configPath, line, key + ": " + path + " is over " + std::to_string(kMaxKeyBytes) + " bytes");
    return nullptr;
  }
  if (secret.size() < kMinKeyBytes) {
    errors.error(configPath, line,
                 key + ": " + path + " holds " + std::to_string(secret.size()) + " bytes; the secret needs at least " +
                     std::to_string(kMinKeyBytes) + " (e.g. openssl rand -hex 32 > FILE)");
    return nullptr;
  }
  return std::make_shared<const std::string>(std::move(secret));
}

}  // namespace moat::policy::batv
