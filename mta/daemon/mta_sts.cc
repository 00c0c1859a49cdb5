// mta/daemon/mta_sts.cc — see mta_sts.h.
#include "mta/daemon/mta_sts.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "mta/daemon/https_client.h"
#include "mta/runtime/durable_file.h"
#include "mta/runtime/fd.h"
#include "mta/runtime/log.h"
#include "mta/runtime/uv.h"

namespace moat::mta::sts {

namespace {
std::string errnoText(int err, const std::string& what) { return what + ": " + std::strerror(err); }
}  // namespace

std::function<void()> fetchPolicy(uv_loop_t* loop, dns::Resolver& resolver, const std::string& domain,
                                  std::shared_ptr<tls::TlsContext> tls, uint64_t timeoutMs, uint16_t port,
                                  std::function<void(std::shared_ptr<Policy>, const std::string& error)> done,
                                  dns::Families families, https::Source source) {
  https::Request r;
  r.source = std::move(source);
  r.host = "mta-sts." + domain;
  r.port = port;
  r.what = "policy fetch";
  r.maxBody = 65536;
  r.text = "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: " + r.host +
           "\r\nUser-Agent: Moat\r\nAccept: text/plain\r\nConnection: close\r\n\r\n";
  return https::exchange(
      loop, resolver, std::move(tls), timeoutMs, std::move(r),
      [done = std::move(done)](const HttpResponse* response, const std::string& error) {
        if (!response) return done(nullptr, error);
        if (response->status() != 200)  // §3.3: only a 200; redirects are not followed
          return done(nullptr, "HTTP status " + std::to_string(response->status()));
        auto p = std::make_shared<Policy>();
        std::string why;
        if (!parsePolicy(response->body(), *p, why)) return done(nullptr, "invalid policy: " + why);
        done(std::move(p), "");
      },
      families);
}

PolicyCache::PolicyCache(uv_loop_t* loop, dns::Resolver* resolver, uint16_t httpsPort, std::string file)
    : loop_(loop), resolver_(resolver), httpsPort_(httpsPort), file_(std::move(file)) {}

PolicyCache::~PolicyCache() { *alive_ = false; }

int64_t PolicyCache::wallNow() const {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch() + skew_)
      .count();
}

