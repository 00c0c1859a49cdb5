// tests/fuzz/fuzz_auth.cc — libFuzzer target for the DKIM and ARC code that reads what any
// sender controls: the header splitter, tag-lists, canonicalization and header selection
// (filters/dkim/internal.h), key records, DKIM-Signature fields as the verifier reads them
// (filters/dkim/dkim.h, libopendkim behind it) and ARC chains (filters/arc/arc.h).
// Input layout: byte 0 picks the parser (modulo 9), the rest is the input; the selection
// and DKIM parsers take byte 1 as a parameter.
// Checked:
//   - splitMessage: fields and body are views into the message, in order, each field ends
//     at a line end not followed by WSP, names are trimmed;
//   - tag-lists: a parsed list written back parses to the same tags; foldSignature keeps
//     the tags (h=, b=, bh= up to whitespace) and folds b= after the part it signs;
//   - canonicalBody (simple and relaxed) is idempotent, ends in CRLF (or is empty, relaxed
//     only; RFC 6376 §3.4.3 and §3.4.4), takes a last line without CRLF as ended, has no
//     empty lines at its end and, relaxed, no WSP runs or WSP at a line end;
//   - relaxed header canonicalization (relaxedHeader, which arc::canonicalHeader uses) is
//     idempotent and unfolded (§3.4.2: no CR or LF, no WSP runs, none around the colon or
//     at the end); withoutSignature empties b= and keeps every other tag;
//   - selectHeaders: h= lists the signed names present plus the oversigned ones, and the
//     block holds one relaxed field per name that has a field left;
//   - key records: keyRecord picks one of the strings, rsaPublicKey gives a key of at least
//     the minimum or an error, normalizeKeyRecord keeps the key and the other tags,
//     keyTypeMismatch accepts a record for at most one of rsa-sha256 and ed25519-sha256;
//   - DKIM verification with fixed keys (an RSA-1024 and an ed25519 record, or a record from
//     the input): one result per signature up to the limit plus one marker, RFC 8601 names,
//     and a pass only for a signature made by the seeds' private keys (its b= is known, up
//     to characters outside the base64 alphabet, which the decoders skip);
//   - readChain: a structure it accepts has instances 1..N without gaps, N <= 50, one field
//     of each kind per set with that i=, all in the header section; bounds are enforced;
//     the seal input of each instance has its 3i fields and no CRLF at its end;
//   - arc::verifyWithKeys with the RSA-1024 record for every key name agrees with readChain
//     and passes only a chain whose latest seal is one of the seeds' (b= known).
// The seeds in corpus/fuzz_auth/ were signed and ARC-sealed by dkimpy (python3-dkim) with
// the private keys of kRsaRecord and kEd25519Record (the ed25519 one is the seed 00..1f; the
// RSA one was not kept: new signed seeds need a new key, kRsaRecord and kSeedSignatures).
#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "filters/arc/arc.h"
#include "filters/dkim/dkim.h"
#include "filters/dkim/internal.h"
#include "mta/runtime/scan.h"
#include "tests/fuzz/fuzz_check.h"

namespace dk = moat::filters::dkim;
namespace detail = moat::filters::dkim::detail;
namespace arc = moat::filters::arc;
using moat::mta::dns::Status;

namespace {

const std::string kRsaRecord =
    "v=DKIM1; k=rsa; "
    "p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDwn2noCWIUZ27afMt/q2vPDx0jdbFmVMT0tmM4dWwdIWbU7a+Mk8shEwpwe0og5wEUeT6hEpEu"
    "zReEpiEn+xIHo34VPnvLUHRKo7QXi2+TSOIfGAdIiCm6U6UrWb9ZCtwNOmUT2E1/opuOJ/cjnCXb3+yCLDvZBuK+YKfwXhtGXQIDAQAB";
const std::string kEd25519Record = "v=DKIM1; k=ed25519; p=A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";

// The first 16 characters of every b= in the seeds: the only signatures there can be.
const std::vector<std::string> kSeedSignatures = {"4zePON8bVRWsdPPP", "FNYC5Ovffn4ZcAeV", "I36kLZnesy7vCOVe",
                                                  "PJVnNt5lyoSn3M65", "nZvEk4iYPKTOkNX7", "oIm7n5s0Jr9DWt3/",
                                                  "p+BZZwOipBh9Y/CC", "qiGOYF6iZBPDZdH9"};

// Decoders (libopendkim's, dkimpy's) skip characters outside the base64 alphabet, so one
// signature has many spellings: they are compared by what is left.
bool knownSignature(std::string_view spelled, size_t prefix) {
  std::string b;
  for (char c : spelled)
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '/') b.push_back(c);
  if (b.size() < prefix) return false;
  return std::any_of(kSeedSignatures.begin(), kSeedSignatures.end(),
                     [&](const std::string& s) { return s.compare(0, prefix, b.substr(0, prefix)) == 0; });
}

