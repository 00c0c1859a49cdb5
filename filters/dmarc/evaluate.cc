// filters/dmarc/evaluate.cc — see evaluate.h. RFC 7489 §6.6.2-§6.6.4, RFC 9091 §4.
#include "filters/dmarc/evaluate.h"

#include <memory>
#include <random>

#include "filters/dmarc/from_header.h"
#include "filters/dmarc/org_domain.h"

namespace moat::filters::dmarc {

namespace {

using mta::dns::Answer;
using mta::dns::RrType;
using mta::dns::Status;

int randomDraw() {
  thread_local std::mt19937 gen{std::random_device{}()};
  return std::uniform_int_distribution<int>(0, 99)(gen);
}

bool hasValidRua(const Record& r) {
  ReportUri uri;
  for (const auto& u : r.rua)
    if (parseReportUri(u, uri)) return true;
  return false;
}

// One author domain: discovery, then the decision.
class DomainCheck : public std::enable_shared_from_this<DomainCheck> {
 public:
  DomainCheck(mta::dns::Resolver& resolver, std::string domain, SpfOutcome spf, std::vector<DkimOutcome> dkim,
              std::function<void(Evaluation)> done, PctDraw draw)
      : resolver_(resolver), spf_(std::move(spf)), dkim_(std::move(dkim)), done_(std::move(done)), draw_(std::move(draw)) {
    ev_.fromDomain = normalizeDomain(domain);
    ev_.fromDomains = {ev_.fromDomain};
    org_ = organizationalDomain(ev_.fromDomain);
  }

  void start() {
    if (!validDomain(ev_.fromDomain)) return finish("permerror", "unusable From domain");
    lookup(ev_.fromDomain, false);
  }

 private:
  void lookup(const std::string& name, bool isOrg) {
    auto self = shared_from_this();
    resolver_.query("_dmarc." + name, RrType::TXT,
                    [self, name, isOrg](const Answer& a) { self->onRecords(a, name, isOrg); });
  }

  void onRecords(const Answer& a, const std::string& name, bool isOrg) {
    if (a.status == Status::TempFail) return finish("temperror", "DNS: _dmarc." + name + ": " + a.error);
    if (a.status == Status::Malformed) return finish("permerror", "DNS: _dmarc." + name + " is not a valid name");
    std::vector<std::string> records;
    if (a.status == Status::Ok)
      for (const auto& t : a.txt)
        if (isDmarcRecord(t)) records.push_back(t);
    if (records.size() > 1) return finish("none", "several DMARC records at _dmarc." + name);
    if (records.size() == 1) return useRecord(records[0], name, isOrg);
    if (!isOrg && org_ != ev_.fromDomain) return lookup(org_, true);
    finish("none", "no DMARC record");
  }

  void useRecord(const std::string& txt, const std::string& name, bool isOrg) {
    ev_.recordDomain = name;
    ev_.orgRecord = isOrg;
    std::string error;
    ParseDetail detail;
    auto status = parseRecord(txt, ev_.record, error, detail);
    // `error` quotes the publisher's text: it goes to the log only, never into a header.
    if (status != ParseStatus::Ok) ev_.problem = "_dmarc." + name + ": " + error;
    // Text that is not a tag-list at all ("v=DMARC1; p=none; reject"): nothing in it can be
    // trusted to mean what the publisher intended.
    if (detail.syntaxError) return finish("permerror", "DMARC record at _dmarc." + name + " is not a valid tag list");
    if (detail.policyTagInvalid) {
      // §6.6.3 step 6: a record without a valid p= (or with an invalid sp=) counts as
      // "v=DMARC1; p=none" when it has a valid rua= URI, else no DMARC processing.
      if (!hasValidRua(ev_.record)) return finish("none", "DMARC record without a valid p= ignored");
      Record fallback;
      fallback.p = "none";
      fallback.rua = ev_.record.rua;
      fallback.ruf = ev_.record.ruf;
      ev_.record = fallback;
    }
    // Any other tag with an invalid value (pct=50.5, fo=2, ri=1d) is ignored and keeps its
    // default, as an unknown tag is: §6.6.3 discards a record only for its p= and sp=, and
    // DMARCbis says to ignore invalid tags. parseRecord() left those fields at their
    // defaults; the valid p= still applies.
    if (!isOrg) return decide(ev_.record.p);
    if (ev_.record.np.empty() || ev_.record.np == ev_.record.effectiveSp()) return decide(ev_.record.effectiveSp());
    checkExists(0);
  }

  // RFC 9091 §4: is the From domain a non-existent domain? A, AAAA, MX in turn.
  void checkExists(int step) {
    static constexpr RrType kTypes[] = {RrType::A, RrType::AAAA, RrType::MX};
    if (step == 3) return decide(ev_.record.effectiveNp());
    auto self = shared_from_this();
    resolver_.query(ev_.fromDomain, kTypes[step], [self, step](const Answer& a) {
      if (a.status == Status::NxDomain) return self->decide(self->ev_.record.effectiveNp());
      if (a.status == Status::NoData) return self->checkExists(step + 1);
      self->decide(self->ev_.record.effectiveSp());  // exists, or unknown (TempFail): not np
    });
  }

