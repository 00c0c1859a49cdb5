#!/usr/bin/env bash
# tests/fuzz/run.sh [SECONDS] — builds the SMTP, zip, PROXY header, MIME, DNS/policy record,
# DKIM/ARC and peer (SMTP client replies, milter packets, spool envelopes) libFuzzer targets
# with clang in build-fuzz/ (-DMOAT_FUZZ=ON, ASan+UBSan) and runs each for SECONDS (default 60)
# from the committed seed corpus. New interesting inputs go to a scratch folder, not into the
# corpus; a crash leaves build-fuzz/<target>-crash-* and makes the script fail.
# Env: JOBS (build parallelism, default 1), MOAT_SHARED_DIR (passed on to CMake when set).
set -euo pipefail

secs="${1:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="$root/build-fuzz"
targets=(fuzz_smtp_command fuzz_smtp_data fuzz_zip fuzz_proxy_header fuzz_mime fuzz_records fuzz_auth fuzz_peer)

cmake_args=(-S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOAT_TESTS=ON -DMOAT_FUZZ=ON)
command -v ninja >/dev/null && cmake_args+=(-G Ninja)
[[ -n "${MOAT_SHARED_DIR:-}" ]] && cmake_args+=("-DMOAT_SHARED_DIR=$MOAT_SHARED_DIR")
CC=clang CXX=clang++ cmake "${cmake_args[@]}" >/dev/null
cmake --build "$build" -j"${JOBS:-1}" --target "${targets[@]}"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  echo "== $t for ${secs}s"
  "$build/tests/fuzz/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
    -print_final_stats=1 -artifact_prefix="$build/$t-" "$scratch/$t" "$root/tests/fuzz/corpus/$t"
done
echo "fuzzing finished without crashes"
