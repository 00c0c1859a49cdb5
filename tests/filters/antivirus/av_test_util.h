// tests/filters/antivirus/av_test_util.h — what the antivirus tests share: the EICAR test
// string (built from pieces so no source file looks infected), the test's own signature
// database line, MIME messages with attachments (plain, base64, zip made by python3's
// zipfile), a temporary folder, a config written to it, and running the filter on a loop.
#pragma once
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>

#include "filters/antivirus/antivirus_filter.h"
#include "filters/mime/mime.h"
#include "mta/runtime/uv.h"
#include "policy/config.h"
#include "tests/support/crlf.h"
#include "tests/support/filter_run.h"
#include "tests/support/temp_file.h"

namespace moat::filters::antivirus::test {

// Built from pieces so this source file itself does not look infected to scanners.
inline std::string eicar() {
  return std::string("X5O!P%@AP[4\\PZX54(P^)7CC)7}$") + "EICAR-STANDARD-" + "ANTIVIRUS-TEST-FILE!$H+H*";
}

inline std::string hex(std::string_view s) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += d[c >> 4];
    out += d[c & 15];
  }
  return out;
}

inline std::string base64(std::string_view in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    for (int k = 18; k >= 0; k -= 6) out += t[(v >> k) & 63];
    if (out.size() % 78 == 76) out += "\r\n";
  }
  if (i < in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    if (i + 1 < in.size()) v |= uint8_t(in[i + 1]) << 8;
    out += t[(v >> 18) & 63];
    out += t[(v >> 12) & 63];
    out += i + 1 < in.size() ? t[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

using moat::test::crlf;

using moat::test::TempDir;

inline std::string signatureDb() { return "Eicar-Test-Moat:0:*:" + hex("EICAR-STANDARD-ANTIVIRUS-TEST-FILE") + "\n"; }

// A deflated zip holding eicar.com, made by python3's zipfile.
inline std::string zipWithEicar(const TempDir& dir) {
  dir.file("payload.bin", eicar());
  std::string zip = dir.path + "/payload.zip";
  std::string cmd =
      "python3 -c \"import zipfile,sys; z=zipfile.ZipFile(sys.argv[2],'w',zipfile.ZIP_DEFLATED); "
      "z.write(sys.argv[1],'eicar.com'); z.close()\" '" +
      dir.path + "/payload.bin' '" + zip + "'";
  REQUIRE(std::system(cmd.c_str()) == 0);
  std::ifstream in(zip, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  unlink((dir.path + "/payload.bin").c_str());
  return ss.str();
}

inline std::string withAttachment(const std::string& headers, const std::string& body) {
  return crlf(
             "From: a@example.test\nTo: b@example.test\nSubject: file\nMIME-Version: 1.0\n"
             "Content-Type: multipart/mixed; boundary=XX\n\n--XX\nContent-Type: text/plain\n\nsee attached\n--XX\n" +
             headers + "\n") +
         body + crlf("\n--XX--\n");
}

inline const std::string kClean =
    crlf("From: a@example.test\nTo: b@example.test\nSubject: hi\n\nNothing to see here.\n");

inline std::shared_ptr<const moat::policy::Config> writeConfig(const TempDir& dir, const std::string& section) {
  dir.file("moat.toml", "[[listener]]\naddress = \"127.0.0.1:2525\"\n" + section);
  moat::policy::Errors errors;
  auto config = moat::policy::loadConfig(dir.path + "/moat.toml", errors);
  INFO(errors.str());
  REQUIRE(config);
  return config;
}

using moat::test::runFilter;

// What every backend with action = "reject" must answer: the test signature refused with
// 554 5.7.1 naming it, clean mail passed (`cleanWithMime`: with the MIME tree, as in the
// pipeline, or without).
inline void requireRejectsInfectedPassesClean(const Filter& filter, const std::string& infected, bool cleanWithMime) {
  Result r = runFilter(filter, infected, true);
  REQUIRE(r.verdict == Verdict::Reject);
  REQUIRE(r.code == 554);
  REQUIRE(r.enhanced == "5.7.1");
  REQUIRE(r.text.find("Eicar-Test-Moat") != std::string::npos);
  REQUIRE(r.summary.find("FOUND Eicar-Test-Moat") == 0);
  Result c = runFilter(filter, kClean, cleanWithMime);
  REQUIRE(c.verdict == Verdict::Continue);
  REQUIRE(c.summary == "clean");
}

}  // namespace moat::filters::antivirus::test
