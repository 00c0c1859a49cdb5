// Tests for filters/attachments: blocked extensions (also double extensions and trailing
// dots), declared types, name patterns, names inside zip archives (a deflated zip made by
// python3's zipfile and stored zips written here), clean mail passing, malformed zips
// (every truncation, byte flips, hostile offsets) never crashing, config errors as
// FILE:LINE, and the filter's verdicts on a real loop.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "filters/attachments/attachments.h"
#include "filters/attachments/zip.h"
#include "filters/edit.h"
#include "filters/mime/mime.h"
#include "mta/runtime/uv.h"
#include "tests/support/crlf.h"
#include "tests/support/filter_run.h"

using namespace moat::filters;
using namespace moat::filters::attachments;

namespace {

using moat::test::crlf;

std::string base64(std::string_view in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0, line = 0;
  auto put = [&](char c) {
    out += c;
    if (++line == 76) {
      out += "\r\n";
      line = 0;
    }
  };
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    for (int k = 18; k >= 0; k -= 6) put(t[(v >> k) & 63]);
  }
  if (i < in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    if (i + 1 < in.size()) v |= uint8_t(in[i + 1]) << 8;
    put(t[(v >> 18) & 63]);
    put(t[(v >> 12) & 63]);
    put(i + 1 < in.size() ? t[(v >> 6) & 63] : '=');
    put('=');
  }
  return out;
}

void le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out += static_cast<char>((v >> (8 * i)) & 0xFF);
}

// A stored (uncompressed) zip written by hand; CRCs are left 0 (nothing here checks them).
std::string storedZip(const std::vector<std::pair<std::string, std::string>>& files, const std::string& prefix = "") {
  std::string local = prefix, central;
  for (const auto& [name, data] : files) {
    uint64_t offset = local.size();
    local += std::string("PK\x03\x04", 4);
    le(local, 20, 2); le(local, 0, 2); le(local, 0, 2); le(local, 0, 2); le(local, 0, 2);
    le(local, 0, 4); le(local, data.size(), 4); le(local, data.size(), 4);
    le(local, name.size(), 2); le(local, 0, 2);
    local += name + data;
    central += std::string("PK\x01\x02", 4);
    le(central, 20, 2); le(central, 20, 2); le(central, 0, 2); le(central, 0, 2); le(central, 0, 2); le(central, 0, 2);
    le(central, 0, 4); le(central, data.size(), 4); le(central, data.size(), 4);
    le(central, name.size(), 2); le(central, 0, 2); le(central, 0, 2); le(central, 0, 2); le(central, 0, 2);
    le(central, 0, 4); le(central, offset - prefix.size(), 4);
    central += name;
  }
  std::string end("PK\x05\x06", 4);
  le(end, 0, 2); le(end, 0, 2); le(end, files.size(), 2); le(end, files.size(), 2);
  le(end, central.size(), 4); le(end, local.size() - prefix.size(), 4); le(end, 0, 2);
  return local + central + end;
}

