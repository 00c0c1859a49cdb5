// tests/filters/dkim — DKIM verify/sign (RFC 6376, RFC 8301, RFC 8463) against a second,
// independent implementation: dkimpy (Debian python3-dkim) verifies what Moat signs and
// Moat verifies what dkimpy signs, for rsa-sha256 and ed25519-sha256. Also: keygen round
// trip, tampering, DNS temporary failure, RFC 8301 weak keys and rsa-sha1, the two filters
// and their config errors (FILE:LINE); signing for the From domain behind comments, over
// lines the SMTP client breaks, with a long h=; l= (policy), the signature limit's order and
// k= against a=. Keys are made by the test; DNS is in memory.
#include "filters/dkim/dkim.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "filters/dkim/internal.h"
#include "filters/mime/downgrade.h"
#include "mta/runtime/data_lines.h"
#include "mta/runtime/uv.h"
#include "policy/config.h"
#include "tests/filters/dkim/memory_resolver.h"
#include "tests/support/command_output.h"
#include "tests/support/temp_file.h"

using namespace moat;
using filters::dkim::SigResult;
using filters::dkim::SignKey;

namespace {

const std::string kMessage =
    "From: Alice Example <alice@example.test>\r\n"
    "To: bob@example.org\r\n"
    "Subject: quarterly  report\r\n"
    "Date: Sun, 22 Nov 2026 12:00:00 +0000\r\n"
    "Message-ID: <r1@example.test>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "\r\n"
    "Hello Bob,\r\n"
    "  the numbers  are \t in.\r\n"
    "\r\n"
    "\r\n";

// Folding, repeated and oddly spaced headers, WSP at line ends, trailing blank lines: the
// canonicalization corners (RFC 6376 3.4.2, 3.4.4).
const std::string kTricky =
    "Received: from a by b; Sun, 22 Nov 2026 11:00:00 +0000\r\n"
    "from:\t Alice \r\n <alice@example.test>  \r\n"
    "To: one@example.org\r\n"
    "Subject: a\r\n\tfolded   subject\r\n"
    "To: two@example.org\r\n"
    "Cc:\r\n"
    "Date: Sun, 22 Nov 2026 12:00:00 +0000\r\n"
    "\r\n"
    " leading space\t and \t tabs \t\r\n"
    "\t\r\n"
    "line without end";

using moat::test::TempDir;

using moat::test::readFile;

// dkimpy as the independent implementation; the script is written by the test.
const char* kScript = R"PY(
import sys, dkim
mode, msgfile = sys.argv[1], sys.argv[2]
msg = open(msgfile, 'rb').read()
if mode == 'verify':
    txt = open(sys.argv[3], 'rb').read().strip()
    ok = dkim.verify(msg, dnsfunc=lambda name, timeout=5: txt, minkey=int(sys.argv[4]) if len(sys.argv) > 4 else 1024)
    print('pass' if ok else 'fail')
else:
    key = open(sys.argv[3], 'rb').read().strip()
    sel, dom, alg = sys.argv[4].encode(), sys.argv[5].encode(), sys.argv[6].encode()
    sig = dkim.sign(msg, sel, dom, key, canonicalize=(b'relaxed', b'relaxed'), signature_algorithm=alg,
                    include_headers=[b'from', b'to', b'subject', b'date', b'message-id'],
                    length=len(sys.argv) > 7 and sys.argv[7] == 'length')
    sys.stdout.buffer.write(sig)
)PY";

std::string runPython(const TempDir& dir, const std::string& args) {
  std::string script = dir.file("dkimpy_helper.py", kScript);
  std::string cmd = "timeout 60 /usr/bin/python3 '" + script + "' " + args + " 2>&1";
  return moat::test::commandOutput(cmd);
}

struct Dns {
  std::map<std::string, std::string> txt;
  std::map<std::string, mta::dns::Status> status;
};

std::vector<SigResult> verifyMoat(const std::string& message, const Dns& dns, int* queries = nullptr) {
  mta::uv::Loop loop;
  std::vector<SigResult> results;
  bool done = false;
  {
    test::MemoryResolver resolver(loop.get());
    for (const auto& [n, t] : dns.txt) resolver.addTxt(n, t);
    for (const auto& [n, s] : dns.status) resolver.setStatus(n, s);
    filters::Env env;
    env.loop = loop.get();
    env.resolver = &resolver;
    auto keep = std::make_shared<std::string>(message);
    filters::dkim::verifyMessage(env, *keep, keep, [&](std::vector<SigResult> r) {
      results = std::move(r);
      done = true;
    });
    REQUIRE(loop.runUntil([&] { return done; }, 20000));
    if (queries) *queries = resolver.queries;
  }
  return results;
}

struct KeyPair {
  SignKey key;
  std::string txt;
};

KeyPair makeKey(const TempDir& dir, const std::string& type, const std::string& selector) {
  std::string txt, error;
  std::string file = dir.path + "/" + selector + ".key";
  REQUIRE(filters::dkim::keygen(type, file, false, txt, error));
  KeyPair k;
  k.key = {"example.test", selector, type == "rsa" ? "rsa-sha256" : "ed25519-sha256", readFile(file)};
  k.txt = txt;
  return k;
}

std::string signedWith(const SignKey& key, const std::string& message) {
  std::string error;
  auto value = filters::dkim::signMessage(key, message, error);
  INFO(error);
  REQUIRE(value);
  return "DKIM-Signature: " + *value + "\r\n" + message;
}

// A header field unfolded (RFC 5322 2.2.3): each CRLF and the WSP after it become one space.
std::string unfolded(std::string_view field) {
  std::string out;
  for (size_t i = 0; i < field.size(); ++i) {
    if (field.compare(i, 2, "\r\n") == 0) {
      i += 1;
      while (i + 1 < field.size() && (field[i + 1] == ' ' || field[i + 1] == '\t')) ++i;
      out.push_back(' ');
      continue;
    }
    out.push_back(field[i]);
  }
  return out;
}

