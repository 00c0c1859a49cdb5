// tests/mta/metrics_test.cc — mta/server/metrics: refusals counted by stage and class, the
// transaction counters fed by MAIL and DATA refusals only, the spool gauges, the histograms
// (delivery latency, filter durations), filter verdicts, authentication results with their
// fixed label sets, and the resolver's counts.
#include "mta/server/metrics.h"

#include <catch2/catch.hpp>

#include "mta/dns/cares_resolver.h"

namespace {
bool has(const std::string& text, const std::string& line) { return text.find(line) != std::string::npos; }
}  // namespace

using moat::mta::server::Metrics;
using moat::mta::server::RejectStage;

TEST_CASE("refusals are counted by stage and class", "[metrics]") {
  Metrics m;
  m.countReject(RejectStage::Connect, 421);
  m.countReject(RejectStage::Connect, 554);
  m.countReject(RejectStage::Mail, 451);  // SPF temperror
  m.countReject(RejectStage::Mail, 452);  // low disk
  m.countReject(RejectStage::Mail, 554);  // blocked sender
  m.countReject(RejectStage::Rcpt, 554);  // relay denied
  m.countReject(RejectStage::Rcpt, 550);  // unknown recipient
  m.countReject(RejectStage::Data, 550);
  std::string text = m.prometheus();
  CHECK(text.find("# TYPE moat_rejects_total counter\n") != std::string::npos);
  CHECK(text.find("moat_rejects_total{stage=\"connect\",class=\"4xx\"} 1\n") != std::string::npos);
  CHECK(text.find("moat_rejects_total{stage=\"connect\",class=\"5xx\"} 1\n") != std::string::npos);
  CHECK(text.find("moat_rejects_total{stage=\"mail\",class=\"4xx\"} 2\n") != std::string::npos);
  CHECK(text.find("moat_rejects_total{stage=\"mail\",class=\"5xx\"} 1\n") != std::string::npos);
  CHECK(text.find("moat_rejects_total{stage=\"rcpt\",class=\"4xx\"} 0\n") != std::string::npos);
  CHECK(text.find("moat_rejects_total{stage=\"rcpt\",class=\"5xx\"} 2\n") != std::string::npos);
  CHECK(text.find("moat_rejects_total{stage=\"data\",class=\"5xx\"} 1\n") != std::string::npos);
  // Whole transactions: MAIL and DATA refusals, not single recipients nor connections.
  CHECK(text.find("\nmoat_messages_tempfailed_total 2\n") != std::string::npos);
  CHECK(text.find("\nmoat_messages_rejected_total 2\n") != std::string::npos);
}

TEST_CASE("the spool gauges are there once the daemon sets them", "[metrics]") {
  Metrics m;
  CHECK(m.prometheus().find("moat_spool_free_bytes") == std::string::npos);
  m.spoolFreeBytes = [] { return uint64_t{5} << 20; };
  m.spoolMinFreeBytes = [] { return uint64_t{100} << 20; };
  std::string text = m.prometheus();
  CHECK(text.find("# TYPE moat_spool_free_bytes gauge\nmoat_spool_free_bytes 5242880\n") != std::string::npos);
  CHECK(text.find("# TYPE moat_spool_min_free_bytes gauge\nmoat_spool_min_free_bytes 104857600\n") !=
        std::string::npos);
}

TEST_CASE("rate limit refusals are counted by limit", "[metrics]") {
  Metrics m;
  std::string text = m.prometheus();
  CHECK(text.find("# TYPE moat_rate_limited_total counter\n") != std::string::npos);
  CHECK(text.find("moat_rate_limited_total{limit=\"messages_per_sender\"} 0\n") != std::string::npos);
  m.rateLimited[0] += 2;
  ++m.rateLimited[1];
  text = m.prometheus();
  CHECK(text.find("moat_rate_limited_total{limit=\"messages_per_client\"} 2\n") != std::string::npos);
  CHECK(text.find("moat_rate_limited_total{limit=\"recipients_per_client\"} 1\n") != std::string::npos);
  CHECK(text.find("moat_rate_limited_total{limit=\"messages_per_sender\"} 0\n") != std::string::npos);
}

TEST_CASE("greylisting is counted by result", "[metrics]") {
  Metrics m;
  std::string text = m.prometheus();
  CHECK(text.find("# TYPE moat_greylist_total counter\n") != std::string::npos);
  CHECK(text.find("moat_greylist_total{result=\"allowed\"} 0\n") != std::string::npos);
  m.greylistDeferred += 3;
  ++m.greylistPassed;
  text = m.prometheus();
  CHECK(text.find("moat_greylist_total{result=\"deferred\"} 3\n") != std::string::npos);
  CHECK(text.find("moat_greylist_total{result=\"passed\"} 1\n") != std::string::npos);
  CHECK(text.find("moat_greylist_total{result=\"allowed\"} 0\n") != std::string::npos);
}

