#!/bin/bash
# tests/bench/dkim_verify_bench.sh — makes a 4 KB message, signs it (rsa-sha256, 2048-bit,
# relaxed/relaxed) with a key made here, and measures verify-only throughput of Moat's
# verifier and of python3-dkim on it, in one run. Build first: cmake --build build --target dkim_verify_bench
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN=${BIN:-$HERE/../../build/tests/bench/dkim_verify_bench}
D=$(mktemp -d); trap 'rm -rf "$D"' EXIT
openssl genrsa -out "$D/key.pem" 2048 2>/dev/null
pub=$(openssl rsa -in "$D/key.pem" -pubout -outform DER 2>/dev/null | base64 -w0)
/usr/bin/python3 - "$D" <<'PY'
import sys, dkim
d = sys.argv[1]
body = b"".join(b"line %04d of a four kilobyte test message for DKIM throughput ......\r\n" % i for i in range(56))
msg = (b"From: Alice <alice@bench.test>\r\nTo: bob@example.test\r\nSubject: dkim bench\r\n"
       b"Date: Sun, 22 Nov 2026 12:00:00 +0000\r\nMessage-ID: <bench@bench.test>\r\n\r\n" + body)
sig = dkim.sign(msg, b"s1", b"bench.test", open(d + "/key.pem", "rb").read(),
                canonicalize=(b"relaxed", b"relaxed"), include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
open(d + "/signed.eml", "wb").write(sig + msg)
PY
rec="v=DKIM1; k=rsa; p=$pub"
echo "message: $(wc -c < "$D/signed.eml") bytes"
"$BIN" "$D/signed.eml" s1._domainkey.bench.test "$rec" "${SECONDS_PER_RUN:-5}"
/usr/bin/python3 "$HERE/dkim_verify_bench.py" "$D/signed.eml" s1._domainkey.bench.test "$rec" "${SECONDS_PER_RUN:-5}"
