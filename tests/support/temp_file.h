// tests/support/temp_file.h — the files unit tests write under /tmp (configs, list files)
// for the loaders to read, and the files they read back. Header-only. Untrusted input: none.
#pragma once
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace moat::test {

// Writes `text` to a new file "/tmp/moat-NAME-XXXXXX" + `suffix` and returns its path; the
// caller unlinks it. Throws (failing the test case) when it cannot.
inline std::string writeTempFile(std::string_view name, std::string_view text, std::string_view suffix = "") {
  std::string path = "/tmp/moat-" + std::string(name) + "-XXXXXX" + std::string(suffix);
  int fd = mkstemps(path.data(), static_cast<int>(suffix.size()));
  if (fd < 0) throw std::runtime_error("mkstemps " + path + ": " + std::strerror(errno));
  while (!text.empty()) {
    ssize_t n = write(fd, text.data(), text.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      close(fd);
      throw std::runtime_error("write " + path + ": " + std::strerror(err));
    }
    text.remove_prefix(static_cast<size_t>(n));
  }
  close(fd);
  return path;
}

// The whole file, bytes as they are; "" when it cannot be read (the test's own checks then
// fail on what is missing).
inline std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace moat::test
