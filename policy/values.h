// policy/values.h — the value syntaxes of the config: durations ("30s", "5m", "4h", "2d",
// "1500ms") and sizes ("35M", "512K", "1G", plain bytes). Strict: trailing junk is an error.
#pragma once
#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>

namespace moat::policy {

std::optional<std::chrono::milliseconds> parseDuration(std::string_view text);
std::optional<uint64_t> parseSize(std::string_view text);

}  // namespace moat::policy
