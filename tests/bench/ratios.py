#!/usr/bin/env python3
"""Turns relay-bench RESULT lines of one run into a table of Moat's figures as ratios to
Postfix and to the raw smtp-source -> smtp-sink rate measured in the same run. "stop s" is the
time from the stop command (SIGTERM for Moat, `postfix stop`) until the MTA's processes are gone.

With rounds (tests/bench/run.sh, MOAT_BENCH_ROUNDS=N: names end in @ROUND), each round's
peers ran back to back, so each round's ratios are compared within the round, and a median
row gives the median of each column over the rounds: one slow stretch of the machine moves
one round, not the figure reported."""
import re
import statistics
import sys

NAME = re.compile(r"^(raw|postfix|moat|moatsyncfs)-(\d+-\d+-\d+)(?:@(\d+))?$")

runs = {}  # (case, round) -> {peer: RESULT fields}
for line in open(sys.argv[1]):
    if not line.startswith("RESULT "):
        continue
    kv = dict(re.findall(r"(\w+)=(\S+)", line))
    m = NAME.match(kv.get("name", ""))
    if m:
        runs.setdefault((m.group(2), int(m.group(3) or 1)), {})[m.group(1)] = kv


def f(kv, k):
    try:
        return float(kv.get(k, "nan"))
    except ValueError:
        return float("nan")


def row(case, label, rnd, m, p, r):
    mr, pr, rr, n = f(m, "relayed_per_s"), f(p, "relayed_per_s"), f(r, "relayed_per_s"), f(p, "count")
    return {"case": case, "label": label, "round": rnd, "mr": mr, "pr": pr, "rr": rr,
            "mp": mr / pr, "mraw": mr / rr, "mcpu": f(m, "cpu_ms_per_msg"), "pcpu": f(p, "cpu_ms_per_msg"),
            "mrss": f(m, "rss_mb"), "prss": f(p, "rss_mb"), "mfl": f(m, "disk_flushes") / n,
            "pfl": f(p, "disk_flushes") / n, "mstop": f(m, "stop_s"), "pstop": f(p, "stop_s"),
            # CPU of processes outside the benchmark while each peer ran (the harness's
            # other_pct): a round where it is high measured a busy machine, not the peers.
            "other": max(f(x, "other_pct") for x in (m, p, r))}


def show(x):
    print(f"| {x['case']} | {x['label']} | {x['round']} | {x['mr']:.0f} | {x['pr']:.0f} | {x['rr']:.0f} | "
          f"{x['mp']:.2f}x | {x['mraw']:.2f} | {x['mcpu']:.2f} | {x['pcpu']:.2f} | {x['mrss']:.1f} | "
          f"{x['prss']:.1f} | {x['mfl']:.2f} / {x['pfl']:.2f} | {x['mstop']:.1f} / {x['pstop']:.1f} | {x['other']:.0f} |")


cases = sorted({c for c, _ in runs}, key=lambda c: [int(x) for x in c.split("-")])
rounds = sorted({r for _, r in runs})
print("| case | Moat | round | Moat relayed/s | Postfix relayed/s | raw relayed/s | Moat/Postfix | Moat/raw | "
      "Moat CPU ms/msg | Postfix CPU ms/msg | Moat RSS MB | Postfix RSS MB | disk flushes/msg Moat / Postfix | "
      "stop s Moat / Postfix | other CPU % |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for c in cases:
    for v in ("moat", "moatsyncfs"):
        label = "fsync" if v == "moat" else "syncfs"
        rows = [row(c, label, rnd, runs[(c, rnd)][v], runs[(c, rnd)].get("postfix", {}), runs[(c, rnd)].get("raw", {}))
                for rnd in rounds if v in runs.get((c, rnd), {})]
        for x in rows:
            show(x)
        if len(rows) > 1:
            med = {k: statistics.median(x[k] for x in rows) for k in rows[0] if k not in ("case", "label", "round")}
            show({"case": c, "label": label, "round": "median", **med})

# The CPU budget of the 4 KB cases: is the gap to half the raw rate waiting or work? For each
# round: the CPU that smtp-source and smtp-sink spent per message straight into each other (the
# raw pair), the CPU of the Moat round per relayed message (Moat + smtp-source + smtp-sink), and
# two rates on this machine's cores: Moat's round with no core ever idle, and a relay that costs
# no more than one more source/sink pair (an SMTP server as cheap as smtp-sink and a client as
# cheap as smtp-source, no disk). When the raw run keeps the cores busy, the second is about
# half the raw rate: the target then asks for a relay as cheap as that.
NCPU = __import__("os").cpu_count() or 1
print()
print("| case | round | raw relayed/s | raw busy % | raw pair CPU ms/msg | Moat relayed/s | Moat round busy % | "
      "Moat round CPU ms/msg (Moat + pair) | Moat round at 100% busy /s | pair-cost relay /s | half raw /s |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for c in cases:
    for rnd in rounds:
        peers = runs.get((c, rnd), {})
        r, m = peers.get("raw"), peers.get("moat")
        if not r or not m:
            continue
        n = f(r, "count")
        pair = (f(r, "src_cpu_s") + f(r, "sink_cpu_s")) * 1000 / n
        total = (f(m, "cpu_s") + f(m, "src_cpu_s") + f(m, "sink_cpu_s")) * 1000 / n
        print(f"| {c} | {rnd} | {f(r, 'relayed_per_s'):.0f} | {f(r, 'machine_busy_pct'):.0f} | {pair:.3f} | "
              f"{f(m, 'relayed_per_s'):.0f} | {f(m, 'machine_busy_pct'):.0f} | {total:.3f} | "
              f"{NCPU * 1000 / total:.0f} | {NCPU * 1000 / (2 * pair):.0f} | {f(r, 'relayed_per_s') / 2:.0f} |")
