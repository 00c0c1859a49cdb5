// mta/daemon/cli.h — parsing and dispatch of `moat` subcommands.
#pragma once
#include <string>
#include <vector>

namespace moat::mta::daemon {

int runCli(const std::vector<std::string>& args);

// The queue listing for people: aligned columns like mailq, from the daemon's JSON.
std::string formatQueueTable(const std::string& json);
// `queue show` and the actions' answers for people (without --json).
std::string formatQueueShow(const std::string& json);
std::string formatQueueAction(const std::string& sub, const std::string& json);

}  // namespace moat::mta::daemon
