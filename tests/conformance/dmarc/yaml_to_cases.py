#!/usr/bin/env python3
"""tests/conformance/dmarc/yaml_to_cases.py - turns the public DMARC suites in
shared/conformance/dmarc/ into a flat line format the C++ harness reads (run at build time).

One case per line: tab-separated key=value fields; keys may repeat (zone, rua, ruf, dkim);
backslash, tab, CR and LF in values are escaped as \\\\ \\t \\r \\n. Every case has kind=,
suite=, id=; an excluded case has exclude=<reason> and is listed, not run.

Exclusions follow the suites' own markers: rfc7489: false (kept when the spec is RFC 9091,
which Moat implements for np=), DMARCbis options, notes calling the behaviour specific to
that library's lenient parsing, scenarios that check DKIM only. One OpenDMARC case
(p=n accepted) is excluded by name: OpenDMARC matches the first letter of the policy;
RFC 7489 section 6.3 allows only none, quarantine and reject.

For authheaders scenarios the DKIM inputs are the scenario's prior results; a scenario that
has authheaders verify DKIM itself (checks: [dkim, ...]) gets its DKIM result from python3-dkim
over the scenario's zone, so the C++ side sees a plain pass/fail per d=.
"""
import os
import sys

import yaml


def esc(v):
    return str(v).replace('\\', '\\\\').replace('\t', '\\t').replace('\r', '\\r').replace('\n', '\\n')


out_lines = []


def emit(fields):
    out_lines.append('\t'.join('%s=%s' % (k, esc(v)) for k, v in fields))


LENIENT_OPENDMARC = {
    'v=DMARC1; p=n;': 'OpenDMARC accepts any word starting with n/q/r as a policy; RFC 7489 6.3 allows only none|quarantine|reject',
}


def opendmarc(base):
    doc = yaml.safe_load(open(os.path.join(base, 'opendmarc-tests.yml'), encoding='utf-8'))
    for c in doc['record_parse']['cases']:
        f = [('kind', 'parse'), ('suite', 'opendmarc'), ('id', 'record_parse #%s' % c['n']),
             ('record', c['record']), ('expected', c['expected'])]
        if c['record'] in LENIENT_OPENDMARC:
            f.append(('exclude', LENIENT_OPENDMARC[c['record']]))
        emit(f)
    for c in doc['alignment']['cases']:
        emit([('kind', 'align'), ('suite', 'opendmarc'), ('id', 'alignment #%s' % c['n']),
              ('a', c['domain_a']), ('b', c['domain_b']), ('mode', c['mode']), ('expected', c['expected'])])
    for i, c in enumerate(doc['from_header_domain']['cases']):
        emit([('kind', 'fromvalue'), ('suite', 'opendmarc'), ('id', 'from_header_domain #%d' % (i + 1)),
              ('input', c['input']), ('expected', c['expected_domain'])])


def zone_fields(dns):
    f = []
    for name, v in (dns or {}).items():
        if isinstance(v, dict):
            for t, val in v.items():
                f.append(('zone', '%s|%s|%s' % (name, t, val)))
        else:
            f.append(('zone', '%s|TXT|%s' % (name, v)))
    return f


def exclusion(c):
    if c.get('rfc7489') is False and str(c.get('spec', '')).strip() != 'RFC 9091':
        return 'rfc7489: false (%s)' % (c.get('note') or c.get('spec') or 'a later specification')
    note = str(c.get('note', ''))
    if 'lenient parsing specific to this library' in note:
        return 'library-lenient: ' + ' '.join(note.split())
    return None


def stalwart(base):
    doc = yaml.safe_load(open(os.path.join(base, 'stalwart-mail-auth-dmarc.yml'), encoding='utf-8'))
    for c in doc['record_parse']['cases']:
        e = c['expected']
        f = [('kind', 'record'), ('suite', 'stalwart'), ('id', 'record_parse #%s' % c['n']), ('record', c['record'])]
        for k in ('p', 'sp', 'np', 'adkim', 'aspf', 'fo', 'pct', 'rf', 'ri'):
            f.append(('x_' + k, e[k]))
        for k in ('rua', 'ruf'):
            for addr, size in e[k]:
                f.append((k, '%s|%s' % (addr, size)))
        if exclusion(c):
            f.append(('exclude', exclusion(c)))
        emit(f)
    for c in doc['alignment']['cases']:
        e = c['expected']
        dkim = c.get('dkim') or {}
        emit([('kind', 'alignment'), ('suite', 'stalwart'), ('id', 'alignment: ' + c['name']), ('from', c['from']),
              ('mail_from_domain', c['mail_from_domain']), ('spf', c['spf']),
              ('dkim', '%s|%s' % (str(dkim.get('result', '')).split(' ')[0], dkim.get('d', ''))),
              ('x_dkim', e['dmarc_dkim']), ('x_spf', e['dmarc_spf']), ('x_policy', e['policy'])] + zone_fields(c['dns']))
    for c in doc['policy_discovery']['cases']:
        f = [('kind', 'discovery'), ('suite', 'stalwart'), ('id', 'policy_discovery: ' + c['name']), ('from', c['from'])]
        f += zone_fields(c['dns'])
        if 'expected_policy' in c:
            f.append(('x_policy', c['expected_policy']))
        if 'expected_record' in c:
            f.append(('x_record', c['expected_record']))
        if exclusion(c):
            f.append(('exclude', exclusion(c)))
        elif str(c.get('spec', '')).strip() == 'RFC 9091':
            f.append(('extension', 'RFC 9091 np= (Moat implements it)'))
        emit(f)


