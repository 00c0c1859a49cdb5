// Tests for queue/spool: commit and recovery on a real file system (a fresh directory per
// test), recovery from each state a crash can leave, group commit, bounded memory while
// receiving, and the disk-full path. Disk full is simulated with RLIMIT_FSIZE (SIGXFSZ
// ignored): writes past the limit fail with EFBIG, which the spool reports as "disk full",
// the same ErrorKind::NoSpace as ENOSPC — no root or tmpfs needed.
#include "queue/spool.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "mta/runtime/uv.h"
#include "tests/support/temp_file.h"

using namespace moat::queue;
namespace fs = std::filesystem;
using moat::mta::uv::Loop;

namespace {

using moat::test::TempDir;

std::string readAll(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void writeAll(const std::string& p, std::string_view s) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(s.data(), static_cast<std::streamsize>(s.size()));
}

size_t countFiles(const std::string& dir) {
  size_t n = 0;
  for (auto& e : fs::directory_iterator(dir)) n += e.is_regular_file();
  return n;
}

// The envelope at the end of a message file (the 32-byte trailer gives its length, and
// in the padded form the padding's).
std::string envelopeOf(const std::string& p) {
  std::string f = readAll(p);
  REQUIRE(f.size() > 32);
  std::string trailer = f.substr(f.size() - 32);
  REQUIRE(trailer.rfind("\nMOAT-ENVELOPE ", 0) == 0);
  size_t len = 0, pad = 0;
  if (trailer.substr(22, 5) == " pad ") {
    len = std::stoul(trailer.substr(15, 7), nullptr, 16);
    pad = std::stoul(trailer.substr(27, 4), nullptr, 16);
  } else {
    len = std::stoul(trailer.substr(15, 16), nullptr, 16);
  }
  REQUIRE(len + pad + 32 <= f.size());
  return f.substr(f.size() - 32 - pad - len, len);
}

// A message file of the first layout: bytes, envelope, trailer (recovery still reads it).
std::string messageFile(std::string_view body, const std::string& env) {
  char t[33];
  std::snprintf(t, sizeof t, "\nMOAT-ENVELOPE %016zx\n", env.size());
  return std::string(body) + env + std::string(t, 32);
}

// A message file as the commit writes it now: bytes, envelope, zeros up to a whole
// number of 4096-byte blocks, trailer.
std::string paddedMessageFile(std::string_view body, const std::string& env) {
  size_t used = body.size() + env.size() + 32;
  size_t pad = (4096 - used % 4096) % 4096;
  char t[33];
  std::snprintf(t, sizeof t, "\nMOAT-ENVELOPE %07zx pad %04zx\n", env.size(), pad);
  return std::string(body) + env + std::string(pad, '\0') + std::string(t, 32);
}

Envelope makeEnv(std::string from = "s@example.test") {
  Envelope e;
  e.mailFrom = std::move(from);
  e.arrivalMs = 1'700'000'000'000;
  e.protocol = "ESMTP";
  e.rcpts.resize(2);
  e.rcpts[0].address = "r1@example.test";
  e.rcpts[1].address = "r2@example.test";
  e.headers = {{"Received", "from test"}};
  return e;
}

struct Fixture {
  TempDir dir;
  Loop loop;
  std::shared_ptr<Spool> spool;
  Fixture() { reopen(); }
  void reopen() {
    spool.reset();  // its lock first: one Spool per directory
    std::string error;
    spool = Spool::open(loop.get(), dir.path, error);
    INFO(error);
    REQUIRE(spool);
  }
  std::string p(const std::string& sub) const { return dir.path + "/" + sub; }

  // Receives and finishes `body` (its data() checked), not committed.
  std::shared_ptr<IncomingMessage> finished(std::string_view body) {
    auto msg = spool->create();
    msg->append(body);
    bool done = false, ok = false;
    msg->finish([&](bool k, std::string) { done = true, ok = k; });
    REQUIRE(loop.runUntil([&] { return done; }, 10000));
    REQUIRE(ok);
    REQUIRE(msg->data()->bytes() == body);
    return msg;
  }

  // Receives, finishes and commits `body`; returns the queue id.
  std::string commit(std::string_view body, Envelope env = makeEnv()) {
    auto msg = finished(body);
    bool done = false, ok = false;
    std::string err;
    msg->commit(env, [&](bool k, std::string e) { done = true, ok = k, err = e; });
    REQUIRE(loop.runUntil([&] { return done; }, 10000));
    INFO(err);
    REQUIRE(ok);
    return msg->id();
  }

  // The stored bytes of `id` (openData must find them).
  std::string bytesOf(const std::string& id) {
    std::string error;
    auto d = spool->openData(id, error);
    INFO(error);
    REQUIRE(d);
    return std::string(d->bytes());
  }

  bool waitOp(std::function<void(Spool::Done)> op, std::string* error = nullptr) {
    bool done = false, ok = false;
    op([&](bool k, std::string e) {
      done = true, ok = k;
      if (error) *error = e;
    });
    REQUIRE(loop.runUntil([&] { return done; }, 10000));
    return ok;
  }

  // Commits `body`, delivers (removes) it, then commits another message whose round syncs
  // queue/: the first one's file is then a spare ready for reuse. Returns the second id.
  std::string leaveSpare(std::string_view body) {
    std::string a = commit(body);
    REQUIRE(waitOp([&](Spool::Done cb) { spool->remove(a, cb, Area::Active); }));
    return commit("Subject: t\r\n\r\nt\r\n");
  }

  std::vector<Envelope> recover(RecoveryReport& r) {
    reopen();  // a fresh Spool object, as after a restart
    return spool->recover(r);
  }
};

}  // namespace

