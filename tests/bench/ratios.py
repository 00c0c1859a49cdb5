#!/usr/bin/env python3
"""Turns relay-bench RESULT lines of one run into a table of Moat's figures as ratios to
Postfix and to the raw smtp-source -> smtp-sink rate measured in the same run."""
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

cases = sorted({n.split("-", 1)[1] for n in rows})
print("| case | moat relayed/s | postfix relayed/s | raw relayed/s | moat/postfix | moat/raw | "
      "moat CPU ms/msg | postfix CPU ms/msg | moat RSS MB | postfix RSS MB |")
print("|---|---|---|---|---|---|---|---|---|---|")
for c in cases:
    m, p, r = rows.get("moat-" + c, {}), rows.get("postfix-" + c, {}), rows.get("raw-" + c, {})
    mr, pr, rr = f(m, "relayed_per_s"), f(p, "relayed_per_s"), f(r, "relayed_per_s")
    print(f"| {c} | {mr:.0f} | {pr:.0f} | {rr:.0f} | {mr / pr:.2f}x | {mr / rr:.2f} | "
          f"{f(m, 'cpu_ms_per_msg'):.2f} | {f(p, 'cpu_ms_per_msg'):.2f} | {f(m, 'rss_mb'):.1f} | {f(p, 'rss_mb'):.1f} |")
