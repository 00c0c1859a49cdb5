// policy/config.h — moat.toml parsed and validated into one immutable snapshot
// (DESIGN.md, decision 2). CONTRACT.md fixes the key names; every key has one name, one
// default and one line of documentation in deploy/moat.toml.
//
// Sections that belong to one part of Moat (a filter's [spf], [antivirus], [rules]...) are
// read by that part through section(): the config keeps the parsed TOML for that.
#pragma once
#include <toml++/toml.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mta/runtime/ip.h"
#include "policy/address_list.h"
#include "policy/errors.h"
#include "policy/section.h"

namespace moat::policy {

using Millis = std::chrono::milliseconds;

enum class ListenerMode { Smtp, Submission, Smtps };
enum class TlsPolicy { None, May, Require, Verify, Dane };
// [queue] address_preference: the family tried first among addresses of equal MX preference.
enum class AddressPreference { Ipv6, Ipv4, Any };

struct Listener {
  std::string address;  // as written, "127.0.0.1:2525"
  std::string host;
  uint16_t port = 0;
  ListenerMode mode = ListenerMode::Smtp;
  std::string tlsCert, tlsKey;  // absolute paths, or empty
  std::string authUsers;        // SMTP AUTH credentials (policy/users.h); absolute, or empty
  int line = 0;
  int authUsersLine = 0;  // of auth_users (or of the [[listener]] table)
  // Every connection begins with a PROXY protocol header (mta/net/proxy_header.h) naming
  // the client a load balancer passes on; only peers in proxyNetworks may send one (and so
  // connect at all), each within proxyTimeout.
  bool proxyProtocol = false;
  std::vector<mta::Network> proxyNetworks;
  Millis proxyTimeout{5000};
  bool isProxy(const mta::IpAddress& ip) const;
};

struct RouteTarget {
  // Lmtp: RFC 2033 final delivery, to host:port (no default port) or to a Unix socket.
  enum class Kind { Smtp, Mx, Maildir, Lmtp } kind = Kind::Smtp;
  std::string host;  // Smtp, Lmtp over TCP
  uint16_t port = 25;
  std::string dir;   // Maildir: absolute path
  std::string socket;  // Lmtp over a Unix socket: absolute path ("" = over TCP)
  // smtp: and lmtp: targets name a next hop the client connects to; a route whose first
  // target is one of them delivers to those only, in order.
  bool isHost() const { return kind == Kind::Smtp || kind == Kind::Lmtp; }
  std::string str() const;
};

struct Route {
  std::vector<std::string> domains;  // lower-case; empty = every domain; ".example.test" = its subdomains
  // [[route]] senders: the envelope senders the route is for (user@domain, @domain,
  // @.domain, as policy/address_list.h matches them); null = every sender, the null one too.
  std::shared_ptr<const AddressList> senders;
  std::vector<RouteTarget> to;
  TlsPolicy tls = TlsPolicy::May;
  std::string caFile;  // tls = "verify": trust anchors (PEM) beside the system store; absolute
  // SMTP AUTH credentials for the next hop (policy/client_credentials.h); absolute, or empty.
  // Only with a tls that never sends them in plain text.
  std::string authFile;
  int authFileLine = 0;
  // The client certificate chain and key (PEM; absolute, or both empty) its TLS connections
  // present when the next hop asks for one (mutual TLS). Line: of tls_cert.
  std::string tlsCert, tlsKey;
  int tlsCertLine = 0;
  // RFC 8461: honour the destination's MTA-STS policy (mx routes with tls "may" or "dane").
  bool mtaSts = false;
  // RFC 3030 BDAT to a next hop that offers CHUNKING (and PIPELINING); false: always DATA.
  bool chunking = true;
  // The local addresses its outbound SMTP connections (deliveries, recipient verification)
  // leave from, per destination family: the route's source_ipv4 / source_ipv6, else
  // [queue]'s; none: the kernel picks. The lines are the route's own keys' (0: not set here).
  std::optional<mta::IpAddress> sourceIpv4, sourceIpv6;
  int sourceIpv4Line = 0, sourceIpv6Line = 0;
  std::string heloName;  // [[route]] helo_name: the EHLO name; "" = server.hostname
  int line = 0;
  int sendersLine = 0;  // of senders, for `moat check`'s warnings (0: none)
  bool matches(const std::string& domain) const;
  // Whether the route is for mail from `sender`, the envelope sender as it leaves (after
  // relay.rewrite; a BATV tag, prvs=...=, is matched without it): always when it has no
  // senders; never for the null sender ("") when it has.
  bool matchesSender(std::string_view sender) const;
  // The part of a connection-pool key that says how the next hop sees the client: the
  // source address and EHLO name (",src4=...,src6=...,helo=..."; "" when none is set). A
  // connection, or a probe's answer, made one way never serves a route that wants another:
  // the next hop's view of the sender, SPF and reputation, are tied to them.
  std::string sourceKey() const;
};

struct Config {
  std::string path;  // absolute path of the file
  std::string dir;   // its folder

