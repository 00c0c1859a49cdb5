// filters/spf/check.cc — check_host() (RFC 7208 §4-§6) as an asynchronous state machine
// over mta::dns::Resolver. Resolver callbacks may run synchronously (cache hits), so
// every answer is queued and handled by one driving loop: the stack never grows with
// the number of lookups, and no handler runs inside another.
//
// Untrusted: the peer's identities and all DNS data. The lookup limits of §4.6.4 (10
// DNS-querying terms, 2 void lookups, 10 MX/PTR address lookups each) bound the work.
// Logs nothing; the filter logs the answer.
#include <ctime>
#include <deque>

#include "filters/spf/record.h"
#include "filters/spf/spf.h"

namespace moat::filters::spf {

namespace dns = mta::dns;

std::string_view resultName(SpfResult result) {
  switch (result) {
    case SpfResult::None: return "none";
    case SpfResult::Neutral: return "neutral";
    case SpfResult::Pass: return "pass";
    case SpfResult::Fail: return "fail";
    case SpfResult::SoftFail: return "softfail";
    case SpfResult::TempError: return "temperror";
    case SpfResult::PermError: return "permerror";
  }
  return "none";
}

namespace {

constexpr int kMaxLookups = 10;
constexpr int kMaxVoidLookups = 2;
constexpr size_t kMaxAddressLookups = 10;
constexpr const char* kBuiltinExplanation = "%{d} does not designate %{i} as a permitted sender";

std::string lowerCase(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

SpfResult qualifierResult(Qualifier q) {
  switch (q) {
    case Qualifier::Pass: return SpfResult::Pass;
    case Qualifier::Fail: return SpfResult::Fail;
    case Qualifier::SoftFail: return SpfResult::SoftFail;
    case Qualifier::Neutral: return SpfResult::Neutral;
  }
  return SpfResult::Neutral;
}

bool matches(const mta::IpAddress& ip, const mta::IpAddress& addr, int cidr4, int cidr6) {
  if (ip.isV4() != addr.isV4()) return false;
  return mta::prefixMatch(ip.bytes(), addr.bytes(), ip.isV4() ? cidr4 : cidr6);
}

// One record being evaluated (the top level, an include or a redirect target).
struct Frame {
  std::string domain;
  Record record;
  size_t next = 0;
};

struct Outcome {
  SpfResult result = SpfResult::None;
  std::string mechanism;
  std::shared_ptr<Frame> failFrame;  // the record whose mechanism gave "fail" (for exp=)
};

using OutcomeFn = std::function<void(Outcome)>;

class Evaluator : public std::enable_shared_from_this<Evaluator> {
 public:
  Evaluator(dns::Resolver& resolver, CheckParams params, std::function<void(SpfAnswer)> done)
      : resolver_(resolver), params_(std::move(params)), done_(std::move(done)) {}

  void start(const std::string& sender) {
    auto self = shared_from_this();
    post([self, sender] { self->begin(sender); });
  }

 private:
  // --- the driving loop ------------------------------------------------------------
  void post(std::function<void()> task) {
    tasks_.push_back(std::move(task));
    if (driving_) return;
    driving_ = true;
    while (!tasks_.empty()) {
      auto t = std::move(tasks_.front());
      tasks_.pop_front();
      t();
    }
    driving_ = false;
  }

  void query(const std::string& name, dns::RrType type, std::function<void(const dns::Answer&)> handler) {
    auto self = shared_from_this();
    resolver_.query(name, type, [self, handler = std::move(handler)](const dns::Answer& answer) {
      self->post([handler, answer] { handler(answer); });
    });
  }

  // --- identities ------------------------------------------------------------------
  void begin(const std::string& sender) {
    auto at = sender.rfind('@');
    std::string local = at == std::string::npos ? "" : sender.substr(0, at);
    std::string domain = at == std::string::npos ? sender : sender.substr(at + 1);
    if (local.empty()) local = "postmaster";
    ctx_.local = local;
    ctx_.senderDomain = domain;
    ctx_.sender = local + "@" + domain;
    ctx_.ip = params_.ip;
    ctx_.helo = params_.helo;
    ctx_.receiver = params_.receiver;
    ctx_.timestamp = static_cast<long long>(std::time(nullptr));
    answer_.domain = domain;
    if (!validIdentityDomain(domain)) return finish(Outcome{SpfResult::None, "invalid domain", nullptr});
    auto self = shared_from_this();
    checkDomain(lowerCase(domain), [self](Outcome o) { self->finish(std::move(o)); });
  }

  // --- record lookup and selection (§4.4, §4.5) ------------------------------------
  void checkDomain(const std::string& domain, OutcomeFn k) {
    auto self = shared_from_this();
    query(domain, dns::RrType::TXT, [self, domain, k](const dns::Answer& a) {
      if (a.status == dns::Status::TempFail) return k(Outcome{SpfResult::TempError, "dns", nullptr});
      if (a.status != dns::Status::Ok) return k(Outcome{SpfResult::None, "no record", nullptr});
      const std::string* found = nullptr;
      for (const auto& txt : a.txt) {
        if (!isSpfRecord(txt)) continue;
        if (found) return k(Outcome{SpfResult::PermError, "multiple records", nullptr});
        found = &txt;
      }
      if (!found) return k(Outcome{SpfResult::None, "no record", nullptr});
      auto record = parseRecord(*found);
      if (!record) return k(Outcome{SpfResult::PermError, "syntax", nullptr});
      auto frame = std::make_shared<Frame>();
      frame->domain = domain;
      frame->record = std::move(*record);
      self->evaluate(frame, k);
    });
  }

  // --- mechanisms (§5), left to right ------------------------------------------------
  void evaluate(std::shared_ptr<Frame> f, OutcomeFn k) {
    while (f->next < f->record.mechanisms.size()) {
      const Mechanism& m = f->record.mechanisms[f->next++];
      switch (m.kind) {
        case MechKind::All: return matched(f, m, k);
        case MechKind::Ip4:
        case MechKind::Ip6:
          if (m.network->contains(params_.ip)) return matched(f, m, k);
          continue;
        default: return lookupMechanism(f, m, k);
      }
    }
    if (!f->record.redirect) return k(Outcome{SpfResult::Neutral, "default", nullptr});
    if (!countLookup()) return k(Outcome{SpfResult::PermError, "too many lookups", nullptr});
    auto self = shared_from_this();
    std::string spec = *f->record.redirect;
    withTarget(f, spec, [self, k, spec](std::optional<std::string> target) {
      if (!target) return k(Outcome{SpfResult::PermError, "redirect=" + spec, nullptr});
      self->checkDomain(*target, [k](Outcome o) {
        if (o.result == SpfResult::None) o.result = SpfResult::PermError;  // §6.1
        k(std::move(o));
      });
    });
  }

  void matched(const std::shared_ptr<Frame>& f, const Mechanism& m, const OutcomeFn& k) {
    SpfResult r = qualifierResult(m.qualifier);
    k(Outcome{r, m.text, r == SpfResult::Fail ? f : nullptr});
  }

  bool countLookup() { return ++lookups_ <= kMaxLookups; }

  // Counts a void lookup (§4.6.4); false once over the limit.
  bool countVoid(const dns::Answer& a) {
    if (a.status == dns::Status::NxDomain || a.status == dns::Status::NoData) return ++voids_ <= kMaxVoidLookups;
    return true;
  }

  // Expands a domain-spec (fetching %{p} first when needed) into a query name; nullopt
  // when the expansion is not a usable name.
  void withTarget(const std::shared_ptr<Frame>& f, const std::string& spec,
                  std::function<void(std::optional<std::string>)> k) {
    if (spec.empty()) return k(f->domain);
    auto self = shared_from_this();
    auto expand = [self, f, spec, k] {
      MacroContext ctx = self->ctx_;
      ctx.domain = f->domain;
      ctx.pName = self->pickPtrName(f->domain);
      std::string out;
      if (!expandMacros(spec, ctx, false, &out)) return k(std::nullopt);
      k(normalizeDomain(out));
    };
    if (usesPtrMacro(spec)) return withValidatedNames([expand] { expand(); });
    expand();
  }

  void lookupMechanism(std::shared_ptr<Frame> f, const Mechanism& m, OutcomeFn k) {
    if (!countLookup()) return k(Outcome{SpfResult::PermError, "too many lookups", nullptr});
    auto self = shared_from_this();
    withTarget(f, m.domainSpec, [self, f, &m, k](std::optional<std::string> target) {
      if (!target) {
        // A macro that expands to an unusable name matches nothing (RFC 7208 §4.8).
        if (m.kind == MechKind::Include) return k(Outcome{SpfResult::PermError, m.text, nullptr});
        return self->evaluate(f, k);
      }
      switch (m.kind) {
        case MechKind::Include: return self->include(f, m, *target, k);
        case MechKind::A: return self->mechA(f, m, *target, k);
        case MechKind::Mx: return self->mechMx(f, m, *target, k);
        case MechKind::Ptr: return self->mechPtr(f, m, *target, k);
        case MechKind::Exists: return self->mechExists(f, m, *target, k);
        default: return self->evaluate(f, k);
      }
    });
  }

  // §5.2: the include's result decides whether the mechanism matches.
  void include(std::shared_ptr<Frame> f, const Mechanism& m, const std::string& target, OutcomeFn k) {
    auto self = shared_from_this();
    checkDomain(target, [self, f, &m, k](Outcome o) {
      switch (o.result) {
        case SpfResult::Pass: return self->matched(f, m, k);
        case SpfResult::Fail:
        case SpfResult::SoftFail:
        case SpfResult::Neutral: return self->evaluate(f, k);
        case SpfResult::TempError: return k(Outcome{SpfResult::TempError, m.text, nullptr});
        default: return k(Outcome{SpfResult::PermError, m.text, nullptr});
      }
    });
  }

  dns::RrType addressType() const { return params_.ip.isV4() ? dns::RrType::A : dns::RrType::AAAA; }

  void mechA(std::shared_ptr<Frame> f, const Mechanism& m, const std::string& target, OutcomeFn k) {
    auto self = shared_from_this();
    query(target, addressType(), [self, f, &m, k](const dns::Answer& a) {
      if (a.status == dns::Status::TempFail) return k(Outcome{SpfResult::TempError, m.text, nullptr});
      if (!self->countVoid(a)) return k(Outcome{SpfResult::PermError, "void lookups", nullptr});
      for (const auto& addr : a.addresses) {
        if (matches(self->params_.ip, addr, m.cidr4, m.cidr6)) return self->matched(f, m, k);
      }
      self->evaluate(f, k);
    });
  }

  void mechMx(std::shared_ptr<Frame> f, const Mechanism& m, const std::string& target, OutcomeFn k) {
    auto self = shared_from_this();
    query(target, dns::RrType::MX, [self, f, &m, k](const dns::Answer& a) {
      if (a.status == dns::Status::TempFail) return k(Outcome{SpfResult::TempError, m.text, nullptr});
      if (!self->countVoid(a)) return k(Outcome{SpfResult::PermError, "void lookups", nullptr});
      auto hosts = std::make_shared<std::vector<std::string>>();
      for (const auto& mx : a.mx) {
        if (!mx.exchange.empty()) hosts->push_back(mx.exchange);
      }
      if (hosts->size() > kMaxAddressLookups) return k(Outcome{SpfResult::PermError, "too many MX", nullptr});
      self->mxHost(f, m, hosts, 0, k);
    });
  }

  void mxHost(std::shared_ptr<Frame> f, const Mechanism& m, std::shared_ptr<std::vector<std::string>> hosts,
              size_t i, OutcomeFn k) {
    if (i >= hosts->size()) return evaluate(f, k);
    auto self = shared_from_this();
    query((*hosts)[i], addressType(), [self, f, &m, hosts, i, k](const dns::Answer& a) {
      if (a.status == dns::Status::TempFail) return k(Outcome{SpfResult::TempError, m.text, nullptr});
      for (const auto& addr : a.addresses) {
        if (matches(self->params_.ip, addr, m.cidr4, m.cidr6)) return self->matched(f, m, k);
      }
      self->mxHost(f, m, hosts, i + 1, k);
    });
  }

  void mechExists(std::shared_ptr<Frame> f, const Mechanism& m, const std::string& target, OutcomeFn k) {
    auto self = shared_from_this();
    // exists always asks for A, whatever the client's address family (§5.7).
    query(target, dns::RrType::A, [self, f, &m, k](const dns::Answer& a) {
      if (a.status == dns::Status::TempFail) return k(Outcome{SpfResult::TempError, m.text, nullptr});
      if (!self->countVoid(a)) return k(Outcome{SpfResult::PermError, "void lookups", nullptr});
      if (a.status == dns::Status::Ok && !a.addresses.empty()) return self->matched(f, m, k);
      self->evaluate(f, k);
    });
  }

  void mechPtr(std::shared_ptr<Frame> f, const Mechanism& m, const std::string& target, OutcomeFn k) {
    auto self = shared_from_this();
    withValidatedNames([self, f, &m, target, k] {
      for (const auto& name : *self->validated_) {
        if (name == target || (name.size() > target.size() &&
                               name.compare(name.size() - target.size(), target.size(), target) == 0 &&
                               name[name.size() - target.size() - 1] == '.')) {
          return self->matched(f, m, k);
        }
      }
      self->evaluate(f, k);
    });
  }

  // --- validated reverse names (§5.5, used by ptr and %{p}) -------------------------
  void withValidatedNames(std::function<void()> k) {
    if (validated_) return k();
    auto self = shared_from_this();
    // DNS errors here make ptr not match rather than fail (§5.5).
    query(params_.ip.reverseName(), dns::RrType::PTR, [self, k](const dns::Answer& a) {
      auto names = std::make_shared<std::vector<std::string>>();
      if (a.status == dns::Status::Ok) {
        for (const auto& n : a.names) {
          if (names->size() >= kMaxAddressLookups) break;
          names->push_back(lowerCase(n));
        }
      }
      self->validated_.emplace();
      self->validateName(names, 0, k);
    });
  }

  void validateName(std::shared_ptr<std::vector<std::string>> names, size_t i, std::function<void()> k) {
    if (i >= names->size()) return k();
    auto self = shared_from_this();
    query((*names)[i], addressType(), [self, names, i, k](const dns::Answer& a) {
      for (const auto& addr : a.addresses) {
        if (addr == self->params_.ip) {
          self->validated_->push_back((*names)[i]);
          break;
        }
      }
      self->validateName(names, i + 1, k);
    });
  }

  // %{p}: the target domain itself, else a subdomain of it, else any validated name.
  std::string pickPtrName(const std::string& domain) const {
    if (!validated_ || validated_->empty()) return "unknown";
    for (const auto& n : *validated_) {
      if (n == domain) return n;
    }
    for (const auto& n : *validated_) {
      if (n.size() > domain.size() && n.compare(n.size() - domain.size(), domain.size(), domain) == 0 &&
          n[n.size() - domain.size() - 1] == '.') {
        return n;
      }
    }
    return validated_->front();
  }

  // --- result and explanation (§6.2) ---------------------------------------------------
  void finish(Outcome o) {
    answer_.result = o.result;
    answer_.mechanism = o.mechanism;
    answer_.lookups = lookups_;
    if (o.result != SpfResult::Fail) return deliver();
    auto f = o.failFrame;
    if (!f || !f->record.exp) return explainDefault(f ? f->domain : answer_.domain);
    auto self = shared_from_this();
    withTarget(f, *f->record.exp, [self, f](std::optional<std::string> target) {
      if (!target) return self->explainDefault(f->domain);
      self->query(*target, dns::RrType::TXT, [self, f](const dns::Answer& a) {
        if (a.status != dns::Status::Ok || a.txt.size() != 1) return self->explainDefault(f->domain);
        std::string raw = a.txt.front();
        self->withPtrIfNeeded(raw, [self, f, raw] {
          std::string text = self->expandExplanation(raw, f->domain);
          if (text.empty()) return self->explainDefault(f->domain);
          self->answer_.explanation = std::move(text);
          self->deliver();
        });
      });
    });
  }

  // An exp text with %{p} needs the validated names first; an unusable text yields "".
  std::string expandExplanation(const std::string& text, const std::string& domain) {
    MacroContext ctx = ctx_;
    ctx.domain = domain;
    ctx.pName = pickPtrName(domain);
    std::string out;
    if (!expandMacros(text, ctx, true, &out)) return "";
    for (unsigned char c : out) {
      if (c < 0x20 || c > 0x7e) return "";
    }
    return out;
  }

  void explainDefault(const std::string& domain) {
    std::string text = params_.defaultExplanation.empty() ? kBuiltinExplanation : params_.defaultExplanation;
    auto self = shared_from_this();
    withPtrIfNeeded(text, [self, domain, text] {
      std::string expanded = self->expandExplanation(text, domain);
      self->answer_.explanation = expanded.empty() ? text : expanded;
      self->deliver();
    });
  }

  void withPtrIfNeeded(const std::string& text, std::function<void()> k) {
    if (usesPtrMacro(text)) return withValidatedNames(std::move(k));
    k();
  }

  void deliver() {
    if (!done_) return;
    auto done = std::move(done_);
    done_ = nullptr;
    done(std::move(answer_));
  }

  dns::Resolver& resolver_;
  CheckParams params_;
  std::function<void(SpfAnswer)> done_;
  SpfAnswer answer_;
  MacroContext ctx_;
  int lookups_ = 0;
  int voids_ = 0;
  std::optional<std::vector<std::string>> validated_;
  std::deque<std::function<void()>> tasks_;
  bool driving_ = false;
};

}  // namespace

void checkHost(dns::Resolver& resolver, const CheckParams& params, std::function<void(SpfAnswer)> done) {
  std::string sender = params.mailFrom.empty() ? "postmaster@" + params.helo : params.mailFrom;
  auto ev = std::make_shared<Evaluator>(resolver, params, std::move(done));
  ev->start(sender);
}

void checkHelo(dns::Resolver& resolver, const CheckParams& params, std::function<void(SpfAnswer)> done) {
  CheckParams p = params;
  p.mailFrom = "postmaster@" + params.helo;
  auto ev = std::make_shared<Evaluator>(resolver, p, std::move(done));
  ev->start(p.mailFrom);
}

}  // namespace moat::filters::spf
