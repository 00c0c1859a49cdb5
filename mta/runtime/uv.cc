// mta/runtime/uv.cc — see uv.h.
#include "mta/runtime/uv.h"

#include <cstdlib>
#include <string>

namespace moat::mta::uv {

Timer::Timer(uv_loop_t* loop) {
  uv_timer_init(loop, h_.get());
  h_.markInitialized();
  h_.get()->data = this;
}

void Timer::start(uint64_t ms, std::function<void()> cb) {
  cb_ = std::move(cb);
  uv_timer_start(
      h_.get(),
      [](uv_timer_t* t) {
        if (auto* self = static_cast<Timer*>(t->data)) {
          auto cb = self->cb_;  // the callback may destroy or restart this timer
          if (cb) cb();
        }
      },
      ms, 0);
}

void Timer::startRepeat(uint64_t ms, std::function<void()> cb) {
  cb_ = std::move(cb);
  uv_timer_start(
      h_.get(),
      [](uv_timer_t* t) {
        if (auto* self = static_cast<Timer*>(t->data)) {
          auto cb = self->cb_;
          if (cb) cb();
        }
      },
      ms, ms);
}

void Timer::stop() { uv_timer_stop(h_.get()); }
bool Timer::active() const { return uv_is_active(h_.raw()) != 0; }
void Timer::unref() { uv_unref(h_.raw()); }

Async::Async(uv_loop_t* loop, std::function<void()> fn) : fn_(std::move(fn)) {
  uv_async_init(loop, h_.get(), [](uv_async_t* a) {
    if (auto* self = static_cast<Async*>(a->data)) self->fn_();
  });
  h_.markInitialized();
  h_.get()->data = this;
}

void Async::send() { uv_async_send(h_.get()); }
void Async::unref() { uv_unref(h_.raw()); }

Signal::Signal(uv_loop_t* loop, int signum, std::function<void()> fn) : fn_(std::move(fn)) {
  uv_signal_init(loop, h_.get());
  h_.markInitialized();
  h_.get()->data = this;
  uv_signal_start(
      h_.get(),
      [](uv_signal_t* s, int) {
        if (auto* self = static_cast<Signal*>(s->data)) self->fn_();
      },
      signum);
}

void Signal::unref() { uv_unref(h_.raw()); }

namespace {
struct WorkReq {
  uv_work_t req{};
  std::function<void()> work;
  std::function<void()> after;
};
}  // namespace

void queueWork(uv_loop_t* loop, std::function<void()> work, std::function<void()> after) {
  auto r = std::make_unique<WorkReq>();
  r->work = std::move(work);
  r->after = std::move(after);
  r->req.data = r.get();
  int rc = uv_queue_work(
      loop, &r->req, [](uv_work_t* req) { static_cast<WorkReq*>(req->data)->work(); },
      [](uv_work_t* req, int) {
        std::unique_ptr<WorkReq> owned(static_cast<WorkReq*>(req->data));
        if (owned->after) owned->after();
      });
  if (rc == 0) {
    r.release();  // owned by libuv until the after-callback
  } else {
    // The pool refused (only on a closing loop): do the work inline rather than lose it.
    r->work();
    if (r->after) r->after();
  }
}

void configureThreadPool(unsigned threads) {
  setenv("UV_THREADPOOL_SIZE", std::to_string(threads).c_str(), 0);
}

unsigned threadPoolSize() {
  const char* v = getenv("UV_THREADPOOL_SIZE");
  unsigned long n = v ? strtoul(v, nullptr, 10) : 0;
  return n == 0 ? 4 : n > 1024 ? 1024 : static_cast<unsigned>(n);
}

Loop::Loop() { uv_loop_init(&loop_); }

Loop::~Loop() {
  uv_walk(
      &loop_,
      [](uv_handle_t* h, void*) {
        if (!uv_is_closing(h)) uv_close(h, nullptr);
      },
      nullptr);
  uv_run(&loop_, UV_RUN_DEFAULT);
  uv_loop_close(&loop_);
}

bool Loop::runUntil(const std::function<bool()>& done, uint64_t timeoutMs) {
  uint64_t deadline = uv_now(&loop_) + timeoutMs;
  uv_timer_t tick;
  uv_timer_init(&loop_, &tick);
  uv_timer_start(&tick, [](uv_timer_t* t) { uv_stop(t->loop); }, 10, 10);
  while (!done() && uv_now(&loop_) < deadline) {
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_update_time(&loop_);
  }
  uv_timer_stop(&tick);
  uv_close(reinterpret_cast<uv_handle_t*>(&tick), nullptr);
  uv_run(&loop_, UV_RUN_NOWAIT);
  return done();
}

}  // namespace moat::mta::uv
