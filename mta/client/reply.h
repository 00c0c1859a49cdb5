// mta/client/reply.h — what an SMTP or LMTP server sends back, read without the connection:
// replies (RFC 5321 §4.2: "250-" continuation lines, one code for every line, first digit 2
// to 5), the EHLO/LHLO keywords and their parameters (§4.1.1.1; RFC 1870 SIZE, RFC 4954
// AUTH), and the enhanced status code a reply carries (RFC 3463, RFC 2034) for a DSN.
// The SMTP client (smtp_client.h) and the queue manager use these; tests/fuzz/fuzz_peer.cc
// feeds them bytes.
//
// Untrusted input: every byte from the server. Bounded: kMaxReplyLine bytes a line (CRLF
// aside), kMaxReplyLines lines a reply; more is a protocol error. Logs nothing.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moat::mta::client {

constexpr size_t kMaxReplyLine = 4096;
constexpr size_t kMaxReplyLines = 100;

struct Reply {
  int code = 0;      // 0: no reply (command not sent)
  std::string text;  // every reply line without CRLF, joined with "\n": "250 2.0.0 Ok"
};

// Splits the server's bytes (split anywhere) into replies. feed() takes bytes up to the end
// of the next whole reply and returns it, or nullopt when it needs more (every byte taken)
// or on a protocol error: error() is then set, stays set, and nothing more is read.
class ReplyReader {
 public:
  std::optional<Reply> feed(std::string_view& bytes);
  const std::string& error() const { return error_; }
  void clear();  // drops a partial line and reply (a new connection)

 private:
  std::optional<Reply> line(std::string_view line);
  std::string partial_;
  std::vector<std::string> lines_;
  std::string error_;
};

// EHLO/LHLO keywords, upper-case, each with its parameter ("35882577" for SIZE, "" none).
using Extensions = std::map<std::string, std::string, std::less<>>;
// The keywords of a positive EHLO reply (every line but the first, which names the server).
Extensions parseEhlo(const Reply& r);
// The next hop's fixed maximum message size (RFC 1870 SIZE parameter), 0: none announced.
uint64_t fixedMaxSize(const Extensions& ext);
// The SASL mechanisms offered, upper-case: "AUTH PLAIN LOGIN", and the "AUTH=PLAIN LOGIN"
// form some older servers send as well.
std::vector<std::string> authMechanisms(const Extensions& ext);

// The RFC 3463 status of a reply as the queue keeps it ("550 5.1.1 text" or its first line
// joined, "550-5.1.1 ..."): its enhanced code when that is well formed (class.subject.detail,
// 1 to 3 digits each) and of the reply's class, else the class of the basic code with
// ".0.0" ("4.0.0" when there is none). A reply that is only an enhanced code and text
// ("5.1.1 text") gives that code.
std::string replyStatus(std::string_view reply);

}  // namespace moat::mta::client
