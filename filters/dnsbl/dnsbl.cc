// filters/dnsbl/dnsbl.cc — see dnsbl.h.
#include "filters/dnsbl/dnsbl.h"

#include <algorithm>
#include <vector>

namespace moat::filters::dnsbl {

std::string queryName(const mta::IpAddress& ip, std::string_view zone) {
  return ip.reversedLabels() + "." + std::string(zone);
}

namespace {

// What one answer address says: a listing (127.0.0.0/8), a refusal code (127.255.255.0/24,
// or 127.0.0.1, which is never a listing, RFC 5782 §5: lists answer it to refuse a query),
// or nothing (outside 127/8: a wildcarding resolver).
Listing addressSays(const mta::IpAddress& ip) {
  if (!ip.isV4() || ip.bytes()[0] != 127) return Listing::NotListed;
  bool loopback = ip.bytes()[1] == 0 && ip.bytes()[2] == 0 && ip.bytes()[3] == 1;
  return (ip.bytes()[1] == 255 && ip.bytes()[2] == 255) || loopback ? Listing::Refused : Listing::Listed;
}

}  // namespace

Listing classify(const mta::dns::Answer& a) {
  using mta::dns::Status;
  if (a.status == Status::NxDomain || a.status == Status::NoData) return Listing::NotListed;
  if (a.status != Status::Ok) return Listing::TempFail;
  bool listed = false, refused = false;
  for (const auto& ip : a.addresses) {
    Listing l = addressSays(ip);
    listed = listed || l == Listing::Listed;
    refused = refused || l == Listing::Refused;
  }
  return listed ? Listing::Listed : refused ? Listing::Refused : Listing::NotListed;
}

namespace {

// Lower-case, trailing dots dropped; nullopt when it is not a zone name.
std::optional<std::string> zoneName(std::string_view z) {
  std::string zone;
  for (char c : z) zone.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c);
  while (!zone.empty() && zone.back() == '.') zone.pop_back();
  bool ok = !zone.empty() && zone.size() <= 200 && zone.front() != '.' && zone.find("..") == std::string::npos &&
            zone.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-.") == std::string::npos;
  if (!ok) return std::nullopt;
  return zone;
}

// A decimal number of at most `max`, digits only, from the front of `s` (consumed).
std::optional<int64_t> number(std::string_view& s, int64_t max) {
  size_t n = 0;
  int64_t v = 0;
  while (n < s.size() && s[n] >= '0' && s[n] <= '9') {
    v = v * 10 + (s[n] - '0');
    if (v > max) return std::nullopt;
    ++n;
  }
  if (n == 0) return std::nullopt;
  s.remove_prefix(n);
  return v;
}

// One octet of a FILTER: N, [a..b], [a;b;c] or a mix ([a..b;c]), consumed from `s`.
bool parseOctet(std::string_view& s, std::vector<std::pair<uint8_t, uint8_t>>& out, std::string& error) {
  auto one = [&](std::string_view& t) -> std::optional<uint8_t> {
    auto v = number(t, 255);
    if (!v) error = "an octet must be a number from 0 to 255";
    return v ? std::optional<uint8_t>(static_cast<uint8_t>(*v)) : std::nullopt;
  };
  if (s.empty() || s.front() != '[') {
    auto v = one(s);
    if (!v) return false;
    out.push_back({*v, *v});
    return true;
  }
  s.remove_prefix(1);
  for (;;) {
    auto lo = one(s);
    if (!lo) return false;
    uint8_t hi = *lo;
    if (s.substr(0, 2) == "..") {
      s.remove_prefix(2);
      auto h = one(s);
      if (!h) return false;
      if (*h < *lo) {
        error = "range [" + std::to_string(*lo) + ".." + std::to_string(*h) + "] ends before it starts";
        return false;
      }
      hi = *h;
    }
    out.push_back({*lo, hi});
    if (!s.empty() && s.front() == ';') {
      s.remove_prefix(1);
      continue;
    }
    if (!s.empty() && s.front() == ']') {
      s.remove_prefix(1);
      return true;
    }
    error = "expected ';', '..' or ']' in an octet";
    return false;
  }
}

}  // namespace

std::vector<std::string> readZones(policy::Section& sec) {
  std::vector<std::string> zones;
  for (auto& z : sec.getStringArray("zones")) {
    auto zone = zoneName(z);
    if (!zone)
      sec.error("zones", "\"" + z + "\" is not a DNS zone name");
    else
      zones.push_back(*zone);
  }
  return zones;
}

std::string ZoneEntry::name() const {
  std::string out = zone;
  if (!filter.empty()) out += "=" + filter;
  if (weight != 1) out += "*" + std::to_string(weight);
  return out;
}

