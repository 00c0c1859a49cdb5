"""SPF, DKIM and DMARC end to end through the real daemon: a real authoritative DNS server
on loopback (tests/support/dns_server.py) is the daemon's only nameserver, clients send
with smtplib from 127.0.0.1, and the test's own SMTP sink receives what Moat relays, so
the Authentication-Results Moat prepends and the DKIM-Signature it adds are read from the
delivered bytes. DKIM keys are made at test time; signatures are made and checked with
python3-dkim, an implementation independent of Moat's libopendkim. Covered beyond the
basics: l= (dkim=policy), k= against a=, the signature limit's order, and outbound
signatures that survive the SMTP client's 998-octet line limit."""

import os
import re
import smtplib
import subprocess
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from authzone import DnsSinkTestCase, ed25519_key, header_values, owned_dns, rsa_key, txt_lookup  # noqa: E402
from harness import (MOAT_BIN, Moat, RawClient, class_temp_dir, free_port, owned_moat, owned_sink,  # noqa: E402
                     simple_message, transaction)

import dkim  # noqa: E402  (python3-dkim, with python3-nacl for ed25519)

HOST = "mx.moat.test"
INBOUND_NETS = ["10.255.255.0/24"]  # loopback is NOT a relay client: SPF and DMARC apply


def own_auth_results(data):
    """The Authentication-Results headers that claim to come from this gateway."""
    return [v for v in header_values(data, "Authentication-Results")
            if re.match(re.escape(HOST) + r"\s*(;|$)", v)]


message = simple_message


def dns_config(nameserver, extra=""):
    return f'\n[dns]\nnameservers = ["{nameserver}"]\ntimeout = "1s"\n' + extra


class DaemonTest(unittest.TestCase):
    """One DNS server, Sink and daemon for the whole class (set up with owned_dns, owned_sink
    and owned_moat, which stop them after its last test)."""

    def delivered(self, subject):
        """The bytes the sink received for the message with this Subject."""
        return self.sink.wait_subject(subject)


