// mta/server/envelope_recipients.h — a transaction's recipients as the SMTP session builds
// them (each address once, by filters::recipientKey, with its RFC 3461 NOTIFY and ORCPT),
// and what an address [relay] aliases expanded becomes there: its targets, with the DSN
// parameters RFC 3461 §5.2.7.3 gives them, and the "expanded" report its NOTIFY=SUCCESS is
// owed. One logic for both ways a recipient comes: at RCPT (SmtpSession::checkRecipient)
// and from a milter (SMFIR_ADDRCPT, applied before queueing), as Postfix's cleanup expands
// both through virtual_alias_maps.
//
// Pure: the addresses were checked by the SMTP parser or the milter client, the targets
// come from the aliases table. Logs nothing; the caller says what happened.
#pragma once
#include <cstddef>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "queue/envelope.h"

namespace moat::mta::server {

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

}  // namespace moat::mta::server