// A deflated zip made by python3's zipfile.
std::string pythonZip(const std::vector<std::string>& names) {
  char dir[] = "/tmp/moat-attach-XXXXXX";
  REQUIRE(mkdtemp(dir));
  std::string zip = std::string(dir) + "/a.zip";
  std::string list;
  for (const auto& n : names) list += " '" + n + "'";
  std::string cmd = "/usr/bin/python3 -c \"import zipfile,sys; z=zipfile.ZipFile(sys.argv[1],'w',zipfile.ZIP_DEFLATED)\n"
                    "for n in sys.argv[2:]: z.writestr(n, b'MZ' + b'x'*500)\nz.close()\" '" + zip + "'" + list;
  REQUIRE(std::system(cmd.c_str()) == 0);
  std::ifstream in(zip, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::system(("rm -rf '" + std::string(dir) + "'").c_str());
  REQUIRE(ss.str().size() > 22);
  return ss.str();
}

std::string withAttachment(const std::string& headers, const std::string& body) {
  return crlf("From: a@example.test\nTo: b@example.test\nSubject: file\nMIME-Version: 1.0\n"
              "Content-Type: multipart/mixed; boundary=XX\n\n--XX\nContent-Type: text/plain\n\nsee attached\n--XX\n" +
              headers + "\n") + body + crlf("\n--XX--\n");
}

std::string named(const std::string& name, const std::string& type = "application/octet-stream") {
  return withAttachment("Content-Type: " + type + "; name=\"" + name + "\"\nContent-Disposition: attachment; filename=\"" +
                            name + "\"\nContent-Transfer-Encoding: base64\n",
                        base64("MZ harmless bytes"));
}

std::string zipped(const std::string& zipName, const std::string& zip) {
  return withAttachment("Content-Type: application/zip; name=\"" + zipName +
                            "\"\nContent-Transfer-Encoding: base64\n",
                        base64(zip));
}

struct TempDir {
  std::string path;
  TempDir() {
    char p[] = "/tmp/moat-attach-XXXXXX";
    REQUIRE(mkdtemp(p));
    path = p;
  }
  ~TempDir() { std::system(("rm -rf '" + path + "'").c_str()); }
};

std::shared_ptr<const moat::policy::Config> loadConfig(const TempDir& dir, const std::string& section,
                                                        moat::policy::Errors& errors) {
  std::ofstream(dir.path + "/moat.toml") << "[[listener]]\naddress = \"127.0.0.1:2525\"\n" << section;
  return moat::policy::loadConfig(dir.path + "/moat.toml", errors);
}

FilterConfig configOf(const std::string& section) {
  TempDir dir;
  moat::policy::Errors errors;
  auto config = loadConfig(dir, section, errors);
  INFO(errors.str());
  REQUIRE(config);
  FilterConfig fc = readConfig(*config, errors);
  REQUIRE_FALSE(errors.hasErrors());
  return fc;
}

CheckResult checkRaw(const std::string& raw, const FilterConfig& fc) {
  return check(*mime::parse(raw, mime::Limits{}), fc);
}

const std::string kSection =
    "[attachments]\n"
    "block_extensions = [\"exe\", \".SCR\", \"js\", \"tar.gz\"]\n"
    "block_types = [\"application/x-msdownload\", \"application/x-sh*\", \"application/x-dosexec\", \"audio/*\"]\n"
    "block_names = [\"(?i)^invoice_[0-9]+\\\\.html?$\"]\n";

}  // namespace

TEST_CASE("blocked extensions: case-insensitive, double extensions, trailing dots, multi-part extensions") {
  FilterConfig fc = configOf(kSection);
  REQUIRE(fc.enabled);
  REQUIRE(fc.action == Action::Reject);
  REQUIRE(fc.extensions == std::vector<std::string>{"exe", "scr", "js", "tar.gz"});

  CheckResult r = checkRaw(named("setup.EXE"), fc);
  REQUIRE(r.blocked);
  REQUIRE(r.blocked->file == "setup.EXE");
  REQUIRE(r.blocked->reason == "extension .exe");
  Result res = resultFor(r, fc);
  REQUIRE(res.verdict == Verdict::Reject);
  REQUIRE(res.code == 554);
  REQUIRE(res.enhanced == "5.7.1");
  REQUIRE(res.text.find("setup.EXE") != std::string::npos);

  REQUIRE(checkRaw(named("invoice.pdf.exe"), fc).blocked);
  REQUIRE(checkRaw(named("photo.jpg.scr"), fc).blocked);
  REQUIRE(checkRaw(named("setup.exe. . "), fc).blocked);
  REQUIRE(checkRaw(named("backup.TAR.GZ"), fc).blocked);
  REQUIRE_FALSE(checkRaw(named("notes.gz"), fc).blocked);
  REQUIRE_FALSE(checkRaw(named("exe"), fc).blocked);      // no extension at all
  REQUIRE_FALSE(checkRaw(named("report.exe.pdf"), fc).blocked);
  REQUIRE_FALSE(checkRaw(named("json.txt"), fc).blocked);  // "js" is not a prefix match
  // RFC 2231 encoded file names are decoded by the MIME parser before the check.
  std::string rfc2231 = withAttachment(
      "Content-Type: application/octet-stream\nContent-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf.exe\n",
      "MZ");
  CheckResult enc = checkRaw(rfc2231, fc);
  REQUIRE(enc.blocked);
  REQUIRE(enc.blocked->file == "r\xC3\xA9sum\xC3\xA9.pdf.exe");
  // NUL in a name: both readings are checked.
  REQUIRE(blockReason(std::string("evil.exe\0.txt", 13), fc));
}

