// mta/runtime/fd.h — UniqueFd: one owned file descriptor (a file, a directory, a socket),
// closed when its owner goes, on every path. Header-only; no I/O of its own but close(2).
// For code that works with plain descriptors (the spool on the thread pool, the clamd and
// control-socket clients, start-up checks); libuv's handles have their own RAII (uv.h).
#pragma once
#include <unistd.h>

#include <utility>

namespace moat::mta {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives the descriptor up without closing it.
  int release() { return std::exchange(fd_, -1); }
  // Closes the one held (if any) and holds `fd`.
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  // Closes it now and returns close(2)'s result (0 when none was held): for a file just
  // written, whose close may report a write error.
  int close() {
    int fd = release();
    return fd >= 0 ? ::close(fd) : 0;
  }

 private:
  int fd_ = -1;
};

}  // namespace moat::mta
