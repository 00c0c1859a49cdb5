#!/bin/bash
# Stops the Moat that tests/bench/moat-start.sh started (SIGTERM by its PID: a graceful stop,
# in-flight deliveries finish) and waits for it to exit, at most 30 s. The harness times
# this as stop_s. Same knobs as moat-start.sh (MOAT_BENCH_DIR).
set -uo pipefail
DIR=${MOAT_BENCH_DIR:-/tmp/bench-moat}
pid=$(cat "$DIR/moat.pid" 2>/dev/null) || exit 0
[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || exit 0
for _ in $(seq 300); do
  kill -0 "$pid" 2>/dev/null || exit 0
  sleep 0.1
done
echo "moat (pid $pid) still running 30 s after SIGTERM" >&2
exit 1
