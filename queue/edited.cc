// queue/edited.cc — see edited.h.
#include "queue/edited.h"

namespace moat::queue {

std::shared_ptr<const MessageData> deliveredData(std::shared_ptr<const MessageData> onDisk,
                                                 const std::vector<filters::Edit>& edits) {
  if (!onDisk || edits.empty()) return onDisk;
  return MessageData::fromMemory(filters::applyEdits(onDisk->bytes(), edits));
}

}  // namespace moat::queue