  // [server]
  std::string hostname;
  std::string spoolDir;
  std::string controlSocket;
  std::string logFile = "-";
  int logFileLine = 0;
  std::string logLevel = "info";
  std::string metricsListen;  // empty = off; an IP address and a port, like a listener's
  int metricsListenLine = 0;
  uint64_t minFreeDisk = 100ull << 20;  // refuse mail (452 4.3.1) below this much free space
  std::string spoolSync = "fsync";      // fsync (per file, batched directory syncs) | syncfs
  // Look up each client's forward-confirmed reverse-DNS name (mta/dns/client_name.h) for
  // Received, the logs and the filters; false: no lookup, every client is "unknown".
  bool reverseDns = true;

  std::vector<Listener> listeners;

  // [dns]
  std::vector<std::string> nameservers;  // "127.0.0.1:5353"; empty = /etc/resolv.conf
  Millis dnsTimeout{5000};

  // [relay]
  std::vector<std::string> relayDomains;  // lower-case
  std::vector<mta::Network> relayNetworks;
  std::string relayRecipients;  // recipient validation file (policy/recipients.h); absolute, or empty
  int relayRecipientsLine = 0;
  // [headers] strip_inbound: header fields removed from mail from the internet (a client
  // neither in relay.networks nor authenticated) as it streams in, before any filter reads
  // them: lower-case names, an entry ending in '*' a prefix. By default Moat's own verdict
  // fields, which the internal servers' rules trust (mta/smtp/header_scrubber.h).
  std::vector<std::string> stripInbound{"x-moat-*", "x-spam-*"};
  std::string blockedSenders;  // [senders] block: refused at MAIL (policy/address_list.h); absolute, or empty
  int blockedSendersLine = 0;
  // [senders] reject_unknown_domain: a sender domain without MX, A or AAAA records is refused at
  // MAIL (filters/sender_domain).
  bool rejectUnknownSenderDomain = false;
  // [senders] require_fqdn: a sender domain of one label is refused at MAIL (filters/sender_domain).
  bool requireFqdnSender = false;
  std::string relayAliases;  // aliases and lists file (policy/aliases.h); absolute, or empty
  int relayAliasesLine = 0;
  // Recipient verification (mta/server/recipient_verifier.h, Postfix's
  // reject_unverified_recipient): a RCPT for a relay domain routed to smtp: next hops is
  // asked of the first of them that answers, and refused at RCPT when it refuses it.
  bool verifyRecipients = false;
  int verifyRecipientsLine = 0;
  Millis verifyPositiveTtl{std::chrono::hours(24 * 7)};  // an address the next hop took
  Millis verifyNegativeTtl{std::chrono::hours(3)};       // an address it refused (5xx)
  Millis verifyTimeout{std::chrono::seconds(10)};        // one probe, connect to RSET
  bool verifyUnknownAccept = false;                      // verify_unknown: "accept", else "defer" (450 4.1.1)
  std::string relayRewrite;  // address rewriting file (policy/rewrite_map.h); absolute, or empty
  int relayRewriteLine = 0;

  // [bcc] (Postfix's always_bcc, sender_bcc_maps, recipient_bcc_maps): recipients added,
  // NOTIFY=NEVER, to each message taken over SMTP as it is queued (mta/server/smtp_session.cc).
  std::string bccAlways;   // an address, or empty
  std::string bccSenders;  // BCC by envelope sender file (policy/bcc_map.h); absolute, or empty
  int bccSendersLine = 0;
  std::string bccRecipients;  // BCC by envelope recipient file (policy/bcc_map.h); absolute, or empty
  int bccRecipientsLine = 0;

