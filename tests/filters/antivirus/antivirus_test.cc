// Tests for filters/antivirus with the real libclamav and a signature database the test
// writes at run time (an .ndb body signature for the EICAR test string): plain, base64,
// zipped (deflated by python3's zipfile) and nested attachments are found; clean mail is
// clean; a corrupt database at reload keeps the old engine; no database turns the filter
// off; the filter's verdicts (554 5.7.1, quarantine, 451 4.7.1) on a real loop.
#include "filters/antivirus/antivirus.h"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include "filters/antivirus/antivirus_filter.h"
#include "filters/mime/mime.h"
#include "mta/runtime/uv.h"
#include "tests/filters/antivirus/av_test_util.h"
#include "tests/support/command_output.h"

using namespace moat::filters;
using namespace moat::filters::antivirus;
using namespace moat::filters::antivirus::test;

namespace {

Scanner& libclamav(const AntivirusFilter& f) {
  auto* s = dynamic_cast<Scanner*>(&f.scanner());
  REQUIRE(s);
  return *s;
}

std::shared_ptr<const Engine> loadEngine(const TempDir& db) {
  std::string err;
  auto e = Engine::load(db.path, ScanLimits{}, err);
  INFO(err);
  REQUIRE(e);
  return e;
}

}  // namespace

TEST_CASE("EICAR is found as plain, base64, zipped and nested attachment, clean is clean") {
  TempDir db;
  db.file("moat-test.ndb", signatureDb());
  auto engine = loadEngine(db);
  REQUIRE(engine->signatures() == 1);

  std::string plain = withAttachment("Content-Type: application/octet-stream; name=eicar.com\n", eicar());
  std::string b64 = withAttachment("Content-Type: application/octet-stream; name=eicar.com\nContent-Transfer-Encoding: base64\n",
                                   base64(eicar()));
  REQUIRE(b64.find("EICAR") == std::string::npos);
  std::string zip = zipWithEicar(db);
  REQUIRE(zip.find("EICAR") == std::string::npos);  // deflated: only an unzipping scanner sees it
  std::string zipped = withAttachment("Content-Type: application/zip; name=files.zip\nContent-Transfer-Encoding: base64\n",
                                      base64(zip));
  // multipart/mixed > message/rfc822 > multipart/mixed > base64 zip
  std::string inner = withAttachment("Content-Type: application/zip; name=inner.zip\nContent-Transfer-Encoding: base64\n",
                                     base64(zip));
  std::string nested = crlf("From: c@example.test\nSubject: fwd\nContent-Type: multipart/mixed; boundary=OUT\n\n--OUT\n"
                            "Content-Type: text/plain\n\nforwarded\n--OUT\nContent-Type: message/rfc822\n\n") +
                       inner + crlf("\n--OUT--\n");

  // The whole-message scan alone finds every case: libclamav decodes MIME, base64, zip
  // and nested messages itself.
  for (const auto* msg : {&plain, &b64, &zipped, &nested}) {
    ScanResult r = engine->scan(*msg, nullptr);
    REQUIRE(r.status == ScanResult::Status::Found);
    REQUIRE(r.signature.find("Eicar-Test-Moat") == 0);
  }
  REQUIRE(engine->scan(kClean, nullptr).status == ScanResult::Status::Clean);

  // Through the Scanner with the MIME tree: same verdicts; a clean message also has its
  // parts scanned.
  Scanner scanner(db.path, ScanLimits{});
  REQUIRE(scanner.reloadIfChanged() == Scanner::Reload::Reloaded);
  auto tree = mime::parse(nested, mime::Limits{});
  REQUIRE(scanner.scan(nested, tree.get()).status == ScanResult::Status::Found);
  std::string cleanAttachment = withAttachment("Content-Type: application/pdf; name=a.pdf\nContent-Transfer-Encoding: base64\n",
                                               base64("%PDF-1.4 harmless"));
  auto cleanTree = mime::parse(cleanAttachment, mime::Limits{});
  ScanResult clean = scanner.scan(cleanAttachment, cleanTree.get());
  REQUIRE(clean.status == ScanResult::Status::Clean);
  REQUIRE(clean.scans == 2);
  // A decoded part alone (what scan_parts adds) is found too.
  REQUIRE(engine->scan(eicar(), "eicar.com").status == ScanResult::Status::Found);
}

