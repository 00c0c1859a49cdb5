// filters/dmarc/record.h — parsing of DMARC policy records (RFC 7489 §6.3, §6.4).
//
// Input is untrusted: the TXT data at _dmarc.<domain>, published by anyone. Parsing is
// strict where RFC 7489 gives a grammar (v=DMARC1 first and case-sensitive, p/sp/np in
// none|quarantine|reject, pct 0-100, ri a 32-bit number, adkim/aspf r|s, fo 0|1|d|s lists,
// rf afrf lists; tag names and keyword values case-insensitive as ABNF strings are) and
// lenient where it says to be: unknown tags are ignored (§6.3), report URIs with a scheme
// Moat cannot use are kept, syntactically invalid URIs are dropped. Nothing is logged here.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moat::filters::dmarc {

struct Record {
  std::string p, sp, adkim = "r", aspf = "r";
  int pct = 100;
  std::vector<std::string> rua, ruf;  // the URIs as written, size suffix included, trimmed
  std::string fo = "0", rf = "afrf";
  uint32_t ri = 86400;
  std::string np;  // RFC 9091 (non-existent subdomains); empty = not published

  // The policy for subdomains (sp defaults to p) and for non-existent ones (np defaults to sp).
  const std::string& effectiveSp() const { return sp.empty() ? p : sp; }
  const std::string& effectiveNp() const { return np.empty() ? effectiveSp() : np; }
};

enum class ParseStatus {
  Ok,
  NotDmarc,    // the first tag is not v=
  BadVersion,  // v= first, but not "DMARC1"
  BadValue,    // a syntax error, or a known tag with an invalid value
  MissingP,    // a DMARC record without p=
  Empty        // nothing but whitespace
};
std::string_view parseStatusName(ParseStatus status);

// Parses `txt` into `out` (reset to the defaults first). On anything but Ok, `error`
// says what is wrong; `out` still holds every tag that parsed (rua in particular, which
// §6.6.3 needs to decide what a record with a bad p= means).
ParseStatus parseRecord(std::string_view txt, Record& out, std::string& error);

// The details §6.6.3 needs beyond the status: was the problem p= or sp= (or a missing p=),
// the case where a record with a valid rua= still counts as p=none.
struct ParseDetail {
  bool policyTagInvalid = false;  // p= missing or invalid, or sp= invalid
  bool otherTagInvalid = false;   // any other syntax or value error
  bool syntaxError = false;       // of those, a piece that is not a tag at all (no "=", a bad
                                  // tag name): the record is not a tag-list (§6.4)
};
ParseStatus parseRecord(std::string_view txt, Record& out, std::string& error, ParseDetail& detail);

// True if `txt` starts like a DMARC record (v=DMARC1), the §6.6.3 step-2 filter over the
// TXT records found at _dmarc.<domain>.
bool isDmarcRecord(std::string_view txt);

// One rua/ruf entry: dmarc-uri = URI [ "!" 1*DIGIT [ "k" / "m" / "g" / "t" ] ].
struct ReportUri {
  std::string uri;      // without the size suffix
  std::string scheme;   // lower-case, e.g. "mailto"
  std::string address;  // mailto: the address (before any "?"); other schemes: the rest
  uint64_t maxSize = 0; // bytes; 0 = no limit
};
bool parseReportUri(std::string_view text, ReportUri& out);

}  // namespace moat::filters::dmarc
