// filters/reverse_dns/reverse_dns.cc — see reverse_dns.h.
#include "filters/reverse_dns/reverse_dns.h"

#include <string>
#include <utility>
#include <vector>

#include "mta/dns/client_name.h"

namespace moat::filters::reverse_dns {
namespace {

using mta::dns::ClientName;
using Required = policy::Config::ClientNameCheck;

class ReverseDnsFilter : public Filter {
 public:
  ReverseDnsFilter(Required required, std::vector<mta::Network> allow)
      : required_(required), allow_(std::move(allow)) {}
  std::string_view name() const override { return "reverse_dns"; }
  Stage stage() const override { return Stage::Mail; }

  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override {
    if (auto why = sparedBy(*ctx, allow_); !why.empty()) return done(Result::pass(std::string(why)));
    mta::dns::lookUpClientName(*env.resolver, ctx->clientIp,
                               [required = required_, ip = ctx->clientIp, done = std::move(done)](ClientName n) {
                                 done(verdict(required, ip, n));
                               });
  }

 private:
  static Result verdict(Required required, const mta::IpAddress& ip, const ClientName& n) {
    using S = ClientName::Status;
    // "reverse" asks for a PTR name only: one that does not resolve back passes.
    const bool ok = n.status == S::Confirmed || (required == Required::Reverse && n.status == S::NotConfirmed);
    Result r = Result::pass(ok ? "pass" : std::string(mta::dns::clientNameStatusName(n.status)));
    if (!ok) {
      std::string text = required == Required::Reverse ? "Client host rejected: cannot find your reverse hostname, "
                                                       : "Client host rejected: cannot find your hostname, ";
      r = Result::tempFail(450, "4.7.25", text + ip.literal(), r.summary);
    }
    r.detail.add("dns", mta::dns::clientNameStatusName(n.status));
    if (!n.name.empty()) r.detail.add("name", n.name);
    return r;
  }

  Required required_;
  std::vector<mta::Network> allow_;  // [connection] allow: never checked
};

}  // namespace

std::shared_ptr<const Filter> makeReverseDnsFilter(const policy::Config& config, policy::Errors&) {
  if (config.rejectUnknownClient == Required::Off) return nullptr;
  return std::make_shared<ReverseDnsFilter>(config.rejectUnknownClient, config.connectionAllow);
}

}  // namespace moat::filters::reverse_dns