// An RSA key of `bits` (below what Moat's keygen makes), as PEM, and its TXT record.
std::pair<std::string, std::string> rsaKey(unsigned bits) {
  filters::dkim::detail::PkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(bits)));
  REQUIRE(key);
  std::string pem = filters::dkim::detail::privateKeyPem(key.get());
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(key.get(), &der);
  REQUIRE(len > 0);
  std::string p = filters::dkim::detail::base64Encode(std::string_view(reinterpret_cast<char*>(der), len));
  OPENSSL_free(der);
  return {pem, "v=DKIM1; k=rsa; p=" + p};
}

}  // namespace

TEST_CASE("Moat signs rsa-sha256 and ed25519-sha256 and dkimpy and Moat both verify") {
  TempDir dir;
  for (std::string type : {"rsa", "ed25519"}) {
    auto k = makeKey(dir, type, "s" + type);
    std::string msg = signedWith(k.key, kMessage);
    CHECK(msg.find("a=" + k.key.algorithm) != std::string::npos);
    CHECK(msg.find("c=relaxed/relaxed") != std::string::npos);
    CHECK(msg.find("t=") != std::string::npos);
    CHECK(msg.find("h=") != std::string::npos);
    std::string out = runPython(dir, "verify '" + dir.file("m.eml", msg) + "' '" + dir.file("k.txt", k.txt) + "'");
    INFO(type << " dkimpy: " << out);
    CHECK(out == "pass\n");
    auto r = verifyMoat(msg, {{{"s" + type + "._domainkey.example.test", k.txt}}, {}});
    REQUIRE(r.size() == 1);
    CHECK(r[0].result == "pass");
    CHECK(r[0].algorithm == k.key.algorithm);
  }
}

TEST_CASE("canonicalization corners sign and verify with dkimpy and Moat for both algorithms") {
  TempDir dir;
  for (std::string type : {"rsa", "ed25519"}) {
    auto k = makeKey(dir, type, "c" + type);
    std::string msg = signedWith(k.key, kTricky);
    std::string out = runPython(dir, "verify '" + dir.file("m.eml", msg) + "' '" + dir.file("k.txt", k.txt) + "'");
    INFO(type << " dkimpy: " << out << "\n" << msg);
    CHECK(out == "pass\n");
    auto r = verifyMoat(msg, {{{"c" + type + "._domainkey.example.test", k.txt}}, {}});
    REQUIRE(r.size() == 1);
    CHECK(r[0].result == "pass");
    // Whitespace changes that relaxed canonicalization absorbs still verify.
    std::string respaced = msg;
    respaced.replace(respaced.find("Subject: a"), 10, "Subject:    a");
    r = verifyMoat(respaced + "\r\n\r\n", {{{"c" + type + "._domainkey.example.test", k.txt}}, {}});
    REQUIRE(r.size() == 1);
    CHECK(r[0].result == "pass");
  }
}

TEST_CASE("From is oversigned: a second From added after signing fails") {
  TempDir dir;
  auto k = makeKey(dir, "rsa", "over");
  std::string msg = signedWith(k.key, kMessage);
  std::string value = unfolded(msg.substr(0, msg.find("\r\nFrom:")));
  std::string h = value.substr(value.find(" h=") + 3);
  h = filters::dkim::detail::lower(h.substr(0, h.find(';')));
  CHECK(h.find("from:") != std::string::npos);
  size_t first = h.find("from"), second = h.find("from", first + 1);
  CHECK(second != std::string::npos);
  std::string forged = "From: mallory@evil.example\r\n" + msg;
  auto r = verifyMoat(forged, {{{"over._domainkey.example.test", k.txt}}, {}});
  REQUIRE(r.size() == 1);
  CHECK(r[0].result == "fail");
}

TEST_CASE("dkimpy signs rsa-sha256 and ed25519-sha256 and Moat verifies") {
  TempDir dir;
  auto rsa = makeKey(dir, "rsa", "py1");
  std::string sig = runPython(dir, "sign '" + dir.file("m.eml", kMessage) + "' '" + dir.path +
                                       "/py1.key' py1 example.test rsa-sha256");
  REQUIRE(sig.rfind("DKIM-Signature:", 0) == 0);
  auto r = verifyMoat(sig + kMessage, {{{"py1._domainkey.example.test", rsa.txt}}, {}});
  REQUIRE(r.size() == 1);
  CHECK(r[0].result == "pass");
  CHECK(r[0].domain == "example.test");
  CHECK(r[0].selector == "py1");

  // dkimpy's ed25519 private key format: the base64 seed (RFC 8463 section 4).
  unsigned char seed[32];
  REQUIRE(RAND_bytes(seed, sizeof seed) == 1);
  std::string seedB64 = filters::dkim::detail::base64Encode(std::string_view(reinterpret_cast<char*>(seed), 32));
  filters::dkim::detail::PkeyPtr ed(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, seed, 32));
  unsigned char pub[32];
  size_t publen = 32;
  REQUIRE(EVP_PKEY_get_raw_public_key(ed.get(), pub, &publen) == 1);
  std::string edTxt =
      "v=DKIM1; k=ed25519; p=" + filters::dkim::detail::base64Encode(std::string_view(reinterpret_cast<char*>(pub), 32));
  sig = runPython(dir, "sign '" + dir.path + "/m.eml' '" + dir.file("ed.seed", seedB64) +
                           "' py2 example.test ed25519-sha256");
  REQUIRE(sig.rfind("DKIM-Signature:", 0) == 0);
  r = verifyMoat(sig + kMessage, {{{"py2._domainkey.example.test", edTxt}}, {}});
  REQUIRE(r.size() == 1);
  CHECK(r[0].result == "pass");
  CHECK(r[0].algorithm == "ed25519-sha256");

  // The same seed works as a Moat signing key, and dkimpy verifies the result.
  SignKey seedKey{"example.test", "py2", "ed25519-sha256", seedB64};
  std::string msg = signedWith(seedKey, kMessage);
  CHECK(runPython(dir, "verify '" + dir.file("m2.eml", msg) + "' '" + dir.file("ed.txt", edTxt) + "'") == "pass\n");
}

