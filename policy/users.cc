// policy/users.cc — see users.h.
#include "policy/users.h"

#include <crypt.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <mutex>

#include "mta/runtime/scan.h"
#include "policy/list_file.h"

namespace moat::policy {

namespace {

constexpr size_t kMaxName = 255;  // RFC 4616 §2: authcid is at most 255 octets
constexpr size_t kMaxHash = CRYPT_OUTPUT_SIZE - 1;
constexpr size_t kMaxFile = 64ull << 20;

// A name as a SASL client can send it (UTF-8 without controls), and no ':' (the separator).
bool validName(std::string_view name) {
  return !name.empty() && name.size() <= kMaxName && name.find(':') == std::string_view::npos &&
         mta::isPrintableUtf8(name);
}

bool cryptAlphabet(std::string_view s) {
  for (char c : s)
    if (!(c == '.' || c == '/' || (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
      return false;
  return true;
}

// The shape of a whole crypt(3) output, which crypt_checksalt (it reads only the setting)
// does not check: "$id$...$" and a non-empty hash in the crypt alphabet after the last '$',
// or the 13 characters of a traditional DES hash. A truncated hash would never match.
bool looksLikeHash(std::string_view h) {
  if (h.size() > kMaxHash) return false;
  if (h.empty() || h[0] != '$') return h.size() == 13 && cryptAlphabet(h);
  size_t last = h.rfind('$');
  return last > 1 && last + 1 < h.size() && cryptAlphabet(h.substr(last + 1));
}

// SENDERS: comma-separated addresses ("alice@example.test") and domains ("@example.test"),
// kept lower-case. `bad` names the first entry that is neither.
bool parseSenders(std::string_view text, std::vector<std::string>& out, std::string& bad) {
  while (!text.empty()) {
    size_t comma = text.find(',');
    std::string_view item = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    if (item.empty()) continue;
    if (!isAddressOrDomain(item)) {
      bad = std::string(item);
      return false;
    }
    out.push_back(lowerAscii(item));
  }
  return true;
}

std::string describeBadHash(int check) {
  switch (check) {
    case CRYPT_SALT_METHOD_LEGACY:
      return "a legacy hash method (DES, md5crypt or sha256crypt) is refused: use yescrypt "
             "(mkpasswd -m yescrypt) or sha512crypt (openssl passwd -6)";
    case CRYPT_SALT_METHOD_DISABLED: return "the hash method is disabled in this system's libcrypt";
    default: return "not a crypt(3) hash (expected e.g. \"$y$...\", \"$2b$...\" or \"$6$...\")";
  }
}

// crypt(3) with its scratch space on the heap (struct crypt_data is ~32 KB: too big for a
// thread-pool stack). "" when libcrypt refuses the setting.
std::string cryptHash(std::string_view password, const std::string& setting) {
  auto data = std::make_unique<crypt_data>();
  std::string pw(password);
  const char* out = crypt_rn(pw.c_str(), setting.c_str(), data.get(), sizeof *data);
  OPENSSL_cleanse(pw.data(), pw.size());
  std::string result = out && out[0] != '*' ? out : "";
  OPENSSL_cleanse(data.get(), sizeof *data);
  return result;
}

// The part of a hash that sets what crypt(3) costs: the method and its parameters, without
// the salt and the hash ("$6$rounds=5000", "$y$j9T", "$2b$12"). Where the parameters share a
// field with the salt (scrypt's "$7$", others), the whole setting: each its own class.
std::string costClass(std::string_view h) {
  std::string_view setting = h.substr(0, h.rfind('$'));  // bcrypt: salt and hash are one field
  if (h.rfind("$2", 0) == 0) return std::string(setting);
  for (std::string_view m : {"$5$", "$6$", "$y$", "$gy$", "$sha1$"})
    if (h.rfind(m, 0) == 0) return std::string(setting.substr(0, setting.rfind('$')));
  return std::string(setting);
}

// 64 bits of HMAC-SHA256 of `name` under a key drawn once per process: stable per name for
// the process's life (reloads included), unpredictable from outside it.
uint64_t keyedHash(std::string_view name) {
  static const std::array<unsigned char, 32> key = [] {
    std::array<unsigned char, 32> k{};
    RAND_bytes(k.data(), static_cast<int>(k.size()));
    return k;
  }();
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int macLen = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(name.data()),
       name.size(), mac, &macLen);
  uint64_t h = 0;
  for (size_t i = 0; i < sizeof h && i < macLen; ++i) h = h << 8 | mac[i];
  return h;
}

}  // namespace

std::shared_ptr<const UserDb> UserDb::load(const std::string& path, Errors& errors) {
  auto db = std::make_shared<UserDb>();
  db->path_ = path;
  std::map<std::string, size_t> classes;  // cost class -> its index in costSettings_
  bool ok = readListFile(path, "users", kMaxFile, errors, [&](int line, std::string_view text) {
    size_t colon = text.find(':');
    if (colon == std::string_view::npos) {
      errors.error(path, line, "expected NAME:HASH or NAME:HASH:SENDERS");
      return false;
    }
    std::string name(text.substr(0, colon)), hash(text.substr(colon + 1)), senders;
    if (size_t c2 = hash.find(':'); c2 != std::string::npos) {  // no crypt(3) hash has a ':'
      senders = hash.substr(c2 + 1);
      hash.resize(c2);
    }
    if (!validName(name)) {
      errors.error(path, line, "the name must be 1-255 octets of UTF-8 without controls or ':'");
      return false;
    }
    int check = looksLikeHash(hash) ? crypt_checksalt(hash.c_str()) : CRYPT_SALT_INVALID;
    if (check != CRYPT_SALT_OK) {
      errors.error(path, line, "\"" + name + "\": " + describeBadHash(check));
      return false;
    }
    auto [cls, added] = classes.emplace(costClass(hash), db->costSettings_.size());
    if (added) db->costSettings_.push_back(hash);  // one hash of the class stands for it
    User user{hash, {}, cls->second};
    std::string badSender;
    if (!parseSenders(senders, user.senders, badSender)) {
      errors.error(path, line, "\"" + name + "\": \"" + badSender + "\" is not an address or @domain");
      return false;
    }
    if (!db->users_.emplace(name, std::move(user)).second) {
      errors.error(path, line, "\"" + name + "\" is listed twice");
      return false;
    }
    db->userClasses_.push_back(cls->second);
    return true;
  });
  if (!ok) return nullptr;
  if (db->costSettings_.empty()) {
    char buf[CRYPT_GENSALT_OUTPUT_SIZE];
    if (crypt_gensalt_rn(nullptr, 0, nullptr, 0, buf, sizeof buf)) db->costSettings_.push_back(buf);
  }
  return db;
}

// The dummies: a random password hashed with the setting (method, cost, salt) of each cost
// class in the file, or with libcrypt's default method for an empty file. Made by the first
// verify(), on the thread pool, whatever name it checks: never on the loop at a load.
const std::vector<std::string>& UserDb::dummyHashes() const {
  std::call_once(dummyOnce_, [this] {
    unsigned char random[16];
    RAND_bytes(random, sizeof random);
    std::string_view randomPassword(reinterpret_cast<char*>(random), sizeof random);
    for (const auto& setting : costSettings_) dummyHashes_.push_back(cryptHash(randomPassword, setting));
  });
  return dummyHashes_;
}

// A name not in the file takes the cost class of the user at a position its keyed hash
// picks: over unknown names, the classes come up as often as among the users, so the time
// of a wrong password has the same spread for both; and a name asked again takes the same
// class, so repeating it averages nothing out.
size_t UserDb::drawnClass(std::string_view name) const {
  return userClasses_.empty() ? 0 : userClasses_[keyedHash(name) % userClasses_.size()];
}

size_t UserDb::costClassOf(std::string_view name) const {
  auto it = users_.find(name);
  return it != users_.end() ? it->second.costClass : drawnClass(name);
}

bool UserDb::verify(std::string_view name, std::string_view password) const {
  const auto& dummies = dummyHashes();  // first, whatever the name: the same time for all
  size_t drawn = drawnClass(name);      // for every name, so the HMAC's time tells nothing either
  auto it = users_.find(name);
  if (it == users_.end() && drawn >= dummies.size()) return false;
  const std::string& hash = it != users_.end() ? it->second.hash : dummies[drawn];
  if (hash.empty()) return false;
  std::string computed = cryptHash(password, hash);
  bool match = it != users_.end() && computed.size() == hash.size() &&
               CRYPTO_memcmp(computed.data(), hash.data(), hash.size()) == 0;
  OPENSSL_cleanse(computed.data(), computed.size());
  return match;
}

bool UserDb::maySendAs(std::string_view name, std::string_view address) const {
  auto it = users_.find(name);
  if (it == users_.end()) return false;
  const auto& senders = it->second.senders;
  if (senders.empty()) return true;
  size_t at = address.rfind('@');
  for (const auto& s : senders) {
    if (s.front() == '@' ? at != std::string_view::npos && mta::iequalsAscii(address.substr(at), s)
                         : mta::iequalsAscii(address, s))
      return true;
  }
  return false;
}

}  // namespace moat::policy
