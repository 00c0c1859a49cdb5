// filters/dkim/verify.cc — DKIM verification (RFC 6376 section 6, RFC 8301, RFC 8463).
//
// Two phases keep the loop free: on the loop, the DKIM-Signature headers are read just far
// enough for d= and s= and every "s._domainkey.d" TXT record is fetched through Moat's
// resolver; on the thread pool, libopendkim verifies with those records, served through its
// key-lookup hook (its own DNS code never runs). Untrusted: the whole message and every key
// record. At most VerifyOptions::maxSignatures signatures are looked up and checked, those
// aligned with the From domain first (chooseSignatures).
// Results use RFC 8601 names; a DNS temporary failure is temperror for that signature only.
// Nothing is logged here; the filter reports results through the pipeline.
#include <openssl/x509.h>

#include <algorithm>
#include <cstring>
#include <ctime>

#include "filters/dkim/dkim.h"
#include "filters/dkim/internal.h"
#include "filters/dmarc/from_header.h"
#include "filters/dmarc/org_domain.h"

namespace moat::filters::dkim {

using namespace detail;

namespace detail {

std::string normalizeKeyRecord(const std::string& record) {
  auto tags = parseTagList(record);
  if (!tags) return record;
  const std::string* k = findTag(*tags, "k");
  const std::string* p = findTag(*tags, "p");
  if (!p || (k && lower(*k) != "rsa")) return record;
  auto der = base64Decode(*p);
  if (!der || der->empty()) return record;
  auto* d = reinterpret_cast<const unsigned char*>(der->data());
  PkeyPtr spki(d2i_PUBKEY(nullptr, &d, static_cast<long>(der->size())));
  if (spki) return record;
  d = reinterpret_cast<const unsigned char*>(der->data());
  PkeyPtr rsa(d2i_PublicKey(EVP_PKEY_RSA, nullptr, &d, static_cast<long>(der->size())));
  if (!rsa) return record;
  unsigned char* outDer = nullptr;
  int len = i2d_PUBKEY(rsa.get(), &outDer);
  if (len <= 0) return record;
  std::string encoded = base64Encode(std::string_view(reinterpret_cast<char*>(outDer), static_cast<size_t>(len)));
  OPENSSL_free(outDer);
  std::string rebuilt;
  for (const auto& [name, value] : *tags) rebuilt += name + "=" + (name == "p" ? encoded : value) + "; ";
  return rebuilt;
}

std::string keyTypeMismatch(const std::string& algorithm, const std::string& record) {
  auto tags = parseTagList(record);
  if (!tags) return {};  // libopendkim reports the syntax error
  const std::string* k = findTag(*tags, "k");
  std::string type = k ? lower(stripWhitespace(*k)) : "rsa";
  std::string wanted = algorithm.substr(0, algorithm.find('-'));  // rsa-sha256 -> rsa
  if (type == wanted) return {};
  return "inappropriate key algorithm: key k=" + type + " for a=" + algorithm + " (RFC 6376 6.1.2)";
}

}  // namespace detail

namespace {

// One DKIM-Signature header as Moat reads it before libopendkim does.
struct Entry {
  SigResult out;
  std::string bValue;     // whitespace-stripped, to match libopendkim's view
  std::string keyName;    // s._domainkey.d, lower-case; empty when no lookup is due
  bool decided = false;   // out.result is final without libopendkim
  DKIM_SIGINFO* sig = nullptr;
  bool relaxedBody = false;  // c= body canonicalization (default simple, RFC 6376 3.5)
  int64_t bodyLength = -1;   // l=, -1 when absent
};

void decide(Entry& e, const char* result, std::string reason) {
  e.out.result = result;
  e.out.reason = std::move(reason);
  e.decided = true;
}

// x= (RFC 6376 3.5) against the verification time. libopendkim checks it too, but only
// against the real clock; this one also honours VerifyOptions::fixedTime.
bool expired(const std::string& x, const VerifyOptions& options) {
  if (x.size() > 18 || x.find_first_not_of("0123456789") != std::string::npos) return false;
  int64_t now = options.fixedTime > 0 ? options.fixedTime : static_cast<int64_t>(std::time(nullptr));
  return std::stoll(x) < now;
}

// d= of a DKIM-Signature field, lower-case; empty when it cannot be read.
std::string signatureDomain(std::string_view raw) {
  auto tags = parseTagList(raw.substr(raw.find(':') + 1));
  const std::string* d = tags ? findTag(*tags, "d") : nullptr;
  return d ? lower(stripWhitespace(*d)) : std::string();
}

// Which signatures are checked when there are more than options.maxSignatures: those whose
// d= aligns (relaxed, RFC 7489 3.1.1) with a From domain first, then the others, each group
// top down, up to the limit; returned in message order. The author's own signature is
// usually the lowest, under those added in transit (lists, forwarders), and it is the one
// DMARC needs; a message stuffed with aligned junk only hides its own From domain's result.
std::vector<size_t> chooseSignatures(std::string_view message, const std::vector<std::string_view>& raws,
                                     size_t limit) {
  std::vector<size_t> chosen;
  if (raws.size() <= limit) {
    for (size_t i = 0; i < raws.size(); ++i) chosen.push_back(i);
    return chosen;
  }
  std::string error;
  auto from = dmarc::fromDomains(message, error);
  std::vector<bool> taken(raws.size(), false);
  for (size_t i = 0; i < raws.size() && chosen.size() < limit; ++i) {
    std::string d = signatureDomain(raws[i]);
    if (d.empty() || !validDomain(d)) continue;
    if (std::any_of(from.begin(), from.end(), [&](const std::string& f) { return dmarc::aligned(d, f, false); })) {
      taken[i] = true;
      chosen.push_back(i);
    }
  }
  for (size_t i = 0; i < raws.size() && chosen.size() < limit; ++i)
    if (!taken[i]) chosen.push_back(i);
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

std::vector<Entry> readSignatures(std::string_view message, const VerifyOptions& options) {
  std::vector<std::string_view> raws;
  for (const auto& h : splitMessage(message).headers)
    if (iequals(h.name, "DKIM-Signature")) raws.push_back(h.raw);
  std::vector<Entry> out;
  for (size_t i : chooseSignatures(message, raws, options.maxSignatures)) {
    std::string_view raw = raws[i];
    Entry e;
    auto tags = parseTagList(raw.substr(raw.find(':') + 1));
    if (!tags) {
      decide(e, "permerror", "malformed signature tag-list");
      out.push_back(std::move(e));
      continue;
    }
    auto tag = [&](const char* n) { return findTag(*tags, n) ? stripWhitespace(*findTag(*tags, n)) : std::string(); };
    e.out.domain = tag("d");
    e.out.selector = tag("s");
    e.out.algorithm = lower(tag("a"));
    e.bValue = tag("b");
    e.out.bPrefix = e.bValue.substr(0, 8);
    std::string canon = lower(tag("c"));  // header/body; no "/": the body is simple
    size_t slash = canon.find('/');
    e.relaxedBody = slash != std::string::npos && canon.substr(slash + 1) == "relaxed";
    std::string length = tag("l");
    if (!length.empty() && length.size() <= 18 && length.find_first_not_of("0123456789") == std::string::npos)
      e.bodyLength = std::stoll(length);
    std::string expiry = tag("x");
    if (tag("v") != "1") decide(e, "permerror", "missing or unsupported v= (RFC 6376 requires v=1)");
    else if (!validDomain(e.out.domain)) decide(e, "permerror", "invalid d= domain");
    else if (!validSelector(e.out.selector)) decide(e, "permerror", "invalid s= selector");
    else if (e.bValue.empty()) decide(e, "permerror", "missing b=");
    else if (!expiry.empty() && expired(expiry, options)) decide(e, "permerror", "signature expired");
    else if (e.out.algorithm == "rsa-sha1") decide(e, "permerror", "rsa-sha1 is not accepted (RFC 8301)");
    else if (e.out.algorithm != "rsa-sha256" && e.out.algorithm != "ed25519-sha256")
      decide(e, "permerror", "unsupported algorithm a=" + e.out.algorithm);
    else e.keyName = lower(e.out.selector) + "._domainkey." + lower(e.out.domain);
    out.push_back(std::move(e));
  }
  if (raws.size() > options.maxSignatures) {
    // One marker for all the rest keeps the output bounded too.
    Entry e;
    decide(e, "neutral", "more than " + std::to_string(options.maxSignatures) + " signatures; the rest not checked");
    out.push_back(std::move(e));
  }
  return out;
}

const KeyAnswer* findKey(const KeyMap& keys, const std::string& name) {
  for (const auto& [k, v] : keys)
    if (k == name) return &v;
  return nullptr;
}

struct Job {
  const KeyMap* keys = nullptr;
  std::vector<Entry>* entries = nullptr;
};

// Pairs libopendkim's signatures with Moat's by b= and drops the ones already decided.
DKIM_CBSTAT prescreen(DKIM* dkim, DKIM_SIGINFO** sigs, int nsigs) {
  auto* job = static_cast<Job*>(dkim_get_user_context(dkim));
  if (!job) return DKIM_CBSTAT_CONTINUE;
  for (int i = 0; i < nsigs; ++i) {
    u_char* b = dkim_sig_gettagvalue(sigs[i], false, reinterpret_cast<u_char*>(const_cast<char*>("b")));
    std::string bValue = b ? stripWhitespace(reinterpret_cast<const char*>(b)) : std::string();
    Entry* match = nullptr;
    for (auto& e : *job->entries) {
      if (!e.sig && !e.bValue.empty() && e.bValue == bValue) {
        match = &e;
        break;
      }
    }
    if (match) match->sig = sigs[i];
    if (!match || match->decided) dkim_sig_ignore(sigs[i]);
  }
  return DKIM_CBSTAT_CONTINUE;
}

DKIM_CBSTAT keyLookup(DKIM* dkim, DKIM_SIGINFO* sig, u_char* buf, size_t buflen) {
  auto* job = static_cast<Job*>(dkim_get_user_context(dkim));
  if (!job || buflen == 0) return DKIM_CBSTAT_ERROR;
  const char* d = reinterpret_cast<const char*>(dkim_sig_getdomain(sig));
  const char* s = reinterpret_cast<const char*>(dkim_sig_getselector(sig));
  if (!d || !s) return DKIM_CBSTAT_NOTFOUND;
  const KeyAnswer* answer = findKey(*job->keys, lower(s) + "._domainkey." + lower(d));
  // Temporary failures were decided (temperror) before libopendkim ran; anything
  // unexpected here is "no key" rather than a silent pass.
  if (!answer || answer->status != mta::dns::Status::Ok || answer->txt.empty()) return DKIM_CBSTAT_NOTFOUND;
  std::string record = normalizeKeyRecord(keyRecord(*answer));
  if (record.size() + 1 > buflen) return DKIM_CBSTAT_ERROR;
  std::memcpy(buf, record.data(), record.size());
  buf[record.size()] = '\0';
  return DKIM_CBSTAT_CONTINUE;
}

LibPtr makeLib(const VerifyOptions& options) {
  LibPtr lib(dkim_init(nullptr, nullptr));
  if (!lib) return lib;
  // BADSIGHANDLES keeps malformed signatures in the list so each gets a result.
  unsigned int flags = DKIM_LIBFLAGS_BADSIGHANDLES;
  dkim_options(lib.get(), DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, sizeof flags);
  unsigned int minBits = 1024;  // RFC 8301 section 3.2
  dkim_options(lib.get(), DKIM_OP_SETOPT, DKIM_OPTS_MINKEYBITS, &minBits, sizeof minBits);
  if (options.fixedTime > 0) {
    uint64_t t = static_cast<uint64_t>(options.fixedTime);
    dkim_options(lib.get(), DKIM_OP_SETOPT, DKIM_OPTS_FIXEDTIME, &t, sizeof t);
    // FIXEDTIME only affects signing; widen the library's clock drift instead so its own
    // expiry check agrees with the fixed time (Moat checks x= itself, above).
    int64_t now = static_cast<int64_t>(std::time(nullptr));
    uint64_t drift = static_cast<uint64_t>(now > options.fixedTime ? now - options.fixedTime : 0) + 300;
    dkim_options(lib.get(), DKIM_OP_SETOPT, DKIM_OPTS_CLOCKDRIFT, &drift, sizeof drift);
  }
  dkim_set_prescreen(lib.get(), prescreen);
  dkim_set_key_lookup(lib.get(), keyLookup);
  return lib;
}

// One library per process for the common case (thread-safe once set up); a private one
// when a fixed verification time is asked for.
DKIM_LIB* sharedLib() {
  static LibPtr lib = makeLib(VerifyOptions{});
  return lib.get();
}

const char* sigErrorResult(int err) {
  switch (err) {
    case DKIM_SIGERROR_BADSIG:
      return "fail";
    case DKIM_SIGERROR_KEYFAIL:
      return "temperror";
    default:
      return "permerror";
  }
}

// Canonical body lengths, computed once per canonicalization for all signatures.
struct BodyLengths {
  std::string_view body;
  int64_t simple = -1, relaxed = -1;
  int64_t of(bool relaxedCanon) {
    int64_t& n = relaxedCanon ? relaxed : simple;
    if (n < 0) n = static_cast<int64_t>(canonicalBody(body, relaxedCanon).size());
    return n;
  }
};

void classify(DKIM* dkim, Entry& e, BodyLengths& lengths) {
  unsigned int flags = dkim_sig_getflags(e.sig);
  if (!(flags & DKIM_SIGFLAG_PROCESSED)) dkim_sig_process(dkim, e.sig);
  flags = dkim_sig_getflags(e.sig);
  int bh = dkim_sig_getbh(e.sig);
  int err = dkim_sig_geterror(e.sig);
  if ((flags & DKIM_SIGFLAG_PASSED) && bh == DKIM_SIGBH_MATCH) {
    unsigned int bits = 0;
    dkim_alg_t alg = DKIM_SIGN_UNKNOWN;
    dkim_sig_getsignalg(e.sig, &alg);
    if (alg == DKIM_SIGN_RSASHA1) return decide(e, "permerror", "rsa-sha1 is not accepted (RFC 8301)");
    if (alg == DKIM_SIGN_RSASHA256 && dkim_sig_getkeysize(e.sig, &bits) == DKIM_STAT_OK && bits < 1024)
      return decide(e, "permerror", "RSA key of " + std::to_string(bits) + " bits is under 1024 (RFC 8301)");
    // RFC 6376 8.2: with l= shorter than the body, anything after it is unsigned and may have
    // been appended by anyone. The signature is good but not accepted: RFC 8601 2.7.1
    // "policy", which DMARC does not count as a pass.
    if (e.bodyLength >= 0) {
      int64_t total = lengths.of(e.relaxedBody);
      if (e.bodyLength < total)
        return decide(
            e, "policy",
            "l= covers only " + std::to_string(e.bodyLength) + " of " + std::to_string(total) + " body octets");
    }
    return decide(e, "pass", "");
  }
  if (bh == DKIM_SIGBH_MISMATCH) return decide(e, "fail", "body hash did not verify");
  if (err == DKIM_SIGERROR_OK || err == DKIM_SIGERROR_UNKNOWN)
    return decide(e, "fail", "signature did not verify");
  if (err == DKIM_SIGERROR_KEYTOOSMALL) return decide(e, "permerror", "RSA key under 1024 bits (RFC 8301)");
  const char* text = dkim_sig_geterrorstr(err);
  decide(e, sigErrorResult(err), text ? text : "signature error " + std::to_string(err));
}

void runLibrary(DKIM_LIB* lib, std::string_view message, Job& job) {
  DKIM_STAT st = DKIM_STAT_OK;
  HandlePtr dkim(dkim_verify(lib, reinterpret_cast<const u_char*>("moat"), nullptr, &st));
  if (!dkim) return;
  dkim_set_user_context(dkim.get(), &job);
  auto split = splitMessage(message);
  for (const auto& h : split.headers) {
    // An empty "field" (a lone CR ending a message without a body) is nothing to sign or
    // check, and libopendkim asserts (aborts the process) on a header of length 0.
    if (h.raw.empty()) continue;
    std::string raw(h.raw);  // libopendkim takes a mutable buffer
    dkim_header(dkim.get(), reinterpret_cast<u_char*>(raw.data()), raw.size());
  }
  if (dkim_eoh(dkim.get()) != DKIM_STAT_OK) return;
  std::string body = completeBody(split.body);
  if (!body.empty()) dkim_body(dkim.get(), reinterpret_cast<u_char*>(body.data()), body.size());
  dkim_eom(dkim.get(), nullptr);
  BodyLengths lengths{body};
  for (auto& e : *job.entries)
    if (!e.decided && e.sig) classify(dkim.get(), e, lengths);
}

}  // namespace

std::vector<std::string> keyNamesToFetch(std::string_view message, const VerifyOptions& options) {
  std::vector<std::string> names;
  for (const auto& e : readSignatures(message, options)) {
    if (e.keyName.empty()) continue;
    if (std::find(names.begin(), names.end(), e.keyName) == names.end()) names.push_back(e.keyName);
  }
  return names;
}

std::vector<SigResult> verifyWithKeys(std::string_view message, const KeyMap& keys, const VerifyOptions& options) {
  auto entries = readSignatures(message, options);
  for (auto& e : entries) {
    if (e.decided) continue;
    const KeyAnswer* a = findKey(keys, e.keyName);
    if (!a || a->status == mta::dns::Status::TempFail) decide(e, "temperror", "key lookup failed temporarily");
    else if (a->status != mta::dns::Status::Ok || a->txt.empty())
      decide(e, "permerror", "no key record for " + e.keyName);
    else if (auto why = keyTypeMismatch(e.out.algorithm, keyRecord(*a)); !why.empty())
      decide(e, "permerror", why);
  }
  bool any = std::any_of(entries.begin(), entries.end(), [](const Entry& e) { return !e.decided; });
  if (any) {
    Job job{&keys, &entries};
    LibPtr own;
    DKIM_LIB* lib = sharedLib();
    if (options.fixedTime > 0) {
      own = makeLib(options);
      lib = own.get();
    }
    if (lib) runLibrary(lib, message, job);
  }
  std::vector<SigResult> out;
  for (auto& e : entries) {
    if (!e.decided) decide(e, "permerror", "signature not usable");
    out.push_back(std::move(e.out));
  }
  return out;
}

namespace {

struct Pending {
  KeyMap keys;
  std::string_view message;
  VerifyOptions options;
  std::shared_ptr<const void> keepAlive;
  std::function<void(std::vector<SigResult>)> done;
};

void runCrypto(const filters::Env& env, std::shared_ptr<Pending> p) {
  auto results = std::make_shared<std::vector<SigResult>>();
  env.offload([p, results] { *results = verifyWithKeys(p->message, p->keys, p->options); },
              [p, results] { p->done(std::move(*results)); });
}

}  // namespace

namespace {

void fetchKeysThenVerify(const filters::Env& env, std::shared_ptr<Pending> p, std::vector<std::string> names,
                         bool inline_) {
  if (names.empty()) {
    // No signature needs a key, so no crypto runs: unsigned mail (the common case) and
    // signatures already refused are decided here without a trip to the thread pool.
    if (!inline_) return runCrypto(env, p);
    p->done(verifyWithKeys(p->message, p->keys, p->options));
    return;
  }
  if (!env.resolver) {
    runCrypto(env, p);
    return;
  }
  // Env is copied into the callback: the caller's Env need not outlive the lookups.
  filters::Env envCopy = env;
  fetchKeys(env, names, [p, envCopy](KeyMap keys) {
    p->keys = std::move(keys);
    runCrypto(envCopy, p);
  });
}

}  // namespace

void verifyMessage(const filters::Env& env, std::string_view message, std::shared_ptr<const void> keepAlive,
                   const VerifyOptions& options, std::function<void(std::vector<SigResult>)> done) {
  auto p = std::make_shared<Pending>();
  p->message = message;
  p->options = options;
  p->keepAlive = std::move(keepAlive);
  p->done = std::move(done);
  if (!filters::largeHeaderSection(message))
    return fetchKeysThenVerify(env, p, keyNamesToFetch(message, options), true);
  // Reading every field of a large header section is work for the pool (filter.h).
  auto names = std::make_shared<std::vector<std::string>>();
  filters::Env envCopy = env;
  env.offload([p, names] { *names = keyNamesToFetch(p->message, p->options); },
              [envCopy, p, names] { fetchKeysThenVerify(envCopy, p, std::move(*names), false); });
}

void verifyMessage(const filters::Env& env, std::string_view message, std::shared_ptr<const void> keepAlive,
                   std::function<void(std::vector<SigResult>)> done) {
  verifyMessage(env, message, std::move(keepAlive), VerifyOptions{}, std::move(done));
}

}  // namespace moat::filters::dkim
