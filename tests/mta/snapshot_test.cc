// Tests for mta/server/snapshot: what a config snapshot builds from [[route]] tls_cert and
// tls_key (client certificates), from real files the test makes, and what it refuses.
#include "mta/server/snapshot.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>

#include "tests/support/temp_file.h"
#include "tests/support/test_cert.h"

using moat::mta::server::Snapshot;

namespace {

std::string config(const std::string& routes) {
  return "[server]\nhostname = \"mx.moat.test\"\nlog_file = \"-\"\n\n[[listener]]\naddress = \"127.0.0.1:0\"\n\n"
         "[relay]\ndomains = [\"example.test\"]\n" +
         routes;
}

std::string route(const std::string& domain, const moat::test::TestCert& cert, const std::string& keyFile = "") {
  return "\n[[route]]\ndomains = [\"" + domain + "\"]\nto = [\"smtp:127.0.0.1:2626\"]\ntls = \"require\"\n" +
         "tls_cert = \"" + cert.certFile() + "\"\ntls_key = \"" + (keyFile.empty() ? cert.keyFile() : keyFile) + "\"\n";
}

}  // namespace

TEST_CASE("snapshot: routes naming the same client certificate share one, each route finds its own") {
  moat::test::TestCert a("a.moat.test"), b("b.moat.test");
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  auto path =
      moat::test::writeTempFile("snapshot",
                                config(route("one.test", a) + route("two.test", a) + route("three.test", b) +
                                       "\n[[route]]\ndomains = [\"four.test\"]\nto = [\"smtp:127.0.0.1:2626\"]\n"),
                                ".toml");
  moat::policy::Errors errors;
  auto snap = Snapshot::load(path, errors);
  INFO(errors.str());
  REQUIRE(snap);
  CHECK(snap->clientCertificates.size() == 2);
  const auto& routes = snap->config->routes;
  REQUIRE(routes.size() == 4);
  bool missing = true;
  auto one = snap->clientCertificate(routes[0], missing);
  REQUIRE(one);
  CHECK_FALSE(missing);
  CHECK(one->subject() == "CN=a.moat.test,O=Moat tests");
  CHECK(snap->clientCertificate(routes[1], missing) == one);  // shared, not loaded twice
  auto three = snap->clientCertificate(routes[2], missing);
  REQUIRE(three);
  CHECK(three->subject() == "CN=b.moat.test,O=Moat tests");
  CHECK_FALSE(snap->clientCertificate(routes[3], missing));  // names none
  CHECK_FALSE(missing);
  // A route this snapshot did not load (one of an older or newer config): missing, never none.
  moat::policy::Route other = routes[0];
  other.tlsCert = a.dir() + "/elsewhere.pem";
  CHECK_FALSE(snap->clientCertificate(other, missing));
  CHECK(missing);
  // A certificate valid for 7 more days: a warning at its tls_cert line, not an error.
  CHECK(errors.str().find(path + ":15: warning: [[route]] tls_cert: the certificate in " + a.certFile() +
                          " expires on ") != std::string::npos);
  unlink(path.c_str());
}

TEST_CASE("snapshot: a client certificate that does not load is refused at its tls_cert line") {
  moat::test::TestCert a("a.moat.test"), b("b.moat.test");
  auto path = moat::test::writeTempFile("snapshot", config(route("one.test", a, b.keyFile())), ".toml");
  moat::policy::Errors mismatch;
  CHECK_FALSE(Snapshot::load(path, mismatch));
  CHECK(mismatch.str().find(path + ":15: [[route]] tls_cert: private key " + b.keyFile() +
                            " does not match certificate " + a.certFile()) != std::string::npos);
  unlink(path.c_str());
  moat::test::TestCert gone("gone.moat.test");
  path = moat::test::writeTempFile("snapshot", config(route("one.test", gone)), ".toml");
  unlink(gone.certFile().c_str());
  moat::policy::Errors missing;
  CHECK_FALSE(Snapshot::load(path, missing));
  CHECK(missing.str().find(path + ":15: [[route]] tls_cert: cannot load certificate " + gone.certFile()) !=
        std::string::npos);
  unlink(path.c_str());
}
