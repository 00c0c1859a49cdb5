// filters/helo/helo.cc — see helo.h.
#include "filters/helo/helo.h"

#include <algorithm>
#include <utility>

#include "filters/dmarc/org_domain.h"
#include "mta/dns/mail_domain.h"
#include "policy/section.h"

namespace moat::filters::helo {
namespace {

// The name as DNS knows it: one trailing dot (the absolute form) dropped, A-labels,
// lower-case; "" when it cannot be a name (leading dot, bad UTF-8, two trailing dots).
std::string dnsName(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty() || name.front() == '.' || name.back() == '.') return "";
  return dmarc::normalizeDomain(name);
}

// No label begins or ends with a hyphen (RFC 952, RFC 1123 §2.1); dmarc::validDomain has
// checked the rest.
bool hyphensInside(std::string_view name) {
  size_t start = 0;
  while (start <= name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string_view::npos) dot = name.size();
    std::string_view label = name.substr(start, dot - start);
    if (!label.empty() && (label.front() == '-' || label.back() == '-')) return false;
    start = dot + 1;
  }
  return true;
}

// The name as a reply shows it: bounded (formatReply replaces control characters).
std::string shown(std::string_view helo) { return "<" + std::string(helo.substr(0, 255)) + ">"; }

struct Settings {
  bool rejectInvalid = false, requireFqdn = false, rejectOwnName = false, rejectUnknown = false;
  OwnNames own;
  std::vector<mta::Network> allow;  // [connection] allow: never checked
};

Result refuse(int code, const char* enhanced, std::string_view helo, std::string_view why, std::string summary) {
  return Result::make(code >= 500 ? Verdict::Reject : Verdict::TempFail, code, enhanced,
                      shown(helo) + ": Helo command rejected: " + std::string(why), std::move(summary));
}

class HeloFilter : public Filter {
 public:
  explicit HeloFilter(Settings s) : s_(std::move(s)) {}
  std::string_view name() const override { return "helo"; }
  Stage stage() const override { return Stage::Mail; }

  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override {
    if (auto why = sparedBy(*ctx, s_.allow); !why.empty()) return done(Result::pass(std::string(why)));
    const std::string& helo = ctx->helo;
    const Form form = classify(helo);
    if (s_.rejectInvalid && form == Form::Invalid) return done(refuse(501, "5.5.2", helo, "Invalid name", "invalid"));
    if (s_.requireFqdn && (form == Form::Invalid || form == Form::Single))
      return done(refuse(504, "5.5.2", helo, "need fully-qualified hostname", "not_fqdn"));
    if (s_.rejectOwnName && s_.own.matches(helo))
      return done(refuse(550, "5.7.1", helo, "that is this gateway's name", "own_name"));
    if (!s_.rejectUnknown || form == Form::Literal) return done(Result::pass());
    if (form == Form::Invalid) return done(refuse(450, "4.7.1", helo, "Host not found", "unknown"));
    mta::dns::findMailDomain(*env.resolver, dnsName(helo), [helo, done = std::move(done)](mta::dns::MailDomain d) {
      Result r = Result::pass();
      if (d == mta::dns::MailDomain::NotFound) r = refuse(450, "4.7.1", helo, "Host not found", "unknown");
      if (d == mta::dns::MailDomain::TempFail)
        r = refuse(450, "4.7.1", helo, "Host not found (DNS lookup failed)", "tempfail");
      r.detail.add("dns", mta::dns::mailDomainName(d));
      done(std::move(r));
    });
  }

 private:
  Settings s_;
};

}  // namespace

Form classify(std::string_view name) {
  if (!name.empty() && name.front() == '[') return mta::parseAddressLiteral(name) ? Form::Literal : Form::Invalid;
  std::string n = dnsName(name);
  if (n.empty() || !dmarc::validDomain(n) || !hyphensInside(n)) return Form::Invalid;
  return n.find('.') == std::string::npos ? Form::Single : Form::Fqdn;
}

OwnNames OwnNames::of(const policy::Config& config) {
  OwnNames own;
  auto addName = [&own](std::string_view name) {
    std::string n = dnsName(name);
    if (!n.empty() && std::find(own.names.begin(), own.names.end(), n) == own.names.end()) own.names.push_back(n);
  };
  addName(config.hostname);
  for (const auto& r : config.routes)
    if (!r.heloName.empty()) addName(r.heloName);
  for (const auto& d : config.relayDomains)
    if (!d.empty() && d.front() != '.') addName(d);
  for (const auto& l : config.listeners) {
    auto ip = mta::IpAddress::parse(l.host);  // "*" and host names are no address
    const bool wildcard = ip && std::all_of(ip->bytes(), ip->bytes() + ip->size(), [](uint8_t b) { return b == 0; });
    if (ip && !wildcard) own.addresses.push_back(*ip);
  }
  return own;
}

bool OwnNames::matches(std::string_view helo) const {
  if (!helo.empty() && helo.front() == '[') {
    auto ip = mta::parseAddressLiteral(helo);
    return ip && std::find(addresses.begin(), addresses.end(), *ip) != addresses.end();
  }
  std::string n = dnsName(helo);
  return !n.empty() && std::find(names.begin(), names.end(), n) != names.end();
}

std::shared_ptr<const Filter> makeHeloFilter(const policy::Config& config, policy::Errors& errors) {
  policy::Section sec = config.section("helo", errors);
  Settings s;
  s.rejectInvalid = sec.getBool("reject_invalid", false);
  s.requireFqdn = sec.getBool("require_fqdn", false);
  s.rejectOwnName = sec.getBool("reject_own_name", false);
  s.rejectUnknown = sec.getBool("reject_unknown", false);
  sec.rejectUnknownKeys();
  if (!(s.rejectInvalid || s.requireFqdn || s.rejectOwnName || s.rejectUnknown) || errors.hasErrors()) return nullptr;
  s.own = OwnNames::of(config);
  s.allow = config.connectionAllow;
  return std::make_shared<HeloFilter>(std::move(s));
}

}  // namespace moat::filters::helo
