// Tests for filters/uribl/uribl.h: which hosts a message's URIs name, what each is looked up
// as (the registered domain by the public suffix list, IPv4 literals reversed), the cap,
// duplicates and exemptions. What a list's answer means is dnsbl::classify (dnsbl_test).
#include "filters/uribl/uribl.h"

#include <catch2/catch.hpp>

using moat::filters::uribl::targetOf;
using moat::filters::uribl::targets;
using moat::filters::uribl::uriHosts;

namespace {
std::vector<std::string> hosts(std::string_view uri) { return uriHosts(uri); }
std::string looked(std::string_view host) { return targetOf(host).name; }
std::string label(std::string_view host) { return targetOf(host).label; }

std::vector<std::string> names(const std::vector<std::string>& uris, const std::vector<std::string>& exempt = {},
                               size_t max = 20, bool* truncated = nullptr) {
  auto t = targets(uris, exempt, max);
  if (truncated) *truncated = t.truncated;
  std::vector<std::string> out;
  for (const auto& x : t.list) out.push_back(x.name);
  return out;
}
}  // namespace

TEST_CASE("URI hosts come from http, https, ftp and mailto URIs without user, port or path") {
  REQUIRE(hosts("http://Example.TEST/path?q=1") == std::vector<std::string>{"Example.TEST"});
  REQUIRE(hosts("HTTPS://user:pw@shop.example.test:8443/x") == std::vector<std::string>{"shop.example.test"});
  REQUIRE(hosts("ftp://files.example.test") == std::vector<std::string>{"files.example.test"});
  REQUIRE(hosts("http://evil.test#frag") == std::vector<std::string>{"evil.test"});
  REQUIRE(hosts("http://evil.test\\@good.test/") == std::vector<std::string>{"evil.test"});
  REQUIRE(hosts("http://good.test@evil.test/") == std::vector<std::string>{"evil.test"});
  REQUIRE(hosts("mailto:a@one.test,b@two.test?subject=hi@three.test") ==
          std::vector<std::string>{"one.test", "two.test"});
  REQUIRE(hosts("MAILTO:someone@Mail.Example.test") == std::vector<std::string>{"Mail.Example.test"});
  // Not looked up: IPv6 literals, other schemes, relative links, empty hosts.
  REQUIRE(hosts("http://[2001:db8::1]/").empty());
  REQUIRE(hosts("javascript:alert(1)").empty());
  REQUIRE(hosts("/relative/path").empty());
  REQUIRE(hosts("http:///path").empty());
  REQUIRE(hosts("mailto:nobody").empty());
}

TEST_CASE("a host is looked up as its registered domain by the public suffix list") {
  REQUIRE(looked("www.Example.COM") == "example.com");
  REQUIRE(looked("a.b.c.example.co.uk") == "example.co.uk");
  REQUIRE(looked("example.co.uk.") == "example.co.uk");
  REQUIRE(looked("shop.evil.test") == "evil.test");
  // A private-section suffix: each blog is its own registrant.
  REQUIRE(looked("spam.blogspot.com") == "spam.blogspot.com");
  // Public suffixes and single labels name no organisation.
  REQUIRE(looked("co.uk").empty());
  REQUIRE(looked("com").empty());
  REQUIRE(looked("localhost").empty());
  // Internationalized hosts are looked up as A-labels.
  REQUIRE(looked("www.b\xc3\xbc"
                 "cher.example") == "xn--bcher-kva.example");
  REQUIRE(label("www.example.com") == "example.com");
}

TEST_CASE("IPv4 literal hosts are looked up reversed and other numeric hosts not at all") {
  REQUIRE(looked("192.0.2.10") == "192.0.2.10");
  REQUIRE(label("192.0.2.10") == "10.2.0.192");
  REQUIRE(hosts("http://192.0.2.10:8080/x") == std::vector<std::string>{"192.0.2.10"});
  REQUIRE(looked("3232235777").empty());
  REQUIRE(looked("10.1").empty());
  REQUIRE(looked("999.1.1.1").empty());
}

TEST_CASE("garbage hosts are skipped") {
  REQUIRE(looked("").empty());
  REQUIRE(looked("exa mple.com").empty());
  REQUIRE(looked("evil..test").empty());
  REQUIRE(looked("%65vil.test").empty());
  REQUIRE(looked("evil.test<script>").empty());
  REQUIRE(looked(std::string(70, 'a') + ".test").empty());
  REQUIRE(looked(std::string(300, 'a')).empty());
  REQUIRE(looked("bad\xff.test").empty());
}

TEST_CASE("the names looked up are distinct in order of appearance and capped") {
  REQUIRE(names({"http://www.b.test/", "http://a.test/", "https://shop.b.test/x", "mailto:x@mail.a.test",
                 "http://192.0.2.1/", "ftp://192.0.2.1/", "javascript:void(0)", "http://c.example.co.uk/"}) ==
          std::vector<std::string>{"b.test", "a.test", "192.0.2.1", "example.co.uk"});
  std::vector<std::string> many;
  for (int i = 0; i < 50; ++i) many.push_back("http://d" + std::to_string(i) + ".test/");
  bool truncated = false;
  auto capped = names(many, {}, 20, &truncated);
  REQUIRE(capped.size() == 20);
  REQUIRE(capped.front() == "d0.test");
  REQUIRE(capped.back() == "d19.test");
  REQUIRE(truncated);
  // Exactly the cap is not truncation; repeats of one domain never count twice.
  std::vector<std::string> same(100, "http://www.same.test/");
  same.push_back("http://other.test/");
  REQUIRE(names(same, {}, 2, &truncated) == std::vector<std::string>{"same.test", "other.test"});
  REQUIRE_FALSE(truncated);
}

TEST_CASE("exempt domains and their subdomains are never looked up") {
  std::vector<std::string> uris = {"http://www.partner.test/", "http://partner.test.evil.test/",
                                   "https://mail.own.example.co.uk/", "http://other.own.example.co.uk/",
                                   "http://notpartner.test/"};
  REQUIRE(names(uris, {"partner.test", "mail.own.example.co.uk"}) ==
          std::vector<std::string>{"evil.test", "example.co.uk", "notpartner.test"});
  REQUIRE(names(uris, {"example.co.uk", "test"}).empty());
}
