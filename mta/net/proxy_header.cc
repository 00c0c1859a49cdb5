// mta/net/proxy_header.cc — see proxy_header.h. Section numbers are those of HAProxy's
// proxy-protocol.txt (2.1: the human-readable header, 2.2: the binary one).
#include "mta/net/proxy_header.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace moat::mta::net {
namespace {

constexpr char kV1Prefix[] = "PROXY ";
constexpr size_t kV1PrefixLen = sizeof kV1Prefix - 1;
constexpr unsigned char kV2Signature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
constexpr size_t kV2FixedLen = 16;

ProxyParse invalid(std::string why) {
  ProxyParse p;
  p.status = ProxyParse::Status::Invalid;
  p.error = std::move(why);
  return p;
}

ProxyParse done(ProxyHeader header, size_t length) {
  ProxyParse p;
  p.status = ProxyParse::Status::Done;
  p.header = header;
  p.length = length;
  return p;
}

// 2.1: a port is a decimal number 0..65535 without leading zeroes.
std::optional<uint16_t> parsePort(std::string_view s) {
  if (s.empty() || s.size() > 5 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  unsigned v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v > 65535) return std::nullopt;
  return static_cast<uint16_t>(v);
}

std::string quoted(std::string_view s) { return "\"" + std::string(s) + "\""; }

ProxyParse parseV1(std::string_view input) {
  // Until the line's end: every octet printable, a CR only right before the LF.
  size_t end = std::min(input.size(), kMaxProxyV1Line);
  size_t lf = std::string_view::npos;
  for (size_t i = 0; i < end; ++i) {
    unsigned char c = static_cast<unsigned char>(input[i]);
    if (i < kV1PrefixLen && c != static_cast<unsigned char>(kV1Prefix[i]))
      return invalid("not a PROXY protocol header");
    if (c == '\n') {
      if (i == 0 || input[i - 1] != '\r') return invalid("v1: a bare LF (the line must end with CRLF)");
      lf = i;
      break;
    }
    if (c == '\r') {
      if (i + 1 < input.size() && input[i + 1] != '\n') return invalid("v1: a CR not followed by LF");
      continue;
    }
    if (c < 0x20 || c > 0x7e) return invalid("v1: a control or non-ASCII octet in the line");
  }
  if (lf == std::string_view::npos) {
    if (input.size() >= kMaxProxyV1Line) return invalid("v1: no CRLF within 107 octets");
    return {};  // NeedMore
  }
  std::string_view line = input.substr(kV1PrefixLen, lf - 1 - kV1PrefixLen);
  std::vector<std::string_view> fields;
  size_t pos = 0;
  while (true) {
    size_t sp = line.find(' ', pos);
    fields.push_back(line.substr(pos, sp == std::string_view::npos ? std::string_view::npos : sp - pos));
    if (sp == std::string_view::npos) break;
    pos = sp + 1;
  }
  ProxyHeader h;
  h.version = 1;
  // UNKNOWN: the sender could not tell (a health check, a non-IP client); anything up to the
  // CRLF is to be ignored, and the connection's own endpoints stand.
  if (fields[0] == "UNKNOWN") return done(h, lf + 1);
  if (fields[0] != "TCP4" && fields[0] != "TCP6") return invalid("v1: unknown protocol " + quoted(fields[0]));
  if (fields.size() != 5) return invalid("v1: expected 5 fields after PROXY, separated by single spaces");
  const bool v4 = fields[0] == "TCP4";
  for (int i = 1; i <= 2; ++i) {
    auto ip = IpAddress::parse(fields[i]);
    // TCP4 takes dotted quads only; TCP6 an IPv6 address (an IPv4-mapped one reads as IPv4).
    bool colon = fields[i].find(':') != std::string_view::npos;
    if (!ip || colon == v4)
      return invalid("v1: " + quoted(fields[i]) + " is not an " + (v4 ? "IPv4" : "IPv6") + " address");
    (i == 1 ? h.source : h.destination) = *ip;
  }
  for (int i = 3; i <= 4; ++i) {
    auto port = parsePort(fields[i]);
    if (!port) return invalid("v1: " + quoted(fields[i]) + " is not a port (0-65535)");
    (i == 3 ? h.sourcePort : h.destinationPort) = *port;
  }
  h.proxied = true;
  return done(h, lf + 1);
}

uint16_t be16(const unsigned char* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }

ProxyParse parseV2(std::string_view input) {
  const auto* p = reinterpret_cast<const unsigned char*>(input.data());
  if (std::memcmp(p, kV2Signature, std::min(input.size(), sizeof kV2Signature)) != 0)
    return invalid("not a PROXY protocol header (a bad v2 signature)");
  if (input.size() < kV2FixedLen) return {};
  const unsigned version = p[12] >> 4, command = p[12] & 0x0f;
  const unsigned family = p[13] >> 4, transport = p[13] & 0x0f;
  const size_t length = be16(p + 14);
  if (version != 2) return invalid("v2: version " + std::to_string(version) + ", not 2");
  if (command > 1) return invalid("v2: unknown command " + std::to_string(command));
  if (kV2FixedLen + length > kMaxProxyV2Header)
    return invalid("v2: a header of " + std::to_string(kV2FixedLen + length) + " octets, over " +
                   std::to_string(kMaxProxyV2Header));
  if (input.size() < kV2FixedLen + length) return {};
  ProxyHeader h;
  h.version = 2;
  // LOCAL: the balancer's own connection (a health check); its address block, whatever the
  // family says, is ignored. PROXY with AF_UNSPEC: the sender does not know (2.2).
  if (command == 0 || family == 0) return done(h, kV2FixedLen + length);
  if (family != 1 && family != 2)
    return invalid(family == 3 ? "v2: an AF_UNIX client, not a TCP one"
                               : "v2: unknown address family " + std::to_string(family));
  if (transport != 1) return invalid("v2: transport " + std::to_string(transport) + ", not STREAM");
  const size_t addrLen = family == 1 ? 4 : 16;
  if (length < 2 * addrLen + 4)
    return invalid("v2: an address block of " + std::to_string(length) + " octets, under the " +
                   std::to_string(2 * addrLen + 4) + " its family needs");
  const unsigned char* a = p + kV2FixedLen;
  h.source = family == 1 ? IpAddress::v4(a) : IpAddress::v6(a);  // v6(): ::ffff:a.b.c.d is IPv4
  h.destination = family == 1 ? IpAddress::v4(a + addrLen) : IpAddress::v6(a + addrLen);
  h.sourcePort = be16(a + 2 * addrLen);
  h.destinationPort = be16(a + 2 * addrLen + 2);
  h.proxied = true;
  // TLVs (2.2.7, the rest of the length) are skipped: nothing here needs what they say.
  return done(h, kV2FixedLen + length);
}

}  // namespace

