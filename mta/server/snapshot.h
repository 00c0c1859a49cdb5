// mta/server/snapshot.h — one immutable policy snapshot (DESIGN.md, decision 2): the config,
// the filter pipeline built from it, the TLS contexts and AUTH users of its listeners. A session keeps
// the snapshot it started with; SIGHUP builds a new one and swaps it only if it validates.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "filters/dkim/dkim.h"
#include "filters/pipeline.h"
#include "mta/tls/tls.h"
#include "policy/address_list.h"
#include "policy/aliases.h"
#include "policy/batv.h"
#include "policy/bcc_map.h"
#include "policy/client_credentials.h"
#include "policy/config.h"
#include "policy/recipients.h"
#include "policy/rewrite_map.h"
#include "policy/users.h"

namespace moat::mta::server {

struct Snapshot {
  std::shared_ptr<const policy::Config> config;
  std::shared_ptr<const filters::Pipeline> pipeline;
  // By listener address as written in the config ("127.0.0.1:2525"); absent = no TLS.
  std::map<std::string, std::shared_ptr<tls::TlsContext>> serverTls;
  // Outbound TLS: tls = "may" and "require" both encrypt without verifying the peer's
  // certificate (Postfix's "may" and "encrypt" levels).
  std::shared_ptr<tls::TlsContext> clientTls;
  // tls = "verify" (Postfix's "secure"): one verifying context per route ca_file ("" = the
  // system store alone), built at load so a bad file is refused with its FILE:LINE.
  std::map<std::string, std::shared_ptr<tls::TlsContext>> verifyingClientTls;
  // [[route]] tls_cert and tls_key: the client certificates routes present (mutual TLS), by
  // clientCertificateKey(route); routes naming the same files share one. Read at load, so
  // SIGHUP picks up a renewed certificate and a broken one keeps the old snapshot. A route
  // whose entry is missing (an older snapshot's route) fails closed: it is deferred.
  std::map<std::string, std::shared_ptr<const tls::ClientCertificate>> clientCertificates;
  static std::string clientCertificateKey(const policy::Route& route) { return route.tlsCert + '\n' + route.tlsKey; }
  // `route`'s client certificate: null when it names none (`missing` false) or when it names
  // one this snapshot does not hold (`missing` true: the caller defers, never goes without).
  std::shared_ptr<const tls::ClientCertificate> clientCertificate(const policy::Route& route, bool& missing) const;
  // MTA-STS (RFC 8461), built when a route has mta_sts: a verifying context with the system
  // store and [mta_sts] ca_file (policy fetches, enforce), and one that checks the same way
  // but lets the handshake go on unverified (testing: deliver as "may", report the failure).
  std::shared_ptr<tls::TlsContext> mtaStsTls, mtaStsCheckTls;
  // REQUIRETLS (RFC 8689 §4.2.1) to a next hop whose name was found securely (a DNSSEC-signed
  // MX) and that DANE does not authenticate: PKIX with the system store and [mta_sts] ca_file,
  // the certificate naming the host. Null only when that ca_file cannot be read.
  std::shared_ptr<tls::TlsContext> requireTlsPkix;
  // TLS reporting (RFC 8460 §5.2), built when [tlsrpt] is enabled: the verifying context
  // https: rua uploads use (the system store and [mta_sts] ca_file).
  std::shared_ptr<tls::TlsContext> tlsrptTls;
  // SMTP AUTH credentials by listener address; absent = no AUTH on that listener. Read at
  // load, so SIGHUP picks up a changed users file and a broken one keeps the old snapshot.
  std::map<std::string, std::shared_ptr<const policy::UserDb>> users;
  // [[route]] auth_file: the credentials each file holds, by its absolute path. Read at
  // load, as the users: SIGHUP picks up a changed file and a broken one keeps the old snapshot.
  std::map<std::string, std::shared_ptr<const policy::ClientCredentials>> routeCredentials;
  // [relay] recipients: the addresses that exist (550 5.1.1 for others); null = no check.
  std::shared_ptr<const policy::RecipientTable> recipients;
  // [senders] block: envelope senders refused at MAIL; null = none.
  std::shared_ptr<const policy::AddressList> blockedSenders;
  // [relay] aliases: addresses whose mail goes to others instead; null = none.
  std::shared_ptr<const policy::AliasTable> aliases;
  // [relay] rewrite: internal addresses and their external forms; null = none.
  std::shared_ptr<const policy::RewriteMap> rewrite;
  // [bcc] senders and recipients: the blind copies by envelope sender and by recipient;
  // null = none.
  std::shared_ptr<const policy::BccMap> bccSenders, bccRecipients;
  // [bounce_verification] enabled: the secrets of key_file and previous_key_files and the
  // key_number, read at load (so SIGHUP picks up a rotation, and a missing or short file
  // keeps the old snapshot); null when off.
  std::shared_ptr<const policy::batv::Keys> batvKeys;
  // [tlsrpt] or [dmarc_reports] enabled: the [[dkim.sign]] keys, which sign the reports Moat
  // makes for the domain of their From address (empty otherwise).
  std::vector<filters::dkim::SignKey> reportSignKeys;

  // Builds and validates everything; nullptr with `errors` filled on failure.
  static std::shared_ptr<const Snapshot> load(const std::string& configPath, policy::Errors& errors);
  // The same on a config already read (`moat serve` opens the log it names first, before
  // the filters that log while they are built): the file is read once, so the log and
  // the snapshot come from the same version of it.
  static std::shared_ptr<const Snapshot> load(std::shared_ptr<const policy::Config> config, policy::Errors& errors);
  // `moat check`: what load() validates, without stopping at errors in the core sections
  // (the policy files and filter sections are read all the same, so one run reports every
  // independent mistake), and then what load() leaves to the background: it waits for the
  // antivirus engine's first load and reports its outcome at the [antivirus] key
  // concerned. As load(): the snapshot if all is valid (warnings aside), else nullptr.
  static std::shared_ptr<const Snapshot> check(const std::string& configPath, policy::Errors& errors);
  // Blocks until the filters that get ready in the background (the antivirus engine's
  // first database load, the first clamd PING) are: start-up, `moat scan` and `moat check` only.
  void waitReady() const;
  // waitReady(), then what the background found, at the [antivirus] key concerned: a
  // database libclamav could not load is an error (every message would get 451), no
  // databases or a clamd that does not answer are warnings. For `check` and at start-up.
  void checkReady(policy::Errors& errors) const;
};

}  // namespace moat::mta::server
