// mta/dns/client_name.cc — see client_name.h.
#include "mta/dns/client_name.h"

#include <algorithm>
#include <memory>
#include <vector>

namespace moat::mta::dns {
namespace {

// The forward lookups of one client's PTR names, shared by their callbacks.
struct Check {
  IpAddress client;
  std::vector<std::string> names;  // valid, distinct, in the PTR answer's order
  std::vector<bool> confirmed;     // parallel to names
  bool forwardFailed = false;      // a forward lookup failed temporarily
  size_t left = 0;
  std::function<void(ClientName)> cb;
};

void finish(const std::shared_ptr<Check>& c, ClientName::Status none) {
  ClientName out;
  out.status = c->forwardFailed ? ClientName::Status::TempFail : none;
  for (size_t i = 0; i < c->names.size(); ++i)
    if (c->confirmed[i]) {
      out = {ClientName::Status::Confirmed, c->names[i]};
      break;
    }
  auto cb = std::move(c->cb);
  cb(std::move(out));
}

}  // namespace

std::optional<std::string> normalizeHostname(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty() || name.size() > 253) return std::nullopt;
  std::string out;
  out.reserve(name.size());
  size_t label = 0;
  bool numeric = true;
  for (size_t i = 0; i < name.size(); ++i) {
    char ch = name[i];
    if (ch == '.') {
      if (label == 0 || out.back() == '-') return std::nullopt;  // empty label, or ends with '-'
      label = 0;
    } else if (ch == '-') {
      if (label == 0) return std::nullopt;  // a label does not start with '-'
      numeric = false;
      ++label;
    } else if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')) {
      if (ch > '9') numeric = false;
      if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
      ++label;
    } else {
      return std::nullopt;  // '_', '\\' (c-ares' escapes), spaces, 8-bit bytes, controls
    }
    if (label > 63) return std::nullopt;
    out.push_back(ch);
  }
  if (label == 0 || out.back() == '-' || numeric) return std::nullopt;  // "a.test..": an empty last label
  return out;
}

std::string_view clientNameStatusName(ClientName::Status s) {
  switch (s) {
    case ClientName::Status::Confirmed: return "confirmed";
    case ClientName::Status::NotConfirmed: return "not_confirmed";
    case ClientName::Status::NoPtr: return "no_ptr";
    case ClientName::Status::TempFail: return "tempfail";
  }
  return "tempfail";
}

void verifyClientName(Resolver& resolver, const IpAddress& client, std::function<void(std::string)> cb) {
  lookUpClientName(resolver, client, [cb = std::move(cb)](ClientName n) { cb(std::move(n.name)); });
}

void lookUpClientName(Resolver& resolver, const IpAddress& client, std::function<void(ClientName)> cb) {
  auto c = std::make_shared<Check>();
  c->client = client;
  c->cb = std::move(cb);
  Resolver* r = &resolver;
  resolver.query(client.reverseName(), RrType::PTR, [c, r](const Answer& ptr) {
    if (ptr.status == Status::TempFail) return finish(c, ClientName::Status::TempFail);
    if (ptr.status == Status::Ok) {
      for (size_t i = 0; i < ptr.names.size() && i < kMaxClientNames; ++i) {
        auto name = normalizeHostname(ptr.names[i]);
        if (name && std::find(c->names.begin(), c->names.end(), *name) == c->names.end())
          c->names.push_back(std::move(*name));
      }
    }
    if (c->names.empty()) return finish(c, ClientName::Status::NoPtr);
    c->confirmed.assign(c->names.size(), false);
    c->left = c->names.size();
    const RrType type = c->client.isV4() ? RrType::A : RrType::AAAA;
    // Copied: a callback run at once (cache hit) must not see names change under it.
    const std::vector<std::string> names = c->names;
    for (size_t i = 0; i < names.size(); ++i) {
      r->query(names[i], type, [c, i](const Answer& a) {
        c->confirmed[i] =
            a.status == Status::Ok && std::find(a.addresses.begin(), a.addresses.end(), c->client) != a.addresses.end();
        if (a.status == Status::TempFail) c->forwardFailed = true;
        if (--c->left == 0) finish(c, ClientName::Status::NotConfirmed);
      });
    }
  });
}

}  // namespace moat::mta::dns
