// mta/daemon/offline.h — the CLI commands that run parts of the gateway without the daemon:
// `moat scan` (the inbound filter pipeline on one message file, its --rcpt addresses
// checked and rewritten first as the session does at RCPT: [bounce_verification]'s untagging
// and its verdict on a null sender, [relay] rewrite; and the [bcc] copies serve would add when
// the verdict lets the message be queued), `moat spf` (one SPF check with the configured
// resolver) and `moat dkim keygen`. Untrusted input: the message file.
#pragma once
#include <string>
#include <vector>

namespace moat::mta::daemon {

struct ScanOptions {
  std::string config;
  std::string clientIp = "192.0.2.1";  // RFC 5737, outside any relay network: the inbound path
  // "": the client address's literal ("[192.0.2.1]"), as a client without a name says (RFC 5321
  // §4.1.4): it passes [helo]'s checks, which a name like "localhost" would not.
  std::string helo;
  std::string mailFrom;
  std::vector<std::string> rcpts;
  std::string messageFile;
};
// Prints the verdict and every filter's result as JSON; returns the exit code.
int runScan(const ScanOptions& opts);

int runSpf(const std::string& config, const std::string& ip, const std::string& helo, const std::string& mailFrom);

// An existing KEYFILE is refused (its TXT record may be published) unless `replace`.
int runDkimKeygen(const std::string& domain, const std::string& selector, const std::string& type,
                  const std::string& out, bool replace);

}  // namespace moat::mta::daemon
