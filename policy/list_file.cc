// policy/list_file.cc — see list_file.h.
#include "policy/list_file.h"

#include <cerrno>
#include <cstring>
#include <fstream>

#include "mta/runtime/scan.h"

namespace moat::policy {

bool readListFile(const std::string& path, std::string_view what, size_t maxBytes, Errors& errors,
                  const std::function<bool(int line, std::string_view text)>& entry) {
  std::ifstream in(path, std::ios::binary);
  auto cannotRead = [&](int line) {
    errors.error(path, line, "cannot read the " + std::string(what) + " file: " + std::strerror(errno));
    return false;
  };
  if (!in) return cannotRead(0);
  std::string line;
  int lineNo = 0;
  size_t total = 0;
  bool ok = true;
  while (std::getline(in, line)) {
    ++lineNo;
    total += line.size() + 1;
    if (total > maxBytes) {
      errors.error(path, lineNo,
                   "the " + std::string(what) + " file is larger than " + std::to_string(maxBytes >> 20) + " MB");
      return false;
    }
    std::string_view text = line;
    while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
    while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r')) text.remove_suffix(1);
    if (text.empty() || text.front() == '#') continue;
    if (!entry(lineNo, text)) ok = false;
  }
  if (in.bad()) return cannotRead(lineNo);
  return ok;
}

bool isAddressOrDomain(std::string_view s) {
  size_t at = s.rfind('@');
  return at != std::string_view::npos && at + 1 < s.size() && s.size() <= 254 &&
         s.find_first_of(" \t<>,;") == std::string_view::npos && mta::isPrintableUtf8(s);
}

std::string lowerAscii(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  return out;
}

std::string withoutSubaddress(std::string_view address) {
  size_t at = address.rfind('@');
  size_t plus = address.find('+');
  if (at == std::string_view::npos || plus == 0 || plus >= at) return "";
  return std::string(address.substr(0, plus)).append(address.substr(at));
}

}  // namespace moat::policy
