// mta/runtime/log.h — the JSON-lines log (CONTRACT.md, Logs). Logs are an API: one object a
// line, every line with `ts` (RFC 3339 UTC, milliseconds), `level` and `event`; the other
// fields are the ones CONTRACT.md names. Writing never blocks the caller: lines go into a
// bounded in-memory buffer that a writer thread drains every 25 ms (sooner for a backlog, or
// on flush()); if the disk stalls long enough for the buffer to fill, lines are dropped and
// the count of drops is logged once it drains.
//
// Usage:  log::info("connect").add("session", id).add("client_ip", ip);   // written at ';'
#pragma once
#include <string>
#include <string_view>

#include "mta/runtime/json.h"

namespace moat::mta::log {

enum class Level { Debug = 0, Info = 1, Warn = 2, Error = 3 };
std::string_view levelName(Level level);

// Opens the destination: "-" for stdout, else a file opened for append. Returns false
// (with errno set) if the file cannot be opened; the previous destination stays.
bool open(const std::string& path);
// Reopens the current file (after logrotate moved it).
void reopen();
// Lines below this level are not written.
void setMinLevel(Level level);
// Waits until every line written so far has reached the destination (tests, shutdown).
void flush();
// The command-line tools (every command but `serve`), whose stdout is their output: lines
// at `min` and above go straight to stderr as one line of plain text each,
// "moat: warning: EVENT: key=value key=\"a value\"", and the others nowhere. Before any
// line is written.
void toStderrText(Level min);
// No line is written at all (`moat check`, which reports what matters as FILE:LINE).
void disable();

// The current time as RFC 3339 UTC with milliseconds, e.g. 2026-11-22T10:00:00.123Z.
std::string timestamp();
// The same, appended to `out`.
void appendTimestamp(std::string& out);

class Line {
 public:
  Line(Level level, std::string_view event);
  ~Line();
  Line(const Line&) = delete;
  Line& operator=(const Line&) = delete;

  template <typename T>
  Line& add(std::string_view key, const T& value) {
    if (!enabled_) return *this;
    if (text_) {
      JsonObject one;  // the value as JSON: "":VALUE
      one.add("", value);
      addText(key, one.members().substr(3));
    } else {
      fields_.add(key, value);
    }
    return *this;
  }
  Line& addRaw(std::string_view key, std::string_view json) {
    if (!enabled_) return *this;
    if (text_)
      addText(key, std::string(json));
    else
      fields_.addRaw(key, json);
    return *this;
  }

 private:
  // Text mode: ` key=VALUE`, from the value as JSON (a string without blanks, quotes or
  // escapes loses its quotes).
  void addText(std::string_view key, const std::string& json);

  Level level_;
  bool enabled_;
  bool text_;
  std::string event_;
  std::string textFields_;
  JsonObject fields_;
};

inline Line debug(std::string_view event) { return Line(Level::Debug, event); }
inline Line info(std::string_view event) { return Line(Level::Info, event); }
inline Line warn(std::string_view event) { return Line(Level::Warn, event); }
inline Line error(std::string_view event) { return Line(Level::Error, event); }

}  // namespace moat::mta::log
