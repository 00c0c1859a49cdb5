#!/usr/bin/env python3
"""Converts an OpenSPF test suite (YAML, see /work/shared/conformance/README.md) into the
line format spf_conformance_test reads, so the C++ test needs no YAML library.

Output: one record per line, fields separated by TAB, each field escaped (backslash,
TAB, CR, LF as \\\\ \\t \\r \\n):
  S  description                                   a scenario starts
  Z  name  TYPE  value                             zone data, in the YAML's order
                                                   (TYPE: TXT A AAAA MX PTR CNAME TIMEOUT,
                                                   or NONE with value TXT for "TXT: NONE";
                                                   MX value "pref exchange")
  T  name  helo  host  mailfrom  results  has_exp  explanation
                                                   results: comma-separated, first preferred

The harness rules of the suite's reference driver are applied here: every SPF (type 99)
record is also served as TXT unless the name has an explicit TXT entry; "TXT: NONE" means
no TXT record; a bare TIMEOUT item (or "TIMEOUT: true") makes later-listed types time out.
"""
import sys
import yaml


def esc(v):
    if isinstance(v, bytes):
        v = v.decode('utf-8', 'surrogateescape')
    v = '' if v is None else str(v)
    return v.replace('\\', '\\\\').replace('\t', '\\t').replace('\r', '\\r').replace('\n', '\\n')


def line(out, *fields):
    out.write('\t'.join(esc(f) for f in fields) + '\n')


def txt_value(v):
    if isinstance(v, list):
        return ''.join(x.decode('utf-8', 'surrogateescape') if isinstance(x, bytes) else str(x) for x in v)
    return v


def zone(out, name, items):
    explicit_txt = any(isinstance(i, dict) and 'TXT' in i for i in items)
    for item in items:
        if item == 'TIMEOUT' or (isinstance(item, dict) and item.get('TIMEOUT')):
            line(out, 'Z', name, 'TIMEOUT', '')
            continue
        if not isinstance(item, dict):
            raise SystemExit('unknown zone item %r at %s' % (item, name))
        for typ, value in item.items():
            if typ == 'TXT':
                if value != 'NONE':
                    line(out, 'Z', name, 'TXT', txt_value(value))
                else:
                    line(out, 'Z', name, 'NONE', 'TXT')
            elif typ == 'SPF':
                if not explicit_txt and value != 'NONE':
                    line(out, 'Z', name, 'TXT', txt_value(value))
            elif typ == 'MX':
                line(out, 'Z', name, 'MX', '%s %s' % (value[0], value[1]))
            elif typ in ('A', 'AAAA', 'PTR', 'CNAME'):
                for v in (value if isinstance(value, list) else [value]):
                    line(out, 'Z', name, typ, v)
            elif typ == 'SERVFAIL':
                line(out, 'Z', name, 'TIMEOUT', '')
            else:
                raise SystemExit('unknown zone type %s at %s' % (typ, name))


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, 'rb') as f:
        docs = list(yaml.safe_load_all(f))
    with open(dst, 'w', encoding='utf-8', errors='surrogateescape') as out:
        for doc in docs:
            if not doc:
                continue
            line(out, 'S', doc.get('description', ''))
            for name, items in (doc.get('zonedata') or {}).items():
                zone(out, name, items or [])
            for tname, t in (doc.get('tests') or {}).items():
                res = t['result']
                res = res if isinstance(res, list) else [res]
                has_exp = 'explanation' in t
                line(out, 'T', tname, t.get('helo', ''), t.get('host', ''), t.get('mailfrom', ''),
                     ','.join(res), '1' if has_exp else '0', t.get('explanation', ''))


if __name__ == '__main__':
    main()
