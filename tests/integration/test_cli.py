"""The command line, without a daemon: `moat check` reporting every mistake as FILE:LINE in
one run (the antivirus databases loaded with a real libclamav, policy files the config
names that cannot be read, core and filter sections together), plain-text stderr for the
commands that are not `serve`, each command taking only its own options (CONTRACT.md,
Command line), and `moat scan` taking the inbound path by default. Only 127.0.0.1 is used;
every run is bounded."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import MOAT_BIN  # noqa: E402

SIGNATURE = "Eicar-Test-Moat"
GOOD_NDB = f"{SIGNATURE}:0:*:{b'EICAR-STANDARD-ANTIVIRUS-TEST-FILE'.hex()}\n"
BAD_NDB = "this is not a signature line\n"

BASE = """[server]
hostname = "mx.moat.test"
spool_dir = "spool"
control_socket = "moat.sock"
log_file = "moat.log"

[[listener]]
address = "127.0.0.1:0"

[relay]
domains = ["example.test"]
networks = ["127.0.0.0/8"]
{relay_extra}

[[route]]
to = ["maildir:mail"]
"""


def run(*args, timeout=120):
    return subprocess.run([MOAT_BIN, *args], capture_output=True, text=True, timeout=timeout)


def line_of(text, needle):
    """The 1-based number of the first line of `text` that contains `needle`."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in the config")


def json_lines(text):
    """The lines of `text` that parse as JSON objects (a daemon log line would)."""
    out = []
    for line in text.splitlines():
        try:
            if isinstance(json.loads(line), dict):
                out.append(line)
        except ValueError:
            pass
    return out


class CliTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="moat-cli-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def config(self, extra="", relay_extra="", files=None):
        """Writes moat.toml (BASE + `extra`) and `files` into the test's folder; returns
        (path, text)."""
        for rel, content in (files or {}).items():
            path = os.path.join(self.dir, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(content)
        text = BASE.format(relay_extra=relay_extra) + extra
        path = os.path.join(self.dir, "moat.toml")
        with open(path, "w") as f:
            f.write(text)
        return path, text

    def check(self, path, code):
        r = run("check", "-c", path)
        self.assertEqual(r.returncode, code, r.stdout + r.stderr)
        return r

    def assertNoJsonLines(self, stderr):
        self.assertEqual(json_lines(stderr), [], stderr)  # FILE:LINE or plain text, never the daemon's log

    # 1. The antivirus databases are loaded by check as serve would load them.

    def test_check_reports_a_broken_signature_database_at_database_dir(self):
        path, text = self.config('\n[antivirus]\naction = "reject"\ndatabase_dir = "clamav"\n',
                                 files={"clamav/moat-test.ndb": BAD_NDB})
        r = self.check(path, 1)
        self.assertRegex(r.stderr, re.escape(f"{path}:{line_of(text, 'database_dir')}: antivirus.database_dir: ") +
                         r".*Malformed database")
        self.assertNotIn(": ok", r.stdout)
        self.assertNoJsonLines(r.stderr)  # the daemon's antivirus_load_failed is not repeated

    def test_serve_refuses_to_start_on_a_database_that_does_not_load(self):
        # Running on would answer 451 4.7.1 to every message with only a log line to say
        # why: serve stops at start, with the FILE:LINE check gives, and touches no port.
        path, text = self.config('\n[antivirus]\naction = "reject"\ndatabase_dir = "clamav"\n',
                                 files={"clamav/moat-test.ndb": BAD_NDB})
        r = run("serve", "-c", path, timeout=120)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(f"{path}:{line_of(text, 'database_dir')}: antivirus.database_dir: ", r.stderr)
        with open(os.path.join(self.dir, "moat.log")) as f:
            events = [json.loads(line)["event"] for line in f]
        self.assertIn("start_failed", events)
        self.assertNotIn("listen", events)

    def test_check_reports_a_broken_database_at_the_antivirus_section_without_the_key(self):
        path, text = self.config('\n[antivirus]\naction = "reject"\n', files={"clamav/moat-test.ndb": BAD_NDB})
        r = self.check(path, 1)
        self.assertIn(f"{path}:{line_of(text, '[antivirus]')}: antivirus.database_dir: ", r.stderr)

    def test_check_accepts_a_good_database_and_warns_when_there_is_none(self):
        path, _ = self.config('\n[antivirus]\ndatabase_dir = "clamav"\n', files={"clamav/moat-test.ndb": GOOD_NDB})
        r = self.check(path, 0)
        self.assertIn(f"{path}: ok", r.stdout)
        self.assertNotIn("antivirus", r.stderr)
        # No database files: the filter is off, which check says as a FILE:LINE warning.
        os.remove(os.path.join(self.dir, "clamav", "moat-test.ndb"))
        r = self.check(path, 0)
        self.assertRegex(r.stderr, re.escape(f"{path}:") + r"\d+: warning: antivirus\.database_dir: no signature")
        self.assertNoJsonLines(r.stderr)

    # 2. A policy file that cannot be read is reported where the config names it.

    def test_check_reports_unreadable_policy_files_at_the_config_line(self):
        missing = {k: os.path.join(self.dir, f"missing-{k}") for k in ("rules", "recipients", "aliases", "block")}
        path, text = self.config(
            '\n[rules]\nfiles = [\n  "spam.cf",\n  "missing-rules",\n]\n'
            '\n[senders]\nblock = "missing-block"\n',
            relay_extra='recipients = "missing-recipients"\naliases = "missing-aliases"\n',
            files={"spam.cf": "header SUBJ Subject =~ /x/\nscore SUBJ 1\n"})
        r = self.check(path, 1)
        enoent = "No such file or directory"
        for key, needle, name in (("rules.files", '"missing-rules"', "rules"),
                                  ("relay.recipients", "recipients =", "recipients"),
                                  ("relay.aliases", "aliases =", "aliases"),
                                  ("senders.block", "block =", "block")):
            self.assertIn(f"{path}:{line_of(text, needle)}: {key}: cannot read {missing[name]}: {enoent}", r.stderr)
        # never the file's own path without a line
        for p in missing.values():
            self.assertNotIn(f"\n{p}:", "\n" + r.stderr)

    def test_check_reports_an_unreadable_users_file_at_its_listener(self):
        cert, key = os.path.join(self.dir, "cert.pem"), os.path.join(self.dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                        "-subj", "/CN=localhost", "-days", "2"], check=True, capture_output=True, timeout=60)
        path, text = self.config(f'\n[[listener]]\naddress = "127.0.0.1:0"\nmode = "submission"\n'
                                 f'tls_cert = "{cert}"\ntls_key = "{key}"\nauth_users = "nobody-users"\n')
        r = self.check(path, 1)
        self.assertIn(f"{path}:{line_of(text, 'auth_users')}: [[listener]].auth_users: cannot read "
                      f"{self.dir}/nobody-users: No such file or directory", r.stderr)

    def test_errors_inside_a_readable_policy_file_keep_its_own_file_and_line(self):
        path, _ = self.config('\n[rules]\nfiles = ["spam.cf"]\n', files={"spam.cf": "# rules\nendif\n"})
        r = self.check(path, 1)
        self.assertIn(f"{os.path.join(self.dir, 'spam.cf')}:2: endif without if", r.stderr)

    # 3. Core errors and policy/filter errors in one run.

    def test_check_reports_core_and_filter_errors_together(self):
        path, text = self.config('\n[limits]\nmax_message_size = "lots"\n'
                                 '\n[rules]\nfiles = ["missing.cf"]\ntag = "five"\n'
                                 '\n[antivirus]\ndatabase_dir = "clamav"\n',
                                 relay_extra='recipients = "nobody"\n',
                                 files={"clamav/moat-test.ndb": BAD_NDB})
        r = self.check(path, 1)
        for needle, what in (('max_message_size', "limits.max_message_size"),
                             ('"missing.cf"', "rules.files: cannot read"),
                             ('tag =', "rules.tag"),
                             ('recipients =', "relay.recipients: cannot read"),
                             ('database_dir', "antivirus.database_dir: ")):
            self.assertIn(f"{path}:{line_of(text, needle)}: {what}", r.stderr)

    def test_check_warns_about_a_sender_route_before_the_relay_domains_route(self):
        # A route by sender without domains before the route of example.test would send that
        # sender's mail to colleagues out through its smarthost: a warning, exit 0; after it,
        # none.
        sender_route = '[[route]]\nsenders = ["@brand-b.test"]\nto = ["smtp:127.0.0.1:2627"]\n\n'
        default_route = '[[route]]\nto = ["maildir:mail"]\n'
        base = BASE.format(relay_extra="")
        self.assertIn(default_route, base)
        path = os.path.join(self.dir, "moat.toml")
        for before in (True, False):
            inbound_route = "" if before else '[[route]]\ndomains = ["example.test"]\nto = ["maildir:mail"]\n\n'
            text = base.replace(default_route, inbound_route + sender_route + default_route)
            with open(path, "w") as f:
                f.write(text)
            r = self.check(path, 0)
            self.assertIn(f"{path}: ok", r.stdout)
            warning = (f"{path}:{line_of(text, 'senders =')}: warning: [[route]].senders: this route has no domains, "
                       "so it also takes its senders' mail to relay.domains (first match wins): example.test (else "
                       f"the [[route]] at line {line_of(text, 'maildir:mail')})")
            if before:
                self.assertIn(warning, r.stderr)
                self.assertIn("add domains, or move this route after the routes of the relay domains", r.stderr)
            else:  # after the route of example.test, as README's example: nothing to say
                self.assertNotIn("[[route]]", r.stderr)
            self.assertNoJsonLines(r.stderr)

    # 4. The commands that are not serve write no JSON log lines on stderr.

    def test_scan_shows_warnings_as_plain_text(self):
        path, _ = self.config('\n[antivirus]\ndatabase_dir = "clamav"\n')
        msg = os.path.join(self.dir, "m.eml")
        with open(msg, "w") as f:
            f.write("From: a@sender.test\nTo: b@example.test\nSubject: hi\n\nhello\n")
        r = run("scan", "-c", path, "--rcpt", "b@example.test", msg)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNoJsonLines(r.stderr)
        self.assertRegex(r.stderr, r"(?m)^moat: warning: antivirus_disabled: database_dir=\S+clamav reason=\"")
        self.assertEqual(json.loads(r.stdout)["verdict"], "continue")
        # info lines stay out
        self.assertNotIn("reload", r.stderr)

    # 5. Each command takes its own options only.

    def test_each_command_refuses_options_it_does_not_take(self):
        path, _ = self.config()
        msg = os.path.join(self.dir, "m.eml")
        with open(msg, "w") as f:
            f.write("Subject: x\n\nx\n")
        refused = [
            ("check", "-c", path, "--rcpt", "x@example.test"),
            ("check", "-c", path, "--json"),
            ("check", "-c", path, "extra"),
            ("serve", "-c", path, "--helo", "x"),
            ("version", "extra"),
            ("--version", "--json"),
            ("help", "x"),
            ("spf", "-c", path, "--ip", "192.0.2.1", "--mail-from", "a@example.test"),
            ("spf", "-c", path, "--helo", "h.test", "--mail-from", "a@example.test"),
            ("spf", "-c", path, "--ip", "192.0.2.1", "--helo", "h.test"),
            ("spf", "-c", path, "--ip", "192.0.2.1", "--helo", "h", "--mail-from", "a@b.test", "--rcpt", "x"),
            ("scan", "-c", path, "--ip", "192.0.2.1", msg),
            ("scan", "-c", path, "--helo", "a", "--helo", "b", msg),
            ("queue", "-c", path, "list", "--rcpt", "x"),
            ("queue", "-c", path, "show", "ID", "--all"),
            ("queue", "-c", path, "list", "--hold", "--all"),
            ("dkim", "keygen", "-c", path, "--domain", "d.test", "--selector", "s", "--out",
             os.path.join(self.dir, "k")),
            ("dkim", "keygen", "--domain", "d.test", "--selector", "s", "--out", os.path.join(self.dir, "k"),
             "--ip", "1.2.3.4"),
            ("check", "-c", path, "-c", path),
            ("check", "-c", path, "-x"),
        ]
        for args in refused:
            r = run(*args, timeout=30)
            self.assertEqual(r.returncode, 2, f"{args}: {r.returncode} {r.stdout} {r.stderr}")
            self.assertIn("usage: moat", r.stderr, args)
            self.assertEqual(r.stdout, "", args)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "k")))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "spool")))  # serve never started
        # and their own options are still taken
        self.assertEqual(run("version").returncode, 0)
        self.assertEqual(run("check", "--config", path).returncode, 0)

    # 6. scan runs the inbound pipeline by default.

    def test_scan_defaults_to_an_inbound_client(self):
        from authzone import DnsServer  # noqa: E402  (python3-dnslib and python3-yaml)
        dns = DnsServer({"spffail.test": [{"TXT": "v=spf1 -all"}]}, directory=self.dir)
        self.addCleanup(dns.stop)
        path, _ = self.config(f'\n[dns]\nnameservers = ["{dns.nameserver}"]\ntimeout = "2s"\n'
                              '\n[spf]\nfail = "reject"\n')
        msg = os.path.join(self.dir, "m.eml")
        with open(msg, "w") as f:
            f.write("From: x@spffail.test\nTo: b@example.test\nSubject: hi\n\nhello\n")
        args = ("scan", "-c", path, "--mail-from", "x@spffail.test", "--rcpt", "b@example.test", msg)
        r = run(*args)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        # 192.0.2.1 (RFC 5737) is outside relay.networks: SPF applies, and -all fails it
        self.assertEqual(out["filters"]["spf"]["result"], "fail", out)
        self.assertEqual(out["verdict"], "reject", out)
        # an explicit relay client still takes the outbound path
        out = json.loads(run(*args[:3], "--client-ip", "127.0.0.1", *args[3:]).stdout)
        self.assertNotEqual(out["filters"].get("spf", {}).get("result"), "fail", out)
        self.assertNotEqual(out["verdict"], "reject", out)


if __name__ == "__main__":
    unittest.main()
