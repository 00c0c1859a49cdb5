// tests/conformance/dmarc/case_reader.h — reads the line format yaml_to_cases.py writes:
// one case a line, tab-separated key=value fields (keys may repeat), values escaped with
// \\ \t \r \n. Input is our own build output; malformed fields are reported, not skipped.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace moat::test {

struct Case {
  std::vector<std::pair<std::string, std::string>> fields;
  std::string get(const std::string& key, const std::string& def = "") const;
  bool has(const std::string& key) const;
  std::vector<std::string> all(const std::string& key) const;
};

// Reads every case of `path`; false (with `error`) if the file is missing or malformed.
bool readCases(const std::string& path, std::vector<Case>& out, std::string& error);

}  // namespace moat::test
