// queue/scheduler.cc — the in-memory due-time index and retry arithmetic (scheduler.h).
// Pure: no I/O, no clock, no logging.
#include "queue/scheduler.h"

#include <cmath>
#include <memory>
#include <random>

namespace moat::queue {

Scheduler::Scheduler(RetryPolicy policy, std::function<double()> rng01)
    : policy_(std::move(policy)), rng01_(std::move(rng01)) {
  if (policy_.waitsMs.empty()) policy_.waitsMs.push_back(300'000);
  if (!rng01_) {
    auto gen = std::make_shared<std::mt19937_64>(std::random_device{}());
    rng01_ = [gen] { return std::uniform_real_distribution<double>(0.0, 1.0)(*gen); };
  }
}

void Scheduler::add(const std::string& id, int64_t dueMs) {
  remove(id);
  due_.emplace(id, dueMs);
  order_.emplace(dueMs, id);
}

bool Scheduler::remove(const std::string& id) {
  auto it = due_.find(id);
  if (it == due_.end()) return false;
  order_.erase({it->second, id});
  due_.erase(it);
  return true;
}

std::optional<int64_t> Scheduler::dueOf(const std::string& id) const {
  auto it = due_.find(id);
  if (it == due_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> Scheduler::popDue(int64_t nowMs, size_t max) {
  std::vector<std::string> out;
  while (out.size() < max && !order_.empty() && order_.begin()->first <= nowMs) {
    auto node = order_.extract(order_.begin());
    due_.erase(node.value().second);
    out.push_back(std::move(node.value().second));
  }
  return out;
}

std::optional<int64_t> Scheduler::nextDue() const {
  if (order_.empty()) return std::nullopt;
  return order_.begin()->first;
}

void Scheduler::rebuild(const std::vector<Envelope>& envelopes) {
  order_.clear();
  due_.clear();
  for (auto& e : envelopes) {
    // Every active message gets a visit, even one with no pending recipient left: a crash
    // may have come between its last delivery and its DSN or removal.
    if (e.area == Area::Active) add(e.id, e.nextAttemptMs);
  }
}

int64_t Scheduler::baseWait(int attempt) const {
  size_t i = attempt < 1 ? 0 : static_cast<size_t>(attempt - 1);
  if (i >= policy_.waitsMs.size()) i = policy_.waitsMs.size() - 1;  // the last one repeats
  return policy_.waitsMs[i];
}

int64_t Scheduler::retryWait(int attempt) {
  double base = static_cast<double>(baseWait(attempt));
  double r = rng01_();
  if (!(r >= 0.0 && r < 1.0)) r = 0.5;  // a broken RNG must not break the bounds
  double factor = 1.0 + policy_.jitter * (2.0 * r - 1.0);
  return static_cast<int64_t>(std::llround(base * factor));
}

bool Scheduler::delayWarningDue(const Envelope& env, int64_t nowMs) const {
  if (policy_.delayWarningMs <= 0 || env.delayWarned || env.isBounce || env.mailFrom.empty()) return false;
  return nowMs >= env.arrivalMs + policy_.delayWarningMs;
}

}  // namespace moat::queue
