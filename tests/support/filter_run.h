// tests/support/filter_run.h — runs one filter on one message on a real libuv loop (its
// thread-pool work included) and returns its result: what a session does for the filter.
// Header-only; for filter tests. Untrusted input: none (test messages).
#pragma once
#include <catch2/catch.hpp>

#include <memory>
#include <optional>
#include <string>

#include "filters/filter.h"
#include "filters/mime/mime.h"
#include "mta/runtime/uv.h"

namespace moat::test {

// withMime: parse the message first, as the MIME filter ahead of it would.
inline filters::Result runFilter(const filters::Filter& filter, const std::string& raw, bool withMime) {
  mta::uv::Loop loop;
  filters::Env env;
  env.loop = loop.get();
  auto ctx = std::make_shared<filters::MessageContext>();
  ctx->message = raw;
  if (withMime) ctx->mime = filters::mime::parse(raw, filters::mime::Limits{});
  std::optional<filters::Result> result;
  filter.run(ctx, env, [&](filters::Result r) { result = std::move(r); });
  REQUIRE(loop.runUntil([&] { return result.has_value(); }, 30000));
  return *result;
}

}  // namespace moat::test