TEST_CASE("a hash (.hdb) signature matches the attachment as a file") {
  TempDir db;
  // md5 of the EICAR string, computed by python3's hashlib.
  db.file("payload.txt", eicar());
  std::string sum = moat::test::commandOutput(
      "python3 -c \"import hashlib,sys; print(hashlib.md5(open(sys.argv[1],'rb').read()).hexdigest())\" '" + db.path +
      "/payload.txt'");
  REQUIRE(sum.size() >= 32);
  sum.resize(32);
  unlink((db.path + "/payload.txt").c_str());
  db.file("moat-test.hdb", sum + ":" + std::to_string(eicar().size()) + ":Eicar-Hash-Moat\n");
  auto engine = loadEngine(db);
  std::string b64 = withAttachment("Content-Type: application/octet-stream; name=eicar.com\nContent-Transfer-Encoding: base64\n",
                                   base64(eicar()));
  ScanResult r = engine->scan(b64, nullptr);
  REQUIRE(r.status == ScanResult::Status::Found);
  REQUIRE(r.signature.find("Eicar-Hash-Moat") == 0);
}

TEST_CASE("reload: unchanged, a good new database, a corrupt one keeps the old engine") {
  TempDir db;
  db.file("moat-test.ndb", signatureDb());
  Scanner scanner(db.path, ScanLimits{});
  REQUIRE(scanner.reloadIfChanged() == Scanner::Reload::Reloaded);
  auto first = scanner.engine();
  REQUIRE(first);
  REQUIRE(scanner.reloadIfChanged() == Scanner::Reload::Unchanged);
  REQUIRE(scanner.engine() == first);

  db.file("more.ndb", "Moat-Other-Sig:0:*:" + hex("moat-other-test-signature") + "\n");
  REQUIRE(scanner.reloadIfChanged() == Scanner::Reload::Reloaded);
  auto second = scanner.engine();
  REQUIRE(second != first);
  REQUIRE(second->signatures() == 2);
  REQUIRE(scanner.scan("xx moat-other-test-signature xx", nullptr).status == ScanResult::Status::Found);

  db.file("broken.ndb", "this is : not a valid signature line\n");
  std::string err;
  REQUIRE(scanner.reloadIfChanged(&err) == Scanner::Reload::Failed);
  REQUIRE_FALSE(err.empty());
  REQUIRE(scanner.lastError() == err);  // what `moat check` reports
  REQUIRE(scanner.engine() == second);
  REQUIRE(scanner.scan(withAttachment("Content-Type: application/octet-stream\n", eicar()), nullptr).status ==
          ScanResult::Status::Found);
  // The broken database is not retried until it changes again.
  REQUIRE(scanner.reloadIfChanged() == Scanner::Reload::Unchanged);

  // The background path (start-up, SIGHUP, periodic check) swaps too.
  unlink((db.path + "/broken.ndb").c_str());
  scanner.reloadInBackground();
  scanner.waitIdle();
  REQUIRE(scanner.engine() != second);
  REQUIRE(scanner.engine()->signatures() == 2);
  REQUIRE(scanner.lastError().empty());
}

TEST_CASE("no engine is a scan error, never a clean pass") {
  TempDir db;
  Scanner scanner(db.path, ScanLimits{});
  REQUIRE(scanner.reloadIfChanged() == Scanner::Reload::Failed);
  REQUIRE(scanner.scan(kClean, nullptr).status == ScanResult::Status::Error);
  Result r = resultFor(scanner.scan(kClean, nullptr), FilterConfig{});
  REQUIRE(r.verdict == Verdict::TempFail);
  REQUIRE(r.code == 451);
  REQUIRE(r.enhanced == "4.7.1");
}


