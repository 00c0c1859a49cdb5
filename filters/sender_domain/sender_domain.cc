// filters/sender_domain/sender_domain.cc — see sender_domain.h.
#include "filters/sender_domain/sender_domain.h"

#include <string>
#include <utility>
#include <vector>

#include "filters/dmarc/org_domain.h"
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

struct Settings {
  bool requireFqdn = false;         // [senders] require_fqdn
  bool rejectUnknown = false;       // [senders] reject_unknown_domain
  std::vector<mta::Network> allow;  // [connection] allow: never checked
};

class SenderDomainFilter : public Filter {
 public:
  explicit SenderDomainFilter(Settings s) : s_(std::move(s)) {}
  std::string_view name() const override { return "sender_domain"; }
  Stage stage() const override { return Stage::Mail; }

  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override {
    const std::string& sender = ctx->mailFrom;
    if (sender.empty()) return done(Result::pass("skipped"));
    if (auto why = sparedBy(*ctx, s_.allow); !why.empty()) return done(Result::pass(std::string(why)));
    auto at = sender.rfind('@');
    std::string_view domain = at == std::string::npos ? std::string_view() : std::string_view(sender).substr(at + 1);
    if (domain.empty() || domain.front() == '[') return done(Result::pass("skipped"));
    std::string name = dmarc::normalizeDomain(domain);  // A-labels, lower-case
    if (s_.requireFqdn && name.find('.') == std::string::npos)
      return done(refuse(504, "5.5.2", sender, "need fully-qualified address", "not_fqdn"));
    if (!s_.rejectUnknown) return done(Result::pass());
    if (name.empty() || !dmarc::validDomain(name)) return done(verdict(MailDomain::NotFound, sender));
    mta::dns::findMailDomain(*env.resolver, name,
                             [sender, done = std::move(done)](MailDomain d) { done(verdict(d, sender)); });
  }

 private:
  Settings s_;
};

}  // namespace

std::shared_ptr<const Filter> makeSenderDomainFilter(const policy::Config& config, policy::Errors&) {
  Settings s{config.requireFqdnSender, config.rejectUnknownSenderDomain, config.connectionAllow};
  if (!s.requireFqdn && !s.rejectUnknown) return nullptr;
  return std::make_shared<SenderDomainFilter>(std::move(s));
}

}  // namespace moat::filters::sender_domain
