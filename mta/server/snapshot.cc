// mta/server/snapshot.cc — see snapshot.h.
#include "mta/server/snapshot.h"

#include <algorithm>
#include <ctime>

#include "filters/antivirus/antivirus_filter.h"
#include "mta/runtime/clock.h"
#include "policy/batv.h"

namespace moat::mta::server {
namespace {

// A certificate (a listener's, or a route's client certificate) that has expired or expires
// within kCertificateWarningDays: a warning (moat check, and serve's start), not an error.
// Serving it still gives opportunistic TLS to the MTAs that do not check; refusing to start
// would take in no mail at all. `what`: "[[listener]] ADDRESS" or "[[route]] tls_cert".
constexpr int64_t kCertificateWarningDays = 14;
void certificateExpiryWarning(const policy::Config& config, int line, const std::string& what, const std::string& file,
                              int64_t notAfter, policy::Errors& errors) {
  const int64_t now = wallClockMs() / 1000;
  if (notAfter == 0 || notAfter - now >= kCertificateWarningDays * 86400) return;
  char date[32] = "";
  std::tm tm{};
  const std::time_t t = static_cast<std::time_t>(notAfter);
  if (::gmtime_r(&t, &tm)) std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S UTC", &tm);
  const int64_t days = (notAfter - now) / 86400;
  std::string when = notAfter <= now ? "expired on " + std::string(date)
                     : days == 0     ? "expires on " + std::string(date) + " (within a day)"
                                     : "expires on " + std::string(date) + " (in " + std::to_string(days) +
                                       (days == 1 ? " day)" : " days)");
  errors.warning(config.path, line,
                 what + ": the certificate in " + file + " " + when + ": renew it and reload (SIGHUP)");
}

// A policy file the config names (by `key` at `line`) that cannot be opened is reported
// there, as [[dkim.sign]] key_file is, and not read further.
bool readable(const policy::Config& config, int line, const std::string& key, const std::string& path,
              policy::Errors& errors) {
  std::string reason = policy::unreadableReason(path);
  if (reason.empty()) return true;
  policy::reportUnreadable(errors, config.path, line, key, path, reason);
  return false;
}

// Everything a snapshot holds. With `whole` (moat check) it goes on after errors in the
// core sections and returns what it built whatever `errors` holds; else it returns null
// when the core sections have errors, before building anything. Null either way when the
// config is not TOML.
std::shared_ptr<Snapshot> build(std::shared_ptr<const policy::Config> config, policy::Errors& errors, bool whole) {
  if (!config) return nullptr;
  // Checks that read the core sections' values (relay.domains) are left out when those
  // had errors: their findings would follow from the errors already reported.
  const bool coreValid = !errors.hasErrors();
  if (!coreValid && !whole) return nullptr;
  policy::checkLogFile(*config, errors);  // serve opens it before anything else
  policy::checkSourceAddresses(*config, errors);  // delivery binds them
  if (!whole && errors.hasErrors()) return nullptr;
  auto snap = std::make_shared<Snapshot>();
  snap->config = config;
  // [relay] rewrite: the session rewrites recipients at RCPT, the pipeline's address_rewrite
  // filter the sender and the header fields; both use this one table.
  if (!config->relayRewrite.empty() &&
      readable(*config, config->relayRewriteLine, "relay.rewrite", config->relayRewrite, errors))
    snap->rewrite = policy::RewriteMap::load(
        config->relayRewrite, errors, [&](int line, std::string_view, std::string_view external, bool outboundOnly) {
          // Inbound rewriting happens at RCPT for relay domains only: mail to another
          // domain is never taken for it (relay denied), so the entry works one way.
          if (!coreValid || outboundOnly) return;
          std::string domain(external.substr(external.rfind('@') + 1));
          if (!config->isRelayDomain(domain))
            errors.warning(config->relayRewrite, line,
                           "\"" + std::string(external) + "\" is not in relay.domains: replies to it are not " +
                               "rewritten inbound (add \"" + domain + "\" to relay.domains, or mark the line " +
                               "outbound-only)");
        });
  if (config->batvEnabled && !config->batvKeyFile.empty()) {
    // Every key file is read (and each bad one reported) before any is used: a reload with
    // one of them broken keeps the running keys, all of them.
    auto keys = std::make_shared<policy::batv::Keys>();
    keys->number = config->batvKeyNumber;
    bool complete = true;
    if (auto current = policy::batv::loadKey(config->batvKeyFile, config->path, config->batvKeyFileLine, errors))
      keys->current = *current;
    else
      complete = false;
    for (const auto& f : config->batvPreviousKeyFiles) {
      if (auto previous =
              policy::batv::loadKey(f.path, config->path, f.line, errors, "bounce_verification.previous_key_files"))
        keys->previous.push_back(*previous);
      else
        complete = false;
    }
    if (complete) snap->batvKeys = std::move(keys);
  }
  snap->pipeline = filters::Pipeline::build(*config, errors, snap->rewrite);
  if (config->tlsrptEnabled || config->dmarcReportsEnabled) {
    policy::Errors again;  // the pipeline's signer has reported each key's errors already
    snap->reportSignKeys = filters::dkim::readSignKeys(*config, again);
  }
  for (const auto& l : config->listeners) {
    if (l.tlsCert.empty()) continue;
    std::string error;
    auto ctx = tls::TlsContext::server(l.tlsCert, l.tlsKey, error);
    if (!ctx) {
      errors.error(config->path, l.line, "[[listener]] " + l.address + ": " + error);
      continue;
    }
    snap->serverTls[l.address] = ctx;
    certificateExpiryWarning(*config, l.line, "[[listener]] " + l.address, l.tlsCert, ctx->notAfter(), errors);
  }
  std::map<std::string, std::shared_ptr<const policy::UserDb>> usersByFile;  // listeners may share one
  for (const auto& l : config->listeners) {
    if (l.authUsers.empty()) continue;
    auto it = usersByFile.find(l.authUsers);
    if (it == usersByFile.end()) {
      std::shared_ptr<const policy::UserDb> db;
      if (readable(*config, l.authUsersLine, "[[listener]].auth_users", l.authUsers, errors))
        db = policy::UserDb::load(l.authUsers, errors);
      it = usersByFile.emplace(l.authUsers, db).first;
    }
    if (it->second) snap->users[l.address] = it->second;
  }
  for (const auto& r : config->routes) {
    if (r.authFile.empty() || snap->routeCredentials.count(r.authFile)) continue;
    if (!readable(*config, r.authFileLine, "[[route]].auth_file", r.authFile, errors)) continue;
    auto creds = policy::ClientCredentials::load(r.authFile, errors);
    if (!creds) continue;
    snap->routeCredentials[r.authFile] = creds;
    // moat.toml is often world-readable; the password file must not be.
    if (std::string mode = policy::ClientCredentials::worldReadable(r.authFile); !mode.empty())
      errors.warning(config->path, r.authFileLine,
                     "[[route]].auth_file: \"" + r.authFile + "\" is readable by every user (mode " + mode +
                         "): it holds a password; chmod o-r it");
  }
  if (!config->blockedSenders.empty() &&
      readable(*config, config->blockedSendersLine, "senders.block", config->blockedSenders, errors))
    snap->blockedSenders = policy::AddressList::load(config->blockedSenders, "blocked senders", errors);
  if (!config->bccSenders.empty() &&
      readable(*config, config->bccSendersLine, "bcc.senders", config->bccSenders, errors))
    snap->bccSenders = policy::BccMap::load(config->bccSenders, "sender BCC", errors);
  if (!config->bccRecipients.empty() &&
      readable(*config, config->bccRecipientsLine, "bcc.recipients", config->bccRecipients, errors))
    snap->bccRecipients = policy::BccMap::load(config->bccRecipients, "recipient BCC", errors);
  if (!config->relayRecipients.empty() &&
      readable(*config, config->relayRecipientsLine, "relay.recipients", config->relayRecipients, errors))
    snap->recipients = policy::RecipientTable::load(config->relayRecipients, errors);
  if (!config->relayAliases.empty() &&
      readable(*config, config->relayAliasesLine, "relay.aliases", config->relayAliases, errors)) {
    // What `moat check` should point out in an aliases file that loads: entries mail from
    // the internet never reaches, and targets the recipient table refuses (dropped at RCPT).
    const std::string& file = config->relayAliases;
    snap->aliases = policy::AliasTable::load(
        file, errors, [&](const std::string& source, int line, const policy::AliasTable::Expansion& e) {
          if (!coreValid) return;
          if (!config->isRelayDomain(source.substr(source.rfind('@') + 1)))
            errors.warning(file, line,
                           "\"" + source + "\" is not in a relay domain: only mail from relay clients reaches it");
          for (const auto& target : e.targets)
            if (snap->recipients && config->isRelayDomain(target.substr(target.rfind('@') + 1)) &&
                !snap->recipients->accepts(target))
              errors.warning(file, line,
                             "\"" + source + "\": target \"" + target +
                                 "\" is not in relay.recipients: its copy is dropped at RCPT");
        });
  }
  // A relay domain the recipients file does not name is not checked: say so, it may be an
  // oversight. (A domain alias sends its addresses to another domain, which is checked.)
  if (snap->recipients && coreValid)
    for (const auto& d : config->relayDomains)
      if (!d.empty() && d[0] != '.' && !snap->recipients->covers(d) &&
          !(snap->aliases && snap->aliases->entries().count("@" + d)))
        errors.warning(config->path, config->relayRecipientsLine,
                       "relay.recipients: the file names no address of \"" + d +
                           "\": its recipients are not checked (add \"@" + d + "\" to take them all)");
  std::string error;
  snap->clientTls = tls::TlsContext::client(false, "", error);
  if (!snap->clientTls) errors.error(config->path, 0, "TLS client context: " + error);
  for (const auto& r : config->routes) {
    if (r.tls != policy::TlsPolicy::Verify || snap->verifyingClientTls.count(r.caFile)) continue;
    auto ctx = tls::TlsContext::client(true, r.caFile, error);
    if (!ctx) {
      errors.error(config->path, r.line, "[[route]] ca_file: " + error);
      continue;
    }
    snap->verifyingClientTls[r.caFile] = ctx;
  }
  for (const auto& r : config->routes) {
    if (r.tlsCert.empty() || r.tlsKey.empty()) continue;
    const std::string key = Snapshot::clientCertificateKey(r);
    if (snap->clientCertificates.count(key)) continue;
    auto cert = tls::ClientCertificate::load(r.tlsCert, r.tlsKey, error);
    if (!cert) {
      errors.error(config->path, r.tlsCertLine, "[[route]] tls_cert: " + error);
      continue;
    }
    snap->clientCertificates[key] = cert;
    certificateExpiryWarning(*config, r.tlsCertLine, "[[route]] tls_cert", r.tlsCert, cert->notAfter(), errors);
  }
  if (config->tlsrptEnabled) {
    snap->tlsrptTls = tls::TlsContext::client(true, config->mtaStsCaFile, error);
    if (!snap->tlsrptTls) errors.error(config->path, config->mtaStsCaFileLine, "[mta_sts] ca_file: " + error);
  }
  if (std::any_of(config->routes.begin(), config->routes.end(), [](const policy::Route& r) { return r.mtaSts; })) {
    snap->mtaStsTls = tls::TlsContext::client(true, config->mtaStsCaFile, error);
    snap->mtaStsCheckTls = snap->mtaStsTls ? tls::TlsContext::client(true, config->mtaStsCaFile, error) : nullptr;
    if (!snap->mtaStsCheckTls) {
      errors.error(config->path, config->mtaStsCaFileLine, "[mta_sts] ca_file: " + error);
    } else {
      // Same trust and host name check (TlsSession sets the name for a verifying context),
      // but the handshake does not fail on them: the session's peerVerified() tells.
      SSL_CTX_set_verify(snap->mtaStsCheckTls->get(), SSL_VERIFY_NONE, nullptr);
    }
  }
  // The same trust as MTA-STS (its context when there is one). A bad [mta_sts] ca_file is
  // reported where it is used; here it leaves none, and REQUIRETLS mail then fails closed.
  snap->requireTlsPkix = snap->mtaStsTls ? snap->mtaStsTls : tls::TlsContext::client(true, config->mtaStsCaFile, error);
  return snap;
}

}  // namespace

std::shared_ptr<const tls::ClientCertificate> Snapshot::clientCertificate(const policy::Route& route,
                                                                          bool& missing) const {
  missing = false;
  if (route.tlsCert.empty()) return nullptr;
  auto it = clientCertificates.find(clientCertificateKey(route));
  missing = it == clientCertificates.end();
  return missing ? nullptr : it->second;
}

std::shared_ptr<const Snapshot> Snapshot::load(const std::string& configPath, policy::Errors& errors) {
  return load(policy::readConfig(configPath, errors), errors);
}

std::shared_ptr<const Snapshot> Snapshot::load(std::shared_ptr<const policy::Config> config, policy::Errors& errors) {
  auto snap = build(std::move(config), errors, false);
  if (!snap || errors.hasErrors()) return nullptr;
  return snap;
}

std::shared_ptr<const Snapshot> Snapshot::check(const std::string& configPath, policy::Errors& errors) {
  auto snap = build(policy::readConfig(configPath, errors), errors, true);
  if (!snap) return nullptr;
  snap->checkReady(errors);
  if (errors.hasErrors()) return nullptr;
  return snap;
}

void Snapshot::checkReady(policy::Errors& errors) const {
  const filters::antivirus::AntivirusFilter* av = nullptr;
  if (pipeline) {
    waitReady();
    for (const auto& f : pipeline->filters())
      if (auto* a = dynamic_cast<const filters::antivirus::AntivirusFilter*>(f.get())) av = a;
  }
  filters::antivirus::checkReady(*config, av, errors);
}

void Snapshot::waitReady() const {
  for (const auto& f : pipeline->filters())
    if (auto* av = dynamic_cast<const filters::antivirus::AntivirusFilter*>(f.get())) av->scanner().waitIdle();
}

}  // namespace moat::mta::server