def authheaders_zone(base, dns):
    f = []
    txt = {}
    for name, v in dns.items():
        if isinstance(v, dict) and 'TXT_file' in v:
            val = open(os.path.join(base, v['TXT_file']), encoding='utf-8').read().strip()
            f.append(('zone', '%s|TXT|%s' % (name, val)))
            txt[name] = val
        elif v == 'NXDOMAIN':
            pass  # absent from the zone
        elif v == 'EMPTY':
            f.append(('zone', '%s|EXISTS|' % name))
        elif isinstance(v, str) and v.startswith('exists'):
            f.append(('zone', '%s|A|192.0.2.1' % name))
        else:
            f.append(('zone', '%s|TXT|%s' % (name, v)))
            txt[name] = v
    return f, txt


def prior_dkim(prior):
    out = []
    for part in (prior or '').split(';')[1:]:
        toks = part.split()
        if toks and toks[0].startswith('dkim='):
            d = next((t.split('=', 1)[1] for t in toks if t.startswith('header.d=')), '')
            out.append('%s|%s' % (toks[0].split('=', 1)[1], d))
    return out


def verified_dkim(path, txt):
    import dkim  # python3-dkim (Debian); only for scenarios without prior DKIM results

    def dnsfunc(name, timeout=5):
        n = name.decode() if isinstance(name, bytes) else name
        v = txt.get(n.rstrip('.'))
        return v.encode() if v else None

    msg = open(path, 'rb').read()
    d = dkim.DKIM(msg)
    ok = d.verify(dnsfunc=dnsfunc)
    dom = d.domain.decode() if d.domain else ''
    return ['%s|%s' % ('pass' if ok else 'fail', dom)] if dom else []


def authheaders(base):
    doc = yaml.safe_load(open(os.path.join(base, 'authheaders-scenarios.yml'), encoding='utf-8'))
    zone, txt = authheaders_zone(base, doc['dns'])
    for s in doc['scenarios']:
        path = os.path.join(base, s['message'])
        f = [('kind', 'scenario'), ('suite', 'authheaders'), ('id', s['id']), ('message', path),
             ('x_header', s['expected'])]
        if 'expected_dmarc' in s:
            f.append(('x_dmarc', s['expected_dmarc']))
        if 'expected_policy' in s:
            f.append(('x_policy', s['expected_policy']))
        checks = s.get('checks', [])
        if 'dmarc' not in checks:
            f.append(('exclude', 'checks %s only: no DMARC result to compare (the DKIM suite covers it)' % checks))
        elif (s.get('options') or {}).get('dmarcbis') or 'DMARCbis' in str(s.get('spec', '')):
            f.append(('exclude', 'DMARCbis behaviour (%s), not RFC 7489' % s.get('spec', 'dmarcbis')))
        else:
            if str(s.get('spec', '')).strip() == 'RFC 9091':
                f.append(('extension', 'RFC 9091 np= (Moat implements it)'))
            dk = prior_dkim(s.get('prior_results'))
            if not dk and 'dkim' in checks:
                dk = verified_dkim(path, txt)
            f += [('dkim', d) for d in dk]
        emit(f + zone)
    for i, c in enumerate(doc.get('from_header_domain', [])):
        emit([('kind', 'fromvalue'), ('suite', 'authheaders'), ('id', 'from_header_domain #%d' % (i + 1)),
              ('input', c['input']), ('expected', c['expected_domain'])])


def main():
    base, out = sys.argv[1], sys.argv[2]
    opendmarc(base)
    stalwart(base)
    authheaders(base)
    with open(out + '.tmp', 'w', encoding='utf-8') as fh:
        fh.write('\n'.join(out_lines) + '\n')
    os.replace(out + '.tmp', out)


if __name__ == '__main__':
    main()
