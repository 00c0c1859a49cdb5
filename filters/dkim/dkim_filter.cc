// filters/dkim/dkim_filter.cc — the two DKIM filters (Stage::Data) and their config.
//
// verify: checks every signature (RFC 6376, RFC 8301) and records each result in ctx->dkim
//   and as one Authentication-Results resinfo per signature (RFC 8601 section 2.7.1;
//   header.b per RFC 6008), "dkim=none" when the message is unsigned. Never rejects: DMARC
//   decides what a failure means.
// sign: for outbound mail (relay network or authenticated client) whose From: domain has a
//   [[dkim.sign]] entry, adds one DKIM-Signature per configured key (rsa and ed25519 both
//   when both are set), prepended at delivery. It runs last and signs the message with the
//   edits of the filters before it applied (ctx->edits), in the lines the SMTP client sends
//   (over-long lines broken, as edits of its own), as it will be delivered.
// Config: [dkim] verify = true, max_signatures = 8; [[dkim.sign]] domain, selector,
//   key_file, algorithm (default: from the key type). Keys are read and checked at load time.
// Untrusted: the message. Logs: `dkim_sign_error` (warn) when signing fails; the results
//   themselves go to the pipeline's `filter` event.
#include <algorithm>
#include <cctype>
#include <fstream>
#include <set>
#include <sstream>

#include "filters/dkim/dkim.h"
#include "filters/dkim/internal.h"
#include "filters/dmarc/from_header.h"
#include "mta/runtime/data_lines.h"
#include "mta/runtime/log.h"

namespace moat::filters::dkim {

using namespace detail;

namespace {

// Result::pass lives in moat_filters, which links this library; build the value here.
Result continueWith(std::string summary) {
  Result r;
  r.summary = std::move(summary);
  return r;
}

// RFC 8601 values are tokens or quoted-strings; base64 and free text need quoting.
std::string ptypeValue(const std::string& v) {
  bool token = !v.empty();
  for (char c : v)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_')) token = false;
  if (token) return v;
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out.push_back('\\');
    if (static_cast<unsigned char>(c) >= 0x20 && c != 0x7f) out.push_back(c);
  }
  return out + "\"";
}

std::string resinfo(const SigResult& r) {
  std::string s = "dkim=" + r.result;
  if (r.result != "pass" && !r.reason.empty()) s += " reason=" + ptypeValue(r.reason);
  if (validDomain(r.domain)) s += " header.d=" + lower(r.domain);
  if (validSelector(r.selector)) s += " header.s=" + r.selector;
  if (r.bPrefix.size() >= 8) s += " header.b=" + ptypeValue(r.bPrefix.substr(0, 8));
  if (!r.algorithm.empty() && validSelector(r.algorithm)) s += " header.a=" + r.algorithm;
  return s;
}

class VerifyFilter : public Filter {
 public:
  VerifyFilter(bool enabled, VerifyOptions options) : enabled_(enabled), options_(options) {}
  std::string_view name() const override { return "dkim"; }
  Stage stage() const override { return Stage::Data; }

  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override {
    if (!enabled_) return done(continueWith("off"));
    std::string_view message = ctx->message;
    verifyMessage(env, message, ctx, options_, [ctx, done = std::move(done)](std::vector<SigResult> sigs) {
      done(toResult(*ctx, sigs));
    });
  }

 private:
  static Result toResult(MessageContext& ctx, const std::vector<SigResult>& sigs) {
    Result r = continueWith("none");
    if (sigs.empty()) r.authResults.push_back("dkim=none");
    std::vector<std::string> lines;
    for (const auto& s : sigs) {
      ctx.dkim.push_back({s.result, s.domain, s.selector, s.bPrefix, s.algorithm, s.reason});
      r.authResults.push_back(resinfo(s));
      lines.push_back(s.result + " d=" + s.domain + " s=" + s.selector + (s.reason.empty() ? "" : " (" + s.reason + ")"));
    }
    // The log summary is the best result: one good signature is what DMARC can use.
    static const char* kOrder[] = {"pass", "fail", "temperror", "permerror", "neutral", "policy"};
    for (const char* want : kOrder) {
      bool found = std::any_of(sigs.begin(), sigs.end(), [&](const SigResult& s) { return s.result == want; });
      if (found) {
        r.summary = want;
        break;
      }
    }
    if (!lines.empty()) r.detail.add("signatures", lines);
    return r;
  }

