// policy/client_credentials.h — the credentials Moat gives a next hop that wants SMTP AUTH
// ([[route]] auth_file, Postfix's smtp_sasl_password_maps for one route): a file with one
// `USERNAME:PASSWORD` line, split at the first ':' (the password may hold more), '#'
// comments and blank lines allowed. Kept out of moat.toml, which is often world-readable:
// the file should be readable by Moat's user alone (worldReadable() lets `moat check` say
// so).
//
// Untrusted input: none (the admin's file); still bounded (64 KiB, RFC 4616 §2's 255
// octets a name and a password) so a wrong path (a log, a mailbox) is refused quickly.
// Loaded whole into an immutable object per policy snapshot, so SIGHUP rereads it and a
// broken file is refused with FILE:LINE while the running one stays. The password is
// never logged and is wiped from memory when the last snapshot holding it goes.
#pragma once
#include <memory>
#include <string>
#include <string_view>

#include "policy/errors.h"

namespace moat::policy {

class ClientCredentials {
 public:
  ClientCredentials() = default;
  ~ClientCredentials();
  ClientCredentials(const ClientCredentials&) = delete;
  ClientCredentials& operator=(const ClientCredentials&) = delete;

  // nullptr with `errors` filled (FILE:LINE) when the file cannot be read, a line is bad, or
  // it holds no credential line or more than one.
  static std::shared_ptr<const ClientCredentials> load(const std::string& path, Errors& errors);
  // The same on the file's text (for tests); `path` only names it in errors.
  static std::shared_ptr<const ClientCredentials> parse(std::string_view text, const std::string& path, Errors& errors);

  const std::string& username() const { return username_; }
  const std::string& password() const { return password_; }
  const std::string& path() const { return path_; }
  // The file's permission bits let every user read it (mode & 004), "" when they do not or
  // it cannot be looked at; else the mode as "0644".
  static std::string worldReadable(const std::string& path);

 private:
  std::string path_, username_, password_;
};

}  // namespace moat::policy