class InboundAuthTest(DaemonTest):
    """One daemon with [spf] fail = "reject" and the default temperror = "tempfail"."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = class_temp_dir(cls, "moat-auth-")
        cls.sender_key = os.path.join(cls.tmp, "sel.pem")
        cls.sender_txt = rsa_key(cls.sender_key)
        cls.dns = owned_dns(cls, {
            "sender.test": [{"TXT": "v=spf1 ip4:127.0.0.1 -all"}],
            "sel._domainkey.sender.test": [{"TXT": cls.sender_txt}],
            # the same RSA key published as k=ed25519 (RFC 6376 6.1.2: unusable for rsa-sha256)
            "edk._domainkey.sender.test": [{"TXT": cls.sender_txt.replace("k=rsa", "k=ed25519")}],
            "_dmarc.sender.test": [{"TXT": "v=DMARC1; p=reject"}],
            "bank.test": [{"TXT": "v=spf1 -all"}],
            "_dmarc.bank.test": [{"TXT": "v=DMARC1; p=reject"}],
            "attacker.test": [{"TXT": "v=spf1 ip4:127.0.0.1 -all"}],
            "spffail.test": [{"TXT": "v=spf1 -all"}],
            "slow.test": ["TIMEOUT"],
            # bücher.test (RFC 8616): DNS holds the A-label form only.
            "xn--bcher-kva.test": [{"TXT": "v=spf1 -all"}],
            "_dmarc.xn--bcher-kva.test": [{"TXT": "v=DMARC1; p=reject"}],
            "sel._domainkey.xn--bcher-kva.test": [{"TXT": cls.sender_txt}],
            # a bad secondary tag: the p=reject must still apply (RFC 7489 6.6.3)
            "_dmarc.badtag.test": [{"TXT": "v=DMARC1; p=reject; pct=50.5"}],
            "_dmarc.badfo.test": [{"TXT": "v=DMARC1; p=reject; fo=2; ri=1d"}],
        }, directory=cls.tmp)
        cls.sink = owned_sink(cls)
        cls.metrics_port = free_port()
        cls.moat = owned_moat(cls, routes=[("example.test", f"smtp:127.0.0.1:{cls.sink.port}")],
                              networks=INBOUND_NETS,
                              extra=dns_config(cls.dns.nameserver, '\n[spf]\nfail = "reject"\n'),
                              server_extra=f'metrics_listen = "127.0.0.1:{cls.metrics_port}"')

    def test_signed_aligned_message_passes_spf_dkim_dmarc(self):
        raw = message("Alice <alice@sender.test>", "signed pass")
        with open(self.sender_key, "rb") as f:
            private = f.read()
        sig = dkim.sign(raw, b"sel", b"sender.test", private,
                        include_headers=[b"from", b"to", b"subject", b"message-id"])
        self.assertTrue(sig.startswith(b"DKIM-Signature:"))
        signed = sig + raw
        # the test's own signature is good before Moat sees it
        self.assertTrue(dkim.verify(signed, dnsfunc=txt_lookup({"sel._domainkey.sender.test": self.sender_txt})))
        steps = transaction(self.moat, "alice@sender.test", "bob@example.test", signed)
        self.assertEqual(steps["mail"][0], 250, steps)
        self.assertEqual(steps["data"][0], 250, steps)
        data = self.delivered("signed pass")
        ar = own_auth_results(data)
        self.assertEqual(len(ar), 1, data[:2000])
        self.assertRegex(ar[0], r"\bspf=pass\b")
        self.assertRegex(ar[0], r"\bdkim=pass\b[^;]*\bheader\.d=sender\.test\b")
        self.assertRegex(ar[0], r"\bdmarc=pass\b")
        self.assertNotRegex(ar[0], r"=(fail|temperror|permerror)\b")
        # the message itself arrives intact behind Moat's headers
        self.assertIn(signed.split(b"\r\n", 1)[0], data)
        self.assertTrue(data.endswith(b"hello\r\n"))

    def sign_sender(self, raw, selector=b"sel", domain=b"sender.test", **kw):
        with open(self.sender_key, "rb") as f:
            private = f.read()
        return dkim.sign(raw, selector, domain, private,
                         include_headers=[b"from", b"to", b"subject", b"message-id"], **kw)

    def test_l_tag_covering_part_of_the_body_is_policy_not_pass(self):
        # RFC 6376 8.2: text appended after l= is unsigned; the signature must not make the
        # forged part pass DMARC. MAIL FROM attacker.test: SPF passes but is not aligned.
        raw = message("CEO <ceo@sender.test>", "l tag appended")
        signed = self.sign_sender(raw, length=True) + raw + b"PLEASE WIRE $1M TO ACCOUNT 1234\r\n"
        steps = transaction(self.moat, "x@attacker.test", "bob@example.test", signed)
        self.assertEqual(steps["data"][0], 550, steps)
        # With an aligned SPF pass the message is accepted, and the result says why DKIM did not count.
        raw = message("CEO <ceo@sender.test>", "l tag shown")
        signed = self.sign_sender(raw, length=True) + raw + b"appended\r\n"
        steps = transaction(self.moat, "ceo@sender.test", "bob@example.test", signed)
        self.assertEqual(steps["data"][0], 250, steps)
        ar = own_auth_results(self.delivered("l tag shown"))
        self.assertRegex(ar[0], r'\bdkim=policy reason="l= covers only \d+ of \d+ body octets" header\.d=sender\.test')
        self.assertNotRegex(ar[0], r"\bdkim=pass\b")

    def test_key_whose_k_is_not_the_signature_algorithm_is_permerror(self):
        raw = message("CEO <ceo@sender.test>", "k mismatch")
        steps = transaction(self.moat, "x@attacker.test", "bob@example.test", self.sign_sender(raw, b"edk") + raw)
        self.assertEqual(steps["data"][0], 550, steps)
        rej = self.moat.wait_log(event="reject", stage="data", **{"from": "x@attacker.test"})
        self.assertIn("inappropriate key algorithm", str(rej.get("filters")))

    def test_author_signature_below_the_signature_limit_is_checked(self):
        # Nine signatures added in transit above the author's (the default limit is 8): the
        # one aligned with From is checked first, so DMARC passes.
        raw = message("CEO <ceo@sender.test>", "many signatures")
        signed = self.sign_sender(raw) + raw
        for _ in range(9):
            signed = self.sign_sender(signed, domain=b"attacker.test") + signed
        steps = transaction(self.moat, "x@attacker.test", "bob@example.test", signed)
        self.assertEqual(steps["data"][0], 250, steps)
        ar = own_auth_results(self.delivered("many signatures"))
        self.assertRegex(ar[0], r"\bdkim=pass header\.d=sender\.test\b")
        self.assertRegex(ar[0], r'\bdkim=neutral reason="more than 8 signatures')
        self.assertRegex(ar[0], r"\bdmarc=pass\b")

    def test_forged_from_of_p_reject_domain_is_refused_at_data(self):
        raw = message("CEO <ceo@bank.test>", "forged bank")
        steps = transaction(self.moat, "boss@attacker.test", "bob@example.test", raw)
        self.assertEqual(steps["mail"][0], 250, steps)  # attacker.test's own SPF passes
        self.assertEqual(steps["rcpt"][0], 250, steps)
        code, text = steps["data"]
        self.assertEqual(code, 550, steps)
        self.assertTrue(text.decode().startswith("5.7.1 "), text)
        rej = self.moat.wait_log(event="reject", stage="data", **{"from": "boss@attacker.test"})
        self.assertTrue(rej["reply"].startswith("550 5.7.1"), rej)
        self.assertIn("dmarc", str(rej.get("filters")))
        time.sleep(0.5)
        self.assertFalse([m for m in self.sink.messages if b"Subject: forged bank\r\n" in m["data"]])

    def test_spf_fail_is_refused_at_mail_with_5_7_23(self):
        raw = message("x <x@spffail.test>", "spf fail")
        steps = transaction(self.moat, "x@spffail.test", "bob@example.test", raw)
        code, text = steps["mail"]
        self.assertEqual(code, 550, steps)
        self.assertTrue(text.decode().startswith("5.7.23 "), text)
        self.assertNotIn("data", steps)
        rej = self.moat.wait_log(event="reject", stage="mail", **{"from": "x@spffail.test"})
        self.assertTrue(rej["reply"].startswith("550 5.7.23"), rej)
        # The filters that decided, as on every reject line (this one read {"": ""} once).
        self.assertEqual(rej["filters"]["spf"]["result"], "fail", rej)
        # Before DATA there is no queue id: the MAIL-stage filter lines have none (not "").
        lines = self.moat.find_logs(event="filter", session=rej["session"], stage="mail")
        self.assertTrue(lines)
        self.assertFalse([x for x in lines if "queue_id" in x], lines)

    def test_a_mail_refused_at_its_filters_leaves_no_smtputf8_behind(self):
        # RFC 6531 3.5: a UTF-8 sender needs SMTPUTF8 on its own MAIL. A MAIL with SMTPUTF8
        # that SPF refused once let the next MAIL through without it (250, not 553).
        c = RawClient(self.moat.port)
        try:
            self.assertEqual(c.code(), 220)
            c.send("EHLO client.test\r\n")
            c.read_reply()
            c.send("MAIL FROM:<x@spffail.test> SMTPUTF8\r\n")
            self.assertEqual(c.read_reply()[-1][0], 550)
            c.send("MAIL FROM:<\u00e9@sender.test>\r\n")
            self.assertEqual(c.read_reply()[-1], (553, "5.6.7 Non-ASCII addresses not permitted without SMTPUTF8"))
            c.send("MAIL FROM:<\u00e9@sender.test> SMTPUTF8\r\n")
            self.assertEqual(c.code(), 250)
        finally:
            c.close()

    def test_spf_dns_timeout_tempfails_mail_by_default(self):
        raw = message("y <y@slow.test>", "spf timeout tempfail")
        started = time.monotonic()
        steps = transaction(self.moat, "y@slow.test", "bob@example.test", raw)
        code, text = steps["mail"]
        self.assertEqual(code, 451, steps)
        self.assertTrue(text.decode().startswith("4.7.24 "), text)
        self.assertLess(time.monotonic() - started, 30)
        rej = self.moat.wait_log(event="reject", stage="mail", **{"from": "y@slow.test"})
        self.assertTrue(rej["reply"].startswith("451 4.7.24"), rej)
        self.assertTrue(any(q == "slow.test TXT" for q in self.dns.queries()), self.dns.queries())
        # A refusal at MAIL is a refused transaction: counted (it stayed 0 once).
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        self.assertGreaterEqual(float(re.search(r'(?m)^moat_rejects_total\{stage="mail",class="4xx"\} (\S+)$',
                                                body).group(1)), 1, body)
        self.assertGreaterEqual(float(re.search(r"(?m)^moat_messages_tempfailed_total (\S+)$", body).group(1)), 1)

    def test_incoming_auth_results_claiming_our_name_are_removed(self):
        forged = (b"Authentication-Results: " + HOST.encode() + b"; spf=pass smtp.mailfrom=bank.test;\r\n"
                  b"\tdkim=pass header.d=bank.test; dmarc=pass header.from=bank.test\r\n"
                  b"Authentication-Results: other.example; dkim=pass header.d=elsewhere.test\r\n")
        raw = message("Alice <alice@attacker.test>", "forged ar", extra_headers=forged)
        steps = transaction(self.moat, "alice@attacker.test", "bob@example.test", raw)
        self.assertEqual(steps["data"][0], 250, steps)
        data = self.delivered("forged ar")
        ar = own_auth_results(data)
        # RFC 8601 section 5: only the one Moat wrote may remain (CONTRACT: one header)
        self.assertEqual(len(ar), 1, ar)
        self.assertNotIn("header.d=bank.test", ar[0])
        self.assertIn("other.example", " ".join(header_values(data, "Authentication-Results")))

    def test_moat_writes_exactly_one_auth_results_of_its_own(self):
        """What can be asserted today about test 6: Moat's own header comes first and
        reports what it checked, not what the client claimed."""
        forged = b"Authentication-Results: " + HOST.encode() + b"; dmarc=pass header.from=bank.test\r\n"
        raw = message("Alice <alice@attacker.test>", "forged ar first", extra_headers=forged)
        steps = transaction(self.moat, "alice@attacker.test", "bob@example.test", raw)
        self.assertEqual(steps["data"][0], 250, steps)
        data = self.delivered("forged ar first")
        first = own_auth_results(data)[0]
        self.assertRegex(first, r"\bspf=pass\b[^;]*smtp\.mailfrom=attacker\.test")
        self.assertNotIn("header.from=bank.test", first)


    def refused(self, from_field, subject, mail_from="boss@attacker.test", options=()):
        """Sends a message with this raw From field (bytes, may be several lines): the DATA
        reply, after checking that nothing reached the sink."""
        raw = (from_field + b"\r\nTo: bob@example.test\r\nSubject: " + subject.encode() +
               b"\r\nMessage-ID: <" + subject.replace(" ", "-").encode() + b"@client.test>\r\n\r\nhello\r\n")
        s = self.moat.smtp()
        try:
            s.ehlo()
            self.assertEqual(s.mail(mail_from, list(options))[0], 250)
            self.assertEqual(s.rcpt("bob@example.test")[0], 250)
            try:
                reply = s.data(raw)
            except smtplib.SMTPDataError as e:
                reply = (e.smtp_code, e.smtp_error)
        finally:
            s.quit()
        return reply

    def assert_not_delivered(self, subject):
        time.sleep(0.3)
        self.assertFalse([m for m in self.sink.messages if ("Subject: " + subject + "\r\n").encode() in m["data"]])

    def test_junk_beside_a_forged_author_does_not_hide_it(self):
        """Audit finding 1: one unusable address anywhere in From made DMARC a permerror and
        the forged p=reject author beside it was delivered."""
        many = b", ".join(b"a@d%d.attacker.test" % i for i in range(16))
        variants = {
            "empty domain": b"From: CEO <ceo@bank.test>, x@",
            "address literal": b"From: CEO <ceo@bank.test>, postmaster@[127.0.0.1]",
            "bad domain": b"From: CEO <ceo@bank.test>, x@bad..domain",
            "second From without address": b"From: CEO <ceo@bank.test>\r\nFrom: undisclosed",
            "second From empty group": b"From: CEO <ceo@bank.test>\r\nFrom: undisclosed-recipients:;",
            "unbalanced quote": b'From: "CEO <ceo@bank.test>',
            "bank first of 17 domains": b"From: ceo@bank.test, " + many,
        }
        for name, field in variants.items():
            with self.subTest(name):
                code, text = self.refused(field, "junk " + name)
                self.assertEqual(code, 550, text)
                self.assertEqual(text.decode(), "5.7.1 Message rejected: DMARC policy of bank.test (p=reject)")
                self.assert_not_delivered("junk " + name)
        # The forged author among more domains than are evaluated: malformed, refused too.
        code, text = self.refused(b"From: " + many + b", ceo@bank.test", "junk bank last of 17")
        self.assertEqual(code, 550, text)
        self.assertIn("malformed From", text.decode())

    def test_from_without_usable_author_domain_is_refused_as_malformed(self):
        for name, field in {"only junk": b"From: x@, postmaster@[127.0.0.1]",
                            "not an IDN": b"From: CEO <ceo@b\xe4nk.test>"}.items():
            with self.subTest(name):
                code, text = self.refused(field, "malformed " + name, options=("BODY=8BITMIME",))
                self.assertEqual(code, 550, text)
                self.assertTrue(text.decode().startswith("5.7.1 Message rejected: malformed From header field"), text)
                self.assert_not_delivered("malformed " + name)
        rej = self.moat.wait_log(event="reject", stage="data", **{"from": "boss@attacker.test"},
                                 reply="550 5.7.1 Message rejected: malformed From header field, "
                                       "no usable author domain in From (RFC 5322 3.6, RFC 7489 6.6.1)")
        self.assertTrue(rej["filters"]["dmarc"]["malformed_from"], rej)

    def test_from_naming_no_domain_is_delivered_and_its_text_stays_out_of_auth_results(self):
        """No domain named, none to impersonate: delivered with dmarc=permerror, and the
        client's From text is not copied into Moat's header (audit finding 9)."""
        raw = message("undisclosed; dmarc=pass header.from=bank.test", "from text")
        steps = transaction(self.moat, "x@attacker.test", "bob@example.test", raw)
        self.assertEqual(steps["data"][0], 250, steps)
        ar = own_auth_results(self.delivered("from text"))
        self.assertEqual(len(ar), 1, ar)
        self.assertIn("dmarc=permerror (no address in From)", ar[0])
        self.assertNotIn("bank.test", ar[0])
        self.assertNotIn("undisclosed", ar[0])

    def test_internationalized_from_domain_uses_the_a_label_policy(self):
        """Audit finding 2 (RFC 8616): ceo@bücher.test is looked up as xn--bcher-kva.test."""
        u_from = "From: CEO <ceo@b\u00fccher.test>".encode()
        code, text = self.refused(u_from, "idn forged", options=("SMTPUTF8", "BODY=8BITMIME"))
        self.assertEqual(code, 550, text)
        self.assertEqual(text.decode(), "5.7.1 Message rejected: DMARC policy of xn--bcher-kva.test (p=reject)")
        self.assertIn("_dmarc.xn--bcher-kva.test TXT", self.dns.queries())
        self.assert_not_delivered("idn forged")
        # The domain's own mail, signed d=xn--bcher-kva.test, aligns with the U-label From.
        raw = u_from + (b"\r\nTo: bob@example.test\r\nSubject: idn signed\r\nMessage-ID: <idn-signed@client.test>"
                        b"\r\n\r\nhello\r\n")
        with open(self.sender_key, "rb") as f:
            private = f.read()
        signed = dkim.sign(raw, b"sel", b"xn--bcher-kva.test", private,
                           include_headers=[b"from", b"to", b"subject", b"message-id"]) + raw
        s = self.moat.smtp()
        try:
            s.ehlo()
            s.mail("boss@attacker.test", ["SMTPUTF8", "BODY=8BITMIME"])
            s.rcpt("bob@example.test")
            self.assertEqual(s.data(signed)[0], 250)
        finally:
            s.quit()
        ar = own_auth_results(self.delivered("idn signed"))[0]
        self.assertRegex(ar, r"\bdkim=pass\b[^;]*header\.d=xn--bcher-kva\.test")
        self.assertRegex(ar, r"\bdmarc=pass\b[^;]*header\.from=xn--bcher-kva\.test")

    def test_record_with_a_bad_secondary_tag_still_applies_p_reject(self):
        """Audit finding 5: pct=50.5 (or fo=2, ri=1d) made the record a permerror."""
        for domain in ("badtag.test", "badfo.test"):
            with self.subTest(domain):
                code, text = self.refused(f"From: x@{domain}".encode(), "badtag " + domain)
                self.assertEqual(code, 550, text)
                self.assertEqual(text.decode(), f"5.7.1 Message rejected: DMARC policy of {domain} (p=reject)")

    def test_mail_from_address_literal_is_quoted_in_auth_results(self):
        """Audit finding 9: brackets are not token characters (RFC 8601 2.2)."""
        raw = message("Alice <alice@attacker.test>", "literal mailfrom")
        steps = transaction(self.moat, "x@[127.0.0.1]", "bob@example.test", raw)
        self.assertEqual(steps["data"][0], 250, steps)
        ar = own_auth_results(self.delivered("literal mailfrom"))[0]
        self.assertIn('spf=none smtp.mailfrom="[127.0.0.1]"', ar)


class MalformedFromTagTest(DnsSinkTestCase):
    """[dmarc] malformed_from = "tag": delivered, and the client's From text stays out of
    Moat's Authentication-Results (audit finding 9)."""

    ZONE = {"attacker.test": [{"TXT": "v=spf1 ip4:127.0.0.1 -all"}]}

    def test_from_text_is_not_copied_into_auth_results(self):
        self.moat = Moat(routes=[("example.test", f"smtp:127.0.0.1:{self.sink.port}")], networks=INBOUND_NETS,
                         extra=dns_config(self.dns.nameserver, '\n[dmarc]\nmalformed_from = "tag"\n'))
        raw = message("x@(y); dmarc=pass header.from=bank.test", "from text")
        steps = transaction(self.moat, "x@attacker.test", "bob@example.test", raw)
        self.assertEqual(steps["data"][0], 250, steps)
        data = self.sink.wait_messages(1)[0]["data"]
        ar = own_auth_results(data)
        self.assertEqual(len(ar), 1, data[:2000])
        self.assertIn("dmarc=permerror (no usable author domain in From)", ar[0])
        self.assertNotIn("bank.test", ar[0])
        line = self.moat.wait_log(event="filter", filter="dmarc")
        self.assertEqual(line["detail"]["problem"], 'unusable From domain ""', line)  # what was wrong: in the log
        self.assertTrue(line["detail"]["malformed_from"], line)


