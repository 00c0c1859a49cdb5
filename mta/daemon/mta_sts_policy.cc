#include "mta/daemon/mta_sts_policy.h"

#include <algorithm>
#include <cctype>

namespace moat::mta::sts {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

std::string_view noDot(std::string_view s) {
  if (!s.empty() && s.back() == '.') s.remove_suffix(1);
  return s;
}

bool isAlnum(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; });
}

}  // namespace

std::string_view modeName(Mode m) {
  switch (m) {
    case Mode::Enforce: return "enforce";
    case Mode::Testing: return "testing";
    case Mode::None: return "none";
  }
  return "none";
}

bool Policy::allows(std::string_view host) const {
  return std::any_of(mx.begin(), mx.end(), [&](const std::string& p) { return mxMatches(p, host); });
}

std::string parseTxt(const std::vector<std::string>& records, std::string& error) {
  const std::string* found = nullptr;
  for (const auto& r : records) {
    if (r.rfind("v=STSv1", 0) != 0) continue;
    // "v=STSv1" must be the whole first field: "v=STSv10" is another version.
    if (r.size() > 7 && r[7] != ';' && r[7] != ' ' && r[7] != '\t') continue;
    if (found) {
      error = "more than one v=STSv1 TXT record";
      return "";
    }
    found = &r;
  }
  if (!found) {
    error = "no v=STSv1 TXT record";
    return "";
  }
  // sts-text-record = sts-version 1*(sts-field-delim sts-field) [sts-field-delim]
  std::string_view rest(*found);
  std::string id;
  while (!rest.empty()) {
    size_t semi = rest.find(';');
    std::string_view field = trim(rest.substr(0, semi));
    rest = semi == std::string_view::npos ? std::string_view{} : rest.substr(semi + 1);
    if (field.rfind("id=", 0) == 0) {
      if (!id.empty()) {
        error = "TXT record with more than one id";
        return "";
      }
      id = std::string(field.substr(3));
      if (id.empty() || id.size() > 32 || !isAlnum(id)) {
        error = "TXT record with a malformed id";
        return "";
      }
    }
  }
  if (id.empty()) error = "TXT record without id";
  return id;
}

bool parsePolicy(std::string_view body, Policy& out, std::string& error) {
  Policy p;
  bool version = false, mode = false, maxAge = false;
  size_t lines = 0;
  while (!body.empty()) {
    if (++lines > 1000) {
      error = "policy: too many lines";
      return false;
    }
    size_t nl = body.find('\n');
    std::string_view line = body.substr(0, nl);
    body = nl == std::string_view::npos ? std::string_view{} : body.substr(nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (trim(line).empty()) continue;
    size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) {
      error = "policy: a line that is not \"key: value\"";
      return false;
    }
    std::string key(line.substr(0, colon));
    std::string_view value = trim(line.substr(colon + 1));
    if (key == "version") {
      if (value != "STSv1") {
        error = "policy: version is not STSv1";
        return false;
      }
      version = true;
    } else if (key == "mode") {
      if (mode) {
        error = "policy: more than one mode";
        return false;
      }
      mode = true;
      if (value == "enforce")
        p.mode = Mode::Enforce;
      else if (value == "testing")
        p.mode = Mode::Testing;
      else if (value == "none")
        p.mode = Mode::None;
      else {
        error = "policy: unknown mode \"" + std::string(value) + "\"";
        return false;
      }
    } else if (key == "max_age") {
      if (maxAge || value.empty() || value.size() > 10 ||
          !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        error = "policy: malformed max_age";
        return false;
      }
      unsigned long long v = std::stoull(std::string(value));
      if (v > 31557600) {
        error = "policy: max_age over 31557600";
        return false;
      }
      p.maxAge = static_cast<uint32_t>(v);
      maxAge = true;
    } else if (key == "mx") {
      std::string pat = lower(noDot(value));
      std::string_view name = pat.rfind("*.", 0) == 0 ? std::string_view(pat).substr(2) : std::string_view(pat);
      // A host name: labels of letters, digits, '-' and '_', none empty ("..", a leading dot,
      // two trailing dots) and none starting or ending with '-' (RFC 1123 §2.1). The cache file
      // could not read back such a pattern (a trailing dot is dropped there, "-" is no mx).
      bool ok = !name.empty() && name.size() <= 253 && name.find('*') == std::string_view::npos &&
                std::all_of(name.begin(), name.end(), [](char c) {
                  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
                });
      for (size_t start = 0; ok && start <= name.size();) {
        size_t dot = std::min(name.find('.', start), name.size());
        std::string_view label = name.substr(start, dot - start);
        ok = !label.empty() && label.front() != '-' && label.back() != '-';
        start = dot + 1;
      }
      if (!ok) {
        error = "policy: malformed mx \"" + std::string(value) + "\"";
        return false;
      }
      if (p.mx.size() >= 100) {
        error = "policy: too many mx";
        return false;
      }
      p.mx.push_back(std::move(pat));
    }
    // §3.2: other keys are extensions, ignored.
  }
  if (!version)
    error = "policy: no version";
  else if (!mode)
    error = "policy: no mode";
  else if (!maxAge)
    error = "policy: no max_age";
  else if (p.mx.empty() && p.mode != Mode::None)
    error = "policy: no mx";
  else {
    out = std::move(p);
    return true;
  }
  return false;
}

