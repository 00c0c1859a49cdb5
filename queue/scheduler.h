// queue/scheduler.h — when to try what (DESIGN.md decision 5). Pure and in memory: an index
// of due times rebuilt from the spool's envelopes at start-up, the retry waits from config
// ([queue] retry, the last one repeating) with ±jitter so that a burst of deferrals does not
// retry in lockstep, and the two lifetime checks (expiry → bounce, delay warning → one delay
// DSN). No I/O, no clock, no logging: the caller passes the time and an RNG, which keeps it
// testable. Untrusted input: none (ids and times come from the spool).
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "queue/envelope.h"

namespace moat::queue {

struct RetryPolicy {
  std::vector<int64_t> waitsMs{60'000, 300'000, 900'000, 1'800'000, 3'600'000};  // CONTRACT.md defaults
  int64_t maxLifetimeMs = 2 * 86'400'000LL;
  int64_t delayWarningMs = 4 * 3'600'000LL;  // 0 = never warn
  double jitter = 0.10;                      // ±10%
};

class Scheduler {
 public:
  // `rng01` returns a uniform double in [0, 1); the default is a seeded std::mt19937_64.
  explicit Scheduler(RetryPolicy policy = {}, std::function<double()> rng01 = nullptr);

  // Adds or replaces `id`'s due time.
  void add(const std::string& id, int64_t dueMs);
  bool remove(const std::string& id);
  void reschedule(const std::string& id, int64_t dueMs) { add(id, dueMs); }
  bool contains(const std::string& id) const { return due_.count(id) != 0; }
  std::optional<int64_t> dueOf(const std::string& id) const;
  size_t size() const { return due_.size(); }

  // Removes and returns up to `max` ids due at or before `nowMs`, earliest first (ties by id,
  // which sorts by arrival).
  std::vector<std::string> popDue(int64_t nowMs, size_t max);
  std::optional<int64_t> nextDue() const;

  // Start-up: every active envelope, due at its nextAttemptMs (0 = now). Hold and
  // quarantine are not scheduled.
  void rebuild(const std::vector<Envelope>& envelopes);

  // The wait after the `attempt`-th failed attempt (1-based; < 1 counts as 1), jittered.
  int64_t retryWait(int attempt);
  // Unjittered base wait, for logs and tests.
  int64_t baseWait(int attempt) const;
  int64_t nextAttemptAt(int64_t nowMs, int attempt) { return nowMs + retryWait(attempt); }

  bool expired(const Envelope& env, int64_t nowMs) const { return nowMs >= expiresAt(env); }
  int64_t expiresAt(const Envelope& env) const { return env.arrivalMs + policy_.maxLifetimeMs; }
  // True once the warning time has passed, the message is not a bounce and no warning went out.
  bool delayWarningDue(const Envelope& env, int64_t nowMs) const;

  const RetryPolicy& policy() const { return policy_; }
  // A reloaded config: later waits and checks use the new policy; due times already set stay.
  void setPolicy(RetryPolicy policy) { policy_ = std::move(policy); }

 private:
  RetryPolicy policy_;
  std::function<double()> rng01_;
  std::set<std::pair<int64_t, std::string>> order_;
  std::unordered_map<std::string, int64_t> due_;
};

}  // namespace moat::queue
