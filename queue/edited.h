// queue/edited.h — the message as it is delivered: the data file's bytes with the
// envelope's edits applied (filters/edit.h; DESIGN.md decision 6: the file on disk is
// written once, rewrites live in the envelope). Every reader that hands the message on —
// SMTP and maildir delivery, DSNs, quarantine release (which delivers like any other
// message) — reads through deliveredData(), so they all see the same bytes, the bytes the
// DKIM signer signed at receipt.
//
// No edits: the same MessageData comes back (no copy). With edits: one in-memory copy,
// made on the thread pool by the caller. Untrusted input: the message bytes (copied, not
// interpreted). Logs nothing.
#pragma once
#include <memory>
#include <vector>

#include "filters/edit.h"
#include "queue/spool.h"

namespace moat::queue {

std::shared_ptr<const MessageData> deliveredData(std::shared_ptr<const MessageData> onDisk,
                                                 const std::vector<filters::Edit>& edits);

}  // namespace moat::queue
