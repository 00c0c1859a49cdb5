#!/bin/bash
# Starts Moat for ../../../shared/bench/relay-bench.sh: listens on 127.0.0.1:$MTA_PORT and
# relays everything to 127.0.0.1:$SINK_PORT, with the same durability as the peers (the
# 250 after DATA only once the message is fsynced). Fresh spool on every start.
# Knobs: MOAT_BIN (default build/moat of this checkout), MOAT_BENCH_DIR, MOAT_SPOOL_SYNC (fsync|syncfs),
# MOAT_BENCH_NETWORKS / MOAT_BENCH_DOMAINS (TOML list items for [relay]; an empty networks list
# makes the load generator an inbound client, so SPF and DMARC apply), MOAT_BENCH_EXTRA
# (extra TOML appended, e.g. filter sections), MOAT_BENCH_REVERSE_DNS (true|false, default
# false: the client's name would be asked of /etc/resolv.conf's servers, which are off
# loopback, and the bench talks to nothing off loopback; the peers' smtpd find 127.0.0.1's
# name in /etc/hosts, without a query).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN=${MOAT_BIN:-$HERE/../../build/moat}
DIR=${MOAT_BENCH_DIR:-/tmp/bench-moat}
case "$DIR" in /tmp/bench-*) ;; *) echo "MOAT_BENCH_DIR must be under /tmp/bench-*" >&2; exit 2;; esac
rm -rf "$DIR"; mkdir -p "$DIR"
# Outside the here-document: quotes inside ${VAR-word} are removed there.
NETWORKS=${MOAT_BENCH_NETWORKS-'"127.0.0.0/8"'}
cat > "$DIR/moat.toml" <<CF
[server]
hostname = "moat.bench.example"
spool_dir = "spool"
control_socket = "moat.sock"
log_file = "moat.log"
min_free_disk = "1M"
spool_sync = "${MOAT_SPOOL_SYNC:-fsync}"
reverse_dns = ${MOAT_BENCH_REVERSE_DNS:-false}

[[listener]]
address = "127.0.0.1:${MTA_PORT:-2525}"

[relay]
networks = [$NETWORKS]
domains = [${MOAT_BENCH_DOMAINS:-}]

[limits]
max_connections_per_ip = 1000

[[route]]
to = ["smtp:127.0.0.1:${SINK_PORT:-2626}"]
tls = "none"

[queue]
max_per_destination = 50
max_deliveries = 1000
${MOAT_BENCH_EXTRA:-}
CF
echo $$ > "$DIR/moat.pid"  # exec keeps the PID: moat-stop.sh signals Moat itself
exec "$BIN" serve -c "$DIR/moat.toml"
