// filters/arc/chain.cc — ARC chain validation, RFC 8617 section 5.2; see arc.h. The
// signatures are DKIM's (RFC 6376 section 3.7 hashing, 3.4 canonicalization) computed here
// with OpenSSL: libopendkim knows no ARC. Untrusted: the message and the key records; every
// loop is bounded by the input, by kMaxArcFields and kMaxArcBytes. Nothing is logged here.
#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <optional>

#include "filters/arc/arc.h"
#include "filters/dkim/internal.h"

namespace moat::filters::arc {

using namespace dkim::detail;

namespace {

std::string_view trimView(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::string_view valueOf(std::string_view raw) {
  size_t colon = raw.find(':');
  return colon == std::string_view::npos ? std::string_view() : raw.substr(colon + 1);
}

// i= (RFC 8617 4.2.1): 1 to kMaxInstances; 0 when it is anything else.
int instanceNumber(std::string_view digits) {
  digits = trimView(digits);
  if (digits.empty() || digits.size() > 3 || digits.find_first_not_of("0123456789") != std::string_view::npos) return 0;
  int n = std::stoi(std::string(digits));
  return n >= 1 && n <= kMaxInstances ? n : 0;
}

// ARC-Authentication-Results: "i=N;" then an Authentication-Results payload (RFC 8617 4.1.1).
int aarInstance(std::string_view raw) {
  std::string_view v = trimView(valueOf(raw));
  if (v.empty() || (v.front() != 'i' && v.front() != 'I')) return 0;
  v = trimView(v.substr(1));
  if (v.empty() || v.front() != '=') return 0;
  size_t semi = v.find(';');
  if (semi == std::string_view::npos) return 0;
  return instanceNumber(v.substr(1, semi - 1));
}

enum Kind { kAar = 0, kAms = 1, kSeal = 2 };
constexpr std::array<const char*, 3> kNames = {"ARC-Authentication-Results", "ARC-Message-Signature", "ARC-Seal"};

ChainResult failWith(std::string reason, int instances = 0, std::string sealer = {}) {
  ChainResult r;
  r.result = "fail";
  r.reason = std::move(reason);
  r.instances = instances;
  r.sealer = std::move(sealer);
  return r;
}

std::string tagOf(const TagList& tags, const char* name) {
  const std::string* v = findTag(tags, name);
  return v ? stripWhitespace(*v) : std::string();
}

std::string keyName(const TagList& tags) { return lower(tagOf(tags, "s")) + "._domainkey." + lower(tagOf(tags, "d")); }

// The tags every ARC signature needs (a=, d=, s=, b=); empty when they are good.
std::string signatureProblem(const TagList& tags, const char* what, int i) {
  std::string at = std::string(what) + " " + std::to_string(i);
  std::string a = lower(tagOf(tags, "a"));
  if (a.empty()) return at + ": missing a=";
  if (a != "rsa-sha256") return at + ": a= is not rsa-sha256";
  if (!validDomain(tagOf(tags, "d"))) return at + ": invalid d=";
  if (!validSelector(tagOf(tags, "s"))) return at + ": invalid s=";
  if (tagOf(tags, "b").empty()) return at + ": missing b=";
  return {};
}

// The h= names of an ARC-Message-Signature, lower-case.
std::vector<std::string> signedNames(const TagList& tags) {
  std::vector<std::string> out;
  std::string h = tagOf(tags, "h");
  size_t start = 0;
  while (start <= h.size()) {
    size_t colon = h.find(':', start);
    std::string name = lower(h.substr(start, colon == std::string::npos ? std::string::npos : colon - start));
    if (!name.empty()) out.push_back(std::move(name));
    start = colon == std::string::npos ? h.size() + 1 : colon + 1;
  }
  return out;
}

std::string amsProblem(const TagList& tags, int i) {
  if (auto why = signatureProblem(tags, "ARC-Message-Signature", i); !why.empty()) return why;
  std::string at = "ARC-Message-Signature " + std::to_string(i);
  if (tagOf(tags, "bh").empty()) return at + ": missing bh=";
  auto names = signedNames(tags);
  if (names.empty()) return at + ": missing h=";
  if (std::find(names.begin(), names.end(), "arc-seal") != names.end()) return at + ": h= names ARC-Seal";
  if (std::find(names.begin(), names.end(), "from") == names.end()) return at + ": h= does not name From";
  if (findTag(tags, "l")) return at + ": l= is not accepted";
  std::string c = lower(tagOf(tags, "c"));
  if (!c.empty()) {
    size_t slash = c.find('/');
    std::string head = c.substr(0, slash), body = slash == std::string::npos ? "simple" : c.substr(slash + 1);
    if ((head != "simple" && head != "relaxed") || (body != "simple" && body != "relaxed"))
      return at + ": unknown c= canonicalization";
  }
  return {};
}

std::optional<std::string> sha256(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) return std::nullopt;
  return std::string(reinterpret_cast<char*>(md), len);
}

bool rsaVerify(EVP_PKEY* key, std::string_view data, const std::string& signature) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!md || EVP_DigestVerifyInit(md.get(), nullptr, EVP_sha256(), nullptr, key) != 1) return false;
  return EVP_DigestVerify(md.get(), reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
                          reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1;
}

// The key for a signature's d= and s=, or nullptr with `why` set.
PkeyPtr keyFor(const dkim::KeyMap& keys, const TagList& tags, const std::string& what, std::string& why) {
  std::string name = keyName(tags);
  const dkim::KeyAnswer* answer = nullptr;
  for (const auto& [k, v] : keys)
    if (k == name) answer = &v;
  if (!answer || answer->status == mta::dns::Status::TempFail) {
    why = what + ": key lookup failed temporarily (" + name + ")";
    return nullptr;
  }
  if (answer->status != mta::dns::Status::Ok || answer->txt.empty()) {
    why = what + ": no key record at " + name;
    return nullptr;
  }
  std::string error;
  PkeyPtr key = rsaPublicKey(keyRecord(*answer), 1024, error);
  if (!key) why = what + ": " + error + " (" + name + ")";
  return key;
}

bool verifySignature(const dkim::KeyMap& keys, const TagList& tags, std::string_view input, const std::string& what,
                     std::string& why) {
  PkeyPtr key = keyFor(keys, tags, what, why);
  if (!key) return false;
  auto b = base64Decode(tagOf(tags, "b"));
  if (!b || b->empty()) {
    why = what + ": b= is not base64";
    return false;
  }
  if (!rsaVerify(key.get(), input, *b)) {
    why = what + ": signature did not verify";
    return false;
  }
  return true;
}

// RFC 6376 3.7 for the ARC-Message-Signature of the latest instance, against the message.
bool verifyAms(const SplitMessage& split, std::string_view ams, int i, const dkim::KeyMap& keys, std::string& why) {
  std::string what = "ARC-Message-Signature " + std::to_string(i);
  auto tags = parseTagList(valueOf(ams));
  if (!tags) {
    why = what + ": malformed tag-list";
    return false;
  }
  std::string c = lower(tagOf(*tags, "c"));  // default simple/simple, as DKIM
  size_t slash = c.find('/');
  bool relaxedHeader = c.substr(0, slash) == "relaxed";
  bool relaxedBody = slash != std::string::npos && c.substr(slash + 1) == "relaxed";
  auto bh = base64Decode(tagOf(*tags, "bh"));
  auto bodyHash = sha256(canonicalBody(split.body, relaxedBody));
  if (!bh || !bodyHash || *bh != *bodyHash) {
    why = what + ": body hash did not verify";
    return false;
  }
  // h= picks fields from the bottom up, each at most once (RFC 6376 5.4.2); a name with no
  // field left adds nothing.
  std::string input;
  std::vector<bool> used(split.headers.size(), false);
  for (const auto& name : signedNames(*tags)) {
    for (size_t k = split.headers.size(); k-- > 0;) {
      if (used[k] || !iequals(split.headers[k].name, name)) continue;
      used[k] = true;
      input += canonicalHeader(split.headers[k].raw, relaxedHeader);
      break;
    }
  }
  std::string self = canonicalHeader(withoutSignature(ams), relaxedHeader);
  self.resize(self.size() - 2);  // the signature field goes in without its CRLF
  input += self;
  return verifySignature(keys, *tags, input, what, why);
}

}  // namespace

