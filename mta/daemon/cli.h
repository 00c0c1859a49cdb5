// mta/daemon/cli.h — parsing and dispatch of `moat` subcommands.
#pragma once
#include <string>
#include <vector>

#include "mta/daemon/tiny_json.h"

namespace moat::mta::daemon {

int runCli(const std::vector<std::string>& args);

// The queue listing for people: aligned columns like mailq, from the daemon's JSON.
// The overloads on a parsed answer are what the CLI uses (the answer is parsed once); those
// on the text parse it first.
std::string formatQueueTable(const json::Value& answer);
std::string formatQueueTable(const std::string& json);
// `queue show` and the actions' answers for people (without --json).
std::string formatQueueShow(const json::Value& answer);
std::string formatQueueShow(const std::string& json);
std::string formatQueueAction(const std::string& sub, const json::Value& answer);
std::string formatQueueAction(const std::string& sub, const std::string& json);
// A bulk action's answer (`moat queue hold --from ...`) and `queue summary`, for people.
std::string formatQueueBulk(const json::Value& answer);
std::string formatQueueSummary(const json::Value& answer);

}  // namespace moat::mta::daemon
