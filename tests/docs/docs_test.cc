// tests/docs/docs_test.cc — the documents tell the truth about the code: README.md's
// configuration reference, deploy/moat.toml (every key with one line of documentation and
// its built-in default) and CONTRACT.md's config keys against the keys the readers ask for
// (policy::KeyCatalog: the real parser, with its defaults), and README.md's log section and
// CONTRACT.md's events and fields against the events and fields the code writes. Reads the
// source tree (MOAT_SOURCE_DIR) and shared/ (MOAT_SHARED_DIR); no daemon, no network.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "filters/pipeline.h"
#include "mta/runtime/log.h"
#include "policy/config.h"
#include "policy/key_catalog.h"
#include "policy/section.h"
#include "policy/values.h"

namespace fs = std::filesystem;
using moat::policy::KeyCatalog;

namespace {

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  INFO(path);
  REQUIRE(in);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream s(text);
  for (std::string l; std::getline(s, l);) out.push_back(l);
  return out;
}

// The text of the Markdown section `## TITLE`, up to the next `## `.
std::string mdSection(const std::string& md, const std::string& title) {
  std::string head = "\n## " + title + "\n";
  auto at = md.find(head);
  INFO("## " << title);
  REQUIRE(at != std::string::npos);
  at += head.size();
  auto end = md.find("\n## ", at);
  return md.substr(at, end == std::string::npos ? std::string::npos : end - at);
}

// The `code` spans of `text`, in order.
std::vector<std::string> codeSpans(const std::string& text) {
  std::vector<std::string> out;
  size_t at = 0;
  while ((at = text.find('`', at)) != std::string::npos) {
    auto end = text.find('`', at + 1);
    if (end == std::string::npos) break;
    out.push_back(text.substr(at + 1, end - at - 1));
    at = end + 1;
  }
  return out;
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

using KeyName = std::pair<std::string, std::string>;  // section ("server", "[[listener]]"), key

std::string show(const KeyName& k) { return k.first + " " + k.second; }

// Every key the readers ask for: the core sections (policy::readConfig) and every filter's
// (filters::Pipeline::build), on a config with one of each array table so their keys are
// asked for too. Errors (a [[dkim.sign]] without a key file...) do not matter here.
const std::map<KeyName, KeyCatalog::Key>& catalog() {
  static const std::map<KeyName, KeyCatalog::Key> keys = [] {
    moat::mta::log::disable();
    char tmpl[] = "/tmp/moat-docs-XXXXXX";
    REQUIRE(mkdtemp(tmpl));
    std::string dir = tmpl;
    {
      std::ofstream f(dir + "/moat.toml");
      f << "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nto = [\"mx\"]\n[[dkim.sign]]\ndomain = \"x.test\"\n"
        << "[[milter]]\naddress = \"inet:127.0.0.1:1\"\n";
    }
    std::map<KeyName, KeyCatalog::Key> out;
    {
      KeyCatalog cat;
      moat::policy::Errors errors;
      auto config = moat::policy::readConfig(dir + "/moat.toml", errors);
      REQUIRE(config);
      moat::filters::Pipeline::build(*config, errors);
      for (const auto& k : cat.keys()) out.emplace(KeyName{k.section, k.key}, k);
    }
    fs::remove_all(dir);
    return out;
  }();
  return keys;
}

// Whether `value` (a TOML value) is what key `k` gets when it is left out; `why` says what differs.
bool isDefault(const KeyCatalog::Key& k, const toml::node& value, std::string& why) {
  std::ostringstream shown;
  value.visit([&](const auto& v) { shown << v; });
  why = "value " + shown.str() + ", built-in default " +
        (k.kind == "strings" || k.kind == "paths" ? "[" +
                                                        [&] {
                                                          std::string s;
                                                          for (const auto& d : k.defList)
                                                            s += (s.empty() ? "\"" : ", \"") + d + "\"";
                                                          return s;
                                                        }() +
                                                        "]"
                                                  : "\"" + k.def + "\"") +
        " (" + k.kind + ")";
  if (k.kind == "string" || k.kind == "path" || k.kind == "enum") return value.value<std::string>() == k.def;
  if (k.kind == "bool") return value.is_boolean() && (*value.value<bool>() ? "true" : "false") == k.def;
  if (k.kind == "int") return value.is_integer() && std::to_string(*value.value<int64_t>()) == k.def;
  if (k.kind == "double") return value.is_number() && std::fabs(*value.value<double>() - std::stod(k.def)) < 1e-9;
  if (k.kind == "duration") {
    auto s = value.value<std::string>();
    auto d = s ? moat::policy::parseDuration(*s) : std::nullopt;
    return d && std::to_string(d->count()) == k.def;
  }
  if (k.kind == "size") {
    if (value.is_integer()) return std::to_string(*value.value<int64_t>()) == k.def;
    auto s = value.value<std::string>();
    auto v = s ? moat::policy::parseSize(*s) : std::nullopt;
    return v && std::to_string(*v) == k.def;
  }
  if (k.kind == "strings" || k.kind == "paths") {
    auto* arr = value.as_array();
    if (!arr || arr->size() != k.defList.size()) return false;
    for (size_t i = 0; i < arr->size(); ++i)
      if ((*arr)[i].value<std::string>() != k.defList[i]) return false;
    return true;
  }
  why += ": unknown kind";
  return false;
}

// `text` read as one TOML value, or nullopt.
std::optional<toml::table> tomlValue(const std::string& text) {
  try {
    return toml::parse("v = " + text);
  } catch (const toml::parse_error&) {
    return std::nullopt;
  }
}

// One key line of deploy/moat.toml, set or commented out ("# key = value").
struct TomlEntry {
  std::string section, key, value, comment;  // comment: its own and the lines continuing it
  std::string header;                        // the comment of its section's header line
  int line = 0;
  bool commented = false;
  size_t headerAt = std::string::npos;
};

// Where a line's comment starts, outside strings; npos if it has none.
size_t commentStart(const std::string& s) {
  char quote = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (quote) {
      if (c == '\\' && quote == '"')
        ++i;
      else if (c == quote)
        quote = 0;
    } else if (c == '"' || c == '\'') {
      quote = c;
    } else if (c == '#') {
      return i;
    }
  }
  return std::string::npos;
}

