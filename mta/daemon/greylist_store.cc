// mta/daemon/greylist_store.cc — see greylist_store.h.
#include "mta/daemon/greylist_store.h"

#include <memory>
#include <utility>
#include <vector>

#include "mta/runtime/clock.h"
#include "mta/runtime/log.h"

namespace moat::mta::daemon {

GreylistStore::GreylistStore(uv_loop_t* loop, server::Greylist& table, std::string path)
    : table_(table),
      file_(
          loop, std::move(path),
          [this]() -> std::function<std::string()> {
            // The records are copied on the loop (the table is the loop's); the text is built on the pool.
            auto records = std::make_shared<std::vector<server::Greylist::Record>>(table_.records(wallClockMs()));
            return [records] { return server::Greylist::encode(*records); };
          },
          [this](const std::string& error) {
            log::warn("greylist_error").add("file", file_.path()).add("reason", "table not saved: " + error);
          }) {
  file_.setChanged([this] { return table_.dirty(); });
}

void GreylistStore::load() {
  std::string text;
  if (!file_.read(server::Greylist::kMaxStateBytes, text)) return;  // none saved
  std::vector<server::Greylist::Record> records;
  if (!server::Greylist::decode(text, records)) {
    log::warn("greylist_error")
        .add("file", file_.path())
        .add("reason",
             std::string("saved table ignored: ") + StateFile::unreadable(text, server::Greylist::kMaxStateBytes));
    return;
  }
  table_.restore(records, wallClockMs());
}

void GreylistStore::start() { file_.start(kSaveEveryMs); }

void GreylistStore::stop(std::function<void()> done) { file_.flush(std::move(done)); }

}  // namespace moat::mta::daemon
