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
// event loop. It costs the same for an unknown name as for a known one (a dummy hash of the
// file's costliest hash stands in), so the timing does not tell which names exist. The
// first verify() (on the pool) times crypt(3) once per distinct method and cost in the
// file to choose it; loading, which runs on the loop at SIGHUP, runs no crypt(3) at all.
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
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  struct User {
    std::string hash;
    std::vector<std::string> senders;  // lower-case; empty = any
  };
  std::map<std::string, User, std::less<>> users_;
  // For names not in the file: one setting per cost class in it; the dummy hash itself is
  // made by the first verify() (dummyHash()).
  std::vector<std::string> costSettings_;
  const std::string& dummyHash() const;
  mutable std::once_flag dummyOnce_;
  mutable std::string dummyHash_;
};

}  // namespace moat::policy
