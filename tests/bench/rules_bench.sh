#!/bin/bash
# tests/bench/rules_bench.sh — the same rule files and the same messages through Moat's rule
# engine (rules_bench, MIME parse + all rules, rules loaded once) and through SpamAssassin
# (`spamassassin -L --mbox` with only those rule files: one process, rules loaded once), in
# one run. Rules: Debian's stock SpamAssassin rules (/usr/share/spamassassin, installs the
# spamassassin package if missing). Messages: N generated here, spammy and plain.
#   tests/bench/rules_bench.sh [N=200]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN=${BIN:-$HERE/../../build/tests/bench/rules_bench}
N=${1:-200}
if ! command -v spamassassin >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends spamassassin >/dev/null
fi
RULES=/usr/share/spamassassin
D=$(mktemp -d); trap 'rm -rf "$D"' EXIT
/usr/bin/python3 - "$D" "$N" <<'PY'
import sys, random
d, n = sys.argv[1], int(sys.argv[2])
random.seed(7)
spam = ["FREE money!!! Click here now", "Cheap meds, no prescription", "You have WON the lottery",
        "Earn $5000 a week from home", "Viagra cialis discount", "URGENT: verify your account"]
ham = ["Minutes of Tuesday's meeting", "Re: the quarterly report", "Lunch on Friday?",
       "Build failure on main", "Holiday schedule", "Your invoice for November"]
words = "the of and to in is that for it as was with be by on not he this are or his from at which".split()
with open(d + "/all.mbox", "w") as mbox:
    for i in range(n):
        s = random.random() < 0.5
        subj = random.choice(spam if s else ham)
        body = "\n".join(" ".join(random.choice(words) for _ in range(14)) for _ in range(40))
        if s:
            body += "\nCLICK HERE http://cheap-pills.example/buy?id=%d to unsubscribe\nAct now! 100%% FREE\n" % i
        msg = (f"From: sender{i}@mail{i % 17}.example\nTo: user@example.test\nSubject: {subj}\n"
               f"Date: Sun, 22 Nov 2026 12:{i % 60:02d}:00 +0000\nMessage-ID: <{i}@bench.example>\n"
               f"MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n{body}\n")
        open(f"{d}/m{i:04d}.eml", "w").write(msg)
        mbox.write(f"From sender{i}@mail.example Sun Nov 22 12:00:00 2026\n" + msg.replace("\nFrom ", "\n>From ") + "\n")
PY
mkdir -p "$D/site"
cp /etc/spamassassin/*.pre "$D/site/"   # plugin loaders only: no local.cf, no site rules
echo "== Moat: rule statistics and throughput"
"$BIN" "$RULES"/*.cf -- "$D"/m*.eml --rounds 5
echo "== SpamAssassin $(spamassassin --version | head -1 | awk '{print $3}') -L, same rules, one process"
start=$(date +%s.%N)
spamassassin -L --mbox --configpath="$RULES" --siteconfigpath="$D/site" < "$D/all.mbox" > /dev/null
end=$(date +%s.%N)
/usr/bin/python3 -c "import sys; n=$N; el=$end-$start; print(f'RESULT name=spamassassin-rules messages={n} seconds={el:.2f} messages_per_s={n/el:.1f}')"