bool isIdent(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!(std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '_'))
      return false;
  return true;
}

// deploy/moat.toml's keys: the set ones, and the commented-out ones it documents ("# key =
// value" at the start of a line, in the section above them, "# [[dkim.sign]]" included).
// Each section header's comment is kept under the key "".
std::vector<TomlEntry> moatTomlEntries(const std::string& text) {
  std::vector<TomlEntry> out;
  std::string section;
  size_t header = std::string::npos;  // index of the current section's header entry
  int n = 0;
  for (const auto& raw : lines(text)) {
    ++n;
    std::string l = raw;
    bool commented = false;
    if (!l.empty() && l[0] == '#') {
      commented = true;
      l = trim(l.substr(1));
    }
    if (!l.empty() && l[0] == '[') {
      auto close = l.find(']');
      std::string name = l.substr(0, l.find_first_of(" \t#"));
      if (close == std::string::npos) continue;
      std::string inner = name;
      while (!inner.empty() && inner.front() == '[') inner.erase(0, 1);
      while (!inner.empty() && inner.back() == ']') inner.pop_back();
      section = name.rfind("[[", 0) == 0 ? "[[" + inner + "]]" : inner;
      auto hash = commentStart(l);
      out.push_back({section, "", "", hash == std::string::npos ? "" : l.substr(hash), "", n, commented});
      header = out.size() - 1;
      continue;
    }
    if (!raw.empty() && std::isspace(static_cast<unsigned char>(raw[0])) && trim(raw).rfind('#', 0) == 0) {
      if (!out.empty()) out.back().comment += " " + trim(raw);  // a comment continued
      continue;
    }
    auto eq = l.find('=');
    if (eq == std::string::npos) continue;
    std::string key = trim(l.substr(0, eq));
    if (!isIdent(key) || (!commented && raw[0] == ' ')) continue;
    std::string rest = l.substr(eq + 1);
    auto hash = commentStart(rest);
    out.push_back({section, key, trim(rest.substr(0, hash)), hash == std::string::npos ? "" : rest.substr(hash), "", n,
                   commented, header});
  }
  for (auto& e : out)
    if (e.headerAt != std::string::npos) e.header = out[e.headerAt].comment;
  return out;
}

