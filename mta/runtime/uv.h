// mta/runtime/uv.h — RAII for the libuv handles Moat uses. As in uvw, a handle's memory
// lives until libuv's close callback runs, so destroying the owner while the loop still
// holds the handle is safe: the destructor detaches (data = nullptr), calls uv_close, and
// the close callback frees the memory. Wrappers are neither copied nor moved (libuv keeps
// pointers to them through handle->data); close() is idempotent.
#pragma once
#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>

namespace moat::mta::uv {

template <typename H>
class Handle {
 public:
  Handle() : h_(std::make_unique<H>()) {}
  ~Handle() { close(); }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  H* get() const { return h_.get(); }
  uv_handle_t* raw() const { return reinterpret_cast<uv_handle_t*>(h_.get()); }
  explicit operator bool() const { return h_ != nullptr; }
  // Call once the uv_*_init call succeeded; before that, close() just frees the memory.
  void markInitialized() { initialized_ = true; }

  void close() {
    if (!h_) return;
    if (!initialized_) {
      h_.reset();
      return;
    }
    H* h = h_.release();
    h->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(h), [](uv_handle_t* x) { delete reinterpret_cast<H*>(x); });
  }

 private:
  std::unique_ptr<H> h_;
  bool initialized_ = false;
};

class Timer {
 public:
  explicit Timer(uv_loop_t* loop);
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
  // One shot after `ms`; starting again replaces the callback and the due time.
  void start(uint64_t ms, std::function<void()> cb);
  void startRepeat(uint64_t ms, std::function<void()> cb);
  void stop();
  bool active() const;
  // Lets the loop exit even while this timer is pending.
  void unref();

 private:
  Handle<uv_timer_t> h_;
  std::function<void()> cb_;
};

// Wakes the loop from another thread; `fn` runs on the loop thread (coalesced).
class Async {
 public:
  Async(uv_loop_t* loop, std::function<void()> fn);
  Async(const Async&) = delete;
  Async& operator=(const Async&) = delete;
  void send();
  void unref();

 private:
  Handle<uv_async_t> h_;
  std::function<void()> fn_;
};

class Signal {
 public:
  Signal(uv_loop_t* loop, int signum, std::function<void()> fn);
  Signal(const Signal&) = delete;
  Signal& operator=(const Signal&) = delete;
  void unref();

 private:
  Handle<uv_signal_t> h_;
  std::function<void()> fn_;
};

// Runs `work` on the libuv thread pool, then `after` on the loop thread. `work` must not
// touch loop-owned state; `after` may.
void queueWork(uv_loop_t* loop, std::function<void()> work, std::function<void()> after);

// Sets UV_THREADPOOL_SIZE (unless the environment already does) before the pool starts.
void configureThreadPool(unsigned threads);
// The pool's size as libuv reads it: UV_THREADPOOL_SIZE (1-1024), else libuv's default 4.
unsigned threadPoolSize();

// A loop owned by an object (tests, `moat scan`, CLI tools); closes every handle left and
// runs the loop until they are gone.
class Loop {
 public:
  Loop();
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;
  uv_loop_t* get() { return &loop_; }
  int run(uv_run_mode mode = UV_RUN_DEFAULT) { return uv_run(&loop_, mode); }
  // Runs until `done()` is true or `timeoutMs` passes; returns done().
  bool runUntil(const std::function<bool()>& done, uint64_t timeoutMs);

 private:
  uv_loop_t loop_;
};

}  // namespace moat::mta::uv
