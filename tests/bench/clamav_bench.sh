#!/bin/bash
# tests/bench/clamav_bench.sh — antivirus scan cost per message: Moat's in-process libclamav
# backend and a clamd over INSTREAM (Debian's clamav-daemon, started here on a unix socket
# in a temporary folder, killed by PID at the end), same database, same messages, one run.
# Database: Debian's real ClamAV databases if /var/lib/clamav holds .cvd/.cld files;
# otherwise (freshclam needs the network) a generated one of realistic size: HDB random MD5
# hash signatures and NDB random 20-byte body signatures (the kind the Aho-Corasick matcher
# runs over every byte), plus the EICAR body signature. Messages (made here): a 4 KB text
# message, 100 KB with a base64 attachment, 1 MB with a base64 zip, and the 100 KB one with
# EICAR inside the zip (must be FOUND).
#   tests/bench/clamav_bench.sh [ROUNDS=20] [HDB=1000000] [NDB=100000]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN=${BIN:-$HERE/../../build/tests/bench/clamav_bench}
ROUNDS=${1:-20}
HDB=${2:-1000000}
NDB=${3:-100000}
CLAMD=/usr/sbin/clamd
[ -x "$CLAMD" ] || { echo "clamav_bench: $CLAMD missing (apt-get install clamav-daemon)" >&2; exit 1; }
D=$(mktemp -d /tmp/moat-clamav-bench-XXXXXX)
CLAMD_PID=""
cleanup() {
  if [ -n "$CLAMD_PID" ]; then kill "$CLAMD_PID" 2>/dev/null || true; wait "$CLAMD_PID" 2>/dev/null || true; fi
  rm -rf "$D"
}
trap cleanup EXIT

if ls /var/lib/clamav/*.cvd /var/lib/clamav/*.cld >/dev/null 2>&1; then
  DB=/var/lib/clamav
  echo "== database: Debian's $(ls /var/lib/clamav/*.c[vl]d | xargs -n1 basename | tr '\n' ' ')"
else
  DB=$D/db
  mkdir -p "$DB"
  echo "== database: /var/lib/clamav has no .cvd/.cld (no network for freshclam): generated $HDB HDB + $NDB NDB random signatures"
fi
PYTHONPATH="$HERE" /usr/bin/python3 - "$D" "$DB" "$HDB" "$NDB" <<'PY'
import base64, io, os, random, sys, zipfile
d, db, nhdb, nndb = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
import bench_data
rnd = random.Random(7)
eicar = bench_data.EICAR
if db.startswith(d):
    bench_data.clamav_db(db, nhdb, nndb)
words = ("the of and to in is that for it as was with be by on not this are or from at which report "
         "meeting budget quarter invoice schedule project review").split()
def text(n):
    out, size = [], 0
    while size < n:
        line = " ".join(rnd.choice(words) for _ in range(12))
        out.append(line); size += len(line) + 1
    return "\n".join(out) + "\n"
def b64(data):
    return base64.encodebytes(data).decode()
head = "From: alice@sender.test\nTo: bob@example.test\nSubject: {s}\nMessage-ID: <{s}@bench.test>\nMIME-Version: 1.0\n"
def multipart(subject, name, ctype, payload):
    return (head.format(s=subject) + "Content-Type: multipart/mixed; boundary=B\n\n--B\nContent-Type: text/plain\n\n"
            + text(1500) + f"--B\nContent-Type: {ctype}; name={name}\nContent-Disposition: attachment; filename={name}\n"
            "Content-Transfer-Encoding: base64\n\n" + b64(payload) + "--B--\n")
def zipped(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in files.items():
            z.writestr(n, data)
    return buf.getvalue()
msgs = {
    "text-4k": head.format(s="text") + "Content-Type: text/plain\n\n" + text(4000),
    "b64-100k": multipart("pdf", "report.pdf", "application/pdf",
                          b"%PDF-1.4\n" + bytes(rnd.getrandbits(8) for _ in range(72000))),
    # documents and binary data: about 730 KB of zip, 1 MB of message
    "zip-1m": multipart("zip", "files.zip", "application/zip",
                        zipped({"notes.txt": text(600000).encode(),
                                "data.bin": bytes(rnd.getrandbits(8) for _ in range(600000))})),
    "eicar-zip": multipart("virus", "files.zip", "application/zip",
                           zipped({"notes.txt": text(60000).encode(), "eicar.com": eicar})),
}
for k, v in msgs.items():
    open(f"{d}/{k}.eml", "w").write(v)
PY
ls -l "$D"/*.eml | awk '{print "   " $5 " bytes " $9}'

cat > "$D/clamd.conf" <<EOF
Foreground yes
LocalSocket $D/clamd.sock
DatabaseDirectory $DB
LogFile $D/clamd.log
PidFile $D/clamd.pid
StreamMaxLength 100M
MaxThreads 2
EOF
start=$(date +%s.%N)
"$CLAMD" --foreground --config-file="$D/clamd.conf" >"$D/clamd.out" 2>&1 &
CLAMD_PID=$!
for _ in $(seq 1200); do   # at most 10 minutes: the full Debian database takes a while
  /usr/bin/python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(sys.argv[1]); s.sendall(b'zPING\0'); sys.exit(s.recv(8)!=b'PONG\0')" "$D/clamd.sock" 2>/dev/null && break
  kill -0 "$CLAMD_PID" 2>/dev/null || { cat "$D/clamd.out"; exit 1; }
  sleep 0.5
done
end=$(date +%s.%N)
/usr/bin/python3 -c "print(f'RESULT name=clamd-start seconds={$end-$start:.2f}')"

"$BIN" --db "$DB" --clamd "$D/clamd.sock" --rounds "$ROUNDS" \
  text-4k="$D/text-4k.eml" b64-100k="$D/b64-100k.eml" zip-1m="$D/zip-1m.eml" eicar-zip="$D/eicar-zip.eml"
