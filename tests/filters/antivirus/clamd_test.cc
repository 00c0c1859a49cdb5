// Tests for the clamd backend (filters/antivirus/clamd.h) against a REAL clamd (Debian's
// clamav-daemon, installed by deploy/deps.sh): each test starts its own clamd in the
// foreground on a unix socket in a temporary folder (and a TCP variant on 127.0.0.1 with a
// free port), with the test's EICAR signature database and a small StreamMaxLength, and
// kills it by PID at the end. Covers: EICAR found in the whole message, as a base64
// attachment and inside a zip; clean passes; the filter's 554 5.7.1 and clean verdicts;
// clamd not running, a stalled clamd and StreamMaxLength exceeded are errors (451 4.7.1),
// never a pass; config values refused with FILE:LINE.
#include "filters/antivirus/clamd.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "filters/antivirus/antivirus_filter.h"
#include "tests/filters/antivirus/av_test_util.h"

extern char** environ;

using namespace moat::filters;
using namespace moat::filters::antivirus;
using namespace moat::filters::antivirus::test;

namespace {

constexpr const char* kClamd = "/usr/sbin/clamd";

int freeTcpPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  socklen_t len = sizeof sa;
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0);
  close(fd);
  return ntohs(sa.sin_port);
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A clamd of the test's own, in the foreground, killed by PID when the test ends.
class ClamdProcess {
 public:
  explicit ClamdProcess(bool tcp = false) {
    if (access(kClamd, X_OK) != 0)
      FAIL(std::string(kClamd) + " is missing: install clamav-daemon (deploy/deps.sh installs it for the tests)");
    mkdir((dir_.path + "/db").c_str(), 0700);
    dir_.file("db/moat-test.ndb", signatureDb());
    std::string conf = "Foreground yes\nLocalSocket " + socket() + "\nDatabaseDirectory " + dir_.path +
                       "/db\nLogFile " + dir_.path + "/clamd.log\nPidFile " + dir_.path +
                       "/clamd.pid\nStreamMaxLength 1M\nMaxThreads 4\n";
    if (tcp) {
      port_ = freeTcpPort();
      conf += "TCPSocket " + std::to_string(port_) + "\nTCPAddr 127.0.0.1\n";
    }
    dir_.file("clamd.conf", conf);
    spawn();
    waitReady();
  }
  ~ClamdProcess() { stop(); }
  ClamdProcess(const ClamdProcess&) = delete;
  ClamdProcess& operator=(const ClamdProcess&) = delete;

  std::string socket() const { return dir_.path + "/clamd.sock"; }
  int port() const { return port_; }
  const TempDir& dir() const { return dir_; }
  void stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    int status = 0;
    for (int i = 0; i < 100 && waitpid(pid_, &status, WNOHANG) == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (waitpid(pid_, &status, WNOHANG) == 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
    }
    pid_ = -1;
  }

 private:
  void spawn() {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    std::string out = dir_.path + "/clamd.out";
    posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    std::string confArg = "--config-file=" + dir_.path + "/clamd.conf";
    char* argv[] = {const_cast<char*>(kClamd), const_cast<char*>("--foreground"), confArg.data(), nullptr};
    int rc = posix_spawn(&pid_, kClamd, &fa, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    REQUIRE(rc == 0);
  }

  // Ready when it answers PING (on TCP too, if asked); bounded.
  void waitReady() {
    auto start = std::chrono::steady_clock::now();
    std::string error;
    for (int i = 0; i < 400; ++i) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        FAIL("clamd exited at start-up:\n" + slurp(dir_.path + "/clamd.out"));
      }
      ClamdClient unix(ClamdAddress{socket(), "", 0}, ClamdTimeouts{});
      ClamdClient tcp(ClamdAddress{"", "127.0.0.1", static_cast<uint16_t>(port_)}, ClamdTimeouts{});
      if (unix.ping(error) && (port_ == 0 || tcp.ping(error))) {
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
        WARN("clamd answered PING after " << ms.count() << " ms");
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL("clamd did not answer within 20 s: " + error + "\n" + slurp(dir_.path + "/clamd.out"));
  }

  TempDir dir_;
  pid_t pid_ = -1;
  int port_ = 0;
};

ClamdClient clientFor(const std::string& socket, std::chrono::milliseconds exchange = std::chrono::seconds(30)) {
  ClamdTimeouts t;
  t.exchange = exchange;
  std::string error;
  auto a = parseClamdAddress(socket, error);
  INFO(error);
  REQUIRE(a);
  return ClamdClient(*a, t);
}

std::string b64Attachment(const std::string& name, const std::string& payload, const char* type) {
  return withAttachment(
      std::string("Content-Type: ") + type + "; name=" + name + "\nContent-Transfer-Encoding: base64\n",
      base64(payload));
}

}  // namespace