size_t PolicyCache::load() {
  if (file_.empty()) return 0;
  auto broken = [this](const std::string& why) {
    log::warn("mta_sts").add("file", file_).add("reason", "cache file ignored: " + why);
    return size_t{0};
  };
  UniqueFd f(::open(file_.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (f.get() < 0) {
    if (errno == ENOENT) return 0;  // the first start, or no policy was ever fetched
    return broken(errnoText(errno, "open"));
  }
  struct stat st {};
  if (::fstat(f.get(), &st) != 0) return broken(errnoText(errno, "stat"));
  if (!S_ISREG(st.st_mode)) return broken("not a regular file");
  if (static_cast<uint64_t>(st.st_size) > kMaxFileBytes)
    return broken("over " + std::to_string(kMaxFileBytes) + " octets");
  std::string text;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(f.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return broken(errnoText(errno, "read"));
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > kMaxFileBytes) return broken("over " + std::to_string(kMaxFileBytes) + " octets");
  }
  std::vector<CachedPolicy> entries;
  std::string error;
  const int64_t wall = wallNow();
  if (!decodeCache(text, wall, kMaxEntries, entries, error)) return broken(error);
  const auto steady = now();
  // The file lists the policies that expire last first: those count as the most recently used.
  for (auto e = entries.rbegin(); e != entries.rend(); ++e)
    store(e->domain, std::make_shared<const Policy>(std::move(e->policy)),
          steady + std::chrono::seconds(e->expires - wall));
  return cache_.size();
}

const PolicyCache::Entry* PolicyCache::cached(const std::string& domain) const {
  auto it = cache_.find(domain);
  if (it == cache_.end() || it->second.expires <= now()) return nullptr;
  return &it->second;
}

void PolicyCache::put(const std::string& domain, std::shared_ptr<const Policy> policy) {
  const auto expires = now() + std::chrono::seconds(policy->maxAge);
  store(domain, std::move(policy), expires);
  save();
}

void PolicyCache::store(const std::string& domain, std::shared_ptr<const Policy> policy,
                        std::chrono::steady_clock::time_point expires) {
  if (auto it = cache_.find(domain); it != cache_.end()) erase(it);
  const size_t bytes = cacheLineBytes(domain, *policy);
  if (bytes > kMaxBytes) return;  // parsePolicy's bounds keep a policy far below it
  if (cache_.size() >= kMaxEntries || bytes_ + bytes > kMaxBytes) {
    // Full: the expired go first, then the least recently used, until this one fits.
    dropExpired();
    while (!lru_.empty() && (cache_.size() >= kMaxEntries || bytes_ + bytes > kMaxBytes))
      erase(cache_.find(lru_.back()));
  }
  lru_.push_front(domain);
  cache_[domain] = {std::move(policy), expires, bytes, lru_.begin()};
  bytes_ += bytes;
}

void PolicyCache::erase(std::map<std::string, Entry>::iterator it) {
  bytes_ -= it->second.bytes;
  lru_.erase(it->second.used);
  cache_.erase(it);
}

size_t PolicyCache::dropExpired() {
  const auto t = now();
  size_t dropped = 0;
  for (auto it = cache_.begin(); it != cache_.end();) {
    auto next = std::next(it);
    if (it->second.expires <= t) {
      erase(it);
      ++dropped;
    }
    it = next;
  }
  return dropped;
}

void PolicyCache::touch(const std::string& domain) {
  if (auto it = cache_.find(domain); it != cache_.end()) lru_.splice(lru_.begin(), lru_, it->second.used);
}

void PolicyCache::save() {
  if (file_.empty()) return;
  if (writing_) {
    dirty_ = true;  // written again when this write is done
    return;
  }
  // The contents are made here, on the loop (at most kMaxFileBytes, after a fetch: rare);
  // the disk work goes to the pool.
  const auto t = now();
  const int64_t wall = wallNow();
  std::vector<CachedPolicy> entries;
  entries.reserve(cache_.size());
  for (const auto& [domain, e] : cache_) {
    if (e.expires <= t) continue;
    entries.push_back(
        {domain, *e.policy, wall + std::chrono::duration_cast<std::chrono::seconds>(e.expires - t).count()});
  }
  auto text = std::make_shared<std::string>(encodeCache(std::move(entries), kMaxEntries, kMaxFileBytes));
  auto error = std::make_shared<std::string>();
  writing_ = true;
  dirty_ = false;
  auto alive = alive_;
  uv::queueWork(
      loop_, [path = file_, text, error] { *error = writeFileDurably(path, *text).text(); },
      [this, alive, error] {
        if (!*alive) return;
        writing_ = false;
        if (!error->empty()) log::warn("mta_sts").add("file", file_).add("reason", "cache file not written: " + *error);
        if (dirty_) save();
      });
}

void PolicyCache::finish(const std::string& domain, std::shared_ptr<const Policy> fetched, const std::string& error,
                         bool refresh) {
  std::shared_ptr<const Policy> result;
  if (fetched) {
    put(domain, fetched);
    result = fetched;
  } else {
    const Entry* c = cached(domain);  // §5.1: a failed refresh leaves an unexpired policy in force
    if (c) result = c->policy;
    log::warn("mta_sts")
        .add("domain", domain)
        .add("reason", (refresh ? "policy refresh failed: " : "policy fetch failed: ") + error)
        .add("cached", result ? std::string(modeName(result->mode)) + " id=" + result->id : std::string("none"));
  }
  auto it = fetches_.find(domain);
  if (it == fetches_.end()) return;
  auto waiters = std::move(it->second.waiters);
  auto ended = std::move(it->second.ended);
  fetches_.erase(it);
  answeringFailure_ = fetched ? "" : error;
  for (auto& w : waiters) w(result, false);
  answeringFailure_.clear();
  if (ended) ended();
}

void PolicyCache::startFetch(const std::string& domain, const std::string& id, std::shared_ptr<tls::TlsContext> tls,
                             uint64_t timeoutMs, dns::Families families) {
  auto alive = alive_;
  const bool refresh = fetches_[domain].waiters.empty();  // nobody waits: a background refresh
  auto cancel = fetchPolicy(
      loop_, *resolver_, domain, std::move(tls), timeoutMs, httpsPort_,
      [this, alive, domain, id, refresh](std::shared_ptr<Policy> p, const std::string& err) {
        if (!*alive || stopped_) return;  // stop() has answered the waiters
        if (p) p->id = id;
        finish(domain, std::move(p), err, refresh);
      },
      families, source_);
  // The fetch may have ended already (no TLS context): then its entry is gone.
  if (auto it = fetches_.find(domain); it != fetches_.end()) it->second.cancel = std::move(cancel);
}

void PolicyCache::stop() {
  if (stopped_) return;
  stopped_ = true;
  sweepQueue_.clear();
  auto fetches = std::move(fetches_);
  fetches_.clear();
  for (auto& [domain, f] : fetches) {
    if (f.cancel) f.cancel();  // closes its connection and timer; its callback sees stopped_
    log::warn("mta_sts")
        .add("domain", domain)
        .add("reason", "policy fetch cancelled: Moat is stopping")
        .add("waiting", static_cast<uint64_t>(f.waiters.size()));
    for (auto& w : f.waiters) w(nullptr, true);
    if (f.ended) f.ended();
  }
}

size_t PolicyCache::sweep(std::shared_ptr<tls::TlsContext> tls, uint64_t timeoutMs, dns::Families families) {
  if (stopped_) return 0;
  if (dropExpired() != 0) save();
  if (!tls) return 0;
  sweepTls_ = std::move(tls);
  sweepTimeoutMs_ = timeoutMs;
  sweepFamilies_ = families;
  // What the last sweep has not come to yet is looked at again here.
  sweepQueue_.clear();
  for (const auto& [domain, e] : cache_)
    if (due(e) && !fetching(domain)) sweepQueue_.push_back(domain);
  const size_t found = sweepQueue_.size();
  pumpSweep();
  return found;
}

void PolicyCache::pumpSweep() {
  // A refresh that ends at once (an answer from the resolver's cache, a fetch that cannot
  // start) comes back here: the loop below goes on with it instead of recursing.
  if (pumping_) return;
  pumping_ = true;
  while (!stopped_ && sweepActive_ < kMaxSweepFetches && !sweepQueue_.empty()) {
    std::string domain = std::move(sweepQueue_.front());
    sweepQueue_.pop_front();
    const Entry* c = cached(domain);
    if (!c || !due(*c) || fetching(domain)) continue;  // refreshed or gone meanwhile
    ++sweepActive_;
    sweepRefresh(domain);
  }
  pumping_ = false;
}

void PolicyCache::sweepRefresh(const std::string& domain) {
  auto alive = alive_;
  resolver_->query("_mta-sts." + domain, dns::RrType::TXT, [this, alive, domain](const dns::Answer& a) {
    if (!*alive) return;
    auto turnOver = [this] {
      --sweepActive_;
      pumpSweep();
    };
    std::string error;
    std::string id = a.status == dns::Status::Ok ? parseTxt(a.txt, error) : "";
    const bool lookupFailed =
        a.status != dns::Status::Ok && a.status != dns::Status::NxDomain && a.status != dns::Status::NoData;
    const Entry* c = cached(domain);
    // As get() decides: the record gone (§8.3) lets the policy run out; a delivery's own
    // refresh may have started meanwhile.
    if (stopped_ || !c || fetching(domain) || (id.empty() && !lookupFailed)) return turnOver();
    fetches_[domain].ended = turnOver;
    startFetch(domain, id.empty() ? c->policy->id : id, sweepTls_, sweepTimeoutMs_, sweepFamilies_);
  });
}

void PolicyCache::get(const std::string& domain, std::shared_ptr<tls::TlsContext> tls, uint64_t timeoutMs,
                      dns::Families families, Done done) {
  auto alive = alive_;
  resolver_->query(
      "_mta-sts." + domain, dns::RrType::TXT,
      [this, alive, domain, tls, timeoutMs, families, done = std::move(done)](const dns::Answer& a) mutable {
        if (!*alive) return;
        std::string error;
        std::string id = a.status == dns::Status::Ok ? parseTxt(a.txt, error) : "";
        const Entry* c = cached(domain);
        std::shared_ptr<const Policy> policy = c ? c->policy : nullptr;
        if (c) touch(domain);  // a delivery uses it: the last to be evicted
        // §5.1: refresh a policy in use before it expires, without making this delivery
        // wait: when the record names its id, or when the lookup failed (an attacker who
        // blocks DNS must not let it run out). Not when the record is gone (§8.3).
        const bool lookupFailed =
            a.status != dns::Status::Ok && a.status != dns::Status::NxDomain && a.status != dns::Status::NoData;
        if (c && (id == c->policy->id || (id.empty() && lookupFailed)) && !stopped_ && !fetching(domain) &&
            c->expires - now() < std::chrono::seconds(c->policy->maxAge / kRefreshDivisor)) {
          fetches_[domain];
          startFetch(domain, c->policy->id, tls, timeoutMs, families);
        }
        // §3.1/§5.1: no (usable) record, or a DNS failure: a cached policy that has not
        // expired still applies; otherwise there is none. The same id: the cached one.
        if (id.empty() || (policy && policy->id == id)) return done(policy, false);
        if (stopped_) return done(nullptr, true);
        auto& f = fetches_[domain];
        f.waiters.push_back(std::move(done));
        if (f.waiters.size() > 1 || f.cancel) return;  // a fetch is under way: share it
        startFetch(domain, id, tls, timeoutMs, families);
      });
}

}  // namespace moat::mta::sts