std::string canonicalHeader(std::string_view raw, bool relaxed) {
  return (relaxed ? dkim::detail::relaxedHeader(raw) : std::string(raw)) + "\r\n";
}

std::string withoutSignature(std::string_view raw) {
  size_t pos = raw.find(':');
  if (pos == std::string_view::npos) return std::string(raw);
  ++pos;
  while (pos <= raw.size()) {
    size_t semi = raw.find(';', pos);
    size_t end = semi == std::string_view::npos ? raw.size() : semi;
    std::string_view spec = raw.substr(pos, end - pos);
    size_t eq = spec.find('=');
    if (eq != std::string_view::npos && trimView(spec.substr(0, eq)) == "b")
      return std::string(raw.substr(0, pos + eq + 1)) + std::string(raw.substr(end));
    if (semi == std::string_view::npos) break;
    pos = semi + 1;
  }
  return std::string(raw);
}

std::string sealInput(const std::vector<ArcSet>& sets, size_t upTo) {
  std::string out;
  for (size_t k = 0; k < upTo && k < sets.size(); ++k) {
    out += canonicalHeader(sets[k].aar, true);
    out += canonicalHeader(sets[k].ams, true);
    if (k + 1 < upTo) {
      out += canonicalHeader(sets[k].seal, true);
    } else {
      std::string last = canonicalHeader(withoutSignature(sets[k].seal), true);
      last.resize(last.size() - 2);
      out += last;
    }
  }
  return out;
}