// README.md's configuration reference: its table's rows, by key ("`server.hostname`",
// "`[[listener]] tls_cert`, `tls_key`"), each with its default column.
std::vector<std::pair<KeyName, std::string>> readmeReference(const std::string& readme) {
  std::vector<std::pair<KeyName, std::string>> out;
  for (const auto& l : lines(mdSection(readme, "Configuration reference"))) {
    if (l.rfind("| `", 0) != 0) continue;
    auto cells = l.substr(1);
    auto bar1 = cells.find(" | ");
    auto bar2 = cells.find(" | ", bar1 + 3);
    REQUIRE(bar2 != std::string::npos);
    std::string keys = cells.substr(0, bar1), def = trim(cells.substr(bar1 + 3, bar2 - bar1 - 3));
    std::string section;
    for (const auto& span : codeSpans(keys)) {
      std::string key = span;
      if (span.rfind("[[", 0) == 0) {
        auto end = span.find("]] ");
        REQUIRE(end != std::string::npos);
        section = span.substr(0, end + 2);
        key = span.substr(end + 3);
      } else if (auto dot = span.find('.'); dot != std::string::npos) {
        section = span.substr(0, dot);
        key = span.substr(dot + 1);
      }
      out.push_back({{section, key}, def});
    }
  }
  return out;
}

// The default column's value as the key's kind reads it, if it is one (`35M`, `[]`, `may`);
// nullopt for words (`none`, "the host name", "off").
std::optional<toml::table> readmeDefault(const KeyCatalog::Key& k, const std::string& cell) {
  if (cell.rfind('`', 0) != 0) return std::nullopt;
  std::string v = codeSpans(cell).at(0);
  if (k.kind == "string" || k.kind == "path" || k.kind == "enum" || k.kind == "duration" ||
      (k.kind == "size" && !tomlValue(v))) {
    if (auto t = tomlValue(v); t && t->get("v")->is_string()) return t;  // `""`
    return toml::table{{"v", v}};
  }
  auto t = tomlValue(v);
  if (!t) return std::nullopt;
  const toml::node& n = *t->get("v");
  if ((k.kind == "strings" || k.kind == "paths") && !n.is_array()) return std::nullopt;
  return t;
}

struct Source {
  std::string path, text;
};

std::vector<Source> codeFiles() {
  std::vector<Source> out;
  for (const char* top : {"mta", "queue", "filters", "policy"})
    for (const auto& e : fs::recursive_directory_iterator(std::string(MOAT_SOURCE_DIR) + "/" + top)) {
      auto ext = e.path().extension();
      if (e.is_regular_file() && (ext == ".cc" || ext == ".h")) out.push_back({e.path().string(), readFile(e.path())});
    }
  REQUIRE(out.size() > 20);
  return out;
}

size_t skipSpace(const std::string& s, size_t i) {
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return i;
}

// The event names the code writes: log::info("name") (any namespace alias: mlog::warn),
// log::Line line(level, "name"), and lines written as raw JSON ("\"event\":\"name\"").
// A log call whose event is not a string literal goes in `opaque`: this test could not see it.
std::set<std::string> emittedEvents(std::vector<std::string>& opaque) {
  std::set<std::string> events;
  for (const auto& [path, t] : codeFiles()) {
    for (size_t at = 0; (at = t.find("log::", at)) != std::string::npos; at += 5) {
      size_t i = at + 5, id = i;
      while (i < t.size() && (std::isalnum(static_cast<unsigned char>(t[i])) || t[i] == '_')) ++i;
      std::string fn = t.substr(id, i - id);
      if (fn == "Line") {
        i = skipSpace(t, i);
        size_t var = i;
        while (i < t.size() && (std::isalnum(static_cast<unsigned char>(t[i])) || t[i] == '_')) ++i;
        if (i == var || (i = skipSpace(t, i)) >= t.size() || t[i] != '(') continue;  // a reference or a type
        int depth = 0;
        for (; i < t.size(); ++i) {
          if (t[i] == '(') ++depth;
          if (t[i] == ')' && --depth == 0) break;
          if (t[i] == ',' && depth == 1) break;
        }
        if (i >= t.size() || t[i] != ',') continue;
        ++i;
      } else if (fn == "debug" || fn == "info" || fn == "warn" || fn == "error") {
        i = skipSpace(t, i);
        if (i >= t.size() || t[i] != '(') continue;
        ++i;
      } else {
        continue;
      }
      i = skipSpace(t, i);
      if (i < t.size() && t[i] == '"') {
        auto end = t.find('"', i + 1);
        events.insert(t.substr(i + 1, end - i - 1));
      } else {
        opaque.push_back(path + ": " + t.substr(at, 60));
      }
    }
    const std::string raw = "\\\"event\\\":\\\"";
    for (size_t at = 0; (at = t.find(raw, at)) != std::string::npos; at += raw.size()) {
      auto start = at + raw.size();
      events.insert(t.substr(start, t.find('\\', start) - start));
    }
  }
  return events;
}

