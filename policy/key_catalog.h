// policy/key_catalog.h — while a KeyCatalog lives on a thread, every key a Section getter
// there is asked for is noted, with its kind and built-in default: the one list of the keys
// Moat reads, as the readers themselves define it (section.cc). tests/docs/docs_test.cc
// holds README.md's configuration reference, deploy/moat.toml and CONTRACT.md to it.
// Otherwise it costs one test of a thread-local pointer per key read.
#pragma once
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace moat::policy {

class KeyCatalog {
 public:
  struct Key {
    std::string section;  // as the reader names it: "server", "[[listener]]", "[[dkim.sign]]"
    std::string key;
    // string, path, enum, bool, int, double, duration (def in ms), size (def in bytes),
    // strings, paths (defList)
    std::string kind;
    std::string def;
    std::vector<std::string> defList;
    std::vector<std::string> allowed;  // enum
  };
  KeyCatalog();
  ~KeyCatalog();
  KeyCatalog(const KeyCatalog&) = delete;
  KeyCatalog& operator=(const KeyCatalog&) = delete;

  // In the order first read; a key read twice (by two readers of one section) once.
  const std::vector<Key>& keys() const { return keys_; }
  // The catalog of this thread, or nullptr.
  static KeyCatalog* current();
  void note(Key key);

 private:
  std::vector<Key> keys_;
  std::set<std::pair<std::string, std::string>> seen_;
  KeyCatalog* previous_;
};

}  // namespace moat::policy