ProxyParse parseProxyHeader(std::string_view input) {
  if (input.empty()) return {};
  if (input[0] == '\r') return parseV2(input);
  return parseV1(input);
}

ProxyHeaderReader::ProxyHeaderReader(uv_loop_t* loop, std::shared_ptr<Connection> conn)
    : loop_(loop), conn_(std::move(conn)), timer_(loop) {}

void ProxyHeaderReader::start(uint64_t timeoutMs, Done done) {
  done_ = std::move(done);
  Connection::Callbacks cb;
  cb.onData = [this](std::string_view data) { onData(data); };
  cb.onClose = [this](const std::string& error) {
    std::string why = error.empty() ? "closed before the header ended" : error;
    if (finished_) {  // after the header, before the hand-over: nothing to hand over
      header_.reset();
      if (error_.empty()) error_ = why;
      return;
    }
    if (!heardAnything_) {
      closedSilently_ = true;
      why = "closed without sending anything";
    }
    finish(std::nullopt, why);
  };
  conn_->setCallbacks(std::move(cb));
  uv_update_time(loop_);  // the accept may come after a busy loop turn
  timer_.start(timeoutMs, [this] { finish(std::nullopt, "timeout"); });
  conn_->startReading();
}

ProxyHeaderReader::~ProxyHeaderReader() {
  if (!conn_) return;
  conn_->setCallbacks({});
  conn_->abort();
}

void ProxyHeaderReader::onData(std::string_view data) {
  if (finished_) return;
  if (!data.empty()) heardAnything_ = true;
  input_.append(data);
  ProxyParse p = parseProxyHeader(input_);
  if (p.status == ProxyParse::Status::NeedMore) return;
  conn_->stopReading();
  if (p.status == ProxyParse::Status::Invalid) return finish(std::nullopt, p.error);
  // The client's first octets, if they came with the header, are read again by the session.
  if (p.length < input_.size()) conn_->unread(input_.substr(p.length));
  input_.clear();
  finish(p.header, "");
}

void ProxyHeaderReader::finish(std::optional<ProxyHeader> header, std::string error) {
  if (finished_) return;
  finished_ = true;
  header_ = header;
  error_ = std::move(error);
  conn_->stopReading();
  timer_.start(0, [this] {
    auto conn = std::move(conn_);
    conn->setCallbacks({});
    auto header = header_;
    auto error = error_;
    auto done = std::move(done_);
    done(std::move(conn), header, error);  // may destroy this reader
  });
}

}  // namespace moat::mta::net
