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
  // Postfix's smtp_balance_inet_protocols: cut to `limit` as is, a destination that lists
  // mostly one family can leave the other no slot, and when that family is the one not
  // routed here every attempt fails although the other would have worked. So each family
  // keeps up to half the slots (all of its addresses when it has fewer), the other family
  // takes the rest, and an odd slot goes to the family of the first address.
  auto isV4 = [&](size_t i) { return candidates[i].ip.isV4(); };
  const size_t v4 = static_cast<size_t>(std::count_if(order.begin(), order.end(), isV4));
  const size_t v6 = order.size() - v4;
  if (v4 == 0 || v6 == 0) {
    order.resize(limit);
    return order;
  }
  const size_t half = limit / 2;
  size_t keep4 = 0;
  if (v6 <= half)
    keep4 = limit - v6;
  else if (v4 <= half)
    keep4 = v4;
  else
    keep4 = (limit + (isV4(order.front()) ? 1 : 0)) / 2;
  size_t keep6 = limit - keep4;
  // The first keep4 IPv4 and keep6 IPv6 addresses, in the order found above.
  std::vector<size_t> kept;
  kept.reserve(limit);
  for (size_t i : order) {
    size_t& left = isV4(i) ? keep4 : keep6;
    if (left == 0) continue;
    kept.push_back(i);
    --left;
  }
  return kept;
}

}  // namespace moat::mta::daemon