// The field names the code adds to log lines (.add("name", ...), .addRaw("name", ...)).
std::set<std::string> emittedFields() {
  std::set<std::string> fields = {"ts", "level", "event"};
  for (const auto& [path, t] : codeFiles())
    for (const char* call : {".add(", ".addRaw("})
      for (size_t at = 0; (at = t.find(call, at)) != std::string::npos; ++at) {
        size_t i = skipSpace(t, at + std::string(call).size());
        if (i < t.size() && t[i] == '"') fields.insert(t.substr(i + 1, t.find('"', i + 1) - i - 1));
      }
  return fields;
}

// The events README.md's log section lists: each bullet's `names` before its first ": "
// (what is in parentheses there is a level or a field: "`release` (`from_area`)").
std::set<std::string> readmeEvents(const std::string& logs) {
  std::set<std::string> out;
  for (const auto& l : lines(logs)) {
    if (l.rfind("- `", 0) != 0) continue;
    std::string head;
    int depth = 0;
    bool inCode = false;
    for (size_t i = 2; i < l.size(); ++i) {
      char c = l[i];
      if (c == '`') inCode = !inCode;
      if (!inCode && c == ':' && depth == 0) break;
      if (!inCode && c == '(') ++depth;
      if (depth == 0) head += c;
      if (!inCode && c == ')') --depth;
    }
    for (const auto& span : codeSpans(head)) out.insert(span);
  }
  return out;
}

// The `names` of the sentence of `text` that begins with `start`, up to its full stop.
std::vector<std::string> sentenceSpans(const std::string& text, const std::string& start) {
  auto at = text.find(start);
  INFO(start);
  REQUIRE(at != std::string::npos);
  auto end = text.find(". ", at);
  auto end2 = text.find(".\n", at);
  return codeSpans(text.substr(at, std::min(end, end2) - at));
}

std::string contractPath() { return std::string(MOAT_SHARED_DIR) + "/CONTRACT.md"; }

}  // namespace

TEST_CASE("the catalog holds the keys Moat reads, with their defaults") {
  // A check of the checker: were the catalog empty, every test below would pass.
  const auto& keys = catalog();
  REQUIRE(keys.size() >= 90);
  CHECK(keys.at({"limits", "max_message_size"}).def == std::to_string(35ull << 20));
  CHECK(keys.at({"queue", "retry"}).defList == std::vector<std::string>{"1m", "5m", "15m", "30m", "1h"});
  CHECK(keys.at({"[[listener]]", "mode"}).def == "smtp");
  CHECK(keys.at({"[[dkim.sign]]", "key_file"}).kind == "path");
  CHECK(keys.at({"antivirus", "scan_timeout"}).def == "120000");
  CHECK(keys.count({"server", "no_such_key"}) == 0);
}

