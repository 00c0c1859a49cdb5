// queue/spool.h — the durable, crash-atomic message store (DESIGN.md decision 4). Storage
// only: when to try what is the Scheduler's business (decision 5).
//
// On-disk layout under the spool directory:
//   tmp/<id>.data        a message being received when no spare was free (half-written)
//   tmp/<id>.<gen>.env   an envelope being rewritten, before its rename
//   queue/<id>           an active message   } the presence of the id in one of these is
//   hold/<id>            a held message      } the commit point; its area is where it sits
//   quarantine/<id>      a quarantined one   }
//   data/<id>            the bytes of a message whose envelope was rewritten since commit
//   spare/<name>         a removed message's file kept for reuse (SPARE FILES below); a
//                        message being received is written over one before its commit
//   corrupt/             damaged files moved aside at start-up, for an admin to look at
//
// A MESSAGE FILE is the message bytes, then its envelope record, then zeros up to a whole
// number of 4 KB blocks, then a 32-byte trailer ("\nMOAT-ENVELOPE " + the envelope's length
// in 7 hex digits + " pad " + the padding's length in 4 hex digits + "\n"). Files written
// before the padding end in "\nMOAT-ENVELOPE " + 16 hex digits + "\n" and read the same.
// A message costs one file, one fdatasync (or a share of one, below), one rename and, once
// delivered, one rename to spare/: the file system work per message was most of Moat's
// CPU per relayed message.
//
// Receiving (IncomingMessage): a message of up to 1 MB (MessageData::kReadLimit) stays in
// memory while the spool's receive budget (kReceiveBudget, all sessions together) allows,
// and its commit writes it whole; any other streams to its file in 64 KB pieces as it
// arrives and is read back once at the end of DATA for the filters.
//
// Commit (IncomingMessage::commit): append the envelope, padding and trailer to the
// message's file (a spare, else tmp/<id>.data), fdatasync, rename it into its area, fsync
// the area directory. Only after the directory fsync does the callback run (the server's
// 250). With GROUP COMMIT (CommitMode below) one round on the thread pool does this for
// every message that finished while the previous round ran, sharing the directory syncs;
// removals made meanwhile go along, before the syncs.
//
// Envelope rewrites (update/move) write a new envelope-only file with a higher generation
// to tmp/, fsync, rename over the old one (or into the new area, then unlink the old
// area's copy). Before the first rewrite replaces a message file, its bytes get a second
// name, data/<id> (a hard link, with data/ fsynced): from then on readers take the bytes
// from data/<id>, whose trailing old envelope is ignored. Operations on one id run one at
// a time, in order. Remove renames a queue/ file to spare/ (or unlinks it), then unlinks
// data/<id> if there is one.
//
// Recovery (start-up, before the loop serves): tmp/ is emptied (nothing there was
// acknowledged) and spare/ checked (SPARE FILES); each area file's envelope (the tail of a message file, or an
// envelope-only file) is parsed (checksum, version) and the message bytes (data/<id> if
// it exists, else the message file) checked against the recorded size; a broken one is
// moved with its data to corrupt/; an id in two areas (crash during a move) keeps the
// higher generation; data/ files with no envelope (crash during a remove) are deleted.
// Spools written before message files (data/<id> + envelope-only area files) recover the
// same way. A message whose commit callback ran always has a valid envelope and data, so
// recovery never deletes it.
//
// SPARE FILES. Removing a delivered message renames its file to spare/ instead of
// unlinking it, and a new message is written over a spare (then truncated to its length)
// before its commit renames it into its area. A message takes its spare when it first
// needs a file: at its commit if it stayed in memory (then one of its exact padded size
// when there is one), else at its first write. On a disk mounted with discard, an unlink
// waits for the freed blocks' discard, and a new inode costs an inode-table search; an
// overwrite costs neither. Only files leaving queue/ become spares, and a spare is reused
// only after a sync of queue/ that followed its rename (a commit round that started after
// it, or the one that did the rename before its syncs) has completed, so no stale
// name of a reused file survives a crash (spare/ itself needs no sync: a rename lost
// there leaves the delivered message's file in queue/ or orphaned). A spare name that a
// crash left beside a committed message (the same inode, seen by d_ino) is unlinked at
// recovery, never reused. Spares are bounded (kMaxSpares files, kMaxSpareBytes in all,
// none over kMaxSpareSize); the rest are unlinked.
//
// Untrusted input: message bytes (stored verbatim), envelope fields (escaped by the
// envelope format) and, at recovery, every file in the spool. Logs: spool_corrupt,
// spool_removed_partial, spool_error (warn/error level, with queue_id); recover()'s report
// is the caller's to log (the daemon's spool_recovered).
#pragma once
#include <sys/types.h>
#include <uv.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "queue/envelope.h"