TEST_CASE("every name a part gives counts: name= against filename=, RFC 2231 against plain, duplicates") {
  FilterConfig fc = configOf(kSection);
  auto blocked = [&](const std::string& headers) {
    CheckResult r = checkRaw(withAttachment(headers + "Content-Transfer-Encoding: base64\n", base64("MZ")), fc);
    return r.blocked ? r.blocked->file : std::string();
  };
  // Content-Type name= is what some clients save the file as, whatever filename= says.
  REQUIRE(blocked("Content-Type: application/octet-stream; name=\"evil.exe\"\n"
                  "Content-Disposition: attachment; filename=\"evil.txt\"\n") == "evil.exe");
  REQUIRE(blocked("Content-Type: application/pdf; name=\"=?utf-8?B?ZXZpbC5leGU=?=\"\n"
                  "Content-Disposition: attachment; filename=\"a.pdf\"\n") == "evil.exe");
  // The RFC 2231 form and a plain one: a client without RFC 2231 uses the plain one.
  REQUIRE(blocked("Content-Type: application/octet-stream\n"
                  "Content-Disposition: attachment; filename=\"evil.exe\"; filename*=utf-8''a.txt\n") == "evil.exe");
  REQUIRE(blocked("Content-Type: application/octet-stream\n"
                  "Content-Disposition: attachment; filename*=utf-8''a.txt; filename = evil.exe\n") == "evil.exe");
  // Two plain filename= parameters: clients differ in which one they take.
  REQUIRE(blocked("Content-Type: application/octet-stream\n"
                  "Content-Disposition: attachment; filename=\"a.txt\"; filename=\"evil.exe\"\n") == "evil.exe");
  REQUIRE(blocked("Content-Type: application/octet-stream\n"
                  "Content-Disposition: attachment; filename=\"a;b.txt\"; filename=\"x\\\".exe\"\n") == "x\".exe");
  // RFC 2231 continuations with an encoded piece.
  REQUIRE(blocked("Content-Type: application/octet-stream\n"
                  "Content-Disposition: attachment; filename*0*=utf-8''ev; filename*1=\"il.e\"; filename*2*=%78e\n") ==
          "evil.exe");
  // Harmless names everywhere: not blocked.
  REQUIRE(blocked("Content-Type: application/pdf; name=\"a.pdf\"\n"
                  "Content-Disposition: attachment; filename=\"a.pdf\"; size=100; x-exe=\"y.exe\"\n")
              .empty());
}

TEST_CASE("uuencoded files in a text body are looked at by name") {
  FilterConfig fc = configOf(kSection);
  std::string uu = crlf(
      "From: a@example.test\nSubject: old style\n\nhere it is\n\nbegin 644 evil.exe\n"
      "M5%J0``,````$````__\\``+@`````````0`````````````````````````\n`\nend\n");
  CheckResult r = checkRaw(uu, fc);
  REQUIRE(r.blocked);
  REQUIRE(r.blocked->file == "evil.exe");
  REQUIRE(checkRaw(withAttachment("Content-Type: text/plain\n", crlf("begin 0755 run.js\n`\nend\n")), fc).blocked);
  // Prose that starts a line with "begin", a harmless uuencoded name: clean.
  REQUIRE_FALSE(
      checkRaw(crlf("Subject: x\n\nbegin 644 notes.txt\n`\nend\nbegin here.exe\nbegin 99 a.exe\n"), fc).blocked);
}

