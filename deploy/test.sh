#!/usr/bin/env bash
# Builds Moat with its tests and runs the whole suite through ctest:
#   1. build/ (Release, the same objects run.sh uses): Catch2 unit and conformance tests,
#      then the integration tests that start the real daemon on loopback;
#   2. build-asan/ (AddressSanitizer + UndefinedBehaviorSanitizer): the whole suite again,
#      the integration tests driving the sanitized daemon, whose every graceful stop must
#      exit 0 (a leak or an error found on the way out fails the test); MOAT_SKIP_ASAN=1
#      skips it;
#   3. the SMTP command and DATA parsers, the zip reader, the PROXY protocol header parser, the
#      MIME parser, the DNS/policy record parsers (SPF, DMARC, TLS-RPT, MTA-STS), the DKIM/ARC
#      parsers and what peers send back (SMTP replies, milter packets, spool envelopes) under
#      libFuzzer for FUZZ_SECONDS each (default 60; 0 skips it), from the committed corpus, as
#      many at once as there are cores.
# Extra arguments go to the first ctest run (-R, -L ...).
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/deps.sh
moat_install_missing "${moat_build_packages[@]}" "${moat_test_packages[@]}"
jobs=$(nproc)
root=$(pwd)

echo "== build (Release) and the whole suite"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOAT_TESTS=ON >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs" "$@")

if [ "${MOAT_SKIP_ASAN:-0}" != 1 ]; then
  echo "== the whole suite under ASan/UBSan"
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOAT_TESTS=ON -DMOAT_SANITIZE=ON >/dev/null
  cmake --build build-asan -j"$jobs"
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j"$jobs")
fi

if [ "${FUZZ_SECONDS:-60}" != 0 ]; then
  echo "== fuzzing the SMTP parsers, the zip reader, the PROXY header, MIME, record, DKIM/ARC and peer reply parsers, ${FUZZ_SECONDS:-60}s each"
  JOBS=$jobs "$root/tests/fuzz/run.sh" "${FUZZ_SECONDS:-60}"
fi