Chain readChain(std::string_view message) {
  Chain chain;
  auto split = splitMessage(mta::headerBlock(message));
  // 5.2 step 1: the ARC fields, by instance.
  std::vector<std::array<std::string_view, 3>> slots(kMaxInstances + 1);
  size_t fields = 0, bytes = 0;
  int latest = 0;
  auto decide = [&chain](ChainResult r) {
    chain.decided = true;
    chain.out = std::move(r);
    return chain;
  };
  // The bounds first, so a flood of fields is refused as such whatever else is wrong.
  std::vector<std::pair<int, std::string_view>> found;  // kind, raw
  for (const auto& h : split.headers) {
    for (int k = 0; k < 3; ++k) {
      if (!iequals(h.name, kNames[static_cast<size_t>(k)])) continue;
      if (++fields > kMaxArcFields)
        return decide(failWith("more than " + std::to_string(kMaxArcFields) + " ARC fields"));
      bytes += h.raw.size();
      if (bytes > kMaxArcBytes)
        return decide(failWith("ARC fields over " + std::to_string(kMaxArcBytes / 1024) + " KiB"));
      found.emplace_back(k, h.raw);
    }
  }
  for (const auto& [kind, raw] : found) {
    const HeaderField h{{}, raw};
    int i = 0;
    if (kind == kAar) {
      i = aarInstance(h.raw);
    } else {
      auto tags = parseTagList(valueOf(h.raw));
      if (!tags) return decide(failWith(std::string(kNames[static_cast<size_t>(kind)]) + ": malformed tag-list"));
      i = instanceNumber(tagOf(*tags, "i"));
    }
    // 5.2 step 2: a set must have exactly one field of each kind, with a usable instance.
    if (i == 0)
      return decide(failWith(std::string(kNames[static_cast<size_t>(kind)]) + ": i= missing or not 1 to " +
                             std::to_string(kMaxInstances)));
    auto& slot = slots[static_cast<size_t>(i)][static_cast<size_t>(kind)];
    if (!slot.empty())
      return decide(failWith("more than one " + std::string(kNames[static_cast<size_t>(kind)]) + " for instance " +
                             std::to_string(i)));
    slot = h.raw;
    latest = std::max(latest, i);
  }
  if (fields == 0) return decide(ChainResult{});
  for (int i = 1; i <= latest; ++i) {
    for (size_t k = 0; k < 3; ++k)
      if (slots[static_cast<size_t>(i)][k].empty())
        return decide(failWith("instance " + std::to_string(i) + " has no " + kNames[k], latest));
    const auto& s = slots[static_cast<size_t>(i)];
    chain.sets.push_back({s[kAar], s[kAms], s[kSeal]});
  }
  // The latest seal: its sealer (for the log and the trusted sealers) and 5.2 step 3.
  auto latestSeal = parseTagList(valueOf(chain.sets.back().seal));
  std::string sealer = lower(tagOf(*latestSeal, "d"));
  if (!validDomain(sealer)) sealer.clear();
  if (lower(tagOf(*latestSeal, "cv")) == "fail")
    return decide(failWith("the latest ARC-Seal says cv=fail", latest, sealer));
  // 5.2 step 4: cv= of each seal, and every signature usable.
  auto addKey = [&chain](const TagList& tags) {
    std::string name = keyName(tags);
    if (std::find(chain.keyNames.begin(), chain.keyNames.end(), name) == chain.keyNames.end())
      chain.keyNames.push_back(std::move(name));
  };
  for (int i = 1; i <= latest; ++i) {
    auto seal = parseTagList(valueOf(chain.sets[static_cast<size_t>(i - 1)].seal));
    std::string cv = lower(tagOf(*seal, "cv"));
    const char* wanted = i == 1 ? "none" : "pass";
    if (cv != wanted)
      return decide(failWith("ARC-Seal " + std::to_string(i) + ": cv= is not " + wanted, latest, sealer));
    if (findTag(*seal, "h"))
      return decide(failWith("ARC-Seal " + std::to_string(i) + ": h= is not allowed", latest, sealer));
    if (auto why = signatureProblem(*seal, "ARC-Seal", i); !why.empty()) return decide(failWith(why, latest, sealer));
    addKey(*seal);
  }
  auto ams = parseTagList(valueOf(chain.sets.back().ams));
  if (auto why = amsProblem(*ams, latest); !why.empty()) return decide(failWith(why, latest, sealer));
  addKey(*ams);
  chain.out.instances = latest;
  chain.out.sealer = sealer;
  return chain;
}

