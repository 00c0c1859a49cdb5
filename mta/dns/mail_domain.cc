// mta/dns/mail_domain.cc — see mail_domain.h.
#include "mta/dns/mail_domain.h"

#include <string>
#include <utility>

#include "mta/dns/resolve_host.h"

namespace moat::mta::dns {

std::string_view mailDomainName(MailDomain d) {
  switch (d) {
    case MailDomain::Exists: return "exists";
    case MailDomain::NullMx: return "null_mx";
    case MailDomain::NotFound: return "not_found";
    case MailDomain::TempFail: return "tempfail";
  }
  return "tempfail";
}

void findMailDomain(Resolver& resolver, std::string_view name, std::function<void(MailDomain)> cb) {
  std::string host(name);  // `name` may not outlive the first callback
  resolver.query(host, RrType::MX, [&resolver, host, cb = std::move(cb)](const Answer& mx) mutable {
    switch (mx.status) {
      case Status::Ok:
        // A null MX is the one record of its name (RFC 7505 §3); one among others is an
        // error of the domain's, and the other hosts still take mail.
        return cb(mx.mx.size() == 1 && mx.mx[0].exchange.empty() ? MailDomain::NullMx : MailDomain::Exists);
      case Status::NxDomain:
      case Status::Malformed: return cb(MailDomain::NotFound);
      case Status::TempFail: return cb(MailDomain::TempFail);
      case Status::NoData: break;
    }
    resolveHost(resolver, host, [cb = std::move(cb)](Status s, std::vector<IpAddress>) {
      cb(s == Status::Ok ? MailDomain::Exists : s == Status::TempFail ? MailDomain::TempFail : MailDomain::NotFound);
    });
  });
}

}  // namespace moat::mta::dns