bool mxMatches(std::string_view pattern, std::string_view host) {
  std::string p = lower(noDot(pattern)), h = lower(noDot(host));
  if (p.rfind("*.", 0) == 0) {
    size_t dot = h.find('.');
    return dot != std::string::npos && dot > 0 && std::string_view(h).substr(dot) == std::string_view(p).substr(1);
  }
  return !p.empty() && p == h;
}

namespace {
constexpr std::string_view kCacheMagic = "moat-mta-sts-cache 1";

bool writableDomain(std::string_view d) {
  return !d.empty() && d.size() <= 253 && std::none_of(d.begin(), d.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u <= 0x20 || u == 0x7f;
  });
}

std::string cacheLine(const CachedPolicy& e) {
  std::string mx;
  for (const auto& m : e.policy.mx) mx += (mx.empty() ? "" : ",") + m;
  return e.domain + " " + std::to_string(e.expires) + " " + e.policy.id + " " + std::string(modeName(e.policy.mode)) +
         " " + std::to_string(e.policy.maxAge) + " " + (mx.empty() ? "-" : mx) + "\n";
}

bool digitsOnly(std::string_view s, size_t maxLen) {
  return !s.empty() && s.size() <= maxLen &&
         std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}
}  // namespace

std::string encodeCache(std::vector<CachedPolicy> entries, size_t maxEntries, size_t maxBytes) {
  std::stable_sort(entries.begin(), entries.end(),
                   [](const CachedPolicy& a, const CachedPolicy& b) { return a.expires > b.expires; });
  std::string out = std::string(kCacheMagic) + "\n";
  size_t count = 0;
  for (const auto& e : entries) {
    if (count >= maxEntries) break;
    if (!writableDomain(e.domain)) continue;
    std::string line = cacheLine(e);
    // Room for this line and the last line.
    if (out.size() + line.size() + 32 > maxBytes) continue;
    out += line;
    ++count;
  }
  return out + "end " + std::to_string(count) + "\n";
}

