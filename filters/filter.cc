// filters/filter.cc — the small helpers of filters/filter.h, in their own library
// (moat_filter_api) so every filter can link them without linking the pipeline.
#include "filters/filter.h"

#include <deque>

#include "filters/mime/mime.h"

namespace moat::filters {

namespace {

struct WorkJob {
  uv_loop_t* loop;
  std::function<void()> work, after;
  bool heavy;
};

// The filters' share of the pool (filter.h). Light jobs go first when a slot frees: they
// are short, and they are the mail the gateway exists for.
struct WorkGate {
  unsigned running = 0, heavyRunning = 0;
  std::deque<WorkJob> light, heavy;

  void pump() {
    const unsigned slots = filterWorkSlots();
    const unsigned heavySlots = slots > 1 ? slots - 1 : 1;
    while (running < slots) {
      std::deque<WorkJob>* from = !light.empty()                                ? &light
                                  : !heavy.empty() && heavyRunning < heavySlots ? &heavy
                                                                                : nullptr;
      if (!from) return;
      WorkJob job = std::move(from->front());
      from->pop_front();
      start(std::move(job));
    }
  }

  void start(WorkJob job) {
    ++running;
    if (job.heavy) ++heavyRunning;
    mta::uv::queueWork(job.loop, std::move(job.work), [this, heavy = job.heavy, after = std::move(job.after)] {
      --running;
      if (heavy) --heavyRunning;
      pump();
      if (after) after();
    });
  }
};

// Per loop thread: the pool is shared, but a loop's requests are only made on its thread.
WorkGate& gate() {
  thread_local WorkGate g;
  return g;
}

}  // namespace

unsigned filterWorkSlots() {
  unsigned pool = mta::uv::threadPoolSize();
  return pool > 3 ? pool - 2 : 1;
}

FilterWorkState filterWorkState() {
  const WorkGate& g = gate();
  return {g.running, g.heavyRunning, g.light.size() + g.heavy.size()};
}

void offloadFilterWork(uv_loop_t* loop, std::function<void()> work, std::function<void()> after, uint64_t bytes) {
  WorkGate& g = gate();
  bool heavy = bytes > kLightWorkBytes;
  (heavy ? g.heavy : g.light).push_back({loop, std::move(work), std::move(after), heavy});
  g.pump();
}

std::string_view stageName(Stage stage) {
  switch (stage) {
    case Stage::Connect: return "connect";
    case Stage::Helo: return "helo";
    case Stage::Mail: return "mail";
    case Stage::Rcpt: return "rcpt";
    case Stage::Data: return "data";
  }
  return "?";
}

std::string_view verdictName(Verdict v) {
  switch (v) {
    case Verdict::Continue: return "continue";
    case Verdict::Tag: return "tag";
    case Verdict::Quarantine: return "quarantine";
    case Verdict::Reject: return "reject";
    case Verdict::TempFail: return "tempfail";
    case Verdict::Disconnect: return "disconnect";
  }
  return "?";
}

std::string_view envelopeChangeName(EnvelopeChange::Kind kind) {
  switch (kind) {
    case EnvelopeChange::Kind::AddRcpt: return "add_rcpt";
    case EnvelopeChange::Kind::DelRcpt: return "del_rcpt";
    case EnvelopeChange::Kind::ChgFrom: return "chg_from";
  }
  return "?";
}

mime::Depth Filter::mimeDepth() const { return mime::Depth::Structure; }

std::string rewritesJson(const std::vector<AddressRewrite>& rewrites) {
  mta::JsonArray a;
  for (const auto& r : rewrites)
    a.addRaw(mta::JsonObject().add("from", r.from).add("to", r.to).add("where", r.where).str());
  return a.str();
}

std::string authenticationResults(const std::string& authservId, const std::vector<std::string>& resinfo) {
  std::string out = authservId;
  if (resinfo.empty()) return out + "; none";
  for (const auto& r : resinfo) out += ";\r\n\t" + r;
  return out;
}

std::vector<std::string> gatewayAuthResults(std::vector<std::string> res, bool outbound) {
  // A check that did not run for this message (mail from relay.networks or a logged-in user,
  // a filter that is off) is "none", with a comment saying why.
  std::string why = outbound ? "(not checked: outbound mail)" : "(not checked)";
  for (std::string_view method : {"spf=", "dkim=", "dmarc="}) {
    bool found = false;
    for (const auto& r : res)
      if (r.starts_with(method)) found = true;
    if (!found) res.push_back(std::string(method) + "none " + why);
  }
  return res;
}

std::vector<Header> gatewayHeaders(const std::string& received, const std::string& authResults,
                                   const std::vector<Header>& sessionHeaders, const std::vector<Header>& added) {
  std::vector<Header> h;
  // A milter's insert at index 0 goes above the Received field, the first it was sent.
  for (const auto& x : added)
    if (x.aboveReceived) h.push_back(x);
  if (!received.empty()) h.push_back({"Received", received});
  h.push_back({"Authentication-Results", authResults});
  for (const auto& x : sessionHeaders) h.push_back(x);
  for (const auto& x : added)
    if (!x.aboveReceived) h.push_back(x);
  return h;
}

bool looksUp(const MessageContext& ctx, const std::vector<mta::Network>& allow) {
  if (ctx.fromRelayNetwork || ctx.authenticated) return false;
  for (const auto& n : allow)
    if (n.contains(ctx.clientIp)) return false;
  return true;
}

std::string_view sparedBy(const MessageContext& ctx, const std::vector<mta::Network>& allow) {
  if (!looksUp(ctx, allow)) return "skipped";
  return ctx.dnsblAllowlisted ? "allowlisted" : "";
}

}  // namespace moat::filters
