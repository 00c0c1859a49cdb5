// policy/list_file.h — the line-oriented files that policy reads beside moat.toml (the SMTP
// AUTH users, the relay recipients): read whole and bounded, one entry a line, '#' comments,
// every bad line reported as FILE:LINE before the file is refused.
#pragma once
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "policy/errors.h"

namespace moat::policy {

// Calls `entry(line, text)` for each line that is neither blank nor a '#' comment, `text`
// without its line end and surrounding blanks; `entry` reports a bad line in `errors` and
// returns false, and the reading goes on. False when the file cannot be read, is larger
// than `maxBytes` (both reported, naming it "the WHAT file"), or a line was bad.
bool readListFile(const std::string& path, std::string_view what, size_t maxBytes, Errors& errors,
                  const std::function<bool(int line, std::string_view text)>& entry);

// "user@domain" or "@domain" as the lists hold them: printable UTF-8 without blanks or
// <>,; and at most 254 octets (RFC 5321 §4.5.3.1.3), with something after the '@'.
bool isAddressOrDomain(std::string_view s);

std::string lowerAscii(std::string_view s);

// The blank-separated fields of a map file's line (relay.rewrite, bcc.senders), up to a '#'
// that begins one.
std::vector<std::string_view> lineFields(std::string_view text);

// What a map file's field is: "user@domain" (a dot-atom local part of at most 64 octets, RFC
// 5322 §3.2.3, UTF-8 allowed, RFC 6531), "@domain" or "@.domain" (its subdomains), the domain
// a host name as relay.domains takes it; at most 254 octets. Bad for anything else.
enum class EntryKind { Bad, Address, Domain, Subdomains };
EntryKind entryKind(std::string_view s);

// RFC 5233 subaddress: "user+tag@domain" is user@domain's. The address without its tag, or
// "" when it has none (nor a user before the '+').
std::string withoutSubaddress(std::string_view address);

}  // namespace moat::policy