namespace moat::queue {

// Typed spool errors. The callbacks carry a string whose prefix names the kind, so a
// caller can map it without parsing the rest: NoSpace (ENOSPC, EDQUOT, EFBIG) → 452 4.3.1.
enum class ErrorKind { None, NoSpace, Io, Corrupt, NotFound };
ErrorKind errorKind(std::string_view error);
// "disk full (ENOSPC): write tmp/ABC.data" and the like.
std::string errnoError(int err, std::string_view what);
// mkdir -p that makes each folder it makes durable (the folder its entry is in is fsynced
// before the next step), so a file later synced in it cannot be lost with the folder in a
// power cut. `mode` for `path` itself, `parentMode` for missing parents (less the umask).
// "" or an errnoError naming the folder. Blocking: start-up and pool threads only.
std::string makeDirsDurably(const std::string& path, mode_t mode, mode_t parentMode);

// A read-only view of a spooled message's bytes (mmap). Thread-safe to read; the mapping
// outlives a rename or an unlink of the file.
class MessageData {
 public:
  // The message bytes of a spool file: all of it, or what precedes its envelope. With
  // `messageFile`, a file without an envelope is an error (it is an envelope-only file).
  // With `length`, the first `length` bytes, whatever follows them.
  static std::shared_ptr<const MessageData> map(const std::string& path, std::string& error, bool messageFile = false,
                                                std::optional<uint64_t> length = std::nullopt);
  // A message still held in memory (small messages are written by the commit itself).
  static std::shared_ptr<const MessageData> fromMemory(std::string bytes);
  // Shares the bytes, not a copy (a message held whole while it was received).
  static std::shared_ptr<const MessageData> fromMemory(std::shared_ptr<const std::string> bytes);
  ~MessageData();
  MessageData(const MessageData&) = delete;
  MessageData& operator=(const MessageData&) = delete;
  std::string_view bytes() const {
    if (addr_) return {static_cast<const char*>(addr_), size_};
    return read_ ? std::string_view(read_.get(), size_) : std::string_view(*memory_);
  }
  uint64_t size() const { return size_; }
  // Up to this size a message is read into memory rather than mapped: a mapping costs a
  // page fault per 4 KB touched and, at munmap in a threaded process, a TLB shootdown on
  // the other cores, more than copying the bytes (measured with 256 KB messages).
  static constexpr size_t kReadLimit = 1024 * 1024;

 private:
  MessageData() = default;
  void* addr_ = nullptr;
  size_t size_ = 0;
  std::shared_ptr<const std::string> memory_;  // fromMemory
  std::unique_ptr<char[]> read_;               // read from the file: not zeroed first, pread fills it
};

struct RecoveryReport {
  size_t recovered = 0, removedPartial = 0, movedCorrupt = 0;
  std::vector<std::string> notes;
};

class IncomingMessage;
struct SpoolFile;  // spool.cc: a temp file (or a reused spare) shared between the loop and pool work
struct CommitJob;  // spool.cc: one message on its way into the queue
struct SpoolDirs;  // spool.cc: the spool's directories, held open
struct RemovalBatch;  // spool.cc: removals done by one trip to the pool

// How commits reach the disk (spool_bench compares them):
//  PerMessage  each message writes, fsyncs and renames its file and fsyncs its area
//              directory on its own, one pool trip per message.
//  Group       GROUP COMMIT (default): one pool trip per batch of the messages that
//              finished while the previous round ran. The round writes every file,
//              starts writeback for all of them at once (sync_file_range), fdatasyncs
//              each, renames them into place and fsyncs each area directory once. On ext4
//              a file written over a spare of its own size waits for its writeback only
//              and shares the flush of the directory sync (nothing but its data changed).
//  SyncFs      like Group, but one syncfs(2) makes the batch's files durable and a
//              second one their names: two flushes per batch. syncfs also flushes
//              whatever else is dirty on that file system, so it suits a spool on its own
//              file system ([server] spool_sync = "syncfs").
enum class CommitMode { PerMessage, Group, SyncFs };

class Spool : public std::enable_shared_from_this<Spool> {
 public:
  using Done = std::function<void(bool ok, std::string error)>;

