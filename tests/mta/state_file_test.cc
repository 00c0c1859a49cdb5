// Tests for mta/daemon/state_file: the crash-safe writer of the spool's state files, on a real
// uv loop and its thread pool, writing into a real temporary directory. A gate the test opens
// holds a write on the pool, so that changes, writes and flushes can be made while it is under
// way.
#include "mta/daemon/state_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "mta/runtime/uv.h"
#include "tests/support/temp_file.h"

using namespace moat::mta;
using moat::mta::daemon::StateFile;

namespace {

// A directory of its own under /tmp, removed with what the test wrote in it.
using moat::test::TempDir;

// The owner: its contents, how many snapshots were taken, the failures it was told of, and a
// gate each write's encoding waits at (bounded) until the test opens it.
struct Owner {
  std::string contents = "v0";
  int snapshots = 0;
  std::atomic<int> encoded{0};
  std::vector<std::string> failures;
  std::shared_ptr<std::promise<void>> gate;
  std::shared_future<void> opened;

  void closeGate() {
    gate = std::make_shared<std::promise<void>>();
    opened = gate->get_future().share();
  }
  void openGate() {
    if (gate) gate->set_value();
    gate.reset();
  }

  StateFile::Snapshot snapshot() {
    return [this]() -> std::function<std::string()> {
      ++snapshots;
      std::string copy = contents;
      auto wait = opened;
      return [this, copy, wait] {
        if (wait.valid()) wait.wait_for(std::chrono::seconds(10));
        ++encoded;
        return copy;
      };
    };
  }
  StateFile::Failed failed() {
    return [this](const std::string& error) { failures.push_back(error); };
  }
};

}  // namespace

TEST_CASE("state file: a change during a write gives exactly one more write, with the latest contents") {
  TempDir dir;
  uv::Loop loop;
  Owner owner;
  const std::string path = dir.path + "/table.state";
  StateFile file(loop.get(), path, owner.snapshot(), owner.failed());

  owner.closeGate();
  int firstDone = 0, laterDone = 0;
  file.write([&] { ++firstDone; });
  REQUIRE(file.writing());
  CHECK(owner.snapshots == 1);
  // Three changes and three asks while the first write is held on the pool.
  for (int i = 1; i <= 3; ++i) {
    owner.contents = "v" + std::to_string(i);
    file.markDirty();
    file.write([&] { ++laterDone; });
  }
  CHECK(owner.snapshots == 1);  // nothing begins while a write is under way
  owner.openGate();
  REQUIRE(loop.runUntil([&] { return !file.writing() && laterDone == 3; }, 5000));
  // Let anything else the loop would do happen, then count.
  loop.runUntil([] { return false; }, 100);
  CHECK(firstDone == 1);
  CHECK(laterDone == 3);
  CHECK(owner.snapshots == 2);
  CHECK(owner.encoded == 2);
  CHECK(owner.failures.empty());
  CHECK_FALSE(file.dirty());
  CHECK(moat::test::readFile(path) == "v3");
}

TEST_CASE("state file: flush waits for the write under way, then writes the latest contents") {
  TempDir dir;
  uv::Loop loop;
  Owner owner;
  const std::string path = dir.path + "/table.state";
  StateFile file(loop.get(), path, owner.snapshot(), owner.failed());

  owner.closeGate();
  file.markDirty();
  file.write();
  owner.contents = "latest";
  file.markDirty();
  bool flushed = false;
  std::string onDiskAtDone;
  file.flush([&] {
    flushed = true;
    onDiskAtDone = moat::test::readFile(path);
  });
  CHECK_FALSE(flushed);
  // Held: the first write cannot end, so the flush cannot either.
  loop.runUntil([] { return false; }, 100);
  CHECK_FALSE(flushed);
  owner.openGate();
  REQUIRE(loop.runUntil([&] { return flushed; }, 5000));
  CHECK(onDiskAtDone == "latest");
  CHECK(owner.snapshots == 2);
  CHECK_FALSE(file.writing());
  CHECK_FALSE(file.dirty());

  // Nothing changed since: a flush has nothing to write and is done at once.
  bool again = false;
  file.flush([&] { again = true; });
  CHECK(again);
  CHECK(owner.snapshots == 2);
}

