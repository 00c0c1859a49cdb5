// mta/runtime/log.cc — see log.h. One writer thread per process; callers only take a
// mutex long enough to append to a string.
#include "mta/runtime/log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <thread>

namespace moat::mta::log {
namespace {

constexpr size_t kMaxBuffered = 64 * 1024 * 1024;
// Lines reach the file at most this late (a crash loses at most this much of the log).
constexpr std::chrono::milliseconds kWriteInterval{25};
constexpr size_t kWakeBacklog = 256 * 1024;

class Writer {
 public:
  Writer() : thread_([this] { run(); }) {}
  ~Writer() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
    if (fd_ > 2) ::close(fd_);
  }

  bool open(const std::string& path) {
    int fd = 1;
    if (path != "-") {
      fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
      if (fd < 0) return false;
    }
    std::lock_guard lock(mu_);
    if (fd_ > 2) ::close(fd_);
    fd_ = fd;
    path_ = path;
    return true;
  }

  // False (errno set) when the file cannot be made again, e.g. its folder became
  // unwritable: the lines go on to the file as it was, renamed or deleted.
  bool reopen(std::string& path) {
    {
      std::lock_guard lock(mu_);
      path = path_;
    }
    return path == "-" || path.empty() || open(path);
  }

  void write(std::string line) {
    bool wake;
    {
      std::lock_guard lock(mu_);
      if (pending_.size() + line.size() > kMaxBuffered) {
        ++dropped_;
        return;
      }
      // Waking the writer costs a futex call and two thread switches; per line, that was
      // a tenth of the loop's CPU per relayed message. The writer wakes on its own every
      // kWriteInterval and is only woken early for a large backlog (or by flush()).
      pending_ += line;
      ++seq_;
      wake = pending_.size() >= kWakeBacklog && !wakeSent_;
      if (wake) wakeSent_ = true;
    }
    if (wake) cv_.notify_one();
  }

  void flush() {
    std::unique_lock lock(mu_);
    uint64_t target = seq_;
    flushWanted_ = true;
    cv_.notify_all();
    done_cv_.wait(lock, [&] { return written_ >= target; });
  }

 private:
  void run() {
    std::unique_lock lock(mu_);
    for (;;) {
      // An idle writer sleeps until the interval passes, a backlog builds or someone flushes.
      cv_.wait_for(lock, kWriteInterval, [&] { return stop_ || flushWanted_ || pending_.size() >= kWakeBacklog; });
      if (pending_.empty()) {
        flushWanted_ = false;
        if (stop_) return;
        written_ = seq_;
        done_cv_.notify_all();
        continue;
      }
      std::string out;
      out.swap(pending_);
      uint64_t seq = seq_;
      uint64_t dropped = dropped_;
      dropped_ = 0;
      flushWanted_ = false;
      wakeSent_ = false;
      int fd = fd_;
      lock.unlock();
      // What could not be written (a full disk, the file size limit, an I/O error) is
      // counted with what the full buffer turned away, and both are reported in the first
      // batch that reaches the file again.
      dropped += lost_;
      if (dropped) {
        out += "{\"ts\":\"" + timestamp() +
               "\",\"level\":\"error\",\"event\":\"log_dropped\",\"lines\":" + std::to_string(dropped);
        if (lostError_) {
          out += ",\"error\":";
          appendJsonString(out, std::strerror(lostError_));
        }
        out += "}\n";
      }
      int err = 0;
      size_t done = writeLines(fd, out, err);
      if (done < out.size()) {
        // The lines of this batch that did not go are counted, with the earlier ones
        // the report above stood for, for the report in the next batch.
        lost_ = dropped +
                static_cast<uint64_t>(std::count(out.begin() + static_cast<std::ptrdiff_t>(done), out.end(), '\n'));
        if (dropped) --lost_;  // the report itself, last in the batch, stands for `dropped`
        lostError_ = err;
      } else {
        lost_ = 0;
        lostError_ = 0;
      }
      lock.lock();
      written_ = seq;
      done_cv_.notify_all();
    }
  }

  // Writes `s`, whole lines of it: when a write fails part way (ENOSPC, EFBIG past
  // RLIMIT_FSIZE, EIO), the piece of a line that went is cut off the file again, so that
  // the file stays one JSON object a line. Returns how much of `s` is in the file.
  static size_t writeLines(int fd, const std::string& s, int& err) {
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n = ::write(fd, s.data() + off, s.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        err = n < 0 ? errno : EIO;
        break;
      }
      off += static_cast<size_t>(n);
    }
    if (off == s.size()) return off;
    size_t whole = off == 0 ? 0 : s.rfind('\n', off - 1);
    whole = whole == std::string::npos || off == 0 ? 0 : whole + 1;
    struct stat st {};
    if (whole < off && ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= static_cast<off_t>(off - whole))
      (void)::ftruncate(fd, st.st_size - static_cast<off_t>(off - whole));
    return whole;
  }

  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::string pending_;
  std::string path_ = "-";
  int fd_ = 1;
  uint64_t seq_ = 0, written_ = 0, dropped_ = 0;
  uint64_t lost_ = 0;  // the writer thread's own: lines a failed write lost, not yet reported
  int lostError_ = 0;
  bool stop_ = false, flushWanted_ = false, wakeSent_ = false;
  std::thread thread_;
};

