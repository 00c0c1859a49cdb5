// mta/daemon/cli.cc — see cli.h. Every command takes its own options only (all but dkim
// and version take -c FILE); any other option, a missing one, a repeated one and missing
// or extra arguments are usage errors (exit 2) with the usage text on stderr.
#include "mta/daemon/cli.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "filters/rules/rules_filter.h"
#include "mta/daemon/control.h"
#include "mta/daemon/daemon.h"
#include "mta/daemon/offline.h"
#include "mta/daemon/queue_select.h"
#include "mta/daemon/tiny_json.h"
#include "mta/runtime/log.h"
#include "mta/server/snapshot.h"
#include "policy/config.h"
#include "policy/values.h"

namespace moat::mta::daemon {
namespace {

const char* kUsage =
    "usage: moat serve  -c FILE\n"
    "       moat check  -c FILE\n"
    "       moat queue  -c FILE list [--json] [--quarantine|--hold|--all]\n"
    "       moat queue  -c FILE show ID | flush [ID] | hold ID | release ID | delete ID | bounce ID\n"
    "       moat queue  -c FILE show ID --message|--headers\n"
    "                   (the message, or its header section, as it would be delivered: raw, CRLF as stored)\n"
    "       moat queue  -c FILE list|summary [--json] [--quarantine|--hold|--all] [SELECTORS]\n"
    "       moat queue  -c FILE flush|hold|release|delete|bounce [--json] [--dry-run] [--quarantine|--hold|--all]\n"
    "                   SELECTORS | --all-messages\n"
    "                   (SELECTORS, all of which must match: --from ADDR|@DOMAIN|'<>', --to ADDR|@DOMAIN (a\n"
    "                   recipient not yet delivered), --older DURATION, --younger DURATION, --reason TEXT\n"
    "                   (in the quarantine reason or a last reply); addresses match ignoring case. Without an\n"
    "                   ID an action needs a selector, or --all-messages; --dry-run lists what it would act on.\n"
    "                   summary counts by area, age and recipient domain, every area unless one is given)\n"
    "       moat scan   -c FILE [--client-ip IP] [--helo NAME] [--mail-from ADDR] [--rcpt ADDR]... MESSAGE.eml\n"
    "                   (the inbound path: --client-ip defaults to 192.0.2.1, an RFC 5737 documentation\n"
    "                   address outside any relay network, never contacted; --helo to its literal, [IP]);\n"
    "                   prints the verdict as JSON, with the [bcc] copies serve would add in `bcc`)\n"
    "       moat spf    -c FILE --ip IP --helo NAME --mail-from ADDR\n"
    "       moat dkim   keygen --domain D --selector S [--type rsa|ed25519] --out KEYFILE [--force]\n"
    "       moat version\n";

int usage(const std::string& why = "") {
  if (!why.empty()) std::fprintf(stderr, "moat: %s\n", why.c_str());
  std::fputs(kUsage, stderr);
  return 2;
}

struct Parsed {
  std::string config;
  std::vector<std::string> rest;
  std::map<std::string, std::vector<std::string>> opts;  // --name value
  std::vector<std::string> flags;                        // --name
};

// The options one command takes; anything else is a usage error.
struct Spec {
  bool config = false;             // -c FILE (--config FILE)
  std::set<std::string> valued;    // --name VALUE, at most once
  std::set<std::string> repeated;  // --name VALUE, any number of times
  std::set<std::string> flags;     // --name
};

bool parseArgs(const std::string& cmd, const std::vector<std::string>& args, size_t from, const Spec& spec, Parsed& p,
               std::string& error) {
  bool haveConfig = false;
  for (size_t i = from; i < args.size(); ++i) {
    const auto& a = args[i];
    if (a == "-c" || a == "--config") {
      if (!spec.config) {
        error = cmd + " takes no " + a;
        return false;
      }
      if (i + 1 >= args.size()) {
        error = a + " needs a file";
        return false;
      }
      if (haveConfig) {
        error = a + " given twice";
        return false;
      }
      haveConfig = true;
      p.config = args[++i];
    } else if (a.size() > 1 && a[0] == '-') {
      if (spec.valued.count(a) || spec.repeated.count(a)) {
        if (i + 1 >= args.size()) {
          error = a + " needs a value";
          return false;
        }
        if (spec.valued.count(a) && p.opts.count(a)) {
          error = a + " given twice";
          return false;
        }
        p.opts[a].push_back(args[++i]);
      } else if (spec.flags.count(a)) {
        p.flags.push_back(a);
      } else {
        error = cmd + ": unknown option " + a;
        return false;
      }
    } else {
      p.rest.push_back(a);
    }
  }
  return true;
}

bool hasFlag(const Parsed& p, const std::string& f) {
  for (const auto& x : p.flags)
    if (x == f) return true;
  return false;
}

int cmdCheck(const Parsed& p) {
  // Every independent mistake in one run: the core sections, the policy files, the filter
  // sections, and the antivirus databases (loaded here as serve would).
  policy::Errors errors;
  auto snap = server::Snapshot::check(p.config, errors);
  for (const auto& e : errors.all()) std::fprintf(stderr, "%s\n", e.str().c_str());
  if (!snap) return 1;
  const auto& config = snap->config;
  // Rule statistics: how many regex rules run on RE2, on the fallback, and what was skipped.
  policy::Errors ruleErrors;
  std::string rules = filters::rules::checkReport(*config, ruleErrors);
  if (!rules.empty()) std::printf("%s\n", rules.c_str());
  std::printf("%s: ok\n", config->path.c_str());
  return 0;
}

std::string one(const Parsed& p, const std::string& opt) {
  auto it = p.opts.find(opt);
  return it == p.opts.end() || it->second.empty() ? "" : it->second.back();
}

// The selectors an operator gave (--from, --to, --older, --younger, --reason) into `sel`;
// false with `error` for a bad value.
bool selectorsFrom(const Parsed& p, QueueSelector& sel, std::string& error) {
  if (auto v = one(p, "--from"); p.opts.count("--from") && !parseAddressSelector(v, true, sel.from, error))
    return false;
  if (auto v = one(p, "--to"); p.opts.count("--to") && !parseAddressSelector(v, false, sel.to, error)) return false;
  for (const char* opt : {"--older", "--younger"}) {
    if (!p.opts.count(opt)) continue;
    auto d = policy::parseDuration(one(p, opt));
    if (!d) {
      error = std::string(opt) + ": not a duration (30s, 5m, 4h, 2d): " + one(p, opt);
      return false;
    }
    (std::string_view(opt) == "--older" ? sel.olderMs : sel.youngerMs) = d->count();
  }
  if (p.opts.count("--reason")) {
    sel.reason = one(p, "--reason");
    if (sel.reason.empty()) {
      error = "--reason needs some text";
      return false;
    }
  }
  return true;
}

// `queue show ID --message|--headers`: the daemon's bytes to stdout as they come (a 35 MB
// message is never held whole), checked against the size it announced, so a message cut
// short (the daemon stopped, a full disk under `> file`) exits 1 rather than pass for whole.
int showMessage(const std::string& socket, const std::string& id, bool headersOnly) {
  std::string head, error;
  uint64_t written = 0;
  bool writeFailed = false;
  auto sink = [&](std::string_view bytes) {
    if (std::fwrite(bytes.data(), 1, bytes.size(), stdout) != bytes.size()) return !(writeFailed = true);
    written += bytes.size();
    return true;
  };
  std::string request = "message " + id + (headersOnly ? " headers=1" : "");
  bool reached = controlStream(socket, request, head, sink, error);
  std::optional<json::Value> parsed;
  if (reached) parsed = json::parse(head);
  if (reached && !(parsed && parsed->get("ok") && parsed->get("ok")->boolean)) {
    error = parsed && parsed->get("error") ? parsed->get("error")->str : head;
    reached = false;
  }
  if (!reached) {
    std::fflush(stdout);
    std::fprintf(stderr, "moat: %s\n", error.c_str());
    return 1;
  }
  if (writeFailed || std::fflush(stdout) != 0) {
    std::fprintf(stderr, "moat: cannot write the message: %s\n", std::strerror(errno));
    return 1;
  }
  auto* size = parsed->get("size");
  uint64_t expected = size ? static_cast<uint64_t>(size->number) : 0;
  if (written != expected) {
    std::fprintf(stderr, "moat: the message was cut short: %llu of %llu bytes\n",
                 static_cast<unsigned long long>(written), static_cast<unsigned long long>(expected));
    return 1;
  }
  return 0;
}

int cmdQueue(const Parsed& p) {
  if (p.rest.empty()) return usage("queue needs a subcommand");
  const std::string& sub = p.rest[0];
  static const std::map<std::string, int> kArgs = {{"list", 0},     {"show", 1},    {"flush", -1},  {"hold", -1},
                                                   {"release", -1}, {"delete", -1}, {"bounce", -1}, {"summary", 0}};
  auto it = kArgs.find(sub);
  if (it == kArgs.end()) return usage("unknown queue subcommand: " + sub);
  size_t nargs = p.rest.size() - 1;
  if ((it->second == 1 && nargs != 1) || (it->second == 0 && nargs != 0) || (it->second == -1 && nargs > 1))
    return usage("wrong number of arguments for queue " + sub);
  QueueSelector sel;
  std::string error;
  if (!selectorsFrom(p, sel, error)) return usage(error);
  const bool selectors = sel.narrows();
  const bool everything = hasFlag(p, "--all-messages");
  const bool action = sub != "list" && sub != "show" && sub != "summary";
  // An action on the messages selectors pick (no ID); `flush` alone keeps its old meaning.
  const bool bulk = action && nargs == 0 && (selectors || everything || sub != "flush");
  if (selectors && !(sub == "list" || sub == "summary" || bulk))
    return usage("queue " + sub + ": selectors take the place of an ID");
  if (action && nargs == 0 && sub != "flush" && !selectors && !everything)
    return usage("queue " + sub +
                 " needs an ID, or selectors (--from, --to, --older, --younger, --reason), or "
                 "--all-messages to act on every message");
  if (everything && (!bulk || selectors)) return usage("--all-messages goes with an action and no ID nor selector");
  if (hasFlag(p, "--dry-run") && !bulk) return usage("--dry-run goes with an action on selected messages");
  // show ID --message|--headers: the raw message, which has no JSON form.
  const bool message = hasFlag(p, "--message") || hasFlag(p, "--headers");
  if (message && sub != "show")
    return usage("queue " + sub + ": unknown option " + (hasFlag(p, "--message") ? "--message" : "--headers"));
  if (hasFlag(p, "--message") && hasFlag(p, "--headers")) return usage("queue show: --message and --headers go alone");
  if (message && hasFlag(p, "--json"))
    return usage("queue show: --json does not go with --message or --headers (the message is printed raw)");
  // --json for any; which area, for list, summary and bulk actions.
  int areas = 0;
  for (const auto& f : p.flags) {
    if (f != "--quarantine" && f != "--hold" && f != "--all") continue;
    if (sub != "list" && sub != "summary" && !bulk) return usage("queue " + sub + ": unknown option " + f);
    ++areas;
  }
  if (areas > 1) return usage("queue " + sub + ": --quarantine, --hold and --all go alone");
  if (hasFlag(p, "--quarantine"))
    sel.area = "quarantine";
  else if (hasFlag(p, "--hold"))
    sel.area = "hold";
  else if (hasFlag(p, "--all"))
    sel.area = "all";
  // Only the control socket is needed: an admin halfway through editing the config (a
  // mistake elsewhere in it) can still look at the queue. Not a config that is no TOML.
  policy::Errors errors;
  auto cfg = policy::readConfig(p.config, errors);
  for (const auto& e : errors.all()) std::fprintf(stderr, "%s\n", e.str().c_str());
  if (!cfg) return 1;
  if (errors.hasErrors())
    std::fprintf(stderr, "moat: warning: %s has errors; its control socket %s is used anyway\n", cfg->path.c_str(),
                 cfg->controlSocket.c_str());
  std::string request = sub;
  if (sub == "list") {
    // The old form ("list hold") when there is no selector, so an older daemon still understands.
    if (!sel.area.empty()) request += " " + sel.area;
    QueueSelector rest = sel;
    rest.area.clear();
    if (std::string t = rest.encode(); !t.empty()) request += " " + t;
  } else if (sub == "summary") {
    if (std::string t = sel.encode(); !t.empty()) request += " " + t;
  } else if (bulk) {
    request = "bulk " + sub;
    if (hasFlag(p, "--dry-run")) request += " dry_run=1";
    if (everything) request += " all_messages=1";
    if (std::string t = sel.encode(); !t.empty()) request += " " + t;
  } else if (nargs == 1) {
    request += " " + p.rest[1];
  }
  if (message) return showMessage(cfg->controlSocket, p.rest[1], hasFlag(p, "--headers"));
  std::string reply;
  // A bulk action on a long queue waits for every message's move or removal.
  if (!controlRequest(cfg->controlSocket, request, reply, error, bulk ? 3600 : 30)) {
    std::fprintf(stderr, "moat: %s\n", error.c_str());
    return 1;
  }
  auto parsed = json::parse(reply);
  bool ok = parsed && parsed->get("ok") && parsed->get("ok")->boolean;
  if (!ok) {
    std::string msg = parsed && parsed->get("error") ? parsed->get("error")->str : reply;
    std::fprintf(stderr, "moat: %s\n", msg.c_str());
    return 1;
  }
  // JSON for scripts (--json), aligned text for people, from the one parse above: the
  // answer to `list` on a long queue is megabytes, and parsing it twice cost seconds.
  std::string text;
  if (hasFlag(p, "--json")) {
    reply.push_back('\n');
    text = std::move(reply);
  } else if (sub == "list") {
    text = formatQueueTable(*parsed);
  } else if (sub == "show") {
    text = formatQueueShow(*parsed);
  } else if (sub == "summary") {
    text = formatQueueSummary(*parsed);
  } else if (bulk) {
    text = formatQueueBulk(*parsed);
  } else {
    text = formatQueueAction(sub, *parsed);
  }
  // A listing cut short (a full disk under `> file`) must not pass for a whole one.
  if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size() || std::fflush(stdout) != 0) {
    std::fprintf(stderr, "moat: cannot write the answer: %s\n", std::strerror(errno));
    return 1;
  }
  // A bulk action some of whose messages failed (busy, a full disk) did not all it was asked.
  auto* failed = parsed->get("failed");
  return bulk && failed && !failed->array.empty() ? 1 : 0;
}

std::string humanTime(int64_t ms) {
  std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

// A field of a control-socket answer: "" or 0 when it is not there.
const std::string& str(const json::Value& v, const char* key) {
  static const std::string kNone;
  auto* x = v.get(key);
  return x ? x->str : kNone;
}
int64_t num(const json::Value& v, const char* key) {
  auto* x = v.get(key);
  return x ? static_cast<int64_t>(x->number) : 0;
}

}  // namespace

std::string formatQueueTable(const json::Value& root) {
  const json::Value* msgs = root.get("messages");
  if (!msgs || msgs->array.empty()) return "Queue is empty\n";
  std::string out;
  out.reserve(msgs->array.size() * 160);  // one line and one recipient each, typically
  char line[512];
  const std::string indent(58, ' ');
  std::snprintf(line, sizeof line, "%-16s %-10s %8s  %-19s  %s\n", "Queue ID", "State", "Size", "Arrival (UTC)", "Sender/Recipient");
  out += line;
  size_t total = 0;
  for (const auto& m : msgs->array) {
    const std::string& from = str(m, "from");
    std::snprintf(line, sizeof line, "%-16s %-10s %8lld  %-19s  %s\n", str(m, "id").c_str(), str(m, "area").c_str(),
                  static_cast<long long>(num(m, "size")), humanTime(num(m, "arrival_ms")).c_str(),
                  from.empty() ? "<>" : from.c_str());
    out += line;
    if (const std::string& r = str(m, "last_reply"); !r.empty()) out.append(indent).append("(").append(r).append(")\n");
    if (const std::string& r = str(m, "reason"); !r.empty()) out.append(indent).append("[").append(r).append("]\n");
    if (auto* to = m.get("to"))
      for (const auto& r : to->array) out.append(indent).append(r.str).append("\n");
    total += static_cast<size_t>(num(m, "size"));
  }
  out += "-- " + std::to_string((total + 1023) / 1024) + " Kbytes in " + std::to_string(msgs->array.size()) +
         " message" + (msgs->array.size() == 1 ? "" : "s") + ".\n";
  return out;
}

std::string formatQueueTable(const std::string& reply) {
  auto root = json::parse(reply);
  return root ? formatQueueTable(*root) : std::string("Queue is empty\n");
}

// `moat queue show ID` for people: the envelope, then each recipient's state.
std::string formatQueueShow(const json::Value& root) {
  const auto& s = str;
  const auto n = num;
  std::ostringstream out;
  auto row = [&](const char* label, const std::string& value) {
    if (!value.empty()) out << label << std::string(12 - std::string_view(label).size(), ' ') << value << "\n";
  };
  const auto& m = root;
  row("Queue ID:", s(m, "id"));
  row("State:", s(m, "area") + (m.get("is_bounce") && m.get("is_bounce")->boolean ? " (a DSN of this gateway)" : ""));
  row("Arrival:", humanTime(n(m, "arrival_ms")) + " UTC");
  row("Size:", std::to_string(n(m, "size")) + " bytes");
  row("From:", "<" + s(m, "from") + ">");
  row("Message-ID:", s(m, "message_id"));
  row("Client:", s(m, "helo") + " [" + s(m, "client_ip") + "] " + s(m, "protocol"));
  std::string attempts = std::to_string(n(m, "attempts"));
  if (s(m, "area") == "active") attempts += ", next at " + humanTime(n(m, "next_attempt_ms")) + " UTC";
  row("Attempts:", attempts);
  row("Reason:", s(m, "reason"));
  row("ENVID:", s(m, "envid"));
  row("RET:", s(m, "ret"));
  if (m.get("requiretls") && m.get("requiretls")->boolean)
    row("REQUIRETLS:", "yes: only over authenticated TLS to a next hop that offers it (RFC 8689)");
  if (auto* owed = m.get("expanded_report_owed")) {
    std::string who;
    for (const auto& a : owed->array) who += (who.empty() ? "" : ", ") + a.str;
    row("Owed:", "an \"expanded\" report (NOTIFY=SUCCESS) for " + who);
  }
  out << "Recipients:\n";
  if (auto* rcpts = m.get("recipients"))
    for (const auto& r : rcpts->array) {
      out << "  <" << s(r, "address") << ">  " << s(r, "status") << ", " << n(r, "attempts") << " attempt"
          << (n(r, "attempts") == 1 ? "" : "s");
      if (!s(r, "relay").empty()) out << ", " << s(r, "relay");
      out << "\n";
      if (!s(r, "last_reply").empty()) out << "      " << s(r, "last_reply") << "\n";
    }
  if (auto* h = m.get("headers"); h && !h->array.empty()) {
    out << "Headers added:\n";
    for (const auto& x : h->array) {
      std::string text = x.str;
      for (size_t i = 0; (i = text.find("\r\n", i)) != std::string::npos;) {  // a fold: CRLF, then WSP
        size_t n = i + 2 < text.size() && (text[i + 2] == '\t' || text[i + 2] == ' ') ? 3 : 2;
        text.replace(i, n, "\n    ");
      }
      out << "  " << text << "\n";
    }
  }
  return out.str();
}

// The answer to a queue action, for people.
std::string formatQueueShow(const std::string& reply) {
  auto root = json::parse(reply);
  return root ? formatQueueShow(*root) : reply + "\n";
}

// The answer to a queue action, for people.
std::string formatQueueAction(const std::string& sub, const json::Value& root) {
  const std::string& id = str(root, "id");
  auto plural = [](int64_t k, const char* what) { return std::to_string(k) + " " + what + (k == 1 ? "" : "s"); };
  if (sub == "flush") return "Flushed: " + plural(num(root, "flushed"), "message") + " to be tried now\n";
  if (sub == "hold") return id + ": held\n";
  if (sub == "release") return id + ": released, to be tried now\n";
  if (sub == "delete") return id + ": deleted\n";
  if (sub == "bounce")
    return id + ": returned to its sender, " + plural(num(root, "bounced"), "recipient") + " bounced\n";
  return "";  // no other verb reaches here (cmdQueue's kArgs)
}

std::string formatQueueAction(const std::string& sub, const std::string& reply) {
  auto root = json::parse(reply);
  std::string text = root ? formatQueueAction(sub, *root) : "";
  return text.empty() ? reply + "\n" : text;
}

std::string formatQueueBulk(const json::Value& root) {
  const std::string& action = str(root, "action");
  static const std::map<std::string, std::pair<const char*, const char*>> kWords = {
      {"hold", {"hold", "Held"}},
      {"release", {"release", "Released (to be tried now)"}},
      {"delete", {"delete", "Deleted"}},
      {"bounce", {"bounce", "Returned to their senders"}},
      {"flush", {"flush", "Flushed (to be tried now)"}}};
  auto w = kWords.count(action) ? kWords.at(action) : std::pair<const char*, const char*>{"act on", "Done"};
  auto plural = [](size_t k) { return std::to_string(k) + " message" + (k == 1 ? "" : "s"); };
  const json::Value* ids = root.get("ids");
  const json::Value* failed = root.get("failed");
  std::string out;
  bool dry = root.get("dry_run") && root.get("dry_run")->boolean;
  if (dry) {
    out = std::string("Would ") + w.first + " " + plural(ids ? ids->array.size() : 0) +
          (ids && !ids->array.empty() ? ":" : "") + "\n";
  } else {
    out = std::string(w.second) + ": " + plural(static_cast<size_t>(num(root, "acted")));
    if (action == "bounce")
      out += ", " + std::to_string(num(root, "bounced")) + " recipient" + (num(root, "bounced") == 1 ? "" : "s") +
             " bounced";
    if (failed && !failed->array.empty()) out += "; " + std::to_string(failed->array.size()) + " failed";
    out += ids && !ids->array.empty() ? ":\n" : "\n";
  }
  if (ids)
    for (const auto& id : ids->array) out += "  " + id.str + "\n";
  if (failed && !failed->array.empty()) {
    out += "Failed:\n";
    for (const auto& f : failed->array) out += "  " + str(f, "id") + ": " + str(f, "error") + "\n";
  }
  return out;
}

std::string formatQueueSummary(const json::Value& root) {
  std::string out;
  char line[512];
  if (auto* areas = root.get("areas")) {
    std::snprintf(line, sizeof line, "%-12s %8s\n", "Area", "Messages");
    out += line;
    for (const auto& [k, v] : areas->object) {
      std::snprintf(line, sizeof line, "%-12s %8lld\n", k.c_str(), static_cast<long long>(v.number));
      out += line;
    }
    out += "\n";
  }
  const json::Value* domains = root.get("domains");
  int width = 20;
  if (domains)
    for (const auto& d : domains->array)
      width = std::max(width, std::min(64, static_cast<int>(str(d, "domain").size())));
  auto row = [&](const std::string& name, int64_t total, const json::Value* ages) {
    int n = std::snprintf(line, sizeof line, "%-*s %8lld", width, name.c_str(), static_cast<long long>(total));
    std::string r(line, static_cast<size_t>(std::max(n, 0)));
    if (ages)
      for (const auto& a : ages->array) {
        std::snprintf(line, sizeof line, " %7lld", static_cast<long long>(a.number));
        r += line;
      }
    out += r + "\n";
  };
  std::snprintf(line, sizeof line, "%-*s %8s", width, "Domain", "Total");
  out += line;
  if (auto* b = root.get("buckets"))
    for (const auto& x : b->array) {
      std::snprintf(line, sizeof line, " %7s", x.str.c_str());
      out += line;
    }
  out += "\n";
  row("TOTAL", num(root, "messages"), root.get("ages"));
  if (domains)
    for (const auto& d : domains->array)
      row(str(d, "domain").empty() ? "(none)" : str(d, "domain"), num(d, "messages"), d.get("ages"));
  return out;
}

int runCli(const std::vector<std::string>& args) {
  if (args.empty()) return usage();
  const std::string& cmd = args[0];
  if (cmd == "version" || cmd == "--version") {
    if (args.size() > 1) return usage(cmd + " takes no arguments");
    std::printf("moat %s\n", MOAT_VERSION);
    return 0;
  }
  if (cmd == "help" || cmd == "--help" || cmd == "-h") {
    if (args.size() > 1) return usage(cmd + " takes no arguments");
    std::fputs(kUsage, stdout);
    return 0;
  }
  // Each command's own options (CONTRACT.md, Command line); nothing else is taken.
  static const std::map<std::string, Spec> kSpecs = {
      {"serve", {true, {}, {}, {}}},
      {"check", {true, {}, {}, {}}},
      {"queue",
       {true,
        {"--from", "--to", "--older", "--younger", "--reason"},
        {},
        {"--json", "--quarantine", "--hold", "--all", "--dry-run", "--all-messages", "--message", "--headers"}}},
      {"scan", {true, {"--client-ip", "--helo", "--mail-from"}, {"--rcpt"}, {}}},
      {"spf", {true, {"--ip", "--helo", "--mail-from"}, {}, {}}},
      {"dkim", {false, {"--domain", "--selector", "--type", "--out"}, {}, {"--force"}}},
  };
  auto spec = kSpecs.find(cmd);
  if (spec == kSpecs.end()) return usage("unknown command: " + cmd);
  // `moat queue --help`, `moat serve -h`...: what an operator types first; the usage on
  // stdout and 0, as `moat --help`, not an "unknown option" error (a value such as
  // `--helo -h` is not asking for help).
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "-c" || args[i] == "--config" || spec->second.valued.count(args[i]) ||
        spec->second.repeated.count(args[i])) {
      ++i;
    } else if (args[i] == "--help" || args[i] == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
  }
  Parsed p;
  std::string error;
  if (!parseArgs(cmd, args, 1, spec->second, p, error)) return usage(error);
  if (spec->second.config && p.config.empty()) return usage(cmd + " needs -c FILE");
  // Only the daemon logs to its configured destination, as JSON lines. The other commands
  // keep stdout for their output, and stderr for what the user must see: `check` reports
  // everything as FILE:LINE (the antivirus states it would log included), the others show
  // the warnings and errors their work logs (DNS, antivirus) as plain text.
  if (cmd == "check")
    log::disable();
  else if (cmd != "serve")
    log::toStderrText(log::Level::Warn);
  if (cmd == "dkim") {
    if (p.rest.size() != 1 || p.rest[0] != "keygen") return usage("dkim: only `dkim keygen` exists");
    std::string type = one(p, "--type").empty() ? "rsa" : one(p, "--type");
    if (one(p, "--domain").empty() || one(p, "--selector").empty() || one(p, "--out").empty())
      return usage("dkim keygen needs --domain, --selector and --out");
    if (type != "rsa" && type != "ed25519") return usage("--type is rsa or ed25519");
    return runDkimKeygen(one(p, "--domain"), one(p, "--selector"), type, one(p, "--out"), hasFlag(p, "--force"));
  }
  if (cmd == "serve") {
    if (!p.rest.empty()) return usage("serve takes only -c FILE");
    return serve(p.config);
  }
  if (cmd == "check") {
    if (!p.rest.empty()) return usage("check takes only -c FILE");
    return cmdCheck(p);
  }
  if (cmd == "queue") return cmdQueue(p);
  if (cmd == "scan") {
    if (p.rest.size() != 1) return usage("scan takes one MESSAGE file");
    ScanOptions o;
    o.config = p.config;
    o.messageFile = p.rest[0];
    if (!one(p, "--client-ip").empty()) o.clientIp = one(p, "--client-ip");
    if (!one(p, "--helo").empty()) o.helo = one(p, "--helo");
    o.mailFrom = one(p, "--mail-from");
    if (p.opts.count("--rcpt")) o.rcpts = p.opts.at("--rcpt");
    return runScan(o);
  }
  // spf: --mail-from may be "" (the null sender: SPF checks the HELO name then).
  if (!p.rest.empty() || one(p, "--ip").empty() || !p.opts.count("--helo") || !p.opts.count("--mail-from"))
    return usage("spf needs --ip, --helo and --mail-from");
  return runSpf(p.config, one(p, "--ip"), one(p, "--helo"), one(p, "--mail-from"));
}

}  // namespace moat::mta::daemon
