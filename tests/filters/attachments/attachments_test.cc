// Tests for filters/attachments: blocked extensions (also double extensions and trailing
// dots), declared types, name patterns, names inside zip archives (a deflated zip made by
// python3's zipfile and stored zips written here), clean mail passing, malformed zips
// (every truncation, byte flips, hostile offsets) never crashing, config errors as
// FILE:LINE, and the filter's verdicts on a real loop.
#include "filters/attachments/attachments.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "filters/attachments/zip.h"
#include "filters/edit.h"
#include "filters/mime/mime.h"
#include "mta/runtime/uv.h"
#include "tests/support/crlf.h"
#include "tests/support/filter_run.h"
#include "tests/support/temp_file.h"

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

using moat::test::TempDir;

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

// --- archives inside archives -----------------------------------------------------------

namespace {

// Zips built by python3's zipfile from a script that sets `out` (bytes); `z(files, method)`
// makes one archive from (name, bytes) pairs, deflated unless told.
std::string pythonBuild(const std::string& script) {
  TempDir dir;
  std::ofstream(dir.path + "/gen.py") << "import io, sys, zipfile\n"
                                         "def z(files, method=zipfile.ZIP_DEFLATED):\n"
                                         "    b = io.BytesIO()\n"
                                         "    with zipfile.ZipFile(b, 'w', method) as f:\n"
                                         "        for n, d in files: f.writestr(n, d)\n"
                                         "    return b.getvalue()\n"
                                      << script << "\nopen(sys.argv[1], 'wb').write(out)\n";
  std::string cmd = "/usr/bin/python3 '" + dir.path + "/gen.py' '" + dir.path + "/out.zip'";
  REQUIRE(std::system(cmd.c_str()) == 0);
  std::ifstream in(dir.path + "/out.zip", std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  REQUIRE(ss.str().size() >= 22);
  return ss.str();
}

// A chain of `levels` archives, level 1 the attachment: level i holds "l<i+1>.zip", the
// innermost holds `leaf`.
std::string chain(int levels, const std::string& leaf = "evil.exe") {
  return pythonBuild("out = z([('" + leaf + "', b'MZ')])\nfor i in range(" + std::to_string(levels) +
                     ", 1, -1): out = z([('readme.txt', b'hi'), ('l%d.zip' % i, out)])");
}

// Sets the general purpose flags and method of every local and central header of a stored zip.
std::string withFlags(std::string zip, uint16_t flags, uint16_t method) {
  for (std::string_view sig : {std::string_view("PK\x03\x04", 4), std::string_view("PK\x01\x02", 4)}) {
    size_t at = sig[2] == 3 ? 6 : 8;
    for (size_t p = zip.find(sig); p != std::string::npos; p = zip.find(sig, p + 4)) {
      zip[p + at] = static_cast<char>(flags & 0xFF);
      zip[p + at + 1] = static_cast<char>(flags >> 8);
      zip[p + at + 2] = static_cast<char>(method & 0xFF);
      zip[p + at + 3] = static_cast<char>(method >> 8);
    }
  }
  return zip;
}

std::string detailOf(const CheckResult& r, const FilterConfig& fc) { return resultFor(r, fc).detail.str(); }

}  // namespace

TEST_CASE("nested archives: a blocked name in a zip inside a zip is found, stored or deflated, named by its path") {
  FilterConfig fc = configOf(kSection);
  // Deflated, both levels (python3 zipfile).
  std::string deflated = pythonBuild("out = z([('notes.txt', b'x'), ('inner.zip', z([('evil.exe', b'MZ')]))])");
  CheckResult r = checkRaw(zipped("outer.zip", deflated), fc);
  REQUIRE(r.blocked);
  REQUIRE(r.blocked->file == "evil.exe");
  REQUIRE(r.blocked->archive == "outer.zip/inner.zip");
  Result res = resultFor(r, fc);
  REQUIRE(res.verdict == Verdict::Reject);
  REQUIRE(res.code == 554);
  REQUIRE(res.text == "Attachment blocked: evil.exe in outer.zip/inner.zip (extension .exe)");
  REQUIRE(res.summary == "blocked evil.exe in outer.zip/inner.zip");
  REQUIRE(res.detail.str().find("\"archive\":\"outer.zip/inner.zip\"") != std::string::npos);

  // Stored, with the inner archive under a harmless name: found by its bytes.
  std::string stored = storedZip({{"a.txt", "hello"}, {"data.bin", storedZip({{"run.js", "alert(1)"}})}});
  CheckResult s = checkRaw(zipped("files.zip", stored), fc);
  REQUIRE(s.blocked);
  REQUIRE(s.blocked->file == "run.js");
  REQUIRE(s.blocked->archive == "files.zip/data.bin");

  // Deflated, under a harmless name: its first bytes are inflated to tell it is a zip.
  std::string hidden =
      pythonBuild("out = z([('a.txt', b'hello ' * 1000), ('data.bin', z([('run.js', b'alert(1)')]))])");
  CheckResult hd = checkRaw(zipped("files.zip", hidden), fc);
  REQUIRE(hd.blocked);
  REQUIRE(hd.blocked->file == "run.js");
  REQUIRE(hd.blocked->archive == "files.zip/data.bin");
  // ...and a deflated file that is no zip is only peeked at: clean, no limit, a few bytes charged.
  std::string plain = pythonBuild("out = z([('a.txt', b'hello ' * 100000), ('b.dat', bytes(range(256)) * 400)])");
  CheckResult pl = checkRaw(zipped("plain.zip", plain), fc);
  REQUIRE_FALSE(pl.blocked);
  Result plr = resultFor(pl, fc);
  REQUIRE(plr.verdict == Verdict::Continue);
  REQUIRE(plr.summary == "clean");
  REQUIRE(plain.size() < 200 * 1024);
  REQUIRE(pl.archiveBytes <= plain.size());

  // A clean nested archive passes; the names of both levels are counted.
  std::string clean =
      pythonBuild("out = z([('a.txt', b'x'), ('sub/inner.zip', z([('b.pdf', b'%PDF'), ('c.txt', b'')]))])");
  CheckResult c = checkRaw(zipped("clean.zip", clean), fc);
  REQUIRE_FALSE(c.blocked);
  REQUIRE(c.archiveEntries == 4);
  Result cr = resultFor(c, fc);
  REQUIRE(cr.verdict == Verdict::Continue);
  REQUIRE(cr.summary == "clean");

  // A hostile inner name is cut and made printable in the reply.
  std::string longName = std::string(300, 'a') + "\r\n.zip";
  std::string hostile = storedZip({{longName, storedZip({{"x.exe", "MZ"}})}});
  Result h = resultFor(checkRaw(zipped("o.zip", hostile), fc), fc);
  REQUIRE(h.verdict == Verdict::Reject);
  REQUIRE(h.text.find('\r') == std::string::npos);
  REQUIRE(h.text.size() < 300);
}

TEST_CASE("nested archives: max_archive_depth bounds the levels, past it is a limit, never clean") {
  FilterConfig fc = configOf(kSection);  // max_archive_depth = 5 by default
  CheckResult five = checkRaw(zipped("l1.zip", chain(5)), fc);
  REQUIRE(five.blocked);
  REQUIRE(five.blocked->archive == "l1.zip/l2.zip/l3.zip/l4.zip/l5.zip");

  // A sixth level is not opened: the message could not be fully checked.
  CheckResult six = checkRaw(zipped("l1.zip", chain(6)), fc);
  REQUIRE_FALSE(six.blocked);
  Result r = resultFor(six, fc);
  REQUIRE(r.verdict == Verdict::Reject);
  REQUIRE(r.code == 554);
  REQUIRE(r.enhanced == "5.7.1");
  REQUIRE(r.text ==
          "Attachment could not be fully checked: l1.zip/l2.zip/l3.zip/l4.zip/l5.zip/l6.zip (max_archive_depth)");
  REQUIRE(r.summary == "limit max_archive_depth");
  REQUIRE(r.detail.str().find("\"limit\":\"max_archive_depth\"") != std::string::npos);
  // A clean chain past the depth is still a limit: what is below was not seen.
  REQUIRE(resultFor(checkRaw(zipped("l1.zip", chain(7, "fine.txt")), fc), fc).summary == "limit max_archive_depth");
  REQUIRE(resultFor(checkRaw(zipped("l1.zip", chain(5, "fine.txt")), fc), fc).summary == "clean");

  // max_archive_depth = 1: only the attached archive's own names (the old reach).
  FilterConfig one = configOf(kSection + "max_archive_depth = 1\n");
  REQUIRE(resultFor(checkRaw(zipped("l1.zip", chain(2)), one), one).summary == "limit max_archive_depth");
  FilterConfig deep = configOf(kSection + "max_archive_depth = 8\n");
  REQUIRE(checkRaw(zipped("l1.zip", chain(8)), deep).blocked);
}

TEST_CASE("nested archives: a 42.zip-style bomb made here costs bounded time and bytes and is a limit") {
  FilterConfig fc = configOf(kSection);
  // 16 files of 4 MB of zeros, then four levels of 16 copies of the level below: 16^5
  // files, 4 TB unpacked, a few hundred KB sent.
  std::string bomb = pythonBuild(
      "out = z([('%x.bin' % i, bytes(4 << 20)) for i in range(16)])\n"
      "for level in range(4): out = z([('lib%x.zip' % i, out) for i in range(16)])");
  REQUIRE(bomb.size() < (2u << 20));
  auto start = std::chrono::steady_clock::now();
  CheckResult r = checkRaw(zipped("42.zip", bomb), fc);
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  INFO(detailOf(r, fc));
  REQUIRE(took.count() < 5000);
  REQUIRE_FALSE(r.blocked);
  REQUIRE(r.archiveEntries <= 10000);
  Result res = resultFor(r, fc);
  REQUIRE(res.verdict == Verdict::Reject);
  REQUIRE(res.summary.rfind("limit ", 0) == 0);

  // One member that inflates past max_archive_bytes: stopped there, never held whole.
  std::string big = pythonBuild("out = z([('big.zip', bytes(96 << 20))])");
  REQUIRE(big.size() < (1u << 20));
  CheckResult b = checkRaw(zipped("big.zip", big), fc);
  INFO(detailOf(b, fc));
  Result br = resultFor(b, fc);
  REQUIRE(br.summary == "limit max_archive_bytes");
  REQUIRE(br.text == "Attachment could not be fully checked: big.zip/big.zip (max_archive_bytes)");
  REQUIRE(detailOf(b, fc).find("\"archive_bytes\":67108864") != std::string::npos);
  FilterConfig small = configOf(kSection + "max_archive_bytes = \"1M\"\n");
  REQUIRE(detailOf(checkRaw(zipped("big.zip", big), small), small).find("\"archive_bytes\":1048576") !=
          std::string::npos);

  // Many small entries across levels: max_zip_entries counts them all.
  FilterConfig few = configOf(kSection + "max_zip_entries = 20\n");
  std::string wide =
      pythonBuild("out = z([('in%d.zip' % i, z([('f%d.txt' % j, b'') for j in range(5)])) for i in range(5)])");
  Result w = resultFor(checkRaw(zipped("wide.zip", wide), few), few);
  REQUIRE(w.summary == "limit max_zip_entries");
  REQUIRE(resultFor(checkRaw(zipped("wide.zip", wide), fc), fc).summary == "clean");
}

TEST_CASE("nested archives: encrypted, cut short or unsupported inner archives are limits, per limits_exceeded") {
  FilterConfig fc = configOf(kSection);
  std::string inner = storedZip({{"evil.exe", "MZ"}});
  // Traditional PKWARE encryption (flag bit 0) on the inner archive.
  std::string encrypted = storedZip({{"readme.txt", "x"}, {"inner.zip", inner}});
  size_t at = encrypted.find("inner.zip");  // the local header's name: its flags are 24 bytes before
  encrypted[at - 24] = 1;
  at = encrypted.find("inner.zip", encrypted.find(std::string("PK\x01\x02", 4)) + 4);
  encrypted[at - 38] = 1;
  Result e = resultFor(checkRaw(zipped("outer.zip", encrypted), fc), fc);
  REQUIRE(e.summary == "limit encrypted");
  REQUIRE(e.text == "Attachment could not be fully checked: outer.zip/inner.zip (encrypted)");
  // An encrypted member that is not an archive is a name like any other (its name is read).
  REQUIRE(resultFor(checkRaw(zipped("o.zip", withFlags(storedZip({{"notes.txt", "x"}}), 1, 0)), fc), fc).summary ==
          "clean");
  REQUIRE(checkRaw(zipped("o.zip", withFlags(storedZip({{"evil.exe", "x"}}), 1, 0)), fc).blocked);

  // The inner archive cut short.
  std::string whole = pythonBuild("out = z([('a.txt', b'x' * 1000), ('b.exe', b'MZ' * 500)])");
  std::string cut = storedZip({{"inner.zip", whole.substr(0, whole.size() / 3)}});
  Result t = resultFor(checkRaw(zipped("outer.zip", cut), fc), fc);
  REQUIRE(t.summary == "limit malformed");
  REQUIRE(t.detail.str().find("\"unchecked\":\"outer.zip/inner.zip\"") != std::string::npos);
  // A deflated inner archive whose stream is cut short: its stated size halved in both headers.
  std::string deflatedCut = pythonBuild(
      "import struct\ninner = z([('x.txt', bytes(range(256)) * 64)])\nout = bytearray(z([('inner.zip', inner)]))\n"
      "cs = struct.unpack_from('<I', out, 18)[0]\nstruct.pack_into('<I', out, 18, cs // 2)\n"
      "struct.pack_into('<I', out, out.find(b'PK\\x01\\x02') + 20, cs // 2)\nout = bytes(out)");
  Result dc = resultFor(checkRaw(zipped("outer.zip", deflatedCut), fc), fc);
  REQUIRE(dc.summary == "limit malformed");
  REQUIRE(dc.detail.str().find("\"unchecked\":\"outer.zip/inner.zip\"") != std::string::npos);

  // bzip2 (method 12) is not unpacked here.
  std::string bz = withFlags(storedZip({{"inner.zip", inner}}), 0, 12);
  REQUIRE(resultFor(checkRaw(zipped("outer.zip", bz), fc), fc).summary == "limit compression method 12");

  // The attached archive itself cut short (before: a clean verdict with archive_malformed).
  std::string top = pythonZip({"a.txt", "b.txt"});
  Result m = resultFor(checkRaw(zipped("cut.zip", top.substr(0, top.size() - 30)), fc), fc);
  REQUIRE(m.verdict == Verdict::Reject);
  REQUIRE(m.summary == "limit malformed");

  // limits_exceeded decides; a blocked name found anyway still wins.
  auto verdict = [&](const std::string& extra) {
    FilterConfig c = configOf(kSection + extra);
    return resultFor(checkRaw(zipped("outer.zip", encrypted), c), c);
  };
  Result p = verdict("limits_exceeded = \"pass\"\n");
  REQUIRE(p.verdict == Verdict::Continue);
  REQUIRE(p.summary == "limit encrypted");
  REQUIRE(p.detail.str().find("\"limit\":\"encrypted\"") != std::string::npos);
  Result q = verdict("limits_exceeded = \"quarantine\"\n");
  REQUIRE(q.verdict == Verdict::Quarantine);
  REQUIRE(q.quarantineReason == "attachment could not be fully checked: outer.zip/inner.zip (encrypted)");
  Result tf = verdict("limits_exceeded = \"tempfail\"\n");
  REQUIRE(tf.verdict == Verdict::TempFail);
  REQUIRE(tf.code == 451);
  REQUIRE(tf.enhanced == "4.7.1");
  REQUIRE(verdict("action = \"quarantine\"\n").verdict == Verdict::Quarantine);  // default: as action
  FilterConfig passing = configOf(kSection + "limits_exceeded = \"pass\"\n");
  REQUIRE(
      resultFor(checkRaw(zipped("o.zip", storedZip({{"inner.zip", "PK\x03\x04junk"}, {"tool.scr", "MZ"}})), passing),
                passing)
          .verdict == Verdict::Reject);
}

TEST_CASE("nested archives: strip removes the attached archive, config errors are FILE:LINE") {
  TempDir dir;
  moat::policy::Errors errors;
  auto strip = makeAttachmentsFilter(*loadConfig(dir, kSection + "action = \"strip\"\n", errors), errors);
  REQUIRE(strip);
  std::string nested = storedZip({{"readme.txt", "hi"}, {"inner.zip", storedZip({{"tool.exe", "MZ"}})}});
  std::string raw = zipped("outer.zip", nested);
  Result r = runFilter(*strip, raw, true);
  REQUIRE(r.verdict == Verdict::Continue);
  REQUIRE(r.summary == "stripped outer.zip");
  auto m = mime::parse(applyEdits(raw, r.edits), mime::Limits{});
  REQUIRE(m->root.children.size() == 2);
  REQUIRE(m->root.children[1].text ==
          "Moat removed the attachment \"outer.zip\" (it contains \"inner.zip/tool.exe\", blocked extension .exe) "
          "from this message.");
  // A limit with strip: the archive that could not be looked into goes, the rest stays.
  std::string deep = chain(7, "fine.txt");
  std::string rawDeep = zipped("l1.zip", deep);
  Result d = runFilter(*strip, rawDeep, true);
  REQUIRE(d.verdict == Verdict::Continue);
  REQUIRE(d.summary == "stripped l1.zip");
  REQUIRE(d.detail.str().find("\"limit\":\"max_archive_depth\"") != std::string::npos);
  auto md = mime::parse(applyEdits(rawDeep, d.edits), mime::Limits{});
  REQUIRE(md->root.children[1].text.find("could not be fully checked: max_archive_depth") != std::string::npos);

  moat::policy::Errors e2;
  auto bad = loadConfig(dir,
                        "[attachments]\n"                  // 3
                        "block_extensions = [\"exe\"]\n"   // 4
                        "max_archive_depth = 0\n"          // 5
                        "limits_exceeded = \"ignore\"\n"   // 6
                        "max_archive_bytes = \"lots\"\n",  // 7
                        e2);
  REQUIRE(bad);
  readConfig(*bad, e2);
  INFO(e2.str());
  REQUIRE(e2.str().find("moat.toml:5:") != std::string::npos);
  REQUIRE(e2.str().find("moat.toml:6:") != std::string::npos);
  REQUIRE(e2.str().find("moat.toml:7:") != std::string::npos);
}