TEST_CASE("keygen writes a 0600 key and a TXT record that verify what the key signs") {
  TempDir dir;
  for (std::string type : {"rsa", "ed25519"}) {
    std::string txt, error;
    std::string file = dir.path + "/kg-" + type + ".private";
    REQUIRE(filters::dkim::keygen(type, file, false, txt, error));
    struct stat st {};
    REQUIRE(stat(file.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    CHECK(txt.rfind("v=DKIM1; k=" + type + "; p=", 0) == 0);
    SignKey key{"example.test", "kg", type == "rsa" ? "rsa-sha256" : "ed25519-sha256", readFile(file)};
    CHECK(filters::dkim::checkSignKey(key, error));
    auto r = verifyMoat(signedWith(key, kMessage), {{{"kg._domainkey.example.test", txt}}, {}});
    REQUIRE(r.size() == 1);
    CHECK(r[0].result == "pass");
  }
  std::string txt, error;
  CHECK_FALSE(filters::dkim::keygen("dsa", dir.path + "/x", false, txt, error));
  CHECK_FALSE(error.empty());
  // A key that exists is not replaced unless asked: its TXT record may be published.
  std::string file = dir.path + "/kg-rsa.private", before = readFile(file);
  CHECK_FALSE(filters::dkim::keygen("rsa", file, false, txt, error));
  CHECK(error.find("exists") != std::string::npos);
  CHECK(readFile(file) == before);
  CHECK_FALSE(std::filesystem::exists(file + ".tmp"));
  REQUIRE(filters::dkim::keygen("rsa", file, true, txt, error));
  CHECK(readFile(file) != before);
  // A folder that is not there: the reason is told.
  CHECK_FALSE(filters::dkim::keygen("rsa", dir.path + "/no/such/dir/k.private", false, txt, error));
  CHECK(error.find("No such file or directory") != std::string::npos);
}

TEST_CASE("a tampered body fails with a body hash reason and a changed header fails") {
  TempDir dir;
  auto k = makeKey(dir, "rsa", "t1");
  std::string msg = signedWith(k.key, kMessage);
  Dns dns{{{"t1._domainkey.example.test", k.txt}}, {}};
  auto r = verifyMoat(msg + "P.S. send money\r\n", dns);
  REQUIRE(r.size() == 1);
  CHECK(r[0].result == "fail");
  CHECK(r[0].reason.find("body hash") != std::string::npos);

  std::string changed = msg;
  changed.replace(changed.find("quarterly"), 9, "Quarterly");
  r = verifyMoat(changed, dns);
  REQUIRE(r.size() == 1);
  CHECK(r[0].result == "fail");

  auto e = makeKey(dir, "ed25519", "t2");
  r = verifyMoat(signedWith(e.key, kMessage) + "x\r\n", {{{"t2._domainkey.example.test", e.txt}}, {}});
  REQUIRE(r.size() == 1);
  CHECK(r[0].result == "fail");
  CHECK(r[0].reason.find("body hash") != std::string::npos);
}

TEST_CASE("DNS temporary failure is temperror and a missing key is permerror per signature") {
  TempDir dir;
  auto a = makeKey(dir, "rsa", "ok");
  auto b = makeKey(dir, "ed25519", "down");
  std::string msg = signedWith(a.key, kMessage);
  msg = signedWith(b.key, msg);  // the ed25519 signature is on top
  Dns dns{{{"ok._domainkey.example.test", a.txt}}, {{"down._domainkey.example.test", mta::dns::Status::TempFail}}};
  auto r = verifyMoat(msg, dns);
  REQUIRE(r.size() == 2);
  CHECK(r[0].result == "temperror");
  CHECK(r[1].result == "pass");
  r = verifyMoat(msg, {{{"ok._domainkey.example.test", a.txt}}, {}});
  REQUIRE(r.size() == 2);
  CHECK(r[0].result == "permerror");
  CHECK(r[1].result == "pass");
}

TEST_CASE("RFC 8301: a 512-bit RSA key and rsa-sha1 are not accepted") {
  TempDir dir;
  auto [pem, txt] = rsaKey(512);
  std::string keyFile = dir.file("weak.pem", pem);
  std::string msgFile = dir.file("m.eml", kMessage);
  std::string sig = runPython(dir, "sign '" + msgFile + "' '" + keyFile + "' weak example.test rsa-sha256");
  REQUIRE(sig.rfind("DKIM-Signature:", 0) == 0);
  // dkimpy with its minimum lowered accepts it: the signature itself is good.
  CHECK(runPython(dir, "verify '" + dir.file("w.eml", sig + kMessage) + "' '" + dir.file("w.txt", txt) + "' 512") ==
        "pass\n");
  auto r = verifyMoat(sig + kMessage, {{{"weak._domainkey.example.test", txt}}, {}});
  REQUIRE(r.size() == 1);
  CHECK(r[0].result == "permerror");
  CHECK(r[0].reason.find("1024") != std::string::npos);

  auto k = makeKey(dir, "rsa", "sha1");
  sig = runPython(dir, "sign '" + msgFile + "' '" + dir.path + "/sha1.key' sha1 example.test rsa-sha1");
  REQUIRE(sig.rfind("DKIM-Signature:", 0) == 0);
  r = verifyMoat(sig + kMessage, {{{"sha1._domainkey.example.test", k.txt}}, {}});
  REQUIRE(r.size() == 1);
  CHECK(r[0].result == "permerror");
  CHECK(r[0].reason.find("rsa-sha1") != std::string::npos);

  std::string error;
  SignKey weak{"example.test", "weak", "rsa-sha256", pem};
  CHECK_FALSE(filters::dkim::checkSignKey(weak, error));
}

TEST_CASE("at most 8 signatures are checked and unsigned mail has none and no From refuses to sign") {
  TempDir dir;
  auto k = makeKey(dir, "ed25519", "many");
  std::string msg = kMessage;
  for (int i = 0; i < 10; ++i) msg = signedWith(k.key, msg);
  int queries = 0;
  auto r = verifyMoat(msg, {{{"many._domainkey.example.test", k.txt}}, {}}, &queries);
  REQUIRE(r.size() == 9);  // 8 checked and one marker for the rest
  CHECK(queries == 1);     // one name, fetched once
  CHECK(r[0].result == "pass");
  CHECK(r[7].result == "pass");
  CHECK(r[8].result == "neutral");
  CHECK(r[8].reason.find("not checked") != std::string::npos);
  CHECK(verifyMoat(kMessage, {}).empty());
  std::string error;
  CHECK_FALSE(filters::dkim::signMessage(k.key, "Subject: x\r\n\r\nbody\r\n", error));
  CHECK(error.find("From") != std::string::npos);
}

TEST_CASE("malformed signatures are permerror without a DNS lookup") {
  const std::string body = "From: a@example.test\r\n\r\nhi\r\n";
  const char* bad[] = {
      "DKIM-Signature: garbage without tags\r\n",
      "DKIM-Signature: v=1; v=1; a=rsa-sha256; d=example.test; s=s; b=AAAA; bh=AAAA; h=from\r\n",
      "DKIM-Signature: v=1; a=rsa-sha256; d=legitimate.com(.attacker.com; s=s; b=AAAA; bh=AAAA; h=from\r\n",
      "DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=bad selector!; b=AAAA; bh=AAAA; h=from\r\n",
      "DKIM-Signature: v=1; a=rsa-md5; d=example.test; s=s; b=AAAA; bh=AAAA; h=from\r\n",
      "DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=s; bh=AAAA; h=from\r\n",
      "DKIM-Signature: a=rsa-sha256; d=example.test; s=s; b=AAAA; bh=AAAA; h=from\r\n",
      "DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=s; x=1; b=AAAA; bh=AAAA; h=from\r\n",
  };
  for (const char* h : bad) {
    int queries = -1;
    auto r = verifyMoat(std::string(h) + body, {}, &queries);
    INFO(h);
    REQUIRE(r.size() == 1);
    CHECK(r[0].result == "permerror");
    CHECK_FALSE(r[0].reason.empty());
    CHECK(queries == 0);
  }
  // Well-formed but with nonsense crypto values: looked up, then rejected by libopendkim.
  auto r = verifyMoat("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test; s=s; b=AAAA; "
                      "bh=AAAA; h=from\r\n" + body,
                      {{{"s._domainkey.example.test", "v=DKIM1; k=rsa; p=AAAA"}}, {}});
  REQUIRE(r.size() == 1);
  CHECK(r[0].result != "pass");
}

namespace {

std::string baseConfig(const std::string& extra) {
  return "[server]\nhostname = \"mx.example.test\"\nspool_dir = \"spool\"\n\n[[listener]]\naddress = "
         "\"127.0.0.1:2525\"\n\n" +
         extra;
}

// dir's moat.toml with baseConfig(entries), loaded: it must load; what it reports stays in `errors`.
std::shared_ptr<const policy::Config> loadConfigIn(const TempDir& dir, const std::string& entries,
                                                   policy::Errors& errors) {
  auto config = policy::loadConfig(dir.file("moat.toml", baseConfig(entries)), errors);
  INFO(errors.str());
  REQUIRE(config);
  return config;
}

filters::Result runFilter(const filters::Filter& f, std::shared_ptr<filters::MessageContext> ctx,
                          mta::dns::Resolver* resolver, uv_loop_t* loop) {
  filters::Env env;
  env.loop = loop;
  env.resolver = resolver;
  env.hostname = "mx.example.test";
  filters::Result out;
  bool done = false;
  f.run(ctx, env, [&](filters::Result r) {
    out = std::move(r);
    done = true;
  });
  uint64_t deadline = uv_now(loop) + 20000;
  while (!done && uv_now(loop) < deadline) {
    uv_run(loop, UV_RUN_ONCE);
    uv_update_time(loop);
  }
  REQUIRE(done);
  return out;
}

}  // namespace

TEST_CASE("sign filter signs outbound mail with both keys and verify filter reports each") {
  TempDir dir;
  auto rsa = makeKey(dir, "rsa", "r1");
  auto ed = makeKey(dir, "ed25519", "e1");
  policy::Errors errors;
  auto config = loadConfigIn(dir, R"(
[dkim]
verify = true
max_signatures = 4

[[dkim.sign]]
domain = "example.test"
selector = "r1"
key_file = "r1.key"

[[dkim.sign]]
domain = "Example.Test"
selector = "e1"
key_file = "e1.key"
algorithm = "ed25519-sha256"
)",
                             errors);
  INFO(errors.str());
  auto sign = filters::dkim::makeDkimSignFilter(*config, errors);
  auto verify = filters::dkim::makeDkimVerifyFilter(*config, errors);
  REQUIRE_FALSE(errors.hasErrors());
  CHECK(sign->stage() == filters::Stage::Data);
  CHECK(verify->stage() == filters::Stage::Data);

  mta::uv::Loop loop;
  test::MemoryResolver resolver(loop.get());
  resolver.addTxt("r1._domainkey.example.test", rsa.txt);
  resolver.addTxt("e1._domainkey.example.test", ed.txt);

  auto msg = std::make_shared<std::string>(kMessage);
  auto ctx = std::make_shared<filters::MessageContext>();
  ctx->message = *msg;
  auto inbound = runFilter(*sign, ctx, &resolver, loop.get());
  CHECK(inbound.headers.empty());  // neither relay network nor authenticated

  ctx->fromRelayNetwork = true;
  auto out = runFilter(*sign, ctx, &resolver, loop.get());
  REQUIRE(out.headers.size() == 2);
  std::string delivered = *msg;
  for (const auto& h : out.headers) {
    CHECK(h.name == "DKIM-Signature");
    delivered = h.name + ": " + h.value + "\r\n" + delivered;
  }

  auto vctx = std::make_shared<filters::MessageContext>();
  vctx->message = delivered;
  auto vr = runFilter(*verify, vctx, &resolver, loop.get());
  REQUIRE(vr.authResults.size() == 2);
  REQUIRE(vctx->dkim.size() == 2);
  for (size_t i = 0; i < 2; ++i) {
    CHECK(vctx->dkim[i].result == "pass");
    CHECK(vr.authResults[i].rfind("dkim=pass header.d=example.test header.s=", 0) == 0);
    CHECK(vr.authResults[i].find(" header.b=") != std::string::npos);
  }
  CHECK(vr.summary == "pass");

  auto uctx = std::make_shared<filters::MessageContext>();
  uctx->message = *msg;
  auto ur = runFilter(*verify, uctx, &resolver, loop.get());
  REQUIRE(ur.authResults.size() == 1);
  CHECK(ur.authResults[0] == "dkim=none");
  CHECK(uctx->dkim.empty());

  // Another From domain: no key, no signature.
  auto octx = std::make_shared<filters::MessageContext>();
  std::string other = "From: x@other.example\r\n\r\nhi\r\n";
  octx->message = other;
  octx->authenticated = true;
  CHECK(runFilter(*sign, octx, &resolver, loop.get()).headers.empty());
}

TEST_CASE("config: unreadable or invalid keys and unknown keys are FILE:LINE errors") {
  TempDir dir;
  dir.file("bad.key", "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n");
  auto ed = makeKey(dir, "ed25519", "ed");
  policy::Errors errors;
  auto config = loadConfigIn(dir, R"([dkim]
verfy = true

[[dkim.sign]]
domain = "example.test"
selector = "a"
key_file = "missing.key"

[[dkim.sign]]
domain = "example.test"
selector = "b"
key_file = "bad.key"

[[dkim.sign]]
domain = "example.test"
selector = "c"
key_file = "ed.key"
algorithm = "rsa-sha256"
)",
                             errors);
  filters::dkim::makeDkimVerifyFilter(*config, errors);
  filters::dkim::makeDkimSignFilter(*config, errors);
  std::string all = errors.str();
  INFO(all);
  CHECK(all.find("moat.toml:9:") != std::string::npos);   // verfy
  CHECK(all.find("verfy") != std::string::npos);
  CHECK(all.find("moat.toml:14:") != std::string::npos);  // missing.key
  CHECK(all.find("moat.toml:19:") != std::string::npos);  // bad.key
  CHECK(all.find("moat.toml:24:") != std::string::npos);  // ed25519 key for rsa-sha256
  CHECK(errors.all().size() == 4);
}

