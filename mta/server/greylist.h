// mta/server/greylist.h — greylisting of inbound mail at RCPT ([greylist]), as RFC 6647
// describes it and postgrey does it for Postfix.
//
// A delivery attempt is a triplet: the client's network (its IPv4 /24, its IPv6 /64, as
// configured: a sender's pool of outgoing servers retries from another address of it), the
// envelope sender (ASCII lower-cased; the null sender is "") and the recipient (lower-cased).
// A triplet seen for the first time is deferred (the caller answers 450 4.7.1); a retry
// before `delay` has passed since the first attempt is deferred again; one from `delay` on,
// within `retry_window` of the first attempt, passes, and from then on the triplet passes at
// once until `lifetime` after its last pass. A first attempt whose window ran out starts
// over. With `autoAllowAfter` set, a client network that got that many triplets through is
// passed without greylisting until `lifetime` after it last sent (automatic allow-listing,
// as postgrey's --auto-whitelist-clients).
//
// Untrusted input: the client address, sender and recipient come from peers. Memory is
// bounded: at most maxEntries triplets and as many client networks (the one touched least
// recently dropped for a new one; a dropped triplet is greylisted again when it comes back),
// keys of at most kMaxKeyBytes (longer senders or recipients are cut, which only merges
// triplets). Expired entries are dropped as the table is used.
//
// exempt_client_names (exemptName()): a client whose verified host name (FCrDNS,
// mta/dns/client_name.h) equals an entry, or ends with an entry that begins with ".", is not
// greylisted, as postgrey's whitelist_clients: the large providers retry from other
// addresses in other networks, and greylisting would delay their mail by hours.
//
// Time is the caller's: milliseconds of the wall clock (the table outlives a restart, in
// SPOOL_DIR/greylist.state: encode()/decode()), so the unit is pure and a test sets the
// clock. Loop thread only; logs nothing.
#pragma once
#include <cstdint>
#include <list>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "mta/runtime/ip.h"

namespace moat::mta::server {

class Greylist {
 public:
  static constexpr size_t kDefaultMaxEntries = 100'000;
  static constexpr size_t kMaxKeyBytes = 600;  // a network, two addresses of at most 256 bytes
  // greylist.state is at most this size: encode() leaves out the entries touched least
  // recently past it (only a table full of near-longest keys comes near), decode() refuses
  // a bigger file.
  static constexpr size_t kMaxStateBytes = 64u << 20;

  struct Settings {
    int64_t delayMs = 300'000;
    int64_t retryWindowMs = 2 * 86'400'000LL;
    int64_t lifetimeMs = 35 * 86'400'000LL;
    unsigned autoAllowAfter = 0;  // 0: no automatic allow-listing
  };
  enum class Result { Deferred, Passed, Allowed };
  struct Verdict {
    Result result = Result::Deferred;
    int64_t waitMs = 0;      // Deferred: until the triplet may pass
    bool firstSeen = false;  // Deferred: a new triplet (or one that starts over)
    bool firstPass = false;  // Passed: the retry that got the triplet through
  };
  // An entry as saved and restored.
  struct Record {
    bool client = false;  // a client network's pass count, else a triplet
    std::string key;
    int64_t firstMs = 0;    // triplet: its first attempt
    int64_t expiresMs = 0;  // then it is forgotten
    uint32_t passes = 0;    // triplet: 0 pending, 1 passed; client: triplets got through
  };

  explicit Greylist(size_t maxEntries = kDefaultMaxEntries) : maxEntries_(maxEntries == 0 ? 1 : maxEntries) {}
  Greylist(const Greylist&) = delete;
  Greylist& operator=(const Greylist&) = delete;

  // The network a client address is greylisted by: "192.0.2.0/24", "2001:db8:1:2::/64".
  static std::string network(const IpAddress& ip, int ipv4Prefix, int ipv6Prefix);
  // One attempt of the triplet at `nowMs`, and what it gets.
  Verdict check(std::string_view network, std::string_view sender, std::string_view recipient, int64_t nowMs,
                const Settings& s);
  // Whether check() would pass (or allow) the triplet at `nowMs`; records nothing, so a
  // caller can wait for what may exempt the client before a first attempt is counted.
  bool wouldPass(std::string_view network, std::string_view sender, std::string_view recipient, int64_t nowMs,
                 const Settings& s) const;
  // Whether the client's verified name (lower-case, no trailing dot; "" for none) is one of
  // `entries` (lower-case): equal to one, or ending with one that begins with ".".
  static bool exemptName(std::string_view name, const std::vector<std::string>& entries);

  size_t triplets() const { return triplets_.index.size(); }
  size_t clients() const { return clients_.index.size(); }
  uint64_t evicted() const { return evicted_; }
  // Whether anything worth saving changed since the last records() (which clears it).
  bool dirty() const { return dirty_; }
  void markDirty() { dirty_ = true; }

  // The live entries (least recently touched first), for the state file.
  std::vector<Record> records(int64_t nowMs);
  // Entries from the state file, over what the table holds (at start-up); expired ones and
  // those past the cap are skipped.
  void restore(const std::vector<Record>& records, int64_t nowMs);
  // The state file: a version line, one line per record, an `end N` line (so a file cut
  // short is told from a whole one).
  static std::string encode(const std::vector<Record>& records);
  // False for anything encode() did not write (or wrote for another version).
  static bool decode(std::string_view text, std::vector<Record>& records);

 private:
  struct Entry {
    std::string key;
    int64_t firstMs = 0;
    int64_t expiresMs = 0;
    uint32_t passes = 0;
  };
  using List = std::list<Entry>;
  struct Table {
    List lru;                                                    // least recently touched first
    std::unordered_map<std::string_view, List::iterator> index;  // views of the entries' keys
  };

  static std::string tripletKey(std::string_view network, std::string_view sender, std::string_view recipient);
  // The live entry of `key` (an expired one is dropped), or nullptr.
  Entry* find(Table& t, std::string_view key, int64_t nowMs);
  // A new entry (dropping the stalest at the cap), most recently touched.
  Entry& add(Table& t, std::string key);
  void touch(Table& t, Entry& e);
  static void prune(Table& t, int64_t nowMs);

  size_t maxEntries_;
  uint64_t evicted_ = 0;
  bool dirty_ = false;
  Table triplets_, clients_;
};

}  // namespace moat::mta::server
