// policy/errors.cc — see errors.h.
#include "policy/errors.h"

namespace moat::policy {

std::string ConfigError::str() const {
  std::string out = file;
  if (line > 0) out += ":" + std::to_string(line);
  out += warning ? ": warning: " : ": ";
  out += message;
  return out;
}

void Errors::error(std::string file, int line, std::string message) {
  list_.push_back({std::move(file), line, std::move(message), false});
}

void Errors::warning(std::string file, int line, std::string message) {
  list_.push_back({std::move(file), line, std::move(message), true});
}

bool Errors::hasErrors() const {
  for (const auto& e : list_)
    if (!e.warning) return true;
  return false;
}

std::string Errors::str() const {
  std::string out;
  for (const auto& e : list_) out += e.str() + "\n";
  return out;
}

}  // namespace moat::policy
