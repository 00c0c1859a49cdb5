#!/bin/bash
# tests/bench/filters.sh — relay throughput with SPF + DKIM + DMARC on against the same relay
# with them off, in one run (issue: authentication filters). The load generator is an inbound
# client (not in relay.networks), sending a DKIM-signed message (the shared rspamd-prepare.sh
# makes the key and the 4 KB / 256 KB messages) whose domain publishes SPF, DKIM and DMARC
# p=reject in a zone served by Moat's test DNS server on loopback.
#   tests/bench/filters.sh [count=10000] [concurrency=20] [4|256]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH=${MOAT_SHARED_BENCH:-$HERE/../../../shared/bench}
COUNT=${1:-10000}; CONC=${2:-20}; KB=${3:-4}
R=${RSPAMD_BENCH_BASE:-/tmp/bench-rspamd}
"$BENCH/peers/rspamd-prepare.sh" >/dev/null
D=$(mktemp -d /tmp/bench-moat-dns-XXXXXX)
/usr/bin/python3 "$HERE/bench_data.py" auth-zone "$D/zone.yaml" "$R/dkim.txtrecord"
/usr/bin/python3 "$HERE/../support/dns_server.py" --zone "$D/zone.yaml" --port 0 --portfile "$D/port" &
DNS_PID=$!
trap 'kill $DNS_PID 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 100); do [ -s "$D/port" ] && break; sleep 0.1; done
PORT=$(cat "$D/port")
export MSG_FILE="$R/msgs/msg-${KB}k.eml" MAIL_FROM=bench@sender.example RCPT_TO=rcpt@dest.example
export MOAT_BENCH_NETWORKS="" MOAT_BENCH_DOMAINS='"dest.example"'
for mode in off on; do
  if [ $mode = off ]; then
    filters='[spf]
enabled = false
[dkim]
verify = false
[dmarc]
enabled = false'
  else
    filters='[spf]
fail = "reject"'
  fi
  MOAT_BENCH_EXTRA="[dns]
nameservers = [\"127.0.0.1:$PORT\"]
$filters" "$BENCH/relay-bench.sh" "moat-filters-$mode-$COUNT-$CONC-$KB" "$HERE/moat-start.sh" "$HERE/moat-stop.sh" "$COUNT" "$CONC" "$KB" | grep '^RESULT'
done
