// tests/filters/arc — ARC chain validation (RFC 8617 section 5.2) without DNS: the structure
// checks (instances, duplicates, cv=, tags, bounds), the canonical input an ARC-Seal signs,
// and chains sealed by dkimpy (Debian python3-dkim, an independent implementation, run by
// the test) verified with the keys handed in memory: pass, a changed body, a changed seal,
// a short key. The [arc] config and its errors with FILE:LINE.
#include "filters/arc/arc.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <string>

#include "policy/config.h"
#include "tests/support/command_output.h"
#include "tests/support/temp_file.h"

using namespace moat;
using namespace moat::filters::arc;

namespace {

const std::string kBody = "\r\nHello  there\r\n";
const std::string kHeader = "From: a@origin.test\r\nTo: b@example.test\r\nSubject: hi\r\n";

std::string aar(int i) { return "ARC-Authentication-Results: i=" + std::to_string(i) + "; fwd.test; spf=pass\r\n"; }
std::string ams(int i, const std::string& extra = "") {
  return "ARC-Message-Signature: i=" + std::to_string(i) +
         "; a=rsa-sha256; c=relaxed/relaxed; d=fwd.test; s=sel; h=from:to:subject; bh=AAAA; b=BBBB" + extra + "\r\n";
}
std::string seal(int i, const std::string& cv, const std::string& d = "fwd.test", const std::string& extra = "") {
  return "ARC-Seal: i=" + std::to_string(i) + "; a=rsa-sha256; cv=" + cv + "; d=" + d + "; s=sel" + extra +
         "; b=CCCC\r\n";
}
std::string set(int i, const std::string& cv) { return seal(i, cv) + ams(i) + aar(i); }

Chain read(const std::string& headers) { return readChain(headers + kHeader + kBody); }

using moat::test::TempDir;

// dkimpy seals `hops` times (each hop with its own A-R saying the chain so far passed) and
// checks its own chain with arc_verify; writes the message and the key record.
const char* kScript = R"PY(
import sys, subprocess, base64, dkim
out, hops, bits = sys.argv[1], int(sys.argv[2]), sys.argv[3]
subprocess.run(['openssl', 'genrsa', '-traditional', '-out', out + '.pem', bits], check=True, capture_output=True)
der = subprocess.run(['openssl', 'rsa', '-in', out + '.pem', '-pubout', '-outform', 'DER'], check=True,
                     capture_output=True).stdout
txt = 'v=DKIM1; k=rsa; p=' + base64.b64encode(der).decode()
key = open(out + '.pem', 'rb').read()
msg = b'From: a@origin.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nHello  there\r\n'
for hop in range(1, hops + 1):
    srv = b'hop%d.test' % hop
    msg = b'Authentication-Results: ' + srv + (b'; arc=pass' if hop > 1 else b'; spf=pass') + b'\r\n' + msg
    msg = b''.join(dkim.arc_sign(msg, b'sel', srv, key, srv, include_headers=[b'from', b'to', b'subject'])) + msg
cv = dkim.arc_verify(msg, dnsfunc=lambda name, timeout=5: txt.encode())[0]
open(out + '.eml', 'wb').write(msg)
open(out + '.txt', 'w').write(txt)
print(cv.decode() if cv else 'None')
)PY";

struct Sealed {
  std::string message, txt;
};

Sealed dkimpySealed(const TempDir& dir, int hops, int bits = 2048, const std::string& dkimpySays = "pass") {
  std::string script = dir.file("seal.py");
  std::ofstream(script) << kScript;
  std::string base = dir.file("m" + std::to_string(hops) + "_" + std::to_string(bits));
  std::string cmd = "timeout 60 /usr/bin/python3 '" + script + "' '" + base + "' " + std::to_string(hops) + " " +
                    std::to_string(bits) + " 2>&1";
  std::string out = moat::test::commandOutput(cmd);
  INFO("dkimpy: " << out);
  REQUIRE(out == dkimpySays + "\n");  // dkimpy's own verdict on the chain it made
  return {moat::test::readFile(base + ".eml"), moat::test::readFile(base + ".txt")};
}

filters::dkim::KeyMap keysFor(const std::string& txt, int hops) {
  filters::dkim::KeyMap keys;
  for (int hop = 1; hop <= hops; ++hop)
    keys.push_back({"sel._domainkey.hop" + std::to_string(hop) + ".test", {mta::dns::Status::Ok, {txt}}});
  return keys;
}

}  // namespace

TEST_CASE("no ARC fields is none, and a well-formed chain asks for its keys") {
  auto none = read("");
  CHECK(none.decided);
  CHECK(none.out.result == "none");

  auto two = read(set(2, "pass") + set(1, "none"));
  REQUIRE_FALSE(two.decided);
  CHECK(two.sets.size() == 2);
  CHECK(two.out.instances == 2);
  CHECK(two.out.sealer == "fwd.test");
  CHECK(two.keyNames == std::vector<std::string>{"sel._domainkey.fwd.test"});
}

