// mta/daemon/address_order.cc — see address_order.h.
#include "mta/daemon/address_order.h"

#include <algorithm>

namespace moat::mta::daemon {

std::vector<size_t> orderAddresses(const std::vector<AddressCandidate>& candidates,
                                   policy::AddressPreference preference, dns::Families families, size_t limit,
                                   std::mt19937_64& rng) {
  std::vector<size_t> order;
  for (size_t i = 0; i < candidates.size(); ++i)
    if (families.allows(candidates[i].ip)) order.push_back(i);
  // 0 for the family tried first; equal for both with Any (the shuffle below orders them).
  auto rank = [&](size_t i) {
    bool v4 = candidates[i].ip.isV4();
    switch (preference) {
      case policy::AddressPreference::Ipv6: return v4 ? 1 : 0;
      case policy::AddressPreference::Ipv4: return v4 ? 0 : 1;
      case policy::AddressPreference::Any: return 0;
    }
    return 0;
  };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (candidates[a].group != candidates[b].group) return candidates[a].group < candidates[b].group;
    return rank(a) < rank(b);
  });
  if (preference == policy::AddressPreference::Any) {
    for (auto first = order.begin(); first != order.end();) {
      auto last =
          std::find_if(first, order.end(), [&](size_t i) { return candidates[i].group != candidates[*first].group; });
      std::shuffle(first, last, rng);
      first = last;
    }
  }
  if (order.size() <= limit) return order;
  auto isV4 = [&](size_t i) { return candidates[i].ip.isV4(); };
  const bool kept4 = std::any_of(order.begin(), order.begin() + limit, isV4);
  const bool kept6 = !std::all_of(order.begin(), order.begin() + limit, isV4);
  auto missing = order.end();
  if (!kept4)
    missing = std::find_if(order.begin() + limit, order.end(), isV4);
  else if (!kept6)
    missing = std::find_if(order.begin() + limit, order.end(), [&](size_t i) { return !isV4(i); });
  const size_t best = missing == order.end() ? SIZE_MAX : *missing;
  order.resize(limit);
  if (best != SIZE_MAX && limit >= 2) order.back() = best;
  return order;
}

}  // namespace moat::mta::daemon
