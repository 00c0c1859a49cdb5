// mta/dns/resolver.cc — names for the Resolver interface's enums (logs, test output).
// Untrusted input: none. Logs: nothing.
#include "mta/dns/resolver.h"

#include <algorithm>

namespace moat::mta::dns {

std::string_view statusName(Status status) {
  switch (status) {
    case Status::Ok: return "ok";
    case Status::NxDomain: return "nxdomain";
    case Status::NoData: return "nodata";
    case Status::TempFail: return "tempfail";
    case Status::Malformed: return "malformed";
  }
  return "unknown";
}

std::string_view rrTypeName(RrType type) {
  switch (type) {
    case RrType::A: return "A";
    case RrType::CNAME: return "CNAME";
    case RrType::PTR: return "PTR";
    case RrType::MX: return "MX";
    case RrType::TXT: return "TXT";
    case RrType::AAAA: return "AAAA";
    case RrType::TLSA: return "TLSA";
  }
  return "?";
}

void shuffleEqualPreference(std::vector<MxRecord>& mx, std::mt19937_64& rng) {
  for (auto first = mx.begin(); first != mx.end();) {
    auto last = std::find_if(first, mx.end(), [&](const MxRecord& r) { return r.preference != first->preference; });
    std::shuffle(first, last, rng);
    first = last;
  }
}

}  // namespace moat::mta::dns
