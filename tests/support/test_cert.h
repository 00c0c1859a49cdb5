// tests/support/test_cert.h — makes a throw-away CA and a server certificate (EC P-256,
// signed by that CA, SAN = the host name plus 127.0.0.1 and ::1) in a fresh temp directory,
// for tests of STARTTLS, implicit TLS and client verification. Files are PEM. The directory
// is removed when the TestCert is destroyed. Never for production use.
#pragma once
#include <string>

namespace moat::test {

class TestCert {
 public:
  // Empty caFile() and a message in error() when OpenSSL or the file system failed.
  explicit TestCert(const std::string& hostname = "localhost");
  ~TestCert();
  TestCert(const TestCert&) = delete;
  TestCert& operator=(const TestCert&) = delete;

  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  const std::string& dir() const { return dir_; }
  const std::string& caFile() const { return caFile_; }      // the CA certificate (trust anchor)
  const std::string& certFile() const { return certFile_; }  // server cert followed by the CA cert
  const std::string& keyFile() const { return keyFile_; }    // server key
  const std::string& caKeyFile() const { return caKeyFile_; }

 private:
  std::string dir_, caFile_, certFile_, keyFile_, caKeyFile_, error_;
};

}  // namespace moat::test