TEST_CASE("clamd's INSTREAM reply: only OK is clean, FOUND is found or a limit, anything else an error") {
  using Status = ScanResult::Status;
  CHECK(parseInstreamReply("stream: OK", 10).status == Status::Clean);
  CHECK(parseInstreamReply("OK", 10).status == Status::Clean);

  ScanResult found = parseInstreamReply("stream: Eicar-Test-Signature FOUND", 10);
  CHECK(found.status == Status::Found);
  CHECK(found.signature == "Eicar-Test-Signature");
  CHECK(found.error.empty());
  // The signature goes into the SMTP reply: printable ASCII without spaces, at most 200 bytes.
  found = parseInstreamReply("stream: Bad Name\r\x01\xff FOUND", 10);
  CHECK(found.status == Status::Found);
  CHECK(found.signature == "Bad_Name___");
  found = parseInstreamReply("stream: " + std::string(300, 'S') + " FOUND", 10);
  CHECK(found.signature == std::string(200, 'S'));
  CHECK(parseInstreamReply("stream:  FOUND", 10).signature == "unknown");

  // What clamd could not fully scan (AlertExceedsMax) is a Limit; a scan timeout an Error.
  ScanResult limit = parseInstreamReply("stream: Heuristics.Limits.Exceeded.MaxRecursion FOUND", 10);
  CHECK(limit.status == Status::Limit);
  CHECK(limit.signature == "MaxRecursion");
  CHECK(parseInstreamReply("stream: Heuristics.Limits.Exceeded.MaxScanTime FOUND", 10).status == Status::Error);

  ScanResult size = parseInstreamReply("INSTREAM size limit exceeded. ERROR", 1048576);
  CHECK(size.status == Status::Error);
  CHECK(size.error.find("StreamMaxLength exceeded after 1048576 bytes") != std::string::npos);
  ScanResult error = parseInstreamReply("stream: Can't allocate memory ERROR", 10);
  CHECK(error.status == Status::Error);
  CHECK(error.error == "clamd: stream: Can't allocate memory ERROR");

  // Never a pass for anything but OK, however near.
  for (const char* reply : {"", "stream: ", "stream: ok", "stream: OK ", " stream: OK", "stream:OK", "stream: OKAY",
                            "stream: stream: OK", "OK FOUND", "FOUND", "stream: FOUND", "PONG"}) {
    ScanResult r = parseInstreamReply(reply, 10);
    INFO(reply);
    CHECK(r.status != Status::Clean);
  }
  ScanResult odd = parseInstreamReply("stream: OK" + std::string(400, 'x'), 10);
  CHECK(odd.status == Status::Error);
  CHECK(odd.error == "unexpected clamd reply: stream: OK" + std::string(190, 'x'));
}