TEST_CASE("the antivirus filter: reject, quarantine, clean, no database turns it off") {
  TempDir dir;
  mkdir((dir.path + "/clamav").c_str(), 0700);
  dir.file("clamav/moat-test.ndb", signatureDb());
  std::string infected = withAttachment(
      "Content-Type: application/octet-stream; name=eicar.com\nContent-Transfer-Encoding: base64\n", base64(eicar()));

  moat::policy::Errors errors;
  auto filter = makeAntivirusFilter(*writeConfig(dir, "[antivirus]\ndatabase_dir = \"clamav\"\naction = \"reject\"\n"), errors);
  REQUIRE_FALSE(errors.hasErrors());
  REQUIRE(filter);
  REQUIRE(filter->stage() == Stage::Data);
  filter->scanner().waitIdle();  // the start-up load runs in the background
  REQUIRE(libclamav(*filter).engine());
  requireRejectsInfectedPassesClean(*filter, infected, false);

  auto q = makeAntivirusFilter(*writeConfig(dir, "[antivirus]\ndatabase_dir = \"clamav\"\naction = \"quarantine\"\n"), errors);
  REQUIRE(q);
  q->scanner().waitIdle();
  Result qr = runFilter(*q, infected, false);
  REQUIRE(qr.verdict == Verdict::Quarantine);
  REQUIRE(qr.quarantineReason.find("virus Eicar-Test-Moat") == 0);

  mkdir((dir.path + "/empty").c_str(), 0700);
  REQUIRE_FALSE(makeAntivirusFilter(*writeConfig(dir, "[antivirus]\ndatabase_dir = \"empty\"\n"), errors));
  REQUIRE_FALSE(makeAntivirusFilter(*writeConfig(dir, "[antivirus]\ndatabase_dir = \"missing\"\n"), errors));
  REQUIRE_FALSE(errors.hasErrors());

  moat::policy::Errors bad;
  makeAntivirusFilter(*writeConfig(dir, "[antivirus]\ndatabase_dir = \"clamav\"\naction = \"delete\"\nbackend = \"clamdscan\"\n"), bad);
  REQUIRE(bad.hasErrors());
  REQUIRE(bad.str().find("moat.toml:5:") != std::string::npos);
  REQUIRE(bad.str().find("moat.toml:6:") != std::string::npos);
}

TEST_CASE("checkReady: a database that does not load is an error at database_dir, none a warning") {
  TempDir dir;
  mkdir((dir.path + "/broken").c_str(), 0700);
  dir.file("broken/moat-test.ndb", "this is : not a valid signature line\n");
  mkdir((dir.path + "/good").c_str(), 0700);
  dir.file("good/moat-test.ndb", signatureDb());
  moat::policy::Errors errors;

  // Broken: an error at the database_dir line (4), with libclamav's message.
  auto config = writeConfig(dir, "[antivirus]\naction = \"reject\"\ndatabase_dir = \"broken\"\n");
  auto filter = makeAntivirusFilter(*config, errors);
  REQUIRE(filter);
  filter->scanner().waitIdle();
  checkReady(*config, filter.get(), errors);
  INFO(errors.str());
  REQUIRE(errors.all().size() == 1);
  CHECK_FALSE(errors.all()[0].warning);
  CHECK(errors.all()[0].line == 5);
  CHECK(errors.all()[0].message.find("antivirus.database_dir: ") == 0);
  CHECK(errors.all()[0].message.find("Malformed database") != std::string::npos);

  // Without the key: at the [antivirus] line.
  mkdir((dir.path + "/clamav").c_str(), 0700);
  dir.file("clamav/moat-test.ndb", "this is : not a valid signature line\n");
  moat::policy::Errors noKey;
  config = writeConfig(dir, "[antivirus]\naction = \"reject\"\n");
  filter = makeAntivirusFilter(*config, noKey);
  REQUIRE(filter);
  filter->scanner().waitIdle();
  checkReady(*config, filter.get(), noKey);
  INFO(noKey.str());
  REQUIRE(noKey.hasErrors());
  CHECK(noKey.all().back().line == 3);

  // Good: nothing to say.
  moat::policy::Errors good;
  config = writeConfig(dir, "[antivirus]\ndatabase_dir = \"good\"\n");
  filter = makeAntivirusFilter(*config, good);
  REQUIRE(filter);
  filter->scanner().waitIdle();
  checkReady(*config, filter.get(), good);
  CHECK(good.all().empty());

  // No database files: the filter is off, and that is a warning.
  mkdir((dir.path + "/empty").c_str(), 0700);
  moat::policy::Errors none;
  config = writeConfig(dir, "[antivirus]\ndatabase_dir = \"empty\"\n");
  REQUIRE_FALSE(makeAntivirusFilter(*config, none));
  checkReady(*config, nullptr, none);
  INFO(none.str());
  REQUIRE(none.all().size() == 1);
  CHECK(none.all()[0].warning);
  CHECK(none.all()[0].line == 4);
  CHECK(none.all()[0].message.find("antivirus.database_dir: no signature databases in") == 0);
}

