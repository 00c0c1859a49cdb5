// policy/values.cc — see values.h.
#include "policy/values.h"

#include <charconv>
#include <limits>

namespace moat::policy {

std::optional<std::chrono::milliseconds> parseDuration(std::string_view text) {
  uint64_t n = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc() || p == text.data()) return std::nullopt;
  std::string_view unit(p, static_cast<size_t>(text.data() + text.size() - p));
  uint64_t mult;
  if (unit == "ms") mult = 1;
  else if (unit == "s") mult = 1000;
  else if (unit == "m") mult = 60'000;
  else if (unit == "h") mult = 3'600'000;
  else if (unit == "d") mult = 86'400'000;
  else if (unit == "w") mult = 604'800'000;
  else return std::nullopt;
  if (n > std::numeric_limits<int64_t>::max() / mult) return std::nullopt;
  return std::chrono::milliseconds(static_cast<int64_t>(n * mult));
}

std::optional<uint64_t> parseSize(std::string_view text) {
  uint64_t n = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc() || p == text.data()) return std::nullopt;
  std::string_view unit(p, static_cast<size_t>(text.data() + text.size() - p));
  uint64_t mult;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "K" || unit == "k" || unit == "KB") mult = 1ull << 10;
  else if (unit == "M" || unit == "MB") mult = 1ull << 20;
  else if (unit == "G" || unit == "GB") mult = 1ull << 30;
  else return std::nullopt;
  if (n > std::numeric_limits<uint64_t>::max() / mult) return std::nullopt;
  return n * mult;
}

}  // namespace moat::policy
