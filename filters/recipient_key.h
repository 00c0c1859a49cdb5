// filters/recipient_key.h — what makes two envelope recipients one: the local part as given
// (case-sensitive, RFC 5321 §2.4), the domain ASCII-folded. The SMTP session keys its
// transaction's recipients by it, and the milter chain the recipients it shows a milter, so
// both take an address once and delete every copy of it alike.
#pragma once
#include <string>

namespace moat::filters {

inline std::string recipientKey(const std::string& address) {
  std::string key = address;
  size_t at = key.rfind('@');
  if (at == std::string::npos) return key;
  for (size_t i = at; i < key.size(); ++i)
    if (key[i] >= 'A' && key[i] <= 'Z') key[i] = static_cast<char>(key[i] - 'A' + 'a');
  return key;
}

}  // namespace moat::filters
