// filters/dkim/dkim_filter.cc — the two DKIM filters (Stage::Data) and their config.
//
// verify: checks every signature (RFC 6376, RFC 8301) and records each result in ctx->dkim
//   and as one Authentication-Results resinfo per signature (RFC 8601 section 2.7.1;
//   header.b per RFC 6008), "dkim=none" when the message is unsigned. Never rejects: DMARC
//   decides what a failure means.
// sign: for outbound mail (relay network or authenticated client) whose From: domain has a
//   [[dkim.sign]] entry, adds one DKIM-Signature per configured key (rsa and ed25519 both
//   when both are set), prepended at delivery. It runs last and signs the message with the
//   edits of the filters before it applied (ctx->edits), an 8-bit body converted to 7-bit
//   MIME (RFC 6376 §5.3) and in the lines the SMTP client sends (over-long lines broken),
//   both as edits of its own: as it will be delivered to any next hop.
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
#include "filters/mime/downgrade.h"
#include "mta/runtime/data_lines.h"
#include "mta/runtime/log.h"

namespace moat::filters::dkim {

using namespace detail;

namespace {

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
    if (!enabled_) return done(Result::pass("off"));
    std::string_view message = ctx->message;
    verifyMessage(env, message, ctx, options_, [ctx, done = std::move(done)](std::vector<SigResult> sigs) {
      done(toResult(*ctx, sigs));
    });
  }

