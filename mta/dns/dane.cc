// mta/dns/dane.cc — see dane.h.
#include "mta/dns/dane.h"

namespace moat::mta::dns {

std::string tlsaName(std::string_view host, uint16_t port) {
  return "_" + std::to_string(port) + "._tcp." + std::string(host);
}

bool tlsaUsable(const TlsaRecord& r) {
  return (r.usage == 2 || r.usage == 3) && r.selector <= 1 && r.mtype <= 2 && !r.data.empty();
}

DaneHost decideDane(std::string_view host, uint16_t port, bool mxSecure, bool addressesSecure, const Answer* tlsa) {
  DaneHost d;
  d.base = std::string(host);
  d.names = {d.base};
  // RFC 7672 §2.2: without an authenticated MX RRset and authenticated addresses, TLSA
  // records (even signed ones) could belong to a host an attacker substituted.
  if (!mxSecure) {
    d.reason = "MX records not DNSSEC-authenticated";
    return d;
  }
  if (!addressesSecure) {
    d.reason = "address records of " + d.base + " not DNSSEC-authenticated";
    return d;
  }
  const std::string name = tlsaName(host, port);
  if (!tlsa) {
    d.level = DaneLevel::Defer;
    d.reason = "no TLSA lookup for " + name;
    return d;
  }
  switch (tlsa->status) {
    case Status::TempFail:
      // §2.2.1: the records may be there and withheld by an attacker: this host is not
      // used now (others may be), and never in plain text.
      d.level = DaneLevel::Defer;
      d.reason = "TLSA lookup for " + name + " failed: " + (tlsa->error.empty() ? "temporary failure" : tlsa->error);
      return d;
    case Status::Ok: break;
    default:  // NxDomain, NoData (signed or not), Malformed: no TLSA records, DANE does not apply
      d.reason = "no TLSA records at " + name;
      return d;
  }
  if (!tlsa->authenticated) {
    d.reason = "TLSA records at " + name + " not DNSSEC-authenticated";
    return d;
  }
  for (const auto& r : tlsa->tlsa)
    if (tlsaUsable(r)) d.records.push_back(r);
  if (d.records.empty()) {
    d.level = DaneLevel::Encrypt;
    d.reason = "no usable TLSA records at " + name;
    return d;
  }
  d.level = DaneLevel::Dane;
  d.reason = "TLSA records at " + name;
  return d;
}

std::vector<std::string> tlsaBaseDomains(std::string_view host, std::string_view expanded, bool chainSecure) {
  if (!chainSecure || expanded.empty() || expanded == host) return {std::string(host)};
  return {std::string(expanded), std::string(host)};
}

bool tlsaTryHostName(const Answer& atExpanded) {
  switch (atExpanded.status) {
    case Status::TempFail: return false;
    case Status::Ok: return !atExpanded.authenticated;
    default: return true;  // NxDomain, NoData, Malformed: no TLSA records there
  }
}

DaneHost decideDaneAlias(std::string_view host, std::string_view expanded, uint16_t port, const Answer& atExpanded,
                         const Answer* atHost) {
  const bool there = !tlsaTryHostName(atExpanded);
  DaneHost d = there ? decideDane(expanded, port, true, true, &atExpanded) : decideDane(host, port, true, true, atHost);
  // §3.2.2: the certificate may name either the host name the MX record (or route) gave, or
  // the name that alias expands to.
  d.names.push_back(std::string(there ? host : expanded));
  if (!there) d.reason += " (none usable at " + tlsaName(expanded, port) + ")";
  return d;
}

}  // namespace moat::mta::dns