  bool enabled_;
  VerifyOptions options_;
};

// The From domains to sign for: RFC 5322 mailboxes with comments, quoted strings and groups
// read by the DMARC filter's parser, so "alice@example.test (Alice)" is example.test and the
// signature is the one a receiver's DMARC check will look for. Several authors: each.
std::vector<std::string> signingDomains(std::string_view message) {
  std::string error;
  return dmarc::fromDomains(message, error);  // what it could read, even with an error
}

// Where asDelivered() put bytes into `edited` (it only ever inserts: CRLF SP breaks, and CR
// or LF completing a bare line end), as byte edits of the message as received, so the stored
// message is the one signed and the SMTP client has nothing left to change. A break inside
// an earlier filter's replacement, or a message needing more than kMaxLineEdits of them,
// gets none: the client still breaks those lines the same way at delivery, so the signature
// holds over SMTP; only a copy delivered to a Maildir keeps the long lines.
constexpr size_t kMaxLineEdits = 256;

std::vector<Edit> lineEdits(const MessageContext& ctx, std::string_view edited, std::string_view delivered) {
  // 1. Insertions into `edited`: (offset in edited, bytes).
  std::vector<std::pair<uint64_t, std::string>> inserts;
  size_t i = 0;
  for (size_t j = 0; j < delivered.size(); ++j) {
    if (i < edited.size() && edited[i] == delivered[j]) {
      ++i;
      continue;
    }
    if (inserts.empty() || inserts.back().first != i) {
      if (inserts.size() == kMaxLineEdits) return {};
      inserts.push_back({i, ""});
    }
    inserts.back().second.push_back(delivered[j]);
  }
  if (i != edited.size()) return {};  // not insertions only: leave it to the client
  // 2. The same places in the message as received: only inside text no edit replaced.
  std::vector<Edit> out;
  uint64_t mPos = 0, ePos = 0;
  size_t k = 0;
  auto segment = [&](uint64_t mEnd) {  // original bytes [mPos, mEnd) sit at [ePos, ...) in `edited`
    for (; k < inserts.size() && inserts[k].first <= ePos + (mEnd - mPos); ++k) {
      Edit e;
      e.offset = mPos + (inserts[k].first - ePos);
      e.replacement = inserts[k].second;
      e.why = e.replacement == "\r\n " ? "line over 998 octets broken (RFC 5321 4.5.3.1.6)"
                                       : "line end completed to CRLF (RFC 5321 2.3.8)";
      out.push_back(std::move(e));
    }
  };
  for (const auto& x : ctx.edits) {
    if (x.offset < mPos) return {};
    segment(x.offset);
    ePos += x.offset - mPos + x.replacement.size();
    mPos = x.end();
    if (k < inserts.size() && inserts[k].first < ePos) return {};  // inside a replacement
  }
  segment(ctx.message.size());
  if (k != inserts.size()) return {};
  // 3. Proof: with them the stored message is exactly what was signed.
  std::vector<Edit> all = ctx.edits;
  for (const auto& e : out)
    if (!addEdit(all, e, ctx.message.size())) return {};
  if (applyEdits(ctx.message, all) != delivered) return {};
  return out;
}

class SignFilter : public Filter {
 public:
  explicit SignFilter(std::vector<SignKey> keys) : keys_(std::move(keys)) {}
  std::string_view name() const override { return "dkim_sign"; }
  Stage stage() const override { return Stage::Data; }

  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override {
    if (!(ctx->fromRelayNetwork || ctx->authenticated)) return done(continueWith("inbound"));
    auto domains = signingDomains(ctx->message);
    std::vector<SignKey> mine;
    for (const auto& d : domains)
      for (const auto& k : keys_)
        if (lower(k.domain) == d) mine.push_back(k);
    if (mine.empty()) return done(continueWith("none"));
    auto result = std::make_shared<Result>(continueWith("signed"));
    env.offload([ctx, mine = std::move(mine), result] { signAll(*ctx, mine, *result); },
                [result, done = std::move(done)] { done(std::move(*result)); });
  }