TEST_CASE("structure: instances 1 to N, one field of each kind, cv= by position") {
  auto failsWith = [](const std::string& headers, const std::string& why) {
    auto c = read(headers);
    INFO(headers);
    REQUIRE(c.decided);
    CHECK(c.out.result == "fail");
    CHECK(c.out.reason.find(why) != std::string::npos);
  };
  // A missing instance, a missing field, a duplicate.
  failsWith(set(3, "pass") + set(1, "none"), "instance 2 has no");
  failsWith(seal(1, "none") + aar(1), "instance 1 has no ARC-Message-Signature");
  failsWith(set(1, "none") + aar(1), "more than one ARC-Authentication-Results for instance 1");
  // The latest seal says the chain failed; instance 1 must say none, the others pass.
  failsWith(set(2, "fail") + set(1, "none"), "the latest ARC-Seal says cv=fail");
  failsWith(set(1, "pass"), "ARC-Seal 1: cv= is not none");
  failsWith(set(2, "none") + set(1, "none"), "ARC-Seal 2: cv= is not pass");
  // i= over 50, zero or not a number.
  failsWith(set(51, "pass"), "i= missing or not 1 to 50");
  failsWith("ARC-Authentication-Results: i=x; fwd.test; none\r\n", "i= missing or not 1 to 50");
  failsWith(seal(1, "none") + ams(1) + "ARC-Authentication-Results: fwd.test; i=1; none\r\n", "i= missing");
  // Tags: no h= in a seal, rsa-sha256 only, no l=, no ARC-Seal under the AMS, d= a domain.
  failsWith(seal(1, "none", "fwd.test", "; h=from") + ams(1) + aar(1), "h= is not allowed");
  failsWith("ARC-Seal: i=1; a=rsa-sha1; cv=none; d=fwd.test; s=sel; b=CC\r\n" + ams(1) + aar(1),
            "a= is not rsa-sha256");
  failsWith(seal(1, "none") + ams(1, "; l=10") + aar(1), "l= is not accepted");
  failsWith(seal(1, "none") +
                "ARC-Message-Signature: i=1; a=rsa-sha256; d=fwd.test; s=sel; h=from:arc-seal; bh=A; b=B\r\n" + aar(1),
            "h= names ARC-Seal");
  failsWith(seal(1, "none", "not_a_domain") + ams(1) + aar(1), "invalid d=");
  failsWith("ARC-Seal: i=1; i=1; cv=none\r\n" + ams(1) + aar(1), "malformed tag-list");
}

TEST_CASE("bounds: at most 150 ARC fields and 256 KiB of them") {
  std::string many;
  for (int i = 0; i < 51; ++i) many += set(1, "none");
  auto c = read(many);
  REQUIRE(c.decided);
  CHECK(c.out.reason == "more than 150 ARC fields");
  std::string big = seal(1, "none") + ams(1) +
                    "ARC-Authentication-Results: i=1; fwd.test; x=" + std::string(300 * 1024, 'a') + "\r\n";
  c = read(big);
  REQUIRE(c.decided);
  CHECK(c.out.reason.find("KiB") != std::string::npos);
}

TEST_CASE("seal input: sets 1 to i in order AAR AMS AS, relaxed, the last seal without b= or CRLF") {
  std::vector<ArcSet> sets = {
      {"ARC-Authentication-Results: i=1;\r\n  a.test;  spf=pass", "ARC-Message-Signature: i=1; b=XX\r\n\tYY",
       "ARC-Seal: i=1; cv=none; b=S1"},
      {"ARC-Authentication-Results: i=2; b.test; arc=pass", "ARC-Message-Signature: i=2; b=ZZ",
       "ARC-Seal:  i=2; cv=pass;\r\n b=S2S2; d=x.test"},
  };
  CHECK(sealInput(sets, 1) ==
        "arc-authentication-results:i=1; a.test; spf=pass\r\n"
        "arc-message-signature:i=1; b=XX YY\r\n"
        "arc-seal:i=1; cv=none; b=");
  CHECK(sealInput(sets, 2) ==
        "arc-authentication-results:i=1; a.test; spf=pass\r\n"
        "arc-message-signature:i=1; b=XX YY\r\n"
        "arc-seal:i=1; cv=none; b=S1\r\n"
        "arc-authentication-results:i=2; b.test; arc=pass\r\n"
        "arc-message-signature:i=2; b=ZZ\r\n"
        "arc-seal:i=2; cv=pass; b=; d=x.test");
  // b= is found as a tag, never inside bh= or another value.
  CHECK(withoutSignature("X: bh=abc; b = de\r\n f ;c=1") == "X: bh=abc; b =;c=1");
  CHECK(canonicalHeader("Subject \t:  a \r\n\t b  ", true) == "subject:a b\r\n");
  CHECK(canonicalHeader("Subject: a  b", false) == "Subject: a  b\r\n");
}

