// policy/users.h — the credentials a submission listener checks SMTP AUTH against
// ([[listener]] auth_users): a file of `NAME:HASH` lines, the hash in crypt(3) form
// (yescrypt "$y$", bcrypt "$2b$", sha512crypt "$6$": `mkpasswd -m yescrypt`,
// `openssl passwd -6`), optionally followed by `:SENDERS`, the envelope senders the user
// may use: comma-separated addresses and `@domain`s (without it, any). Blank lines and
// lines starting with '#' are ignored.
//
// Loaded whole into an immutable UserDb per policy snapshot, so SIGHUP rereads it and a
// broken file is refused with FILE:LINE while the running one stays. Hash methods libcrypt
// calls legacy (DES, md5crypt, sha256crypt) or disabled are refused at load, not at login.
//
// verify() runs crypt(3), which is slow by design: call it on the thread pool, never on the
// event loop. An unknown name costs what a known one does, so the timing does not tell
// which names exist: it is checked against a dummy hash of the cost (method and
// parameters) of a user picked by an HMAC-SHA256 of the name under a per-process random key,
// so unknown names spread over the file's costs as its users do, and one name always gets
// the same. The first verify() (on the pool) makes one dummy per distinct method and cost
// in the file; loading, which runs on the loop at SIGHUP, runs no crypt(3) at all.
#pragma once
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "policy/errors.h"

namespace moat::policy {

class UserDb {
 public:
  // nullptr with `errors` filled (FILE:LINE) when the file cannot be read or a line is bad.
  static std::shared_ptr<const UserDb> load(const std::string& path, Errors& errors);

  // Blocking (crypt(3)); thread-safe. Name compared byte for byte, password in constant time.
  bool verify(std::string_view name, std::string_view password) const;
  // Whether `name` (an existing user) may send with envelope sender `address`: always when
  // the user's line names no senders; else an exact address (ASCII case-insensitive) or
  // an "@domain" entry of its domain.
  bool maySendAs(std::string_view name, std::string_view address) const;
  size_t size() const { return users_.size(); }
  // The cost class whose crypt(3) verify(name) pays, an index (0..classes-1) in the order the
  // file first shows each: the user's own, or for an unknown name that of a user picked by
  // the keyed hash of the name (stable for the process). For tests.
  size_t costClassOf(std::string_view name) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  struct User {
    std::string hash;
    std::vector<std::string> senders;  // lower-case; empty = any
    size_t costClass = 0;              // index in costSettings_
  };
  std::map<std::string, User, std::less<>> users_;
  // For names not in the file: one setting per cost class in it, and each user's class in
  // file order (what an unknown name draws from); the dummy hashes themselves are made by
  // the first verify() (dummyHashes()).
  std::vector<std::string> costSettings_;
  std::vector<size_t> userClasses_;
  const std::vector<std::string>& dummyHashes() const;
  size_t drawnClass(std::string_view name) const;  // the class a name draws when unknown
  mutable std::once_flag dummyOnce_;
  mutable std::vector<std::string> dummyHashes_;
};

}  // namespace moat::policy