 private:
  static Result toResult(MessageContext& ctx, const std::vector<SigResult>& sigs) {
    Result r = Result::pass("none");
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
// The From read is the one delivered: with the header edits of the filters before (the
// address rewrite turns an internal From into the external one, which is what gets signed).
std::vector<std::string> signingDomains(const MessageContext& ctx) {
  std::string_view header = mta::headerBlock(ctx.message);
  std::vector<Edit> inHeader;
  for (const auto& e : ctx.edits)
    if (e.offset < header.size() && e.end() <= header.size()) inHeader.push_back(e);
  std::string edited;
  if (!inHeader.empty()) header = edited = applyEdits(header, inHeader);
  std::string error;
  return dmarc::fromDomains(header, error);  // what it could read, even with an error
}

// `over`: edits of `edited`, the message with `applied` (sorted, apart) applied. Returns the
// same edits as edits of the message as received, placed only in bytes no edit of `applied`
// replaced (an insert at the edge of a replacement goes before or after it), or nullopt when
// one reaches into a replacement. Callers prove the result by applying it (order of inserts
// at one offset).
std::optional<std::vector<Edit>> toMessageOffsets(uint64_t messageSize, const std::vector<Edit>& applied,
                                                  const std::vector<Edit>& over) {
  std::vector<Edit> out;
  uint64_t mPos = 0, ePos = 0;
  size_t k = 0;
  // Original bytes [mPos, mEnd) sit at [ePos, ePos + (mEnd - mPos)) in `edited`.
  auto run = [&](uint64_t mEnd) {
    uint64_t eEnd = ePos + (mEnd - mPos);
    for (; k < over.size(); ++k) {
      const Edit& e = over[k];
      if (e.offset > eEnd || (e.offset == eEnd && e.length > 0)) break;  // for a later run
      if (e.offset < ePos || e.end() > eEnd) return false;               // inside a replacement
      Edit m = e;
      m.offset = mPos + (e.offset - ePos);
      out.push_back(std::move(m));
    }
    return true;
  };
  for (const auto& x : applied) {
    if (x.offset < mPos || !run(x.offset)) return std::nullopt;
    ePos += x.offset - mPos + x.replacement.size();
    mPos = x.end();
  }
  if (!run(messageSize) || k != over.size()) return std::nullopt;
  return out;
}

// Where asDelivered() put bytes into `edited` (it only ever inserts: CRLF SP breaks, and CR
// or LF completing a bare line end), as byte edits of `message` (`edited` is `message` with
// `applied`), so the stored message is the one signed and the SMTP client has nothing left to
// change. A break inside an earlier replacement, or a message needing more than kMaxLineEdits
// of them, gets none: the client still breaks those lines the same way at delivery, so the
// signature holds over SMTP; only a copy delivered to a Maildir keeps the long lines.
constexpr size_t kMaxLineEdits = 256;

std::vector<Edit> lineEdits(std::string_view message, const std::vector<Edit>& applied, std::string_view edited,
                            std::string_view delivered) {
  // 1. Insertions into `edited`.
  std::vector<Edit> inserts;
  size_t i = 0;
  for (size_t j = 0; j < delivered.size(); ++j) {
    if (i < edited.size() && edited[i] == delivered[j]) {
      ++i;
      continue;
    }
    if (inserts.empty() || inserts.back().offset != i) {
      if (inserts.size() == kMaxLineEdits) return {};
      inserts.push_back(Edit{i, 0, "", ""});
    }
    inserts.back().replacement.push_back(delivered[j]);
  }
  if (i != edited.size()) return {};  // not insertions only: leave it to the client
  for (auto& e : inserts)
    e.why = e.replacement == "\r\n " ? "line over 998 octets broken (RFC 5321 4.5.3.1.6)"
                                     : "line end completed to CRLF (RFC 5321 2.3.8)";
  // 2. The same places in the message as received: only inside text no edit replaced.
  auto out = toMessageOffsets(message.size(), applied, inserts);
  if (!out) return {};
  // 3. Proof: with them the stored message is exactly what was signed.
  std::vector<Edit> all = applied;
  for (const auto& e : *out)
    if (!addEdit(all, e, message.size())) return {};
  if (applyEdits(message, all) != delivered) return {};
  return std::move(*out);
}

// RFC 6376 §5.3: "signers SHOULD convert the message to a suitable MIME content-transfer
// encoding such as quoted-printable or base64 ... before signing". An 8-bit message would
// otherwise be converted after signing by whichever hop lacks 8BITMIME (RFC 6152 §3; Moat's
// own SMTP client among them), and the signature would break. So a message to be signed
// whose body is 8-bit goes to 7-bit MIME first, by the converter delivery uses
// (filters/mime/downgrade.h), and is stored and signed that way. Not converted (signed in its
// 8-bit form, as before): 8-bit header fields (SMTPUTF8 mail, RFC 6532: no 7-bit form), what
// the converter refuses, a conversion that reaches into an earlier filter's replacement, and a
// message the conversion would take over [limits] max_message_size (a next hop with Moat's
// own limit would refuse it), and one whose converted parts come to over kMaxConversionEdits:
// the conversion is kept as edits in the envelope, which the queue holds in memory for as
// long as the message is queued, so it stays small (8-bit text parts; 8-bit binaries that
// large are rare, and go signed as they are).
struct Conversion {
  std::vector<Edit> edits;  // of the message as received; empty: not converted
  std::string message;      // the message as stored: received, earlier edits and these
  std::string why;          // not converted although 8-bit: the reason (for the log)
};

constexpr uint64_t kMaxConversionEdits = 128 * 1024;

constexpr std::string_view kConversionWhy = "8-bit body converted to 7-bit MIME before signing (RFC 6376 5.3)";

Conversion convertBeforeSigning(const MessageContext& ctx, std::string_view edited, uint64_t maxSize) {
  Conversion c;
  if (!mta::hasEightBit(edited)) return c;
  auto converted = mime::downgradeEdits(edited);
  if (!converted.ok) {
    c.why = converted.reason;
    return c;
  }
  if (converted.edits.empty()) return c;
  uint64_t editBytes = 0;
  for (const auto& e : converted.edits) editBytes += e.replacement.size();
  if (editBytes > kMaxConversionEdits) {
    c.why = "the converted parts, " + std::to_string(editBytes) + " bytes, are over " +
            std::to_string(kMaxConversionEdits / 1024) + " KiB";
    return c;
  }
  auto mapped = toMessageOffsets(ctx.message.size(), ctx.edits, converted.edits);
  if (!mapped) {
    c.why = "an earlier filter's rewrite holds 8-bit bytes";
    return c;
  }
  std::vector<Edit> all = ctx.edits;
  for (auto& e : *mapped) {
    e.why = kConversionWhy;
    if (!addEdit(all, e, ctx.message.size())) {
      c.why = "an earlier filter's rewrite holds 8-bit bytes";
      return c;
    }
  }
  if (uint64_t size = editedSize(ctx.message.size(), all); size > maxSize) {
    c.why = "converted, it would be " + std::to_string(size) + " bytes, over max_message_size";
    return c;
  }
  // Proof: the stored message is the converter's output.
  std::string stored = applyEdits(ctx.message, all);
  if (stored != applyEdits(edited, converted.edits)) {
    c.why = "an earlier filter's rewrite holds 8-bit bytes";
    return c;
  }
  c.edits = std::move(*mapped);
  c.message = std::move(stored);
  return c;
}

class SignFilter : public Filter {
 public:
  SignFilter(std::vector<SignKey> keys, uint64_t maxMessageSize)
      : keys_(std::move(keys)), maxMessageSize_(maxMessageSize) {}
  std::string_view name() const override { return "dkim_sign"; }
  Stage stage() const override { return Stage::Data; }

  void run(std::shared_ptr<MessageContext> ctx, const Env& env, Done done) const override {
    if (!(ctx->fromRelayNetwork || ctx->authenticated)) return done(Result::pass("inbound"));
    auto domains = signingDomains(*ctx);
    std::vector<SignKey> mine;
    for (const auto& d : domains)
      for (const auto& k : keys_)
        if (lower(k.domain) == d) mine.push_back(k);
    if (mine.empty()) return done(Result::pass("none"));
    auto result = std::make_shared<Result>(Result::pass("signed"));
    // The conversion and the crypto both run here, on the thread pool.
    env.offload([ctx, mine = std::move(mine), result, max = maxMessageSize_] { signAll(*ctx, mine, max, *result); },
                [result, done = std::move(done)] { done(std::move(*result)); });
  }

 private:
  static void signAll(const MessageContext& ctx, const std::vector<SignKey>& keys, uint64_t maxSize, Result& out) {
    Prepared prepared = prepareForSigning(ctx, maxSize, true);
    std::vector<std::string> signedWith;
    for (const auto& k : keys) {
      std::string error;
      auto value = signMessage(k, prepared.message, error);
      if (!value) {
        mta::log::warn("dkim_sign_error").add("queue_id", ctx.queueId).add("domain", k.domain).add("error", error);
        continue;
      }
      out.headers.push_back({"DKIM-Signature", *value});
      signedWith.push_back(k.algorithm + " d=" + k.domain + " s=" + k.selector);
    }
    if (signedWith.empty()) {  // no signature to keep valid: the message stays as received
      out.summary = "error";
      return;
    }
    out.detail.add("signatures", signedWith);
    takePrepared(std::move(prepared), out);
  }

  std::vector<SignKey> keys_;
  uint64_t maxMessageSize_;
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
  auto text = readKeyFile(s, "key_file", file);
  if (!text) return std::nullopt;
  key.privateKeyPem_or_seed = std::move(*text);
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

Prepared prepareForSigning(const MessageContext& ctx, uint64_t maxMessageSize, bool convert8Bit) {
  Prepared out;
  // What will be delivered: the message with the earlier filters' edits (attachment strip,
  // Subject prefix), the same bytes every delivery reads (queue/edited.h)...
  std::string_view message = ctx.message;
  std::string edited;
  if (!ctx.edits.empty()) message = edited = applyEdits(ctx.message, ctx.edits);
  // ...in 7-bit MIME when it is 8-bit (RFC 6376 5.3), so no hop converts it after signing...
  Conversion conversion = convert8Bit ? convertBeforeSigning(ctx, message, maxMessageSize) : Conversion{};
  std::vector<Edit> stored = ctx.edits;
  if (!conversion.edits.empty()) {
    for (const auto& e : conversion.edits) addEdit(stored, e, ctx.message.size());  // proven to fit
    message = conversion.message;
  }
  // ...and in the lines the SMTP client sends (RFC 6376 5.3): a line over 998 octets is
  // broken with CRLF SP at delivery (mta/runtime/data_lines.h), which would break a
  // signature over the unbroken line. Signed broken, and stored broken (edits).
  std::string delivered = mta::asDelivered(message);
  std::vector<Edit> breaks;
  if (delivered != message) breaks = lineEdits(ctx.message, stored, message, delivered);
  out.message = std::move(delivered);
  // The pipeline adds these after ctx.edits in this order, the order proven above.
  out.edits = std::move(conversion.edits);
  for (auto& e : breaks) out.edits.push_back(std::move(e));
  out.convertedTo7Bit = !conversion.message.empty();
  out.conversionWhy = std::move(conversion.why);
  return out;
}

void takePrepared(Prepared&& prepared, Result& out) {
  out.edits = std::move(prepared.edits);
  out.convertedTo7Bit = prepared.convertedTo7Bit;
  if (prepared.convertedTo7Bit)
    out.detail.add("conversion", "7bit");
  else if (!prepared.conversionWhy.empty())
    out.detail.add("conversion", "none: " + prepared.conversionWhy);
}

std::optional<std::string> readKeyFile(policy::Section& s, const std::string& key, const std::string& file) {
  if (!s.readable(key, file)) return std::nullopt;
  std::ifstream in(file, std::ios::binary);
  std::stringstream buf;
  if (in) buf << in.rdbuf();
  if (!in || buf.str().empty()) {
    s.error(key, "cannot read " + file + (in ? ": the file is empty" : ""));
    return std::nullopt;
  }
  return buf.str();
}

std::shared_ptr<const Filter> makeDkimVerifyFilter(const policy::Config& config, policy::Errors& errors) {
  auto s = config.section("dkim", errors);
  bool enabled = s.getBool("verify", true);
  VerifyOptions options;
  options.maxSignatures = static_cast<size_t>(s.getInt("max_signatures", 8, 1, 64));
  rejectUnknownDkimKeys(config, s);
  return std::make_shared<VerifyFilter>(enabled, options);
}

std::vector<SignKey> readSignKeys(const policy::Config& config, policy::Errors& errors) {
  std::vector<SignKey> keys;
  for (auto& s : config.sectionArray("dkim.sign", errors))
    if (auto k = readSignEntry(s)) keys.push_back(std::move(*k));
  return keys;
}

std::shared_ptr<const Filter> makeDkimSignFilter(const policy::Config& config, policy::Errors& errors) {
  return std::make_shared<SignFilter>(readSignKeys(config, errors), config.maxMessageSize);
}

}  // namespace moat::filters::dkim