TEST_CASE("spool: commit makes the message durable, a restart recovers it") {
  Fixture f;
  std::string body = "Subject: hi\r\n\r\nhello\r\n";
  std::string id = f.commit(body);
  REQUIRE(id.size() >= 12);
  // One file: the bytes, the envelope, the trailer; nothing under data/ or tmp/.
  REQUIRE(fs::exists(f.p("queue/" + id)));
  std::string file = readAll(f.p("queue/" + id));
  REQUIRE(file.substr(0, body.size()) == body);
  REQUIRE(file == paddedMessageFile(body, envelopeOf(f.p("queue/" + id))));
  REQUIRE(file.size() % 4096 == 0);
  REQUIRE_FALSE(fs::exists(f.p("data/" + id)));
  REQUIRE(countFiles(f.p("tmp")) == 0);

  RecoveryReport r;
  auto envs = f.recover(r);
  REQUIRE(envs.size() == 1);
  REQUIRE(r.recovered == 1);
  REQUIRE(r.removedPartial == 0);
  REQUIRE(r.movedCorrupt == 0);
  REQUIRE(envs[0].id == id);
  REQUIRE(envs[0].size == body.size());
  REQUIRE(envs[0].rcpts.size() == 2);
  REQUIRE(envs[0].headers == makeEnv().headers);
  std::string error;
  auto data = f.spool->openData(id, error);
  REQUIRE(data);
  REQUIRE(data->bytes() == body);
}

TEST_CASE("spool: queue ids are unique, sortable and filename-safe") {
  Fixture f;
  std::vector<std::string> ids;
  for (int i = 0; i < 5000; ++i) ids.push_back(f.spool->newId());
  for (size_t i = 1; i < ids.size(); ++i) REQUIRE(ids[i - 1] < ids[i]);
  for (auto c : ids[0]) REQUIRE(std::isalnum(static_cast<unsigned char>(c)));
  REQUIRE(ids[0].size() == 16);
}

TEST_CASE("spool: recovery handles every state a crash can leave") {
  Fixture f;
  std::string body = "Subject: t\r\n\r\nbody\r\n";
  std::string kept = f.commit(body);  // acknowledged: must survive everything below
  std::string envText = envelopeOf(f.p("queue/" + kept));
  auto makeEnvText = [&](const std::string& id) {
    std::string err;
    Envelope e = *parseEnvelope(envText, err);
    e.id = id;
    return serializeEnvelope(e);
  };
  // 1. temp data only (crash while receiving).
  writeAll(f.p("tmp/AAAA000000000001.data"), "partial");
  // 2. temp data + a partial envelope (crash while writing the envelope).
  writeAll(f.p("tmp/AAAA000000000002.data"), body);
  writeAll(f.p("tmp/AAAA000000000002.1.env"), makeEnvText("AAAA000000000002").substr(0, 40));
  // 3. both complete, not yet renamed.
  writeAll(f.p("tmp/AAAA000000000003.data"), body);
  writeAll(f.p("tmp/AAAA000000000003.1.env"), makeEnvText("AAAA000000000003"));
  // 4. data renamed, envelope not yet (the envelope is the commit point).
  writeAll(f.p("data/AAAA000000000004"), body);
  // 5. both renamed, directory not synced yet: complete and valid.
  writeAll(f.p("data/AAAA000000000005"), body);
  writeAll(f.p("queue/AAAA000000000005"), makeEnvText("AAAA000000000005"));
  // 6. truncated final envelope.
  writeAll(f.p("data/AAAA000000000006"), body);
  std::string t6 = makeEnvText("AAAA000000000006");
  writeAll(f.p("queue/AAAA000000000006"), t6.substr(0, t6.size() / 2));
  // 7. truncated data file (size disagrees with the envelope).
  writeAll(f.p("data/AAAA000000000007"), body.substr(0, 5));
  writeAll(f.p("queue/AAAA000000000007"), makeEnvText("AAAA000000000007"));
  // 8. garbage file in queue/, and one with a name that is no queue id.
  writeAll(f.p("queue/AAAA000000000008"), "\x01\x02garbage");
  writeAll(f.p("queue/not-an-id.swp"), "x");
  // 9. corrupt envelope (one flipped byte) with its data.
  std::string t9 = makeEnvText("AAAA000000000009");
  t9[t9.size() / 3] ^= 0x04;
  writeAll(f.p("data/AAAA000000000009"), body);
  writeAll(f.p("queue/AAAA000000000009"), t9);
  // 10. envelope whose data file is missing.
  writeAll(f.p("queue/AAAA00000000000A"), makeEnvText("AAAA00000000000A"));
  // States 4-10 are the layout of spools written before message files (data/ + an
  // envelope-only file); the ones below are message files.
  // 11. message file complete in tmp/, not yet renamed.
  writeAll(f.p("tmp/AAAA00000000000B.data"), messageFile(body, makeEnvText("AAAA00000000000B")));
  // 12. message file whose bytes are shorter than its envelope says.
  writeAll(f.p("queue/AAAA00000000000C"), messageFile(body.substr(0, 5), makeEnvText("AAAA00000000000C")));
  // 13. message file with a flipped byte in its envelope.
  std::string t13 = makeEnvText("AAAA00000000000D");
  t13[t13.size() / 2] ^= 0x01;
  writeAll(f.p("queue/AAAA00000000000D"), messageFile(body, t13));
  // 14. crash during the first rewrite: data/ link made, envelope not yet replaced.
  writeAll(f.p("queue/AAAA00000000000E"), messageFile(body, makeEnvText("AAAA00000000000E")));
  fs::create_hard_link(f.p("queue/AAAA00000000000E"), f.p("data/AAAA00000000000E"));
  // 15. ... and after the rename: an envelope-only file, the bytes under data/.
  writeAll(f.p("data/AAAA00000000000F"), messageFile(body, makeEnvText("AAAA00000000000F")));
  writeAll(f.p("queue/AAAA00000000000F"), makeEnvText("AAAA00000000000F"));

  RecoveryReport r;
  auto envs = f.recover(r);
  std::set<std::string> ids;
  for (auto& e : envs) ids.insert(e.id);
  INFO([&] {
    std::string s;
    for (auto& n : r.notes) s += n + "\n";
    return s;
  }());
  REQUIRE(ids == std::set<std::string>{kept, "AAAA000000000005", "AAAA00000000000E", "AAAA00000000000F"});
  REQUIRE(r.recovered == 4);
  REQUIRE(r.removedPartial == 7);  // 6 tmp files + the orphan data of state 4
  REQUIRE(r.movedCorrupt == 8);    // 6, 7, 8, the bad name, 9, 10, 12, 13
  REQUIRE(countFiles(f.p("tmp")) == 0);
  REQUIRE_FALSE(fs::exists(f.p("data/AAAA000000000004")));
  REQUIRE(fs::exists(f.p("corrupt/queue-AAAA000000000009")));
  REQUIRE(fs::exists(f.p("corrupt/data-AAAA000000000009")));  // kept beside its envelope
  REQUIRE(fs::exists(f.p("corrupt/data-AAAA000000000007")));
  REQUIRE(fs::exists(f.p("corrupt/queue-not-an-id.swp")));
  REQUIRE(fs::exists(f.p("corrupt/queue-AAAA00000000000C")));
  REQUIRE(fs::exists(f.p("corrupt/queue-AAAA00000000000D")));
  REQUIRE(countFiles(f.p("queue")) == 4);
  for (const std::string& id : {kept, std::string("AAAA000000000005"), std::string("AAAA00000000000E"),
                                std::string("AAAA00000000000F")}) {
    std::string error;
    auto data = f.spool->openData(id, error);
    INFO(id << " " << error);
    REQUIRE(data);
    REQUIRE(data->bytes() == body);
  }

  // A second recovery finds a clean spool.
  RecoveryReport r2;
  REQUIRE(f.recover(r2).size() == 4);
  REQUIRE(r2.removedPartial == 0);
  REQUIRE(r2.movedCorrupt == 0);
}

