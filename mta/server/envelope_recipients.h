// mta/server/envelope_recipients.h — a transaction's recipients as the SMTP session builds
// them (each address once, by filters::recipientKey, with its RFC 3461 NOTIFY and ORCPT),
// and what an address [relay] aliases expanded becomes there: its targets, with the DSN
// parameters RFC 3461 §5.2.7.3 gives them, and the "expanded" report its NOTIFY=SUCCESS is
// owed. One logic for both ways a recipient comes: at RCPT (SmtpSession::checkRecipient)
// and from a milter (SMFIR_ADDRCPT, applied before queueing), as Postfix's cleanup expands
// both through virtual_alias_maps. And the [bcc] copies added as the message is queued, the
// same for `moat scan` (mta/daemon/offline) as for the session.
//
// Pure: the addresses were checked by the SMTP parser or the milter client, the targets
// come from the aliases table, the copies from the administrator's [bcc]. Logs nothing; the
// caller says what happened.
#pragma once
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "policy/bcc_map.h"
#include "queue/envelope.h"

namespace moat::mta::server {

// Recipients in one envelope after aliases, lists and [bcc] copies are added
// (limits.max_recipients counts RCPT commands): beyond this, 452 4.5.3 as for too many RCPTs.
inline constexpr size_t kMaxEnvelopeRecipients = 10000;

struct RcptDsn {  // a recipient's NOTIFY and ORCPT (RFC 3461), as received
  std::string notify, orcpt;
};

// The recipients being built, held elsewhere (the session's transaction, or its copy while
// the milters' changes are applied): the addresses, each one's DSN parameters (parallel),
// their recipientKeys, and the aliases owing an "expanded" report.
struct RecipientList {
  std::vector<std::string>& addresses;
  std::vector<RcptDsn>& dsns;
  std::unordered_set<std::string>& keys;
  std::vector<queue::ExpandedRecipient>& expanded;
};

// `address` into the list, unless it is there already (the first one's DSN parameters
// stand): whether it was added.
bool addRecipientOnce(RecipientList list, const std::string& address, RcptDsn dsn);

// The targets of the alias `address` into the list in its place, each once. Each target
// keeps `dsn`'s NOTIFY without SUCCESS, and an ORCPT naming `address` unless `dsn` has one
// (RFC 3461 §4.2: DSNs speak of the address the sender knows); NOTIFY=SUCCESS is answered
// by one "expanded" report for `address` (§5.2.7.3, as Postfix does), added to
// `list.expanded`. nullopt, the list unchanged, when the targets would take the list past
// `maxRecipients` addresses (counted before duplicates are dropped); else how many targets
// were new to it.
std::optional<size_t> addAliasTargets(RecipientList list, const std::string& address, RcptDsn dsn,
                                      const std::vector<std::string>& targets, size_t maxRecipients);

// [bcc]'s sources, from the policy snapshot.
struct BccSources {
  std::string_view always;                     // bcc.always, or ""
  const policy::BccMap* senders = nullptr;     // bcc.senders
  const policy::BccMap* recipients = nullptr;  // bcc.recipients
};

// [bcc], as Postfix's always_bcc, sender_bcc_maps and recipient_bcc_maps: bcc.always, the
// sender map's entry for `sender` (MAIL FROM after relay.rewrite, before a milter's change) and the
// recipient map's entry for each address in the list (as queued: after relay.rewrite,
// relay.aliases and the milters; a copy is not looked up again), in that order, into the list
// with NOTIFY=NEVER (RFC 3461 §4.1.1: the sender never hears of a copy) and no ORCPT, each once
// (one already a recipient is not added), while the list has fewer than `maxRecipients`: the
// addresses added. No relay control, validation or verification: the addresses are the
// administrator's. The caller adds them only to a message it queues (after the filters; a
// quarantined one keeps them).
std::vector<std::string> addBccRecipients(RecipientList list, const BccSources& bcc, const std::string& sender,
                                          size_t maxRecipients);

}  // namespace moat::mta::server
