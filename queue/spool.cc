// queue/spool.cc — the crash-atomic spool described in spool.h. Every blocking file system
// call runs on the libuv thread pool, except recover() (start-up) and openData() (one
// open+mmap). Untrusted input: message bytes and every file found at recovery. Logs:
// spool_corrupt, spool_removed_partial, spool_error (the caller logs the recovery report as
// spool_recovered).
#include "queue/spool.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "mta/runtime/durable_file.h"
#include "mta/runtime/fd.h"
#include "mta/runtime/log.h"
#include "mta/runtime/uv.h"

namespace moat::queue {
namespace log = moat::mta::log;
namespace {

constexpr Area kAreas[] = {Area::Active, Area::Hold, Area::Quarantine};

int64_t nowMs() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

bool validId(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'))) return false;
  return true;
}

// A failed file step worded as the spool's errors are (errnoError: a prefix per kind).
std::string spoolError(const mta::FileError& e) { return e ? errnoError(e.code, e.what) : std::string(); }

// Blocking helpers: pool threads and recovery only.
std::string syncDir(const std::string& path) { return spoolError(mta::syncDirectory(path)); }

}  // namespace

// The spool's directories, open for as long as the spool: a sync round fsyncs them
// without an open and a close each time. Read-only once built, shared with pool work.
struct SpoolDirs {
  std::string root;
  std::map<std::string, int> fds;  // its subdirectories (never empty)
  int lockFd = -1;                 // `lock`, flock(2)ed while this spool is open
  SpoolDirs() = default;
  SpoolDirs(const SpoolDirs&) = delete;
  SpoolDirs& operator=(const SpoolDirs&) = delete;
  ~SpoolDirs() {
    for (auto& [path, fd] : fds) ::close(fd);
    if (lockFd >= 0) ::close(lockFd);
  }
  std::string sync(const std::string& path) const {
    auto it = fds.find(path);
    if (it == fds.end()) return syncDir(path);
    return ::fsync(it->second) == 0 ? std::string() : errnoError(errno, "fsync " + path);
  }
  // syncfs(2) of the file system holding the spool: every dirty page and inode on it.
  std::string syncFilesystem() const {
    return ::syncfs(fds.begin()->second) == 0 ? std::string() : errnoError(errno, "syncfs " + root);
  }
};

namespace {

int writeAll(int fd, std::string_view data, uint64_t offset) {
  while (!data.empty()) {
    ssize_t n = ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    data.remove_prefix(static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
  }
  return 0;
}

// Two pieces one after the other from `offset`, in one pwritev when it writes them whole.
int writeAll2(int fd, std::string_view a, std::string_view b, uint64_t offset) {
  iovec iov[2] = {{const_cast<char*>(a.data()), a.size()}, {const_cast<char*>(b.data()), b.size()}};
  ssize_t n;
  do n = ::pwritev(fd, iov, 2, static_cast<off_t>(offset));
  while (n < 0 && errno == EINTR);
  if (n < 0) return errno;
  auto done = static_cast<size_t>(n);
  if (done >= a.size()) return writeAll(fd, b.substr(done - a.size()), offset + done);
  if (int err = writeAll(fd, a.substr(done), offset + done)) return err;
  return writeAll(fd, b, offset + a.size());
}

// Whether, on the file system holding `dir`, a file written over in place (same size, every
// block already written) is as durable after its data is written back and the device is
// flushed once as after its own fdatasync: nothing but the data changes, so fdatasync would
// write the data and flush, no more. True for ext4 (which also drives ext2 and ext3) unless
// mounted data=journal or dax, where data takes other paths; false for anything else
// (btrfs and ZFS copy on write, so an overwrite changes metadata) or when unsure.
bool overwriteNeedsOnlyFlush(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return false;
  std::string dev = std::to_string(major(st.st_dev)) + ":" + std::to_string(minor(st.st_dev));
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mountinfo, line)) {
    // id parent major:minor root mountpoint options [optional fields] - fstype source superoptions
    std::istringstream in(line);
    std::string id, parent, majmin;
    if (!(in >> id >> parent >> majmin) || majmin != dev) continue;
    size_t sep = line.find(" - ");
    if (sep == std::string::npos) return false;
    std::istringstream tail(line.substr(sep + 3));
    std::string type, source, options;
    tail >> type >> source >> options;
    return type == "ext4" && options.find("data=journal") == std::string::npos &&
           options.find("dax") == std::string::npos;
  }
  return false;
}

std::string renameFile(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) return errnoError(errno, "rename " + from + " " + to);
  return {};
}

// Names in a directory, and with `inodes` their inode numbers (d_ino: no stat needed).
std::vector<std::string> listDir(const std::string& path, std::set<uint64_t>* inodes = nullptr) {
  std::vector<std::string> names;
  DIR* d = ::opendir(path.c_str());
  if (!d) return names;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    if (inodes) inodes->insert(static_cast<uint64_t>(e->d_ino));
    names.push_back(std::move(n));
  }
  ::closedir(d);
  return names;
}

// A message file ends with its envelope and a 32-byte trailer (see spool.h), either
//   "\nMOAT-ENVELOPE " + the envelope's length in 16 hex digits + "\n", or (padded)
//   "\nMOAT-ENVELOPE " + 7 hex digits + " pad " + 4 hex digits + "\n",
// where the second has that many padding bytes between the envelope and the trailer. A
// message ends in CRLF or is a BDAT body, and a data file written before this layout has
// no trailer: a file whose tail does not parse is data only.
constexpr size_t kTrailerSize = 32;
constexpr std::string_view kTrailerTag = "\nMOAT-ENVELOPE ";
// Message files are padded to whole blocks, so one written over a spare of the same
// block count keeps its size and fdatasync has no inode to write.
constexpr uint64_t kFileBlock = 4096;
constexpr uint64_t kMaxPaddedEnvelope = 0xfffffff;

std::string makeTrailer(size_t envLen, size_t pad) {
  char buf[kTrailerSize + 1];
  std::snprintf(buf, sizeof buf, "\nMOAT-ENVELOPE %07zx pad %04zx\n", envLen, pad);
  return std::string(buf, kTrailerSize);
}

// The envelope, the padding up to a whole block and the trailer: what follows the bytes.
uint64_t fileSize(uint64_t dataSize, uint64_t envLen) {
  uint64_t used = dataSize + envLen + kTrailerSize;
  return (used + kFileBlock - 1) / kFileBlock * kFileBlock;
}