TEST_CASE("state file: a flush during a write with nothing changed since waits for it and writes no more") {
  TempDir dir;
  uv::Loop loop;
  Owner owner;
  const std::string path = dir.path + "/table.state";
  StateFile file(loop.get(), path, owner.snapshot(), owner.failed());

  owner.closeGate();
  owner.contents = "only";
  file.markDirty();
  file.write();
  bool flushed = false;
  file.flush([&] { flushed = true; });
  CHECK_FALSE(flushed);
  owner.openGate();
  REQUIRE(loop.runUntil([&] { return flushed; }, 5000));
  CHECK(owner.snapshots == 1);
  CHECK(moat::test::readFile(path) == "only");
}

TEST_CASE("state file: a failed write calls the failure callback and keeps the contents dirty") {
  TempDir dir;
  uv::Loop loop;
  Owner owner;
  const std::string sub = dir.path + "/missing";
  const std::string path = sub + "/table.state";  // its folder is not there: the write fails
  StateFile file(loop.get(), path, owner.snapshot(), owner.failed());

  owner.contents = "counts";
  file.markDirty();
  bool done = false;
  file.flush([&] { done = true; });
  REQUIRE(loop.runUntil([&] { return done; }, 5000));
  REQUIRE(owner.failures.size() == 1);
  CHECK_FALSE(owner.failures[0].empty());
  CHECK(file.dirty());
  CHECK_FALSE(file.writing());

  // The periodic checkpoint tries again; with the folder there it succeeds.
  REQUIRE(::mkdir(sub.c_str(), 0700) == 0);
  file.start(20);
  REQUIRE(loop.runUntil([&] { return !file.dirty() && !file.writing() && owner.encoded == 2; }, 5000));
  CHECK(moat::test::readFile(path) == "counts");
  CHECK(owner.failures.size() == 1);
  // Not dirty any more: the checkpoint writes nothing more.
  loop.runUntil([] { return false; }, 150);
  CHECK(owner.snapshots == 2);
  file.stop();
}

TEST_CASE("state file: the owner's own changed flag makes the contents dirty") {
  TempDir dir;
  uv::Loop loop;
  Owner owner;
  bool changed = false;
  const std::string path = dir.path + "/table.state";
  StateFile file(
      loop.get(), path,
      [&, inner = owner.snapshot()]() {
        changed = false;  // the owner's snapshot clears its own flag
        return inner();
      },
      owner.failed());
  file.setChanged([&] { return changed; });
  CHECK_FALSE(file.dirty());
  file.start(20);
  loop.runUntil([] { return false; }, 100);
  CHECK(owner.snapshots == 0);
  owner.contents = "changed";
  changed = true;
  REQUIRE(loop.runUntil([&] { return owner.encoded == 1 && !file.writing(); }, 5000));
  CHECK(moat::test::readFile(path) == "changed");
  file.stop();
}

TEST_CASE("state file: read gives none, the file, or one byte more than the bound") {
  TempDir dir;
  uv::Loop loop;
  Owner owner;
  const std::string path = dir.path + "/table.state";
  StateFile file(loop.get(), path, owner.snapshot(), owner.failed());
  std::string text = "left over";
  CHECK_FALSE(file.read(16, text));  // none saved
  owner.contents = "0123456789";
  bool done = false;
  file.write([&] { done = true; });
  REQUIRE(loop.runUntil([&] { return done; }, 5000));
  REQUIRE(file.read(16, text));
  CHECK(text == "0123456789");
  REQUIRE(file.read(4, text));
  CHECK(text == "01234");  // so the owner tells a file too big from one cut short
  CHECK(std::string(StateFile::unreadable(text, 4)) == "file too big");
  CHECK(std::string(StateFile::unreadable("0123", 4)) == "not a file Moat wrote, or cut short");
}