TEST_CASE("clamd INSTREAM: EICAR whole, base64 and zipped is found, clean is clean (unix socket)") {
  ClamdProcess clamd;
  auto client = clientFor(clamd.socket());
  std::string plain = withAttachment("Content-Type: application/octet-stream; name=eicar.com\n", eicar());
  std::string b64 = b64Attachment("eicar.com", eicar(), "application/octet-stream");
  REQUIRE(b64.find("EICAR") == std::string::npos);
  std::string zip = zipWithEicar(clamd.dir());
  std::string zipped = b64Attachment("files.zip", zip, "application/zip");
  for (const auto* msg : {&plain, &b64, &zipped}) {
    ScanResult r = client.instream(*msg);
    INFO(r.error);
    REQUIRE(r.status == ScanResult::Status::Found);
    REQUIRE(r.signature.find("Eicar-Test-Moat") == 0);
  }
  REQUIRE(client.instream(kClean).status == ScanResult::Status::Clean);
  REQUIRE(client.instream("").status == ScanResult::Status::Clean);
  // More than one 64 KB chunk, clean.
  REQUIRE(client.instream(std::string(200000, 'a')).status == ScanResult::Status::Clean);

  // The backend: whole message, then each decoded part (scan_parts), like libclamav's.
  std::string error;
  ClamdScanner scanner(*parseClamdAddress(clamd.socket(), error), ClamdTimeouts{}, 100 << 20);
  REQUIRE(scanner.checkNow());
  auto tree = mime::parse(zipped, mime::Limits{});
  ScanResult found = scanner.scan(zipped, tree.get());
  REQUIRE(found.status == ScanResult::Status::Found);
  REQUIRE(found.scans == 1);
  std::string cleanPdf = b64Attachment("a.pdf", "%PDF-1.4 harmless", "application/pdf");
  auto cleanTree = mime::parse(cleanPdf, mime::Limits{});
  ScanResult clean = scanner.scan(cleanPdf, cleanTree.get());
  REQUIRE(clean.status == ScanResult::Status::Clean);
  REQUIRE(clean.scans == 2);
}

TEST_CASE("clamd over TCP on 127.0.0.1 finds EICAR") {
  ClamdProcess clamd(true);
  auto client = clientFor("127.0.0.1:" + std::to_string(clamd.port()));
  ScanResult r = client.instream(b64Attachment("eicar.com", eicar(), "application/octet-stream"));
  INFO(r.error);
  REQUIRE(r.status == ScanResult::Status::Found);
  REQUIRE(client.instream(kClean).status == ScanResult::Status::Clean);
  std::string error;
  REQUIRE(client.version(error).value_or("").find("ClamAV") == 0);
}

TEST_CASE("StreamMaxLength exceeded is an error naming it, never a pass") {
  ClamdProcess clamd;  // StreamMaxLength 1M
  auto client = clientFor(clamd.socket());
  std::string big = kClean + std::string(3 << 20, 'x');
  ScanResult r = client.instream(big);
  REQUIRE(r.status == ScanResult::Status::Error);
  REQUIRE(r.error.find("StreamMaxLength") != std::string::npos);
  Result v = resultFor(r, FilterConfig{});
  REQUIRE(v.verdict == Verdict::TempFail);
  REQUIRE(v.code == 451);
  REQUIRE(v.enhanced == "4.7.1");
  // The daemon is still fine afterwards.
  REQUIRE(client.instream(kClean).status == ScanResult::Status::Clean);
}

TEST_CASE("clamd not running or stalled: an error (451 4.7.1), never a pass") {
  TempDir dir;
  std::string infected = b64Attachment("eicar.com", eicar(), "application/octet-stream");
  // No socket file at all.
  auto missing = clientFor(dir.path + "/clamd.sock");
  ScanResult r = missing.instream(infected);
  REQUIRE(r.status == ScanResult::Status::Error);
  REQUIRE(r.error.find("connect") != std::string::npos);
  std::string error;
  REQUIRE_FALSE(missing.ping(error));
  REQUIRE_FALSE(error.empty());
  // A TCP port nobody listens on.
  auto refused = clientFor("127.0.0.1:" + std::to_string(freeTcpPort()));
  REQUIRE(refused.instream(kClean).status == ScanResult::Status::Error);
  // A socket that accepts connections (backlog) and never answers: the exchange deadline.
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::string path = dir.path + "/stalled.sock";
  std::snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path.c_str());
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof sun) == 0);
  REQUIRE(listen(fd, 8) == 0);
  auto stalled = clientFor(path, std::chrono::milliseconds(300));
  auto start = std::chrono::steady_clock::now();
  ScanResult t = stalled.instream(kClean);
  auto took = std::chrono::steady_clock::now() - start;
  close(fd);
  REQUIRE(t.status == ScanResult::Status::Error);
  REQUIRE(t.error.find("timed out") != std::string::npos);
  REQUIRE(took < std::chrono::seconds(5));

  // Through the filter: it starts (warns), and the scan is 451 4.7.1.
  moat::policy::Errors errors;
  auto config = writeConfig(dir, "[antivirus]\nbackend = \"clamd\"\nclamd_socket = \"" + dir.path + "/clamd.sock\"\n");
  auto filter = makeAntivirusFilter(*config, errors);
  REQUIRE_FALSE(errors.hasErrors());
  REQUIRE(filter);
  filter->scanner().waitIdle();
  // `moat check` says so, as a warning at clamd_socket (clamd may just not run yet).
  REQUIRE_FALSE(filter->scanner().lastError().empty());
  checkReady(*config, filter.get(), errors);
  INFO(errors.str());
  REQUIRE_FALSE(errors.hasErrors());
  REQUIRE(errors.all().size() == 1);
  REQUIRE(errors.all()[0].line == 5);
  REQUIRE(errors.all()[0].message.find("antivirus.clamd_socket: clamd does not answer") == 0);
  Result v = runFilter(*filter, infected, true);
  REQUIRE(v.verdict == Verdict::TempFail);
  REQUIRE(v.code == 451);
  REQUIRE(v.enhanced == "4.7.1");
  REQUIRE(v.detail.str().find("\"backend\":\"clamd\"") != std::string::npos);
}

