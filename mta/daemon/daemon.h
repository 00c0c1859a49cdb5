// mta/daemon/daemon.h — `moat serve`: recovers the spool, starts delivery, opens the
// listeners, the control socket and the metrics endpoint, and handles signals:
// SIGTERM/SIGINT stop accepting, finish in-flight transactions and deliveries, then exit
// (nothing that got a 250 is lost: it is on disk); SIGHUP reloads config and policy (a
// broken file is refused with FILE:LINE and the running config stays) and reopens the log.
#pragma once
#include <string>

namespace moat::mta::daemon {

// Runs until stopped; returns the process exit code.
int serve(const std::string& configPath);

}  // namespace moat::mta::daemon
