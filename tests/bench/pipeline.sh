#!/bin/bash
# tests/bench/pipeline.sh — relay throughput with the whole filter pipeline on against the
# same relay with the filters off, in one run (issue: content filters). Not part of the test
# suite's pass/fail: it prints RESULT lines and a table of on/off ratios.
#
# "on":  SPF (fail = reject), DKIM verify, DMARC (the sender publishes p=reject), MIME,
#        antivirus (libclamav in process, scan_parts on, a database of HDB hash and NDB body
#        signatures generated here: freshclam cannot reach the network), attachments
#        (a block list of extensions and types), and Debian's stock SpamAssassin rules
#        (/usr/share/spamassassin/*.cf, PCRE2 fallback on) with the default thresholds.
# "off": SPF, DKIM verify and DMARC disabled, no antivirus database, no attachment or rule
#        set: what is left is the MIME parse every message gets.
# The load generator is an inbound client (not in relay.networks), as for filters.sh, over
# the shared harness (../../../shared/bench/relay-bench.sh). Messages: the DKIM-signed 4 KB
# and 256 KB ones of the shared rspamd-prepare.sh, and a 100 KB multipart message with a
# base64 PDF attachment made here (it passes DMARC by SPF).
#   tests/bench/pipeline.sh [count=5000] [concurrency=20] [HDB=1000000] [NDB=100000]
# (4 KB: count messages; the attachment message: count/2; 256 KB: count/10.)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH=${MOAT_SHARED_BENCH:-$HERE/../../../shared/bench}
COUNT=${1:-5000}; CONC=${2:-20}; HDB=${3:-1000000}; NDB=${4:-100000}
R=${RSPAMD_BENCH_BASE:-/tmp/bench-rspamd}
"$BENCH/peers/rspamd-prepare.sh" >/dev/null
D=$(mktemp -d /tmp/bench-moat-pipeline-XXXXXX)
DNS_PID=""
cleanup() {
  if [ -n "$DNS_PID" ]; then kill "$DNS_PID" 2>/dev/null || true; wait "$DNS_PID" 2>/dev/null || true; fi
  rm -rf "$D"
}
trap cleanup EXIT
mkdir -p "$D/clamav" "$D/empty"
/usr/bin/python3 "$HERE/bench_data.py" auth-zone "$D/zone.yaml" "$R/dkim.txtrecord"
/usr/bin/python3 "$HERE/bench_data.py" clamav-db "$D/clamav" "$HDB" "$NDB"
/usr/bin/python3 - "$D" <<'PY'
import base64, random, sys
d = sys.argv[1]
rnd = random.Random(7)
pdf = b"%PDF-1.4\n" + bytes(rnd.getrandbits(8) for _ in range(72000))
b64 = base64.encodebytes(pdf).decode().replace("\n", "\r\n")
text = "Please find the quarterly report attached.\r\n" * 20
msg = ("From: Bench <bench@sender.example>\r\nTo: rcpt@dest.example\r\n"
       "Subject: quarterly report\r\nDate: Sun, 22 Nov 2026 12:00:00 +0000\r\n"
       "Message-ID: <bench-att@sender.example>\r\nMIME-Version: 1.0\r\n"
       "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
       "--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + text +
       "--b1\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n"
       "Content-Disposition: attachment; filename=\"report.pdf\"\r\n"
       "Content-Transfer-Encoding: base64\r\n\r\n" + b64 + "--b1--\r\n")
open(f"{d}/msg-att.eml", "w", newline="").write(msg)
PY
/usr/bin/python3 "$HERE/../support/dns_server.py" --zone "$D/zone.yaml" --port 0 --portfile "$D/port" &
DNS_PID=$!
for _ in $(seq 100); do [ -s "$D/port" ] && break; sleep 0.1; done
PORT=$(cat "$D/port")
RULES=$(ls /usr/share/spamassassin/*.cf 2>/dev/null | sed 's/.*/"&"/' | paste -sd, -)
[ -n "$RULES" ] || { echo "pipeline.sh: no /usr/share/spamassassin/*.cf (apt-get install spamassassin)" >&2; exit 1; }

export MAIL_FROM=bench@sender.example RCPT_TO=rcpt@dest.example
export MOAT_BENCH_NETWORKS="" MOAT_BENCH_DOMAINS='"dest.example"'
OUT=${BENCH_OUT:-$D/results.txt}
: > "$OUT"
for msg in 4k att 256k; do
  case $msg in
    4k) file="$R/msgs/msg-4k.eml"; n=$COUNT; kb=4 ;;
    att) file="$D/msg-att.eml"; n=$((COUNT / 2)); kb=100 ;;
    256k) file="$R/msgs/msg-256k.eml"; n=$((COUNT / 10)); kb=256 ;;
  esac
  for mode in off on; do
    if [ $mode = off ]; then
      filters="[spf]
enabled = false
[dkim]
verify = false
[dmarc]
enabled = false
[antivirus]
database_dir = \"$D/empty\""
    else
      filters="[spf]
fail = \"reject\"
[antivirus]
database_dir = \"$D/clamav\"
[attachments]
block_extensions = [\"exe\", \"scr\", \"js\", \"vbs\", \"bat\", \"cmd\", \"com\", \"pif\", \"jar\"]
block_types = [\"application/x-msdownload\"]
[rules]
files = [$RULES]
fallback = \"pcre2\""
    fi
    echo "== pipeline $mode, $n x $msg at $CONC sessions" >&2
    MSG_FILE="$file" MOAT_BENCH_EXTRA="[dns]
nameservers = [\"127.0.0.1:$PORT\"]
$filters" "$BENCH/relay-bench.sh" "moat-pipeline-$mode-$msg-$n-$CONC" "$HERE/moat-start.sh" "$HERE/moat-stop.sh" "$n" "$CONC" "$kb" \
      | tee -a "$OUT" | grep '^RESULT' || echo "RESULT name=moat-pipeline-$mode-$msg FAILED" | tee -a "$OUT"
  done
done
/usr/bin/python3 - "$OUT" <<'PY'
import re, sys
rows = {}
for line in open(sys.argv[1]):
    if not line.startswith("RESULT"):
        continue
    f = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
    m = re.match(r"moat-pipeline-(on|off)-(\w+)-", f.get("name", ""))
    if m:
        rows.setdefault(m.group(2), {})[m.group(1)] = f
print("| message | filters off relayed/s | full pipeline relayed/s | on/off | CPU ms/msg off | CPU ms/msg on | RSS MB off | RSS MB on |")
print("|---|---|---|---|---|---|---|---|")
for msg, r in rows.items():
    off, on = r.get("off", {}), r.get("on", {})
    def g(d, k):
        try:
            return float(d.get(k, "nan"))
        except ValueError:
            return float("nan")
    ratio = g(on, "relayed_per_s") / g(off, "relayed_per_s") if g(off, "relayed_per_s") else float("nan")
    print(f"| {msg} | {g(off,'relayed_per_s'):.0f} | {g(on,'relayed_per_s'):.0f} | {ratio:.2f} | "
          f"{g(off,'cpu_ms_per_msg'):.2f} | {g(on,'cpu_ms_per_msg'):.2f} | {g(off,'rss_mb'):.1f} | {g(on,'rss_mb'):.1f} |")
PY
