// tests/support/temp_file.h — the files and folders unit tests make under /tmp (configs, list
// files, key files, databases) for the code under test to read, and the files they read back.
// Header-only. Untrusted input: none.
#pragma once
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
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

// A new folder "/tmp/moat-test-XXXXXX", removed with everything in it when the test case
// ends. Throws (failing the test case) when it cannot be made.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = "/tmp/moat-test-XXXXXX";
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp " + tmpl + ": " + std::strerror(errno));
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // The path of `name` in the folder.
  std::string file(const std::string& name) const { return path + "/" + name; }
  // The same, written with `content` first (bytes as they are).
  std::string file(const std::string& name, std::string_view content) const {
    std::string p = file(name);
    std::ofstream(p, std::ios::binary).write(content.data(), static_cast<std::streamsize>(content.size()));
    return p;
  }

  std::string path;
};

}  // namespace moat::test
