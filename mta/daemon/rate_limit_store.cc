// mta/daemon/rate_limit_store.cc — see rate_limit_store.h.
#include "mta/daemon/rate_limit_store.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "mta/runtime/clock.h"
#include "mta/runtime/log.h"

namespace moat::mta::daemon {

using server::RateCounter;

RateLimitStore::RateLimitStore(uv_loop_t* loop, std::vector<RateCounter*> counters, std::string path)
    : loop_(loop),
      counters_(std::move(counters)),
      file_(
          loop, std::move(path),
          [this]() -> std::function<std::string()> {
            // The records are copied on the loop (the counters are the loop's); the text is built on the pool.
            auto records = std::make_shared<std::vector<std::vector<RateCounter::Record>>>();
            const auto now = static_cast<int64_t>(uv_now(loop_));
            const int64_t wall = wallClockMs();
            for (auto* c : counters_) records->push_back(c->records(now, wall));
            return [records] { return RateCounter::encode(*records); };
          },
          [this](const std::string& error) {
            log::warn("rate_limit_error").add("file", file_.path()).add("reason", "counts not saved: " + error);
          }) {
  file_.setChanged(
      [this] { return std::any_of(counters_.begin(), counters_.end(), [](auto* c) { return c->dirty(); }); });
}

void RateLimitStore::load(int64_t windowMs) {
  std::string text;
  if (!file_.read(RateCounter::kMaxStateBytes, text)) return;  // none saved
  std::vector<std::vector<RateCounter::Record>> records;
  if (!RateCounter::decode(text, counters_.size(), records)) {
    log::warn("rate_limit_error")
        .add("file", file_.path())
        .add("reason",
             std::string("saved counts ignored: ") + StateFile::unreadable(text, RateCounter::kMaxStateBytes));
    return;
  }
  uv_update_time(loop_);  // the start-up may have taken a while since the loop last looked
  const auto now = static_cast<int64_t>(uv_now(loop_));
  const int64_t wall = wallClockMs();
  for (size_t i = 0; i < counters_.size(); ++i) counters_[i]->restore(records[i], now, wall, windowMs);
}

void RateLimitStore::start() { file_.start(kSaveEveryMs); }

void RateLimitStore::stop(std::function<void()> done) { file_.flush(std::move(done)); }

}  // namespace moat::mta::daemon
