// mta/server/envelope_recipients.cc — see envelope_recipients.h.
#include "mta/server/envelope_recipients.h"

#include <utility>

#include "filters/recipient_key.h"
#include "queue/dsn.h"

namespace moat::mta::server {

bool addRecipientOnce(RecipientList list, const std::string& address, RcptDsn dsn) {
  if (!list.keys.insert(filters::recipientKey(address)).second) return false;
  list.addresses.push_back(address);
  list.dsns.push_back(std::move(dsn));
  return true;
}

std::optional<size_t> addAliasTargets(RecipientList list, const std::string& address, RcptDsn dsn,
                                      const std::vector<std::string>& targets, size_t maxRecipients) {
  if (list.addresses.size() + targets.size() > maxRecipients) return std::nullopt;
  if (dsn.orcpt.empty()) dsn.orcpt = queue::defaultOrcpt(address);
  // The targets go on without SUCCESS: the report for the address is Moat's.
  if (queue::notifyWants(dsn.notify, "SUCCESS")) {
    list.expanded.push_back({address, dsn.orcpt, dsn.notify});
    dsn.notify = queue::notifyWithout(dsn.notify, "SUCCESS");
  }
  size_t added = 0;
  for (const auto& t : targets)
    if (addRecipientOnce(list, t, dsn)) ++added;
  return added;
}

}  // namespace moat::mta::server
