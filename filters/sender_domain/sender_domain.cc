// filters/sender_domain/sender_domain.cc — see sender_domain.h.
#include "filters/sender_domain/sender_domain.h"

#include <string>
#include <utility>
#include <vector>

#include "filters/dmarc/org_domain.h"
#include "filters/dnsbl/dnsbl.h"
#include "mta/dns/mail_domain.h"

namespace moat::filters::sender_domain {
namespace {

using mta::dns::MailDomain;

Result refuse(int code, const char* enhanced, const std::string& sender, std::string_view why, std::string summary) {
  return Result::make(code >= 500 ? Verdict::Reject : Verdict::TempFail, code, enhanced,
                      "<" + sender + ">: Sender address rejected: " + std::string(why), std::move(summary));
}

Result verdict(MailDomain d, const std::string& sender) {
  Result r;
  switch (d) {
    case MailDomain::Exists: r = Result::pass(); break;
    case MailDomain::NotFound: r = refuse(550, "5.1.8", sender, "Domain not found", "not_found"); break;
    case MailDomain::NullMx: r = refuse(550, "5.7.27", sender, "Domain has a null MX", "null_mx"); break;
    case MailDomain::TempFail:
      r = refuse(450, "4.1.8", sender, "Domain not found (DNS lookup failed)", "tempfail");
      break;
  }
  r.detail.add("dns", mta::dns::mailDomainName(d));
  return r;
}

class SenderDomainFilter : public Filter {
 public:
  explicit SenderDomainFilter(std::vector<mta::Network> allow) : allow_(std::move(allow)) {}
  std::string_view name() const override { return "sender_domain"; }
  Stage stage() const override { return Stage::Mail; }

  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override {
    const std::string& sender = ctx->mailFrom;
    if (sender.empty()) return done(Result::pass("skipped"));
    if (auto why = dnsbl::sparedBy(*ctx, allow_); !why.empty()) return done(Result::pass(std::string(why)));
    auto at = sender.rfind('@');
    std::string_view domain = at == std::string::npos ? std::string_view() : std::string_view(sender).substr(at + 1);
    if (domain.empty() || domain.front() == '[') return done(Result::pass("skipped"));
    std::string name = dmarc::normalizeDomain(domain);  // A-labels, lower-case
    if (name.empty() || !dmarc::validDomain(name)) return done(verdict(MailDomain::NotFound, sender));
    mta::dns::findMailDomain(*env.resolver, name,
                             [sender, done = std::move(done)](MailDomain d) { done(verdict(d, sender)); });
  }

 private:
  std::vector<mta::Network> allow_;  // [connection] allow: never checked
};

}  // namespace

std::shared_ptr<const Filter> makeSenderDomainFilter(const policy::Config& config, policy::Errors&) {
  if (!config.rejectUnknownSenderDomain) return nullptr;
  return std::make_shared<SenderDomainFilter>(config.connectionAllow);
}

}  // namespace moat::filters::sender_domain
