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
      bool ok = !name.empty() && name.size() <= 253 && name.find('*') == std::string_view::npos &&
                std::all_of(name.begin(), name.end(), [](char c) {
                  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
                });
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
  std::string te = header("transfer-encoding");
  if (!te.empty()) {
    fail("HTTP Transfer-Encoding \"" + te + "\" is not supported");
    return false;
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
  size_t room = (contentLength_ >= 0 ? static_cast<size_t>(contentLength_) : maxBody_) - body_.size();
  if (data.size() > room) {
    if (contentLength_ < 0) return fail("HTTP body over " + std::to_string(maxBody_) + " octets");
    data = data.substr(0, room);  // bytes past Content-Length are not the body
  }
  body_.append(data);
  if (contentLength_ >= 0 && body_.size() == static_cast<size_t>(contentLength_)) state_ = State::Done;
  return state_;
}

HttpResponse::State HttpResponse::end() {
  if (state_ != State::Incomplete) return state_;
  if (!headDone_) return fail("the connection closed before the HTTP response head ended");
  if (contentLength_ >= 0) return fail("the connection closed before the HTTP body ended");
  return state_ = State::Done;
}

}  // namespace moat::mta::sts
