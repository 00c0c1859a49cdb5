"""ARC (RFC 8617) end to end through the real daemon: chains are sealed by python3-dkim
(`dkim.arc_sign`, an implementation independent of Moat's) and checked with its own
`dkim.arc_verify` before they are sent, the sealers' keys are published by the loopback DNS
server (tests/support/dns_server.py, the daemon's only nameserver), and the
Authentication-Results Moat adds is read from what the test's SMTP sink receives. Covered:
no chain (arc=none), one and two sealed hops (pass), the body changed after sealing, an
altered ARC-Seal, a latest seal saying cv=fail, a missing instance (fail), and [arc]
trusted_sealers: a From domain with p=reject failing DMARC is delivered when a trusted
sealer's chain passes (dmarc=fail, arc=pass, the override in the `filter` line), refused
with 550 when the sealer is not trusted."""

import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from authzone import header_values, owned_dns, rsa_key, txt_lookup  # noqa: E402
from harness import class_temp_dir, owned_moat, owned_sink, simple_message, transaction  # noqa: E402

import dkim  # noqa: E402  (python3-dkim)

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


if __name__ == "__main__":
    unittest.main()
