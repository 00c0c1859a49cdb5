// filters/uribl/uribl.cc — see uribl.h.
#include "filters/uribl/uribl.h"

#include <unordered_set>

#include "filters/dmarc/org_domain.h"
#include "filters/dnsbl/dnsbl.h"
#include "filters/mime/mime.h"
#include "mta/runtime/ip.h"
#include "mta/runtime/scan.h"

namespace moat::filters::uribl {

namespace {

bool startsWithNoCase(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && mta::iequalsAscii(s.substr(0, prefix.size()), prefix);
}

bool allDigits(std::string_view s) { return !s.empty() && s.find_first_not_of("0123456789") == std::string_view::npos; }

// `host` is `domain` or below it.
bool within(std::string_view host, std::string_view domain) {
  if (host == domain) return true;
  return host.size() > domain.size() && host.compare(host.size() - domain.size(), domain.size(), domain) == 0 &&
         host[host.size() - domain.size() - 1] == '.';
}

// Names longer than a DNS name are junk: never handed to libidn2 or the suffix list.
constexpr size_t kMaxHost = 253;

}  // namespace

std::vector<std::string> uriHosts(std::string_view uri) {
  std::vector<std::string> out;
  if (startsWithNoCase(uri, "mailto:")) {
    std::string_view to = uri.substr(7);
    to = to.substr(0, to.find('?'));
    while (!to.empty()) {
      size_t comma = to.find(',');
      std::string_view addr = to.substr(0, comma);
      size_t at = addr.rfind('@');
      if (at != std::string_view::npos && at + 1 < addr.size()) out.emplace_back(addr.substr(at + 1));
      if (comma == std::string_view::npos) break;
      to.remove_prefix(comma + 1);
    }
    return out;
  }
  // The MIME filter writes bare www. hosts as http:// URIs.
  std::string_view rest;
  for (std::string_view scheme : {"http://", "https://", "ftp://"})
    if (startsWithNoCase(uri, scheme)) rest = uri.substr(scheme.size());
  // Browsers read a backslash as a slash in these schemes.
  std::string_view authority = rest.substr(0, rest.find_first_of("/?#\\"));
  size_t at = authority.rfind('@');
  if (at != std::string_view::npos) authority.remove_prefix(at + 1);
  if (authority.empty() || authority.front() == '[') return out;  // IPv6 literals are not looked up
  authority = authority.substr(0, authority.find(':'));
  if (!authority.empty()) out.emplace_back(authority);
  return out;
}

namespace {

// The host lower-case, internationalized labels as A-labels, without the trailing dot; ""
// when it is no usable name.
std::string normalizedHost(std::string_view host) {
  if (host.empty() || host.size() > kMaxHost) return "";
  std::string name = dmarc::normalizeDomain(host);
  if (!dmarc::validDomain(name) || name.find('.') == std::string::npos) return "";
  return name;
}

Target reduce(const std::string& name) {
  std::string_view last = std::string_view(name).substr(name.rfind('.') + 1);
  if (allDigits(last)) {
    // A dotted quad is looked up reversed (RFC 5782 §2.1); other all-numeric names (a
    // shortened "10.1" or a decimal "3232235777" that browsers also read as addresses) are
    // neither addresses nor domains a list could hold.
    auto ip = mta::IpAddress::parse(name);
    if (!ip || !ip->isV4()) return {};
    return {ip->str(), ip->reversedLabels()};
  }
  if (dmarc::isPublicSuffix(name)) return {};
  std::string org = dmarc::organizationalDomain(name);
  return {org, org};
}

}  // namespace

Target targetOf(std::string_view host) {
  std::string name = normalizedHost(host);
  return name.empty() ? Target{} : reduce(name);
}

Targets targets(const std::vector<std::string>& uris, const std::vector<std::string>& exempt, size_t max) {
  Targets out;
  std::unordered_set<std::string> seen;
  for (const auto& uri : uris) {
    for (const auto& host : uriHosts(uri)) {
      std::string name = normalizedHost(host);
      if (name.empty()) continue;
      bool skip = false;
      for (const auto& e : exempt) skip = skip || within(name, e);
      if (skip) continue;
      Target t = reduce(name);
      if (t.name.empty() || seen.count(t.name)) continue;
      if (out.list.size() == max) {
        out.truncated = true;
        return out;
      }
      seen.insert(t.name);
      out.list.push_back(std::move(t));
    }
  }
  return out;
}

namespace {

struct Settings {
  std::vector<std::string> zones;
  Verdict action = Verdict::Tag;  // Reject, Quarantine or Tag
  size_t maxLookups = 20;
  std::vector<std::string> exempt;  // exempt_domains and relay.domains, normalized
  std::vector<mta::Network> allow;  // [connection] allow: never looked up
};

// Past this many URIs the reduction (IDNA, the suffix list) goes to the thread pool.
constexpr size_t kInlineUris = 64;

std::string joined(const std::vector<std::string>& items, std::string_view sep) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : std::string(sep)) + s;
  return out;
}

