"""ARC (RFC 8617) end to end through the real daemon: chains are sealed by python3-dkim
(`dkim.arc_sign`, an implementation independent of Moat's) and checked with its own
`dkim.arc_verify` before they are sent, the sealers' keys are published by the loopback DNS
server (tests/support/dns_server.py, the daemon's only nameserver), and the
Authentication-Results Moat adds is read from what the test's SMTP sink receives. Covered:
no chain (arc=none), one and two sealed hops (pass), the body changed after sealing, an
altered ARC-Seal, a latest seal saying cv=fail, a missing instance (fail), and [arc]
trusted_sealers: a From domain with p=reject failing DMARC is delivered when a trusted
sealer's chain passes (dmarc=fail, arc=pass, the override in the `filter` line), refused
with 550 when the sealer is not trusted.

Sealing ([arc] seal_domain, seal_selector, seal_key_file, ArcSealTest): Moat's own ARC set,
checked by dkimpy with Moat's key published in the loopback zone: i=1 cv=none on a message
without a chain, i=2 cv=pass after a valid hop (the whole chain passes), a Subject Moat tags
(the seal covers the delivered bytes), an 8-bit body sealed as it came (the author's DKIM
signature still verifies), a line over 998 octets sealed and stored broken so a Maildir copy verifies, a broken chain getting
i=N+1 with cv=fail whose ARC-Seal signs only its own set (RFC 8617 §5.1.2; checked over the
relaxed set with dkimpy's RSA code), no set on a chain of 50 instances, no set on outbound
mail, and a half or bad seal config refused at FILE:LINE."""

import base64
import hashlib
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from authzone import header_values, owned_dns, rsa_key, txt_lookup  # noqa: E402
from harness import (check_config, class_temp_dir, owned_moat, owned_sink, simple_message,  # noqa: E402
                     transaction)

import dkim  # noqa: E402  (python3-dkim)
import dkim.crypto  # noqa: E402
import dkim.util  # noqa: E402

HOST = "mx.moat.test"
INBOUND_NETS = ["10.255.255.0/24"]  # loopback is NOT a relay client: SPF, ARC and DMARC apply
SEALERS = ["hop1.test", "hop2.test", "trusted.test", "untrusted.test"]


def own_auth_results(data):
    return [v for v in header_values(data, "Authentication-Results")
            if re.match(re.escape(HOST) + r"\s*(;|$)", v)]


def message(from_addr, subject, body=b"hello from the list\r\n"):
    return simple_message(from_addr, subject, body=body, msgid_host="origin.test")


class ArcTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = class_temp_dir(cls, "moat-arc-")
        cls.key = os.path.join(cls.tmp, "sealer.pem")
        cls.txt = rsa_key(cls.key)
        with open(cls.key, "rb") as f:
            cls.private = f.read()
        cls.records = {f"sel._domainkey.{d}": cls.txt for d in SEALERS}
        zone = {name: [{"TXT": txt}] for name, txt in cls.records.items()}
        zone.update({
            # the forwarder's envelope: SPF passes, but it is not the From domain's
            "list.test": [{"TXT": "v=spf1 ip4:127.0.0.1 -all"}],
            "_dmarc.strict.test": [{"TXT": "v=DMARC1; p=reject"}],
            "open.test": [{"TXT": "v=spf1 ip4:127.0.0.1 -all"}],
        })
        cls.dns = owned_dns(cls, zone, directory=cls.tmp)
        cls.sink = owned_sink(cls)
        cls.moat = owned_moat(cls, routes=[("example.test", f"smtp:127.0.0.1:{cls.sink.port}")],
                              networks=INBOUND_NETS,
                              extra=f'\n[dns]\nnameservers = ["{cls.dns.nameserver}"]\ntimeout = "1s"\n'
                                    '\n[arc]\ntrusted_sealers = ["Trusted.test."]\n')

    # -- helpers ---------------------------------------------------------------------------

    def seal(self, msg, domain, arc_seen=None):
        """One forwarding hop at `domain`: its own Authentication-Results (with arc=ARC_SEEN
        when given, which dkimpy turns into the new seal's cv=), then its ARC set."""
        results = b"spf=pass smtp.mailfrom=origin.test" if arc_seen is None else b"arc=" + arc_seen.encode()
        msg = b"Authentication-Results: " + domain.encode() + b"; " + results + b"\r\n" + msg
        arc_set = dkim.arc_sign(msg, b"sel", domain.encode(), self.private, domain.encode(),
                                include_headers=[b"from", b"to", b"subject", b"message-id"])
        self.assertEqual(len(arc_set), 3, arc_set)
        return b"".join(arc_set) + msg

    def dkimpy_says(self, msg):
        return dkim.arc_verify(msg, dnsfunc=txt_lookup(self.records))[0]

    def send(self, msg, mail_from="bounce@list.test"):
        return transaction(self.moat, mail_from, "bob@example.test", msg)

    def delivered(self, subject):
        return self.sink.wait_subject(subject)

    def arc_result(self, msg, subject, mail_from="bounce@list.test"):
        steps = self.send(msg, mail_from)
        self.assertEqual(steps["data"][0], 250, steps)
        ar = own_auth_results(self.delivered(subject))
        self.assertEqual(len(ar), 1, ar)
        return ar[0]

    def arc_filter_line(self, subject):
        """The `filter` line of the arc filter for the message with this Subject."""
        accept = self.moat.wait_log(event="accept", message_id=f"<{subject.replace(' ', '-')}@origin.test>")
        return self.moat.wait_log(event="filter", filter="arc", queue_id=accept["queue_id"])

    # -- tests -----------------------------------------------------------------------------

    def test_no_chain_is_none(self):
        ar = self.arc_result(message("a@open.test", "arc none"), "arc none", mail_from="a@open.test")
        self.assertRegex(ar, r"\barc=none\b")
        self.assertEqual(self.arc_filter_line("arc none")["result"], "none")

    def test_one_and_two_sealed_hops_pass(self):
        one = self.seal(message("a@open.test", "arc one hop"), "hop1.test")
        self.assertEqual(self.dkimpy_says(one), b"pass")
        ar = self.arc_result(one, "arc one hop")
        self.assertRegex(ar, r"\barc=pass \(i=1 sealer=hop1\.test\)")
        line = self.arc_filter_line("arc one hop")
        self.assertEqual((line["result"], line["detail"]["instances"], line["detail"]["sealer"]),
                         ("pass", 1, "hop1.test"), line)

        two = self.seal(self.seal(message("a@open.test", "arc two hops"), "hop1.test"), "hop2.test", "pass")
        self.assertEqual(self.dkimpy_says(two), b"pass")
        ar = self.arc_result(two, "arc two hops")
        self.assertRegex(ar, r"\barc=pass \(i=2 sealer=hop2\.test\)")

    def test_body_changed_after_sealing_fails(self):
        msg = self.seal(message("a@open.test", "arc body changed"), "hop1.test") + b"appended footer\r\n"
        self.assertEqual(self.dkimpy_says(msg), b"fail")
        ar = self.arc_result(msg, "arc body changed")
        self.assertRegex(ar, r"\barc=fail \(ARC-Message-Signature 1: body hash did not verify\)")

    def test_altered_seal_fails(self):
        msg = self.seal(self.seal(message("a@open.test", "arc seal altered"), "hop1.test"), "hop2.test", "pass")
        # The oldest seal's t= changes: the latest AMS does not cover it, every seal does.
        altered = re.sub(rb"(ARC-Seal: i=1;[^\r]*? t=)", rb"\g<1>1", msg, count=1)
        self.assertNotEqual(altered, msg)
        self.assertEqual(self.dkimpy_says(altered), b"fail")
        ar = self.arc_result(altered, "arc seal altered")
        self.assertRegex(ar, r"\barc=fail \(ARC-Seal 2: signature did not verify\)")

    def test_latest_seal_saying_fail_fails(self):
        msg = self.seal(self.seal(message("a@open.test", "arc cv fail"), "hop1.test"), "hop2.test", "fail")
        self.assertIn(b"ARC-Seal: i=2; cv=fail;", msg)
        ar = self.arc_result(msg, "arc cv fail")
        self.assertRegex(ar, r"\barc=fail \(the latest ARC-Seal says cv=fail\)")
        self.assertEqual(self.arc_filter_line("arc cv fail")["detail"]["sealer"], "hop2.test")

    def test_missing_instance_fails(self):
        msg = self.seal(self.seal(message("a@open.test", "arc missing"), "hop1.test"), "hop2.test", "pass")
        # Instance 1's three fields go: instance 2 is left alone.
        head, body = msg.split(b"\r\n\r\n", 1)
        fields = re.split(rb"\r\n(?![ \t])", head)
        kept = [f for f in fields if not re.match(rb"ARC-[A-Za-z-]+: i=1;", f)]
        self.assertEqual(len(kept), len(fields) - 3)
        missing = b"\r\n".join(kept) + b"\r\n\r\n" + body
        self.assertEqual(self.dkimpy_says(missing), b"fail")
        ar = self.arc_result(missing, "arc missing")
        self.assertRegex(ar, r"\barc=fail \(instance 1 has no ARC-Authentication-Results\)")

    def test_trusted_sealer_overrides_dmarc_reject(self):
        msg = self.seal(message("ceo@strict.test", "arc trusted"), "trusted.test")
        self.assertEqual(self.dkimpy_says(msg), b"pass")
        ar = self.arc_result(msg, "arc trusted")
        self.assertRegex(ar, r"\bdmarc=fail \(p=reject dis=none reason=trusted_forwarder\) header\.from=strict\.test")
        self.assertRegex(ar, r"\barc=pass \(i=1 sealer=trusted\.test\)")
        accept = self.moat.wait_log(event="accept", message_id="<arc-trusted@origin.test>")
        dmarc = self.moat.wait_log(event="filter", filter="dmarc", queue_id=accept["queue_id"])
        self.assertEqual((dmarc["result"], dmarc["detail"]["applied"], dmarc["detail"]["override"],
                          dmarc["detail"]["arc_sealer"]), ("fail", "override", "arc", "trusted.test"), dmarc)
        self.assertTrue(self.arc_filter_line("arc trusted")["detail"]["trusted_sealer"])

    def test_untrusted_sealer_is_rejected_as_before(self):
        msg = self.seal(message("ceo@strict.test", "arc untrusted"), "untrusted.test")
        self.assertEqual(self.dkimpy_says(msg), b"pass")
        steps = self.send(msg)
        self.assertEqual(steps["data"][0], 550, steps)
        self.assertIn(b"5.7.1", steps["data"][1])
        # The chain itself passed: only the sealer is not trusted.
        line = self.moat.wait_log(event="filter", filter="arc", result="pass",
                                  detail={"instances": 1, "sealer": "untrusted.test"})
        self.assertNotIn("trusted_sealer", line["detail"])


