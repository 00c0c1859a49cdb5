// mta/daemon/greylist_store.cc — see greylist_store.h.
#include "mta/daemon/greylist_store.h"

#include <chrono>
#include <fstream>
#include <utility>
#include <vector>

#include "mta/daemon/mta_sts.h"
#include "mta/runtime/log.h"

namespace moat::mta::daemon {

namespace {

int64_t wallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

GreylistStore::GreylistStore(uv_loop_t* loop, server::Greylist& table, std::string path)
    : loop_(loop), table_(table), path_(std::move(path)), timer_(loop) {}

GreylistStore::~GreylistStore() { *alive_ = false; }

void GreylistStore::load() {
  std::ifstream in(path_, std::ios::binary);
  if (!in) return;  // none saved
  std::string text(server::Greylist::kMaxStateBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  std::vector<server::Greylist::Record> records;
  if (!server::Greylist::decode(text, records)) {
    log::warn("greylist_error")
        .add("file", path_)
        .add("reason", text.size() > server::Greylist::kMaxStateBytes
                           ? "saved table ignored: file too big"
                           : "saved table ignored: not a file Moat wrote, or cut short");
    return;
  }
  table_.restore(records, wallMs());
}

void GreylistStore::start() {
  timer_.startRepeat(kSaveEveryMs, [this] {
    if (table_.dirty() && !writing_) save(nullptr);
  });
  timer_.unref();
}

void GreylistStore::stop(std::function<void()> done) {
  timer_.stop();
  if (writing_) {
    // The write under way holds an older table: the last one follows it.
    afterWrite_ = [this, done = std::move(done)]() mutable { stop(std::move(done)); };
    return;
  }
  if (!table_.dirty()) {
    if (done) done();
    return;
  }
  save(std::move(done));
}

void GreylistStore::save(std::function<void()> done) {
  // The records are copied on the loop (the table is the loop's); the text is built and
  // written on the pool.
  auto records = std::make_shared<std::vector<server::Greylist::Record>>(table_.records(wallMs()));
  auto error = std::make_shared<std::string>();
  writing_ = true;
  uv::queueWork(
      loop_,
      [path = path_, records, error] { *error = sts::writeFileAtomically(path, server::Greylist::encode(*records)); },
      [this, alive = alive_, error, done = std::move(done)] {
        if (!*alive) return;
        writing_ = false;
        if (!error->empty()) {
          log::warn("greylist_error").add("file", path_).add("reason", "table not saved: " + *error);
          table_.markDirty();  // tried again at the next period
        }
        if (done) done();
        if (afterWrite_) std::exchange(afterWrite_, nullptr)();
      });
}

}  // namespace moat::mta::daemon
