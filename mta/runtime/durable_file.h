// mta/runtime/durable_file.h — files written crash-atomically, as DESIGN.md decision 4 has the
// spool do it: the contents go to a temporary file, which is fsynced, then put in place under
// its name (rename(2), or link(2) when an existing file must not be replaced), and the
// directory holding the name is fsynced so that the new entry lasts too. After a crash (a
// power cut included) the name holds the old contents or the new, never part of them. Used
// for Maildir deliveries, the state files under SPOOL_DIR, the MTA-STS cache, DKIM keys, and
// by the spool for what it shares with them (its message files have a writer of their own).
//
// Blocking: the thread pool, start-up or the CLI only, never an event loop. Untrusted input:
// none (the callers choose the names). Logs: nothing; the caller words and logs the error.
#pragma once
#include <sys/types.h>

#include <string>
#include <string_view>

namespace moat::mta {

// A failed step: the call and its file(s), and errno. Empty (false) when all went well.
struct FileError {
  int code = 0;      // errno of the call that failed; 0: none failed
  std::string what;  // "create /var/spool/moat/x.tmp", "rename A B", "fsync /var/spool/moat"
  explicit operator bool() const { return code != 0; }
  // "create /var/spool/moat/x.tmp: No space left on device"; "" when none failed.
  std::string text() const;
};

// fsync(2) of a directory, for the entries made or removed in it to survive a crash.
FileError syncDirectory(const std::string& dir);

// The directory holding `path`'s entry ("." for a bare name, "/" for one in the root).
std::string parentDirectory(const std::string& path);

// `content` to a new file `path` (created with `mode`, less the umask), fsynced and closed:
// the first half of a durable write, for a caller that puts the file in place itself. A file
// already there is an error (EEXIST) with `exclusive` (a name the caller made unique), else it
// is removed first: a temporary file a crash left behind. On failure nothing is left at `path`.
FileError writeFileSynced(const std::string& path, std::string_view content, mode_t mode, bool exclusive);

struct DurableWrite {
  // rename(2) over a file of that name; false: link(2), so that an existing file is kept
  // (the write fails with EEXIST, atomically: no check-then-write window).
  bool replace = true;
  mode_t mode = 0600;
  // The temporary file: "" for PATH.tmp beside it (a stale one from a crash is removed),
  // else a name the caller made unique (it must not exist), on the same file system.
  std::string temp;
};

// `content` to `path` crash-atomically (see the top of this file): on return without an
// error the contents and the name are on disk. On failure no temporary file is left, and
// `path` is as it was, unless only the directory's fsync failed (what = "fsync DIR"): the
// new file is in place then, but may not survive a crash.
FileError writeFileDurably(const std::string& path, std::string_view content, const DurableWrite& how = {});

}  // namespace moat::mta