TAG_RULES = "header SUBJ_TAGME Subject =~ /tag me/i\nscore SUBJ_TAGME 6\n"
TEXT = ("Gr\u00fc\u00dfe aus K\u00f6ln \u2014 caf\u00e9, na\u00efve, \u65e5\u672c\u8a9e\r\n"
        "a trailing blank \r\n" + "\u00e9" * 200 + "\r\n")


def raw_fields(data):
    """The header fields of a raw message as (name, raw field without its final CRLF)."""
    head = data.split(b"\r\n\r\n", 1)[0]
    return [(f.split(b":", 1)[0].decode(), f) for f in re.split(rb"\r\n(?![ \t])", head)]


def relaxed(field):
    """RFC 6376 3.4.2 relaxed header canonicalization, without the CRLF."""
    name, value = field.split(b":", 1)
    value = re.sub(rb"[ \t]+", b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.strip().lower() + b":" + value


def arc_set(data, instance):
    """The raw AAR, AMS and AS of one instance, each the only one."""
    out = []
    for name in ("ARC-Authentication-Results", "ARC-Message-Signature", "ARC-Seal"):
        found = [f for n, f in raw_fields(data) if n.lower() == name.lower() and
                 re.match(rb"[^:]*:\s*i=%d;" % instance, f)]
        assert len(found) == 1, (name, instance, found)
        out.append(found[0])
    return out


def seal_verifies(txt, sets):
    """Whether the last ARC-Seal of `sets` (AAR, AMS, AS triples, oldest first) verifies over
    exactly those sets (RFC 8617 5.1.1), with the key of TXT record `txt`."""
    seal = sets[-1][2]
    b = dkim.util.parse_tag_value(seal.split(b":", 1)[1])[b"b"]
    signed = b"".join(relaxed(aar) + b"\r\n" + relaxed(ams) + b"\r\n" + relaxed(s) + b"\r\n"
                      for aar, ams, s in sets[:-1])
    aar, ams, _ = sets[-1]
    unsigned = re.sub(rb"(\bb=)[^;]*", rb"\1", seal)
    signed += relaxed(aar) + b"\r\n" + relaxed(ams) + b"\r\n" + relaxed(unsigned)
    key = dkim.crypto.parse_public_key(base64.b64decode(dkim.util.parse_tag_value(txt.encode())[b"p"]))
    return dkim.crypto.RSASSA_PKCS1_v1_5_verify(hashlib.sha256(signed), base64.b64decode(re.sub(rb"\s", b"", b)), key)


class ArcSealTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = class_temp_dir(cls, "moat-arcseal-")
        cls.hop_key = os.path.join(cls.tmp, "hop.pem")
        hop_txt = rsa_key(cls.hop_key)
        with open(cls.hop_key, "rb") as f:
            cls.hop_private = f.read()
        # Moat's sealing key as `moat dkim keygen` makes it, its TXT record as it prints it.
        cls.seal_key = os.path.join(cls.tmp, "seal.pem")
        cls.seal_txt = rsa_key(cls.seal_key)
        cls.records = {"sel._domainkey.hop1.test": hop_txt, "arc._domainkey.gw.moat.test": cls.seal_txt}
        zone = {name: [{"TXT": txt}] for name, txt in cls.records.items()}
        zone.update({"list.test": [{"TXT": "v=spf1 ip4:127.0.0.1 -all"}],
                     "open.test": [{"TXT": "v=spf1 ip4:127.0.0.1 -all"}]})
        cls.dns = owned_dns(cls, zone, directory=cls.tmp)
        cls.sink = owned_sink(cls)
        cls.sealing = (f'\n[arc]\nseal_domain = "gw.moat.test"\nseal_selector = "arc"\n'
                       f'seal_key_file = "{cls.seal_key}"\n')
        dns = f'\n[dns]\nnameservers = ["{cls.dns.nameserver}"]\ntimeout = "1s"\n'
        workdir = os.path.join(cls.tmp, "inbound")
        os.mkdir(workdir)
        with open(os.path.join(workdir, "tag.cf"), "w") as f:
            f.write(TAG_RULES)
        rules = '\n[rules]\nfiles = ["tag.cf"]\ntag = 5\nquarantine = 10\nreject = 15\nsubject_prefix = "[SPAM]"\n'
        cls.moat = owned_moat(cls, routes=[("example.test", f"smtp:127.0.0.1:{cls.sink.port}"),
                                           ("box.test", "maildir:mail")],
                              relay_domains=("example.test", "box.test"),
                              networks=INBOUND_NETS, workdir=workdir, extra=dns + cls.sealing + rules)

    def seal_hop(self, msg, domain):
        msg = b"Authentication-Results: " + domain.encode() + b"; spf=pass smtp.mailfrom=origin.test\r\n" + msg
        arc_set = dkim.arc_sign(msg, b"sel", domain.encode(), self.hop_private, domain.encode(),
                                include_headers=[b"from", b"to", b"subject", b"message-id"])
        self.assertEqual(len(arc_set), 3, arc_set)
        return b"".join(arc_set) + msg

    def arc_verify(self, data):
        return dkim.arc_verify(data, dnsfunc=txt_lookup(self.records))

    def moat_seal(self, data, instance):
        seals = [v for v in header_values(data, "ARC-Seal") if re.match(rf"i={instance};", v)]
        self.assertEqual(len(seals), 1, data[:3000])
        return re.sub(r"\s+", " ", seals[0])

    def deliver(self, msg, subject, mail_from="bounce@list.test"):
        steps = transaction(self.moat, mail_from, "bob@example.test", msg)
        self.assertEqual(steps["data"][0], 250, steps)
        return self.sink.wait_subject(subject)

    def seal_filter_line(self, subject):
        accept = self.moat.wait_log(event="accept", message_id=f"<{subject.replace(' ', '-')}@origin.test>")
        return self.moat.wait_log(event="filter", filter="arc_seal", queue_id=accept["queue_id"])

    def test_plain_inbound_gets_a_valid_first_set(self):
        data = self.deliver(message("a@open.test", "seal plain"), "seal plain", mail_from="a@open.test")
        seal = self.moat_seal(data, 1)
        self.assertIn("cv=none", seal)
        self.assertIn("d=gw.moat.test", seal)
        aar = header_values(data, "ARC-Authentication-Results")
        self.assertEqual(len(aar), 1, aar)
        self.assertRegex(re.sub(r"\s+", " ", aar[0]), r"^i=1; mx\.moat\.test; spf=pass .*arc=none")
        cv, results, why = self.arc_verify(data)
        self.assertEqual(cv, b"pass", (results, why))
        line = self.seal_filter_line("seal plain")
        self.assertEqual((line["result"], line["detail"]["sealed"], line["detail"]["instance"],
                          line["detail"]["cv"]), ("sealed", True, 1, "none"), line)

    def test_valid_chain_gets_instance_two_with_cv_pass(self):
        msg = self.seal_hop(message("a@open.test", "seal second hop"), "hop1.test")
        self.assertEqual(self.arc_verify(msg)[0], b"pass")
        data = self.deliver(msg, "seal second hop")
        self.assertIn("cv=pass", self.moat_seal(data, 2))
        cv, results, why = self.arc_verify(data)
        self.assertEqual(cv, b"pass", (results, why))
        self.assertEqual([r["instance"] for r in results], [2, 1], results)
        self.assertEqual(self.seal_filter_line("seal second hop")["detail"]["instance"], 2)

    def test_tagged_subject_still_verifies(self):
        data = self.deliver(message("a@open.test", "seal tag me"), "[SPAM] seal tag me", mail_from="a@open.test")
        self.assertIn(b"Subject: [SPAM] seal tag me", data)
        self.moat_seal(data, 1)
        cv, results, why = self.arc_verify(data)
        self.assertEqual(cv, b"pass", (results, why))

    def send_8bit(self, msg, rcpt):
        s = self.moat.smtp()
        s.ehlo()
        s.mail("a@open.test", ["BODY=8BITMIME"])
        s.rcpt(rcpt)
        code, reply = s.data(msg)
        s.quit()
        self.assertEqual(code, 250, reply)
        return reply.decode().rsplit(" ", 1)[-1]

    def test_8bit_body_is_sealed_as_it_came(self):
        """Not converted to 7-bit MIME (as outbound mail Moat DKIM-signs is): the author's own
        DKIM signature still verifies at the next hop, and so does Moat's seal."""
        msg = simple_message("a@open.test", "seal eight bit",
                             extra_headers=b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                                           b"Content-Transfer-Encoding: 8bit\r\n",
                             body=TEXT.encode(), msgid_host="origin.test")
        signed = dkim.sign(msg, b"sel", b"hop1.test", self.hop_private,
                           include_headers=[b"from", b"to", b"subject", b"message-id"]) + msg
        qid = self.send_8bit(signed, "bob@example.test")
        data = self.sink.wait_subject("seal eight bit")
        self.assertTrue(data.endswith(signed), data[-500:])  # the sender's bytes
        self.assertTrue(dkim.verify(data, dnsfunc=txt_lookup(self.records)))
        self.moat_seal(data, 1)
        cv, results, why = self.arc_verify(data)
        self.assertEqual(cv, b"pass", (results, why))
        line = self.moat.wait_log(event="filter", filter="arc_seal", queue_id=qid)
        self.assertEqual(line["result"], "sealed", line)
        self.assertNotIn("conversion", line["detail"])

    def test_long_line_is_sealed_and_stored_broken_for_a_maildir_copy(self):
        long_line = b"<p>" + b"generated html " * 100 + b"</p>"
        self.assertGreater(len(long_line), 998)
        msg = simple_message("a@open.test", "seal long line", body=b"short\r\n" + long_line + b"\r\nend\r\n",
                             msgid_host="origin.test").replace(b"To: bob@example.test", b"To: bob@box.test")
        steps = transaction(self.moat, "a@open.test", "bob@box.test", msg)
        self.assertEqual(steps["data"][0], 250, steps)
        qid = steps["data"][1].decode().rsplit(" ", 1)[-1]
        self.moat.wait_log(event="deliver", queue_id=qid)
        files = self.moat.maildir_files("bob@box.test")
        self.assertEqual(len(files), 1, files)
        with open(files[0], "rb") as f:
            data = f.read()
        if b"\r\n" not in data:  # a Maildir holds LF lines: back to the wire form
            data = data.replace(b"\n", b"\r\n")
        self.assertLessEqual(max(len(line) for line in data.split(b"\r\n")), 998)
        self.moat_seal(data, 1)
        cv, results, why = self.arc_verify(data)
        self.assertEqual(cv, b"pass", (results, why))

    def test_broken_chain_gets_a_cv_fail_seal_over_its_own_set_only(self):
        msg = self.seal_hop(message("a@open.test", "seal broken chain"), "hop1.test")
        # The seal's t= changes: instance 1's ARC-Seal no longer verifies.
        broken = re.sub(rb"(ARC-Seal: i=1;[^\r]*? t=)", rb"\g<1>1", msg, count=1)
        self.assertNotEqual(broken, msg)
        self.assertEqual(self.arc_verify(broken)[0], b"fail")
        data = self.deliver(broken, "seal broken chain")
        self.assertIn("cv=fail", self.moat_seal(data, 2))
        own = arc_set(data, 2)
        txt = self.records["arc._domainkey.gw.moat.test"]
        self.assertTrue(seal_verifies(txt, [own]), own)
        self.assertFalse(seal_verifies(txt, [arc_set(data, 1), own]))
        self.assertEqual(self.arc_verify(data)[0], b"fail")
        line = self.seal_filter_line("seal broken chain")
        self.assertEqual((line["result"], line["detail"]["instance"], line["detail"]["cv"]), ("sealed", 2, "fail"), line)

    def test_chain_of_fifty_instances_gets_no_set(self):
        msg = message("a@open.test", "seal fifty")
        for i in range(50):  # each hop's own Authentication-Results gives dkimpy the cv=
            srv = b"hop%d.test" % i
            msg = b"Authentication-Results: " + srv + (b"; arc=pass" if i else b"; none") + b"\r\n" + msg
            fields = dkim.arc_sign(msg, b"sel", b"hop1.test", self.hop_private, srv,
                                   include_headers=[b"from", b"to", b"subject", b"message-id"])
            self.assertEqual(len(fields), 3, (i, fields))
            msg = b"".join(fields) + msg
        self.assertEqual(self.arc_verify(msg)[0], b"pass")
        data = self.deliver(msg, "seal fifty")
        self.assertEqual(len(header_values(data, "ARC-Seal")), 50)
        self.assertNotIn(b"gw.moat.test", data.split(b"\r\n\r\n", 1)[0])
        self.assertEqual(self.arc_verify(data)[0], b"pass")
        line = self.seal_filter_line("seal fifty")
        self.assertEqual((line["result"], line["detail"]["sealed"], line["detail"]["reason"]),
                         ("skipped", False, "the chain has 50 instances already"), line)
        accept = self.moat.wait_log(event="accept", message_id="<seal-fifty@origin.test>")
        arc = self.moat.wait_log(event="filter", filter="arc", queue_id=accept["queue_id"])
        self.assertEqual((arc["result"], arc["detail"]["instances"]), ("pass", 50), arc)

    def test_outbound_mail_is_not_sealed(self):
        sink = owned_sink(self)
        out = owned_moat(self, routes=[("example.test", f"smtp:127.0.0.1:{sink.port}")],
                         extra=f'\n[dns]\nnameservers = ["{self.dns.nameserver}"]\ntimeout = "1s"\n' + self.sealing)
        steps = transaction(out, "a@open.test", "bob@example.test", message("a@open.test", "seal outbound"))
        self.assertEqual(steps["data"][0], 250, steps)
        data = sink.wait_subject("seal outbound")
        self.assertEqual(header_values(data, "ARC-Seal"), [])
        self.assertEqual(out.wait_log(event="filter", filter="arc_seal")["result"], "outbound")

    def test_bad_seal_config_is_refused_at_its_line(self):
        base = '[[listener]]\naddress = "127.0.0.1:0"\n[relay]\ndomains = ["example.test"]\n'
        half = base + '[arc]\nseal_domain = "gw.moat.test"\nseal_selector = "arc"\n'
        path, r = check_config(self, half)
        self.assertNotEqual(r.returncode, 0)
        self.assertRegex(r.stderr + r.stdout, re.escape(path) + r":5: arc\.seal_key_file: missing")
        small = os.path.join(self.tmp, "small.pem")
        rsa_key(small, bits=512)
        for key, why in ((small, "RSA key under 1024 bits"), (os.path.join(self.tmp, "none.pem"), "cannot read")):
            text = base + f'[arc]\nseal_domain = "gw.moat.test"\nseal_selector = "arc"\nseal_key_file = "{key}"\n'
            path, r = check_config(self, text)
            self.assertNotEqual(r.returncode, 0)
            self.assertRegex(r.stderr + r.stdout, re.escape(path) + r":8: arc\.seal_key_file: .*" + why)


if __name__ == "__main__":
    unittest.main()
