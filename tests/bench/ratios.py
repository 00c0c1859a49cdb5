#!/usr/bin/env python3
"""Turns relay-bench RESULT lines of one run into a table of Moat's figures as ratios to
Postfix and to the raw smtp-source -> smtp-sink rate measured in the same run. "stop s" is the
time from the stop command (SIGTERM for Moat, `postfix stop`) until the MTA's processes are gone."""
import re
import sys

rows = {}
for line in open(sys.argv[1]):
    if not line.startswith("RESULT "):
        continue
    kv = dict(re.findall(r"(\w+)=(\S+)", line))
    rows[kv["name"]] = kv

def f(kv, k):
    try:
        return float(kv.get(k, "nan"))
    except ValueError:
        return float("nan")

cases = sorted({n.split("-", 1)[1] for n in rows}, key=lambda c: [int(x) for x in c.split("-")])
variants = [v for v in ("moat", "moatsyncfs") if any(n.startswith(v + "-") for n in rows)]
print("| case | Moat | Moat relayed/s | Postfix relayed/s | raw relayed/s | Moat/Postfix | Moat/raw | "
      "Moat CPU ms/msg | Postfix CPU ms/msg | Moat RSS MB | Postfix RSS MB | disk flushes/msg Moat / Postfix | "
      "stop s Moat / Postfix |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for c in cases:
    p, r = rows.get("postfix-" + c, {}), rows.get("raw-" + c, {})
    pr, rr = f(p, "relayed_per_s"), f(r, "relayed_per_s")
    n = f(p, "count")
    for v in variants:
        m = rows.get(v + "-" + c, {})
        mr = f(m, "relayed_per_s")
        label = "fsync" if v == "moat" else "syncfs"
        print(f"| {c} | {label} | {mr:.0f} | {pr:.0f} | {rr:.0f} | {mr / pr:.2f}x | {mr / rr:.2f} | "
              f"{f(m, 'cpu_ms_per_msg'):.2f} | {f(p, 'cpu_ms_per_msg'):.2f} | {f(m, 'rss_mb'):.1f} | {f(p, 'rss_mb'):.1f} | "
              f"{f(m, 'disk_flushes') / n:.2f} / {f(p, 'disk_flushes') / n:.2f} | "
              f"{f(m, 'stop_s'):.1f} / {f(p, 'stop_s'):.1f} |")
