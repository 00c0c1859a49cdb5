// filters/dkim/internal.cc — see internal.h. Message splitting follows RFC 5322 section 2.2
// (fields end at a CRLF not followed by WSP); tag-lists follow RFC 6376 section 3.2. Inputs
// are untrusted: every loop is bounded by the input's length.
#include "filters/dkim/internal.h"

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cctype>

namespace moat::filters::dkim::detail {

namespace {

bool isWsp(char c) { return c == ' ' || c == '\t'; }

// End of the line starting at `pos`: the index of its '\n' (or size()).
size_t lineEnd(std::string_view m, size_t pos) {
  size_t nl = m.find('\n', pos);
  return nl == std::string_view::npos ? m.size() : nl;
}

bool blankLine(std::string_view m, size_t pos) {
  return pos < m.size() && (m[pos] == '\n' || (m[pos] == '\r' && pos + 1 < m.size() && m[pos + 1] == '\n'));
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

bool validLabel(std::string_view l, bool allowUnderscore) {
  if (l.empty() || l.size() > 63) return false;
  for (char c : l) {
    bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '-' || (allowUnderscore && c == '_');
    if (!ok) return false;
  }
  return l.front() != '-' && l.back() != '-';
}

bool validDotted(std::string_view s, size_t minLabels, bool allowUnderscore) {
  if (s.empty() || s.size() > 253) return false;
  size_t labels = 0, start = 0;
  while (true) {
    size_t dot = s.find('.', start);
    std::string_view label = s.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (!validLabel(label, allowUnderscore)) return false;
    ++labels;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return labels >= minLabels;
}

}  // namespace

SplitMessage splitMessage(std::string_view m) {
  SplitMessage out;
  size_t pos = 0;
  while (pos < m.size()) {
    if (blankLine(m, pos)) {
      out.body = m.substr(lineEnd(m, pos) + 1);  // blankLine() saw the '\n'
      return out;
    }
    size_t start = pos;
    size_t end = lineEnd(m, pos);
    // A field continues while the next line starts with WSP.
    while (end < m.size() && end + 1 < m.size() && isWsp(m[end + 1])) end = lineEnd(m, end + 1);
    size_t rawEnd = end;
    if (rawEnd > start && rawEnd <= m.size() && m[rawEnd - 1] == '\r') --rawEnd;
    std::string_view raw = m.substr(start, rawEnd - start);
    size_t colon = raw.find(':');
    std::string_view name = colon == std::string_view::npos ? std::string_view() : trim(raw.substr(0, colon));
    out.headers.push_back({name, raw});
    pos = end < m.size() ? end + 1 : m.size();
  }
  return out;
}

std::string completeBody(std::string_view body) {
  std::string out(body);
  if (!out.empty() && out.back() != '\n') out += out.back() == '\r' ? "\n" : "\r\n";
  return out;
}

std::string canonicalBody(std::string_view body, bool relaxed) {
  std::string out, pendingBlank;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = lineEnd(body, pos);
    std::string_view line = body.substr(pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    std::string canon;
    if (relaxed) {
      // 3.4.4: WSP runs become one SP, WSP at the line end goes.
      bool space = false;
      for (char c : line) {
        if (isWsp(c)) {
          space = true;
          continue;
        }
        if (space) canon.push_back(' ');
        space = false;
        canon.push_back(c);
      }
    } else {
      canon = line;
    }
    // Empty lines at the end go (both canonicalizations).
    if (canon.empty()) {
      pendingBlank += "\r\n";
    } else {
      out += pendingBlank;
      pendingBlank.clear();
      out += canon + "\r\n";
    }
    pos = end + 1;
  }
  // 3.4.3: an empty simple body is one CRLF; an empty relaxed body stays empty.
  if (out.empty() && !relaxed) out = "\r\n";
  return out;
}

std::string foldSignature(std::string_view value, size_t width) {
  std::string out;
  size_t col = std::string_view("DKIM-Signature: ").size();
  // Puts one unbreakable piece, after a fold when it would pass `width`; `sep` (a space or
  // nothing) goes before it when there is no fold. Each decision looks only at what is
  // already written and the piece itself, so a value with more after it folds the same up
  // to that point (signEd25519 relies on it).
  auto put = [&](std::string_view piece, std::string_view sep) {
    if (!out.empty() && col + sep.size() + piece.size() >= width) {  // room for a ";" after it
      out += "\r\n\t";
      col = 1;
    } else {
      out += sep;
      col += sep.size();
    }
    out += piece;
    col += piece.size();
  };
  size_t start = 0;
  bool first = true;
  while (start < value.size()) {
    size_t semi = value.find(';', start);
    std::string_view spec =
        trim(value.substr(start, semi == std::string_view::npos ? std::string_view::npos : semi - start));
    start = semi == std::string_view::npos ? value.size() : semi + 1;
    if (spec.empty()) continue;
    if (!first) out += ';';
    if (!first) ++col;
    std::string_view sep = first ? "" : " ";
    first = false;
    size_t eq = spec.find('=');
    std::string_view name = trim(spec.substr(0, eq == std::string_view::npos ? spec.size() : eq));
    if (eq == std::string_view::npos || (name != "h" && name != "b" && name != "bh")) {
      put(spec, sep);
      continue;
    }
    std::string_view data = trim(spec.substr(eq + 1));
    if (name == "h") {
      // h=a:b:c breaks after a ':' (3.5: FWS around ':' is allowed).
      size_t colon = data.find(':');
      put(std::string("h=") + std::string(data.substr(0, colon == std::string_view::npos ? data.size() : colon + 1)),
          sep);
      while (colon != std::string_view::npos) {
        size_t from = colon + 1;
        colon = data.find(':', from);
        put(data.substr(from, colon == std::string_view::npos ? std::string_view::npos : colon + 1 - from), "");
      }
      continue;
    }
    // base64 (b=, bh=) may be folded anywhere; pieces of 8 keep the lines full.
    put(std::string(name) + "=", sep);
    for (size_t i = 0; i < data.size(); i += 8) put(data.substr(i, 8), "");
  }
  if (!value.empty() && value.back() == ';') out += ';';
  return out;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::optional<TagList> parseTagList(std::string_view text) {
  TagList tags;
  size_t start = 0;
  while (start <= text.size()) {
    size_t semi = text.find(';', start);
    std::string_view spec = text.substr(start, semi == std::string_view::npos ? std::string_view::npos : semi - start);
    start = semi == std::string_view::npos ? text.size() + 1 : semi + 1;
    if (trim(spec).empty()) continue;  // a trailing ';' is allowed
    size_t eq = spec.find('=');
    if (eq == std::string_view::npos) return std::nullopt;
    std::string name(trim(spec.substr(0, eq)));
    if (name.empty() || findTag(tags, name)) return std::nullopt;
    tags.emplace_back(std::move(name), std::string(trim(spec.substr(eq + 1))));
  }
  return tags;
}

const std::string* findTag(const TagList& tags, std::string_view name) {
  for (const auto& [k, v] : tags)
    if (k == name) return &v;
  return nullptr;
}

std::string stripWhitespace(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s)
    if (!std::isspace(static_cast<unsigned char>(c))) out.push_back(c);
  return out;
}

bool validDomain(std::string_view d) { return validDotted(d, 2, false); }
bool validSelector(std::string_view s) { return validDotted(s, 1, true); }

void fetchKeys(const filters::Env& env, const std::vector<std::string>& names, std::function<void(KeyMap)> done) {
  struct Pending {
    KeyMap keys;
    size_t outstanding = 0;
    std::function<void(KeyMap)> done;
  };
  auto p = std::make_shared<Pending>();
  p->done = std::move(done);
  if (names.empty()) return p->done({});
  p->outstanding = names.size();
  for (const auto& n : names) p->keys.push_back({n, KeyAnswer{mta::dns::Status::TempFail, {}}});
  for (size_t i = 0; i < names.size(); ++i) {
    env.resolver->query(names[i], mta::dns::RrType::TXT, [p, i](const mta::dns::Answer& a) {
      p->keys[i].second.status = a.status;
      p->keys[i].second.txt = a.txt;
      if (--p->outstanding == 0) p->done(std::move(p->keys));
    });
  }
}

const std::string& keyRecord(const KeyAnswer& answer) {
  for (const auto& t : answer.txt) {
    auto tags = parseTagList(t);
    if (tags && findTag(*tags, "p")) return t;
  }
  return answer.txt.front();
}

PkeyPtr rsaPublicKey(const std::string& record, int minBits, std::string& error) {
  auto tags = parseTagList(record);
  if (!tags) {
    error = "key record is not a tag-list";
    return nullptr;
  }
  const std::string* v = findTag(*tags, "v");
  const std::string* k = findTag(*tags, "k");
  const std::string* p = findTag(*tags, "p");
  if (v && stripWhitespace(*v) != "DKIM1")
    error = "key record v= is not DKIM1";
  else if (k && lower(stripWhitespace(*k)) != "rsa")
    error = "key record k= is not rsa";
  else if (!p)
    error = "key record without p=";
  else if (stripWhitespace(*p).empty())
    error = "key revoked (empty p=)";
  if (!error.empty()) return nullptr;
  auto der = base64Decode(*p);
  if (!der || der->empty()) {
    error = "key record p= is not base64";
    return nullptr;
  }
  auto* d = reinterpret_cast<const unsigned char*>(der->data());
  PkeyPtr key(d2i_PUBKEY(nullptr, &d, static_cast<long>(der->size())));
  if (!key) {
    d = reinterpret_cast<const unsigned char*>(der->data());
    key.reset(d2i_PublicKey(EVP_PKEY_RSA, nullptr, &d, static_cast<long>(der->size())));
  }
  if (!key || EVP_PKEY_get_base_id(key.get()) != EVP_PKEY_RSA) {
    error = "key record p= is not an RSA public key";
    return nullptr;
  }
  if (int bits = EVP_PKEY_get_bits(key.get()); bits < minBits) {
    error = "RSA key of " + std::to_string(bits) + " bits is under " + std::to_string(minBits) + " (RFC 8301)";
    return nullptr;
  }
  return key;
}

PkeyPtr loadPrivateKey(std::string_view text, std::string& error) {
  if (text.find("-----BEGIN") != std::string_view::npos) {
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())), BIO_free);
    PkeyPtr key(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr);
    if (!key) error = "not a readable PEM private key";
    return key;
  }
  auto der = base64Decode(text);
  if (!der) {
    error = "neither PEM nor base64";
    return nullptr;
  }
  auto* p = reinterpret_cast<const unsigned char*>(der->data());
  if (der->size() == 32) {
    PkeyPtr key(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, p, der->size()));
    if (!key) error = "bad ed25519 seed";
    return key;
  }
  PkeyPtr key(d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(der->size())));
  if (!key) error = "not a DER private key";
  return key;
}

std::string privateKeyPem(EVP_PKEY* key) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) return {};
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return len > 0 ? std::string(data, static_cast<size_t>(len)) : std::string();
}

}  // namespace moat::filters::dkim::detail
