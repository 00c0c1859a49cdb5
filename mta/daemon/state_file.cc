// mta/daemon/state_file.cc — see state_file.h.
#include "mta/daemon/state_file.h"

#include <fstream>
#include <utility>

#include "mta/runtime/durable_file.h"

namespace moat::mta::daemon {

StateFile::StateFile(uv_loop_t* loop, std::string path, Snapshot snapshot, Failed failed)
    : loop_(loop), path_(std::move(path)), snapshot_(std::move(snapshot)), failed_(std::move(failed)), timer_(loop) {}

StateFile::~StateFile() { *alive_ = false; }

bool StateFile::read(size_t maxBytes, std::string& text) const {
  std::ifstream in(path_, std::ios::binary);
  if (!in) return false;  // none saved
  text.assign(maxBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  return true;
}

const char* StateFile::unreadable(const std::string& text, size_t maxBytes) {
  return text.size() > maxBytes ? "file too big" : "not a file Moat wrote, or cut short";
}

void StateFile::start(uint64_t everyMs) {
  if (timer_.active() && everyMs == everyMs_) return;
  everyMs_ = everyMs;
  timer_.startRepeat(everyMs, [this] {
    if (dirty()) write();
  });
  timer_.unref();
}

void StateFile::stop() { timer_.stop(); }

void StateFile::write(std::function<void()> then) {
  if (then) next_.push_back(std::move(then));
  if (writing_) {
    again_ = true;  // begun when this one is done, with what there is then
    return;
  }
  begin();
}

void StateFile::flush(std::function<void()> done) {
  timer_.stop();
  if (writing_) {
    // The write under way may hold older contents: decided when it is done.
    flushes_.push_back(std::move(done));
    return;
  }
  if (!dirty()) {
    if (done) done();
    return;
  }
  write(std::move(done));
}

void StateFile::begin() {
  auto thens = std::exchange(next_, {});
  writing_ = true;
  again_ = false;
  dirty_ = false;
  // The copy on the loop (the contents are the loop's); the text and the disk on the pool.
  auto encode = snapshot_();
  auto error = std::make_shared<std::string>();
  uv::queueWork(
      loop_, [path = path_, encode = std::move(encode), error] { *error = writeFileDurably(path, encode()).text(); },
      [this, alive = alive_, error, thens = std::move(thens)]() mutable {
        if (!*alive) return;
        written(*error, std::move(thens));
      });
}

void StateFile::written(const std::string& error, std::vector<std::function<void()>> thens) {
  writing_ = false;
  if (!error.empty()) {
    dirty_ = true;  // tried again at the next checkpoint
    if (failed_) failed_(error);
  }
  for (auto& t : thens)
    if (t) t();
  if (writing_) return;  // a `then` began the next write
  if (!flushes_.empty()) {
    auto flushes = std::exchange(flushes_, {});
    if (again_ || dirty()) {
      for (auto& f : flushes) next_.push_back(std::move(f));
      return begin();
    }
    for (auto& f : flushes)
      if (f) f();
    if (writing_) return;
  }
  if (again_) begin();
}

}  // namespace moat::mta::daemon