TEST_CASE("relaxed ARC fields: a fold or white space around the name goes, as around the colon") {
  // RFC 6376 3.4.2 unfolds before it drops the WSP before the colon: "subject\r\n:hi" was
  // what the checker hashed, which no signer makes.
  CHECK(canonicalHeader("Subject\r\n :  hi", true) == "subject:hi\r\n");
  CHECK(canonicalHeader("\rFrom: a", true) == "from:a\r\n");
  std::vector<ArcSet> sets = {{"ARC-Authentication-Results\r\n : i=1; a.test", "ARC-Message-Signature\t: i=1; b=X",
                               "\rARC-Seal: i=1; cv=none; b=S1"}};
  CHECK(sealInput(sets, 1) ==
        "arc-authentication-results:i=1; a.test\r\n"
        "arc-message-signature:i=1; b=X\r\n"
        "arc-seal:i=1; cv=none; b=");
}

TEST_CASE("chains sealed by dkimpy pass, and break when the body or a seal changes") {
  TempDir dir;
  for (int hops : {1, 2}) {
    auto s = dkimpySealed(dir, hops);
    auto keys = keysFor(s.txt, hops);
    auto r = verifyWithKeys(s.message, keys);
    INFO(hops << " hops: " << r.reason << "\n" << s.message);
    CHECK(r.result == "pass");
    CHECK(r.instances == hops);
    CHECK(r.sealer == "hop" + std::to_string(hops) + ".test");

    // The body changed after the last seal: the latest AMS's body hash.
    r = verifyWithKeys(s.message + "appended\r\n", keys);
    CHECK(r.result == "fail");
    CHECK(r.reason == "ARC-Message-Signature " + std::to_string(hops) + ": body hash did not verify");

    // The oldest seal's cv= changed (the latest AMS does not cover it; every seal does).
    std::string altered = s.message;
    size_t at = altered.find("ARC-Seal: i=1; cv=none; ");
    REQUIRE(at != std::string::npos);
    altered.replace(at, 23, "ARC-Seal: i=1;  cv=none;");  // relaxed canonicalization absorbs this
    CHECK(verifyWithKeys(altered, keys).result == "pass");
    altered.replace(altered.find("d=hop1.test; s=sel; t="), 22, "d=hop1.test; s=sel; t=1");
    r = verifyWithKeys(altered, keys);
    CHECK(r.result == "fail");
    CHECK(r.reason.find("ARC-Seal") != std::string::npos);
    CHECK(r.reason.find("did not verify") != std::string::npos);

    // No key, or DNS trouble: fail (RFC 8617 has no temperror).
    r = verifyWithKeys(s.message, {});
    CHECK(r.result == "fail");
    CHECK(r.reason.find("key lookup failed temporarily") != std::string::npos);
  }
}

TEST_CASE("a key under 1024 bits fails the chain (RFC 8301)") {
  TempDir dir;
  auto s = dkimpySealed(dir, 1, 768, "fail");  // dkimpy refuses it too
  auto r = verifyWithKeys(s.message, keysFor(s.txt, 1));
  CHECK(r.result == "fail");
  CHECK(r.reason.find("768 bits is under 1024") != std::string::npos);
}

TEST_CASE("[arc] config: defaults, off, and bad sealers with FILE:LINE") {
  auto load = [](const std::string& section, policy::Errors& errors, std::string* path = nullptr) {
    auto p = moat::test::writeTempFile(
        "arc", "[server]\nhostname = \"mx.example.test\"\n\n[[listener]]\naddress = \"127.0.0.1:2525\"\n\n" + section,
        ".toml");
    if (path) *path = p;
    auto c = policy::loadConfig(p, errors);
    unlink(p.c_str());
    return c;
  };
  policy::Errors errors;
  auto config = load("", errors);
  REQUIRE(config);
  auto filter = makeArcFilter(*config, errors);
  REQUIRE(filter);
  CHECK(filter->name() == "arc");
  CHECK_FALSE(errors.hasErrors());

  config = load("[arc]\nverify = false\n", errors);
  REQUIRE(config);
  CHECK(makeArcFilter(*config, errors) == nullptr);

  policy::Errors bad;
  std::string path;
  config = load("[arc]\ntrusted_sealers = [\"lists.example.org\", \"not a name\"]\nverfy = true\n", bad, &path);
  if (config) makeArcFilter(*config, bad);
  REQUIRE(bad.hasErrors());
  std::string text;
  for (const auto& e : bad.all()) text += e.file + ":" + std::to_string(e.line) + ": " + e.message + "\n";
  INFO(text);
  CHECK(text.find(path + ":8:") != std::string::npos);  // the bad sealer
  CHECK(text.find("\"not a name\" is not a domain name") != std::string::npos);
  CHECK(text.find(path + ":9:") != std::string::npos);  // the unknown key
}