namespace {

std::shared_ptr<const filters::Filter> signFilter(const TempDir& dir, const std::string& entries) {
  policy::Errors errors;
  auto config = loadConfigIn(dir, entries, errors);
  auto sign = filters::dkim::makeDkimSignFilter(*config, errors);
  REQUIRE_FALSE(errors.hasErrors());
  return sign;
}

// What the next hop receives: Moat's added headers, then the stored message with its edits,
// through the SMTP client's line rules (mta/runtime/data_lines.h).
std::string deliveredBy(const filters::Result& r, std::string_view message, const std::vector<filters::Edit>& earlier) {
  std::string prefix;
  for (const auto& h : r.headers) prefix += h.name + ": " + h.value + "\r\n";
  std::vector<filters::Edit> all = earlier;
  for (const auto& e : r.edits) REQUIRE(filters::addEdit(all, e, message.size()));
  return mta::asDelivered(prefix + filters::applyEdits(message, all));
}

size_t longestLine(std::string_view m) {
  size_t longest = 0, pos = 0;
  while (pos <= m.size()) {
    size_t nl = m.find("\r\n", pos);
    size_t end = nl == std::string_view::npos ? m.size() : nl;
    longest = std::max(longest, end - pos);
    if (nl == std::string_view::npos) break;
    pos = nl + 2;
  }
  return longest;
}

}  // namespace

