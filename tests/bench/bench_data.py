#!/usr/bin/env python3
"""Test data the benchmarks share (tests/bench/*.sh), made the same way for every one of them.

  bench_data.py clamav-db DIR HDB NDB      a ClamAV database of realistic size: HDB random MD5
                                           hash signatures, NDB random 20-byte body signatures
                                           (what the Aho-Corasick matcher runs over every
                                           byte) and one for EICAR, written to DIR
  bench_data.py auth-zone ZONE RECORDFILE  the zone of the shared rspamd-prepare.sh sender:
                                           SPF ip4:127.0.0.1 -all, DMARC p=reject and the DKIM
                                           key record read from RECORDFILE, for dns_server.py
"""
import random
import sys

EICAR = ("X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-" + "ANTIVIRUS-TEST-FILE!$H+H*").encode()


def clamav_db(db, nhdb, nndb, seed=7):
    rnd = random.Random(seed)
    with open(f"{db}/moat-bench.hdb", "w") as f:
        for i in range(nhdb):
            f.write(f"{rnd.getrandbits(128):032x}:{rnd.randint(1000, 5000000)}:Moat.Bench.Hash-{i}\n")
    with open(f"{db}/moat-bench.ndb", "w") as f:
        f.write(f"Eicar-Test-Moat:0:*:{b'EICAR-STANDARD-ANTIVIRUS-TEST-FILE'.hex()}\n")
        for i in range(nndb):
            f.write(f"Moat.Bench.Body-{i}:0:*:{rnd.getrandbits(160):040x}\n")


def auth_zone(zone, record_file):
    rec = open(record_file).read().strip().replace(",", "")
    with open(zone, "w") as f:
        f.write(f"""zonedata:
  sender.example:
    - TXT: "v=spf1 ip4:127.0.0.1 -all"
  _dmarc.sender.example:
    - TXT: "v=DMARC1; p=reject"
  bench._domainkey.sender.example:
    - TXT: "{rec}"
""")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "clamav-db":
        clamav_db(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) == 4 and sys.argv[1] == "auth-zone":
        auth_zone(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
