// policy/address_list.h — a list of addresses and domains an admin keeps in a file beside
// moat.toml, one a line, '#' comments: `user@example.test`, `@example.test` (that domain),
// `@.example.test` (its subdomains, as relay.domains' ".example.test"). Used for the
// senders refused at MAIL ([senders] block), and, written inline in moat.toml, for the
// senders a route is for ([[route]] senders).
//
// Matching is ASCII case-insensitive on the whole address; "user+tag@domain" (RFC 5233)
// matches user@domain's entry. Loaded whole into an immutable list per policy snapshot:
// SIGHUP rereads it, and a broken file is refused with FILE:LINE while the running one stays.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "policy/address_table.h"
#include "policy/errors.h"

namespace moat::policy {

class AddressList {
 public:
  // nullptr with `errors` filled (FILE:LINE) when the file cannot be read or a line is bad;
  // `what` names the file in messages ("the blocked senders file").
  static std::shared_ptr<const AddressList> load(const std::string& path, std::string_view what, Errors& errors);
  // What is wrong with `entry` as a line of such a list ("" when nothing).
  static std::string entryProblem(std::string_view entry);
  // A list of `entries`, each one that entryProblem finds nothing wrong with (a config's
  // inline list, checked by its reader with the line of each entry).
  static std::shared_ptr<const AddressList> fromEntries(const std::vector<std::string>& entries);

  // Whether `address` is listed, by itself, its user without "+tag", or its domain. The
  // null sender ("") never is.
  bool contains(std::string_view address) const;
  size_t size() const { return table_.size(); }
  const std::string& path() const { return path_; }

 private:
  void insert(std::string_view entry);

  std::string path_;
  AddressTable<bool> table_;
};

}  // namespace moat::policy