TEST_CASE("spool: recovery sets aside what is not a regular file, and never blocks on it") {
  // Not a state a crash leaves, but one a person or a restore can: a FIFO under a message's
  // name used to be opened for reading, which waits for a writer, so the daemon never got
  // past recovery. A symlink is not followed: the spool holds its own files only.
  Fixture f;
  std::string body = "Subject: t\r\n\r\nbody\r\n";
  std::string kept = f.commit(body);
  std::string file = readAll(f.p("queue/" + kept));
  std::string err;
  Envelope e = *parseEnvelope(envelopeOf(f.p("queue/" + kept)), err);
  REQUIRE(::mkfifo(f.p("queue/AAAA000000000001").c_str(), 0600) == 0);  // FIFO as a message
  e.id = "AAAA000000000002";                                            // FIFO as its bytes
  writeAll(f.p("queue/AAAA000000000002"), serializeEnvelope(e));
  REQUIRE(::mkfifo(f.p("data/AAAA000000000002").c_str(), 0600) == 0);
  e.id = "AAAA000000000003";  // a symlink to a good message file elsewhere
  writeAll(f.p("elsewhere"), messageFile(body, serializeEnvelope(e)));
  fs::create_symlink(f.p("elsewhere"), f.p("hold/AAAA000000000003"));
  fs::create_directory(f.p("tmp/AAAA000000000004.data"));  // directories where files go
  fs::create_directory(f.p("data/AAAA000000000005"));

  RecoveryReport r;
  auto envs = f.recover(r);
  INFO([&] {
    std::string s;
    for (auto& n : r.notes) s += n + "\n";
    return s;
  }());
  REQUIRE(envs.size() == 1);
  REQUIRE(envs[0].id == kept);
  REQUIRE(r.removedPartial == 0);
  REQUIRE(r.movedCorrupt == 5);  // the FIFO, the envelope with its FIFO, the link, two directories
  for (const char* name : {"queue-AAAA000000000001", "queue-AAAA000000000002", "data-AAAA000000000002",
                           "hold-AAAA000000000003", "tmp-AAAA000000000004.data", "data-AAAA000000000005"})
    CHECK(fs::symlink_status(f.p(std::string("corrupt/") + name)).type() != fs::file_type::not_found);
  REQUIRE(readAll(f.p("elsewhere")).size() > body.size());  // the link's target is left alone
  REQUIRE(readAll(f.p("queue/" + kept)) == file);

  RecoveryReport r2;  // and the next start finds a clean spool
  REQUIRE(f.recover(r2).size() == 1);
  REQUIRE(r2.removedPartial + r2.movedCorrupt == 0);
}

TEST_CASE("spool: a crash during a move leaves two copies, the newer generation wins") {
  Fixture f;
  std::string id = f.commit("x\r\n");
  std::string err;
  auto parsed = parseEnvelope(envelopeOf(f.p("queue/" + id)), err);
  REQUIRE(parsed);
  Envelope e = *parsed;
  e.area = Area::Hold;
  e.generation += 1;
  // What move() does: the bytes linked under data/, the new copy written, the old one not
  // yet unlinked.
  fs::create_hard_link(f.p("queue/" + id), f.p("data/" + id));
  writeAll(f.p("hold/" + id), serializeEnvelope(e));
  RecoveryReport r;
  auto envs = f.recover(r);
  REQUIRE(envs.size() == 1);
  REQUIRE(envs[0].area == Area::Hold);
  REQUIRE_FALSE(fs::exists(f.p("queue/" + id)));
  std::string error;
  auto data = f.spool->openData(id, error);
  REQUIRE(data);
  REQUIRE(data->bytes() == "x\r\n");
}