TEST_CASE("the antivirus filter with backend clamd: 554 5.7.1, quarantine, clean - no database_dir needed") {
  ClamdProcess clamd;
  TempDir dir;
  std::string infected = b64Attachment("eicar.com", eicar(), "application/octet-stream");
  moat::policy::Errors errors;
  std::string section = "[antivirus]\nbackend = \"clamd\"\nclamd_socket = \"" + clamd.socket() + "\"\n";
  auto filter = makeAntivirusFilter(*writeConfig(dir, section + "action = \"reject\"\n"), errors);
  REQUIRE_FALSE(errors.hasErrors());
  REQUIRE(filter);
  REQUIRE(filter->scanner().name() == "clamd");
  filter->scanner().waitIdle();
  requireRejectsInfectedPassesClean(*filter, infected, true);

  auto q = makeAntivirusFilter(*writeConfig(dir, section + "action = \"quarantine\"\n"), errors);
  Result qr = runFilter(*q, infected, false);
  REQUIRE(qr.verdict == Verdict::Quarantine);

  // clamd goes away: temp failure, not a pass.
  clamd.stop();
  Result gone = runFilter(*filter, infected, true);
  REQUIRE(gone.verdict == Verdict::TempFail);
  REQUIRE(gone.code == 451);
}

TEST_CASE("clamd config: backend and clamd_socket values are checked with FILE:LINE") {
  TempDir dir;
  std::string error;
  REQUIRE(parseClamdAddress("/run/clamav/clamd.ctl", error)->path == "/run/clamav/clamd.ctl");
  auto tcp = parseClamdAddress("127.0.0.1:3310", error);
  REQUIRE((tcp && tcp->host == "127.0.0.1" && tcp->port == 3310));
  auto v6 = parseClamdAddress("[::1]:3310", error);
  REQUIRE((v6 && v6->host == "::1" && v6->text() == "[::1]:3310"));
  for (const char* bad : {"clamd", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", ":3310", "::1:3310", "host:33x"}) {
    INFO(bad);
    REQUIRE_FALSE(parseClamdAddress(bad, error));
  }
  REQUIRE_FALSE(parseClamdAddress("/" + std::string(200, 'a'), error));

  moat::policy::Errors bad;
  makeAntivirusFilter(*writeConfig(dir, "[antivirus]\nbackend = \"clamdscan\"\nclamd_socket = \"localhost\"\n"), bad);
  REQUIRE(bad.str().find("moat.toml:4:") != std::string::npos);
  REQUIRE(bad.str().find("moat.toml:5:") != std::string::npos);
  REQUIRE(bad.str().find("clamd_socket") != std::string::npos);

  // A relative path is relative to the config file's folder.
  moat::policy::Errors ok;
  FilterConfig fc =
      readConfig(*writeConfig(dir, "[antivirus]\nbackend = \"clamd\"\nclamd_socket = \"run/clamd.sock\"\n"), ok);
  REQUIRE_FALSE(ok.hasErrors());
  REQUIRE(fc.clamd.path == dir.path + "/run/clamd.sock");
  REQUIRE(fc.backend == "clamd");
}
