// policy/recipients.h — recipient validation for the relay domains ([relay] recipients):
// a file of the addresses that exist behind the gateway, one per line (`user@example.test`,
// or `@example.test` for every address of a domain), `#` comments. Mail for an address of
// a domain the file names that is not in it is refused at RCPT with 550 5.1.1, so the
// gateway never takes mail it would have to bounce later (backscatter). Domains the file
// does not name are not checked (`moat check` warns about relay domains among them).
//
// Matching is ASCII case-insensitive on the whole address; an address with a "+tag"
// (subaddress, RFC 5233) matches its entry without the tag. Loaded whole into an immutable
// table per policy snapshot: SIGHUP rereads it, and a broken file is refused with FILE:LINE
// while the running one stays.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>

#include "policy/errors.h"

namespace moat::policy {

class RecipientTable {
 public:
  // nullptr with `errors` filled (FILE:LINE) when the file cannot be read or a line is bad.
  static std::shared_ptr<const RecipientTable> load(const std::string& path, Errors& errors);

  // Whether the file names this domain (lower-case ASCII), by an address or by "@domain".
  bool covers(std::string_view domain) const;
  // Whether mail for `address` may be taken: true for a domain the file does not cover.
  bool accepts(std::string_view address) const;
  size_t size() const { return addresses_.size() + wholeDomains_.size(); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::unordered_set<std::string> addresses_;     // lower-case "user@domain"
  std::unordered_set<std::string> wholeDomains_;  // "domain": every address is taken
  std::unordered_set<std::string> domains_;       // every domain the file names
};

}  // namespace moat::policy
