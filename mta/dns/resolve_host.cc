// mta/dns/resolve_host.cc — see resolve_host.h.
#include "mta/dns/resolve_host.h"

#include <memory>
#include <string>

namespace moat::mta::dns {
namespace {

struct Pair {
  SecureHostCallback cb;
  int left = 2;
  Answer v6, v4;
};

Status combine(const Answer& v6, const Answer& v4) {
  if (v6.status == Status::Ok || v4.status == Status::Ok) return Status::Ok;
  for (Status s : {Status::TempFail, Status::Malformed, Status::NxDomain})
    if (v6.status == s || v4.status == s) return s;
  return Status::NoData;
}

void finishOne(const std::shared_ptr<Pair>& p) {
  if (--p->left > 0) return;
  std::vector<IpAddress> all = p->v6.addresses;
  all.insert(all.end(), p->v4.addresses.begin(), p->v4.addresses.end());
  Status s = combine(p->v6, p->v4);
  const bool found6 = p->v6.status == Status::Ok, found4 = p->v4.status == Status::Ok;
  const bool authenticated = (found6 || found4) && (!found6 || p->v6.authenticated) && (!found4 || p->v4.authenticated);
  std::string canonical = found6 ? p->v6.canonical : p->v4.canonical;
  if (found6 && found4 && p->v6.canonical != p->v4.canonical) canonical.clear();
  auto cb = std::move(p->cb);
  cb(s, std::move(all), authenticated, std::move(canonical));
}

}  // namespace

void resolveHost(Resolver& resolver, std::string_view name, HostCallback cb, Families families) {
  resolveHostSecure(
      resolver, name,
      [cb = std::move(cb)](Status s, std::vector<IpAddress> ips, bool, std::string) { cb(s, std::move(ips)); },
      families);
}

void resolveHostSecure(Resolver& resolver, std::string_view name, SecureHostCallback cb, Families families) {
  auto p = std::make_shared<Pair>();
  p->cb = std::move(cb);
  p->v6.status = p->v4.status = Status::NoData;                 // a family not asked for has nothing
  p->left = (families.v6 ? 1 : 0) + (families.v4 ? 1 : 0) + 1;  // +1: none finishes before both started
  const std::string host(name);  // `name` may not outlive the first callback
  if (families.v6)
    resolver.query(host, RrType::AAAA, [p](const Answer& a) {
      p->v6 = a;
      finishOne(p);
    });
  if (families.v4)
    resolver.query(host, RrType::A, [p](const Answer& a) {
      p->v4 = a;
      finishOne(p);
    });
  finishOne(p);
}

}  // namespace moat::mta::dns
