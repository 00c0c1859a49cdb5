// policy/section.h — typed, position-aware reading of one TOML table, so each part of Moat
// (and each filter) reads its own section and reports mistakes as FILE:LINE. Unknown keys
// are reported as errors: a typo in a gateway's config must not be silently ignored.
#pragma once
#include <chrono>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <toml++/toml.h>

#include "policy/errors.h"

namespace moat::policy {

class Section {
 public:
  // `table` may be null (the section is absent: every getter returns its default).
  // `name` is the section's name for messages; `baseDir` resolves relative paths.
  Section(const toml::table* table, std::string name, std::string file, std::string baseDir, Errors& errors);

  bool present() const { return table_ != nullptr; }
  bool has(const std::string& key) const;

  std::string getString(const std::string& key, const std::string& def = "");
  bool getBool(const std::string& key, bool def);
  int64_t getInt(const std::string& key, int64_t def, int64_t min, int64_t max);
  double getDouble(const std::string& key, double def);
  std::chrono::milliseconds getDuration(const std::string& key, std::chrono::milliseconds def);
  uint64_t getSize(const std::string& key, uint64_t def);
  std::vector<std::string> getStringArray(const std::string& key, const std::vector<std::string>& def = {});
  // The same, each string with its own line (an array may span lines), for FILE:LINE errors
  // about one element; `def` (at line 0) when the key is absent.
  struct Item {
    std::string value;
    int line = 0;
  };
  std::vector<Item> getStringArrayItems(const std::string& key, const std::vector<std::string>& def = {});
  // A path; relative paths are made absolute against the config file's folder.
  std::string getPath(const std::string& key, const std::string& def = "");
  std::vector<std::string> getPathArray(const std::string& key);
  // One of `allowed`.
  std::string getEnum(const std::string& key, const std::string& def, const std::vector<std::string>& allowed);

  // Whether the file at `path` (as getPath or getPathArray returned it for `key`) can be
  // opened for reading. If not, reports "SECTION.KEY: cannot read PATH: REASON" at the line
  // of the config that names it (the array element's own line for a getPathArray key) and
  // returns false: a policy file that is missing or unreadable is the config's mistake, so
  // it is reported where the config names it, not as the file's own path without a line.
  bool readable(const std::string& key, const std::string& path);

  // Reports keys of this section that no getter asked for. Call after reading it.
  void rejectUnknownKeys();

  // FILE:LINE errors at a key (or the section itself when the key is absent).
  void error(const std::string& key, const std::string& message);
  void warning(const std::string& key, const std::string& message);
  // The same at a given line (an element of an array: Item::line).
  void errorAt(int line, const std::string& key, const std::string& message);
  void warningAt(int line, const std::string& key, const std::string& message);
  int lineOf(const std::string& key) const;
  const std::string& file() const { return file_; }
  const std::string& baseDir() const { return baseDir_; }
  Errors& errors() { return errors_; }

 private:
  const toml::node* node(const std::string& key);
  const toml::table* table_;
  std::string name_, file_, baseDir_;
  Errors& errors_;
  std::set<std::string> seen_;
};

std::string resolvePath(const std::string& baseDir, const std::string& path);

// The check behind Section::readable, for a file the config named at FILE:LINE under `key`
// (e.g. "[[listener]].auth_users"): "" if `path` can be opened for reading (and is not a
// folder), else the reason (strerror).
std::string unreadableReason(const std::string& path);
void reportUnreadable(Errors& errors, const std::string& file, int line, const std::string& key,
                      const std::string& path, const std::string& reason);

}  // namespace moat::policy