TEST_CASE("deploy/moat.toml shows every key Moat reads, and only those") {
  auto entries = moatTomlEntries(readFile(std::string(MOAT_SOURCE_DIR) + "/deploy/moat.toml"));
  std::set<KeyName> inFile;
  for (const auto& e : entries) {
    if (e.key.empty()) continue;
    inFile.insert({e.section, e.key});
    INFO("deploy/moat.toml:" << e.line << ": " << e.section << " " << e.key);
    CHECK(catalog().count({e.section, e.key}) == 1);  // a typo, or a key no reader asks for
  }
  std::vector<std::string> missing;
  for (const auto& [name, key] : catalog())
    if (!inFile.count(name)) missing.push_back(show(name));
  INFO("keys Moat reads that deploy/moat.toml does not show");
  CHECK(missing == std::vector<std::string>{});
}

TEST_CASE("deploy/moat.toml's values are the built-in defaults, but where its comment names the default") {
  auto entries = moatTomlEntries(readFile(std::string(MOAT_SOURCE_DIR) + "/deploy/moat.toml"));
  int checked = 0;
  for (const auto& e : entries) {
    auto it = catalog().find({e.section, e.key});
    if (e.key.empty() || it == catalog().end()) continue;
    const auto& k = it->second;
    INFO("deploy/moat.toml:" << e.line << ": " << e.section << " " << e.key << " = " << e.value << " " << e.comment);
    auto marker = e.comment.find("default:");
    if (marker != std::string::npos) {
      // The default it names, where it is a value ("default: \"var/spool\"", "default: []").
      std::string named = trim(e.comment.substr(marker + 8));
      if (named.empty() || !(named[0] == '"' || named[0] == '[' || std::isdigit(static_cast<unsigned char>(named[0]))))
        continue;  // in words: "default: the host name"
      if (named[0] == '"')
        named = named.substr(0, named.find('"', 1) + 1);
      else if (named[0] == '[')
        named = named.substr(0, named.find(']') + 1);
      else
        named = named.substr(0, named.find_first_of(" ,;)"));
      auto v = tomlValue(named);
      REQUIRE(v);
      std::string why;
      bool same = isDefault(k, *v->get("v"), why);
      INFO("the default the comment names: " << why);
      CHECK(same);
      ++checked;
      continue;
    }
    // Examples: a key without a default commented out or in an array table (`# recipients =
    // "recipients"`, [[route]] to), and the keys of an array table whose header says it is
    // not the default ([[listener]], the first [[route]]).
    const bool array = e.section.rfind("[[", 0) == 0;
    if (((e.commented || array) && k.def.empty() && k.defList.empty()) ||
        (array && e.header.find("default") != std::string::npos))
      continue;
    auto v = tomlValue(e.value);
    REQUIRE(v);
    std::string why;
    bool same = isDefault(k, *v->get("v"), why);
    INFO(why);
    CHECK(same);
    ++checked;
  }
  CHECK(checked > 60);
}

TEST_CASE("README's configuration reference documents every key Moat reads, and only those, with their defaults") {
  auto rows = readmeReference(readFile(std::string(MOAT_SOURCE_DIR) + "/README.md"));
  std::set<KeyName> documented;
  for (const auto& [name, def] : rows) {
    documented.insert(name);
    INFO("README.md reference: " << show(name) << " | " << def);
    auto it = catalog().find(name);
    CHECK(it != catalog().end());  // documented, but no reader asks for it (a typo?)
    if (it == catalog().end()) continue;
    auto v = readmeDefault(it->second, def);
    if (!v) continue;  // the default in words: "none", "the host name"
    std::string why;
    bool same = isDefault(it->second, *v->get("v"), why);
    INFO(why);
    CHECK(same);
  }
  std::vector<std::string> missing;
  for (const auto& [name, key] : catalog())
    if (!documented.count(name)) missing.push_back(show(name));
  INFO("keys Moat reads that README.md's configuration reference does not document");
  CHECK(missing == std::vector<std::string>{});
}

