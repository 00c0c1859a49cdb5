// Tests for mta/runtime/log: the timestamp every JSON line starts with.
#include "mta/runtime/log.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <ctime>
#include <regex>
#include <thread>

namespace {
// Seconds since the epoch of an RFC 3339 UTC timestamp "YYYY-MM-DDTHH:MM:SS.mmmZ".
int64_t epochSeconds(const std::string& ts) {
  std::tm tm{};
  tm.tm_year = std::stoi(ts.substr(0, 4)) - 1900;
  tm.tm_mon = std::stoi(ts.substr(5, 2)) - 1;
  tm.tm_mday = std::stoi(ts.substr(8, 2));
  tm.tm_hour = std::stoi(ts.substr(11, 2));
  tm.tm_min = std::stoi(ts.substr(14, 2));
  tm.tm_sec = std::stoi(ts.substr(17, 2));
  return static_cast<int64_t>(timegm(&tm));
}
int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}
}  // namespace

TEST_CASE("log timestamps are RFC 3339 UTC with milliseconds and follow the clock across seconds") {
  const std::regex shape(R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z)");
  // Sampled over a little more than two seconds, so the cached date and time of day must
  // change at least twice; each stamp lies between the clock readings around it.
  auto end = nowMs() + 2300;
  int secondsSeen = 0;
  int64_t lastSecond = -1;
  while (nowMs() < end) {
    int64_t before = nowMs();
    std::string ts = moat::mta::log::timestamp();
    int64_t after = nowMs();
    REQUIRE(std::regex_match(ts, shape));
    int64_t ms = epochSeconds(ts) * 1000 + std::stoi(ts.substr(20, 3));
    REQUIRE(ms >= before);
    REQUIRE(ms <= after);
    if (ms / 1000 != lastSecond) {
      ++secondsSeen;
      lastSecond = ms / 1000;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(7));
  }
  REQUIRE(secondsSeen >= 3);
}