  // [connection] (policy at connect: DESIGN.md, "The flow of one message")
  std::vector<mta::Network> connectionAllow, connectionBlock;
  // [connection] reject_unknown_client: a client from the internet needs a PTR name
  // (Reverse) or one that resolves back to it (Confirmed), else 450 4.7.25 at MAIL
  // (filters/reverse_dns).
  enum class ClientNameCheck { Off, Reverse, Confirmed } rejectUnknownClient = ClientNameCheck::Off;
  unsigned maxConnectionRatePerIp = 0;  // new connections a minute from one address; 0 = no limit
  // The pregreet test (Postfix postscreen's): the greeting's first line at once, its last
  // after pregreet_wait; a client that talks before then is a pregreeter. 0 = off.
  Millis pregreetWait{0};
  bool pregreetReject = true;  // pregreet_action: "reject" (554, then 503 to all but QUIT) or "log"

  // [rate_limits] (mta/server/rate_counter.h; Postfix's anvil, Exchange's per-sender rate
  // limit): counts per process, kept across reloads. Over a limit: 450 4.7.1, never a 5xx.
  Millis rateWindow{std::chrono::hours(1)};  // the sliding window the limits count over
  std::string rateWindowText = "1h";         // the same for replies and logs ("1h", "10m")
  // Clients outside relay.networks that have not authenticated, by client key (an IPv4
  // address, an IPv6 /64): messages accepted (250 to the end of the data; checked at MAIL)
  // and recipients taken (250 to RCPT; checked at RCPT). 0 = no limit.
  unsigned messagesPerClient = 0;
  unsigned recipientsPerClient = 0;
  // relay.networks and authenticated clients: messages accepted per user name, else per
  // envelope sender (lower-case; the null sender is not limited). 0 = no limit.
  unsigned messagesPerSender = 0;
  std::vector<mta::Network> rateExempt;  // clients never limited
  bool rateLimitsOn() const { return messagesPerClient || recipientsPerClient || messagesPerSender; }
  bool isRateExempt(const mta::IpAddress& ip) const;

  // [greylist] (mta/server/greylist.h; RFC 6647, postgrey): inbound clients' first attempt
  // of a (client network, sender, recipient) triplet gets 450 4.7.1 at RCPT; a retry after
  // greylistDelay, within greylistRetryWindow of the first, passes. Off by default.
  bool greylistEnabled = false;
  Millis greylistDelay{std::chrono::minutes(5)};
  Millis greylistRetryWindow{std::chrono::hours(48)};
  Millis greylistLifetime{std::chrono::hours(24 * 35)};  // a passed triplet, an allowed client
  unsigned greylistAutoAllowAfter = 5;                   // triplets passed by a client network; 0 = no auto-allow
  int greylistIpv4Prefix = 24;
  int greylistIpv6Prefix = 64;
  std::vector<mta::Network> greylistExempt;  // clients never greylisted
  // Clients whose verified name (FCrDNS) is one of these (".example.com": any subdomain)
  // are never greylisted; lower-case, checked as domain names.
  std::vector<std::string> greylistExemptNames;
  bool isGreylistExempt(const mta::IpAddress& ip) const;

  // [bounce_verification] (policy/batv.h; draft-levine-smtp-batv-01 "prvs", Cisco's bounce
  // verification): outbound mail's envelope sender in batvDomains leaves tagged; a null-sender
  // message from the internet to an untagged (or badly tagged) address in them, not exempt,
  // is refused at RCPT (batvReject) or marked with "X-Moat-BATV: fail".
  bool batvEnabled = false;
  std::string batvKeyFile;               // absolute; required when enabled
  int batvKeyFileLine = 0;               // of key_file (or of the section)
  struct BatvKeyFile {
    std::string path;  // absolute
    int line = 0;      // of the array element
  };
  std::vector<BatvKeyFile> batvPreviousKeyFiles;  // the keys of before a rotation: their tags still verify
  int batvKeyNumber = 0;                          // key_number: the K written into tags (0-9)
  std::vector<std::string> batvDomains;  // lower-case, as relay.domains ("." = subdomains); default: relay.domains
  int batvMaxAgeDays = 7;                // a tag is valid this many days after it is made
  // Addresses that take any null-sender mail: lower-case "user@domain", or "@domain".
  std::vector<std::string> batvExempt;
  bool batvReject = true;  // action: "reject" (550 5.7.1 at RCPT) or "tag" (the header only)
  bool isBatvDomain(const std::string& domain) const;
  bool isBatvExempt(const std::string& address) const;