std::string fileTail(const std::string& envText, uint64_t dataSize) {
  if (envText.size() > kMaxPaddedEnvelope) return {};  // cannot happen: envelopes are bounded
  uint64_t used = dataSize + envText.size() + kTrailerSize;
  size_t pad = static_cast<size_t>((kFileBlock - used % kFileBlock) % kFileBlock);
  std::string tail;
  tail.reserve(envText.size() + pad + kTrailerSize);
  tail += envText;
  tail.append(pad, '\0');
  tail += makeTrailer(envText.size(), pad);
  return tail;
}

bool parseHex(std::string_view digits, uint64_t& out) {
  out = 0;
  for (char c : digits) {
    int v = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (v < 0) return false;
    out = out * 16 + static_cast<uint64_t>(v);
  }
  return true;
}

struct FileLayout {
  uint64_t fileSize = 0;
  uint64_t dataLen = 0;  // the message bytes: the whole file, or what precedes the envelope
  uint64_t envLen = 0;   // 0: no envelope inside
  uint64_t padLen = 0;   // between the envelope and the trailer
};

// Reads the layout of an open spool file: one fstat, and a pread of its tail.
int probeLayout(int fd, FileLayout& out) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return errno;
  out = FileLayout{static_cast<uint64_t>(st.st_size), static_cast<uint64_t>(st.st_size), 0};
  if (out.fileSize < kTrailerSize) return 0;
  char tail[kTrailerSize];
  ssize_t n = ::pread(fd, tail, kTrailerSize, static_cast<off_t>(out.fileSize - kTrailerSize));
  if (n < 0) return errno;
  std::string_view t(tail, static_cast<size_t>(n));
  if (t.size() != kTrailerSize || !t.starts_with(kTrailerTag) || t.back() != '\n') return 0;
  std::string_view fields = t.substr(kTrailerTag.size(), 16);
  uint64_t len = 0, pad = 0;
  if (fields.substr(7, 5) == " pad ") {
    if (!parseHex(fields.substr(0, 7), len) || !parseHex(fields.substr(12, 4), pad)) return 0;
  } else if (!parseHex(fields, len)) {
    return 0;
  }
  if (len == 0 || len > out.fileSize - kTrailerSize || pad > out.fileSize - kTrailerSize - len) return 0;
  out.envLen = len;
  out.padLen = pad;
  out.dataLen = out.fileSize - kTrailerSize - len - pad;
  return 0;
}

bool preadAll(int fd, char* buf, size_t len, uint64_t offset, int& err) {
  size_t off = 0;
  while (off < len) {
    ssize_t n = ::pread(fd, buf + off, len - off, static_cast<off_t>(offset + off));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return err = n < 0 ? errno : EIO, false;
    off += static_cast<size_t>(n);
  }
  return true;
}

// A spool file opened for reading at recovery: only a regular file is one. Anything else
// under a message's name (a FIFO, a device, a symlink, a directory) is set aside as
// corrupt, never opened for real: a blocking open of a FIFO would wait for a writer, and
// the daemon would never get past recovery. None held, with `err` set, otherwise (kNotRegular for
// the wrong kind of file).
constexpr int kNotRegular = -1;

mta::UniqueFd openRegular(const std::string& path, int& err) {
  mta::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW));
  if (!fd.valid()) {
    err = errno == ELOOP ? kNotRegular : errno;
    return fd;
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    err = kNotRegular;
    fd.reset();
  }
  return fd;
}

std::string openError(int err, const std::string& what) {
  return err == kNotRegular ? "not a regular file: " + what : errnoError(err, what);
}

// An area file's envelope text: the tail of a message file, or the whole of an
// envelope-only file (written by update/move).
bool readEnvelopeFile(const std::string& path, std::string& out, int& err) {
  mta::UniqueFd fd = openRegular(path, err);
  if (!fd.valid()) return false;
  FileLayout l;
  bool ok = true;
  if ((err = probeLayout(fd.get(), l)) != 0) {
    ok = false;
  } else if (l.envLen == 0 && l.fileSize > (64u << 20)) {  // no sane envelope is this big
    err = EFBIG, ok = false;
  } else {
    uint64_t len = l.envLen ? l.envLen : l.fileSize;
    out.assign(len, '\0');
    ok = preadAll(fd.get(), out.data(), out.size(), l.envLen ? l.dataLen : 0, err);
  }
  return ok;
}

}  // namespace

// ---- errors ----------------------------------------------------------------------------

std::string errnoError(int err, std::string_view what) {
  std::string w(what);
  switch (err) {
    case ENOSPC:
      return "disk full (ENOSPC): " + w;
    case EDQUOT:
      return "disk full (quota exceeded, EDQUOT): " + w;
    case EFBIG:
      return "disk full (file size limit, EFBIG): " + w;
    case ENOENT:
      return "not found: " + w;
    default:
      return "I/O error (" + std::string(std::strerror(err)) + "): " + w;
  }
}

ErrorKind errorKind(std::string_view error) {
  if (error.empty()) return ErrorKind::None;
  if (error.starts_with("disk full")) return ErrorKind::NoSpace;
  if (error.starts_with("not found")) return ErrorKind::NotFound;
  if (error.starts_with("corrupt")) return ErrorKind::Corrupt;
  return ErrorKind::Io;
}

// ---- MessageData -----------------------------------------------------------------------