bool ZoneEntry::matches(const mta::dns::Answer& a) const {
  if (classify(a) != Listing::Listed) return false;
  for (const auto& ip : a.addresses) {
    if (addressSays(ip) != Listing::Listed) continue;
    if (filter.empty()) return true;
    bool all = true;
    for (size_t i = 0; i < 4 && all; ++i) {
      bool in = false;
      for (const auto& [lo, hi] : octets[i]) in = in || (ip.bytes()[i] >= lo && ip.bytes()[i] <= hi);
      all = in;
    }
    if (all) return true;
  }
  return false;
}

std::optional<ZoneEntry> parseZoneEntry(std::string_view text, std::string& error) {
  ZoneEntry e;
  std::string_view rest = text;
  size_t star = rest.rfind('*');
  if (star != std::string_view::npos) {
    std::string_view w = rest.substr(star + 1);
    rest = rest.substr(0, star);
    bool negative = !w.empty() && w.front() == '-';
    if (!w.empty() && (w.front() == '-' || w.front() == '+')) w.remove_prefix(1);
    auto v = number(w, ZoneEntry::kMaxWeight);
    if (!v || !w.empty()) {
      error = "the weight after '*' must be an integer from -" + std::to_string(ZoneEntry::kMaxWeight) + " to " +
              std::to_string(ZoneEntry::kMaxWeight);
      return std::nullopt;
    }
    e.weight = negative ? -*v : *v;
  }
  size_t eq = rest.find('=');
  auto zone = zoneName(rest.substr(0, eq));
  if (!zone) {
    error = "\"" + std::string(rest.substr(0, eq)) + "\" is not a DNS zone name";
    return std::nullopt;
  }
  e.zone = *zone;
  if (eq != std::string_view::npos) {
    std::string_view f = rest.substr(eq + 1);
    e.filter = std::string(f);
    for (size_t i = 0; i < 4; ++i) {
      if (i > 0) {
        if (f.empty() || f.front() != '.') {
          error = "the filter \"" + e.filter + "\" must be an IPv4 address pattern of four octets";
          return std::nullopt;
        }
        f.remove_prefix(1);
      }
      std::string why;
      if (!parseOctet(f, e.octets[i], why)) {
        error = "the filter \"" + e.filter + "\": " + why;
        return std::nullopt;
      }
    }
    if (!f.empty()) {
      error = "the filter \"" + e.filter + "\" must be an IPv4 address pattern of four octets";
      return std::nullopt;
    }
  }
  return e;
}

std::vector<ZoneEntry> readZoneEntries(policy::Section& sec) {
  std::vector<ZoneEntry> entries;
  for (auto& item : sec.getStringArrayItems("zones")) {
    std::string error;
    auto e = parseZoneEntry(item.value, error);
    if (!e)
      sec.errorAt(item.line, "zones", error);
    else
      entries.push_back(std::move(*e));
  }
  return entries;
}

namespace {

struct Settings {
  std::vector<ZoneEntry> entries;
  std::vector<std::string> zones;  // the distinct zones of `entries`, in order: each queried once
  std::vector<size_t> zoneOf;      // entries[i]'s index in `zones`
  int64_t threshold = 1;
  int64_t allowlistThreshold = 0;  // 0: off
  bool weighted = false;           // a weight, threshold or allowlist configured: the header shows the score
  bool reject = true;
  std::vector<mta::Network> allow;  // [connection] allow: never looked up
};

// Printable ASCII, bounded: a TXT record is the list's text, shown in our reply.
std::string replyText(std::string_view txt) {
  std::string out;
  for (char c : txt.substr(0, 200)) out.push_back(c >= ' ' && c <= '~' ? c : '?');
  return out;
}

class DnsblFilter : public Filter, public std::enable_shared_from_this<DnsblFilter> {
 public:
  explicit DnsblFilter(Settings s) : s_(std::move(s)) {}
  std::string_view name() const override { return "dnsbl"; }
  Stage stage() const override { return Stage::Mail; }

  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override {
    if (!looksUp(*ctx, s_.allow)) return done(Result::pass("skipped"));
    // Every zone at once; then, for a rejection, the TXT of the zone of the matching entry
    // of the largest weight (its words for the reply, RFC 5782 §2.1); then the result.
    struct State {
      std::vector<mta::dns::Answer> answers;
      size_t left = 0;
      Done done;
    };
    auto st = std::make_shared<State>();
    st->answers.resize(s_.zones.size());
    st->left = s_.zones.size();
    st->done = std::move(done);
    auto ip = ctx->clientIp;
    auto* resolver = env.resolver;
    auto self = shared_from_this();
    for (size_t i = 0; i < s_.zones.size(); ++i) {
      resolver->query(queryName(ip, s_.zones[i]), mta::dns::RrType::A,
                      [self, st, i, ip, resolver, ctx](const mta::dns::Answer& a) {
                        st->answers[i] = a;
                        if (--st->left == 0) self->answered(st->answers, ip, resolver, *ctx, std::move(st->done));
                      });
    }
  }

