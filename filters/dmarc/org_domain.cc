// filters/dmarc/org_domain.cc — see org_domain.h. RFC 7489 §3.2 via libpsl.
#include "filters/dmarc/org_domain.h"

#include <idn2.h>
#include <libpsl.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <memory>

namespace moat::filters::dmarc {

namespace {

constexpr const char* kPslFile = "/usr/share/publicsuffix/public_suffix_list.dat";

struct PslFree {
  void operator()(psl_ctx_t* p) const { psl_free(p); }
};

// The loaded list; psl_latest()'s context is owned by libpsl only when it is the builtin
// one, so it is kept apart and never freed.
const psl_ctx_t* psl() {
  static const std::unique_ptr<psl_ctx_t, PslFree> fromFile(psl_load_file(kPslFile));
  static const psl_ctx_t* ctx = fromFile ? fromFile.get() : psl_latest(nullptr);
  return ctx;
}

struct IdnFree {
  void operator()(char* p) const { idn2_free(p); }
};

// RFC 8616 §4: U-labels to A-labels. Non-transitional UTS #46 processing maps upper-case and
// compatibility forms the way mail clients and registries do ("BÜCHER" and "bücher" are one
// name); NFC_INPUT accepts decomposed input. false on anything libidn2 refuses.
bool toALabels(const std::string& name, std::string& out) {
  char* raw = nullptr;
  int rc = idn2_to_ascii_8z(name.c_str(), &raw, IDN2_NONTRANSITIONAL | IDN2_NFC_INPUT);
  std::unique_ptr<char, IdnFree> owned(raw);
  if (rc != IDN2_OK || !owned) return false;
  out = owned.get();
  return true;
}

}  // namespace

std::string normalizeDomain(std::string_view domain) {
  while (!domain.empty() && domain.front() == '.') domain.remove_prefix(1);
  while (!domain.empty() && domain.back() == '.') domain.remove_suffix(1);
  std::string out(domain);
  bool eightBit = std::any_of(out.begin(), out.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
  // A NUL would cut the C string libidn2 sees: such a name is junk anyway.
  if (eightBit && (out.find('\0') != std::string::npos || !toALabels(out, out))) return "";
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string organizationalDomain(std::string_view domain) {
  auto name = normalizeDomain(domain);
  if (name.empty()) return name;
  const psl_ctx_t* ctx = psl();
  if (!ctx) return name;
  const char* reg = psl_registrable_domain(ctx, name.c_str());
  return reg ? std::string(reg) : name;
}

bool isPublicSuffix(std::string_view domain) {
  const psl_ctx_t* ctx = psl();
  return ctx && psl_is_public_suffix(ctx, std::string(domain).c_str());
}

bool aligned(std::string_view a, std::string_view b, bool strict) {
  auto na = normalizeDomain(a), nb = normalizeDomain(b);
  if (na.empty() || nb.empty()) return false;
  if (na == nb) return true;
  if (strict) return false;
  return organizationalDomain(na) == organizationalDomain(nb);
}

bool validDomain(std::string_view domain) {
  if (domain.empty() || domain.size() > 253) return false;
  size_t label = 0;
  for (size_t i = 0; i < domain.size(); ++i) {
    auto c = static_cast<unsigned char>(domain[i]);
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    if (!(std::isalnum(c) || c == '-' || c == '_')) return false;
    if (++label > 63) return false;
  }
  return label > 0;
}

}  // namespace moat::filters::dmarc
