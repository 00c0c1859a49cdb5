#!/usr/bin/env bash
# tests/fuzz/run.sh [SECONDS] — builds the SMTP, zip, PROXY header, MIME, DNS/policy record,
# DKIM/ARC and peer (SMTP client replies, milter packets, spool envelopes, clamd replies)
# libFuzzer targets with clang in build-fuzz/ (-DMOAT_FUZZ=ON, ASan+UBSan) and runs each for
# SECONDS (default 60) from the committed seed corpus, JOBS targets at once. New interesting
# inputs go to a scratch folder, not into the corpus; a crash leaves build-fuzz/<target>-crash-*
# and makes the script fail.
# Env: JOBS (build parallelism, and how many fuzzers run at once; default 1), MOAT_SHARED_DIR
# (passed on to CMake when set).
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
# JOBS targets at once (each fuzzer is one process on one core), in batches; each one's
# output goes to its own log, of which its summary is shown (all of it when it failed).
jobs="${JOBS:-1}"
failed=()
for ((i = 0; i < ${#targets[@]}; i += jobs)); do
  batch=("${targets[@]:i:jobs}")
  pids=()
  for t in "${batch[@]}"; do
    mkdir -p "$scratch/$t"
    "$build/tests/fuzz/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
      -print_final_stats=1 -artifact_prefix="$build/$t-" "$scratch/$t" "$root/tests/fuzz/corpus/$t" \
      >"$scratch/$t.log" 2>&1 &
    pids+=("$!")
  done
  for k in "${!batch[@]}"; do
    t="${batch[k]}"
    rc=0
    wait "${pids[k]}" || rc=$?
    echo "== $t for ${secs}s"
    if [[ $rc -ne 0 ]]; then
      tail -n 80 "$scratch/$t.log"
      failed+=("$t")
    else
      grep -E '^(Done [0-9]+ runs|stat::(number_of_executed_units|peak_rss_mb|new_units_added))' "$scratch/$t.log"
    fi
  done
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzzing failed: ${failed[*]} (inputs in $build/<target>-crash-*)"
  exit 1
fi
echo "fuzzing finished without crashes"