  void decide(const std::string& policy) {
    ev_.policy = policy;
    ev_.spfAligned = spf_.result == "pass" && aligned(spf_.domain, ev_.fromDomain, ev_.record.aspf == "s");
    for (const auto& d : dkim_)
      if (d.result == "pass" && aligned(d.domain, ev_.fromDomain, ev_.record.adkim == "s")) ev_.dkimAligned = true;
    if (ev_.spfAligned || ev_.dkimAligned) {
      ev_.disposition = "none";
      return finish("pass", "");
    }
    ev_.disposition = policy;
    if (ev_.record.pct < 100 && policy != "none") {
      int draw = draw_ ? draw_() : randomDraw();
      if (draw >= ev_.record.pct) {
        ev_.pctSampledOut = true;
        ev_.disposition = lowerPolicy(policy);
      }
    }
    finish("fail", "");
  }

  void finish(const std::string& result, const std::string& reason) {
    ev_.result = result;
    ev_.reason = reason;
    if (ev_.disposition.empty()) ev_.disposition = "none";
    auto done = std::move(done_);
    done(std::move(ev_));
  }

  mta::dns::Resolver& resolver_;
  SpfOutcome spf_;
  std::vector<DkimOutcome> dkim_;
  std::function<void(Evaluation)> done_;
  PctDraw draw_;
  std::string org_;
  Evaluation ev_;
};

// Several author domains: each evaluated, the strictest outcome kept. Unusable mailboxes
// beside them change nothing (they cannot carry a policy; the problem is logged). When
// there were more domains than were evaluated, only a fail that the policy enforces can
// stand: anything milder might be hiding a stricter domain among the rest, so the outcome
// is a permerror with a malformed From instead.
struct Join {
  std::vector<std::string> domains;
  bool tooMany = false;
  std::string problem;
  std::vector<Evaluation> results;
  size_t pending = 0;
  std::function<void(Evaluation)> done;

  void complete(size_t i, Evaluation e) {
    results[i] = std::move(e);
    if (--pending != 0) return;
    size_t best = 0;
    for (size_t k = 1; k < results.size(); ++k)
      if (strictness(results[k]) > strictness(results[best])) best = k;
    Evaluation out = std::move(results[best]);
    if (tooMany && !(out.result == "fail" && out.disposition != "none")) {
      out = Evaluation{};
      out.result = "permerror";
      out.reason = "more than " + std::to_string(kMaxFromDomains) + " author domains in From";
      out.malformedFrom = true;
      out.disposition = "none";
    }
    if (!problem.empty()) out.problem = out.problem.empty() ? problem : problem + "; " + out.problem;
    out.fromDomains = domains;
    auto d = std::move(done);
    d(std::move(out));
  }
};

}  // namespace

std::string lowerPolicy(const std::string& policy) {
  if (policy == "reject") return "quarantine";
  return "none";
}

int strictness(const Evaluation& e) {
  if (e.result == "fail") {
    if (e.disposition == "reject") return 6;
    if (e.disposition == "quarantine") return 5;
    return 3;
  }
  if (e.result == "temperror") return 4;  // might hide a reject: retrying beats guessing
  if (e.result == "permerror") return 2;
  if (e.result == "pass") return 1;
  return 0;
}

void evaluateDomain(mta::dns::Resolver& resolver, std::string_view fromDomain, const SpfOutcome& spf,
                    const std::vector<DkimOutcome>& dkim, std::function<void(Evaluation)> done, PctDraw draw) {
  auto check = std::make_shared<DomainCheck>(resolver, std::string(fromDomain), spf, dkim, std::move(done), std::move(draw));
  check->start();
}

void evaluate(mta::dns::Resolver& resolver, std::string_view message, const SpfOutcome& spf,
              const std::vector<DkimOutcome>& dkim, std::function<void(Evaluation)> done, PctDraw draw) {
  evaluateAuthors(resolver, fromAuthors(message), spf, dkim, std::move(done), std::move(draw));
}

void evaluateAuthors(mta::dns::Resolver& resolver, const FromAuthors& authors, const SpfOutcome& spf,
                     const std::vector<DkimOutcome>& dkim, std::function<void(Evaluation)> done, PctDraw draw) {
  if (authors.domains.empty()) {
    // RFC 7489 §6.6.1: no author domain to evaluate. Addresses whose domains are all
    // unusable are not "no policy" either: a mail client may show a domain there that this
    // parser cannot use, so the filter applies `malformed_from` (dmarc_filter.h). With no
    // address at all, no domain is named and none can be impersonated: a plain permerror.
    Evaluation e;
    e.result = "permerror";
    e.malformedFrom = authors.addressFound;
    e.reason = !authors.fieldFound ? "no From header field"
               : e.malformedFrom   ? "no usable author domain in From"
                                   : "no address in From";
    e.problem = authors.problem;
    e.disposition = "none";
    return done(std::move(e));
  }
  auto join = std::make_shared<Join>();
  join->domains = authors.domains;
  join->tooMany = authors.tooMany;
  join->problem = authors.problem;
  join->results.resize(authors.domains.size());
  join->pending = authors.domains.size();
  join->done = std::move(done);
  for (size_t i = 0; i < authors.domains.size(); ++i)
    evaluateDomain(
        resolver, authors.domains[i], spf, dkim, [join, i](Evaluation e) { join->complete(i, std::move(e)); }, draw);
}

}  // namespace moat::filters::dmarc