bool isWsp(char c) { return c == ' ' || c == '\t'; }
bool isSpace(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

bool inside(std::string_view outer, std::string_view inner) {
  return inner.empty() || (inner.data() >= outer.data() && inner.data() + inner.size() <= outer.data() + outer.size());
}

std::string_view valueOf(std::string_view raw) {
  size_t colon = raw.find(':');
  return colon == std::string_view::npos ? std::string_view() : raw.substr(colon + 1);
}

std::string tag(const detail::TagList& tags, const char* name) {
  const std::string* v = detail::findTag(tags, name);
  return v ? detail::stripWhitespace(*v) : std::string();
}

void checkSplit(std::string_view m) {
  auto split = detail::splitMessage(m);
  const char* at = m.data();
  for (const auto& h : split.headers) {
    FUZZ_CHECK(inside(m, h.raw) && (h.raw.empty() || h.raw.data() >= at));
    FUZZ_CHECK(inside(h.raw, h.name));
    FUZZ_CHECK(h.name.empty() || (!isSpace(h.name.front()) && !isSpace(h.name.back())));
    FUZZ_CHECK(h.name.find(':') == std::string_view::npos);
    if (!h.raw.empty()) at = h.raw.data() + h.raw.size();
    // A field ends at a line end (or the message's end) that no WSP follows.
    for (size_t i = 0; i < h.raw.size(); ++i)
      if (h.raw[i] == '\n') FUZZ_CHECK(i + 1 < h.raw.size() && isWsp(h.raw[i + 1]));
    std::string_view after = m.substr(static_cast<size_t>(at - m.data()));
    if (!h.raw.empty())
      FUZZ_CHECK(after.empty() || after.rfind("\r\n", 0) == 0 || after.front() == '\n' || after == "\r");
  }
  FUZZ_CHECK(inside(m, split.body));
  if (!split.body.empty()) {
    FUZZ_CHECK(split.body.data() + split.body.size() == m.data() + m.size());
    FUZZ_CHECK(split.body.data() >= at);
  }
}

void checkTagList(std::string_view text) {
  auto tags = detail::parseTagList(text);
  if (!tags) return;
  std::string written;
  for (const auto& [k, v] : *tags) {
    FUZZ_CHECK(!k.empty() && k.find_first_of("=;") == std::string::npos && v.find(';') == std::string::npos);
    FUZZ_CHECK(!isSpace(k.front()) && !isSpace(k.back()));
    FUZZ_CHECK(v.empty() || (!isSpace(v.front()) && !isSpace(v.back())));
    FUZZ_CHECK(detail::findTag(*tags, k) == &v);  // names are distinct
    written += k + "=" + v + "; ";
  }
  auto again = detail::parseTagList(written);
  FUZZ_CHECK(again && *again == *tags);

  // Folding keeps the tags; h=, b= and bh= may gain FWS inside.
  if (text.find_first_of("\r\n") != std::string_view::npos) return;
  std::string folded = detail::foldSignature(text);
  auto back = detail::parseTagList(folded);
  FUZZ_CHECK(back && back->size() == tags->size());
  for (size_t i = 0; i < tags->size(); ++i) {
    const auto& [k, v] = (*tags)[i];
    FUZZ_CHECK((*back)[i].first == k);
    if (k == "h" || k == "b" || k == "bh")
      FUZZ_CHECK(detail::stripWhitespace((*back)[i].second) == detail::stripWhitespace(v));
    else
      FUZZ_CHECK((*back)[i].second == v);
  }
  for (size_t i = 0; i < folded.size(); ++i)
    if (folded[i] == '\n') FUZZ_CHECK(i > 0 && folded[i - 1] == '\r' && i + 1 < folded.size() && folded[i + 1] == '\t');
  // signEd25519 signs the folding of "...; b=" and sends the folding with b= filled in.
  std::string unsigned_ = std::string(text) + "; b=";
  std::string whole = detail::foldSignature(unsigned_ + "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWprbG1u");
  FUZZ_CHECK(whole.rfind(detail::foldSignature(unsigned_), 0) == 0);
}

void checkBody(std::string_view body) {
  for (bool relaxed : {false, true}) {
    std::string c = detail::canonicalBody(body, relaxed);
    FUZZ_CHECK(detail::canonicalBody(c, relaxed) == c);
    FUZZ_CHECK(detail::canonicalBody(detail::completeBody(body), relaxed) == c);
    if (relaxed)
      FUZZ_CHECK(c.empty() || (c.size() >= 2 && c.compare(c.size() - 2, 2, "\r\n") == 0));
    else
      FUZZ_CHECK(c.size() >= 2 && c.compare(c.size() - 2, 2, "\r\n") == 0);
    // No empty lines at the end (the simple form of an empty body is that one CRLF).
    FUZZ_CHECK(c.size() < 4 || c.compare(c.size() - 4, 4, "\r\n\r\n") != 0);
    for (size_t i = 0; i < c.size(); ++i)
      if (c[i] == '\n') FUZZ_CHECK(i > 0 && c[i - 1] == '\r');
    if (relaxed) {
      FUZZ_CHECK(c.find('\t') == std::string::npos && c.find("  ") == std::string::npos);
      FUZZ_CHECK(c.find(" \r\n") == std::string::npos);
    }
  }
  FUZZ_CHECK(detail::bodyHashRelaxed(body).size() == 44);
}

void checkHeader(std::string_view raw) {
  std::string r = detail::relaxedHeader(raw);
  std::string c = arc::canonicalHeader(raw, true);
  FUZZ_CHECK(arc::canonicalHeader(raw, false) == std::string(raw) + "\r\n");
  size_t colon = raw.find(':');
  FUZZ_CHECK(r + "\r\n" == c);
  if (colon != std::string_view::npos) {
    // RFC 6376 3.4.2: the value unfolded with WSP runs as one SP, no whitespace at its end or
    // around the colon (a name folded before its colon is unfolded too); the name lower-case.
    size_t rc = r.find(':');
    FUZZ_CHECK(rc != std::string::npos);
    std::string_view value = std::string_view(r).substr(rc + 1);
    FUZZ_CHECK(value.find_first_of("\r\n\t") == std::string_view::npos && value.find("  ") == std::string_view::npos);
    FUZZ_CHECK(rc == 0 || !isSpace(r[rc - 1]));
    FUZZ_CHECK(value.empty() || (value.front() != ' ' && value.back() != ' '));
    FUZZ_CHECK(detail::relaxedHeader(r) == r);
    for (size_t i = 0; i < rc; ++i) FUZZ_CHECK(!(r[i] >= 'A' && r[i] <= 'Z'));
  }
  FUZZ_CHECK(c.size() >= 2 && c.compare(c.size() - 2, 2, "\r\n") == 0);
  FUZZ_CHECK(arc::canonicalHeader(std::string_view(c).substr(0, c.size() - 2), true) == c);

  // withoutSignature empties b= and keeps every other tag.
  std::string stripped = arc::withoutSignature(raw);
  FUZZ_CHECK(stripped.size() <= raw.size());
  auto tags = detail::parseTagList(valueOf(raw));
  if (!tags || colon == std::string_view::npos) return;
  auto after = detail::parseTagList(valueOf(stripped));
  FUZZ_CHECK(after && after->size() == tags->size());
  for (size_t i = 0; i < tags->size(); ++i) {
    FUZZ_CHECK((*after)[i].first == (*tags)[i].first);
    FUZZ_CHECK((*after)[i].second == ((*tags)[i].first == "b" ? std::string() : (*tags)[i].second));
  }
}

void checkSelect(uint8_t param, std::string_view m) {
  static const std::vector<std::string> kNames = {"from", "to", "subject", "date", "message-id", "cc", "mime-version"};
  std::vector<std::string> sign, oversign;
  for (size_t i = 0; i < kNames.size(); ++i)
    if (param & (1u << i)) sign.push_back(kNames[i]);
  if (param & 0x80) oversign = {"from", "subject"};
  auto split = detail::splitMessage(m);
  auto [hList, block] = detail::selectHeaders(split, sign, oversign);
  std::vector<std::string> names;
  size_t expected = oversign.size(), fields = 0;
  for (const auto& h : split.headers)
    for (const auto& s : sign)
      if (detail::iequals(h.name, s)) ++expected;
  for (size_t start = 0; !hList.empty() && start <= hList.size();) {
    size_t colon = hList.find(':', start);
    names.push_back(hList.substr(start, colon == std::string::npos ? std::string::npos : colon - start));
    start = colon == std::string::npos ? hList.size() + 1 : colon + 1;
  }
  FUZZ_CHECK(names.size() == expected);
  // Each name takes the lowest field of that name not taken yet, if any.
  std::string want;
  std::vector<bool> used(split.headers.size(), false);
  for (const auto& n : names) {
    for (size_t i = split.headers.size(); i-- > 0;) {
      if (used[i] || !detail::iequals(split.headers[i].name, n)) continue;
      used[i] = true;
      ++fields;
      std::string line = detail::relaxedHeader(split.headers[i].raw);
      FUZZ_CHECK(line.find_first_of("\r\n") == std::string::npos);
      want += line + "\r\n";
      break;
    }
  }
  FUZZ_CHECK(block == want);
  size_t crlf = 0;
  for (size_t p = block.find("\r\n"); p != std::string::npos; p = block.find("\r\n", p + 2)) ++crlf;
  FUZZ_CHECK(crlf == fields && fields <= names.size());
}

void checkKeyRecords(std::string_view text) {
  dk::KeyAnswer answer{Status::Ok, fuzz::lines(text)};
  if (answer.txt.size() > 8) answer.txt.resize(8);
  const std::string& record = detail::keyRecord(answer);
  FUZZ_CHECK(std::find(answer.txt.begin(), answer.txt.end(), record) != answer.txt.end());
  bool anyKey = std::any_of(answer.txt.begin(), answer.txt.end(), [](const std::string& t) {
    auto tags = detail::parseTagList(t);
    return tags && detail::findTag(*tags, "p");
  });
  if (anyKey) {
    auto tags = detail::parseTagList(record);
    FUZZ_CHECK(tags && detail::findTag(*tags, "p"));
  }
  for (const auto& t : answer.txt) {
    std::string error, error0;
    auto key = detail::rsaPublicKey(t, 1024, error);
    auto any = detail::rsaPublicKey(t, 0, error0);
    FUZZ_CHECK(static_cast<bool>(key) == error.empty());
    FUZZ_CHECK(static_cast<bool>(any) == error0.empty());
    if (key) {
      FUZZ_CHECK(any && EVP_PKEY_get_bits(key.get()) >= 1024 && EVP_PKEY_get_base_id(key.get()) == EVP_PKEY_RSA);
      FUZZ_CHECK(EVP_PKEY_eq(key.get(), any.get()) == 1);
    }
    auto tags = detail::parseTagList(t);
    std::string rsaWhy = detail::keyTypeMismatch("rsa-sha256", t);
    std::string edWhy = detail::keyTypeMismatch("ed25519-sha256", t);
    if (tags)
      FUZZ_CHECK(!rsaWhy.empty() || !edWhy.empty());
    else
      FUZZ_CHECK(rsaWhy.empty() && edWhy.empty());
    std::string normalized = detail::normalizeKeyRecord(t);
    if (normalized == t) continue;
    // Rewritten: the same tags, p= now SubjectPublicKeyInfo of the same key.
    auto rewritten = detail::parseTagList(normalized);
    FUZZ_CHECK(tags && rewritten && rewritten->size() == tags->size());
    for (size_t i = 0; i < tags->size(); ++i) {
      FUZZ_CHECK((*rewritten)[i].first == (*tags)[i].first);
      if ((*tags)[i].first != "p") FUZZ_CHECK((*rewritten)[i].second == (*tags)[i].second);
    }
    std::string e1, e2;
    auto before = detail::rsaPublicKey(t, 0, e1);
    auto now = detail::rsaPublicKey(normalized, 0, e2);
    FUZZ_CHECK(static_cast<bool>(before) == static_cast<bool>(now));
    if (before) FUZZ_CHECK(EVP_PKEY_eq(before.get(), now.get()) == 1);
  }
}

void checkDkim(uint8_t param, std::string_view input) {
  dk::VerifyOptions options;
  options.maxSignatures = (param & 7) + 1;
  std::string record;
  if (param & 0x80) {  // the first line is the key record for every name
    size_t nl = input.find('\n');
    record = std::string(input.substr(0, nl));
    input = nl == std::string_view::npos ? std::string_view() : input.substr(nl + 1);
  }
  auto names = dk::keyNamesToFetch(input, options);
  FUZZ_CHECK(names.size() <= options.maxSignatures);
  dk::KeyMap keys;
  for (const auto& n : names) {
    FUZZ_CHECK(n == detail::lower(n) && n.find("._domainkey.") != std::string::npos);
    FUZZ_CHECK(std::count(names.begin(), names.end(), n) == 1);
    const std::string& txt = !record.empty() ? record : n.rfind("ed.", 0) == 0 ? kEd25519Record : kRsaRecord;
    keys.push_back({n, {(param & 0x40) && &n == &names.back() ? Status::TempFail : Status::Ok, {txt}}});
  }
  size_t fields = 0;
  for (const auto& h : detail::splitMessage(input).headers)
    if (detail::iequals(h.name, "DKIM-Signature")) ++fields;
  auto results = dk::verifyWithKeys(input, keys, options);
  FUZZ_CHECK(results.size() == std::min(fields, options.maxSignatures) + (fields > options.maxSignatures ? 1 : 0));
  static const std::vector<std::string> kResults = {"pass", "fail", "neutral", "temperror", "permerror", "policy"};
  for (const auto& r : results) {
    FUZZ_CHECK(std::find(kResults.begin(), kResults.end(), r.result) != kResults.end());
    FUZZ_CHECK(r.bPrefix.size() <= 8);
    if (r.result != "pass" && r.result != "neutral") FUZZ_CHECK(!r.reason.empty());
    if (r.result != "pass") continue;
    FUZZ_CHECK(r.reason.empty() && detail::validDomain(r.domain) && detail::validSelector(r.selector));
    FUZZ_CHECK(r.algorithm == "rsa-sha256" || r.algorithm == "ed25519-sha256");
    // The field it came from (one whose b= starts so) carries one of the seeds' signatures.
    bool known = false;
    for (const auto& h : detail::splitMessage(input).headers) {
      if (!detail::iequals(h.name, "DKIM-Signature")) continue;
      auto tags = detail::parseTagList(valueOf(h.raw));
      std::string b = tags ? tag(*tags, "b") : std::string();
      if (b.rfind(r.bPrefix, 0) == 0 && knownSignature(b, 16)) known = true;
    }
    FUZZ_CHECK(known);
  }
}

int aarInstance(std::string_view raw) {
  std::string v = detail::stripWhitespace(valueOf(raw));
  size_t semi = v.find(';');
  if (v.size() < 2 || (v[0] != 'i' && v[0] != 'I') || v[1] != '=' || semi == std::string::npos) return 0;
  return std::stoi(v.substr(2, semi - 2));
}

int tagInstance(std::string_view raw) {
  auto tags = detail::parseTagList(valueOf(raw));
  FUZZ_CHECK(tags);
  return std::stoi(tag(*tags, "i"));
}

void checkChain(std::string_view m) {
  arc::Chain chain = arc::readChain(m);
  auto split = detail::splitMessage(m);
  size_t arcFields = 0, arcBytes = 0;
  for (const auto& h : split.headers) {
    if (detail::iequals(h.name, "ARC-Seal") || detail::iequals(h.name, "ARC-Message-Signature") ||
        detail::iequals(h.name, "ARC-Authentication-Results")) {
      ++arcFields;
      arcBytes += h.raw.size();
    }
  }
  FUZZ_CHECK(chain.out.instances >= 0 && chain.out.instances <= arc::kMaxInstances);
  if (chain.decided) {
    FUZZ_CHECK(chain.out.result == "none" || chain.out.result == "fail");
    if (chain.out.result == "none") FUZZ_CHECK(arcFields == 0 && chain.out.instances == 0);
    if (chain.out.result == "fail") FUZZ_CHECK(!chain.out.reason.empty());
    return;
  }
  FUZZ_CHECK(arcFields <= arc::kMaxArcFields && arcBytes <= arc::kMaxArcBytes);
  // Accepted structure: sets 1..N, each with its own i=, 3N fields in all.
  int n = chain.out.instances;
  FUZZ_CHECK(n >= 1 && static_cast<size_t>(n) == chain.sets.size());
  FUZZ_CHECK(arcFields == 3 * chain.sets.size());
  FUZZ_CHECK(!chain.keyNames.empty() && chain.keyNames.size() <= chain.sets.size() + 1);
  FUZZ_CHECK(chain.out.sealer.empty() || detail::validDomain(chain.out.sealer));
  std::string_view headerSection = m.substr(0, split.body.empty() ? m.size() : m.size() - split.body.size());
  for (int i = 1; i <= n; ++i) {
    const auto& s = chain.sets[static_cast<size_t>(i - 1)];
    for (std::string_view f : {s.aar, s.ams, s.seal}) FUZZ_CHECK(!f.empty() && inside(headerSection, f));
    FUZZ_CHECK(aarInstance(s.aar) == i && tagInstance(s.ams) == i && tagInstance(s.seal) == i);
    std::string input = arc::sealInput(chain.sets, static_cast<size_t>(i));
    FUZZ_CHECK(input.size() < 2 || input.compare(input.size() - 2, 2, "\r\n") != 0);
    size_t crlf = 0;
    for (size_t p = input.find("\r\n"); p != std::string::npos; p = input.find("\r\n", p + 2)) ++crlf;
    FUZZ_CHECK(crlf == static_cast<size_t>(3 * i - 1));
  }
}

void checkArcVerify(std::string_view m) {
  arc::Chain chain = arc::readChain(m);
  dk::KeyMap keys;
  for (const auto& n : chain.keyNames) keys.push_back({n, {Status::Ok, {kRsaRecord}}});
  arc::ChainResult r = arc::verifyWithKeys(m, keys);
  FUZZ_CHECK(r.result == "none" || r.result == "pass" || r.result == "fail");
  if (chain.decided) {
    FUZZ_CHECK(r.result == chain.out.result && r.reason == chain.out.reason);
    return;
  }
  FUZZ_CHECK(r.instances == chain.out.instances && r.sealer == chain.out.sealer);
  if (r.result == "fail") FUZZ_CHECK(!r.reason.empty());
  if (r.result != "pass") return;
  FUZZ_CHECK(r.reason.empty() && r.result != "none");
  auto seal = detail::parseTagList(valueOf(chain.sets.back().seal));
  FUZZ_CHECK(seal && knownSignature(tag(*seal, "b"), 16));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  uint8_t param = input.empty() ? 0 : static_cast<uint8_t>(input.front());
  std::string_view rest = input.empty() ? input : input.substr(1);
  switch (data[0] % 9) {
    case 0: return checkSplit(input), 0;
    case 1: return checkTagList(input), 0;
    case 2: return checkBody(input), 0;
    case 3: return checkHeader(input), 0;
    case 4: return checkSelect(param, rest), 0;
    case 5: return checkKeyRecords(input), 0;
    case 6: return checkDkim(param, rest), 0;
    case 7: return checkChain(input), 0;
    default: return checkArcVerify(input), 0;
  }
}
