"""Per-filter and authentication metrics end to end: the real daemon with the loopback DNS
server (tests/support/dns_server.py) as its only nameserver, mail sent with smtplib from
127.0.0.1, and /metrics read over HTTP before and after each message. Checked: every filter
run counts one verdict and one duration observation for its own filter, a refusal counts as
reject (or tempfail) for the filter that decided it and for no other, SPF / DKIM / DMARC
results and the DMARC disposition move by exactly one per message, the resolver's lookups
and cache hits match what the DNS server saw, and a SIGHUP reload keeps every count."""

import os
import re
import shutil
import subprocess
import sys
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from authzone import owned_dns, rsa_key  # noqa: E402
from harness import class_temp_dir, free_port, owned_moat, simple_message, transaction  # noqa: E402

import dkim  # noqa: E402  (python3-dkim)

INBOUND_NETS = ["10.255.255.0/24"]  # loopback is NOT a relay client: SPF and DMARC apply
SAMPLE = re.compile(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$")


message = simple_message


def verdict(filter_name, v):
    return f'moat_filter_verdicts_total{{filter="{filter_name}",verdict="{v}"}}'


def duration_count(filter_name):
    return f'moat_filter_duration_seconds_count{{filter="{filter_name}"}}'


def duration_bucket(filter_name, le):
    return f'moat_filter_duration_seconds_bucket{{filter="{filter_name}",le="{le}"}}'


def result(kind, r):
    return f'moat_{kind}_results_total{{result="{r}"}}'


def disposition(d):
    return f'moat_dmarc_dispositions_total{{disposition="{d}"}}'


def dns(rrtype, r):
    return f'moat_dns_queries_total{{type="{rrtype}",result="{r}"}}'


class FilterMetricsTest(unittest.TestCase):
    """One DNS server and daemon for the class; each test compares /metrics before and after."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = class_temp_dir(cls, "moat-fm-")
        cls.key = os.path.join(cls.tmp, "sel.pem")
        txt = rsa_key(cls.key)
        zone = {
            "attacker.test": [{"TXT": "v=spf1 ip4:127.0.0.1 -all"}],
            "bank.test": [{"TXT": "v=spf1 -all"}],
            "_dmarc.bank.test": [{"TXT": "v=DMARC1; p=reject"}],
            "spffail.test": [{"TXT": "v=spf1 -all"}],
            "slow.test": ["TIMEOUT"],
        }
        # Domains of their own per test, so no answer is in the cache before it runs.
        for d in ("signed.test", "again.test", "early.test", "reload.test"):
            zone[d] = [{"TXT": "v=spf1 ip4:127.0.0.1 -all"}]
            zone["sel._domainkey." + d] = [{"TXT": txt}]
            zone["_dmarc." + d] = [{"TXT": "v=DMARC1; p=reject"}]
        cls.dns = owned_dns(cls, zone, directory=cls.tmp)
        cls.metrics_port = free_port()
        cls.moat = owned_moat(cls, networks=INBOUND_NETS,
                              extra=f'\n[dns]\nnameservers = ["{cls.dns.nameserver}"]\ntimeout = "1s"\n'
                                    '\n[spf]\nfail = "reject"\n',
                              server_extra=f'metrics_listen = "127.0.0.1:{cls.metrics_port}"')
        # The SPF check of the HELO name (client.test, no record) is asked once here and then
        # answered from the cache (negative TTL 300 s), so the tests count only their own.
        steps = transaction(cls.moat, "warm@attacker.test", "bob@example.test", message("w <w@attacker.test>", "warm"))
        assert steps["data"][0] == 250, steps
        assert any(q == "client.test TXT" for q in cls.dns.queries()), cls.dns.queries()

    def scrape(self):
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        out = {}
        for line in body.splitlines():
            m = SAMPLE.match(line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out

    def assert_moved(self, before, after, expected, exact_prefixes=()):
        """Each series in `expected` moved by exactly that much (absent before: from 0); every
        other series whose name starts with one of `exact_prefixes` did not move."""
        for name, delta in expected.items():
            self.assertIn(name, after, f"{name} is not in /metrics")
            self.assertEqual(after[name] - before.get(name, 0), delta, name)
        for name, value in after.items():
            if name not in expected and name.startswith(exact_prefixes):
                self.assertEqual(value, before.get(name, 0), f"{name} moved")

    def txt_queries_at_server(self):
        return len([q for q in self.dns.queries() if q.endswith(" TXT")])

    def signed(self, domain, subject):
        raw = message(f"Alice <alice@{domain}>", subject)
        with open(self.key, "rb") as f:
            private = f.read()
        return dkim.sign(raw, b"sel", domain.encode(), private,
                         include_headers=[b"from", b"to", b"subject", b"message-id"]) + raw

    AUTH = ("moat_spf_results_total", "moat_dkim_results_total", "moat_dmarc_results_total",
            "moat_dmarc_dispositions_total")

    def test_the_configured_filters_show_at_zero_before_any_mail(self):
        port = free_port()
        owned_moat(self, networks=INBOUND_NETS, server_extra=f'metrics_listen = "127.0.0.1:{port}"')
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        for f in ("spf", "dkim", "dmarc"):
            self.assertIn(f'moat_filter_verdicts_total{{filter="{f}",verdict="continue"}} 0\n', body)
            self.assertIn(f'moat_filter_duration_seconds_count{{filter="{f}"}} 0\n', body)

    def test_signed_aligned_message_counts_passes_and_one_run_per_filter(self):
        before, server_before = self.scrape(), self.txt_queries_at_server()
        steps = transaction(self.moat, "alice@signed.test", "bob@example.test",
                            self.signed("signed.test", "signed pass"))
        self.assertEqual(steps["data"][0], 250, steps)
        after = self.scrape()
        self.assert_moved(before, after, {
            result("spf", "pass"): 1, result("dkim", "pass"): 1, result("dmarc", "pass"): 1,
            # p=reject and a pass: nothing done to the message.
            disposition("none"): 1,
            verdict("spf", "continue"): 1, verdict("dkim", "continue"): 1, verdict("dmarc", "continue"): 1,
            duration_count("spf"): 1, duration_count("dkim"): 1, duration_count("dmarc"): 1,
            duration_bucket("dmarc", "+Inf"): 1,
        }, exact_prefixes=self.AUTH + ('moat_filter_verdicts_total{filter="spf"', 'moat_filter_verdicts_total{filter="dkim"',
                                       'moat_filter_verdicts_total{filter="dmarc"'))
        # Every filter that ran counted one verdict and one duration, and nothing refused.
        for name, value in after.items():
            if name.startswith("moat_filter_verdicts_total{") and not name.endswith('verdict="continue"}'):
                if 'verdict="tag"' not in name:
                    self.assertEqual(value, before.get(name, 0), f"{name} moved")
            m = re.match(r'moat_filter_duration_seconds_count\{filter="([a-z_]+)"\}', name)
            if m:
                runs = sum(after[verdict(m.group(1), v)] - before.get(verdict(m.group(1), v), 0)
                           for v in ("continue", "tag", "quarantine", "reject", "tempfail", "disconnect"))
                self.assertEqual(value - before.get(name, 0), runs, name)
                self.assertEqual(runs, 1, name)
        # The SPF record, the DKIM key and the DMARC record: three TXT lookups with an answer,
        # as many as the DNS server was asked.
        self.assertEqual(self.txt_queries_at_server() - server_before, 3, self.dns.queries())
        self.assertEqual(len([q for q in self.dns.queries() if q.endswith("signed.test TXT")]), 3)
        txt = sum(after[dns("TXT", r)] - before[dns("TXT", r)]
                  for r in ("answer", "nxdomain", "nodata", "error", "timeout"))
        self.assertEqual(txt, 3)
        self.assertEqual(after[dns("TXT", "answer")] - before[dns("TXT", "answer")], 3)

    def test_the_same_sender_again_is_answered_from_the_cache(self):
        transaction(self.moat, "alice@again.test", "bob@example.test", self.signed("again.test", "again 1"))
        before, server_before = self.scrape(), self.txt_queries_at_server()
        steps = transaction(self.moat, "alice@again.test", "bob@example.test", self.signed("again.test", "again 2"))
        self.assertEqual(steps["data"][0], 250, steps)
        after = self.scrape()
        self.assertEqual(self.txt_queries_at_server(), server_before, self.dns.queries())
        # The HELO name, the SPF record, the DKIM key, the DMARC record: all from the cache.
        self.assert_moved(before, after, {"moat_dns_cache_hits_total": 4, dns("TXT", "answer"): 0,
                                          result("spf", "pass"): 1, result("dkim", "pass"): 1,
                                          result("dmarc", "pass"): 1})

    def test_dmarc_reject_counts_as_reject_for_dmarc_only(self):
        before = self.scrape()
        steps = transaction(self.moat, "boss@attacker.test", "bob@example.test",
                            message("CEO <ceo@bank.test>", "forged bank"))
        self.assertEqual(steps["data"][0], 550, steps)
        after = self.scrape()
        self.assert_moved(before, after, {
            verdict("dmarc", "reject"): 1, verdict("spf", "continue"): 1,
            result("spf", "pass"): 1,   # attacker.test's own SPF passes
            result("dkim", "none"): 1,  # no signature
            result("dmarc", "fail"): 1, disposition("reject"): 1,
            "moat_messages_rejected_total": 1,
        }, exact_prefixes=self.AUTH)
        refusals = {n: v - before.get(n, 0) for n, v in after.items()
                    if n.startswith("moat_filter_verdicts_total{") and re.search(r'verdict="(reject|tempfail)"', n)}
        self.assertEqual({n: d for n, d in refusals.items() if d}, {verdict("dmarc", "reject"): 1})

    def test_spf_fail_at_mail_counts_as_reject_for_spf(self):
        before = self.scrape()
        steps = transaction(self.moat, "x@spffail.test", "bob@example.test", message("x <x@spffail.test>", "spf fail"))
        self.assertEqual(steps["mail"][0], 550, steps)
        after = self.scrape()
        # Nothing at DATA ran: no DKIM, no DMARC.
        self.assert_moved(before, after, {verdict("spf", "reject"): 1, result("spf", "fail"): 1,
                                          duration_count("spf"): 1},
                          exact_prefixes=self.AUTH + ("moat_filter_verdicts_total", "moat_filter_duration_seconds_count"))

    def test_spf_dns_timeout_is_a_tempfail_a_temperror_and_a_slow_run(self):
        before = self.scrape()
        steps = transaction(self.moat, "y@slow.test", "bob@example.test", message("y <y@slow.test>", "spf slow"))
        self.assertEqual(steps["mail"][0], 451, steps)
        after = self.scrape()
        self.assert_moved(before, after, {
            verdict("spf", "tempfail"): 1, result("spf", "temperror"): 1, dns("TXT", "timeout"): 1,
            # dns.timeout is 1 s: the run took that long, not 0.5 s, not 2.5 s.
            duration_bucket("spf", "0.5"): 0, duration_bucket("spf", "2.5"): 1, duration_count("spf"): 1,
        }, exact_prefixes=self.AUTH + ("moat_filter_verdicts_total",))
        took = after['moat_filter_duration_seconds_sum{filter="spf"}'] - before['moat_filter_duration_seconds_sum{filter="spf"}']
        self.assertGreaterEqual(took, 0.9)

    def test_counts_carry_on_over_a_reload(self):
        transaction(self.moat, "alice@early.test", "bob@example.test", self.signed("early.test", "before reload"))
        before = self.scrape()
        self.assertGreaterEqual(before[result("spf", "pass")], 1)
        with open(self.moat.config_path) as f:
            config = f.read()
        self.moat.reload_with(self.moat.config_path, config)
        kept = self.scrape()
        for name, value in before.items():
            if name.startswith(("moat_filter_", "moat_dns_") + self.AUTH):
                self.assertEqual(kept.get(name), value, name)
        steps = transaction(self.moat, "alice@reload.test", "bob@example.test",
                            self.signed("reload.test", "after reload"))
        self.assertEqual(steps["data"][0], 250, steps)
        self.assert_moved(kept, self.scrape(), {result("spf", "pass"): 1, result("dkim", "pass"): 1,
                                                verdict("dmarc", "continue"): 1, duration_count("dmarc"): 1,
                                                dns("TXT", "answer"): 3})

    def test_the_new_series_pass_promtool(self):
        if shutil.which("promtool") is None:
            self.skipTest("promtool is not installed")
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read()
        self.assertIn(b'moat_filter_duration_seconds_bucket{filter="spf",le="0.001"}', body)
        r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, (r.stdout + r.stderr).decode(errors="replace"))


if __name__ == "__main__":
    unittest.main()