TEST_CASE("blocked declared types, wildcards, and name patterns") {
  FilterConfig fc = configOf(kSection);
  CheckResult t = checkRaw(named("harmless.dat", "application/x-msdownload"), fc);
  REQUIRE(t.blocked);
  REQUIRE(t.blocked->reason == "type application/x-msdownload");
  CheckResult w = checkRaw(named("song.dat", "audio/mpeg"), fc);
  REQUIRE(w.blocked);
  REQUIRE(w.blocked->reason == "type audio/mpeg");
  REQUIRE_FALSE(checkRaw(named("pic.png", "image/png"), fc).blocked);
  // An unnamed part of a blocked type is still found, and named in the reply.
  std::string unnamed = withAttachment("Content-Type: application/x-dosexec\n", "MZ");
  CheckResult u = checkRaw(unnamed, fc);
  REQUIRE(u.blocked);
  REQUIRE(resultFor(u, fc).text.find("unnamed application/x-dosexec") != std::string::npos);

  CheckResult n = checkRaw(named("INVOICE_12345.htm", "text/html"), fc);
  REQUIRE(n.blocked);
  REQUIRE(n.blocked->reason.find("name matches /") == 0);
  REQUIRE_FALSE(checkRaw(named("invoice_12345.pdf"), fc).blocked);
  REQUIRE_FALSE(checkRaw(named("my_invoice_1.html", "text/html"), fc).blocked);
}

TEST_CASE("a clean message passes, attachments counted") {
  FilterConfig fc = configOf(kSection);
  std::string msg = crlf("From: a@example.test\nSubject: report\nMIME-Version: 1.0\n"
                         "Content-Type: multipart/mixed; boundary=B\n\n--B\nContent-Type: text/plain\n\nhello\n"
                         "--B\nContent-Type: application/pdf; name=report.pdf\nContent-Transfer-Encoding: base64\n\n") +
                    base64("%PDF-1.4 fine") + crlf("\n--B\nContent-Type: image/png; name=logo.png\n\nPNG\n--B--\n");
  CheckResult r = checkRaw(msg, fc);
  REQUIRE_FALSE(r.blocked);
  REQUIRE(r.attachments == 2);
  Result res = resultFor(r, fc);
  REQUIRE(res.verdict == Verdict::Continue);
  REQUIRE(res.summary == "clean");
  std::string plain = crlf("From: a@example.test\nSubject: hi\n\nJust text, run setup.exe later.\n");
  REQUIRE_FALSE(checkRaw(plain, fc).blocked);
}