ChainResult verifyWithKeys(std::string_view message, const dkim::KeyMap& keys) {
  Chain chain = readChain(message);
  if (chain.decided) return chain.out;
  int latest = chain.out.instances;
  const std::string& sealer = chain.out.sealer;
  std::string why;
  // 5.2 step 5: the latest ARC-Message-Signature.
  auto split = splitMessage(message);
  if (!verifyAms(split, chain.sets.back().ams, latest, keys, why)) return failWith(why, latest, sealer);
  // 5.2 step 7: every seal, the latest first.
  for (int i = latest; i >= 1; --i) {
    auto tags = parseTagList(valueOf(chain.sets[static_cast<size_t>(i - 1)].seal));
    std::string input = sealInput(chain.sets, static_cast<size_t>(i));
    if (!verifySignature(keys, *tags, input, "ARC-Seal " + std::to_string(i), why))
      return failWith(why, latest, sealer);
  }
  ChainResult pass;
  pass.result = "pass";
  pass.instances = latest;
  pass.sealer = sealer;
  return pass;
}

void verifyMessage(const filters::Env& env, std::string_view message, std::shared_ptr<const void> keepAlive,
                   std::function<void(ChainResult)> done) {
  struct Job {
    std::string_view message;
    std::shared_ptr<const void> keepAlive;
    std::function<void(ChainResult)> done;
    dkim::KeyMap keys;
  };
  auto job = std::make_shared<Job>(Job{message, std::move(keepAlive), std::move(done), {}});
  // Env is copied into the callbacks: the caller's Env need not outlive the lookups.
  filters::Env envCopy = env;
  auto afterRead = [envCopy, job](const Chain& chain) {
    if (chain.decided) return job->done(chain.out);
    if (!envCopy.resolver)
      return job->done(failWith("no resolver for the keys", chain.out.instances, chain.out.sealer));
    fetchKeys(envCopy, chain.keyNames, [envCopy, job](dkim::KeyMap keys) {
      job->keys = std::move(keys);
      auto result = std::make_shared<ChainResult>();
      envCopy.offload([job, result] { *result = verifyWithKeys(job->message, job->keys); },
                      [job, result] { job->done(std::move(*result)); }, job->message.size());
    });
  };
  if (!largeHeaderSection(message)) return afterRead(readChain(message));
  // Reading every field of a large header section is work for the pool (filter.h).
  auto chain = std::make_shared<Chain>();
  env.offload([job, chain] { *chain = readChain(job->message); }, [afterRead, chain] { afterRead(*chain); });
}

}  // namespace moat::filters::arc