Writer& writer() {
  static Writer w;
  return w;
}

std::atomic<int> g_min_level{static_cast<int>(Level::Info)};
std::atomic<bool> g_text{false};  // toStderrText()
constexpr int kOff = static_cast<int>(Level::Error) + 1;

}  // namespace

std::string_view levelName(Level level) {
  switch (level) {
    case Level::Debug: return "debug";
    case Level::Info: return "info";
    case Level::Warn: return "warn";
    case Level::Error: return "error";
  }
  return "info";
}

bool open(const std::string& path) { return writer().open(path); }
void reopen() {
  std::string path;
  if (!writer().reopen(path)) {
    int err = errno;
    log::error("log_reopen").add("ok", false).add("path", path).add("error", std::strerror(err));
  }
}
void setMinLevel(Level level) { g_min_level = static_cast<int>(level); }
void flush() {
  if (!g_text) writer().flush();
}
void toStderrText(Level min) {
  g_text = true;
  g_min_level = static_cast<int>(min);
}
void disable() { g_min_level = kOff; }

std::string timestamp() {
  std::string out;
  appendTimestamp(out);
  return out;
}

void appendTimestamp(std::string& out) {
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  // Every log line asks for the time: the date and time of day are worked out once a second
  // per thread, and only the milliseconds per line.
  thread_local std::time_t cachedSecs = -1;
  thread_local char cached[24];  // "YYYY-MM-DDTHH:MM:SS"
  thread_local int cachedLen = 0;
  if (secs != cachedSecs) {
    std::tm tm{};
    gmtime_r(&secs, &tm);
    cachedLen = std::snprintf(cached, sizeof cached, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1,
                              tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    if (cachedLen < 0 || cachedLen >= static_cast<int>(sizeof cached)) cachedLen = 0;
    cachedSecs = secs;
  }
  int milli = static_cast<int>(ms % 1000);
  if (milli < 0) milli += 1000;  // a clock before 1970
  out.append(cached, static_cast<size_t>(cachedLen));
  const char frac[] = {'.', static_cast<char>('0' + milli / 100), static_cast<char>('0' + milli / 10 % 10),
                       static_cast<char>('0' + milli % 10), 'Z'};
  out.append(frac, sizeof frac);
}

Line::Line(Level level, std::string_view event)
    : level_(level),
      enabled_(static_cast<int>(level) >= g_min_level.load(std::memory_order_relaxed)),
      text_(g_text.load(std::memory_order_relaxed)),
      event_(event) {
  // Most lines' fields fit: one allocation instead of a string doubling its way up.
  if (enabled_ && !text_) fields_.reserve(320);
}

void Line::addText(std::string_view key, const std::string& json) {
  textFields_ += ' ';
  textFields_.append(key);
  textFields_ += '=';
  bool bare = json.size() > 2 && json.front() == '"' && json.find_first_of(" \\\t", 1) == std::string::npos &&
              json.find('"', 1) == json.size() - 1;
  textFields_ += bare ? json.substr(1, json.size() - 2) : json;
}

Line::~Line() {
  if (!enabled_) return;
  if (text_) {
    // One write(2), so that lines from threads do not interleave; stderr is not buffered.
    std::string line = "moat: " + std::string(level_ == Level::Warn ? "warning" : levelName(level_)) + ": ";
    std::string event;
    appendJsonString(event, event_);  // escapes what a terminal must not see
    line += event.substr(1, event.size() - 2) + (textFields_.empty() ? "" : ":") + textFields_ + "\n";
    for (size_t off = 0; off < line.size();) {
      ssize_t n = ::write(2, line.data() + off, line.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    return;
  }
  const std::string& members = fields_.members();
  std::string line;
  line.reserve(64 + event_.size() + members.size());
  line += "{\"ts\":\"";
  appendTimestamp(line);
  line += "\",\"level\":\"";
  line += levelName(level_);
  line += "\",\"event\":";
  appendJsonString(line, event_);
  if (!members.empty()) {
    line.push_back(',');
    line += members;
  }
  line += "}\n";
  writer().write(std::move(line));
}

}  // namespace moat::mta::log