  // [limits]
  uint64_t maxMessageSize = 35ull << 20;
  unsigned maxRecipients = 200;
  unsigned maxConnections = 1000;
  unsigned maxConnectionsPerIp = 50;
  unsigned maxErrors = 10;  // protocol errors before the session is dropped
  // NOOP, RSET, VRFY and HELP a session may send before each further one counts as an error
  // (Postfix's smtpd_junk_command_limit): a complete command every command_timeout would
  // otherwise hold a connection slot for good. Both counts start again after an accepted message.
  unsigned maxJunkCommands = 100;
  Millis commandTimeout{std::chrono::minutes(5)};  // per command line (RFC 5321 §4.5.3.2)
  Millis dataTimeout{std::chrono::minutes(10)};    // between data blocks (reads)
  // The whole message, from the 354 (or the first BDAT) to its end: data_timeout alone lets
  // a client that sends a byte per data_timeout hold its connection slot for good. An hour
  // takes a 35 MB message at 10 KB/s.
  Millis maxDataTime{std::chrono::hours(1)};
  unsigned maxReceivedHeaders = 100;  // more: 554 5.4.6 (mail loop)

  // [[route]]
  std::vector<Route> routes;

  // [queue]
  std::vector<Millis> retry;  // waits between attempts; the last repeats
  Millis maxLifetime{std::chrono::hours(48)};
  Millis delayWarning{std::chrono::hours(4)};
  unsigned maxPerDestination = 20;  // concurrent connections to one next hop
  unsigned maxDeliveries = 100;     // concurrent deliveries in total
  unsigned maxRecipientsPerTransaction = 100;  // SMTP next hops: more go in further transactions
  uint64_t maxQueued = 0;                      // [queue] max_messages: at it, MAIL gets 452 4.3.1 (0: no limit)
  Millis connectTimeout{std::chrono::seconds(30)};
  // [mta_sts] (RFC 8461): extra trust anchors for policy hosts and MX hosts (absolute, or
  // empty: the system store only), and the bound on one policy fetch.
  std::string mtaStsCaFile;
  int mtaStsCaFileLine = 0;  // of [mta_sts] ca_file, for its errors
  Millis mtaStsFetchTimeout{std::chrono::seconds(10)};
  // How often cached policies near their expiry are refreshed and expired ones dropped
  // (RFC 8461 §5.1, §10.2), whether or not mail goes to their domains.
  Millis mtaStsRefreshInterval{std::chrono::hours(1)};
  Millis replyTimeout{std::chrono::minutes(5)};
  // [queue] data_timeout: for each block of a message to go out to a next hop (RFC 5321
  // §4.5.3.2.5, Postfix's smtp_data_xfer_timeout): one that stops reading is given up on then.
  Millis deliveryDataTimeout{std::chrono::minutes(3)};
  // [tlsrpt] (RFC 8460): aggregate TLS reports for the domains Moat delivers to by MX.
  bool tlsrptEnabled = false;
  std::string tlsrptOrganization;                 // "" = server.hostname
  std::string tlsrptContact;                      // "" = tlsrptFrom
  std::string tlsrptFrom;                         // "" = "postmaster@" + server.hostname
  Millis tlsrptInterval{std::chrono::hours(24)};  // aligned UTC periods of this length
  // How often the aggregate is checkpointed to SPOOL_DIR/tlsrpt.state when it changed: what
  // a crash can lose at most.
  Millis tlsrptCheckpointInterval{std::chrono::minutes(5)};
  Millis tlsrptHttpsTimeout{std::chrono::seconds(60)};  // one whole https: rua upload
  // The values in effect, defaults filled in.
  std::string tlsrptFromAddress() const { return tlsrptFrom.empty() ? "postmaster@" + hostname : tlsrptFrom; }
  std::string tlsrptOrganizationName() const { return tlsrptOrganization.empty() ? hostname : tlsrptOrganization; }
  std::string tlsrptContactInfo() const { return tlsrptContact.empty() ? tlsrptFromAddress() : tlsrptContact; }
  // [dmarc_reports] (RFC 7489 §7.2): aggregate DMARC reports on the inbound mail Moat checked.
  bool dmarcReportsEnabled = false;
  std::string dmarcReportsOrganization;                 // "" = server.hostname
  std::string dmarcReportsContact;                      // "" = none (extra_contact_info)
  std::string dmarcReportsFrom;                         // "" = "postmaster@" + server.hostname
  Millis dmarcReportsInterval{std::chrono::hours(24)};  // aligned UTC periods of this length
  // How often the aggregate is checkpointed to SPOOL_DIR/dmarc_report.state when it changed:
  // what a crash can lose at most.
  Millis dmarcReportsCheckpointInterval{std::chrono::minutes(5)};
  std::string dmarcReportsFromAddress() const {
    return dmarcReportsFrom.empty() ? "postmaster@" + hostname : dmarcReportsFrom;
  }
  std::string dmarcReportsOrganizationName() const {
    return dmarcReportsOrganization.empty() ? hostname : dmarcReportsOrganization;
  }
  AddressPreference addressPreference = AddressPreference::Ipv6;
  bool useIpv4 = true;  // [queue] ip_versions: the families delivery looks up and connects to
  bool useIpv6 = true;
  // [queue] source_ipv4, source_ipv6 (Postfix's smtp_bind_address, smtp_bind_address6): the
  // local address outbound SMTP connects from, for routes without their own; none: the
  // kernel picks. Each must be an address of this host (checkSourceAddresses).
  std::optional<mta::IpAddress> sourceIpv4, sourceIpv6;
  int sourceIpv4Line = 0, sourceIpv6Line = 0;