 private:
  void answered(const std::vector<mta::dns::Answer>& answers, const mta::IpAddress& ip, mta::dns::Resolver* resolver,
                MessageContext& ctx, Done done) const {
    std::vector<std::string> refused, failed;
    for (size_t i = 0; i < answers.size(); ++i) {
      Listing l = classify(answers[i]);
      if (l == Listing::Refused) refused.push_back(s_.zones[i]);
      if (l == Listing::TempFail) failed.push_back(s_.zones[i]);
    }
    // postscreen: each matching entry adds its weight once.
    int64_t score = 0;
    std::vector<std::string> matched;  // entries, as configured
    std::vector<std::string> zones;    // the zones of the matching entries of positive weight
    const ZoneEntry* top = nullptr;    // the matching entry of the largest weight
    for (size_t i = 0; i < s_.entries.size(); ++i) {
      const ZoneEntry& e = s_.entries[i];
      if (!e.matches(answers[s_.zoneOf[i]])) continue;
      score += e.weight;
      matched.push_back(e.name());
      if (e.weight > 0 && std::find(zones.begin(), zones.end(), e.zone) == zones.end()) zones.push_back(e.zone);
      if (!top || e.weight > top->weight) top = &e;
    }
    const bool listed = score >= s_.threshold;
    const bool allowlisted = !listed && s_.allowlistThreshold < 0 && score <= s_.allowlistThreshold;
    ctx.dnsblAllowlisted = allowlisted;
    std::string header;
    for (const auto& z : zones) header += (header.empty() ? "" : ",") + z;
    if (s_.weighted) header += "; score=" + std::to_string(score);
    auto finish = [listed, allowlisted, score, matched, refused, failed, header, ip, zone = top ? top->zone : "",
                   reject = s_.reject, done = std::move(done)](std::string txt) {
      Result r = Result::pass(listed ? "listed" : allowlisted ? "allowlisted" : "clean");
      if (listed) {
        if (reject) {
          std::string text = "Service unavailable; client [" + ip.str() + "] blocked using " + zone;
          if (!txt.empty()) text += "; " + txt;
          r = Result::reject(554, "5.7.1", text, "listed");
        } else {
          r.verdict = Verdict::Tag;
          r.headers.push_back({"X-Moat-DNSBL", header});
        }
      }
      if (!matched.empty()) {
        r.detail.add("score", score);
        r.detail.add("listed", matched);
      }
      if (!refused.empty()) r.detail.add("refused", refused);
      if (!failed.empty()) r.detail.add("tempfail", failed);
      done(std::move(r));
    };
    if (!listed || !s_.reject) return finish("");
    resolver->query(queryName(ip, top->zone), mta::dns::RrType::TXT, [finish](const mta::dns::Answer& t) {
      finish(t.status == mta::dns::Status::Ok && !t.txt.empty() ? replyText(t.txt.front()) : "");
    });
  }

  Settings s_;
};

}  // namespace

std::shared_ptr<const Filter> makeDnsblFilter(const policy::Config& config, policy::Errors& errors) {
  policy::Section sec = config.section("dnsbl", errors);
  Settings s;
  s.entries = readZoneEntries(sec);
  s.reject = sec.getEnum("action", "reject", {"reject", "tag"}) == "reject";
  s.threshold = sec.getInt("threshold", 1, 1, 100'000);
  s.allowlistThreshold = sec.getInt("allowlist_threshold", 0, -100'000, 0);
  sec.rejectUnknownKeys();
  if (s.entries.empty() || errors.hasErrors()) return nullptr;
  s.weighted = s.threshold != 1 || s.allowlistThreshold != 0;
  for (const auto& e : s.entries) {
    auto z = std::find(s.zones.begin(), s.zones.end(), e.zone);
    s.zoneOf.push_back(static_cast<size_t>(z - s.zones.begin()));
    if (z == s.zones.end()) s.zones.push_back(e.zone);
    s.weighted = s.weighted || e.weight != 1;
  }
  s.allow = config.connectionAllow;
  return std::make_shared<DnsblFilter>(std::move(s));
}

}  // namespace moat::filters::dnsbl