TEST_CASE("names inside zip archives: deflated (python3 zipfile), stored, prefixed, nested message") {
  FilterConfig fc = configOf(kSection);
  std::string deflated = pythonZip({"docs/readme.txt", "docs/payload.exe"});
  ZipListing listing = listZipNames(deflated);
  REQUIRE(listing.isZip);
  REQUIRE_FALSE(listing.malformed);
  REQUIRE(listing.names == std::vector<std::string>{"docs/readme.txt", "docs/payload.exe"});

  CheckResult r = checkRaw(zipped("files.zip", deflated), fc);
  REQUIRE(r.blocked);
  REQUIRE(r.blocked->file == "docs/payload.exe");
  REQUIRE(r.blocked->archive == "files.zip");
  REQUIRE(r.archiveEntries == 2);
  Result res = resultFor(r, fc);
  REQUIRE(res.code == 554);
  REQUIRE(res.text.find("docs/payload.exe in files.zip") != std::string::npos);

  // A clean archive passes; scan_zip = false does not look inside.
  REQUIRE_FALSE(checkRaw(zipped("files.zip", pythonZip({"a.txt", "b.pdf"})), fc).blocked);
  FilterConfig noZip = configOf(kSection + "scan_zip = false\n");
  REQUIRE_FALSE(checkRaw(zipped("files.zip", deflated), noZip).blocked);

  // Stored, found by content even when declared octet-stream without a .zip name.
  std::string stored = storedZip({{"a.txt", "hello"}, {"run.js", "alert(1)"}});
  REQUIRE(listZipNames(stored).names == std::vector<std::string>{"a.txt", "run.js"});
  CheckResult s = checkRaw(withAttachment("Content-Type: application/octet-stream; name=data.bin\n"
                                          "Content-Transfer-Encoding: base64\n",
                                          base64(stored)),
                           fc);
  REQUIRE(s.blocked);
  REQUIRE(s.blocked->file == "run.js");

  // Bytes in front of the archive (self-extractor style): offsets are corrected.
  std::string prefixed = storedZip({{"x.scr", "zz"}}, std::string(300, 'M'));
  REQUIRE(listZipNames(prefixed).names == std::vector<std::string>{"x.scr"});

  // The central directory and the local header disagree: both names are seen.
  std::string twoFaced = storedZip({{"safe.txt", "data"}});
  size_t local = twoFaced.find("safe.txt");
  twoFaced.replace(local, 8, "safe.exe");
  ZipListing both = listZipNames(twoFaced);
  REQUIRE(both.names.size() == 2);
  REQUIRE(checkRaw(zipped("a.zip", twoFaced), fc).blocked);

  // An attached message whose zip holds an .exe.
  std::string inner = zipped("inner.zip", deflated);
  std::string outer = crlf("From: c@example.test\nSubject: fwd\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=OUT\n\n"
                           "--OUT\nContent-Type: text/plain\n\nforwarded\n--OUT\nContent-Type: message/rfc822\n\n") +
                      inner + crlf("\n--OUT--\n");
  CheckResult nested = checkRaw(outer, fc);
  REQUIRE(nested.blocked);
  REQUIRE(nested.blocked->archive == "inner.zip");
}

TEST_CASE("malformed zips: every truncation, byte flips and hostile offsets never crash") {
  FilterConfig fc = configOf(kSection);
  std::string zip = pythonZip({"a.txt", "b/c.exe", "d.pdf"});
  std::string stored = storedZip({{"one.txt", std::string(100, 'a')}, {"two.exe", "MZ"}});
  size_t listed = 0;
  for (const std::string* base : {&zip, &stored}) {
    for (size_t n = 0; n <= base->size(); ++n) {
      ZipListing l = listZipNames(std::string_view(*base).substr(0, n));
      REQUIRE(l.names.size() <= 3);
      listed += l.names.size();
    }
    // Flip each byte of the structures (deterministic pseudo-random values).
    uint32_t seed = 12345;
    for (size_t i = 0; i < base->size(); ++i) {
      std::string bad = *base;
      seed = seed * 1103515245 + 12345;
      bad[i] = static_cast<char>(seed >> 16);
      ZipListing l = listZipNames(bad);
      REQUIRE(l.names.size() <= 10000);
    }
  }
  REQUIRE(listed > 0);  // partial archives still give their early names

  // The end record claims 65535 entries at offset 0xFFFFFFFF and a zip64 locator that
  // points past the end; names have lengths past the buffer.
  std::string end("PK\x05\x06", 4);
  le(end, 0, 2); le(end, 0, 2); le(end, 0xFFFF, 2); le(end, 0xFFFF, 2); le(end, 0xFFFFFFFF, 4); le(end, 0xFFFFFFFF, 4);
  le(end, 0, 2);
  std::string locator("PK\x06\x07", 4);
  le(locator, 0, 4); le(locator, 0xFFFFFFFFFFFFull, 8); le(locator, 1, 4);
  ZipListing hostile = listZipNames(locator + end);
  REQUIRE(hostile.isZip);
  REQUIRE(hostile.malformed);
  REQUIRE(hostile.names.empty());
  std::string longName("PK\x03\x04", 4);
  longName += std::string(22, '\0');
  le(longName, 0xFFFF, 2); le(longName, 0, 2);
  longName += "abc";
  ZipListing ln = listZipNames(longName);
  REQUIRE(ln.malformed);
  REQUIRE(ln.names.empty());

  // Many entries: capped.
  std::vector<std::pair<std::string, std::string>> many;
  for (int i = 0; i < 50; ++i) many.push_back({"f" + std::to_string(i) + ".txt", ""});
  ZipListing capped = listZipNames(storedZip(many), 10);
  REQUIRE(capped.names.size() == 10);
  REQUIRE(capped.truncated);

  // Through the filter: a truncated zip attachment is not a crash, and is flagged.
  std::string cut = zip.substr(0, zip.size() / 2);
  CheckResult r = checkRaw(zipped("cut.zip", cut), fc);
  REQUIRE(r.attachments == 1);
  REQUIRE(resultFor(r, fc).detail.str().find("archive_malformed") != std::string::npos);
}