size_t cacheLineBytes(const std::string& domain, const Policy& policy) {
  // The widest expiry a line holds (decodeCache takes up to 18 digits).
  return cacheLine({domain, policy, 999'999'999'999'999'999}).size();
}

bool decodeCache(std::string_view text, int64_t now, size_t maxEntries, std::vector<CachedPolicy>& out,
                 std::string& error) {
  std::vector<CachedPolicy> got;
  size_t lineNo = 0, count = 0;
  bool ended = false;
  auto bad = [&](const std::string& why) {
    error = "line " + std::to_string(lineNo) + ": " + why;
    return false;
  };
  while (!text.empty()) {
    ++lineNo;
    size_t nl = text.find('\n');
    if (nl == std::string_view::npos) return bad("no newline at the end");
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl + 1);
    if (lineNo == 1) {
      if (line != kCacheMagic) return bad("not a Moat MTA-STS cache file");
      continue;
    }
    if (ended) return bad("text after the end line");
    std::vector<std::string_view> f;
    while (!line.empty() && f.size() < 7) {
      size_t sp = line.find(' ');
      f.push_back(line.substr(0, sp));
      line = sp == std::string_view::npos ? std::string_view{} : line.substr(sp + 1);
    }
    if (f.size() == 2 && f[0] == "end") {
      if (!digitsOnly(f[1], 9) || std::stoul(std::string(f[1])) != count) return bad("the count does not match");
      ended = true;
      continue;
    }
    if (f.size() != 6) return bad("not DOMAIN EXPIRES ID MODE MAX_AGE MX");
    if (++count > maxEntries) return bad("more than " + std::to_string(maxEntries) + " policies");
    CachedPolicy e;
    e.domain = std::string(f[0]);
    if (!writableDomain(e.domain)) return bad("malformed domain");
    if (!digitsOnly(f[1], 18)) return bad("malformed expiry");
    e.expires = std::stoll(std::string(f[1]));
    std::string idError;
    if (parseTxt({"v=STSv1; id=" + std::string(f[2])}, idError) != f[2]) return bad("malformed id");
    // The policy text the line stands for, checked as a fetched one is.
    std::string body = "version: STSv1\nmode: " + std::string(f[3]) + "\nmax_age: " + std::string(f[4]) + "\n";
    if (f[5] != "-") {
      std::string_view mx = f[5];
      while (!mx.empty()) {
        size_t comma = mx.find(',');
        body += "mx: " + std::string(mx.substr(0, comma)) + "\n";
        mx = comma == std::string_view::npos ? std::string_view{} : mx.substr(comma + 1);
      }
    }
    std::string policyError;
    if (!parsePolicy(body, e.policy, policyError)) return bad(policyError);
    e.policy.id = std::string(f[2]);
    e.expires = std::min<int64_t>(e.expires, now + e.policy.maxAge);
    if (e.expires <= now) continue;  // expired (max_age 0 too): of no use any more
    got.push_back(std::move(e));
  }
  if (!ended) return bad("no end line (a file cut short)");
  out = std::move(got);
  return true;
}

HttpResponse::State HttpResponse::fail(std::string why) {
  error_ = std::move(why);
  return state_ = State::Error;
}

std::string HttpResponse::header(std::string_view name) const {
  std::string n = lower(name);
  for (const auto& [k, v] : headers_)
    if (k == n) return v;
  return "";
}

bool HttpResponse::parseHead(std::string_view head) {
  size_t eol = head.find("\r\n");
  std::string_view status = head.substr(0, eol);
  // status-line = HTTP-version SP status-code SP [ reason-phrase ]
  if (status.size() < 12 || status.substr(0, 7) != "HTTP/1." || status[8] != ' ' ||
      !std::isdigit(static_cast<unsigned char>(status[9])) || !std::isdigit(static_cast<unsigned char>(status[10])) ||
      !std::isdigit(static_cast<unsigned char>(status[11])) || (status.size() > 12 && status[12] != ' ')) {
    fail("malformed HTTP status line");
    return false;
  }
  status_ = (status[9] - '0') * 100 + (status[10] - '0') * 10 + (status[11] - '0');
  std::string_view rest = eol == std::string_view::npos ? std::string_view{} : head.substr(eol + 2);
  while (!rest.empty()) {
    size_t e = rest.find("\r\n");
    std::string_view line = rest.substr(0, e);
    rest = e == std::string_view::npos ? std::string_view{} : rest.substr(e + 2);
    size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0 || line.front() == ' ' || line.front() == '\t') {
      fail("malformed HTTP header");
      return false;
    }
    if (headers_.size() >= 100) {
      fail("too many HTTP headers");
      return false;
    }
    headers_.emplace_back(lower(trim(line.substr(0, colon))), std::string(trim(line.substr(colon + 1))));
  }
  // RFC 9112 §6.1: chunked is the only coding a policy host may use here (the request asks
  // for none other); §6.3: with Content-Length too, the reply may be a smuggling attempt.
  size_t codings =
      std::count_if(headers_.begin(), headers_.end(), [](const auto& h) { return h.first == "transfer-encoding"; });
  if (codings > 0) {
    std::string te = lower(header("transfer-encoding"));
    if (codings > 1 || te != "chunked") {
      fail("HTTP Transfer-Encoding \"" + te + "\" is not supported");
      return false;
    }
    if (!header("content-length").empty()) {
      fail("HTTP reply with both Transfer-Encoding and Content-Length");
      return false;
    }
    chunked_ = true;
  }
  std::string cl = header("content-length");
  if (!cl.empty()) {
    if (cl.size() > 18 || !std::all_of(cl.begin(), cl.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      fail("malformed Content-Length");
      return false;
    }
    contentLength_ = std::stoll(cl);
    if (static_cast<unsigned long long>(contentLength_) > maxBody_) {
      fail("HTTP body over " + std::to_string(maxBody_) + " octets");
      return false;
    }
  }
  return true;
}

HttpResponse::State HttpResponse::feed(std::string_view data) {
  if (state_ != State::Incomplete) return state_;
  if (!headDone_) {
    size_t before = buf_.size();
    buf_.append(data.substr(0, std::min(data.size(), kMaxHead + 4)));
    size_t from = before >= 3 ? before - 3 : 0;
    size_t end = buf_.find("\r\n\r\n", from);
    if (end == std::string::npos) {
      if (buf_.size() > kMaxHead) return fail("HTTP response head over " + std::to_string(kMaxHead) + " octets");
      return state_;
    }
    if (end > kMaxHead) return fail("HTTP response head over " + std::to_string(kMaxHead) + " octets");
    if (!parseHead(std::string_view(buf_).substr(0, end))) return state_;
    headDone_ = true;
    // What came after the head in this piece of input is the start of the body.
    size_t used = end + 4 - before;
    data = data.substr(std::min(used, data.size()));
    buf_.clear();
  }
  if (chunked_) return feedChunked(data);
  size_t room = (contentLength_ >= 0 ? static_cast<size_t>(contentLength_) : maxBody_) - body_.size();
  if (data.size() > room) {
    if (contentLength_ < 0) return fail("HTTP body over " + std::to_string(maxBody_) + " octets");
    data = data.substr(0, room);  // bytes past Content-Length are not the body
  }
  body_.append(data);
  if (contentLength_ >= 0 && body_.size() == static_cast<size_t>(contentLength_)) state_ = State::Done;
  return state_;
}

HttpResponse::State HttpResponse::feedChunked(std::string_view data) {
  const std::string over = "HTTP body over " + std::to_string(maxBody_) + " octets";
  while (!data.empty() && state_ == State::Incomplete) {
    if (chunk_ == Chunk::Data) {
      size_t n = std::min(chunkLeft_, data.size());
      body_.append(data.substr(0, n));
      data.remove_prefix(n);
      chunkLeft_ -= n;
      if (chunkLeft_ == 0) chunk_ = Chunk::DataEnd;
      continue;
    }
    // A line: chunk-size [chunk-ext] CRLF, the CRLF after chunk data, or a trailer field
    // line. Bounded before it is complete: a peer that never sends LF gets no further.
    const size_t limit = chunk_ == Chunk::DataEnd ? 2 : chunk_ == Chunk::Size ? kMaxChunkLine : kMaxHead;
    size_t nl = data.find('\n');
    size_t take = nl == std::string_view::npos ? data.size() : nl + 1;
    if (buf_.size() + take > limit) {
      if (chunk_ == Chunk::Size) return fail("HTTP chunk-size line over " + std::to_string(kMaxChunkLine) + " octets");
      if (chunk_ == Chunk::DataEnd) return fail("HTTP chunk data not followed by CRLF");
      return fail("HTTP trailer over " + std::to_string(kMaxHead) + " octets");
    }
    buf_.append(data.substr(0, take));
    data.remove_prefix(take);
    if (nl == std::string_view::npos) break;
    if (buf_.size() < 2 || buf_[buf_.size() - 2] != '\r') return fail("HTTP chunked line without CRLF");
    std::string_view line = std::string_view(buf_).substr(0, buf_.size() - 2);
    switch (chunk_) {
      case Chunk::DataEnd:
        if (!line.empty()) return fail("HTTP chunk data not followed by CRLF");
        chunk_ = Chunk::Size;
        break;
      case Chunk::Size: {
        // chunk-size = 1*HEXDIG, then chunk extensions (ignored): BWS ";" ... (RFC 9112 §7.1.1)
        size_t i = 0, size = 0;
        for (; i < line.size() && std::isxdigit(static_cast<unsigned char>(line[i])); ++i) {
          size = size * 16 + static_cast<size_t>(std::isdigit(static_cast<unsigned char>(line[i]))
                                                     ? line[i] - '0'
                                                     : std::tolower(static_cast<unsigned char>(line[i])) - 'a' + 10);
          if (size > maxBody_) return fail(over);  // also keeps `size` from overflowing
        }
        if (i == 0) return fail("malformed HTTP chunk size");
        std::string_view ext = line.substr(i);
        while (!ext.empty() && (ext.front() == ' ' || ext.front() == '\t')) ext.remove_prefix(1);
        if (!ext.empty() && ext.front() != ';') return fail("malformed HTTP chunk size");
        if (std::any_of(ext.begin(), ext.end(),
                        [](char c) { return (static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f; }))
          return fail("malformed HTTP chunk extension");
        if (size > maxBody_ - body_.size()) return fail(over);
        chunkLeft_ = size;
        chunk_ = size == 0 ? Chunk::Trailer : Chunk::Data;
        break;
      }
      case Chunk::Trailer:
        if (line.empty()) {
          state_ = State::Done;  // the last chunk and the trailer section ended
          break;
        }
        trailerBytes_ += buf_.size();
        if (trailerBytes_ > kMaxHead) return fail("HTTP trailer over " + std::to_string(kMaxHead) + " octets");
        if (line.find(':') == std::string_view::npos || line.front() == ' ' || line.front() == '\t')
          return fail("malformed HTTP trailer field");
        break;  // trailer fields are not used
      case Chunk::Data: break;
    }
    buf_.clear();
  }
  return state_;
}

HttpResponse::State HttpResponse::end() {
  if (state_ != State::Incomplete) return state_;
  if (!headDone_) return fail("the connection closed before the HTTP response head ended");
  if (chunked_) return fail("the connection closed before the chunked HTTP body ended");
  if (contentLength_ >= 0) return fail("the connection closed before the HTTP body ended");
  return state_ = State::Done;
}

}  // namespace moat::mta::sts
