// mta/runtime/json.h — a small JSON writer for log lines, control-socket replies and CLI
// output. Untrusted input: every string may come from a peer, so invalid UTF-8 is
// replaced by U+FFFD and control characters are escaped; the output is always valid JSON.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moat::mta {

// Appends `s` as a quoted JSON string.
void appendJsonString(std::string& out, std::string_view s);

class JsonObject {
 public:
  JsonObject& add(std::string_view key, std::string_view value);
  JsonObject& add(std::string_view key, const char* value) { return add(key, std::string_view(value)); }
  JsonObject& add(std::string_view key, const std::string& value) { return add(key, std::string_view(value)); }
  JsonObject& add(std::string_view key, int64_t value);
  JsonObject& add(std::string_view key, uint64_t value);
  JsonObject& add(std::string_view key, int value) { return add(key, static_cast<int64_t>(value)); }
  JsonObject& add(std::string_view key, unsigned value) { return add(key, static_cast<uint64_t>(value)); }
  JsonObject& add(std::string_view key, long long value) { return add(key, static_cast<int64_t>(value)); }
  JsonObject& add(std::string_view key, unsigned long long value) { return add(key, static_cast<uint64_t>(value)); }
  JsonObject& add(std::string_view key, double value);
  JsonObject& add(std::string_view key, bool value);
  JsonObject& add(std::string_view key, const std::vector<std::string>& values);
  // `json` must already be valid JSON (an object or array built with these classes).
  JsonObject& addRaw(std::string_view key, std::string_view json);

  bool empty() const { return body_.empty(); }
  // Room for `bytes` of members without reallocating (a log line's fields, say).
  void reserve(size_t bytes) { body_.reserve(bytes); }
  // Empties it, keeping its buffer (for building many objects in a row).
  void clear() { body_.clear(); }
  std::string str() const { return "{" + body_ + "}"; }
  // The members without braces, for splicing into another object.
  const std::string& members() const { return body_; }

 private:
  void key(std::string_view k);
  std::string body_;
};

class JsonArray {
 public:
  JsonArray& add(std::string_view value);
  JsonArray& addRaw(std::string_view json);
  bool empty() const { return body_.empty(); }
  std::string str() const { return "[" + body_ + "]"; }

 private:
  void sep();
  std::string body_;
};

}  // namespace moat::mta