TEST_CASE("config errors are FILE:LINE, strip is accepted, no list turns the filter off") {
  TempDir dir;
  moat::policy::Errors errors;
  auto config = loadConfig(dir,
                           "[attachments]\n"                       // line 3
                           "block_names = [\n"                     // 4
                           "  \"ok.*\",\n"                         // 5
                           "  \"(?<=bad)lookbehind\",\n"           // 6
                           "]\n"                                   // 7
                           "block_types = [\"nonsense\"]\n"        // 8
                           "action = \"strip\"\n"                  // 9
                           "colour = \"blue\"\n",                  // 10
                           errors);
  REQUIRE(config);
  makeAttachmentsFilter(*config, errors);
  std::string all = errors.str();
  INFO(all);
  REQUIRE(errors.hasErrors());
  REQUIRE(all.find("moat.toml:6: attachments.block_names: bad pattern") != std::string::npos);
  REQUIRE(all.find("moat.toml:8:") != std::string::npos);
  REQUIRE(all.find("moat.toml:9:") == std::string::npos);  // action = "strip" is valid
  REQUIRE(all.find("moat.toml:10: attachments.colour: unknown key") != std::string::npos);

  moat::policy::Errors e2;
  auto bad = loadConfig(dir, "[attachments]\nblock_extensions = [\"exe\"]\naction = \"delete\"\n", e2);
  REQUIRE(bad);
  readConfig(*bad, e2);
  REQUIRE(e2.str().find("moat.toml:5:") != std::string::npos);

  moat::policy::Errors e3;
  REQUIRE_FALSE(makeAttachmentsFilter(*loadConfig(dir, "", e3), e3));
  REQUIRE_FALSE(makeAttachmentsFilter(*loadConfig(dir, "[attachments]\nscan_zip = true\n", e3), e3));
  REQUIRE_FALSE(makeAttachmentsFilter(*loadConfig(dir, "[attachments]\nenabled = false\nblock_extensions = [\"exe\"]\n", e3), e3));
  REQUIRE_FALSE(e3.hasErrors());
  auto on = makeAttachmentsFilter(*loadConfig(dir, "[attachments]\nblock_extensions = [\"exe\"]\n", e3), e3);
  REQUIRE(on);
  REQUIRE(on->name() == "attachments");
  REQUIRE(on->stage() == Stage::Data);
}

using moat::test::runFilter;