TEST_CASE("sign filter signs for the From domain behind a comment, a quoted name or a second author") {
  TempDir dir;
  auto ed = makeKey(dir, "ed25519", "e1");
  auto sign = signFilter(dir, R"(
[[dkim.sign]]
domain = "example.test"
selector = "e1"
key_file = "e1.key"

[[dkim.sign]]
domain = "other.test"
selector = "e1"
key_file = "e1.key"
)");
  mta::uv::Loop loop;
  test::MemoryResolver resolver(loop.get());
  resolver.addTxt("e1._domainkey.example.test", ed.txt);
  resolver.addTxt("e1._domainkey.other.test", ed.txt);
  struct Case {
    std::string from;
    std::vector<std::string> domains;
  };
  const Case cases[] = {
      {"From: alice@example.test (Alice Example)", {"example.test"}},
      {"From: alice@EXAMPLE.test (Alice)\r\n (folded comment)", {"example.test"}},
      {"From: \"Doe, John <j@evil.test>\" <alice@example.test>", {"example.test"}},
      {"From: Team: alice@example.test, bob@other.test;", {"example.test", "other.test"}},
  };
  for (const auto& c : cases) {
    INFO(c.from);
    auto msg = std::make_shared<std::string>(c.from + "\r\nTo: x@far.test\r\nSubject: s\r\n\r\nbody\r\n");
    auto ctx = std::make_shared<filters::MessageContext>();
    ctx->message = *msg;
    ctx->fromRelayNetwork = true;
    auto out = runFilter(*sign, ctx, &resolver, loop.get());
    REQUIRE(out.headers.size() == c.domains.size());
    std::string delivered = deliveredBy(out, *msg, {});
    auto r =
        verifyMoat(delivered, {{{"e1._domainkey.example.test", ed.txt}, {"e1._domainkey.other.test", ed.txt}}, {}});
    REQUIRE(r.size() == c.domains.size());
    for (size_t i = 0; i < r.size(); ++i) {
      CHECK(r[i].result == "pass");
      CHECK(std::find(c.domains.begin(), c.domains.end(), r[i].domain) != c.domains.end());
    }
  }
}

