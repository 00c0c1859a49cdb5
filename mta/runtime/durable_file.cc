// mta/runtime/durable_file.cc — see durable_file.h.
#include "mta/runtime/durable_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "mta/runtime/fd.h"

namespace moat::mta {

std::string FileError::text() const {
  if (code == 0) return {};
  return what + ": " + std::strerror(code);
}

FileError syncDirectory(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return {errno, "open " + dir};
  if (::fsync(fd.get()) != 0) return {errno, "fsync " + dir};
  return {};
}

std::string parentDirectory(const std::string& path) {
  size_t end = path.find_last_not_of('/');
  if (end == std::string::npos) return "/";
  size_t slash = path.rfind('/', end);
  if (slash == std::string::npos) return ".";
  size_t keep = path.find_last_not_of('/', slash);
  return keep == std::string::npos ? "/" : path.substr(0, keep + 1);
}

FileError writeFileSynced(const std::string& path, std::string_view content, mode_t mode, bool exclusive) {
  // O_EXCL always: the file gets `mode` (O_TRUNC would keep an old file's), and a link
  // planted at the name is not followed.
  constexpr int kFlags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC;
  UniqueFd fd(::open(path.c_str(), kFlags, mode));
  if (!fd.valid() && errno == EEXIST && !exclusive) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) return {errno, "create " + path};
    fd.reset(::open(path.c_str(), kFlags, mode));
  }
  if (!fd.valid()) return {errno, "create " + path};
  FileError error;
  while (!content.empty()) {
    ssize_t n = ::write(fd.get(), content.data(), content.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      error = {n < 0 ? errno : EIO, "write " + path};
      break;
    }
    content.remove_prefix(static_cast<size_t>(n));
  }
  if (!error && ::fsync(fd.get()) != 0) error = {errno, "fsync " + path};
  if (fd.close() != 0 && !error) error = {errno, "write " + path};  // NFS reports some errors here
  if (error) ::unlink(path.c_str());
  return error;
}

FileError writeFileDurably(const std::string& path, std::string_view content, const DurableWrite& how) {
  const std::string temp = how.temp.empty() ? path + ".tmp" : how.temp;
  if (FileError e = writeFileSynced(temp, content, how.mode, !how.temp.empty())) return e;
  bool placed = how.replace ? ::rename(temp.c_str(), path.c_str()) == 0 : ::link(temp.c_str(), path.c_str()) == 0;
  int err = errno;
  if (!placed || !how.replace) ::unlink(temp.c_str());  // after a link: the file has its name
  if (!placed) return {err, (how.replace ? "rename " : "link ") + temp + " " + path};
  return syncDirectory(parentDirectory(path));
}

}  // namespace moat::mta