TEST_CASE("the filter on a real loop: reject, quarantine, clean, no MIME tree, a hostile name in the reply") {
  TempDir dir;
  moat::policy::Errors errors;
  auto reject = makeAttachmentsFilter(*loadConfig(dir, kSection, errors), errors);
  auto quarantine = makeAttachmentsFilter(*loadConfig(dir, kSection + "action = \"quarantine\"\n", errors), errors);
  REQUIRE_FALSE(errors.hasErrors());
  REQUIRE(reject);
  REQUIRE(quarantine);

  Result r = runFilter(*reject, named("invoice.pdf.exe"), true);
  REQUIRE(r.verdict == Verdict::Reject);
  REQUIRE(r.code == 554);
  REQUIRE(r.enhanced == "5.7.1");
  REQUIRE(r.text == "Attachment blocked: invoice.pdf.exe (extension .exe)");
  REQUIRE(r.summary == "blocked invoice.pdf.exe");

  Result noTree = runFilter(*reject, named("invoice.pdf.exe"), false);
  REQUIRE(noTree.verdict == Verdict::Reject);

  Result q = runFilter(*quarantine, zipped("files.zip", storedZip({{"tool.exe", "MZ"}})), true);
  REQUIRE(q.verdict == Verdict::Quarantine);
  REQUIRE(q.quarantineReason == "attachment tool.exe in files.zip: extension .exe");

  Result c = runFilter(*reject, named("report.pdf", "application/pdf"), true);
  REQUIRE(c.verdict == Verdict::Continue);
  REQUIRE(c.summary == "clean");

  // A name with CR LF (RFC 2231 lets a sender encode any byte) cannot break the reply.
  std::string crlfName = withAttachment(
      "Content-Type: application/octet-stream\nContent-Disposition: attachment; filename*=''a%0D%0A250%20ok.exe\n", "MZ");
  Result inj = runFilter(*reject, crlfName, true);
  REQUIRE(inj.verdict == Verdict::Reject);
  REQUIRE(inj.text.find('\r') == std::string::npos);
  REQUIRE(inj.text.find('\n') == std::string::npos);
  REQUIRE(replySafe(std::string(500, 'x')).size() == 103);
}

namespace {

// The bytes of a part in its message.
std::string partBytes(const std::string& raw, const mime::Part& p) { return raw.substr(p.offset, p.endOffset - p.offset); }

std::shared_ptr<const Filter> stripFilter(const TempDir& dir) {
  moat::policy::Errors errors;
  auto f = makeAttachmentsFilter(*loadConfig(dir, kSection + "action = \"strip\"\n", errors), errors);
  INFO(errors.str());
  REQUIRE_FALSE(errors.hasErrors());
  REQUIRE(f);
  return f;
}

}  // namespace

TEST_CASE("strip: the .exe part becomes a notice, the MIME structure and the other parts stay") {
  TempDir dir;
  auto strip = stripFilter(dir);
  // Three parts: text, the .exe, a pdf after it.
  std::string raw = crlf("From: a@example.test\nTo: b@example.test\nSubject: file\nMIME-Version: 1.0\n"
                         "Content-Type: multipart/mixed; boundary=XX\n\n"
                         "preamble\n--XX\nContent-Type: text/plain\n\nsee attached\n"
                         "--XX\nContent-Type: application/octet-stream; name=\"tool.exe\"\n"
                         "Content-Disposition: attachment; filename=\"tool.exe\"\nContent-Transfer-Encoding: base64\n\n") +
                    base64("MZ evil bytes") +
                    crlf("\n--XX\nContent-Type: application/pdf; name=\"r.pdf\"\nContent-Transfer-Encoding: base64\n\n") +
                    base64("%PDF-1.4 fine") + crlf("\n--XX--\nepilogue\n");
  Result r = runFilter(*strip, raw, true);
  REQUIRE(r.verdict == Verdict::Continue);
  REQUIRE(r.summary == "stripped tool.exe");
  REQUIRE(r.edits.size() == 1);
  std::string out = applyEdits(raw, r.edits);
  INFO(out);

  auto before = mime::parse(raw, mime::Limits{});
  auto after = mime::parse(out, mime::Limits{});
  REQUIRE(after->root.contentType == "multipart/mixed");
  REQUIRE(after->root.children.size() == 3);
  const auto& notice = after->root.children[1];
  REQUIRE(notice.contentType == "text/plain");
  REQUIRE(notice.text == "Moat removed the attachment \"tool.exe\" (blocked extension .exe) from this message.");
  REQUIRE(out.find("tool.exe\"\r\nContent-Transfer") == std::string::npos);
  REQUIRE(out.find(base64("MZ evil bytes")) == std::string::npos);
  // The other parts, the preamble, the delimiters and the epilogue are byte-identical.
  REQUIRE(partBytes(out, after->root.children[0]) == partBytes(raw, before->root.children[0]));
  REQUIRE(partBytes(out, after->root.children[2]) == partBytes(raw, before->root.children[2]));
  REQUIRE(out.substr(0, before->root.children[1].offset) == raw.substr(0, before->root.children[1].offset));
  REQUIRE(out.substr(out.size() - 20) == raw.substr(raw.size() - 20));
  // Nothing blocked is left: a second pass finds the message clean.
  REQUIRE(runFilter(*strip, out, true).summary == "clean");
}

