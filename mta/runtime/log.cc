// mta/runtime/log.cc — see log.h. One writer thread per process; callers only take a
// mutex long enough to append to a string.
#include "mta/runtime/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
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

  void reopen() {
    std::string path;
    {
      std::lock_guard lock(mu_);
      path = path_;
    }
    if (path != "-" && !path.empty()) open(path);
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
      if (dropped) {
        out += "{\"ts\":\"" + timestamp() + "\",\"level\":\"error\",\"event\":\"log_dropped\",\"lines\":" +
               std::to_string(dropped) + "}\n";
      }
      writeAll(fd, out);
      lock.lock();
      written_ = seq;
      done_cv_.notify_all();
    }
  }

  static void writeAll(int fd, const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n = ::write(fd, s.data() + off, s.size() - off);
      if (n < 0) {
        if (errno == EINTR) continue;
        return;  // nowhere to report a failing log; the daemon keeps running
      }
      off += static_cast<size_t>(n);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::string pending_;
  std::string path_ = "-";
  int fd_ = 1;
  uint64_t seq_ = 0, written_ = 0, dropped_ = 0;
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
void reopen() { writer().reopen(); }
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