TEST_CASE("lines over 998 octets are signed as the SMTP client sends them and stored that way") {
  TempDir dir;
  auto rsa = makeKey(dir, "rsa", "r1");
  auto ed = makeKey(dir, "ed25519", "e1");
  auto sign = signFilter(dir, R"(
[[dkim.sign]]
domain = "example.test"
selector = "r1"
key_file = "r1.key"

[[dkim.sign]]
domain = "example.test"
selector = "e1"
key_file = "e1.key"
)");
  mta::uv::Loop loop;
  test::MemoryResolver resolver(loop.get());
  std::string html = "<html><body>";
  for (int i = 0; i < 150; ++i) html += "<td class=\"c\">cell " + std::to_string(i) + "</td>";
  html += "</body></html>";
  auto msg =
      std::make_shared<std::string>("From: alice@example.test\r\nTo: x@far.test\r\nSubject: " + std::string(1200, 's') +
                                    "\r\nMIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n" + html + "\r\n." +
                                    std::string(997, 'd') + "\r\nshort\r\n" + std::string(998, 'e') + "\r\n");
  REQUIRE(longestLine(*msg) > 998);
  // An earlier filter's edit (a Subject prefix): the line breaks are placed around it.
  filters::Edit prefix;
  prefix.offset = msg->find("Subject: ") + 9;
  prefix.replacement = "[SPAM] ";
  auto ctx = std::make_shared<filters::MessageContext>();
  ctx->message = *msg;
  ctx->fromRelayNetwork = true;
  ctx->edits = {prefix};
  auto out = runFilter(*sign, ctx, &resolver, loop.get());
  REQUIRE(out.headers.size() == 2);
  CHECK_FALSE(out.edits.empty());  // the stored message gets the breaks itself
  std::vector<filters::Edit> all = ctx->edits;
  for (const auto& e : out.edits) REQUIRE(filters::addEdit(all, e, msg->size()));
  std::string stored = filters::applyEdits(*msg, all);
  CHECK(longestLine(stored) <= 998);
  CHECK(mta::asDelivered(stored) == stored);  // nothing left for the SMTP client to change
  CHECK(stored.find("[SPAM] ssss") != std::string::npos);
  // Each signature as the next hop receives it, checked by dkimpy and by Moat.
  for (size_t i = 0; i < 2; ++i) {
    filters::Result one;
    one.headers = {out.headers[i]};
    std::string delivered = deliveredBy(one, *msg, all);
    const auto& txt = out.headers[i].value.find("a=rsa-sha256") != std::string::npos ? rsa.txt : ed.txt;
    std::string py = runPython(dir, "verify '" + dir.file("m.eml", delivered) + "' '" + dir.file("k.txt", txt) + "'");
    INFO(out.headers[i].value << "\n" << py);
    CHECK(py == "pass\n");
    auto r =
        verifyMoat(delivered, {{{"r1._domainkey.example.test", rsa.txt}, {"e1._domainkey.example.test", ed.txt}}, {}});
    REQUIRE(r.size() == 1);
    CHECK(r[0].result == "pass");
  }
}

TEST_CASE("the DKIM-Signature is folded: a long h= list survives the SMTP client's line limit") {
  TempDir dir;
  std::string cc;
  for (int i = 0; i < 320; ++i) cc += "Cc: c" + std::to_string(i) + "@far.test\r\n";
  std::string msg = "From: alice@example.test\r\nTo: x@far.test\r\nSubject: many\r\n" + cc + "\r\nbody\r\n";
  for (std::string type : {"rsa", "ed25519"}) {
    auto k = makeKey(dir, type, "f" + type);
    std::string signedMsg = signedWith(k.key, msg);
    std::string header = signedMsg.substr(0, signedMsg.find("\r\nFrom:"));
    INFO(type << "\n" << header.substr(0, 400));
    CHECK(header.size() > 998);
    CHECK(longestLine(header) <= 80);
    CHECK(mta::asDelivered(signedMsg) == signedMsg);
    std::string py = runPython(dir, "verify '" + dir.file("m.eml", signedMsg) + "' '" + dir.file("k.txt", k.txt) + "'");
    CHECK(py == "pass\n");
    auto r = verifyMoat(signedMsg, {{{"f" + type + "._domainkey.example.test", k.txt}}, {}});
    REQUIRE(r.size() == 1);
    CHECK(r[0].result == "pass");
  }
}

TEST_CASE("l= shorter than the body is dkim=policy, never pass (RFC 6376 8.2)") {
  TempDir dir;
  auto k = makeKey(dir, "rsa", "len");
  std::string sig = runPython(
      dir, "sign '" + dir.file("m.eml", kMessage) + "' '" + dir.path + "/len.key' len example.test rsa-sha256 length");
  REQUIRE(sig.find("l=") != std::string::npos);
  Dns dns{{{"len._domainkey.example.test", k.txt}}, {}};
  auto r = verifyMoat(sig + kMessage, dns);  // l= covers the whole body
  REQUIRE(r.size() == 1);
  CHECK(r[0].result == "pass");
  r = verifyMoat(sig + kMessage + "PLEASE WIRE $1M TO ACCOUNT 1234\r\n", dns);
  REQUIRE(r.size() == 1);
  CHECK(r[0].result == "policy");
  CHECK(r[0].reason.find("l= covers only") != std::string::npos);
  CHECK(r[0].reason.find(" of ") != std::string::npos);
}

TEST_CASE("more signatures than max_signatures: those aligned with From are checked first") {
  TempDir dir;
  auto own = makeKey(dir, "ed25519", "own");
  auto other = makeKey(dir, "ed25519", "list");
  other.key.domain = "lists.example.org";
  std::string msg = signedWith(own.key, kMessage);               // the author's, lowest
  for (int i = 0; i < 9; ++i) msg = signedWith(other.key, msg);  // added in transit, above it
  Dns dns{{{"own._domainkey.example.test", own.txt}, {"list._domainkey.lists.example.org", other.txt}}, {}};
  auto r = verifyMoat(msg, dns);
  REQUIRE(r.size() == 9);  // 8 checked and one marker
  CHECK(r[8].result == "neutral");
  CHECK(std::any_of(r.begin(), r.end(),
                    [](const SigResult& s) { return s.domain == "example.test" && s.result == "pass"; }));
  CHECK(std::count_if(r.begin(), r.end(), [](const SigResult& s) { return s.domain == "lists.example.org"; }) == 7);
}

TEST_CASE("a key whose k= is not the a= key type is permerror (RFC 6376 6.1.2)") {
  TempDir dir;
  auto rsa = makeKey(dir, "rsa", "km");
  std::string txt = rsa.txt;
  txt.replace(txt.find("k=rsa"), 5, "k=ed25519");
  auto r = verifyMoat(signedWith(rsa.key, kMessage), {{{"km._domainkey.example.test", txt}}, {}});
  REQUIRE(r.size() == 1);
  CHECK(r[0].result == "permerror");
  CHECK(r[0].reason.find("inappropriate key algorithm") != std::string::npos);

  auto ed = makeKey(dir, "ed25519", "ke");
  txt = ed.txt;
  txt.replace(txt.find("k=ed25519"), 9, "k=rsa");
  r = verifyMoat(signedWith(ed.key, kMessage), {{{"ke._domainkey.example.test", txt}}, {}});
  REQUIRE(r.size() == 1);
  CHECK(r[0].result == "permerror");
  // No k= means rsa (RFC 6376 3.6.1): an RSA key without it still verifies.
  txt = rsa.txt;
  txt.replace(txt.find("k=rsa; "), 7, "");
  r = verifyMoat(signedWith(rsa.key, kMessage), {{{"km._domainkey.example.test", txt}}, {}});
  REQUIRE(r.size() == 1);
  CHECK(r[0].result == "pass");
}