TEST_CASE("CONTRACT.md's config keys are keys Moat reads") {
  std::string contract = readFile(contractPath());
  auto section = mdSection(contract, "Configuration (TOML)");
  auto start = section.find("```toml\n");
  REQUIRE(start != std::string::npos);
  start += 8;
  auto table = toml::parse(section.substr(start, section.find("```", start) - start));
  std::vector<KeyName> keys;
  auto addTable = [&](const std::string& name, const toml::table& t, auto& self) -> void {
    for (const auto& [k, v] : t) {
      std::string key(k.str());
      if (auto* sub = v.as_table()) {
        self(name + "." + key, *sub, self);
      } else if (auto* arr = v.as_array(); arr && arr->is_array_of_tables()) {
        for (const auto& el : *arr) self("[[" + name + "." + key + "]]", *el.as_table(), self);
      } else {
        keys.push_back({name, key});
      }
    }
  };
  for (const auto& [k, v] : table) {
    std::string name(k.str());
    if (auto* t = v.as_table()) addTable(name, *t, addTable);
    if (auto* arr = v.as_array())
      for (const auto& el : *arr) addTable("[[" + name + "]]", *el.as_table(), addTable);
  }
  REQUIRE(keys.size() > 20);
  for (const auto& k : keys) {
    INFO("CONTRACT.md: " << show(k));
    CHECK(catalog().count(k) == 1);
  }
}

TEST_CASE("README's log section lists every event the code writes, and only those") {
  std::vector<std::string> opaque;
  auto events = emittedEvents(opaque);
  // A check of the checker: the three ways an event is written are all seen.
  CHECK(events.count("reject"));              // log::Line line(level, "reject")
  CHECK(events.count("antivirus_disabled"));  // mlog::warn(...)
  CHECK(events.count("log_dropped"));         // raw JSON
  {
    INFO("log calls whose event is not a string literal (name it, so this test sees it)");
    CHECK(opaque == std::vector<std::string>{});
  }

  auto logs = mdSection(readFile(std::string(MOAT_SOURCE_DIR) + "/README.md"), "Logs");
  std::vector<std::string> undocumented;
  for (const auto& e : events)
    if (logs.find("`" + e + "`") == std::string::npos) undocumented.push_back(e);
  {
    INFO("events the code writes that README.md's log section does not name");
    CHECK(undocumented == std::vector<std::string>{});
  }

  std::vector<std::string> neverWritten;
  auto listed = readmeEvents(logs);
  CHECK(listed.size() > 40);
  for (const auto& e : listed)
    if (!events.count(e)) neverWritten.push_back(e);
  INFO("events README.md's log section lists that the code never writes");
  CHECK(neverWritten == std::vector<std::string>{});
}

TEST_CASE("no log line adds ts or level or event a second time") {
  // A second "level" in one JSON object: most readers keep the last, so a debug line would
  // read as an error (libclamav's messages once did).
  std::vector<std::string> found;
  for (const auto& [path, t] : codeFiles())
    for (const char* call : {".add(", ".addRaw("})
      for (size_t at = 0; (at = t.find(call, at)) != std::string::npos; ++at) {
        size_t i = skipSpace(t, at + std::string(call).size());
        for (const char* reserved : {"\"ts\"", "\"level\"", "\"event\""})
          if (t.compare(i, std::strlen(reserved), reserved) == 0) found.push_back(path + ": " + t.substr(at, 40));
      }
  CHECK(found == std::vector<std::string>{});
}

TEST_CASE("CONTRACT.md's log events and fields are written by the code") {
  std::vector<std::string> opaque;
  auto events = emittedEvents(opaque);
  auto fields = emittedFields();
  auto logs = mdSection(readFile(contractPath()), "Logs");
  auto contractEvents = sentenceSpans(logs, "Events include");
  auto contractFields = sentenceSpans(logs, "Where they apply");
  REQUIRE(contractEvents.size() >= 10);
  REQUIRE(contractFields.size() >= 14);
  for (const auto& e : contractEvents) {
    INFO("CONTRACT.md event " << e);
    CHECK(events.count(e));
  }
  for (const auto& f : contractFields) {
    INFO("CONTRACT.md field " << f);
    CHECK(fields.count(f));
  }
  // README.md repeats the fields lines carry where they apply.
  auto readmeFields =
      sentenceSpans(mdSection(readFile(std::string(MOAT_SOURCE_DIR) + "/README.md"), "Logs"), "Where they apply");
  CHECK(std::set<std::string>(readmeFields.begin(), readmeFields.end()) ==
        std::set<std::string>(contractFields.begin(), contractFields.end()));
}
