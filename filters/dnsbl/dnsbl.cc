// filters/dnsbl/dnsbl.cc — see dnsbl.h.
#include "filters/dnsbl/dnsbl.h"

#include <vector>

namespace moat::filters::dnsbl {

std::string queryName(const mta::IpAddress& ip, std::string_view zone) {
  return ip.reversedLabels() + "." + std::string(zone);
}

Listing classify(const mta::dns::Answer& a) {
  using mta::dns::Status;
  if (a.status == Status::NxDomain || a.status == Status::NoData) return Listing::NotListed;
  if (a.status != Status::Ok) return Listing::TempFail;
  bool listed = false, refused = false;
  for (const auto& ip : a.addresses) {
    if (!ip.isV4() || ip.bytes()[0] != 127) continue;
    // 127.0.0.1 is never a listing (RFC 5782 §5): lists answer it to refuse a query.
    bool loopback = ip.bytes()[1] == 0 && ip.bytes()[2] == 0 && ip.bytes()[3] == 1;
    if ((ip.bytes()[1] == 255 && ip.bytes()[2] == 255) || loopback)
      refused = true;
    else
      listed = true;
  }
  return listed ? Listing::Listed : refused ? Listing::Refused : Listing::NotListed;
}

std::vector<std::string> readZones(policy::Section& sec) {
  std::vector<std::string> zones;
  for (auto& z : sec.getStringArray("zones")) {
    std::string zone;
    for (char c : z) zone.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c);
    while (!zone.empty() && zone.back() == '.') zone.pop_back();
    bool ok = !zone.empty() && zone.size() <= 200 && zone.front() != '.' && zone.find("..") == std::string::npos &&
              zone.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-.") == std::string::npos;
    if (!ok)
      sec.error("zones", "\"" + z + "\" is not a DNS zone name");
    else
      zones.push_back(zone);
  }
  return zones;
}

bool looksUp(const MessageContext& ctx, const std::vector<mta::Network>& allow) {
  if (ctx.fromRelayNetwork || ctx.authenticated) return false;
  for (const auto& n : allow)
    if (n.contains(ctx.clientIp)) return false;
  return true;
}

namespace {

struct Settings {
  std::vector<std::string> zones;
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
    // Every zone at once; then, for a rejection, the first listing zone's TXT (its words for
    // the reply, RFC 5782 §2.1); then the result, zones named in the configured order.
    struct State {
      std::vector<Listing> found;
      size_t left = 0;
      Done done;
    };
    auto st = std::make_shared<State>();
    st->found.assign(s_.zones.size(), Listing::NotListed);
    st->left = s_.zones.size();
    st->done = std::move(done);
    auto ip = ctx->clientIp;
    auto* resolver = env.resolver;
    auto self = shared_from_this();
    for (size_t i = 0; i < s_.zones.size(); ++i) {
      resolver->query(queryName(ip, s_.zones[i]), mta::dns::RrType::A,
                      [self, st, i, ip, resolver](const mta::dns::Answer& a) {
                        st->found[i] = classify(a);
                        if (--st->left == 0) self->answered(st->found, ip, resolver, std::move(st->done));
                      });
    }
  }

 private:
  void answered(const std::vector<Listing>& found, const mta::IpAddress& ip, mta::dns::Resolver* resolver,
                Done done) const {
    std::vector<std::string> listed, refused, failed;
    for (size_t i = 0; i < found.size(); ++i) {
      if (found[i] == Listing::Listed) listed.push_back(s_.zones[i]);
      if (found[i] == Listing::Refused) refused.push_back(s_.zones[i]);
      if (found[i] == Listing::TempFail) failed.push_back(s_.zones[i]);
    }
    auto finish = [listed, refused, failed, ip, reject = s_.reject, done = std::move(done)](std::string txt) {
      Result r = Result::pass(listed.empty() ? "clean" : "listed");
      if (!listed.empty()) {
        if (reject) {
          std::string text = "Service unavailable; client [" + ip.str() + "] blocked using " + listed.front();
          if (!txt.empty()) text += "; " + txt;
          r = Result::reject(554, "5.7.1", text, "listed");
        } else {
          std::string zones;
          for (const auto& z : listed) zones += (zones.empty() ? "" : ",") + z;
          r.verdict = Verdict::Tag;
          r.headers.push_back({"X-Moat-DNSBL", zones});
        }
        r.detail.add("listed", listed);
      }
      if (!refused.empty()) r.detail.add("refused", refused);
      if (!failed.empty()) r.detail.add("tempfail", failed);
      done(std::move(r));
    };
    if (listed.empty() || !s_.reject) return finish("");
    resolver->query(queryName(ip, listed.front()), mta::dns::RrType::TXT, [finish](const mta::dns::Answer& t) {
      finish(t.status == mta::dns::Status::Ok && !t.txt.empty() ? replyText(t.txt.front()) : "");
    });
  }

  Settings s_;
};

}  // namespace

std::shared_ptr<const Filter> makeDnsblFilter(const policy::Config& config, policy::Errors& errors) {
  policy::Section sec = config.section("dnsbl", errors);
  Settings s;
  s.zones = readZones(sec);
  s.reject = sec.getEnum("action", "reject", {"reject", "tag"}) == "reject";
  sec.rejectUnknownKeys();
  if (s.zones.empty() || errors.hasErrors()) return nullptr;
  s.allow = config.connectionAllow;
  return std::make_shared<DnsblFilter>(std::move(s));
}

}  // namespace moat::filters::dnsbl
