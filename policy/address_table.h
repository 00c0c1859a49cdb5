// policy/address_table.h — entries keyed as the admins' address files write them:
// `user@example.test`, `@example.test` (that domain), `@.example.test` (its subdomains), and
// the one lookup they all share ([senders] block and [[route]] senders, relay.rewrite,
// [bcc]): the address itself, then (for "user+tag@domain", RFC 5233) user@domain, then its
// domain, then the longest subdomain entry. ASCII case is ignored; an address without a
// user or a domain (the null sender "") matches nothing.
//
// Pure and immutable once loaded; the keys were checked by the file's reader.
#pragma once
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "policy/list_file.h"

namespace moat::policy {

template <typename V>
class AddressTable {
 public:
  enum class By { Address, User, Domain, Subdomain };  // which entry matched
  struct Match {
    const V* value = nullptr;
    By by = By::Address;
    explicit operator bool() const { return value != nullptr; }
  };

  // `key` as written ("User@Example.test", "@example.test", "@.example.test"), of `kind`
  // (never EntryKind::Bad). A key already there keeps its first value.
  void insert(std::string_view key, EntryKind kind, V value) {
    std::string lower = lowerAscii(key);
    if (kind == EntryKind::Address)
      addresses_.emplace(std::move(lower), std::move(value));
    else if (kind == EntryKind::Domain)
      domains_.emplace(lower.substr(1), std::move(value));
    else
      subdomainsOf_.emplace(lower.substr(2), std::move(value));
  }

  Match find(std::string_view address) const {
    size_t at = address.rfind('@');
    if (at == std::string_view::npos || at == 0 || at + 1 == address.size()) return {};
    std::string lower = lowerAscii(address);
    if (auto it = addresses_.find(lower); it != addresses_.end()) return {&it->second, By::Address};
    if (std::string user = withoutSubaddress(lower); !user.empty())
      if (auto it = addresses_.find(user); it != addresses_.end()) return {&it->second, By::User};
    std::string_view domain = std::string_view(lower).substr(at + 1);
    if (auto it = domains_.find(std::string(domain)); it != domains_.end()) return {&it->second, By::Domain};
    // The longest suffix first: @.lab.example.test before @.example.test.
    for (size_t dot = domain.find('.'); dot != std::string_view::npos; dot = domain.find('.', dot + 1))
      if (auto it = subdomainsOf_.find(std::string(domain.substr(dot + 1))); it != subdomainsOf_.end())
        return {&it->second, By::Subdomain};
    return {};
  }

  size_t size() const { return addresses_.size() + domains_.size() + subdomainsOf_.size(); }

 private:
  std::unordered_map<std::string, V> addresses_;     // lower-case "user@domain"
  std::unordered_map<std::string, V> domains_;       // "domain": every address of it
  std::unordered_map<std::string, V> subdomainsOf_;  // "domain": every address of its subdomains
};

}  // namespace moat::policy
