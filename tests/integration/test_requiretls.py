"""End-to-end tests of REQUIRETLS and "TLS-Required: No" (RFC 8689) over real TLS on
loopback: the daemon's listener with STARTTLS (a certificate made at test time), sinks with
STARTTLS and certificates from a test CA, routes with tls = "verify" (ca_file = that CA),
"may" and "dane" (a loopback DNS server that sets the AD bit, tests/support/dns_server.py),
and Maildir delivery. No port below 1024 is bound.

    - REQUIRETLS is offered only after STARTTLS, and MAIL ... REQUIRETLS before it is refused;
    - a REQUIRETLS message goes to a verified route whose next hop offers REQUIRETLS, with
      REQUIRETLS on its MAIL FROM; to one that does not offer it, or over a tls = "may"
      route, it is returned at once with 5.7.30, in a DSN that quotes the headers only;
    - a REQUIRETLS message to a DNSSEC-signed host without TLSA records goes only with a
      certificate PKIX verifies for the host's name;
    - an ordinary message is unaffected;
    - `moat queue show` (and its --json) marks a waiting REQUIRETLS message;
    - "TLS-Required: No" mail goes to a next hop whose DNSSEC-signed TLSA records do not
      match its certificate (DANE failure), where other mail waits.

Run: MOAT_BIN=build/moat MOAT_SOURCE_DIR=. /usr/bin/python3 tests/integration/test_requiretls.py -v
"""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from authzone import owned_dns  # noqa: E402
from harness import (Sink, class_temp_dir, client_tls, free_port, make_ca, make_cert,  # noqa: E402
                     make_signed_cert, owned_moat, owned_sink, wait_for)
from test_dane import spki_sha256  # noqa: E402

DANE_HOST = "mx.dane.test"
PKIX_HOST = "rt.dane.test"  # DNSSEC-signed, no TLSA records: PKIX for REQUIRETLS
WRONG_HOST = "wrong.dane.test"  # the same, with a certificate for another name
SENDER = "alice@local.test"  # delivered to Maildir: its DSNs can be read there


def expect_250(reply):
    code, text = reply
    if code != 250:
        raise AssertionError(f"{code} {text!r}")
    return text


def send(moat, rcpt, body, requiretls=True, headers=""):
    """One message from SENDER to `rcpt` through `moat` over STARTTLS, with REQUIRETLS when
    asked; returns its queue id."""
    s = moat.smtp()
    try:
        s.starttls(context=client_tls())
        s.ehlo()
        expect_250(s.mail(SENDER, ["REQUIRETLS"] if requiretls else []))
        expect_250(s.rcpt(rcpt))
        text = expect_250(s.data(f"From: {SENDER}\r\nTo: {rcpt}\r\n{headers}Subject: rt\r\n\r\n{body}\r\n".encode()))
        return text.decode().rsplit(" ", 1)[-1]
    finally:
        s.quit()


class RequireTlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = class_temp_dir(cls, "moat-requiretls-")
        listener_dir = os.path.join(cls.tmp, "listener")
        os.mkdir(listener_dir)
        listener_cert = make_cert(listener_dir, cn="mx.moat.test")
        ca = make_ca(cls.tmp)
        good = make_signed_cert(cls.tmp, ca, "good", "IP:127.0.0.1,DNS:localhost")
        dane_dir = os.path.join(cls.tmp, "dane")
        os.mkdir(dane_dir)
        dane_cert = make_cert(dane_dir, cn=DANE_HOST)
        other_dir = os.path.join(cls.tmp, "other")
        os.mkdir(other_dir)
        other_cert = make_cert(other_dir, cn=DANE_HOST)

        # A verified next hop that offers REQUIRETLS, one that does not, and a DANE host
        # whose secure TLSA record names another key.
        cls.rt_sink = owned_sink(cls, tls_cert=good, extensions=Sink.DEFAULT_EXTENSIONS + ("REQUIRETLS",))
        cls.plain_sink = owned_sink(cls, tls_cert=good)
        cls.may_sink = owned_sink(cls, tls_cert=good, extensions=Sink.DEFAULT_EXTENSIONS + ("REQUIRETLS",))
        cls.dane_sink = owned_sink(cls, tls_cert=dane_cert)
        pkix = make_signed_cert(cls.tmp, ca, "pkix", f"DNS:{PKIX_HOST}")
        cls.pkix_sink = owned_sink(cls, tls_cert=pkix, extensions=Sink.DEFAULT_EXTENSIONS + ("REQUIRETLS",))
        wrong = make_signed_cert(cls.tmp, ca, "wrong", "DNS:other.test")
        cls.wrong_sink = owned_sink(cls, tls_cert=wrong, extensions=Sink.DEFAULT_EXTENSIONS + ("REQUIRETLS",))
        owner = f"_{cls.dane_sink.port}._tcp.{DANE_HOST}"
        dns = owned_dns(cls, {DANE_HOST: [{"SECURE": True}, {"A": "127.0.0.1"}],
                              owner: [{"SECURE": True}, {"TLSA": [3, 1, 1, spki_sha256(other_cert[0])]}],
                              PKIX_HOST: [{"SECURE": True}, {"A": "127.0.0.1"}],
                              WRONG_HOST: [{"SECURE": True}, {"A": "127.0.0.1"}]})

        def route(domain, to, tls, ca_file=False):
            text = f'\n[[route]]\ndomains = ["{domain}"]\nto = ["{to}"]\ntls = "{tls}"\n'
            return text + (f'ca_file = "{ca[0]}"\n' if ca_file else "")

        extra = (f'\n[dns]\nnameservers = ["{dns.nameserver}"]\ntimeout = "1s"\n'
                 f'\n[mta_sts]\nca_file = "{ca[0]}"\n'
                 + route("verified.test", f"smtp:127.0.0.1:{cls.rt_sink.port}", "verify", True)
                 + route("norequire.test", f"smtp:127.0.0.1:{cls.plain_sink.port}", "verify", True)
                 + route("may.test", f"smtp:127.0.0.1:{cls.may_sink.port}", "may")
                 + route("dane.test", f"smtp:{DANE_HOST}:{cls.dane_sink.port}", "dane")
                 + route("pkix.test", f"smtp:{PKIX_HOST}:{cls.pkix_sink.port}", "dane")
                 + route("wrong.test", f"smtp:{WRONG_HOST}:{cls.wrong_sink.port}", "dane")
                 + route("closed.test", f"smtp:127.0.0.1:{free_port()}", "verify", True)
                 + '\n[[route]]\ndomains = ["local.test"]\nto = ["maildir:mail"]\n')
        cls.moat = owned_moat(cls, routes=[], extra=extra, retry='["1h"]', relay_domains=("local.test",),
                              listener_extra=f'tls_cert = "{listener_cert[0]}"\ntls_key = "{listener_cert[1]}"\n')

    def send(self, rcpt, body, requiretls=True, headers=""):
        return send(self.moat, rcpt, body, requiretls, headers)

    def dsn_for(self, queue_id):
        """The DSN reporting on `queue_id`, as delivered to SENDER's Maildir."""
        ev = self.moat.wait_log(event="dsn", original_queue_id=queue_id)
        self.moat.wait_log(event="deliver", queue_id=ev["queue_id"])
        for path in self.moat.maildir_files(SENDER):
            with open(path, "rb") as f:
                data = f.read()
            if queue_id.encode() in data:
                return ev, data
        self.fail(f"no DSN for {queue_id} in the Maildir")

    def test_requiretls_is_offered_only_after_starttls(self):
        s = self.moat.smtp()
        try:
            s.ehlo()
            self.assertTrue(s.has_extn("starttls"))
            self.assertFalse(s.has_extn("requiretls"))
            s.starttls(context=client_tls())
            s.ehlo()
            self.assertTrue(s.has_extn("requiretls"))
        finally:
            s.quit()

    def test_mail_with_requiretls_before_starttls_is_refused(self):
        s = self.moat.smtp()
        try:
            s.ehlo()
            code, reply = s.mail(SENDER, ["REQUIRETLS"])
            self.assertEqual(code, 530)
            self.assertIn(b"5.7.10", reply)
            # Nothing was begun: a MAIL without it is taken.
            self.assertEqual(s.mail(SENDER)[0], 250)
            s.rset()
            s.starttls(context=client_tls())
            s.ehlo()
            self.assertEqual(s.mail(SENDER, ["REQUIRETLS=YES"])[0], 501)  # no value (RFC 8689 §3)
        finally:
            s.quit()
        ev = self.moat.wait_log(event="reject", reply="530 5.7.10 REQUIRETLS needs a TLS session: issue STARTTLS first")
        self.assertEqual(ev["from"], SENDER)

    def test_requiretls_goes_to_a_verified_next_hop_that_offers_it(self):
        qid = self.send("u1@verified.test", "secret one")
        accept = self.moat.wait_log(event="accept", queue_id=qid)
        self.assertIs(accept.get("requiretls"), True)
        ev = self.moat.wait_log(event="deliver", queue_id=qid)
        self.assertIs(ev.get("requiretls"), True)
        self.assertTrue(ev["tls"].endswith(" verified"), ev["tls"])
        msg = wait_for(lambda: [m for m in self.rt_sink.messages if m["rcpts"] == ["u1@verified.test"]], 10,
                       what="the message at the sink")[0]
        self.assertTrue(msg["tls"])
        mail = [c for c in msg["session"]["commands"] if c.upper().startswith("MAIL FROM:")]
        self.assertTrue(mail and mail[-1].endswith(" REQUIRETLS"), mail)

    def test_requiretls_without_tlsa_records_needs_a_pkix_verified_certificate(self):
        # A secure name without TLSA records: DANE does not apply, so REQUIRETLS asks for a
        # certificate that chains to the trust anchors ([mta_sts] ca_file) and names the host.
        qid = self.send("u9@pkix.test", "pkix")
        ev = self.moat.wait_log(event="deliver", queue_id=qid)
        self.assertTrue(ev["tls"].endswith(" verified"), ev["tls"])
        msg = wait_for(lambda: [m for m in self.pkix_sink.messages if m["rcpts"] == ["u9@pkix.test"]], 10,
                       what="the message at the sink")[0]
        self.assertIn(PKIX_HOST, self.pkix_sink.sni)
        mail = [c for c in msg["session"]["commands"] if c.upper().startswith("MAIL FROM:")]
        self.assertTrue(mail and mail[-1].endswith(" REQUIRETLS"), mail)

    def test_requiretls_with_a_certificate_for_another_name_is_returned_with_5_7_10(self):
        qid = self.send("u10@wrong.test", "wrong name")
        ev = self.moat.wait_log(event="bounce", queue_id=qid)
        self.assertIn("550 5.7.10 REQUIRETLS support required", ev["reply"])
        self.assertFalse(self.wrong_sink.messages)
        # Without REQUIRETLS the same host takes mail (tls = "dane" without TLSA: opportunistic).
        plain = self.send("u11@wrong.test", "plain", requiretls=False)
        self.moat.wait_log(event="deliver", queue_id=plain)

    def test_requiretls_to_a_next_hop_without_it_is_returned_with_5_7_30(self):
        qid = self.send("u2@norequire.test", "secret two")
        ev = self.moat.wait_log(event="bounce", queue_id=qid)
        self.assertIn("5.7.30", ev["reply"])
        self.assertIn("does not offer REQUIRETLS", ev["reply"])
        self.assertIs(ev.get("requiretls"), True)
        self.assertFalse([m for m in self.plain_sink.messages if m["rcpts"] == ["u2@norequire.test"]])
        self.assertFalse([c for c in self.plain_sink.commands if "u2@norequire.test" in c])  # no RCPT either
        dsn, data = self.dsn_for(qid)
        self.assertIn(b"Status: 5.7.30", data)
        # RFC 8689 §5: the report quotes the headers only, and goes with REQUIRETLS itself.
        self.assertIn(b"text/rfc822-headers", data)
        self.assertNotIn(b"secret two", data)
        self.assertIs(self.moat.wait_log(event="deliver", queue_id=dsn["queue_id"]).get("requiretls"), True)

    def test_requiretls_over_a_may_route_is_returned_with_5_7_30(self):
        qid = self.send("u3@may.test", "secret three")
        ev = self.moat.wait_log(event="bounce", queue_id=qid)
        self.assertIn("5.7.30", ev["reply"])
        self.assertIn('tls = "may"', ev["reply"])
        self.assertFalse([m for m in self.may_sink.messages if m["rcpts"] == ["u3@may.test"]])
        _, data = self.dsn_for(qid)
        self.assertNotIn(b"secret three", data)

    def test_requiretls_to_maildir_is_delivered(self):
        qid = self.send("u4@local.test", "final delivery")
        ev = self.moat.wait_log(event="deliver", queue_id=qid)
        self.assertIs(ev.get("requiretls"), True)
        self.assertEqual(len(self.moat.maildir_files("u4@local.test")), 1)

    def test_queue_show_names_requiretls(self):
        # A next hop that refuses connections: the message waits, and the queue says it asked.
        qid = self.send("u12@closed.test", "waiting")
        self.assertIn("4.4.1", self.moat.wait_log(event="defer", queue_id=qid)["reply"])
        shown = json.loads(self.moat.cli("queue", "show", qid, "--json").stdout)
        self.assertIs(shown.get("requiretls"), True)
        self.assertIn("\nREQUIRETLS: yes: only over authenticated TLS", self.moat.cli("queue", "show", qid).stdout)
        plain = self.send("u13@closed.test", "waiting too", requiretls=False)
        self.moat.wait_log(event="defer", queue_id=plain)
        self.assertNotIn("requiretls", json.loads(self.moat.cli("queue", "show", plain, "--json").stdout))
        self.assertNotIn("REQUIRETLS", self.moat.cli("queue", "show", plain).stdout)

    def test_an_ordinary_message_is_unaffected(self):
        qid = self.send("u5@norequire.test", "ordinary", requiretls=False)
        ev = self.moat.wait_log(event="deliver", queue_id=qid)
        self.assertNotIn("requiretls", ev)
        self.assertNotIn("requiretls", self.moat.wait_log(event="accept", queue_id=qid))
        msg = wait_for(lambda: [m for m in self.plain_sink.messages if m["rcpts"] == ["u5@norequire.test"]], 10,
                       what="the message at the sink")[0]
        self.assertFalse([c for c in msg["session"]["commands"] if "REQUIRETLS" in c.upper()])

    def test_tls_required_no_goes_despite_a_dane_failure(self):
        # Without the header field, the DNSSEC-signed TLSA record that does not match keeps it.
        held = self.send("u6@dane.test", "held", requiretls=False)
        ev = self.moat.wait_log(event="defer", queue_id=held)
        self.assertIn("4.7.5", ev["reply"])
        qid = self.send("u7@dane.test", "goes anyway", requiretls=False, headers="TLS-Required: No\r\n")
        ev = self.moat.wait_log(event="deliver", queue_id=qid)
        self.assertFalse(ev["tls"].endswith(" dane"), ev["tls"])
        msg = wait_for(lambda: [m for m in self.dane_sink.messages if m["rcpts"] == ["u7@dane.test"]], 10,
                       what="the message at the sink")[0]
        self.assertTrue(msg["tls"])  # still opportunistic TLS
        self.assertIn(b"TLS-Required: No", msg["data"])  # passed on as it came
        self.assertFalse([m for m in self.dane_sink.messages if m["rcpts"] == ["u6@dane.test"]])

    def test_requiretls_wins_over_tls_required_no(self):
        # RFC 8689 §4.2.1: with REQUIRETLS the header field is not looked at: the DANE
        # failure stops it, and being all hosts' failure, it is returned.
        qid = self.send("u8@dane.test", "both", headers="TLS-Required: No\r\n")
        ev = self.moat.wait_log(event="bounce", queue_id=qid)
        self.assertIn("5.7.", ev["reply"])
        self.assertFalse([m for m in self.dane_sink.messages if m["rcpts"] == ["u8@dane.test"]])


if __name__ == "__main__":
    unittest.main()
