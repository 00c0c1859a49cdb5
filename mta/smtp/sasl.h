// mta/smtp/sasl.h — the server side of SMTP AUTH's SASL exchange (RFC 4954) for the two
// mechanisms mail clients use over TLS: PLAIN (RFC 4616) and LOGIN (the de-facto
// "Username:"/"Password:" exchange). Pure and I/O-free: the session feeds it the AUTH
// argument and each response line, and sends what it returns; checking the credentials is
// the caller's (policy::UserDb, on the thread pool).
//
// Untrusted input: every line comes from the peer. Responses are strict base64 (RFC 4954
// §4: "*" cancels, "=" is an empty initial response); names are 1-255 octets of UTF-8
// without controls (RFC 4616 §2), passwords 1-1024 octets without NUL. Passwords are wiped
// from memory when the Credentials holding them go away.
#pragma once
#include <string>
#include <string_view>

#include "mta/smtp/protocol.h"

namespace moat::mta::smtp {

struct SaslCredentials {
  SaslCredentials() = default;
  SaslCredentials(const SaslCredentials&) = delete;
  SaslCredentials& operator=(const SaslCredentials&) = delete;
  SaslCredentials(SaslCredentials&& o) noexcept;
  SaslCredentials& operator=(SaslCredentials&& o) noexcept;
  ~SaslCredentials();

  std::string user;
  std::string password;
};

struct SaslStep {
  enum class Kind {
    Challenge,  // send "334 " + challenge and feed the next line to respond()
    Done,       // credentials complete: verify them, then 235 or 535
    Refused,    // send `reply`; the exchange is over
  };
  Kind kind = Kind::Refused;
  std::string challenge;        // base64, possibly empty
  SaslCredentials credentials;  // Done; for a 535 refusal, the user name alone
  Reply reply;
};

class SaslServer {
 public:
  // The mechanisms offered, for the EHLO keyword ("AUTH PLAIN LOGIN").
  static constexpr std::string_view kMechanisms = "PLAIN LOGIN";

  // `arg` is the AUTH command's argument: "MECHANISM [initial-response]".
  SaslStep start(std::string_view arg);
  // A client response line (without CRLF) to the last Challenge.
  SaslStep respond(std::string_view line);
  // Upper-case mechanism name once start() has recognised it ("PLAIN"), else "".
  const std::string& mechanism() const { return mechanism_; }

 private:
  enum class State { Idle, PlainResponse, LoginUser, LoginPassword };
  SaslStep plain(std::string_view decoded);
  SaslStep loginUser(std::string_view decoded);
  SaslStep loginPassword(std::string_view decoded);

  State state_ = State::Idle;
  std::string mechanism_;
  std::string user_;  // LOGIN: the name, between its two steps
};

}  // namespace moat::mta::smtp
