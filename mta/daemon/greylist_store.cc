// mta/daemon/greylist_store.cc — see greylist_store.h.
#include "mta/daemon/greylist_store.h"

#include <chrono>
#include <fstream>
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
  const std::string& path = file_.path();
  std::ifstream in(path, std::ios::binary);
  if (!in) return;  // none saved
  std::string text(server::Greylist::kMaxStateBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  std::vector<server::Greylist::Record> records;
  if (!server::Greylist::decode(text, records)) {
    log::warn("greylist_error")
        .add("file", path)
        .add("reason", text.size() > server::Greylist::kMaxStateBytes
                           ? "saved table ignored: file too big"
                           : "saved table ignored: not a file Moat wrote, or cut short");
    return;
  }
  table_.restore(records, wallClockMs());
}

void GreylistStore::start() { file_.start(kSaveEveryMs); }

void GreylistStore::stop(std::function<void()> done) { file_.flush(std::move(done)); }

}  // namespace moat::mta::daemon
