// tests/mta/metrics_test.cc — mta/server/metrics: refusals counted by stage and class, the
// transaction counters fed by MAIL and DATA refusals only, and the spool gauges.
#include "mta/server/metrics.h"

#include <catch2/catch.hpp>

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
