// policy/section.cc — see section.h.
#include "policy/section.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "mta/runtime/fd.h"
#include "policy/key_catalog.h"
#include "policy/values.h"

namespace moat::policy {

std::string resolvePath(const std::string& baseDir, const std::string& path) {
  if (path.empty() || path[0] == '/' || path == "-") return path;
  return baseDir + "/" + path;
}

namespace {
thread_local KeyCatalog* currentCatalog = nullptr;
}  // namespace

KeyCatalog::KeyCatalog() : previous_(currentCatalog) { currentCatalog = this; }
KeyCatalog::~KeyCatalog() { currentCatalog = previous_; }
KeyCatalog* KeyCatalog::current() { return currentCatalog; }

void KeyCatalog::note(Key key) {
  if (seen_.insert({key.section, key.key}).second) keys_.push_back(std::move(key));
}

namespace {
// Tells this thread's KeyCatalog, if any, that section `section` reads `key`.
void note(const std::string& section, const std::string& key, const char* kind, std::string def,
          std::vector<std::string> defList = {}, std::vector<std::string> allowed = {}) {
  if (auto* catalog = KeyCatalog::current())
    catalog->note({section, key, kind, std::move(def), std::move(defList), std::move(allowed)});
}
}  // namespace

Section::Section(const toml::table* table, std::string name, std::string file, std::string baseDir, Errors& errors)
    : table_(table), name_(std::move(name)), file_(std::move(file)), baseDir_(std::move(baseDir)), errors_(errors) {}

const toml::node* Section::node(const std::string& key) {
  seen_.insert(key);
  if (!table_) return nullptr;
  return table_->get(key);
}

bool Section::has(const std::string& key) const { return table_ && table_->contains(key); }

int Section::lineOf(const std::string& key) const {
  if (table_) {
    if (auto* n = table_->get(key)) return static_cast<int>(n->source().begin.line);
    return static_cast<int>(table_->source().begin.line);
  }
  return 0;
}

void Section::error(const std::string& key, const std::string& message) {
  std::string where = name_.empty() ? key : name_ + "." + key;
  errors_.error(file_, lineOf(key), where + ": " + message);
}

void Section::warning(const std::string& key, const std::string& message) {
  std::string where = name_.empty() ? key : name_ + "." + key;
  errors_.warning(file_, lineOf(key), where + ": " + message);
}

void Section::errorAt(int line, const std::string& key, const std::string& message) {
  errors_.error(file_, line, (name_.empty() ? key : name_ + "." + key) + ": " + message);
}

void Section::warningAt(int line, const std::string& key, const std::string& message) {
  errors_.warning(file_, line, (name_.empty() ? key : name_ + "." + key) + ": " + message);
}

std::string Section::getString(const std::string& key, const std::string& def) {
  note(name_, key, "string", def);
  auto* n = node(key);
  if (!n) return def;
  if (auto v = n->value<std::string>()) return *v;
  error(key, "expected a string");
  return def;
}

bool Section::getBool(const std::string& key, bool def) {
  note(name_, key, "bool", def ? "true" : "false");
  auto* n = node(key);
  if (!n) return def;
  if (auto v = n->value<bool>()) return *v;
  error(key, "expected true or false");
  return def;
}

int64_t Section::getInt(const std::string& key, int64_t def, int64_t min, int64_t max) {
  note(name_, key, "int", std::to_string(def));
  auto* n = node(key);
  if (!n) return def;
  if (!n->is_integer()) {
    error(key, "expected an integer");
    return def;
  }
  int64_t v = *n->value<int64_t>();
  if (v < min || v > max) {
    error(key, "must be between " + std::to_string(min) + " and " + std::to_string(max));
    return def;
  }
  return v;
}

double Section::getDouble(const std::string& key, double def) {
  note(name_, key, "double", std::to_string(def));
  auto* n = node(key);
  if (!n) return def;
  if (n->is_number()) return *n->value<double>();
  error(key, "expected a number");
  return def;
}

std::chrono::milliseconds Section::getDuration(const std::string& key, std::chrono::milliseconds def) {
  note(name_, key, "duration", std::to_string(def.count()));
  auto* n = node(key);
  if (!n) return def;
  if (auto s = n->value<std::string>()) {
    if (auto d = parseDuration(*s)) return *d;
  }
  error(key, "expected a duration such as \"30s\", \"5m\", \"4h\" or \"2d\"");
  return def;
}

uint64_t Section::getSize(const std::string& key, uint64_t def) {
  note(name_, key, "size", std::to_string(def));
  auto* n = node(key);
  if (!n) return def;
  if (n->is_integer() && *n->value<int64_t>() >= 0) return static_cast<uint64_t>(*n->value<int64_t>());
  if (auto s = n->value<std::string>()) {
    if (auto v = parseSize(*s)) return *v;
  }
  error(key, "expected a size such as \"35M\", \"512K\" or a number of bytes");
  return def;
}

std::vector<std::string> Section::getStringArray(const std::string& key, const std::vector<std::string>& def) {
  note(name_, key, "strings", "", def);
  auto* n = node(key);
  if (!n) return def;
  if (!n->as_array()) {
    error(key, "expected an array of strings");
    return def;
  }
  std::vector<std::string> out;
  for (auto& item : getStringArrayItems(key)) out.push_back(std::move(item.value));
  return out;
}

std::vector<Section::Item> Section::getStringArrayItems(const std::string& key, const std::vector<std::string>& def) {
  note(name_, key, "strings", "", def);
  auto* n = node(key);
  if (!n) {
    std::vector<Item> out;
    for (const auto& d : def) out.push_back({d, 0});
    return out;
  }
  auto* arr = n->as_array();
  if (!arr) {
    error(key, "expected an array of strings");
    return {};
  }
  std::vector<Item> out;
  for (const auto& el : *arr) {
    if (auto v = el.value<std::string>()) {
      out.push_back({*v, static_cast<int>(el.source().begin.line)});
    } else {
      errors_.error(file_, static_cast<int>(el.source().begin.line),
                    (name_.empty() ? key : name_ + "." + key) + ": expected only strings");
    }
  }
  return out;
}

std::string Section::getPath(const std::string& key, const std::string& def) {
  note(name_, key, "path", def);
  std::string p = getString(key, def);
  return resolvePath(baseDir_, p);
}

std::vector<std::string> Section::getPathArray(const std::string& key) {
  note(name_, key, "paths", "");
  auto v = getStringArray(key);
  for (auto& p : v) p = resolvePath(baseDir_, p);
  return v;
}

std::string Section::getEnum(const std::string& key, const std::string& def, const std::vector<std::string>& allowed) {
  note(name_, key, "enum", def, {}, allowed);
  std::string v = getString(key, def);
  for (const auto& a : allowed)
    if (a == v) return v;
  std::string list;
  for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
  error(key, "\"" + v + "\" is not one of: " + list);
  return def;
}

std::string unreadableReason(const std::string& path) {
  mta::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd.valid()) return std::strerror(errno);
  struct stat st {};
  int err = ::fstat(fd.get(), &st) != 0 ? errno : S_ISDIR(st.st_mode) ? EISDIR : 0;
  return err ? std::strerror(err) : "";
}

void reportUnreadable(Errors& errors, const std::string& file, int line, const std::string& key,
                      const std::string& path, const std::string& reason) {
  errors.error(file, line, key + ": cannot read " + path + ": " + reason);
}

bool Section::readable(const std::string& key, const std::string& path) {
  std::string reason = unreadableReason(path);
  if (reason.empty()) return true;
  int line = lineOf(key);
  const toml::node* n = table_ ? table_->get(key) : nullptr;
  if (const toml::array* arr = n ? n->as_array() : nullptr) {
    for (const auto& el : *arr) {
      auto v = el.value<std::string>();
      if (v && resolvePath(baseDir_, *v) == path) {
        line = static_cast<int>(el.source().begin.line);
        break;
      }
    }
  }
  reportUnreadable(errors_, file_, line, name_.empty() ? key : name_ + "." + key, path, reason);
  return false;
}

void Section::rejectUnknownKeys() {
  if (!table_) return;
  for (const auto& [k, v] : *table_) {
    std::string key(k.str());
    if (!seen_.count(key)) {
      errors_.error(file_, static_cast<int>(v.source().begin.line),
                    (name_.empty() ? key : name_ + "." + key) + ": unknown key");
    }
  }
}

}  // namespace moat::policy
