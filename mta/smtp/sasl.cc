// mta/smtp/sasl.cc — see sasl.h.
#include "mta/smtp/sasl.h"

#include <string.h>  // explicit_bzero

#include <optional>

#include "mta/runtime/base64.h"
#include "mta/runtime/scan.h"

namespace moat::mta::smtp {

namespace {

constexpr size_t kMaxName = 255;       // RFC 4616 §2
constexpr size_t kMaxPassword = 1024;  // RFC 4616 asks for at least 255
// LOGIN's prompts, base64 of "Username:" and "Password:".
constexpr std::string_view kUsernamePrompt = "VXNlcm5hbWU6";
constexpr std::string_view kPasswordPrompt = "UGFzc3dvcmQ6";

// The whole buffer, not only size(): a moved-from short string (libstdc++ keeps up to 15
// octets in the object) still holds all but the first octet of what it held.
void wipe(std::string& s) {
  s.resize(s.capacity());  // within the capacity: no reallocation, the same buffer
  explicit_bzero(s.data(), s.size());
  s.clear();
}

// A string that wipes itself: decoded responses hold passwords.
struct Secret {
  std::string s;
  ~Secret() { wipe(s); }
};

SaslStep refused(int code, std::string enhanced, std::string text) {
  SaslStep st;
  st.kind = SaslStep::Kind::Refused;
  st.reply = {code, std::move(enhanced), std::move(text)};
  return st;
}

SaslStep challenge(std::string_view text) {
  SaslStep st;
  st.kind = SaslStep::Kind::Challenge;
  st.challenge = text;
  return st;
}

bool validName(std::string_view s) { return !s.empty() && s.size() <= kMaxName && isPrintableUtf8(s); }
bool validPassword(std::string_view s) {
  return !s.empty() && s.size() <= kMaxPassword && s.find('\0') == std::string_view::npos;
}

// RFC 4954 §4: "*" cancels; "=" is the empty initial response; anything else strict base64.
enum class Decoded { Ok, Cancel, Bad };
Decoded decodeResponse(std::string_view line, bool initial, Secret& out) {
  if (line == "*") return Decoded::Cancel;
  if (initial && line == "=") {
    out.s.clear();
    return Decoded::Ok;
  }
  auto d = base64DecodeStrict(line);
  if (!d) return Decoded::Bad;
  out.s = std::move(*d);
  wipe(*d);
  return Decoded::Ok;
}

}  // namespace

SaslCredentials::SaslCredentials(SaslCredentials&& o) noexcept
    : user(std::move(o.user)), password(std::move(o.password)) {
  wipe(o.password);
}

SaslCredentials& SaslCredentials::operator=(SaslCredentials&& o) noexcept {
  if (this != &o) {
    wipe(password);
    user = std::move(o.user);
    password = std::move(o.password);
    wipe(o.password);
  }
  return *this;
}

SaslCredentials::~SaslCredentials() { wipe(password); }

SaslStep SaslServer::start(std::string_view arg) {
  state_ = State::Idle;
  mechanism_.clear();
  wipe(user_);
  size_t sp = arg.find(' ');
  std::string_view mech = arg.substr(0, sp);
  std::string_view initial = sp == std::string_view::npos ? std::string_view() : arg.substr(sp + 1);
  while (!initial.empty() && initial.front() == ' ') initial.remove_prefix(1);
  if (mech.empty()) return refused(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]");
  if (initial.find(' ') != std::string_view::npos)
    return refused(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]");
  std::string upper;
  for (char c : mech) upper.push_back(c >= 'a' && c <= 'z' ? static_cast<char>(c - 32) : c);
  if (upper != "PLAIN" && upper != "LOGIN") return refused(504, "5.5.4", "Unrecognized authentication type");
  mechanism_ = upper;
  bool isPlain = upper == "PLAIN";
  if (initial.empty()) {
    state_ = isPlain ? State::PlainResponse : State::LoginUser;
    return challenge(isPlain ? "" : kUsernamePrompt);
  }
  Secret decoded;
  switch (decodeResponse(initial, true, decoded)) {
    case Decoded::Cancel: return refused(501, "5.0.0", "Authentication cancelled");
    case Decoded::Bad: return refused(501, "5.5.2", "Cannot decode the initial response (base64)");
    case Decoded::Ok: break;
  }
  return isPlain ? plain(decoded.s) : loginUser(decoded.s);
}

SaslStep SaslServer::respond(std::string_view line) {
  State state = state_;
  state_ = State::Idle;
  if (state == State::Idle) return refused(503, "5.5.1", "No authentication exchange under way");
  Secret decoded;
  switch (decodeResponse(line, false, decoded)) {
    case Decoded::Cancel: wipe(user_); return refused(501, "5.0.0", "Authentication cancelled");
    case Decoded::Bad: wipe(user_); return refused(501, "5.5.2", "Cannot decode the response (base64)");
    case Decoded::Ok: break;
  }
  switch (state) {
    case State::PlainResponse: return plain(decoded.s);
    case State::LoginUser: return loginUser(decoded.s);
    default: return loginPassword(decoded.s);
  }
}

// RFC 4616 §2: [authzid] NUL authcid NUL passwd. Moat authorizes only as oneself: an authzid
// naming someone else is refused, as Postfix does without its login maps.
SaslStep SaslServer::plain(std::string_view decoded) {
  size_t a = decoded.find('\0');
  size_t b = a == std::string_view::npos ? a : decoded.find('\0', a + 1);
  if (b == std::string_view::npos) return refused(501, "5.5.2", "Malformed PLAIN response");
  std::string_view authzid = decoded.substr(0, a), authcid = decoded.substr(a + 1, b - a - 1),
                   passwd = decoded.substr(b + 1);
  if (!validName(authcid) || !validPassword(passwd) || authzid.size() > kMaxName)
    return refused(501, "5.5.2", "Malformed PLAIN response");
  if (!authzid.empty() && authzid != authcid) {
    auto st = refused(535, "5.7.8", "Authentication credentials invalid: acting for another identity is not permitted");
    st.credentials.user = std::string(authcid);  // for the log: who tried
    return st;
  }
  SaslStep st;
  st.kind = SaslStep::Kind::Done;
  st.credentials.user = std::string(authcid);
  st.credentials.password.assign(passwd);  // no temporary copy left unwiped
  return st;
}

SaslStep SaslServer::loginUser(std::string_view decoded) {
  if (!validName(decoded)) return refused(501, "5.5.2", "Malformed LOGIN user name");
  user_ = std::string(decoded);
  state_ = State::LoginPassword;
  return challenge(kPasswordPrompt);
}

SaslStep SaslServer::loginPassword(std::string_view decoded) {
  if (!validPassword(decoded)) {
    wipe(user_);
    return refused(501, "5.5.2", "Malformed LOGIN password");
  }
  SaslStep st;
  st.kind = SaslStep::Kind::Done;
  st.credentials.user = std::move(user_);
  st.credentials.password.assign(decoded);
  user_.clear();
  return st;
}

}  // namespace moat::mta::smtp