 private:
  static void signAll(const MessageContext& ctx, const std::vector<SignKey>& keys, Result& out) {
    // Sign what will be delivered: the message with the earlier filters' edits (attachment
    // strip, Subject prefix), the same bytes every delivery reads (queue/edited.h).
    std::string edited;
    std::string_view message = ctx.message;
    if (!ctx.edits.empty()) message = edited = applyEdits(ctx.message, ctx.edits);
    // ...and in the lines the SMTP client sends (RFC 6376 5.3): a line over 998 octets is
    // broken with CRLF SP at delivery (mta/runtime/data_lines.h), which would break a
    // signature over the unbroken line. Signed broken, and stored broken (edits).
    std::string delivered = mta::asDelivered(message);
    if (delivered != message) {
      out.edits = lineEdits(ctx, message, delivered);
      message = delivered;
    }
    std::vector<std::string> signedWith;
    for (const auto& k : keys) {
      std::string error;
      auto value = signMessage(k, message, error);
      if (!value) {
        mta::log::warn("dkim_sign_error").add("queue_id", ctx.queueId).add("domain", k.domain).add("error", error);
        continue;
      }
      out.headers.push_back({"DKIM-Signature", *value});
      signedWith.push_back(k.algorithm + " d=" + k.domain + " s=" + k.selector);
    }
    if (signedWith.empty()) out.summary = "error";
    else out.detail.add("signatures", signedWith);
  }

  std::vector<SignKey> keys_;
};

void rejectUnknownDkimKeys(const policy::Config& config, policy::Section& section) {
  const toml::table* t = config.toml ? config.toml->at_path("dkim").as_table() : nullptr;
  if (!t) return;
  static const std::set<std::string> kKnown = {"verify", "max_signatures", "sign"};
  for (const auto& [k, v] : *t)
    if (!kKnown.count(std::string(k.str()))) section.error(std::string(k.str()), "unknown key");
}

std::optional<SignKey> readSignEntry(policy::Section& s) {
  SignKey key;
  key.domain = lower(s.getString("domain"));
  key.selector = s.getString("selector");
  std::string file = s.getPath("key_file");
  key.algorithm = s.getEnum("algorithm", "", {"", "rsa-sha256", "ed25519-sha256"});
  s.rejectUnknownKeys();
  if (key.domain.empty()) s.error("domain", "missing");
  if (key.selector.empty()) s.error("selector", "missing");
  if (file.empty()) s.error("key_file", "missing");
  if (key.domain.empty() || key.selector.empty() || file.empty()) return std::nullopt;
  if (!s.readable("key_file", file)) return std::nullopt;
  std::ifstream in(file, std::ios::binary);
  std::stringstream buf;
  if (in) buf << in.rdbuf();
  if (!in || buf.str().empty()) {
    s.error("key_file", "cannot read " + file + (in ? ": the file is empty" : ""));
    return std::nullopt;
  }
  key.privateKeyPem_or_seed = buf.str();
  std::string error;
  if (key.algorithm.empty()) {
    PkeyPtr pkey = loadPrivateKey(key.privateKeyPem_or_seed, error);
    bool ed = pkey && EVP_PKEY_get_base_id(pkey.get()) == EVP_PKEY_ED25519;
    key.algorithm = ed ? "ed25519-sha256" : "rsa-sha256";
  }
  if (!checkSignKey(key, error)) {
    s.error("key_file", file + ": " + error);
    return std::nullopt;
  }
  return key;
}

}  // namespace

std::shared_ptr<const Filter> makeDkimVerifyFilter(const policy::Config& config, policy::Errors& errors) {
  auto s = config.section("dkim", errors);
  bool enabled = s.getBool("verify", true);
  VerifyOptions options;
  options.maxSignatures = static_cast<size_t>(s.getInt("max_signatures", 8, 1, 64));
  rejectUnknownDkimKeys(config, s);
  return std::make_shared<VerifyFilter>(enabled, options);
}

std::shared_ptr<const Filter> makeDkimSignFilter(const policy::Config& config, policy::Errors& errors) {
  std::vector<SignKey> keys;
  for (auto& s : config.sectionArray("dkim.sign", errors))
    if (auto k = readSignEntry(s)) keys.push_back(std::move(*k));
  return std::make_shared<SignFilter>(std::move(keys));
}

}  // namespace moat::filters::dkim