TEST_CASE("a config reload with the same antivirus settings keeps the loaded engine") {
  TempDir dir;
  mkdir((dir.path + "/clamav").c_str(), 0700);
  dir.file("clamav/moat-test.ndb", signatureDb());
  moat::policy::Errors errors;
  auto first = makeAntivirusFilter(*writeConfig(dir, "[antivirus]\ndatabase_dir = \"clamav\"\n"), errors);
  REQUIRE(first);
  first->scanner().waitIdle();
  auto engine = libclamav(*first).engine();
  REQUIRE(engine);
  // SIGHUP builds a new filter: same settings, so the same scanner and the same engine
  auto second = makeAntivirusFilter(*writeConfig(dir, "[antivirus]\ndatabase_dir = \"clamav\"\naction = \"quarantine\"\n"), errors);
  REQUIRE(&second->scanner() == &first->scanner());
  second->scanner().waitIdle();
  REQUIRE(libclamav(*second).engine() == engine);
  // different limits: a scanner of its own
  auto third = makeAntivirusFilter(*writeConfig(dir, "[antivirus]\ndatabase_dir = \"clamav\"\nmax_files = 5\n"), errors);
  REQUIRE(&third->scanner() != &first->scanner());
  third->scanner().waitIdle();
  INFO(errors.str());
  REQUIRE_FALSE(errors.hasErrors());
}