class SpfTemperrorTagTest(DnsSinkTestCase):
    ZONE = {"slow.test": ["TIMEOUT"]}

    def test_temperror_tag_accepts_and_reports_temperror(self):
        self.moat = Moat(routes=[("example.test", f"smtp:127.0.0.1:{self.sink.port}")], networks=INBOUND_NETS,
                         extra=dns_config(self.dns.nameserver, '\n[spf]\ntemperror = "tag"\n'))
        raw = message("z <z@nodmarc.test>", "spf timeout tag")
        steps = transaction(self.moat, "z@slow.test", "bob@example.test", raw)
        self.assertEqual(steps["mail"][0], 250, steps)
        self.assertEqual(steps["data"][0], 250, steps)
        data = self.sink.wait_messages(1)[0]["data"]
        ar = own_auth_results(data)
        self.assertEqual(len(ar), 1, data[:2000])
        self.assertRegex(ar[0], r"\bspf=temperror\b[^;]*smtp\.mailfrom=slow\.test")
        self.assertNotRegex(ar[0], r"\bspf=pass\b")  # never a silent pass


def make_sign_key(directory, domain, selector, kind):
    """`moat dkim keygen` when this build has it (CONTRACT.md), else openssl. Returns
    (key file, TXT value, which tool made it)."""
    path = os.path.join(directory, f"{selector}.{kind}.pem")
    r = subprocess.run([MOAT_BIN, "dkim", "keygen", "--domain", domain, "--selector", selector,
                        "--type", kind, "--out", path], capture_output=True, text=True, timeout=60)
    if r.returncode == 0 and os.path.exists(path):
        quoted = re.findall(r'"([^"]*)"', r.stdout)
        text = "".join(quoted) if quoted and any("p=" in q for q in quoted) else \
            r.stdout[r.stdout.index("v=DKIM1"):].strip()
        return path, text, "moat"
    if kind == "rsa":
        return path, rsa_key(path), "openssl"
    return path, ed25519_key(path), "openssl"