TEST_CASE("spool: openData finds the bytes in the message file, then under data/, never an envelope") {
  Fixture f;
  std::string body = "Subject: o\r\n\r\nbytes\r\n";
  std::string id = f.commit(body);
  std::string error;
  auto d1 = f.spool->openData(id, error);
  REQUIRE(d1);
  REQUIRE(d1->bytes() == body);  // from queue/<id>, without the envelope and trailer
  // After an update the bytes live under data/ and queue/<id> is an envelope only.
  std::string err;
  auto env = parseEnvelope(envelopeOf(f.p("queue/" + id)), err);
  REQUIRE(env);
  env->attempts = 1;
  REQUIRE(f.waitOp([&](Spool::Done cb) { f.spool->update(*env, cb); }));
  REQUIRE(fs::exists(f.p("data/" + id)));
  auto d2 = f.spool->openData(id, error);
  REQUIRE(d2);
  REQUIRE(d2->bytes() == body);
  // An envelope-only file whose data/ copy is gone is an error, not message bytes.
  fs::remove(f.p("data/" + id));
  REQUIRE_FALSE(f.spool->openData(id, error));
  REQUIRE(errorKind(error) == ErrorKind::NotFound);
}

TEST_CASE("spool: removals batch, keep order with other operations, and end the id's life") {
  Fixture f;
  std::vector<std::string> ids;
  for (int i = 0; i < 30; ++i) ids.push_back(f.commit("Subject: r" + std::to_string(i) + "\r\n\r\nx\r\n"));
  // An update still in flight for ids[0]: its removal waits for it (serialized), while the
  // others join removal rounds.
  std::string err;
  auto env0 = parseEnvelope(envelopeOf(f.p("queue/" + ids[0])), err);
  auto env1 = parseEnvelope(envelopeOf(f.p("queue/" + ids[1])), err);  // before its removal starts
  REQUIRE(env0);
  REQUIRE(env1);
  env0->attempts = 3;
  int updated = 0, removed = 0, failed = 0;
  f.spool->update(*env0, [&](bool ok, std::string) { ok ? ++updated : ++failed; });
  for (size_t i = 0; i < ids.size(); ++i)
    f.spool->remove(ids[i], [&](bool ok, std::string) { ok ? ++removed : ++failed; }, i % 2 ? std::optional<Area>(Area::Active) : std::nullopt);
  // Nothing may write an envelope for a message being removed.
  bool refused = false;
  f.spool->update(*env1, [&](bool ok, std::string e) { refused = !ok && errorKind(e) == ErrorKind::NotFound; });
  REQUIRE(f.loop.runUntil([&] { return updated + removed + failed == 31 && refused; }, 10000));
  REQUIRE(failed == 0);
  REQUIRE(updated == 1);
  REQUIRE(removed == 30);
  REQUIRE(countFiles(f.p("queue")) + countFiles(f.p("data")) + countFiles(f.p("tmp")) == 0);
  RecoveryReport r;
  REQUIRE(f.recover(r).empty());
}

TEST_CASE("spool: update, move and remove are durable") {
  Fixture f;
  std::string id = f.commit("Subject: u\r\n\r\nx\r\n");
  RecoveryReport r;
  Envelope e = f.recover(r).at(0);

  e.rcpts[0].status = RcptStatus::Delivered;
  e.rcpts[0].lastReply = "250 2.0.0 ok";
  e.rcpts[1].attempts = 1;
  e.attempts = 1;
  e.nextAttemptMs = 123456;
  REQUIRE(f.waitOp([&](Spool::Done cb) { f.spool->update(e, cb); }));
  auto envs = f.recover(r);
  REQUIRE(envs.at(0).rcpts[0].status == RcptStatus::Delivered);
  REQUIRE(envs.at(0).rcpts[0].lastReply == "250 2.0.0 ok");
  REQUIRE(envs.at(0).nextAttemptMs == 123456);

  // Several updates issued at once land in order: the last one wins.
  e = envs.at(0);
  int done = 0;
  for (int i = 1; i <= 10; ++i) {
    e.attempts = i;
    f.spool->update(e, [&](bool ok, std::string) { done += ok; });
  }
  REQUIRE(f.loop.runUntil([&] { return done == 10; }, 10000));
  envs = f.recover(r);
  REQUIRE(envs.at(0).attempts == 10);

  e = envs.at(0);
  e.quarantineReason = "spam";
  REQUIRE(f.waitOp([&](Spool::Done cb) { f.spool->move(e, Area::Quarantine, cb); }));
  REQUIRE(fs::exists(f.p("quarantine/" + id)));
  REQUIRE_FALSE(fs::exists(f.p("queue/" + id)));
  envs = f.recover(r);
  REQUIRE(envs.at(0).area == Area::Quarantine);
  REQUIRE(envs.at(0).quarantineReason == "spam");
  REQUIRE(f.waitOp([&](Spool::Done cb) { f.spool->move(envs[0], Area::Hold, cb); }));
  REQUIRE(f.waitOp([&](Spool::Done cb) { f.spool->move(envs[0], Area::Active, cb); }));
  envs = f.recover(r);
  REQUIRE(envs.at(0).area == Area::Active);
  REQUIRE(countFiles(f.p("hold")) + countFiles(f.p("quarantine")) == 0);

  REQUIRE(f.waitOp([&](Spool::Done cb) { f.spool->remove(id, cb); }));
  REQUIRE_FALSE(fs::exists(f.p("data/" + id)));
  REQUIRE(f.recover(r).empty());
  std::string error;
  REQUIRE_FALSE(f.waitOp([&](Spool::Done cb) { f.spool->remove(id, cb); }, &error));
  REQUIRE(errorKind(error) == ErrorKind::NotFound);
  REQUIRE_FALSE(f.waitOp([&](Spool::Done cb) { f.spool->update(e, cb); }, &error));
  REQUIRE(errorKind(error) == ErrorKind::NotFound);
  REQUIRE(countFiles(f.p("queue")) + countFiles(f.p("tmp")) == 0);
}

TEST_CASE("spool: one Spool per directory: a second is refused, naming the holder's PID") {
  Fixture f;
  std::string error;
  REQUIRE_FALSE(Spool::open(f.loop.get(), f.dir.path, error));
  REQUIRE(error.find("in use by another moat process (PID " + std::to_string(::getpid()) + ")") != std::string::npos);
  f.spool.reset();  // the holder goes (as a process does, kill -9 included): the lock with it
  error.clear();
  REQUIRE(Spool::open(f.loop.get(), f.dir.path, error));
  REQUIRE(error.empty());
}