TEST_CASE("the delivery latency histogram renders cumulative buckets", "[metrics]") {
  Metrics m;
  m.observeLatency(0.01);  // on a bound: counted in it (le is "less or equal")
  m.observeLatency(2);
  m.observeLatency(100000);  // over the last bound: +Inf only
  std::string text = m.prometheus();
  CHECK(has(text,
            "# TYPE moat_delivery_latency_seconds histogram\n"
            "moat_delivery_latency_seconds_bucket{le=\"0.01\"} 1\n"
            "moat_delivery_latency_seconds_bucket{le=\"0.05\"} 1\n"));
  CHECK(has(text,
            "moat_delivery_latency_seconds_bucket{le=\"1\"} 1\nmoat_delivery_latency_seconds_bucket{le=\"5\"} 2\n"));
  CHECK(has(text,
            "moat_delivery_latency_seconds_bucket{le=\"86400\"} 2\n"
            "moat_delivery_latency_seconds_bucket{le=\"+Inf\"} 3\n"
            "moat_delivery_latency_seconds_sum 100002.010000\n"
            "moat_delivery_latency_seconds_count 3\n"));
}

TEST_CASE("filter verdicts and durations are counted per filter", "[metrics]") {
  Metrics m;
  CHECK_FALSE(has(m.prometheus(), "moat_filter_verdicts_total"));  // nothing ran yet
  m.observeFilter("spf", "continue", 0.0005);
  m.observeFilter("spf", "tempfail", 2.0);
  m.observeFilter("dmarc", "reject", 0.02);
  std::string text = m.prometheus();
  CHECK(has(text, "# TYPE moat_filter_verdicts_total counter\n"));
  CHECK(has(text, "moat_filter_verdicts_total{filter=\"spf\",verdict=\"continue\"} 1\n"));
  CHECK(has(text, "moat_filter_verdicts_total{filter=\"spf\",verdict=\"tempfail\"} 1\n"));
  CHECK(has(text, "moat_filter_verdicts_total{filter=\"spf\",verdict=\"reject\"} 0\n"));
  CHECK(has(text, "moat_filter_verdicts_total{filter=\"dmarc\",verdict=\"reject\"} 1\n"));
  CHECK(has(text, "moat_filter_verdicts_total{filter=\"dmarc\",verdict=\"disconnect\"} 0\n"));
  CHECK(has(text, "# TYPE moat_filter_duration_seconds histogram\n"));
  CHECK(has(text, "moat_filter_duration_seconds_bucket{filter=\"spf\",le=\"0.001\"} 1\n"));
  CHECK(has(text, "moat_filter_duration_seconds_bucket{filter=\"spf\",le=\"1\"} 1\n"));
  CHECK(has(text, "moat_filter_duration_seconds_bucket{filter=\"spf\",le=\"2.5\"} 2\n"));
  CHECK(has(text, "moat_filter_duration_seconds_bucket{filter=\"spf\",le=\"30\"} 2\n"));
  CHECK(has(text, "moat_filter_duration_seconds_bucket{filter=\"spf\",le=\"+Inf\"} 2\n"));
  CHECK(has(text, "moat_filter_duration_seconds_sum{filter=\"spf\"} 2.000500\n"));
  CHECK(has(text, "moat_filter_duration_seconds_count{filter=\"spf\"} 2\n"));
  CHECK(has(text, "moat_filter_duration_seconds_bucket{filter=\"dmarc\",le=\"0.01\"} 0\n"));
  CHECK(has(text, "moat_filter_duration_seconds_bucket{filter=\"dmarc\",le=\"0.025\"} 1\n"));
  CHECK(has(text, "moat_filter_duration_seconds_count{filter=\"dmarc\"} 1\n"));
}

TEST_CASE("a registered filter shows at zero before its first run, and its counts are kept", "[metrics]") {
  Metrics m;
  m.registerFilter("spf");
  std::string text = m.prometheus();
  CHECK(has(text, "moat_filter_verdicts_total{filter=\"spf\",verdict=\"continue\"} 0\n"));
  CHECK(has(text, "moat_filter_duration_seconds_count{filter=\"spf\"} 0\n"));
  m.observeFilter("spf", "reject", 0.01);
  m.registerFilter("spf");  // a reload registers it again
  CHECK(has(m.prometheus(), "moat_filter_verdicts_total{filter=\"spf\",verdict=\"reject\"} 1\n"));
  for (size_t i = 0; i < Metrics::kMaxFilters + 5; ++i) m.registerFilter("f" + std::to_string(i));
  CHECK(m.filters.size() == Metrics::kMaxFilters);  // never past the bound
}

