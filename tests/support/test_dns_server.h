// tests/support/test_dns_server.h — runs tests/support/dns_server.py (an authoritative
// DNS server on 127.0.0.1, UDP+TCP) for the lifetime of one object, so tests can point a
// real resolver at a zone they control. See tests/support/README.md for the zone format.
//
// The server is a child process started with fork/exec; the constructor waits (bounded)
// until it listens; the destructor stops it by PID (SIGTERM, then SIGKILL) and removes
// its temp dir. Untrusted input: none (test data). Logs: the server's stderr goes to
// TEMPDIR/server.log, quoted in error() if it fails to start.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moat::test {

struct TestDnsServerOptions {
  std::string zoneText;      // the zone YAML itself (written to a temp file), or
  std::string zoneFile;      // a zone file on disk (e.g. a conformance suite file)
  int scenario = -1;         // document index of a multi-document file; -1 = the only one
  uint16_t port = 0;         // 0 = any free port
  bool chaseCnames = true;   // false: answer a CNAME without its target's records
  unsigned startTimeoutMs = 10000;
};

class TestDnsServer {
 public:
  explicit TestDnsServer(TestDnsServerOptions options);
  // Shorthand: serve this zone YAML on a free port.
  explicit TestDnsServer(std::string zoneText);
  ~TestDnsServer();
  TestDnsServer(const TestDnsServer&) = delete;
  TestDnsServer& operator=(const TestDnsServer&) = delete;

  bool ok() const { return pid_ > 0 && port_ != 0; }
  const std::string& error() const { return error_; }
  uint16_t port() const { return port_; }
  // "127.0.0.1:PORT", ready for CaresOptions::nameservers or [dns] nameservers.
  std::string nameserver() const;

  // Stops the server (queries then go unanswered); idempotent.
  void stop();
  // Starts it again on the same port with the same zone; returns ok().
  bool restart();

  // Every query received so far, one "name TYPE" per query (name lower-case, no dot).
  std::vector<std::string> queries() const;
  size_t queryCount(std::string_view name, std::string_view type) const;

 private:
  bool start(uint16_t port);

  TestDnsServerOptions options_;
  std::string dir_;
  std::string zonePath_;
  pid_t pid_ = -1;
  uint16_t port_ = 0;
  std::string error_;
};

// The Python interpreter the tests run: $MOAT_TEST_PYTHON, else /usr/bin/python3 (where
// Debian's python3-dnslib and python3-yaml live), else python3 from PATH.
std::string testPython();

}  // namespace moat::test