class UriblFilter : public Filter, public std::enable_shared_from_this<UriblFilter> {
 public:
  explicit UriblFilter(Settings s) : s_(std::move(s)) {}
  std::string_view name() const override { return "uribl"; }
  Stage stage() const override { return Stage::Data; }
  mime::Depth mimeDepth() const override { return mime::Depth::Text; }  // Message::uris

  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override {
    if (!looksUp(*ctx, s_.allow)) return done(Result::pass("skipped"));
    auto mime = ctx->mime;
    if (!mime || mime->uris.empty()) return lookUp({}, env.resolver, std::move(done));
    if (mime->uris.size() <= kInlineUris)
      return lookUp(targets(mime->uris, s_.exempt, s_.maxLookups), env.resolver, std::move(done));
    auto found = std::make_shared<Targets>();
    auto self = shared_from_this();
    env.offload([self, mime, found] { *found = targets(mime->uris, self->s_.exempt, self->s_.maxLookups); },
                [self, found, resolver = env.resolver, done = std::move(done)]() mutable {
                  self->lookUp(std::move(*found), resolver, std::move(done));
                });
  }

 private:
  // Every name in every zone at once; the result once all have answered (each query ends
  // by the resolver's timeout at the latest).
  void lookUp(Targets t, mta::dns::Resolver* resolver, Done done) const {
    if (t.list.empty()) return done(result(t, {}));
    struct State {
      Targets t;
      std::vector<dnsbl::Listing> found;  // [target * zones + zone]
      size_t left = 0;
      Done done;
    };
    auto st = std::make_shared<State>();
    st->t = std::move(t);
    st->found.assign(st->t.list.size() * s_.zones.size(), dnsbl::Listing::NotListed);
    st->left = st->found.size();
    st->done = std::move(done);
    auto self = shared_from_this();
    for (size_t i = 0; i < st->t.list.size(); ++i) {
      for (size_t z = 0; z < s_.zones.size(); ++z) {
        size_t k = i * s_.zones.size() + z;
        resolver->query(st->t.list[i].label + "." + s_.zones[z], mta::dns::RrType::A,
                        [self, st, k](const mta::dns::Answer& a) {
                          st->found[k] = dnsbl::classify(a);
                          if (--st->left == 0) st->done(self->result(st->t, st->found));
                        });
      }
    }
  }

  Result result(const Targets& t, const std::vector<dnsbl::Listing>& found) const {
    std::vector<std::string> listed;  // "ZONE=DOMAIN", targets in order, then zones
    std::vector<bool> refused(s_.zones.size()), failed(s_.zones.size());
    std::string firstDomain, firstZone;
    for (size_t k = 0; k < found.size(); ++k) {
      const auto& zone = s_.zones[k % s_.zones.size()];
      const auto& domain = t.list[k / s_.zones.size()].name;
      if (found[k] == dnsbl::Listing::Listed) {
        if (listed.empty()) firstDomain = domain, firstZone = zone;
        listed.push_back(zone + "=" + domain);
      }
      if (found[k] == dnsbl::Listing::Refused) refused[k % s_.zones.size()] = true;
      if (found[k] == dnsbl::Listing::TempFail) failed[k % s_.zones.size()] = true;
    }
    Result r = Result::pass("clean");
    if (!listed.empty()) {
      std::string what = "URI " + firstDomain + " listed by " + firstZone;
      if (s_.action == Verdict::Reject) {
        r = Result::reject(554, "5.7.1", "Message refused: " + what, "listed");
      } else if (s_.action == Verdict::Quarantine) {
        r = Result::quarantine(what, "listed");
      } else {
        r.summary = "listed";
        r.verdict = Verdict::Tag;
      }
      // Tagged or quarantined mail says why; a refused message is never delivered.
      if (s_.action != Verdict::Reject) r.headers.push_back({"X-Moat-URIBL", joined(listed, ", ")});
      r.detail.add("listed", listed);
    }
    std::vector<std::string> refusedZones, failedZones;
    for (size_t z = 0; z < s_.zones.size(); ++z) {
      if (refused[z]) refusedZones.push_back(s_.zones[z]);
      if (failed[z]) failedZones.push_back(s_.zones[z]);
    }
    if (!refusedZones.empty()) r.detail.add("refused", refusedZones);
    if (!failedZones.empty()) r.detail.add("tempfail", failedZones);
    r.detail.add("domains", static_cast<uint64_t>(t.list.size()));
    if (t.truncated) r.detail.add("truncated", true);
    return r;
  }

  Settings s_;
};

}  // namespace

std::shared_ptr<const Filter> makeUriblFilter(const policy::Config& config, policy::Errors& errors) {
  policy::Section sec = config.section("uribl", errors);
  Settings s;
  s.zones = dnsbl::readZones(sec);
  auto action = sec.getEnum("action", "tag", {"reject", "quarantine", "tag"});
  s.action = action == "reject" ? Verdict::Reject : action == "quarantine" ? Verdict::Quarantine : Verdict::Tag;
  s.maxLookups = static_cast<size_t>(sec.getInt("max_lookups", 20, 1, 1000));
  for (const auto& item : sec.getStringArrayItems("exempt_domains")) {
    std::string d = dmarc::normalizeDomain(item.value);
    if (!dmarc::validDomain(d))
      sec.errorAt(item.line, "exempt_domains", "\"" + item.value + "\" is not a domain name");
    else
      s.exempt.push_back(d);
  }
  sec.rejectUnknownKeys();
  if (s.zones.empty() || errors.hasErrors()) return nullptr;
  // The accepted domains are the organisation's own: their links are never looked up.
  for (const auto& d : config.relayDomains) {
    // ".example.test" (its subdomains) exempts example.test with them: the same organisation.
    std::string n = dmarc::normalizeDomain(std::string_view(d).substr(d.rfind('.', 0) == 0 ? 1 : 0));
    if (dmarc::validDomain(n)) s.exempt.push_back(n);
  }
  s.allow = config.connectionAllow;
  return std::make_shared<UriblFilter>(std::move(s));
}

}  // namespace moat::filters::uribl