std::shared_ptr<const MessageData> MessageData::map(const std::string& path, std::string& error, bool messageFile,
                                                    std::optional<uint64_t> length) {
  mta::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return error = errnoError(errno, "open " + path), nullptr;
  FileLayout layout;
  if (length) {
    layout.dataLen = *length;
  } else if (int err = probeLayout(fd.get(), layout)) {
    error = errnoError(err, "stat " + path);
    return nullptr;
  }
  if (messageFile && layout.envLen == 0) {
    error = "not found: " + path + " holds an envelope only and data/ has no bytes for it";
    return nullptr;
  }
  std::shared_ptr<MessageData> m(new MessageData());
  m->size_ = static_cast<size_t>(layout.dataLen);
  if (m->size_ > 0 && m->size_ <= kReadLimit) {
    m->read_ = std::make_unique_for_overwrite<char[]>(m->size_);
    int err = 0;
    if (!preadAll(fd.get(), m->read_.get(), m->size_, 0, err)) {
      error = err == EIO ? "read " + path + ": file shrank" : errnoError(err, "read " + path);
      return nullptr;
    }
  } else if (m->size_ > 0) {
    void* a = ::mmap(nullptr, m->size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (a == MAP_FAILED) {
      error = errnoError(errno, "mmap " + path);
      return nullptr;
    }
    m->addr_ = a;
  }
  return m;
}

std::shared_ptr<const MessageData> MessageData::fromMemory(std::string bytes) {
  return fromMemory(std::make_shared<const std::string>(std::move(bytes)));
}

std::shared_ptr<const MessageData> MessageData::fromMemory(std::shared_ptr<const std::string> bytes) {
  std::shared_ptr<MessageData> m(new MessageData());
  m->size_ = bytes->size();
  m->memory_ = std::move(bytes);
  return m;
}

MessageData::~MessageData() {
  if (addr_) ::munmap(addr_, size_);
}

// ---- Spool -----------------------------------------------------------------------------

Spool::Spool(uv_loop_t* loop, std::string dir) : loop_(loop), dir_(std::move(dir)) {
  std::random_device rd;
  idSalt_ = (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

Spool::~Spool() = default;

namespace {
// One process per spool: a second daemon on the same directory would recover it, that is
// remove the first one's files in flight as half-written and reuse its spares. flock(2)
// is let go by the kernel when the holder exits, kill -9 included, so a crash leaves no
// stale lock; the file names the holder's PID for the error.
std::string lockSpool(const std::string& dir, int& fd) {
  std::string path = dir + "/lock";
  fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return errnoError(errno, "open " + path);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return errnoError(errno, "flock " + path);
    char buf[32] = {};
    ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    return "in use by another moat process" + (pid.empty() ? std::string() : " (PID " + pid + ")") +
           ": one daemon per spool directory";
  }
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size()))
    return errnoError(errno, "write " + path);
  return "";
}
}  // namespace

// A spool made at the first start (its subdirectories, and the spool itself under parents
// that did not exist) survives a power cut with the first messages in it.
std::string makeDirsDurably(const std::string& path, mode_t mode, mode_t parentMode) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) return S_ISDIR(st.st_mode) ? "" : "mkdir " + path + ": not a directory";
  if (errno != ENOENT) return errnoError(errno, "stat " + path);
  std::string parent = mta::parentDirectory(path);
  if (parent != path)
    if (std::string e = makeDirsDurably(parent, parentMode, parentMode); !e.empty()) return e;
  if (::mkdir(path.c_str(), mode) != 0) {
    if (errno == EEXIST) return "";
    return errnoError(errno, "mkdir " + path);
  }
  return syncDir(parent);
}

std::shared_ptr<Spool> Spool::open(uv_loop_t* loop, const std::string& dir, std::string& error) {
  for (const char* sub : {"", "/tmp", "/data", "/queue", "/hold", "/quarantine", "/spare", "/corrupt"}) {
    if (error = makeDirsDurably(dir + sub, 0700, 0755); !error.empty()) return nullptr;
  }
  if (::access((dir + "/tmp").c_str(), W_OK) != 0) {
    error = errnoError(errno, "access " + dir);
    return nullptr;
  }
  auto dirs = std::make_shared<SpoolDirs>();
  dirs->root = dir;
  if (error = lockSpool(dir, dirs->lockFd); !error.empty()) return nullptr;
  for (const char* sub : {"tmp", "data", "queue", "hold", "quarantine", "spare"}) {
    std::string p = dir + "/" + sub;
    int fd = ::open(p.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      error = errnoError(errno, "open " + p);
      return nullptr;
    }
    dirs->fds.emplace(p, fd);
  }
  std::shared_ptr<Spool> spool(new Spool(loop, dir));
  spool->dirs_ = std::move(dirs);
  spool->overwriteFlush_ = overwriteNeedsOnlyFlush(dir);
  return spool;
}

std::string Spool::path(std::string_view sub, std::string_view name) const {
  std::string p = dir_;
  p += '/';
  p += sub;
  if (!name.empty()) {
    p += '/';
    p += name;
  }
  return p;
}

std::string Spool::newId() {
  // 9 chars of milliseconds (45 bits), 3 of a counter, 4 of randomness: 16 chars of
  // Crockford base32 — digits sort before letters, so ids sort by arrival time.
  static const char* alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  std::lock_guard<std::mutex> lock(idMutex_);
  int64_t ms = nowMs();
  if (ms < lastIdMs_) ms = lastIdMs_;  // clock stepped back: keep the order
  lastIdMs_ = ms;
  uint64_t counter = idCounter_++ & 0x7fff;
  idSalt_ = idSalt_ * 6364136223846793005ULL + 1442695040888963407ULL;
  uint64_t rnd = (idSalt_ >> 33) & 0xfffff;
  std::string id(16, '0');
  uint64_t t = static_cast<uint64_t>(ms);
  for (int i = 8; i >= 0; --i, t >>= 5) id[static_cast<size_t>(i)] = alphabet[t & 31];
  for (int i = 11; i >= 9; --i, counter >>= 5) id[static_cast<size_t>(i)] = alphabet[counter & 31];
  for (int i = 15; i >= 12; --i, rnd >>= 5) id[static_cast<size_t>(i)] = alphabet[rnd & 31];
  return id;
}

uint64_t Spool::freeBytes() const {
  struct statvfs v {};
  if (::statvfs(dir_.c_str(), &v) != 0) return 0;
  return static_cast<uint64_t>(v.f_bavail) * v.f_frsize;
}

uint64_t Spool::nextGeneration(const std::string& id) { return ++generations_[id]; }

std::shared_ptr<IncomingMessage> Spool::create() {
  return std::make_shared<IncomingMessage>(shared_from_this(), newId());
}

std::shared_ptr<const MessageData> Spool::openData(const std::string& id, std::string& error) const {
  if (!validId(id)) return error = "not found: bad queue id", nullptr;
  // A message updated or moved since its commit keeps its bytes under data/; until then
  // they are in its one file in its area.
  auto m = MessageData::map(path("data", id), error);
  if (m || errorKind(error) != ErrorKind::NotFound) return m;
  for (Area a : kAreas) {
    std::string e;
    if ((m = MessageData::map(path(areaName(a), id), e, true))) return error.clear(), m;
  }
  return nullptr;
}

