// policy/errors.h — configuration errors reported as FILE:LINE: message, the form
// `moat check`, `moat serve` and SIGHUP reload print (CONTRACT.md).
#pragma once
#include <string>
#include <vector>

namespace moat::policy {

struct ConfigError {
  std::string file;
  int line = 0;  // 0 = the file as a whole
  std::string message;
  bool warning = false;  // reported, but the config still loads (e.g. a skipped rule)
  std::string str() const;
};

class Errors {
 public:
  void error(std::string file, int line, std::string message);
  void warning(std::string file, int line, std::string message);
  bool hasErrors() const;
  const std::vector<ConfigError>& all() const { return list_; }
  std::string str() const;  // one line each

 private:
  std::vector<ConfigError> list_;
};

}  // namespace moat::policy
