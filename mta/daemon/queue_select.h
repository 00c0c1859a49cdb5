// mta/daemon/queue_select.h — which queued messages an operator's `moat queue` command is
// about: an area (as `list` has always taken) and selectors, all of which must match (AND):
//
//   from ADDR | @DOMAIN | <>     the envelope sender (<> = the null sender, DSNs)
//   to ADDR | @DOMAIN            any recipient not yet delivered nor failed
//   older / younger DURATION     the message's age (its arrival in the queue)
//   reason SUBSTRING             the quarantine reason or a pending recipient's last reply
//
// Addresses are compared case-insensitively in full. RFC 5321 §2.4 leaves a local part's
// case to the host that owns the mailbox, and Moat never changes it on delivery; but a
// selection is an operator's search, and missing `Spammer@` when looking for `spammer@`
// costs more than a spare match (which --dry-run shows). @DOMAIN matches that domain only
// (not its subdomains). `reason` is a case-insensitive substring.
//
// The selection travels over the control socket as space-separated `key=value` tokens
// (control.h), each value percent-escaped (%XX for '%', space, bytes below 0x21 and 0x7f),
// so a request stays one line whatever an operator types. Untrusted input: the tokens come
// from the control socket (local, mode 0660) and are bounded by its 4 KiB request limit;
// the envelopes' addresses and replies come from SMTP peers. Logs nothing.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "queue/envelope.h"

namespace moat::mta::daemon {

struct QueueSelector {
  std::string area;        // "" (active and hold), "active", "hold", "quarantine", "all"
  std::string from;        // lowercased: "user@domain", "@domain", "<>"; "" = any sender
  std::string to;          // lowercased: "user@domain", "@domain"; "" = any recipient
  int64_t olderMs = -1;    // at least this old; -1 = no bound
  int64_t youngerMs = -1;  // younger than this; -1 = no bound
  std::string reason;      // lowercased substring; "" = any

  // Whether any selector (not the area) narrows the choice.
  bool narrows() const { return !from.empty() || !to.empty() || olderMs >= 0 || youngerMs >= 0 || !reason.empty(); }
  bool areaMatches(queue::Area a) const;
  // `nowMs`: wall time, as Envelope::arrivalMs.
  bool matches(const queue::Envelope& env, int64_t nowMs) const;

  // The control socket's tokens ("area=all from=%40example.test"), and back. decode() takes
  // the tokens it knows and refuses any other (an unknown key, a bad value) with `error`.
  std::string encode() const;
  static bool decode(std::string_view tokens, QueueSelector& out, std::string& error);
};

// `moat queue summary` (as Postfix's qshape): the selected messages counted by area, by age
// and, per next-hop (recipient) domain, by age. A message counts once in each domain it has
// a pending recipient at (so the domains' counts may add up to more than the messages).
struct QueueSummary {
  // Age buckets: under 5m, 1h, 4h, 1d, then older.
  static constexpr size_t kBuckets = 5;
  static constexpr std::array<int64_t, kBuckets - 1> kBucketEndsMs = {5 * 60'000, 60 * 60'000, 4 * 60 * 60'000,
                                                                      24 * 60 * 60'000};
  static constexpr std::array<const char*, kBuckets> kBucketNames = {"<5m", "<1h", "<4h", "<1d", "older"};
  using Row = std::array<uint64_t, kBuckets>;

  uint64_t messages = 0;
  uint64_t recipients = 0;  // pending ones
  uint64_t bytes = 0;
  std::map<std::string, uint64_t> areas;  // "active", "hold", "quarantine"
  Row ages{};
  std::map<std::string, Row> domains;  // lowercased recipient domain

  void add(const queue::Envelope& env, int64_t nowMs);
  static size_t bucket(int64_t ageMs);
  // {"ok":true,"messages":N,...,"buckets":[...],"ages":[...],"domains":[{"domain":D,"messages":N,"ages":[...]}]},
  // the domains most messages first (then by name).
  std::string json() const;
};

// An operator's --from/--to value, checked and lowercased into `out`: "user@domain",
// "@domain", or (only when `allowNull`) "<>" for the null sender. Surrounding angle
// brackets are taken off ("<a@b>" is "a@b"). False, with `error`, for anything else.
bool parseAddressSelector(std::string_view text, bool allowNull, std::string& out, std::string& error);

// Percent-escaping for one token's value (see above).
std::string escapeToken(std::string_view value);
bool unescapeToken(std::string_view value, std::string& out);

}  // namespace moat::mta::daemon
