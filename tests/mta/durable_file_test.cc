// Tests for mta/runtime/durable_file: crash-atomic file writes into real directories. Whether
// the contents reached the disk is read from the page cache: pages fsynced are clean, and
// POSIX_FADV_DONTNEED drops clean pages only (dirty ones stay resident, mincore(2) says so).
// The failures the tests cause (a parent that is a regular file, a name held by a directory,
// an existing name) fail for root too.
#include "mta/runtime/durable_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "mta/runtime/fd.h"
#include "tests/support/temp_file.h"

using namespace moat::mta;
using moat::test::readFile;
using moat::test::TempDir;

namespace {

// The names in a directory.
std::set<std::string> names(const std::string& dir) {
  std::set<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

mode_t modeOf(const std::string& path) {
  struct stat st {};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

mode_t umaskNow() {
  mode_t m = ::umask(022);
  ::umask(m);
  return m;
}

// How many of the file's pages are still in the page cache after asking the kernel to drop
// them: 0 when every page was clean, that is written to the disk.
size_t dirtyPagesLeft(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(fd.valid());
  struct stat st {};
  REQUIRE(::fstat(fd.get(), &st) == 0);
  auto size = static_cast<size_t>(st.st_size);
  REQUIRE(size > 0);
  REQUIRE(::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED) == 0);
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
  REQUIRE(map != MAP_FAILED);
  std::vector<unsigned char> pages((size + 4095) / 4096);
  int rc = ::mincore(map, size, pages.data());
  ::munmap(map, size);
  REQUIRE(rc == 0);
  size_t resident = 0;
  for (unsigned char p : pages) resident += p & 1;
  return resident;
}

}  // namespace

TEST_CASE("writeFileDurably writes a new file with its mode and leaves no temporary file") {
  TempDir dir;
  std::string path = dir.file("state");
  FileError e = writeFileDurably(path, "one\ntwo\n");
  CHECK_FALSE(e);
  CHECK(e.text().empty());
  CHECK(readFile(path) == "one\ntwo\n");
  CHECK(modeOf(path) == (0600 & ~umaskNow()));
  CHECK(names(dir.path) == std::set<std::string>{"state"});

  DurableWrite how;
  how.mode = 0640;
  CHECK_FALSE(writeFileDurably(dir.file("mail"), "x", how));
  CHECK(modeOf(dir.file("mail")) == (0640 & ~umaskNow()));
  // An empty file is a file too.
  CHECK_FALSE(writeFileDurably(dir.file("empty"), ""));
  CHECK(std::filesystem::file_size(dir.file("empty")) == 0);
  CHECK(names(dir.path) == std::set<std::string>{"state", "mail", "empty"});
}

TEST_CASE("writeFileDurably replaces a file and a temporary file a crash left without following it") {
  TempDir dir;
  std::string path = dir.file("state", "old contents, longer than the new ones\n");
  // A stale PATH.tmp, here a link to another file: removed, not written through.
  std::string victim = dir.file("victim", "untouched");
  REQUIRE(::symlink(victim.c_str(), (path + ".tmp").c_str()) == 0);
  FileError e = writeFileDurably(path, "new\n");
  CHECK_FALSE(e);
  CHECK(readFile(path) == "new\n");
  CHECK(readFile(victim) == "untouched");
  CHECK(modeOf(path) == (0600 & ~umaskNow()));
  CHECK(names(dir.path) == std::set<std::string>{"state", "victim"});
}

TEST_CASE("writeFileDurably under no-replace keeps an existing file and makes a new one") {
  TempDir dir;
  std::string key = dir.file("key.pem", "published");
  DurableWrite keep;
  keep.replace = false;
  FileError e = writeFileDurably(key, "another key", keep);
  REQUIRE(e);
  CHECK(e.code == EEXIST);
  CHECK(e.what == "link " + key + ".tmp " + key);
  CHECK(e.text() == e.what + ": " + std::strerror(EEXIST));
  CHECK(readFile(key) == "published");
  CHECK(names(dir.path) == std::set<std::string>{"key.pem"});

  CHECK_FALSE(writeFileDurably(dir.file("new.pem"), "fresh key", keep));
  CHECK(readFile(dir.file("new.pem")) == "fresh key");
  CHECK(names(dir.path) == std::set<std::string>{"key.pem", "new.pem"});
}

TEST_CASE("writeFileDurably leaves no temporary file when it fails") {
  TempDir dir;
  SECTION("the parent is a regular file") {
    std::string file = dir.file("plain", "data");
    FileError e = writeFileDurably(file + "/state", "x");
    REQUIRE(e);
    CHECK(e.code == ENOTDIR);
    CHECK(e.what == "create " + file + "/state.tmp");
    CHECK(names(dir.path) == std::set<std::string>{"plain"});
    CHECK(readFile(file) == "data");
  }
  SECTION("the name is a directory with something in it: the rename fails after the write") {
    std::string busy = dir.path + "/busy";
    REQUIRE(::mkdir(busy.c_str(), 0700) == 0);
    dir.file("busy/inside", "kept");
    FileError e = writeFileDurably(busy, "x");
    REQUIRE(e);
    CHECK(e.what == "rename " + busy + ".tmp " + busy);
    CHECK(names(dir.path) == std::set<std::string>{"busy"});
    CHECK(readFile(busy + "/inside") == "kept");
  }
  SECTION("under no-replace, the name is a directory") {
    std::string busy = dir.path + "/busy";
    REQUIRE(::mkdir(busy.c_str(), 0700) == 0);
    DurableWrite keep;
    keep.replace = false;
    FileError e = writeFileDurably(busy, "x", keep);
    REQUIRE(e);
    CHECK(e.code == EEXIST);
    CHECK(names(dir.path) == std::set<std::string>{"busy"});
  }
  SECTION("a temporary name of the caller's that exists is another writer's: left alone") {
    std::string other = dir.file("tmp-1", "another delivery");
    DurableWrite how;
    how.temp = other;
    FileError e = writeFileDurably(dir.file("final"), "x", how);
    REQUIRE(e);
    CHECK(e.code == EEXIST);
    CHECK(e.what == "create " + other);
    CHECK(readFile(other) == "another delivery");
    CHECK(names(dir.path) == std::set<std::string>{"tmp-1"});
  }
}

TEST_CASE("writeFileDurably puts a caller's temporary file under the final name") {
  TempDir dir;
  for (const char* sub : {"/tmp", "/new"}) REQUIRE(::mkdir((dir.path + sub).c_str(), 0700) == 0);
  DurableWrite how;
  how.temp = dir.path + "/tmp/123.M1P2Q3.host";
  how.mode = 0640;
  CHECK_FALSE(writeFileDurably(dir.path + "/new/123.M1P2Q3.host", "Return-Path: <>\n\nbody\n", how));
  CHECK(names(dir.path + "/tmp").empty());
  CHECK(names(dir.path + "/new") == std::set<std::string>{"123.M1P2Q3.host"});
  CHECK(readFile(dir.path + "/new/123.M1P2Q3.host") == "Return-Path: <>\n\nbody\n");
}

TEST_CASE("writeFileDurably and writeFileSynced return with the contents on disk") {
  TempDir dir;
  struct statfs fs {};
  REQUIRE(::statfs(dir.path.c_str(), &fs) == 0);
  // Pages of tmpfs are never written back: the check below needs a disk's file system.
  if (fs.f_type == 0x01021994) {  // TMPFS_MAGIC
    WARN("/tmp is on tmpfs, whose pages are never written back: not checked here");
    return;
  }
  std::string big(1 << 20, 'm');
  for (size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<char>('a' + i / 4096 % 26);
  CHECK_FALSE(writeFileDurably(dir.file("durable"), big));
  CHECK(dirtyPagesLeft(dir.file("durable")) == 0);
  CHECK_FALSE(writeFileSynced(dir.file("synced"), big, 0600, true));
  CHECK(dirtyPagesLeft(dir.file("synced")) == 0);
  // The contents read back from the disk.
  CHECK(readFile(dir.file("durable")) == big);
  // What the check tells apart: a file written without fsync keeps its pages.
  {
    UniqueFd fd(::open(dir.file("plain").c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    REQUIRE(fd.valid());
    REQUIRE(::write(fd.get(), big.data(), big.size()) == static_cast<ssize_t>(big.size()));
  }
  // Not a CHECK: a sync(2) or syncfs(2) by another test running meanwhile may have written
  // them back; the check above is known to fail without the fsync.
  if (dirtyPagesLeft(dir.file("plain")) == 0) WARN("a file written without fsync was written back meanwhile");
}

TEST_CASE("writeFileSynced refuses an existing name when exclusive and replaces a stale one otherwise") {
  TempDir dir;
  std::string path = dir.file("f", "old");
  FileError e = writeFileSynced(path, "new", 0600, true);
  REQUIRE(e);
  CHECK(e.code == EEXIST);
  CHECK(readFile(path) == "old");
  REQUIRE(::chmod(path.c_str(), 0666) == 0);
  CHECK_FALSE(writeFileSynced(path, "new", 0600, false));
  CHECK(readFile(path) == "new");
  CHECK(modeOf(path) == (0600 & ~umaskNow()));
}

TEST_CASE("syncDirectory fsyncs a directory and names what failed") {
  TempDir dir;
  CHECK_FALSE(syncDirectory(dir.path));
  std::string file = dir.file("plain", "x");
  FileError e = syncDirectory(file);
  REQUIRE(e);
  CHECK(e.code == ENOTDIR);
  CHECK(e.what == "open " + file);
  e = syncDirectory(dir.path + "/missing");
  CHECK(e.code == ENOENT);
}

TEST_CASE("parentDirectory gives the directory an entry is in") {
  CHECK(parentDirectory("/var/spool/moat/state") == "/var/spool/moat");
  CHECK(parentDirectory("/var/spool/moat//state//") == "/var/spool/moat");
  CHECK(parentDirectory("spool/state") == "spool");
  CHECK(parentDirectory("state") == ".");
  CHECK(parentDirectory("/state") == "/");
  CHECK(parentDirectory("//state") == "/");
  CHECK(parentDirectory("/") == "/");
}
