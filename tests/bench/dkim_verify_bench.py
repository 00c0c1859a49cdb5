#!/usr/bin/python3
"""DKIM verify-only throughput of python3-dkim (dkimpy) on the same message and key record
as dkim_verify_bench.cc.   dkim_verify_bench.py MESSAGE KEYNAME TXTRECORD [SECONDS]"""
import sys
import time

import dkim

msg = open(sys.argv[1], "rb").read()
name, record = sys.argv[2].encode(), sys.argv[3].encode()
seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 3.0


def dnsfunc(n, timeout=5):
    return record if n.rstrip(b".") == name.rstrip(b".") else None


assert dkim.verify(msg, dnsfunc=dnsfunc), "the message does not verify"
start, n = time.monotonic(), 0
while True:
    for _ in range(20):
        dkim.verify(msg, dnsfunc=dnsfunc)
    n += 20
    el = time.monotonic() - start
    if el >= seconds:
        print(f"RESULT name=dkimpy-verify messages={n} seconds={el:.2f} verify_per_s={n / el:.0f}")
        break