TEST_CASE("filter names beyond the bound are counted as other", "[metrics]") {
  Metrics m;
  for (size_t i = 0; i < Metrics::kMaxFilters + 5; ++i) m.observeFilter("f" + std::to_string(i), "continue", 0.001);
  CHECK(m.filters.size() == Metrics::kMaxFilters + 1);
  REQUIRE(m.filters.count("other") == 1);
  CHECK(m.filters.at("other").verdicts[0] == 5);
  CHECK(m.filters.at("other").duration.count() == 5);
  // A name already known keeps its own series.
  m.observeFilter("f0", "tag", 0.001);
  CHECK(m.filters.at("f0").verdicts[1] == 1);
}

TEST_CASE("authentication results have fixed label sets", "[metrics]") {
  Metrics m;
  std::string text = m.prometheus();
  // Every known value is there from the start, at 0.
  for (const char* r : Metrics::kSpfResults)
    CHECK(has(text, std::string("moat_spf_results_total{result=\"") + r + "\"} 0\n"));
  for (const char* r : Metrics::kDkimResults)
    CHECK(has(text, std::string("moat_dkim_results_total{result=\"") + r + "\"} 0\n"));
  for (const char* r : Metrics::kDmarcResults)
    CHECK(has(text, std::string("moat_dmarc_results_total{result=\"") + r + "\"} 0\n"));
  for (const char* d : Metrics::kDmarcDispositions)
    CHECK(has(text, std::string("moat_dmarc_dispositions_total{disposition=\"") + d + "\"} 0\n"));
  m.countSpf("pass");
  m.countSpf("temperror");
  m.countSpf("temperror");
  m.countSpf("hello\"} 99\nevil");  // never a label of its own
  m.countDkim("pass");
  m.countDkim("policy");
  m.countDkim("none");
  m.countDkim("bogus");
  m.countDmarc("fail", "reject");
  m.countDmarc("pass", "none");
  m.countDmarc("none", "");  // no record applied: no disposition
  m.countDmarc("strange", "discard");
  text = m.prometheus();
  CHECK(has(text, "# TYPE moat_spf_results_total counter\n"));
  CHECK(has(text, "moat_spf_results_total{result=\"pass\"} 1\n"));
  CHECK(has(text, "moat_spf_results_total{result=\"temperror\"} 2\n"));
  CHECK(has(text, "moat_spf_results_total{result=\"other\"} 1\n"));
  CHECK_FALSE(has(text, "evil"));
  CHECK(has(text, "moat_dkim_results_total{result=\"pass\"} 1\n"));
  CHECK(has(text, "moat_dkim_results_total{result=\"policy\"} 1\n"));
  CHECK(has(text, "moat_dkim_results_total{result=\"none\"} 1\n"));
  CHECK(has(text, "moat_dkim_results_total{result=\"other\"} 1\n"));
  CHECK(has(text, "moat_dmarc_results_total{result=\"fail\"} 1\n"));
  CHECK(has(text, "moat_dmarc_results_total{result=\"pass\"} 1\n"));
  CHECK(has(text, "moat_dmarc_results_total{result=\"none\"} 1\n"));
  CHECK(has(text, "moat_dmarc_results_total{result=\"other\"} 1\n"));
  CHECK(has(text, "moat_dmarc_dispositions_total{disposition=\"reject\"} 1\n"));
  CHECK(has(text, "moat_dmarc_dispositions_total{disposition=\"none\"} 1\n"));
  CHECK(has(text, "moat_dmarc_dispositions_total{disposition=\"quarantine\"} 0\n"));
  CHECK(has(text, "moat_dmarc_dispositions_total{disposition=\"other\"} 1\n"));
}

TEST_CASE("the resolver's counts are rendered once the daemon sets them", "[metrics]") {
  Metrics m;
  CHECK_FALSE(has(m.prometheus(), "moat_dns_"));
  moat::mta::dns::ResolverStats st;
  st.cacheHits = 7;
  st.lookups[3][0] = 4;  // TXT answer
  st.lookups[0][4] = 2;  // A timeout
  m.dnsStats = [st] { return st; };
  std::string text = m.prometheus();
  CHECK(has(text, "# TYPE moat_dns_queries_total counter\n"));
  CHECK(has(text, "moat_dns_queries_total{type=\"TXT\",result=\"answer\"} 4\n"));
  CHECK(has(text, "moat_dns_queries_total{type=\"A\",result=\"timeout\"} 2\n"));
  CHECK(has(text, "moat_dns_queries_total{type=\"TLSA\",result=\"nodata\"} 0\n"));
  CHECK(has(text, "# TYPE moat_dns_cache_hits_total counter\nmoat_dns_cache_hits_total 7\n"));
}