TEST_CASE("strip: a zip with a blocked name goes whole, several blocked parts, an encoded attached message") {
  TempDir dir;
  auto strip = stripFilter(dir);
  Result z = runFilter(*strip, zipped("files.zip", storedZip({{"readme.txt", "hi"}, {"tool.exe", "MZ"}})), true);
  REQUIRE(z.summary == "stripped files.zip");
  std::string out = applyEdits(zipped("files.zip", storedZip({{"readme.txt", "hi"}, {"tool.exe", "MZ"}})), z.edits);
  auto m = mime::parse(out, mime::Limits{});
  REQUIRE(m->root.children.size() == 2);
  REQUIRE(m->root.children[1].text ==
          "Moat removed the attachment \"files.zip\" (it contains \"tool.exe\", blocked extension .exe) from this message.");

  // Two blocked files and a base64-encoded attached message holding a third.
  std::string inner = crlf("Subject: inner\nContent-Type: application/octet-stream; name=\"x.scr\"\n\nMZ\n");
  std::string raw = crlf("Subject: many\nContent-Type: multipart/mixed; boundary=B\n\n--B\n"
                         "Content-Type: text/plain\n\nhello\n--B\n"
                         "Content-Type: application/octet-stream; name=\"a.exe\"\n\nMZ\n--B\n"
                         "Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n") +
                    base64(inner) + crlf("\n--B\nContent-Type: application/octet-stream; name=\"b.js\"\n\nx\n--B--\n");
  Result r = runFilter(*strip, raw, true);
  REQUIRE(r.edits.size() == 3);
  REQUIRE(r.summary == "stripped a.exe, x.scr, b.js");
  auto after = mime::parse(applyEdits(raw, r.edits), mime::Limits{});
  REQUIRE(after->root.children.size() == 4);
  REQUIRE(after->root.children[0].text == "hello");
  for (size_t i = 1; i < 4; ++i) REQUIRE(after->root.children[i].text.rfind("Moat removed the attachment", 0) == 0);
  REQUIRE(after->attachments.empty());
}

TEST_CASE("strip: a single-part message that is the blocked file keeps its headers, gets the notice") {
  TempDir dir;
  auto strip = stripFilter(dir);
  std::string raw = crlf("From: a@example.test\nSubject: here\nContent-Type: application/x-msdownload;\n"
                         " name=\"setup.exe\"\nContent-Transfer-Encoding: base64\nX-Other: kept\n\n") +
                    base64("MZ evil") + "\r\n";
  Result r = runFilter(*strip, raw, true);
  REQUIRE(r.verdict == Verdict::Continue);
  REQUIRE(r.summary == "stripped setup.exe");
  std::string out = applyEdits(raw, r.edits);
  INFO(out);
  auto m = mime::parse(out, mime::Limits{});
  REQUIRE(m->root.contentType == "text/plain");
  REQUIRE(m->header("Subject") == "here");
  REQUIRE(m->header("X-Other") == "kept");
  REQUIRE(m->root.text == "Moat removed the attachment \"setup.exe\" (blocked extension .exe) from this message.\r\n");
  REQUIRE(out.find("x-msdownload") == std::string::npos);
  REQUIRE(out.find("base64") == std::string::npos);
}