namespace {

// `payload` as eicar.com (or clean.txt) in a zip inside `depth` more zips, deflated by
// python3's zipfile; `files` extra small files beside it in the innermost one.
std::string nestedZip(const TempDir& dir, int depth, bool infected, int files = 0) {
  dir.file("payload.bin", infected ? eicar() : std::string("nothing to see"));
  std::string zip = dir.path + "/nested.zip";
  std::string cmd =
      "python3 -c \"import zipfile,io,sys\n"
      "d=open(sys.argv[1],'rb').read()\n"
      "b=io.BytesIO(); z=zipfile.ZipFile(b,'w',zipfile.ZIP_DEFLATED)\n"
      "[z.writestr('f%d.txt' % i, 'x') for i in range(int(sys.argv[4]))]\n"
      "z.writestr('eicar.com', d); z.close(); d=b.getvalue()\n"
      "for i in range(int(sys.argv[3])):\n"
      "  b=io.BytesIO(); z=zipfile.ZipFile(b,'w',zipfile.ZIP_DEFLATED); z.writestr('l%d.zip' % i, d); z.close(); "
      "d=b.getvalue()\n"
      "open(sys.argv[2],'wb').write(d)\" '" +
      dir.path + "/payload.bin' '" + zip + "' " + std::to_string(depth) + " " + std::to_string(files);
  REQUIRE(std::system(cmd.c_str()) == 0);
  std::ifstream in(zip, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string zipMessage(const std::string& zip) {
  return withAttachment("Content-Type: application/zip; name=files.zip\nContent-Transfer-Encoding: base64\n",
                        base64(zip));
}

}  // namespace

TEST_CASE("a scan limit hit is a Limit, never clean: nesting, file count, size, and a virus elsewhere still wins") {
  TempDir db;
  db.file("moat-test.ndb", signatureDb());
  ScanLimits limits;
  limits.maxRecursion = 8;
  limits.maxFiles = 50;
  limits.maxFileSize = 64 << 10;
  Scanner scanner(db.path, limits);
  REQUIRE(scanner.reloadIfChanged() == Scanner::Reload::Reloaded);
  auto scan = [&](const std::string& msg) { return scanner.scan(msg, mime::parse(msg, mime::Limits{}).get()); };

  // EICAR below the recursion limit: found; beyond it, libclamav does not look, and says so.
  REQUIRE(scan(zipMessage(nestedZip(db, 2, true))).status == ScanResult::Status::Found);
  ScanResult deep = scan(zipMessage(nestedZip(db, 12, true)));
  REQUIRE(deep.status == ScanResult::Status::Limit);
  REQUIRE(deep.signature == "MaxRecursion");
  REQUIRE(scan(zipMessage(nestedZip(db, 12, false))).status == ScanResult::Status::Limit);
  ScanResult many = scan(zipMessage(nestedZip(db, 0, true, 200)));
  REQUIRE(many.status == ScanResult::Status::Limit);
  REQUIRE(many.signature == "MaxFiles");
  // A part over max_file_size is not scanned: a Limit.
  std::string big =
      withAttachment("Content-Type: application/octet-stream; name=big.bin\n", std::string(100 << 10, 'x') + eicar());
  ScanResult size = scanner.scan(big, nullptr);
  REQUIRE(size.status == ScanResult::Status::Limit);
  REQUIRE(size.signature == "MaxFileSize");

  // A bomb beside a real virus: the virus is the verdict.
  std::string both = crlf(
                         "From: a@example.test\nSubject: two\nContent-Type: multipart/mixed; boundary=XX\n\n"
                         "--XX\nContent-Type: application/zip; name=a.zip\nContent-Transfer-Encoding: base64\n\n") +
                     base64(nestedZip(db, 12, false)) +
                     crlf("\n--XX\nContent-Type: application/octet-stream; name=e.com\n\n") + eicar() +
                     crlf("\n--XX--\n");
  ScanResult r = scan(both);
  REQUIRE(r.status == ScanResult::Status::Found);
  REQUIRE(r.signature.find("Eicar-Test-Moat") == 0);
  // The same names from clamd (AlertExceedsMax) read the same way; running out of time is
  // an error (451), as a timeout is.
  REQUIRE(foundResult("Heuristics.Limits.Exceeded.MaxFiles").status == ScanResult::Status::Limit);
  REQUIRE(foundResult("Heuristics.Limits.Exceeded.MaxFiles").signature == "MaxFiles");
  REQUIRE(foundResult("Heuristics.Limits.Exceeded.MaxScanTime").status == ScanResult::Status::Error);
  REQUIRE(foundResult("Win.Test.EICAR_HDB-1").status == ScanResult::Status::Found);
  // A message over max_file_size whose parts are each scanned is not a Limit for its size.
  std::string parts =
      withAttachment("Content-Type: application/octet-stream; name=a.bin\n", std::string(40 << 10, 'y')) +
      std::string(40 << 10, ' ');
  REQUIRE(scan(parts).status == ScanResult::Status::Clean);
}

TEST_CASE("limits_exceeded decides: as action by default, reject, quarantine, tempfail, pass, never clean") {
  TempDir dir;
  mkdir((dir.path + "/clamav").c_str(), 0700);
  dir.file("clamav/moat-test.ndb", signatureDb());
  std::string bomb = zipMessage(nestedZip(dir, 20, true));
  auto verdict = [&](const std::string& keys) {
    moat::policy::Errors errors;
    auto f = makeAntivirusFilter(*writeConfig(dir, "[antivirus]\ndatabase_dir = \"clamav\"\n" + keys), errors);
    INFO(errors.str());
    REQUIRE_FALSE(errors.hasErrors());
    REQUIRE(f);
    f->scanner().waitIdle();
    return runFilter(*f, bomb, true);
  };
  Result def = verdict("");
  REQUIRE(def.verdict == Verdict::Reject);
  REQUIRE(def.code == 554);
  REQUIRE(def.text.find("could not be fully scanned") != std::string::npos);
  REQUIRE(def.summary == "limit MaxRecursion");
  REQUIRE(verdict("action = \"quarantine\"\n").verdict == Verdict::Quarantine);
  Result t = verdict("limits_exceeded = \"tempfail\"\n");
  REQUIRE(t.verdict == Verdict::TempFail);
  REQUIRE(t.code == 451);
  Result p = verdict("limits_exceeded = \"pass\"\n");
  REQUIRE(p.verdict == Verdict::Continue);
  REQUIRE(p.summary == "limit MaxRecursion");

  moat::policy::Errors bad;
  makeAntivirusFilter(*writeConfig(dir, "[antivirus]\ndatabase_dir = \"clamav\"\nlimits_exceeded = \"ignore\"\n"), bad);
  REQUIRE(bad.str().find("moat.toml:5:") != std::string::npos);
}
