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

std::vector<std::string> addBccRecipients(RecipientList list, const BccSources& bcc, const std::string& sender,
                                          size_t maxRecipients) {
  std::vector<std::string> wanted;
  if (!bcc.always.empty()) wanted.emplace_back(bcc.always);
  if (bcc.senders)
    if (std::string a = bcc.senders->find(sender); !a.empty()) wanted.push_back(std::move(a));
  if (bcc.recipients)
    for (const auto& r : list.addresses)
      if (std::string a = bcc.recipients->find(r); !a.empty()) wanted.push_back(std::move(a));
  std::vector<std::string> added;
  if (wanted.empty()) return added;
  list.dsns.resize(list.addresses.size());  // parallel to the addresses before any is added
  for (const auto& a : wanted) {
    if (list.addresses.size() >= maxRecipients) break;
    if (addRecipientOnce(list, a, RcptDsn{"NEVER", ""})) added.push_back(a);
  }
  return added;
}

}  // namespace moat::mta::server