TEST_CASE("a large header section is read for signatures off the loop") {
  // Past filters::kInlineHeaderBytes the fields are split on the pool, even for unsigned
  // mail, whose small header sections are decided at once on the loop.
  std::string pad;
  while (pad.size() <= filters::kInlineHeaderBytes) pad += "X-Pad: " + std::string(70, 'p') + "\r\n";
  mta::uv::Loop loop;
  test::MemoryResolver resolver(loop.get());
  for (bool large : {false, true}) {
    INFO("large header section: " << large);
    auto keep = std::make_shared<std::string>((large ? pad : "") + "From: a@example.test\r\n\r\nbody\r\n");
    filters::Env env;
    env.loop = loop.get();
    env.resolver = &resolver;
    bool done = false;
    std::vector<SigResult> results{SigResult{}};
    filters::dkim::verifyMessage(env, *keep, keep, [&](std::vector<SigResult> r) {
      results = std::move(r);
      done = true;
    });
    REQUIRE(done == !large);
    REQUIRE(loop.runUntil([&] { return done; }, 20000));
    REQUIRE(results.empty());  // unsigned either way
  }
}

namespace {

bool hasEightBit(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) > 0x7f; });
}

// The stored message: as received, with the earlier filters' edits and the signer's.
std::string storedBy(const filters::Result& r, std::string_view message, const std::vector<filters::Edit>& earlier) {
  std::vector<filters::Edit> all = earlier;
  for (const auto& e : r.edits) REQUIRE(filters::addEdit(all, e, message.size()));
  return filters::applyEdits(message, all);
}

const std::string kSignEntries = R"(
[[dkim.sign]]
domain = "example.test"
selector = "e1"
key_file = "e1.key"
)";

}  // namespace

TEST_CASE("an 8-bit body is converted to 7-bit MIME before signing (RFC 6376 5.3), stored and signed that way") {
  TempDir dir;
  auto ed = makeKey(dir, "ed25519", "e1");
  auto sign = signFilter(dir, kSignEntries);
  mta::uv::Loop loop;
  test::MemoryResolver resolver(loop.get());
  const std::string text =
      "Gr\xC3\xBC\xC3\x9F"
      "e aus K\xC3\xB6ln, caf\xC3\xA9 \xE2\x80\x94 " +
      std::string(300, 'x') + "\r\n.a leading dot\r\n=41 is no escape\r\n";
  auto msg = std::make_shared<std::string>(
      "From: Alice <alice@example.test>\r\nTo: bob@far.test\r\nSubject: greetings\r\nMIME-Version: 1.0\r\n"
      "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
      text);
  // An earlier filter's edit (a Subject prefix): the conversion's edits are placed around it.
  filters::Edit prefix;
  prefix.offset = msg->find("Subject: ") + 9;
  prefix.replacement = "[ext] ";
  auto ctx = std::make_shared<filters::MessageContext>();
  ctx->message = *msg;
  ctx->fromRelayNetwork = true;
  ctx->edits = {prefix};
  auto out = runFilter(*sign, ctx, &resolver, loop.get());
  REQUIRE(out.headers.size() == 1);
  CHECK(out.convertedTo7Bit);
  CHECK(out.detail.str().find("\"conversion\":\"7bit\"") != std::string::npos);
  std::string stored = storedBy(out, *msg, ctx->edits);
  INFO(stored);
  CHECK_FALSE(hasEightBit(stored));
  // The converter delivery uses, over the message as the filters left it: the same bytes.
  auto delivery = filters::mime::downgradeTo7Bit(filters::applyEdits(*msg, ctx->edits));
  REQUIRE(delivery.ok);
  CHECK(stored == delivery.message);
  CHECK(stored.find("Subject: [ext] greetings\r\n") != std::string::npos);
  CHECK(stored.find("Content-Transfer-Encoding: quoted-printable\r\n") != std::string::npos);
  CHECK(filters::mime::decodeQuotedPrintable(stored.substr(stored.find("\r\n\r\n") + 4)) == text);
  // What leaves: nothing left for the SMTP client or a later converter to change.
  std::string delivered = deliveredBy(out, *msg, ctx->edits);
  CHECK(delivered.ends_with(stored));
  auto again = filters::mime::downgradeTo7Bit(delivered);
  REQUIRE(again.ok);
  CHECK_FALSE(again.changed);
  auto r = verifyMoat(delivered, {{{"e1._domainkey.example.test", ed.txt}}, {}});
  REQUIRE(r.size() == 1);
  CHECK(r[0].result == "pass");
  std::string py = runPython(dir, "verify '" + dir.file("m.eml", delivered) + "' '" + dir.file("k.txt", ed.txt) + "'");
  CHECK(py == "pass\n");
}