def verifies(d, idx, dnsfunc):
    """python3-dkim returns False for a bad signature, or raises for a body hash mismatch."""
    try:
        return d.verify(idx=idx, dnsfunc=dnsfunc)
    except dkim.ValidationError:
        return False


class OutboundSigningTest(DaemonTest):
    @classmethod
    def setUpClass(cls):
        cls.tmp = class_temp_dir(cls, "moat-sign-")
        cls.rsa_file, cls.rsa_txt, cls.keygen_tool = make_sign_key(cls.tmp, "example.test", "s1", "rsa")
        cls.ed_file, cls.ed_txt, _ = make_sign_key(cls.tmp, "example.test", "s2", "ed25519")
        cls.dns = owned_dns(cls, {"example.test": [{"TXT": "v=spf1 ip4:127.0.0.1 -all"}]}, directory=cls.tmp)
        cls.sink = owned_sink(cls)
        sign = (f'\n[[dkim.sign]]\ndomain = "example.test"\nselector = "s1"\nkey_file = "{cls.rsa_file}"\n'
                f'\n[[dkim.sign]]\ndomain = "example.test"\nselector = "s2"\nkey_file = "{cls.ed_file}"\n'
                f'algorithm = "ed25519-sha256"\n')
        cls.moat = owned_moat(cls, routes=[("far.test", f"smtp:127.0.0.1:{cls.sink.port}")],
                              networks=["127.0.0.0/8"], extra=dns_config(cls.dns.nameserver, sign))

    def assert_both_verify(self, data):
        sigs = header_values(data, "DKIM-Signature")
        self.assertEqual(len(sigs), 2, data[:3000])
        dnsfunc = txt_lookup({"s1._domainkey.example.test": self.rsa_txt,
                              "s2._domainkey.example.test": self.ed_txt})
        d = dkim.DKIM(data)
        for idx in range(2):
            self.assertTrue(verifies(d, idx, dnsfunc), f"signature {idx} does not verify: {sigs[idx][:200]}")

    def test_from_with_a_comment_is_signed(self):
        raw = (b"From: someone@example.test (Someone Example)\r\nTo: friend@far.test\r\nSubject: comment from\r\n"
               b"Message-ID: <comment-1@example.test>\r\n\r\nbody\r\n")
        steps = transaction(self.moat, "someone@example.test", "friend@far.test", raw)
        self.assertEqual(steps["data"][0], 250, steps)
        self.assert_both_verify(self.delivered("comment from"))

    def test_long_body_line_signature_survives_delivery(self):
        # Generated HTML on one line: the SMTP client breaks it at 998 octets, and the
        # signature covers the broken form.
        html = b"<html><body>" + b"".join(b'<td class="c">cell %d</td>' % i for i in range(150)) + b"</body></html>"
        self.assertGreater(len(html), 998)
        raw = (b"From: someone@example.test\r\nTo: friend@far.test\r\nSubject: long body line\r\n"
               b"MIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n" + html + b"\r\n")
        steps = transaction(self.moat, "someone@example.test", "friend@far.test", raw)
        self.assertEqual(steps["data"][0], 250, steps)
        data = self.delivered("long body line")
        self.assertLessEqual(max(len(line) for line in data.split(b"\r\n")), 998)
        self.assert_both_verify(data)

    def test_signature_over_many_header_fields_is_folded(self):
        cc = b"".join(b"Cc: c%d@far.test\r\n" % i for i in range(305))
        raw = (b"From: someone@example.test\r\nTo: friend@far.test\r\nSubject: many headers\r\n" + cc +
               b"\r\nbody\r\n")
        steps = transaction(self.moat, "someone@example.test", "friend@far.test", raw)
        self.assertEqual(steps["data"][0], 250, steps)
        data = self.delivered("many headers")
        head = data.split(b"\r\n\r\n", 1)[0]
        start = head.lower().index(b"dkim-signature:")
        sig_lines = head[start:].split(b"\r\nCc:")[0].split(b"\r\n")
        self.assertLessEqual(max(len(line) for line in sig_lines), 80, sig_lines[:3])
        self.assert_both_verify(data)

    def test_outbound_message_is_signed_rsa_and_ed25519(self):
        raw = (b"From: Someone <someone@example.test>\r\nTo: friend@far.test\r\nSubject: outbound signed\r\n"
               b"Message-ID: <outbound-1@example.test>\r\n\r\nbody line\r\n\r\n")
        steps = transaction(self.moat, "someone@example.test", "friend@far.test", raw)
        self.assertEqual(steps["data"][0], 250, steps)
        data = self.delivered("outbound signed")
        sigs = header_values(data, "DKIM-Signature")
        self.assertEqual(len(sigs), 2, data[:3000])
        tags = [dict((k.strip(), v.strip()) for k, _, v in (t.partition("=") for t in s.split(";") if "=" in t))
                for s in sigs]
        self.assertEqual(sorted(t["a"] for t in tags), ["ed25519-sha256", "rsa-sha256"])
        for t in tags:
            self.assertEqual(t["d"], "example.test")
        # One Authentication-Results of ours, naming all three results (CONTRACT.md), here
        # the checks that inbound mail gets and outbound mail does not.
        ours = [v for v in header_values(data, "Authentication-Results") if v.startswith(HOST)]
        self.assertEqual(len(ours), 1, ours)
        for method in ("spf=none (not checked: outbound mail)", "dkim=none", "dmarc=none (not checked: outbound mail)"):
            self.assertIn(method, ours[0])
        dnsfunc = txt_lookup({"s1._domainkey.example.test": self.rsa_txt,
                              "s2._domainkey.example.test": self.ed_txt})
        d = dkim.DKIM(data)
        for idx, t in enumerate(tags):
            self.assertTrue(verifies(d, idx, dnsfunc), f"signature {t['a']} s={t['s']} does not verify")
        # a changed body must break both: the check above is not vacuous
        tampered = dkim.DKIM(data.replace(b"body line", b"body LINE"))
        for idx in range(len(tags)):
            self.assertFalse(verifies(tampered, idx, dnsfunc))


if __name__ == "__main__":
    unittest.main()
