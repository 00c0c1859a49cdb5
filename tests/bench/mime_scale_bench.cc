// tests/bench/mime_scale_bench.cc — how the MIME parse at Depth::Text (what the rules ask
// for) and the rule evaluation scale with hostile peer-controlled text: for each shape,
// the time at 64 KB, 256 KB and 1 MB, and the ratio per quadrupling (about 4 is linear,
// about 16 quadratic). A regression check for the audit's F1 (quadratic URI extraction);
// not part of the test suite's pass/fail, since timings belong here, not in unit tests.
//   mime_scale_bench [SHAPE...]     (no argument: every shape)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "filters/mime/mime.h"
#include "filters/rules/rules.h"
#include "policy/errors.h"

using namespace moat::filters;

namespace {

std::string repeat(const std::string& unit, size_t bytes) {
  std::string out;
  out.reserve(bytes + unit.size());
  while (out.size() < bytes) out += unit;
  return out;
}

std::string message(const std::string& type, const std::string& body, const std::string& extraHeaders = "") {
  return "From: a@example.test\r\nTo: b@example.test\r\nSubject: scale\r\n" + extraHeaders +
         "MIME-Version: 1.0\r\nContent-Type: " + type + "\r\n\r\n" + body;
}

struct Shape {
  const char* name;
  std::function<std::string(size_t)> make;  // a message with about this many bytes of payload
};

std::vector<Shape> shapes() {
  return {
      {"uri-lines", [](size_t n) { return message("text/plain", repeat("see http://evil.test/ now\r\n", n)); }},
      {"uri-distinct",
       [](size_t n) {
         std::string body;
         for (size_t i = 0; body.size() < n; ++i) body += "see http://h" + std::to_string(i) + ".test/ now\r\n";
         return message("text/plain", body);
       }},
      {"www-words",
       [](size_t n) { return message("text/plain", repeat("xwww.a www.b.test mailto:x@y ftp://f/ ", n)); }},
      {"html-script", [](size_t n) { return message("text/html", repeat("<script>x</script>", n)); }},
      {"html-script-open", [](size_t n) { return message("text/html", repeat("<style>", n)); }},
      {"html-amp", [](size_t n) { return message("text/html", repeat("&", n)); }},
      {"html-href", [](size_t n) { return message("text/html", repeat("<a href=\"http://evil.test/\">x</a> ", n)); }},
      {"html-comment", [](size_t n) { return message("text/html", repeat("<!-- <!--", n)); }},
      {"html-open-tag", [](size_t n) { return message("text/html", repeat("<a <b ", n)); }},
      {"header-words",
       [](size_t n) {
         std::string v = repeat("=?a?b?x ", n);
         std::string folded;
         for (size_t i = 0; i < v.size(); i += 72) folded += "\r\n " + v.substr(i, 72);
         return message("text/plain", "hi\r\n", "X-Words:" + folded + "\r\n");
       }},
      {"header-words-nospace",
       [](size_t n) { return message("text/plain", "hi\r\n", "X-Words: " + repeat("=?a?b?x", n) + "\r\n"); }},
      {"ct-params",
       [](size_t n) {
         std::string p;
         for (size_t i = 0; p.size() < n; ++i) p += "; a*" + std::to_string(i % 1000) + "=x";
         return message("text/plain" + p, "hi\r\n");
       }},
      {"qp-body",
       [](size_t n) {
         return "MIME-Version: 1.0\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
                repeat("=\r\n=3D http://x.test/ ", n);
       }},
      {"multipart-parts",
       [](size_t n) {
         return message("multipart/mixed; boundary=b", repeat("--b\r\n\r\nsee http://evil.test/\r\n", n) + "--b--\r\n");
       }},
      {"long-line", [](size_t n) { return message("text/plain", repeat("a", n)); }},
  };
}

double timeParse(const std::string& raw, const rules::RuleSet& set) {
  auto start = std::chrono::steady_clock::now();
  mime::Limits limits;
  limits.maxParts = 1000000;  // the shape, not the part limit, is measured
  auto msg = mime::parse(raw, limits, mime::Depth::Text);
  rules::Input in;
  in.mime = msg.get();
  in.raw = raw;
  volatile double score = set.evaluate(in).score;
  (void)score;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  // MIME_SCALE_BIG=1 adds 4 MB, to tell a slow constant from a growing ratio.
  std::vector<size_t> kSizes = {64, 256, 1024};
  if (getenv("MIME_SCALE_BIG")) kSizes.push_back(4096);
  moat::policy::Errors errors;
  // A few rules of every kind that reads rendered text, so evaluate() walks it all.
  auto set = rules::RuleSet::fromText(
      "body B1 /cheap offer/\nscore B1 1\nrawbody R1 /zzz/\nscore R1 1\nuri U1 /evil\\.test/\nscore U1 1\n"
      "header H1 ALL =~ /zzz/\nscore H1 1\nfull F1 /zzz/\nscore F1 1\n",
      "bench.cf", rules::Options{}, errors);
  for (const auto& s : shapes()) {
    bool wanted = argc == 1;
    for (int i = 1; i < argc; ++i) wanted = wanted || !std::strcmp(argv[i], s.name);
    if (!wanted) continue;
    double prev = 0;
    std::printf("%-22s", s.name);
    for (size_t kb : kSizes) {
      double t = timeParse(s.make(kb * 1024), *set);
      std::printf("  %5zu KB %8.4fs", kb, t);
      if (prev > 0) std::printf(" (x%.1f)", t / prev);
      prev = t;
      std::fflush(stdout);
    }
    std::printf("\n");
  }
  return 0;
}
