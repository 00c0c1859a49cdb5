// mta/daemon/tiny_json.h — a small JSON reader for the CLI (the daemon's control replies)
// and tests. Strict RFC 8259 subset: depth-limited, \u escapes decoded to UTF-8.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moat::mta::daemon::json {

struct Value {
  enum class Type { Null, Bool, Number, String, Array, Object } type = Type::Null;
  bool boolean = false;
  double number = 0;
  std::string str;
  std::vector<Value> array;
  std::vector<std::pair<std::string, Value>> object;

  // The destructor is defined below, once Value is complete: left implicit, clang (14, with
  // libstdc++ 12) instantiating pair<string, Value> for get() needs Value's destructor, which
  // needs the pair complete, a cycle it refuses. The fuzz build compiles this with clang.
  Value() = default;
  Value(const Value&) = default;
  Value(Value&&) noexcept = default;
  Value& operator=(const Value&) = default;
  Value& operator=(Value&&) noexcept = default;
  ~Value();

  const Value* get(std::string_view key) const {
    for (const auto& [k, v] : object)
      if (k == key) return &v;
    return nullptr;
  }
};

inline Value::~Value() = default;

std::optional<Value> parse(std::string_view text);

}  // namespace moat::mta::daemon::json