  // Creates the layout under dir. Returns null + error.
  static std::shared_ptr<Spool> open(uv_loop_t* loop, const std::string& dir, std::string& error);
  ~Spool();

  // Start-up: see the header comment. Blocking (runs before the loop serves mail).
  std::vector<Envelope> recover(RecoveryReport& report);
  // A new message being received (loop thread).
  std::shared_ptr<IncomingMessage> create();
  std::shared_ptr<const MessageData> openData(const std::string& id, std::string& error) const;

  // Durable state changes, done on the thread pool, cb on the loop thread.
  void update(const Envelope& env, Done cb);
  // `area`, when the caller knows it, saves looking in the other areas. Removals of ids with
  // nothing else pending are batched: one pool trip per round, like the directory syncs.
  void remove(const std::string& id, Done cb, std::optional<Area> area = std::nullopt);
  void move(const Envelope& env, Area to, Done cb);

  uint64_t freeBytes() const;
  std::string newId();

  // Group commit is on by default; off = CommitMode::PerMessage.
  void setGroupCommit(bool on) { commitMode_ = on ? CommitMode::Group : CommitMode::PerMessage; }
  void setCommitMode(CommitMode m) { commitMode_ = m; }
  CommitMode commitMode() const { return commitMode_; }
  // Number of directory-sync rounds so far (tests check that batching happened).
  uint64_t dirSyncRounds() const { return dirSyncRounds_; }
  // Pool trips made for removals alone (the others went along with a commit round).
  uint64_t removalRounds() const { return removalRounds_; }
  // Whether a message written over a spare of its own size shares its round's flush
  // (ext4; see startSyncRound), and how many did so far.
  bool sharesOverwriteFlush() const { return overwriteFlush_; }
  uint64_t inPlaceCommits() const { return inPlaceCommits_; }

  // Spare files ready for reuse (tests and metrics).
  size_t spareCount() const { return spareCount_; }
  static constexpr size_t kMaxSpares = 1024;
  static constexpr uint64_t kMaxSpareBytes = 64ull << 20;
  static constexpr uint64_t kMaxSpareSize = 1 << 20;

  // Bytes that messages being received keep in memory, all sessions together, rather than
  // streaming them to tmp/ as they arrive. A message of up to MessageData::kReadLimit held
  // whole is written once, by its commit (over a spare of its size), and never read back:
  // with 256 KB messages that halved the disk writes and saved the read. Past the budget a
  // message streams in kWriteBatch pieces as before, so memory stays bounded however many
  // sessions send large messages at once. Loop thread.
  static constexpr size_t kReceiveBudget = 64 << 20;
  void setReceiveBudget(size_t bytes) { receiveBudget_ = bytes; }
  size_t receiveHeld() const { return receiveHeld_; }

  const std::string& dir() const { return dir_; }
  uv_loop_t* loop() const { return loop_; }
  std::string path(std::string_view sub, std::string_view name) const;

 private:
  friend class IncomingMessage;
  friend struct RemovalBatch;
  Spool(uv_loop_t* loop, std::string dir);
  void startCommit(std::shared_ptr<CommitJob> job);
  void startSyncRound();
  void startRemovalRound();
  void removalsDone(RemovalBatch& batch, uint64_t spareRound);
  void commitDone(CommitJob& job);
  uint64_t nextGeneration(const std::string& id);
  // Runs `op` (pool work returning an error string) after earlier ops on the same id.
  void serialize(const std::string& id, std::function<std::string()> work, Done cb);
  void runNext(const std::string& id);
  void recoverArea(Area area, std::map<std::string, Envelope>& found, std::set<std::string>& corruptIds,
                   RecoveryReport& report);
  void moveToCorrupt(const std::string& from, const std::string& name, const std::string& why, RecoveryReport& report);
  void recoverSpares(const std::set<uint64_t>& liveInodes);
  struct Spare {
    std::string path;
    uint64_t size = 0;  // its length now: a message written over it truncates what is left
  };
  // One of `size` bytes if there is one, else the smallest larger one, else the largest.
  std::optional<Spare> takeSpare(std::optional<uint64_t> size);
  void returnSpare(Spare s);
  void promoteSpares();