TEST_CASE("conversion before signing: multipart with mixed parts, 8-bit headers, 7-bit, inbound, the size limit") {
  TempDir dir;
  auto ed = makeKey(dir, "ed25519", "e1");
  auto sign = signFilter(dir, kSignEntries);
  mta::uv::Loop loop;
  test::MemoryResolver resolver(loop.get());
  auto run = [&](const filters::Filter& f, const std::string& message, bool outbound = true) {
    auto ctx = std::make_shared<filters::MessageContext>();
    ctx->message = message;
    ctx->fromRelayNetwork = outbound;
    return runFilter(f, ctx, &resolver, loop.get());
  };
  auto verifies = [&](const filters::Result& out, const std::string& message) {
    auto r = verifyMoat(deliveredBy(out, message, {}), {{{"e1._domainkey.example.test", ed.txt}}, {}});
    return r.size() == 1 && r[0].result == "pass";
  };

  SECTION("multipart: only the 8-bit part is encoded; the 7-bit and base64 parts stay byte for byte") {
    const std::string seven = "--b\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nplain ascii\r\n";
    const std::string attachment =
        "--b\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        "JVBERi0xLjQK\r\n--b--\r\n";
    const std::string message =
        "From: alice@example.test\r\nTo: bob@far.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=b\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\ncaf\xC3\xA9\r\n" +
        seven + attachment;
    auto out = run(*sign, message);
    REQUIRE(out.headers.size() == 1);
    CHECK(out.convertedTo7Bit);
    std::string stored = storedBy(out, message, {});
    INFO(stored);
    CHECK_FALSE(hasEightBit(stored));
    CHECK(stored.find("Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n") != std::string::npos);
    CHECK(stored.find("boundary=b\r\nContent-Transfer-Encoding: 7bit\r\n") != std::string::npos);  // RFC 2045 6.4
    CHECK(stored.ends_with(seven + attachment));
    CHECK(verifies(out, message));
  }
  SECTION("an 8-bit header field: no 7-bit form (RFC 6532), signed as it is") {
    const std::string message =
        "From: alice@example.test\r\nTo: bob@far.test\r\nSubject: caf\xC3\xA9\r\n\r\n"
        "caf\xC3\xA9 au lait\r\n";
    auto out = run(*sign, message);
    REQUIRE(out.headers.size() == 1);
    CHECK_FALSE(out.convertedTo7Bit);
    CHECK(out.edits.empty());
    CHECK(out.detail.str().find("\"conversion\":\"none: 8-bit bytes in a header\"") != std::string::npos);
    CHECK(verifies(out, message));
  }
  SECTION("a 7-bit message: nothing to convert") {
    const std::string message = "From: alice@example.test\r\nTo: bob@far.test\r\nSubject: ascii\r\n\r\nhello\r\n";
    auto out = run(*sign, message);
    REQUIRE(out.headers.size() == 1);
    CHECK_FALSE(out.convertedTo7Bit);
    CHECK(out.edits.empty());
    CHECK(out.detail.str().find("conversion") == std::string::npos);
  }
  SECTION("a message that is not signed (inbound, or no key for its From) is not converted") {
    const std::string body =
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\ncaf\xC3\xA9\r\n";
    for (const auto& [from, outbound] :
         {std::pair{std::string("alice@example.test"), false}, std::pair{std::string("carol@unsigned.test"), true}}) {
      auto out = run(*sign, "From: " + from + "\r\nTo: bob@far.test\r\nSubject: s\r\n" + body, outbound);
      CHECK(out.headers.empty());
      CHECK(out.edits.empty());
      CHECK_FALSE(out.convertedTo7Bit);
    }
  }
  SECTION("converted over max_message_size: signed in its 8-bit form") {
    std::string binary;
    for (int i = 0; i < 1500; ++i) binary.push_back(static_cast<char>(0x80 + i % 0x7f));
    const std::string message =
        "From: alice@example.test\r\nTo: bob@far.test\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
        "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
        binary;
    REQUIRE(message.size() < 2048);  // base64 makes it 2,000 octets and more: over 2K
    auto tight = signFilter(dir, "[limits]\nmax_message_size = \"2K\"\n" + kSignEntries);
    auto out = run(*tight, message);
    REQUIRE(out.headers.size() == 1);
    CHECK_FALSE(out.convertedTo7Bit);
    CHECK(out.detail.str().find("over max_message_size") != std::string::npos);
    CHECK(verifies(out, message));
    // Under the default limit the same message goes as base64.
    auto roomy = run(*sign, message);
    CHECK(roomy.convertedTo7Bit);
    CHECK(storedBy(roomy, message, {}).find("Content-Transfer-Encoding: base64\r\n") != std::string::npos);
    CHECK(verifies(roomy, message));
  }
  SECTION("converted parts over 128 KiB (kept in the envelope, in memory while queued): signed in 8-bit form") {
    std::string line = "Gr\xC3\xBC\xC3\x9F" + std::string(60, 'e') + "\r\n";
    std::string body;
    while (body.size() < 120 * 1024) body += line;  // under 128 KiB as it is, over once encoded
    const std::string message =
        "From: alice@example.test\r\nTo: bob@far.test\r\nSubject: long\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
        body;
    auto out = run(*sign, message);
    REQUIRE(out.headers.size() == 1);
    CHECK_FALSE(out.convertedTo7Bit);
    CHECK(out.edits.empty());
    CHECK(out.detail.str().find("KiB") != std::string::npos);
    CHECK(verifies(out, message));
    // A tenth of it is converted.
    const std::string small = message.substr(0, message.find("\r\n\r\n") + 4) + body.substr(0, 12 * line.size());
    CHECK(run(*sign, small).convertedTo7Bit);
  }
}

TEST_CASE("relaxed header names lose white space and a fold around them, as the name splitMessage matched") {
  using filters::dkim::detail::relaxedHeader;
  // A fold before the colon (RFC 5322 obs-optional) is unfolded and dropped (RFC 6376 3.4.2),
  // as libopendkim and dkimpy do; it was kept as "subject\r\n:hi".
  CHECK(relaxedHeader("Subject\r\n :  hi") == "subject:hi");
  CHECK(relaxedHeader("Subject \t\r\n\t: hi") == "subject:hi");
  // A bare CR at the start of a line is no blank line: splitMessage() takes this field as
  // From, so its relaxed form is a From field, not "\rfrom:a".
  std::string message = "To: b@example.test\r\n\rFrom: a@example.test\r\n\r\nbody\r\n";
  auto split = filters::dkim::detail::splitMessage(message);
  REQUIRE(split.headers.size() == 2);
  CHECK(split.headers[1].name == "From");
  auto [h, block] = filters::dkim::detail::selectHeaders(split, {"from", "to"}, {});
  CHECK(h == "to:from");
  CHECK(block == "to:b@example.test\r\nfrom:a@example.test\r\n");
}

TEST_CASE("a message ending in a lone CR after its header fields signs and verifies") {
  // splitMessage() takes the CR as an empty field; libopendkim aborted the process on it
  // (assertion len != 0 in dkim_header), signing and verifying.
  TempDir dir;
  auto k = makeKey(dir, "rsa", "cr");
  const std::string message = "From: a@example.test\r\nTo: b@example.test\r\nSubject: cr\r\n\r";
  std::string msg = signedWith(k.key, message);
  auto r = verifyMoat(msg, {{{"cr._domainkey.example.test", k.txt}}, {}});
  REQUIRE(r.size() == 1);
  CHECK(r[0].result == "pass");
}
