#!/bin/bash
# tests/bench/run.sh — Moat beside its peers in ONE run, with the shared harness
# (../../../shared/bench/relay-bench.sh): smtp-source -> MTA -> smtp-sink on loopback.
# Not part of the test suite's pass/fail: it prints RESULT lines and a table of ratios.
#
#   tests/bench/run.sh [quick|full|large|twenty]
#     quick:  5,000 x 4 KB at 20 sessions (a few minutes)
#     full:   the standard matrix: 20,000 x 4 KB at 20 and 100 sessions, 2,000 x 256 KB at 20
#     large:  only its 2,000 x 256 KB case (to repeat it: it varies most with the machine)
#     twenty: its two 20-session cases (4 KB and 256 KB), the ones that vary most
#   MOAT_SYNCFS=1 also measures Moat with [server] spool_sync = "syncfs" (row "moatsyncfs").
#   MOAT_BENCH_ROUNDS=N runs the matrix N times, every peer once per round, back to back;
#   the table gives each round's ratios and their medians (a slow stretch of a shared
#   machine then moves one round, not the reported figure).
# Needs root for the private Postfix (it runs as the postfix user). Build Moat first
# (deploy/run.sh or cmake --build build).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH=${MOAT_SHARED_BENCH:-$HERE/../../../shared/bench}
MODE=${1:-quick}
EXTRA_PEERS=""
[ "${MOAT_SYNCFS:-0}" = 1 ] && EXTRA_PEERS=moatsyncfs
OUT=${BENCH_OUT:-/tmp/bench-moat-results-$(date +%s).txt}
: > "$OUT"
if [ "$MODE" = full ]; then
  MATRIX=("20000 20 4" "20000 100 4" "2000 20 256")
elif [ "$MODE" = large ]; then
  MATRIX=("2000 20 256")
elif [ "$MODE" = twenty ]; then
  MATRIX=("20000 20 4" "2000 20 256")
else
  MATRIX=("5000 20 4")
fi
ROUNDS=${MOAT_BENCH_ROUNDS:-1}
for round in $(seq 1 "$ROUNDS"); do
for m in "${MATRIX[@]}"; do
  read -r count conc size <<<"$m"
  name_round=""
  [ "$ROUNDS" -gt 1 ] && name_round="@$round"
  for peer in raw postfix moat $EXTRA_PEERS; do
    sync=fsync
    case $peer in
      raw)     start=-; stop=- ;;
      postfix) start="$BENCH/peers/postfix-start.sh"; stop="$BENCH/peers/postfix-stop.sh" ;;
      moat)    start="$HERE/moat-start.sh"; stop="$HERE/moat-stop.sh" ;;
      moatsyncfs) start="$HERE/moat-start.sh"; stop="$HERE/moat-stop.sh"; sync=syncfs ;;
    esac
    echo "== $peer $count x ${size}KB at $conc sessions${name_round:+, round $round}" >&2
    MOAT_SPOOL_SYNC=$sync "$BENCH/relay-bench.sh" "$peer-$count-$conc-$size$name_round" "$start" "$stop" "$count" "$conc" "$size" \
      | tee -a "$OUT" | grep '^RESULT' || echo "RESULT name=$peer-$count-$conc-$size$name_round FAILED" >> "$OUT"
  done
done
done
/usr/bin/python3 "$HERE/ratios.py" "$OUT"
