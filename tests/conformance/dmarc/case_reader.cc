// tests/conformance/dmarc/case_reader.cc — see case_reader.h.
#include "tests/conformance/dmarc/case_reader.h"

#include <fstream>

#include "tests/support/unescape.h"

namespace moat::test {


std::string Case::get(const std::string& key, const std::string& def) const {
  for (const auto& [k, v] : fields)
    if (k == key) return v;
  return def;
}

bool Case::has(const std::string& key) const {
  for (const auto& f : fields)
    if (f.first == key) return true;
  return false;
}

std::vector<std::string> Case::all(const std::string& key) const {
  std::vector<std::string> out;
  for (const auto& [k, v] : fields)
    if (k == key) out.push_back(v);
  return out;
}

bool readCases(const std::string& path, std::vector<Case>& out, std::string& error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    error = "cannot open " + path;
    return false;
  }
  std::string line;
  int lineNo = 0;
  while (std::getline(in, line)) {
    ++lineNo;
    if (line.empty()) continue;
    Case c;
    size_t start = 0;
    while (start <= line.size()) {
      auto tab = line.find('\t', start);
      if (tab == std::string::npos) tab = line.size();
      auto field = line.substr(start, tab - start);
      auto eq = field.find('=');
      if (eq == std::string::npos) {
        error = path + ":" + std::to_string(lineNo) + ": field without '='";
        return false;
      }
      c.fields.emplace_back(field.substr(0, eq), unescape(field.substr(eq + 1)));
      start = tab + 1;
    }
    out.push_back(std::move(c));
  }
  return true;
}

}  // namespace moat::test