  // [quarantine]
  Millis quarantineRetention{std::chrono::hours(24 * 30)};  // then removed, with a log line

  // The parsed file, for the sections other parts read.
  std::shared_ptr<const toml::table> toml;

  // A reader for [name] (or [a.b] with name "a.b"); absent sections read as defaults.
  Section section(const std::string& name, Errors& errors) const;
  // The tables of [[name]] arrays.
  std::vector<Section> sectionArray(const std::string& name, Errors& errors) const;

  bool isRelayDomain(const std::string& domain) const;
  // [connection]: allow wins over block; allowed clients are also exempt from the rate
  // limit and from DNS blocklists.
  bool isAllowedClient(const mta::IpAddress& ip) const;
  bool isBlockedClient(const mta::IpAddress& ip) const;
  bool isRelayClient(const mta::IpAddress& ip) const;
  // The first route whose domains take `domain` and whose senders take `sender` (the
  // envelope sender, "" for the null one), or nullptr.
  const Route* routeFor(const std::string& domain, std::string_view sender) const;
};

// Parses and validates `path`. Listener and metrics addresses must be IP literals with a
// port, no two of them the same socket; relay.domains and [[route]] domains must be domain
// names (a leading "." for the subdomains); a [[route]] that earlier ones leave nothing to
// match is a warning. On any error returns nullptr; `errors` holds every problem
// found (not only the first), each as FILE:LINE: message.
std::shared_ptr<const Config> loadConfig(const std::string& path, Errors& errors);
// The same, but what could be read is returned even when `errors` holds errors (nullptr
// only when the file is not TOML): `moat check` goes on to the policy files and filter
// sections, so one run lists every independent mistake.
std::shared_ptr<const Config> readConfig(const std::string& path, Errors& errors);

// server.log_file can be opened for append as `moat serve` will: it exists and is writable,
// or its folder exists and a file can be made there (nothing is created). Not part of
// loadConfig, so that `moat spf` and `moat queue` run without that right; every snapshot
// load checks it (mta/server/snapshot.cc: `moat check`, `moat scan`, serve, a reload).
void checkLogFile(const Config& c, Errors& errors);

// Every source address the config names ([queue] and [[route]] source_ipv4, source_ipv6) can
// be bound on this host: a socket of its family is bound to it (port 0) and closed. Else
// "FILE:LINE: queue.source_ipv4: cannot bind 192.0.2.7: Cannot assign requested address".
// Not part of loadConfig (the addresses are this host's, not the file's); every snapshot
// load checks it (`moat check`, serve, a reload), as checkLogFile.
void checkSourceAddresses(const Config& c, Errors& errors);

// What `moat serve` reads only at start: the keys whose value in `next` differs from the
// running one, as "server.spool_dir", "server.spool_sync", "server.control_socket",
// "server.metrics_listen", "dns.nameservers", "dns.timeout" and "listener ADDRESS" (a
// listener added, removed, with another mode or proxy_protocol, or an smtps one with another
// certificate).
// A reload applies everything else.
std::vector<std::string> restartOnlyChanges(const Config& running, const Config& next);

}  // namespace moat::policy
