// policy/bcc_map.h — blind-copy addresses for compliance archiving ([bcc] senders and
// recipients), as Postfix's sender_bcc_maps and recipient_bcc_maps: a file of lines
//
//     ceo@example.test      archive-ceo@archive.example.test     # one address
//     @example.test         journal@archive.example.test         # that domain
//     @.example.test        journal-sub@archive.example.test     # its subdomains
//
// KEY BCC-ADDRESS, '#' comments. A lookup of an address gives the BCC-ADDRESS of the most
// specific entry: the address itself, then (for "user+tag@domain", RFC 5233) user@domain,
// then its domain, then the longest subdomain entry. ASCII case is ignored; the null sender
// ("") matches nothing.
//
// The file is the administrator's (trusted, but checked): loaded whole into an immutable map
// per policy snapshot, SIGHUP rereads it, and a broken file (a KEY that is not an address,
// @domain or @.domain, a BCC-ADDRESS that is not an address, a KEY given twice) is refused
// with FILE:LINE while the running one stays. Logs nothing; the session logs the copies.
#pragma once
#include <memory>
#include <string>
#include <string_view>

#include "policy/address_table.h"
#include "policy/errors.h"

namespace moat::policy {

class BccMap {
 public:
  // nullptr with `errors` filled (FILE:LINE) when the file cannot be read or a line is bad;
  // `what` names the file in messages ("sender BCC").
  static std::shared_ptr<const BccMap> load(const std::string& path, std::string_view what, Errors& errors);

  // The BCC address for `address` as the file writes it, or "" when no entry matches.
  std::string find(std::string_view address) const;

  size_t size() const { return table_.size(); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  AddressTable<std::string> table_;  // KEY -> BCC-ADDRESS as written
};

}  // namespace moat::policy
