// policy/client_credentials.cc — see client_credentials.h.
#include "policy/client_credentials.h"

#include <openssl/crypto.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>

#include "mta/runtime/scan.h"

namespace moat::policy {
namespace {

constexpr size_t kMaxFile = 64 * 1024;
constexpr size_t kMaxField = 255;  // RFC 4616 §2: authcid and passwd are at most 255 octets

void wipe(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

}  // namespace

ClientCredentials::~ClientCredentials() { wipe(password_); }

std::shared_ptr<const ClientCredentials> ClientCredentials::load(const std::string& path, Errors& errors) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    errors.error(path, 0, std::string("cannot read the credentials file: ") + std::strerror(errno));
    return nullptr;
  }
  std::string text;
  text.resize(kMaxFile + 1);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad()) {
    errors.error(path, 0, std::string("cannot read the credentials file: ") + std::strerror(errno));
    wipe(text);
    return nullptr;
  }
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxFile) {
    errors.error(path, 0, "the credentials file is larger than 64 KiB: expected one USERNAME:PASSWORD line");
    wipe(text);
    return nullptr;
  }
  auto creds = parse(text, path, errors);
  wipe(text);
  return creds;
}

std::shared_ptr<const ClientCredentials> ClientCredentials::parse(std::string_view text, const std::string& path,
                                                                  Errors& errors) {
  auto creds = std::make_shared<ClientCredentials>();
  creds->path_ = path;
  int lineNo = 0, found = 0;
  bool ok = true;
  while (!text.empty()) {
    ++lineNo;
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    // As the other policy files: blanks around a line are not part of it.
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    while (!line.empty() && (line.back() == ' ' || line.back() == '\t' || line.back() == '\r')) line.remove_suffix(1);
    if (line.empty() || line.front() == '#') continue;
    // The messages never quote the line: it holds the password.
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) {
      errors.error(path, lineNo, "expected USERNAME:PASSWORD");
      ok = false;
      continue;
    }
    std::string_view user = line.substr(0, colon), pass = line.substr(colon + 1);
    if (user.empty() || user.size() > kMaxField || !mta::isPrintableUtf8(user)) {
      errors.error(path, lineNo, "the username must be 1-255 octets of UTF-8 without controls or ':'");
      ok = false;
      continue;
    }
    if (pass.empty() || pass.size() > kMaxField || !mta::isPrintableUtf8(pass)) {
      errors.error(path, lineNo, "the password must be 1-255 octets of UTF-8 without controls");
      ok = false;
      continue;
    }
    if (++found > 1) {
      errors.error(path, lineNo, "a second credentials line: the file holds exactly one USERNAME:PASSWORD");
      ok = false;
      continue;
    }
    creds->username_ = std::string(user);
    creds->password_ = std::string(pass);
  }
  if (ok && found == 0) {
    errors.error(path, std::max(lineNo, 1), "no USERNAME:PASSWORD line");
    ok = false;
  }
  if (!ok) return nullptr;
  return creds;
}

std::string ClientCredentials::worldReadable(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !(st.st_mode & S_IROTH)) return "";
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
  return mode;
}

}  // namespace moat::policy