TEST_CASE("spool: a spool under folders that do not exist yet is made, parents included, and a file is refused") {
  TempDir base;
  Loop loop;
  std::string error;
  const std::string dir = base.path + "/var/lib//moat/spool/";
  auto spool = Spool::open(loop.get(), dir, error);
  REQUIRE(error.empty());
  REQUIRE(spool);
  for (const char* sub : {"tmp", "data", "queue", "hold", "quarantine", "spare", "corrupt"})
    CHECK(fs::is_directory(dir + sub));
  struct stat st {};
  REQUIRE(::stat((base.path + "/var/lib/moat/spool").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);  // the spool itself: only Moat's user
  REQUIRE(::stat((base.path + "/var/lib").c_str(), &st) == 0);
  CHECK((st.st_mode & 0700) == 0700);
  spool.reset();
  error.clear();
  REQUIRE(Spool::open(loop.get(), dir, error));  // what exists is taken as it is
  REQUIRE(error.empty());

  writeAll(base.path + "/file", "x");
  error.clear();
  REQUIRE_FALSE(Spool::open(loop.get(), base.path + "/file/spool", error));
  CHECK(error.find("/file") != std::string::npos);
}

TEST_CASE("spool: group commit batches concurrent commits, all call back ok and recover") {
  Fixture f;
  const int n = 200;
  std::vector<std::shared_ptr<IncomingMessage>> msgs;
  int finished = 0, committed = 0, failed = 0;
  for (int i = 0; i < n; ++i) {
    auto m = f.spool->create();
    m->append("Subject: " + std::to_string(i) + "\r\n\r\n" + std::string(4000, 'a' + i % 26) + "\r\n");
    msgs.push_back(m);
    m->finish([&, m](bool ok, std::string) {
      ++finished;
      if (!ok) return void(++failed);
      m->commit(makeEnv(), [&](bool ok2, std::string) { ok2 ? ++committed : ++failed; });
    });
  }
  REQUIRE(f.loop.runUntil([&] { return committed + failed == n; }, 60000));
  REQUIRE(failed == 0);
  REQUIRE(committed == n);
  REQUIRE(f.spool->dirSyncRounds() < static_cast<uint64_t>(n));  // shared syncs
  std::vector<std::string> ids;
  for (const auto& m : msgs) ids.push_back(m->id());
  msgs.clear();  // they hold the spool, and so its lock
  RecoveryReport r;
  auto envs = f.recover(r);
  REQUIRE(envs.size() == static_cast<size_t>(n));
  REQUIRE(r.movedCorrupt == 0);
  for (int i = 0; i < n; ++i) {
    std::string err;
    auto d = f.spool->openData(ids[i], err);
    REQUIRE(d);
    REQUIRE(d->bytes().starts_with("Subject: " + std::to_string(i) + "\r\n"));
  }
}

TEST_CASE("spool: receiving keeps memory bounded and the file byte-exact") {
  Fixture f;
  auto m = f.spool->create();
  bool drained = false;
  m->setOnDrain([&] { drained = true; });
  const size_t chunk = 64 << 10, total = 50u << 20;
  std::string buf(chunk, '\0');
  size_t sent = 0, pauses = 0, maxBuffered = 0;
  uint32_t x = 12345;
  auto fill = [&] {
    for (auto& c : buf) c = static_cast<char>((x = x * 1103515245 + 12345) >> 16);
  };
  while (sent < total) {
    if (m->overHighWater()) {
      ++pauses;
      drained = false;
      REQUIRE(f.loop.runUntil([&] { return drained; }, 30000));
      REQUIRE_FALSE(m->overHighWater());
      continue;
    }
    fill();
    m->append(buf);
    sent += chunk;
    maxBuffered = std::max(maxBuffered, m->bufferedBytes());
  }
  REQUIRE(pauses > 0);
  REQUIRE(maxBuffered <= IncomingMessage::kHighWater + chunk);
  bool done = false, ok = false;
  m->finish([&](bool k, std::string) { done = true, ok = k; });
  REQUIRE(f.loop.runUntil([&] { return done; }, 60000));
  REQUIRE(ok);
  REQUIRE(m->size() == total);
  auto d = m->data();
  REQUIRE(d->size() == total);
  x = 12345;
  bool same = true;
  for (size_t off = 0; off < total && same; off += chunk) {
    fill();
    same = d->bytes().substr(off, chunk) == buf;
  }
  REQUIRE(same);
  m->abort();
  m.reset();
  REQUIRE(f.loop.runUntil([&] { return countFiles(f.p("tmp")) == 0; }, 10000));
}

TEST_CASE("spool: a message is held in memory while the receive budget allows, else streamed") {
  Fixture f;
  const size_t piece = 64 << 10;
  f.spool->setReceiveBudget(5 * piece);
  auto receive = [&](char c, size_t pieces) {
    auto m = f.spool->create();
    for (size_t i = 0; i < pieces; ++i) m->append(std::string(piece, c));
    return m;
  };
  auto finish = [&](const std::shared_ptr<IncomingMessage>& m) {
    bool done = false, ok = false;
    m->finish([&](bool k, std::string) { done = true, ok = k; });
    REQUIRE(f.loop.runUntil([&] { return done; }, 10000));
    REQUIRE(ok);
  };
  auto a = receive('a', 4);  // 256 KiB: within the budget, nothing goes to disk
  f.loop.runUntil([] { return false; }, 100);
  REQUIRE(f.spool->receiveHeld() == 4 * piece);
  REQUIRE(countFiles(f.p("tmp")) == 0);
  auto b = receive('b', 3);  // would pass the budget: written out as it arrives
  REQUIRE(f.loop.runUntil([&] { return countFiles(f.p("tmp")) == 1; }, 10000));
  REQUIRE(f.spool->receiveHeld() == 4 * piece);
  auto c = receive('c', 1);  // fits beside the first
  REQUIRE(f.spool->receiveHeld() == 5 * piece);
  c->abort();  // an aborted message gives its share back
  REQUIRE(f.spool->receiveHeld() == 4 * piece);
  finish(a);
  finish(b);
  REQUIRE(f.spool->receiveHeld() == 0);  // finished: nothing is held as being received
  REQUIRE(a->data()->bytes() == std::string(4 * piece, 'a'));
  REQUIRE(b->data()->bytes() == std::string(3 * piece, 'b'));
  REQUIRE(countFiles(f.p("tmp")) == 1);  // only the streamed one has a file before its commit
  // Either way the commit stores the exact bytes, and a restart finds them.
  std::vector<std::string> ids;
  for (auto* m : {&a, &b}) {
    bool done = false, ok = false;
    (*m)->commit(makeEnv(), [&](bool k, std::string) { done = true, ok = k; });
    REQUIRE(f.loop.runUntil([&] { return done; }, 10000));
    REQUIRE(ok);
    ids.push_back((*m)->id());
  }
  a.reset(), b.reset(), c.reset();  // they hold the spool, and so its lock
  RecoveryReport r;
  REQUIRE(f.recover(r).size() == 2);
  REQUIRE(f.bytesOf(ids[0]) == std::string(4 * piece, 'a'));
  REQUIRE(f.bytesOf(ids[1]) == std::string(3 * piece, 'b'));
}

TEST_CASE("spool: a message past the read limit streams even with the budget free") {
  Fixture f;
  auto m = f.spool->create();
  const size_t piece = 64 << 10;
  for (size_t sent = 0; sent <= MessageData::kReadLimit; sent += piece) m->append(std::string(piece, 'x'));
  REQUIRE(f.spool->receiveHeld() == 0);  // all of it went to (or is on its way to) disk
  REQUIRE(f.loop.runUntil([&] { return countFiles(f.p("tmp")) == 1; }, 10000));
  m->abort();
  REQUIRE(f.loop.runUntil([&] { return countFiles(f.p("tmp")) == 0; }, 10000));
}

TEST_CASE("spool: an aborted or dropped message leaves no file") {
  Fixture f;
  {
    // Larger than what is held in memory: it is on disk in tmp/ once finished.
    auto m = f.spool->create();
    m->append(std::string(MessageData::kReadLimit + 1, 'a'));
    bool done = false;
    m->finish([&](bool, std::string) { done = true; });
    REQUIRE(f.loop.runUntil([&] { return done; }, 10000));
    REQUIRE(countFiles(f.p("tmp")) == 1);
  }  // dropped without commit
  REQUIRE(f.loop.runUntil([&] { return countFiles(f.p("tmp")) == 0; }, 10000));
  {
    // A small message stays in memory until its commit: finished, but nothing on disk yet.
    auto m = f.spool->create();
    m->append("abc");
    bool done = false, ok = false;
    m->finish([&](bool k, std::string) { done = true; ok = k; });
    REQUIRE(f.loop.runUntil([&] { return done; }, 10000));
    REQUIRE(ok);
    REQUIRE(m->data()->bytes() == "abc");
    REQUIRE(countFiles(f.p("tmp")) == 0);
  }
  REQUIRE(f.loop.runUntil([&] { return countFiles(f.p("tmp")) == 0; }, 10000));
  auto m = f.spool->create();
  m->append("abc");
  m->abort();  // while the write may still be in flight
  f.loop.runUntil([] { return false; }, 200);
  REQUIRE(countFiles(f.p("tmp")) == 0);
}

TEST_CASE("spool: a full disk is a clean, typed error (RLIMIT_FSIZE → EFBIG)") {
  Fixture f;
  struct rlimit old {};
  REQUIRE(::getrlimit(RLIMIT_FSIZE, &old) == 0);
  auto oldHandler = ::signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old;
  lim.rlim_cur = 256 << 10;
  REQUIRE(::setrlimit(RLIMIT_FSIZE, &lim) == 0);

  std::string chunk(64 << 10, 'x');
  // Streamed (no receive budget): the write during DATA fails.
  f.spool->setReceiveBudget(0);
  auto m = f.spool->create();
  for (int i = 0; i < 8; ++i) m->append(chunk);  // 512 KiB > limit
  bool done = false, ok = true;
  std::string error;
  m->finish([&](bool k, std::string e) { done = true, ok = k, error = e; });
  bool finished = f.loop.runUntil([&] { return done; }, 10000);
  // Held in memory: the commit's write fails, and nothing is acknowledged.
  f.spool->setReceiveBudget(Spool::kReceiveBudget);
  auto held = f.spool->create();
  for (int i = 0; i < 8; ++i) held->append(chunk);
  bool heldDone = false, heldOk = false, commitDone = false, commitOk = true;
  std::string commitError;
  held->finish([&](bool k, std::string) { heldDone = true, heldOk = k; });
  bool heldFinished = f.loop.runUntil([&] { return heldDone; }, 10000);
  if (heldOk) held->commit(makeEnv(), [&](bool k, std::string e) { commitDone = true, commitOk = k, commitError = e; });
  bool committed = f.loop.runUntil([&] { return commitDone; }, 10000);

  ::setrlimit(RLIMIT_FSIZE, &old);
  ::signal(SIGXFSZ, oldHandler);
  REQUIRE(finished);
  REQUIRE_FALSE(ok);
  REQUIRE(errorKind(error) == ErrorKind::NoSpace);
  REQUIRE(error.find("EFBIG") != std::string::npos);
  REQUIRE(heldFinished);
  REQUIRE(heldOk);
  REQUIRE(committed);
  REQUIRE_FALSE(commitOk);
  REQUIRE(errorKind(commitError) == ErrorKind::NoSpace);
  REQUIRE(countFiles(f.p("queue")) == 0);
  REQUIRE(errorKind(errnoError(ENOSPC, "x")) == ErrorKind::NoSpace);
  REQUIRE(errorKind(errnoError(EIO, "x")) == ErrorKind::Io);
  m->abort();
  REQUIRE(f.loop.runUntil([&] { return countFiles(f.p("tmp")) == 0; }, 10000));
  REQUIRE(f.spool->freeBytes() > 0);
}

TEST_CASE("spool: syncfs group commit makes every message durable and recoverable") {
  Fixture f;
  f.spool->setCommitMode(CommitMode::SyncFs);
  constexpr int kMessages = 40;
  int ok = 0, done = 0;
  std::vector<std::shared_ptr<IncomingMessage>> msgs;
  for (int i = 0; i < kMessages; ++i) {
    auto m = f.spool->create();
    m->append("Subject: " + std::to_string(i) + "\r\n\r\nbody\r\n");
    msgs.push_back(m);
    m->finish([&, m, i](bool finished, std::string) {
      REQUIRE(finished);
      Envelope env;
      env.mailFrom = "a@b.test";
      env.rcpts.emplace_back().address = "r" + std::to_string(i) + "@example.test";
      m->commit(env, [&](bool k, std::string) {
        ok += k;
        ++done;
      });
    });
  }
  REQUIRE(f.loop.runUntil([&] { return done == kMessages; }, 20000));
  REQUIRE(ok == kMessages);
  REQUIRE(countFiles(f.p("tmp")) == 0);
  RecoveryReport report;
  auto envs = f.spool->recover(report);
  REQUIRE(envs.size() == static_cast<size_t>(kMessages));
  REQUIRE(report.movedCorrupt == 0);
  std::string error;
  auto data = f.spool->openData(envs.front().id, error);
  REQUIRE(data);
  REQUIRE(data->bytes().find("body") != std::string_view::npos);
}

namespace {
uint64_t inodeOf(const std::string& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_ino;
}
}  // namespace

TEST_CASE("spool: a delivered message's file becomes a spare, reused only after queue/ is synced") {
  Fixture f;
  std::string big(20000, 'b'), small = "Subject: s\r\n\r\nsmall\r\n";
  std::string a = f.commit("Subject: a\r\n\r\n" + big + "\r\n");
  uint64_t inodeA = inodeOf(f.p("queue/" + a));
  REQUIRE(f.waitOp([&](Spool::Done cb) { f.spool->remove(a, cb, Area::Active); }));
  REQUIRE(countFiles(f.p("queue")) == 0);
  REQUIRE(countFiles(f.p("spare")) == 1);
  // Renamed, but queue/ has not been synced since: a crash could bring queue/<a> back.
  REQUIRE(f.spool->spareCount() == 0);
  std::string b = f.commit(small);  // its round syncs queue/
  REQUIRE(inodeOf(f.p("queue/" + b)) != inodeA);
  REQUIRE(f.spool->spareCount() == 1);

  // The next message is written over A's file and cut to its own length: no stale byte.
  std::string c = f.commit(small);
  REQUIRE(inodeOf(f.p("queue/" + c)) == inodeA);
  REQUIRE(f.spool->spareCount() == 0);
  REQUIRE(countFiles(f.p("spare")) == 0);
  std::string file = readAll(f.p("queue/" + c));
  REQUIRE(file == paddedMessageFile(small, envelopeOf(f.p("queue/" + c))));
  REQUIRE(file.size() == 4096);

  RecoveryReport r;
  auto envs = f.recover(r);
  REQUIRE(envs.size() == 2);
  REQUIRE(r.movedCorrupt == 0);
  for (auto& id : {b, c}) REQUIRE(f.bytesOf(id) == small);
}

TEST_CASE("spool: a removal made while a commit round runs goes along with the next round") {
  Fixture f;
  std::string body = "Subject: r\r\n\r\nremoved\r\n";
  std::string a = f.commit(body), b0 = f.commit(body);
  auto b = f.finished("Subject: b\r\n\r\nb\r\n"), c = f.finished("Subject: c\r\n\r\nc\r\n");
  int committed = 0, removed = 0;
  auto count = [](int& n) { return [&n](bool ok, std::string) { n += ok; }; };
  uint64_t roundsBefore = f.spool->removalRounds();
  b->commit(makeEnv(), count(committed));            // a round starts
  f.spool->remove(a, count(removed), Area::Active);  // waits for the next round...
  c->commit(makeEnv(), count(committed));            // ...which starts here and takes it along
  REQUIRE(f.loop.runUntil([&] { return committed == 2 && removed == 1; }, 10000));
  REQUIRE(f.spool->removalRounds() == roundsBefore);
  REQUIRE_FALSE(fs::exists(f.p("queue/" + a)));
  REQUIRE(f.spool->spareCount() == 1);  // that round synced queue/ after the rename
  // With no commit to go along with, the removal gets a round of its own once the
  // running one ends.
  auto d = f.finished("Subject: d\r\n\r\nd\r\n");
  d->commit(makeEnv(), count(committed));
  f.spool->remove(b0, count(removed), Area::Active);
  REQUIRE(f.loop.runUntil([&] { return committed == 3 && removed == 2; }, 10000));
  REQUIRE(f.spool->removalRounds() == roundsBefore + 1);
  REQUIRE_FALSE(fs::exists(f.p("queue/" + b0)));
  b.reset(), c.reset(), d.reset();  // they hold the spool, and so its lock
  RecoveryReport r;
  auto envs = f.recover(r);
  REQUIRE(envs.size() == 3);  // b, c and d
  REQUIRE(r.movedCorrupt == 0);
}

TEST_CASE("spool: a streamed message over a larger spare reads and stores only its own bytes") {
  Fixture f;
  std::string first = "Subject: 1\r\n\r\n" + std::string(200000, 'x') + "\r\n";
  std::string second = "Subject: 2\r\n\r\n" + std::string(100000, 'y') + "\r\n";  // over 64 KiB
  f.leaveSpare(first);
  f.spool->setReceiveBudget(0);  // no memory to hold it in: streamed
  REQUIRE(f.spool->spareCount() == 1);
  std::string b = f.commit(second);  // commit() checks data() == the body before committing
  REQUIRE(f.spool->spareCount() == 0);
  std::string file = readAll(f.p("queue/" + b));
  REQUIRE(file == paddedMessageFile(second, envelopeOf(f.p("queue/" + b))));
  RecoveryReport r;
  REQUIRE(f.recover(r).size() == 2);
  REQUIRE(f.bytesOf(b) == second);
}

TEST_CASE("spool: a message takes a spare only when it needs a file, a used one is never returned") {
  Fixture f;
  f.leaveSpare("Subject: a\r\n\r\na\r\n");
  REQUIRE(f.spool->spareCount() == 1);
  {
    auto m = f.spool->create();
    m->append("abc");  // held in memory until a commit that never comes
    bool done = false;
    m->finish([&](bool, std::string) { done = true; });
    REQUIRE(f.loop.runUntil([&] { return done; }, 10000));
    REQUIRE(f.spool->spareCount() == 1);
  }  // dropped: no file was ever needed
  REQUIRE(f.spool->spareCount() == 1);
  {
    auto m = f.spool->create();
    m->append(std::string(MessageData::kReadLimit + 1, 'a'));  // streamed: written to the spare
    bool done = false;
    m->finish([&](bool, std::string) { done = true; });
    REQUIRE(f.loop.runUntil([&] { return done; }, 10000));
    REQUIRE(f.spool->spareCount() == 0);
  }  // dropped after writing: a pool job may still hold it, so it is unlinked instead
  REQUIRE(f.loop.runUntil([&] { return countFiles(f.p("spare")) == 0; }, 10000));
  REQUIRE(f.spool->spareCount() == 0);
}

TEST_CASE("spool: a message in memory takes a spare of its own size and is written over it in place") {
  Fixture f;
  std::string small = "Subject: s\r\n\r\nsmall\r\n";  // one 4 KB block with its envelope
  std::string big = "Subject: b\r\n\r\n" + std::string(9000, 'b') + "\r\n";  // three blocks
  std::vector<std::string> first = {f.commit(big), f.commit(small)};
  for (const auto& id : first) REQUIRE(f.waitOp([&](Spool::Done cb) { f.spool->remove(id, cb, Area::Active); }));
  f.commit("Subject: t\r\n\r\nt\r\n");  // a new file (no spare is ready yet); its round syncs queue/
  REQUIRE(f.spool->spareCount() == 2);
  uint64_t before = f.spool->inPlaceCommits();
  std::string id = f.commit(big);
  REQUIRE(f.spool->spareCount() == 1);
  // The 3-block spare went to the 3-block message; the 1-block one is left.
  auto left = fs::directory_iterator(f.p("spare"))->path();
  REQUIRE(fs::file_size(left) == 4096);
  // With no spare of its size, a message takes the nearest larger one and cuts it.
  std::string mid = "Subject: m\r\n\r\n" + std::string(5000, 'm') + "\r\n";  // two blocks
  std::string bigId = f.commit(big + "x");  // no 3-block spare left: takes the 1-block one and grows it
  REQUIRE(f.spool->spareCount() == 0);
  REQUIRE(f.waitOp([&](Spool::Done cb) { f.spool->remove(bigId, cb, Area::Active); }));
  f.commit("Subject: t\r\n\r\nt\r\n");  // a new file; its round syncs queue/
  REQUIRE(f.spool->spareCount() == 1);  // the 3-block one
  std::string midId = f.commit(mid);
  REQUIRE(f.spool->spareCount() == 0);
  REQUIRE(fs::file_size(f.p("queue/" + midId)) == 8192);
  REQUIRE(readAll(f.p("queue/" + midId)) == paddedMessageFile(mid, envelopeOf(f.p("queue/" + midId))));
  REQUIRE(readAll(f.p("queue/" + id)) == paddedMessageFile(big, envelopeOf(f.p("queue/" + id))));
  // On ext4 it shares its round's flush instead of an fdatasync of its own.
  if (f.spool->sharesOverwriteFlush())
    REQUIRE(f.spool->inPlaceCommits() == before + 1);
  else
    WARN("the test directory's file system is not ext4: every message gets its own fdatasync");
  RecoveryReport r;
  auto envs = f.recover(r);
  REQUIRE(r.movedCorrupt == 0);
  REQUIRE(f.bytesOf(id) == big);
}

TEST_CASE("spool: recovery never reuses a spare that shares its inode with a message") {
  Fixture f;
  std::string body = "Subject: k\r\n\r\nkeep me\r\n";
  std::string id = f.commit(body);
  // A crash after a commit's rename reached queue/ but not spare/: both names remain.
  REQUIRE(::link(f.p("queue/" + id).c_str(), f.p("spare/AAAA00000000000S").c_str()) == 0);
  // An ordinary spare is kept; an oversized one and a badly named one are not.
  writeAll(f.p("spare/AAAA00000000000T"), std::string(5000, 'z'));
  writeAll(f.p("spare/AAAA00000000000U"), std::string(Spool::kMaxSpareSize + 1, 'z'));
  writeAll(f.p("spare/not.an.id"), "z");
  RecoveryReport r;
  auto envs = f.recover(r);
  REQUIRE(envs.size() == 1);
  REQUIRE(r.movedCorrupt == 0);
  REQUIRE(f.spool->spareCount() == 1);
  REQUIRE(fs::exists(f.p("spare/AAAA00000000000T")));
  REQUIRE(countFiles(f.p("spare")) == 1);
  // The next messages use the good spare, then new files; the recovered one is untouched.
  std::string n1 = f.commit("Subject: n\r\n\r\n1\r\n");
  std::string n2 = f.commit("Subject: n\r\n\r\n2\r\n");
  REQUIRE(f.spool->spareCount() == 0);
  REQUIRE(f.bytesOf(id) == body);
  REQUIRE(f.recover(r).size() == 3);
}
