// policy/aliases.h — aliases and lists at RCPT ([relay] aliases): a file of lines
//
//     sales@example.test: alice@example.test, bob@corp.example.test   # a list
//     info@example.test:  sales@example.test                           # aliases chain
//     @old.example.test:  @example.test                                # a domain alias
//
// An address entry sends the recipient's mail to its targets instead (separated by commas
// or blanks); a domain entry keeps the local part and changes the domain. Targets are
// expanded again, up to kMaxDepth levels, each alias once; an alias that leads back to
// itself is an address there, so `a@x: a@x, b@x` keeps a copy for a@x and sends one to
// b@x. One recipient expands to at most kMaxTargets addresses, duplicates removed.
//
// Lookup is ASCII case-insensitive on the whole address; "user+tag@domain" (RFC 5233)
// without an entry of its own takes user@domain's. Loaded whole into an immutable table per
// policy snapshot: SIGHUP rereads it, and a broken file is refused with FILE:LINE (as is an
// entry whose expansion is deeper or wider than the limits) while the running one stays.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "policy/errors.h"

namespace moat::policy {

class AliasTable {
 public:
  static constexpr int kMaxDepth = 16;
  static constexpr size_t kMaxTargets = 1000;

  struct Expansion {
    bool aliased = false;              // an entry matched: `targets` replace the address
    std::vector<std::string> targets;  // the final addresses; the address itself when !aliased
    std::string error;                 // non-empty: deeper than kMaxDepth or wider than kMaxTargets
  };

  // Shown each entry of a file that loads, in the file's order, with the lower-case source,
  // its line and (for an address) its expansion; empty for a domain entry. For `moat check`.
  using Inspect = std::function<void(const std::string& source, int line, const Expansion& expansion)>;
  // nullptr with `errors` filled (FILE:LINE) when the file cannot be read or a line is bad.
  static std::shared_ptr<const AliasTable> load(const std::string& path, Errors& errors,
                                                const Inspect& inspect = nullptr);
  Expansion expand(std::string_view address) const;

  struct Entry {
    int line = 0;
    std::vector<std::string> targets;  // addresses, or one "@domain" for a domain entry
  };
  // Entries by their lower-case source ("user@domain" or "@domain"), for `moat check`.
  const std::unordered_map<std::string, Entry>& entries() const { return entries_; }
  const std::string& path() const { return path_; }

 private:
  const Entry* find(const std::string& lowerAddress) const;

  std::string path_;
  std::unordered_map<std::string, Entry> entries_;
};

}  // namespace moat::policy
