// mta/daemon/report_mail.cc — see report_mail.h.
#include "mta/daemon/report_mail.h"

#include <zlib.h>

#include <ctime>

namespace moat::mta::daemon::report_mail {

int64_t periodStart(int64_t nowMs, int64_t intervalMs) {
  if (intervalMs <= 0) return nowMs;
  int64_t q = nowMs / intervalMs;
  if (nowMs < 0 && nowMs % intervalMs != 0) --q;
  return q * intervalMs;
}

std::string rfc3339(int64_t unixSeconds) {
  std::time_t t = static_cast<std::time_t>(unixSeconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::optional<std::string> gzip(std::string_view data) {
  z_stream z{};
  // windowBits 15 + 16: a gzip wrapper (RFC 1952) rather than zlib's own.
  if (deflateInit2(&z, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) return std::nullopt;
  std::string out(deflateBound(&z, static_cast<uLong>(data.size())) + 32, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  int rc = deflate(&z, Z_FINISH);
  size_t produced = out.size() - z.avail_out;
  deflateEnd(&z);
  if (rc != Z_STREAM_END) return std::nullopt;
  out.resize(produced);
  return out;
}

std::optional<std::string> gunzip(std::string_view data, size_t maxBytes) {
  z_stream z{};
  if (inflateInit2(&z, 15 + 16) != Z_OK) return std::nullopt;
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  std::string out;
  char buf[16384];
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    z.next_out = reinterpret_cast<Bytef*>(buf);
    z.avail_out = sizeof buf;
    rc = inflate(&z, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) break;
    out.append(buf, sizeof buf - z.avail_out);
    if (out.size() > maxBytes || (rc == Z_OK && z.avail_in == 0 && z.avail_out != 0)) {
      rc = Z_DATA_ERROR;
      break;
    }
  }
  inflateEnd(&z);
  if (rc != Z_STREAM_END) return std::nullopt;
  return out;
}

std::string headerSafe(std::string_view s) {
  std::string out;
  for (unsigned char c : s)
    if (c >= 0x20 && c < 0x7f) out += static_cast<char>(c);
  return out;
}

std::string stateHead(std::string_view tag, int64_t startMs, int64_t intervalMs) {
  return "{\"" + std::string(tag) + "\":1,\"start\":" + std::to_string(startMs) +
         ",\"interval\":" + std::to_string(intervalMs) + ",\"domains\":[";
}

bool jsonCount(const json::Value* v, uint64_t& out) {
  if (!v || v->type != json::Value::Type::Number || v->number < 0 || v->number > 9e15) return false;
  out = static_cast<uint64_t>(v->number);
  return true;
}

const json::Value* stateDomains(const json::Value& v, std::string_view tag, uint64_t& startMs, uint64_t& intervalMs) {
  uint64_t version = 0;
  if (v.type != json::Value::Type::Object || !jsonCount(v.get(tag), version) || version != 1 ||
      !jsonCount(v.get("start"), startMs) || !jsonCount(v.get("interval"), intervalMs) || intervalMs == 0)
    return nullptr;
  const json::Value* domains = v.get("domains");
  return domains && domains->type == json::Value::Type::Array ? domains : nullptr;
}

}  // namespace moat::mta::daemon::report_mail