  uv_loop_t* loop_;
  std::string dir_;
  std::shared_ptr<const SpoolDirs> dirs_;
  CommitMode commitMode_ = CommitMode::Group;
  // Rounds in flight at once: with one, a message finishing just after a round started
  // waits for it and then its own (two disk flushes of latency); a second round takes it
  // at once, and batches still form under load.
  static constexpr int kMaxRounds = 2;
  int roundsRunning_ = 0;
  std::vector<std::shared_ptr<CommitJob>> pendingSync_;
  uint64_t dirSyncRounds_ = 0;
  bool overwriteFlush_ = false;
  uint64_t inPlaceCommits_ = 0;
  std::map<std::string, uint64_t> generations_;
  struct Op {
    std::function<std::string()> work;
    Done cb;
  };
  std::map<std::string, std::deque<Op>> ops_;
  struct Removal {
    std::string id;
    std::vector<std::string> envs;
    std::string data;  // data/<id>, when the message may have one
    size_t first;
    std::string spare;  // where to keep its file for reuse; empty: unlink it
    Done cb;
  };
  std::vector<Removal> pendingRemovals_;
  std::map<uint64_t, std::vector<std::string>> spares_;  // paths by file size
  size_t receiveBudget_ = kReceiveBudget, receiveHeld_ = 0;
  size_t spareCount_ = 0;
  uint64_t spareBytes_ = 0;
  size_t sparesPromised_ = 0;  // removals in flight that may add a spare
  struct WaitingSpare {
    Spare spare;
    uint64_t needRound;  // the first commit round whose sync of queue/ makes it reusable
  };
  std::vector<WaitingSpare> sparesWaiting_;
  uint64_t roundsStarted_ = 0;
  uint64_t queueSyncedBy_ = 0;  // the latest-started round that synced queue/
  // Ids that may have a data/<id> file (rewritten since commit): the others' removal
  // skips that unlink.
  std::set<std::string> withData_;
  std::set<std::string> removing_;
  bool removalRunning_ = false;
  uint64_t removalRounds_ = 0;
  std::mutex idMutex_;
  uint64_t idCounter_ = 0;
  uint64_t idSalt_ = 0;
  int64_t lastIdMs_ = 0;
};

class IncomingMessage : public std::enable_shared_from_this<IncomingMessage> {
 public:
  using Done = Spool::Done;
  static constexpr size_t kHighWater = 1 << 20;  // bytes buffered or in flight
  static constexpr size_t kLowWater = 256 << 10;

  IncomingMessage(std::shared_ptr<Spool> spool, std::string id);
  ~IncomingMessage();
  IncomingMessage(const IncomingMessage&) = delete;
  IncomingMessage& operator=(const IncomingMessage&) = delete;

  const std::string& id() const { return id_; }
  // Loop thread. Appends message bytes (CRLF) for a write on the pool; never blocks.
  void append(std::string_view data);
  bool overHighWater() const { return buffered() > kHighWater; }
  size_t bufferedBytes() const { return buffered(); }
  void setOnDrain(std::function<void()> fn) { onDrain_ = std::move(fn); }
  // All data appended: flush (no fsync yet). After ok, data() gives a view for the filters.
  void finish(Done cb);
  std::shared_ptr<const MessageData> data() const { return data_; }
  uint64_t size() const { return size_; }
  // Durable + queued (see Spool). env.id and env.size are set from this message.
  void commit(Envelope env, Done cb);
  // Drops the temp file (rejected message, client gone). Also done by the destructor.
  void abort();

 private:
  size_t buffered() const { return pending_.size() + inFlight_; }
  void touchFile(std::optional<uint64_t> size);
  void pump();
  void writeDone(size_t n, int err);
  void maybeFinish();
  // Counts pending_ against the spool's receive budget; false (and nothing held) if over it.
  bool hold();
  void release();

  std::shared_ptr<Spool> spool_;
  std::string id_;
  std::shared_ptr<SpoolFile> file_;
  std::string pending_;
  size_t inFlight_ = 0;
  uint64_t written_ = 0, size_ = 0;
  int error_ = 0;
  bool overSignalled_ = false, finishing_ = false, finished_ = false, committed_ = false, aborted_ = false;
  std::function<void()> onDrain_;
  Done finishCb_;
  std::shared_ptr<const MessageData> data_;
  // Small-message fast path: the whole message stayed in memory (nothing written yet);
  // the commit job writes and fsyncs it in the same trip to the pool as the envelope.
  std::shared_ptr<const std::string> memory_;
  bool fileTouched_ = false;  // some pool job may have created the temp file
  size_t held_ = 0;           // of the spool's receive budget
  // Writes wait until this much is buffered (or the message ends), so a small message
  // costs no separate write.
  static constexpr size_t kWriteBatch = 64 * 1024;
};

}  // namespace moat::queue