struct SpoolFile {
  std::mutex mu;
  int fd = -1;
  bool dropped = false;  // aborted: never (re)create the file
  std::string path;
  std::string tmpPath;     // a spare that vanished is replaced by a new file here
  bool spare = false;      // path is a reused spare: open it, do not create it
  uint64_t spareSize = 0;  // its size when it was taken
  // Bytes of an earlier message past what this one wrote so far, cut off at finish or
  // commit. Set on the loop before any pool job, then only touched by pool jobs, which
  // the loop runs one after another for a file.
  uint64_t staleSize = 0;
  ~SpoolFile() {
    if (fd >= 0) ::close(fd);
  }
  int ensureOpen() {
    std::lock_guard<std::mutex> lock(mu);
    if (dropped) return ECANCELED;
    if (fd >= 0) return 0;
    if (spare) {
      fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd >= 0 || errno != ENOENT) return fd < 0 ? errno : 0;
      spare = false, staleSize = 0, path = tmpPath;
    }
    fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    return fd < 0 ? errno : 0;
  }
  // Cuts off what an earlier message left past `len` (a reused spare only).
  int cutStale(uint64_t len) {
    if (staleSize <= len) return 0;
    if (::ftruncate(fd, static_cast<off_t>(len)) != 0) return errno;
    staleSize = 0;
    return 0;
  }
  void drop() {
    std::lock_guard<std::mutex> lock(mu);
    dropped = true;
    ::unlink(path.c_str());
  }
  // After the commit nothing writes the file again: closed by the pool job that committed
  // it rather than by whichever thread drops the last reference (mostly the loop).
  void closeFd() {
    std::lock_guard<std::mutex> lock(mu);
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

// ---- commit ---------------------------------------------------------------------------

// One message on its way into the queue. Shared between the loop and pool work; the pool
// only touches it inside work items, the loop only in after-callbacks.
struct CommitJob {
  std::shared_ptr<SpoolFile> data;
  std::shared_ptr<const std::string> memory;  // not yet written (small-message fast path)
  uint64_t dataSize = 0;
  std::string envText, dst;
  Area area = Area::Active;
  Spool::Done cb;
  std::string error;
  bool moved = false;
  // Written over a spare of exactly its size: only its data changed (see the sync round).
  bool inPlace = false;
  // The per-message part: the envelope appended after the message bytes, the file durable
  // (unless the sync round makes it so), then renamed into its area: one file, one fsync,
  // one rename per message.
  void prepare(bool durable = true) {
    // The message bytes if still in memory, then the envelope and trailer after them.
    if (int err = data->ensureOpen()) return fail(errnoError(err, "create " + data->path));
    std::string tail = fileTail(envText, dataSize);
    if (tail.empty()) return fail("I/O error: envelope too large: " + data->path);
    int werr = memory ? writeAll2(data->fd, *memory, tail, 0) : writeAll(data->fd, tail, dataSize);
    if (werr) return fail(errnoError(werr, "write " + data->path));
    if (int err = data->cutStale(dataSize + tail.size())) return fail(errnoError(err, "truncate " + data->path));
    inPlace = data->spare && data->spareSize == dataSize + tail.size();
    // fdatasync: the file's size and blocks are what makes its bytes readable, and it
    // skips the inode write when a spare kept them (its mtime does not matter).
    if (durable && ::fdatasync(data->fd) != 0) return fail(errnoError(errno, "fdatasync " + data->path));
    if (durable) rename();  // SyncFs: renamed by the sync round, after its first syncfs
  }
  void rename() {
    if (!error.empty()) return;
    std::string e = renameFile(data->path, dst);
    moved = e.empty();
    if (!e.empty()) fail(e);
  }
  // Not acknowledged: leave nothing that recovery would keep.
  void fail(std::string e) {
    if (error.empty()) error = std::move(e);
    if (moved) ::unlink(dst.c_str());
    data->drop();
  }
};

void Spool::startCommit(std::shared_ptr<CommitJob> job) {
  auto self = shared_from_this();
  CommitMode mode = commitMode_;
  std::string areaDir = path(areaName(job->area), "");
  auto dirs = dirs_;
  if (mode != CommitMode::PerMessage) {
    // Nothing per message needs the pool: the sync round writes the whole batch, so a
    // batch costs one trip to the pool instead of one per message.
    pendingSync_.push_back(std::move(job));
    if (roundsRunning_ < kMaxRounds) startSyncRound();
    return;
  }
  mta::uv::queueWork(
      loop_,
      [job, mode, areaDir, dirs] {
        job->prepare(mode != CommitMode::SyncFs);
        if (mode != CommitMode::PerMessage || !job->error.empty()) return;
        job->data->closeFd();
        if (std::string e = dirs->sync(areaDir); !e.empty()) job->fail(e);
      },
      [self, job, mode] {
        if (mode == CommitMode::PerMessage || !job->error.empty()) return self->commitDone(*job);
        self->pendingSync_.push_back(job);
        if (self->roundsRunning_ < kMaxRounds) self->startSyncRound();
      });
}

void Spool::commitDone(CommitJob& job) {
  if (!job.error.empty()) log::error("spool_error").add("op", "commit").add("error", job.error);
  Done cb = std::move(job.cb);
  cb(job.error.empty(), job.error);
}

// A batch of removals: run() on the pool (by a removal round, or along with a commit
// round), Spool::removalsDone on the loop.
struct RemovalBatch {
  std::vector<Spool::Removal> list;
  std::vector<std::string> results;
  std::vector<uint64_t> kept;  // spare sizes, 0: none
  explicit RemovalBatch(std::vector<Spool::Removal> l)
      : list(std::move(l)), results(list.size()), kept(list.size(), 0) {}
  void run();
};

void Spool::startSyncRound() {
  auto batch = std::make_shared<std::vector<std::shared_ptr<CommitJob>>>(std::move(pendingSync_));
  pendingSync_.clear();
  ++roundsRunning_;
  uint64_t seq = ++roundsStarted_;
  std::set<std::string> dirs;
  for (auto& j : *batch) dirs.insert(path(areaName(j->area), ""));
  bool syncfsMode = commitMode_ == CommitMode::SyncFs;
  bool syncsQueue = syncfsMode || dirs.count(path(areaName(Area::Active), ""));
  auto self = shared_from_this();
  auto synced = std::make_shared<bool>(false);
  auto handles = dirs_;
  bool sharedFlush = overwriteFlush_;
  // Removals waiting meanwhile go along, before the directory syncs (which then make them
  // durable too): one pool trip for both.
  auto removals = std::make_shared<RemovalBatch>(std::move(pendingRemovals_));
  pendingRemovals_.clear();
  mta::uv::queueWork(
      loop_,
      [batch, dirs, syncfsMode, synced, handles, sharedFlush, removals] {
        removals->run();
        std::string e;
        if (syncfsMode) {
          // written, contents durable, then the names (a job that failed to write has its
          // error set and is neither renamed nor acknowledged)
          for (auto& j : *batch) j->prepare(false);
          e = handles->syncFilesystem();
          if (e.empty())
            for (auto& j : *batch) j->rename();
          if (e.empty()) e = handles->syncFilesystem();
        } else {
          // Every file written, all their writeback started at once, then fdatasync each:
          // the device works on the whole batch together. Then the names, and one sync
          // per area directory.
          //
          // A file written over a spare of its own size (inPlace) on a file system where
          // that changes nothing but the data (overwriteNeedsOnlyFlush) only waits for its
          // writeback here: the device flush its fdatasync would add comes from the
          // directory syncs below, which run after every such wait and flush the device
          // (the 250 waits for them). One flush per round instead of one per message.
          for (auto& j : *batch) j->prepare(false);
          for (auto& j : *batch)
            if (j->error.empty()) ::sync_file_range(j->data->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
          constexpr unsigned kWait = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER;
          for (auto& j : *batch) {
            if (!j->error.empty()) continue;
            if (sharedFlush && j->inPlace) {
              if (::sync_file_range(j->data->fd, 0, 0, kWait) != 0)
                j->fail(errnoError(errno, "sync_file_range " + j->data->path));
            } else if (::fdatasync(j->data->fd) != 0) {
              j->fail(errnoError(errno, "fdatasync " + j->data->path));
            }
          }
          for (auto& j : *batch) j->rename();
          for (auto& d : dirs)
            if (e.empty()) e = handles->sync(d);
        }
        if (!e.empty())
          for (auto& j : *batch) j->fail(e);
        for (auto& j : *batch) j->data->closeFd();
        *synced = e.empty();
      },
      [self, batch, seq, syncsQueue, synced, sharedFlush, removals] {
        self->dirSyncRounds_++;
        if (sharedFlush)
          for (auto& j : *batch)
            if (j->inPlace && j->error.empty()) ++self->inPlaceCommits_;
        --self->roundsRunning_;
        if (*synced && syncsQueue && seq > self->queueSyncedBy_) self->queueSyncedBy_ = seq;
        // This round's sync of queue/ followed its renames (when it synced queue/ at all).
        self->removalsDone(*removals, syncsQueue ? seq : self->roundsStarted_ + 1);
        if (!self->pendingSync_.empty())
          self->startSyncRound();
        else if (!self->pendingRemovals_.empty() && !self->removalRunning_ && self->roundsRunning_ == 0)
          self->startRemovalRound();
        for (auto& j : *batch) self->commitDone(*j);
      });
}

// ---- per-id serialized operations ------------------------------------------------------

void Spool::serialize(const std::string& id, std::function<std::string()> work, Done cb) {
  // A message in a removal round is gone: nothing may write an envelope for it again.
  if (removing_.count(id)) return cb(false, "not found: " + id + " is being removed");
  auto& q = ops_[id];
  q.push_back({std::move(work), std::move(cb)});
  if (q.size() == 1) runNext(id);
}

void Spool::runNext(const std::string& id) {
  auto it = ops_.find(id);
  if (it == ops_.end() || it->second.empty()) return;
  auto result = std::make_shared<std::string>();
  auto work = it->second.front().work;
  auto self = shared_from_this();
  mta::uv::queueWork(
      loop_, [work, result] { *result = work(); },
      [self, id, result] {
        auto it = self->ops_.find(id);
        Done cb = std::move(it->second.front().cb);
        it->second.pop_front();
        if (it->second.empty())
          self->ops_.erase(it);
        else
          self->runNext(id);
        if (!result->empty()) log::error("spool_error").add("queue_id", id).add("error", *result);
        if (cb) cb(result->empty(), *result);
      });
}

void Spool::update(const Envelope& envIn, Done cb) { move(envIn, envIn.area, std::move(cb)); }

void Spool::move(const Envelope& envIn, Area to, Done cb) {
  if (!validId(envIn.id)) return cb(false, "not found: bad queue id");
  Envelope env = envIn;
  env.area = to;
  env.generation = nextGeneration(env.id);
  withData_.insert(env.id);  // the work below may give its bytes a data/ name
  std::string text = serializeEnvelope(env);
  std::string tmp = path("tmp", env.id + "." + std::to_string(env.generation) + ".env");
  std::string target = path(areaName(to), env.id);
  std::vector<std::string> stale;
  for (Area a : kAreas)
    if (a != to) stale.push_back(path(areaName(a), env.id));
  std::string targetDir = path(areaName(to), ""), dataFile = path("data", env.id), dataDir = path("data", "");
  auto dirs = dirs_;
  auto work = [text, tmp, target, stale, targetDir, dataFile, dataDir, dirs]() -> std::string {
    // Never create an envelope for a message that is not in the spool (removed, or never
    // committed): it would have no data and end in corrupt/ at the next start.
    std::string current;
    if (::access(target.c_str(), F_OK) == 0) current = target;
    for (auto& s : stale)
      if (current.empty() && ::access(s.c_str(), F_OK) == 0) current = s;
    if (current.empty()) return "not found: " + target;
    std::string e;
    // The first rewrite of a message file would replace its bytes too: give them a name
    // under data/ first (a hard link, durable before the rename below can happen).
    if (::access(dataFile.c_str(), F_OK) != 0) {
      if (::link(current.c_str(), dataFile.c_str()) != 0) return errnoError(errno, "link " + current + " " + dataFile);
      e = dirs->sync(dataDir);
    }
    if (e.empty()) e = spoolError(mta::writeFileSynced(tmp, text, 0600, false));
    if (e.empty()) e = renameFile(tmp, target);
    if (e.empty()) e = dirs->sync(targetDir);
    if (!e.empty()) {
      ::unlink(tmp.c_str());
      return e;
    }
    // Only now is the new copy durable; a stale copy left by a crash loses on generation.
    for (auto& s : stale) {
      if (::unlink(s.c_str()) == 0) e = dirs->sync(s.substr(0, s.rfind('/')));
    }
    return e;
  };
  serialize(env.id, std::move(work), std::move(cb));
}

// Unlinks one message's files: envelope first (the commit point), then the data. `area`,
// when known, is tried first so a delivered message costs one unlink, not three. With
// `spare`, a file of the known area that is a plain file of at most kMaxSpareSize with one
// name is renamed there instead (its size in *spareSize, else 0).
static std::string removeFiles(const std::vector<std::string>& envs, const std::string& data, size_t first,
                               const std::string& spare = {}, uint64_t* spareSize = nullptr) {
  bool found = false;
  if (!spare.empty() && first < envs.size()) {
    const auto& e = envs[first];
    struct stat st {};
    if (::lstat(e.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 1 &&
        static_cast<uint64_t>(st.st_size) <= Spool::kMaxSpareSize && ::rename(e.c_str(), spare.c_str()) == 0) {
      *spareSize = static_cast<uint64_t>(st.st_size);
      found = true;
    }
  }
  for (size_t k = 0; k < envs.size() && !found; ++k) {
    const auto& e = envs[(first + k) % envs.size()];
    // Not followed by a directory fsync: a removal lost in a crash can only bring a
    // delivered message back for a duplicate delivery, never lose one, and syncing here
    // would cost one disk flush per delivered message.
    if (::unlink(e.c_str()) == 0) {
      found = true;
      // At run time an envelope is in one area only (move() unlinks the stale copy
      // before it reports done), so the others need no look.
      if (first < envs.size()) break;
    } else if (errno != ENOENT) {
      return errnoError(errno, "unlink " + e);
    }
  }
  // The envelope is gone for good: a data file left by a crash here is an orphan that
  // recovery deletes.
  if (!data.empty() && ::unlink(data.c_str()) != 0 && errno != ENOENT) return errnoError(errno, "unlink " + data);
  return found ? std::string() : "not found: " + envs[0];
}

void Spool::remove(const std::string& id, Done cb, std::optional<Area> area) {
  if (!cb) cb = [](bool, std::string) {};
  if (!validId(id)) return cb(false, "not found: bad queue id");
  std::vector<std::string> envs;
  size_t first = std::size(kAreas);  // "unknown": try every area
  for (size_t i = 0; i < std::size(kAreas); ++i) {
    envs.push_back(path(areaName(kAreas[i]), id));
    if (area && kAreas[i] == *area) first = i;
  }
  std::string data = withData_.erase(id) ? path("data", id) : std::string();
  if (!ops_.count(id)) {
    // Nothing else pending on this id: join the next removal round, one trip to the pool
    // for every message removed meanwhile.
    removing_.insert(id);
    std::string spare;
    // Only files leaving queue/: the commit rounds sync that directory all the time, and
    // a spare waits for one (see promoteSpares).
    if (area == Area::Active && commitMode_ != CommitMode::PerMessage &&
        spareCount_ + sparesWaiting_.size() + sparesPromised_ < kMaxSpares && spareBytes_ < kMaxSpareBytes) {
      spare = path("spare", id);
      ++sparesPromised_;
    }
    pendingRemovals_.push_back(Removal{id, std::move(envs), std::move(data), first, std::move(spare), std::move(cb)});
    // With a commit round running, the next round takes it along (or this one starts a
    // removal round when it ends): under load, removals cost no trip to the pool of their own.
    if (!removalRunning_ && roundsRunning_ == 0) startRemovalRound();
    return;
  }
  auto self = shared_from_this();
  auto work = [envs, data, first]() -> std::string { return removeFiles(envs, data, first); };
  serialize(id, std::move(work), [self, id, cb = std::move(cb)](bool ok, std::string e) {
    if (!self->ops_.count(id)) self->generations_.erase(id);
    cb(ok, std::move(e));
  });
}

void RemovalBatch::run() {
  for (size_t i = 0; i < list.size(); ++i) {
    auto& r = list[i];
    results[i] = removeFiles(r.envs, r.data, r.first, r.spare, &kept[i]);
  }
}

void Spool::startRemovalRound() {
  auto batch = std::make_shared<RemovalBatch>(std::move(pendingRemovals_));
  pendingRemovals_.clear();
  removalRunning_ = true;
  ++removalRounds_;
  auto self = shared_from_this();
  mta::uv::queueWork(
      loop_, [batch] { batch->run(); },
      [self, batch] {
        self->removalRunning_ = false;
        if (!self->pendingRemovals_.empty()) self->startRemovalRound();
        // Reusable once a sync of queue/ that starts after the renames is done.
        self->removalsDone(*batch, self->roundsStarted_ + 1);
      });
}

// `spareRound`: the first commit round whose sync of queue/ follows the batch's renames.
void Spool::removalsDone(RemovalBatch& batch, uint64_t spareRound) {
  for (size_t i = 0; i < batch.list.size(); ++i) {
    auto& r = batch.list[i];
    if (!r.spare.empty()) --sparesPromised_;
    // Until then a crash could bring back its old name: a message holding another's bytes.
    if (batch.kept[i]) sparesWaiting_.push_back({Spare{r.spare, batch.kept[i]}, spareRound});
    removing_.erase(r.id);
    if (!ops_.count(r.id)) generations_.erase(r.id);
    const auto& e = batch.results[i];
    if (!e.empty()) log::error("spool_error").add("queue_id", r.id).add("error", e);
    r.cb(e.empty(), e);
  }
  promoteSpares();
}

std::optional<Spool::Spare> Spool::takeSpare(std::optional<uint64_t> size) {
  if (spares_.empty()) return std::nullopt;
  // That size, else the nearest larger one (least to cut), else the largest.
  auto it = size ? spares_.lower_bound(*size) : spares_.end();
  if (it == spares_.end()) it = std::prev(spares_.end());
  Spare s{std::move(it->second.back()), it->first};
  it->second.pop_back();
  if (it->second.empty()) spares_.erase(it);
  spareBytes_ -= s.size;
  --spareCount_;
  return s;
}

void Spool::returnSpare(Spare s) {
  spareBytes_ += s.size;
  ++spareCount_;
  spares_[s.size].push_back(std::move(s.path));
}

void Spool::promoteSpares() {
  // Not in round order: a removal that went along with a commit round waits for that round.
  auto ready = std::stable_partition(sparesWaiting_.begin(), sparesWaiting_.end(),
                                     [&](const WaitingSpare& w) { return w.needRound <= queueSyncedBy_; });
  for (auto it = sparesWaiting_.begin(); it != ready; ++it) returnSpare(std::move(it->spare));
  sparesWaiting_.erase(sparesWaiting_.begin(), ready);
}

// ---- recovery --------------------------------------------------------------------------

// Keeps the spares no message file shares an inode with (see spool.h), within the bounds.
void Spool::recoverSpares(const std::set<uint64_t>& liveInodes) {
  std::set<uint64_t> spareInodes;
  auto names = listDir(path("spare", ""));
  for (auto& name : names) {
    std::string p = path("spare", name);
    struct stat st {};
    bool keep = validId(name) && ::lstat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 1 &&
                !liveInodes.count(static_cast<uint64_t>(st.st_ino)) &&
                static_cast<uint64_t>(st.st_size) <= kMaxSpareSize && spareCount_ < kMaxSpares &&
                spareBytes_ < kMaxSpareBytes;
    if (keep)
      returnSpare(Spare{p, static_cast<uint64_t>(st.st_size)});
    else
      ::unlink(p.c_str());
  }
}

void Spool::moveToCorrupt(const std::string& from, const std::string& name, const std::string& why,
                          RecoveryReport& report) {
  std::string src = path(from, name);
  std::string dst = path("corrupt", from + "-" + name);
  if (::access(dst.c_str(), F_OK) == 0) dst += "." + std::to_string(nowMs());
  if (::rename(src.c_str(), dst.c_str()) != 0) {
    report.notes.push_back("cannot move " + src + " to corrupt/: " + std::strerror(errno));
    return;
  }
  report.notes.push_back("moved " + from + "/" + name + " to corrupt/: " + why);
  log::warn("spool_corrupt").add("file", from + "/" + name).add("reason", why);
}

void Spool::recoverArea(Area area, std::map<std::string, Envelope>& found, std::set<std::string>& corruptIds,
                        RecoveryReport& report) {
  std::string sub(areaName(area));
  for (auto& name : listDir(path(sub, ""))) {
    std::string text, error;
    int err = 0;
    std::optional<Envelope> env;
    if (!validId(name))
      error = "bad file name";
    else if (!readEnvelopeFile(path(sub, name), text, err))
      error = openError(err, "read");
    else if (!(env = parseEnvelope(text, error))) {
    } else if (env->id != name)
      error = "envelope id " + env->id + " does not match its file name";
    if (!error.empty()) {
      moveToCorrupt(sub, name, "corrupt envelope: " + error, report);
      corruptIds.insert(name);
      report.movedCorrupt++;
      continue;
    }
    env->area = area;
    auto it = found.find(name);
    if (it == found.end()) {
      found.emplace(name, std::move(*env));
      continue;
    }
    // A crash during a move left two copies: the newer generation wins.
    bool newer = env->generation > it->second.generation;
    std::string loser = newer ? path(areaName(it->second.area), name) : path(sub, name);
    ::unlink(loser.c_str());
    report.notes.push_back("removed stale copy " + loser);
    if (newer) it->second = std::move(*env);
  }
}

std::vector<Envelope> Spool::recover(RecoveryReport& report) {
  for (auto& name : listDir(path("tmp", ""))) {
    // Only Moat's own half-written files go; anything else found there is kept aside.
    if (::unlink(path("tmp", name).c_str()) != 0) {
      moveToCorrupt("tmp", name, std::string("cannot remove: ") + std::strerror(errno), report);
      report.movedCorrupt++;
      continue;
    }
    report.removedPartial++;
    report.notes.push_back("removed half-written tmp/" + name);
    log::info("spool_removed_partial").add("file", "tmp/" + name);
  }
  // Spares first: a spare name beside a message that was written over it (its commit's
  // rename was durable in the area, not yet in spare/) must never be reused.
  std::set<uint64_t> liveInodes;
  for (const char* d : {"queue", "hold", "quarantine", "data"}) listDir(path(d, ""), &liveInodes);
  recoverSpares(liveInodes);
  std::map<std::string, Envelope> found;
  std::set<std::string> corruptIds;
  for (Area a : kAreas) recoverArea(a, found, corruptIds, report);
  std::vector<Envelope> out;
  for (auto it = found.begin(); it != found.end();) {
    // The bytes are under data/ (a message updated or moved since its commit), else in
    // the message file itself.
    std::string why;
    bool dataExists = ::access(path("data", it->first).c_str(), F_OK) == 0;
    std::string dataPath = dataExists ? path("data", it->first) : path(areaName(it->second.area), it->first);
    FileLayout layout;
    int err = 0;
    if (mta::UniqueFd fd = openRegular(dataPath, err); fd.valid()) err = probeLayout(fd.get(), layout);
    if (err != 0)
      why = openError(err, "read " + dataPath);
    else if (!dataExists && layout.envLen == 0)
      why = "data file missing";
    else if (layout.dataLen != it->second.size)
      why = "data file has " + std::to_string(layout.dataLen) + " bytes, envelope says " + std::to_string(it->second.size);
    if (!why.empty()) {
      moveToCorrupt(std::string(areaName(it->second.area)), it->first, why, report);
      if (dataExists) moveToCorrupt("data", it->first, why, report);
      report.movedCorrupt++;
      it = found.erase(it);
      continue;
    }
    generations_[it->first] = it->second.generation;
    if (dataExists) withData_.insert(it->first);
    out.push_back(it->second);
    ++it;
  }
  for (auto& name : listDir(path("data", ""))) {
    if (found.count(name)) continue;
    if (corruptIds.count(name)) {  // keep the bytes beside their broken envelope
      moveToCorrupt("data", name, "its envelope is corrupt", report);
      continue;
    }
    if (::unlink(path("data", name).c_str()) != 0) {
      moveToCorrupt("data", name, std::string("cannot remove: ") + std::strerror(errno), report);
      report.movedCorrupt++;
      continue;
    }
    report.removedPartial++;
    report.notes.push_back("removed data/" + name + " without an envelope");
    log::info("spool_removed_partial").add("file", "data/" + name);
  }
  for (const char* d : {"tmp", "data", "queue", "hold", "quarantine", "spare", "corrupt"}) syncDir(path(d, ""));
  report.recovered = out.size();
  // The caller logs the report (spool_recovered).
  return out;
}

// ---- IncomingMessage -------------------------------------------------------------------

IncomingMessage::IncomingMessage(std::shared_ptr<Spool> spool, std::string id)
    : spool_(std::move(spool)), id_(std::move(id)), file_(std::make_shared<SpoolFile>()) {
  file_->tmpPath = file_->path = spool_->path("tmp", id_ + ".data");
}

// The file is needed now: a spare if there is one, best one of exactly `size` bytes (the
// message and its envelope, padded), so that it is written over in place.
void IncomingMessage::touchFile(std::optional<uint64_t> size) {
  if (fileTouched_) return;
  fileTouched_ = true;
  if (auto s = spool_->takeSpare(size)) {
    file_->path = std::move(s->path);
    file_->spare = true;
    file_->spareSize = file_->staleSize = s->size;
  }
}

IncomingMessage::~IncomingMessage() { abort(); }

void IncomingMessage::append(std::string_view data) {
  if (aborted_ || finishing_ || committed_) return;
  size_ += data.size();
  if (error_ != 0) return;  // reported by finish()
  pending_.append(data);
  if (overHighWater()) overSignalled_ = true;
  pump();
}

bool IncomingMessage::hold() {
  size_t others = spool_->receiveHeld_ - held_;
  if (others + pending_.size() > spool_->receiveBudget_) return release(), false;
  spool_->receiveHeld_ = others + pending_.size();
  held_ = pending_.size();
  return true;
}

void IncomingMessage::release() {
  spool_->receiveHeld_ -= held_;
  held_ = 0;
}

void IncomingMessage::pump() {
  if (inFlight_ != 0 || pending_.empty() || aborted_) return;
  if (error_ != 0) return release(), pending_.clear();
  bool mayStayInMemory = written_ == 0 && pending_.size() <= MessageData::kReadLimit;
  if (!finishing_) {
    if (pending_.size() < kWriteBatch) return;  // wait for more (or the end)
    if (mayStayInMemory && hold()) return;      // nothing on disk yet: it may never need to be
  }
  // The whole message fits in memory and nothing went to disk yet: keep it for the commit.
  if (finishing_ && mayStayInMemory) return;
  release();
  touchFile(std::nullopt);
  auto chunk = std::make_shared<std::string>(std::move(pending_));
  pending_.clear();
  inFlight_ = chunk->size();
  auto file = file_;
  uint64_t offset = written_;
  auto err = std::make_shared<int>(0);
  auto self = shared_from_this();
  mta::uv::queueWork(
      spool_->loop(),
      [file, chunk, offset, err] {
        *err = file->ensureOpen();
        if (*err == 0) *err = writeAll(file->fd, *chunk, offset);
      },
      [self, chunk, err] { self->writeDone(chunk->size(), *err); });
}

void IncomingMessage::writeDone(size_t n, int err) {
  inFlight_ = 0;
  if (err != 0 && error_ == 0) error_ = err;
  if (err == 0) written_ += n;
  pump();
  if (overSignalled_ && buffered() <= kLowWater) {
    overSignalled_ = false;
    if (onDrain_) onDrain_();
  }
  maybeFinish();
}

void IncomingMessage::finish(Done cb) {
  if (finishing_ || aborted_) return cb(false, "I/O error: message already finished or aborted");
  finishing_ = true;
  finishCb_ = std::move(cb);
  pump();
  maybeFinish();
}

void IncomingMessage::maybeFinish() {
  if (!finishing_ || !finishCb_ || inFlight_ != 0) return;
  if (!pending_.empty() && !(written_ == 0 && pending_.size() <= MessageData::kReadLimit)) return;
  Done cb = std::move(finishCb_);
  finishCb_ = nullptr;
  release();  // finished: its bytes stay in memory as any finished message's do (data())
  if (error_ != 0) return cb(false, errnoError(error_, "write " + id_));
  if (written_ == 0) {
    // Held whole: no trip to the pool; the filters read this copy, the commit writes it.
    auto bytes = std::make_shared<std::string>(std::move(pending_));
    pending_.clear();
    memory_ = bytes;
    data_ = MessageData::fromMemory(bytes);
    finished_ = true;
    return cb(true, "");
  }
  touchFile(std::nullopt);
  auto file = file_;
  auto result = std::make_shared<std::pair<std::shared_ptr<const MessageData>, std::string>>();
  auto self = shared_from_this();
  uint64_t written = written_;
  mta::uv::queueWork(
      spool_->loop(),
      [file, result, written] {
        int e = file->ensureOpen();  // open already, unless the first write failed
        if (e != 0)
          result->second = errnoError(e, "create " + file->path);
        else  // a reused spare holds an earlier message's bytes past these
          result->first = MessageData::map(file->path, result->second, false, written);
      },
      [self, result, cb] {
        self->data_ = result->first;
        self->finished_ = result->first != nullptr;
        cb(self->finished_, result->second);
      });
}

void IncomingMessage::commit(Envelope env, Done cb) {
  if (!finished_ || committed_ || aborted_) return cb(false, "I/O error: commit before finish");
  committed_ = true;  // from here the files belong to the commit job
  env.id = id_;
  env.size = size_;
  env.generation = spool_->nextGeneration(id_);
  auto job = std::make_shared<CommitJob>();
  job->data = file_;
  job->memory = std::move(memory_);
  job->envText = serializeEnvelope(env);
  job->dataSize = size_;
  if (!fileTouched_) touchFile(fileSize(size_, job->envText.size()));
  job->dst = spool_->path(areaName(env.area), id_);
  job->area = env.area;
  job->cb = std::move(cb);
  spool_->startCommit(std::move(job));
}

void IncomingMessage::abort() {
  if (committed_ || aborted_) return;
  aborted_ = true;
  release();
  pending_.clear();
  memory_.reset();
  if (!fileTouched_) return;  // nothing was ever written: no file to remove
  auto file = file_;
  mta::uv::queueWork(
      spool_->loop(), [file] { file->drop(); }, nullptr);
}

}  // namespace moat::queue
