// tests/support/test_dns_server.cc — see test_dns_server.h.
#include "tests/support/test_dns_server.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/support/temp_file.h"

#ifndef MOAT_SOURCE_DIR
#error "MOAT_SOURCE_DIR must be defined (the checkout, to find tests/support/dns_server.py)"
#endif

namespace moat::test {
namespace {

using moat::test::readFile;

bool waitExit(pid_t pid, int ms) {
  for (int waited = 0; waited <= ms; waited += 10) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid || r < 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

}  // namespace

std::string testPython() {
  if (const char* env = std::getenv("MOAT_TEST_PYTHON"); env && *env) return env;
  if (access("/usr/bin/python3", X_OK) == 0) return "/usr/bin/python3";
  return "python3";
}

TestDnsServer::TestDnsServer(std::string zoneText)
    : TestDnsServer([&] {
        TestDnsServerOptions o;
        o.zoneText = std::move(zoneText);
        return o;
      }()) {}

TestDnsServer::TestDnsServer(TestDnsServerOptions options) : options_(std::move(options)) {
  char tmpl[] = "/tmp/moat-dns-XXXXXX";
  if (!mkdtemp(tmpl)) {
    error_ = "mkdtemp failed";
    return;
  }
  dir_ = tmpl;
  zonePath_ = options_.zoneFile;
  if (zonePath_.empty()) {
    zonePath_ = dir_ + "/zone.yaml";
    std::ofstream(zonePath_, std::ios::binary) << options_.zoneText;
  }
  start(options_.port);
}

TestDnsServer::~TestDnsServer() {
  stop();
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

std::string TestDnsServer::nameserver() const { return "127.0.0.1:" + std::to_string(port_); }

bool TestDnsServer::start(uint16_t port) {
  const std::string portfile = dir_ + "/port";
  const std::string logPath = dir_ + "/server.log";
  ::unlink(portfile.c_str());
  // Everything the child needs is built before fork: after it only exec-safe calls.
  const std::string python = testPython();
  std::vector<std::string> args = {python, std::string(MOAT_SOURCE_DIR) + "/tests/support/dns_server.py",
                                   "--zone", zonePath_, "--port", std::to_string(port),
                                   "--portfile", portfile, "--querylog", dir_ + "/queries.log"};
  if (!options_.chaseCnames) args.push_back("--no-chase");
  if (options_.scenario >= 0) {
    args.push_back("--scenario");
    args.push_back(std::to_string(options_.scenario));
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int logFd = ::open(logPath.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  pid_t pid = fork();
  if (pid < 0) {
    error_ = "fork failed";
    if (logFd >= 0) ::close(logFd);
    return false;
  }
  if (pid == 0) {
    if (logFd >= 0) {
      dup2(logFd, 1);
      dup2(logFd, 2);
    }
    execvp(argv[0], argv.data());
    _exit(127);
  }
  if (logFd >= 0) ::close(logFd);
  pid_ = pid;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.startTimeoutMs);
  while (std::chrono::steady_clock::now() < deadline) {
    std::string text = readFile(portfile);
    if (!text.empty()) {
      port_ = static_cast<uint16_t>(std::atoi(text.c_str()));
      if (port_ != 0) return true;
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      error_ = "dns_server.py exited: " + readFile(logPath);
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  error_ = "dns_server.py did not start in time: " + readFile(logPath);
  stop();
  return false;
}

void TestDnsServer::stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  if (!waitExit(pid_, 3000)) {
    ::kill(pid_, SIGKILL);
    waitExit(pid_, 3000);
  }
  pid_ = -1;
}

bool TestDnsServer::restart() {
  stop();
  uint16_t port = port_;
  port_ = 0;
  return start(port);
}

std::vector<std::string> TestDnsServer::queries() const {
  std::vector<std::string> out;
  std::istringstream in(readFile(dir_ + "/queries.log"));
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(line);
  return out;
}

size_t TestDnsServer::queryCount(std::string_view name, std::string_view type) const {
  std::string want = std::string(name) + " " + std::string(type);
  size_t n = 0;
  for (const auto& q : queries()) n += q == want;
  return n;
}

}  // namespace moat::test
