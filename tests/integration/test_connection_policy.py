"""[connection] policy at connect: a block list answered with a 554 greeting and 503 to
everything but QUIT (RFC 5321 §3.1), an allow list that wins over it, and a per-address
limit on new connections a minute. The real daemon on loopback; clients are told apart by
their source address in 127.0.0.0/8, the only addresses used."""

import os
import socket
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Moat, RawClient  # noqa: E402


def connect(port, source):
    c = RawClient.__new__(RawClient)
    c.sock = socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0))
    c.buf = b""
    return c


class ConnectionPolicyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.moat = Moat(networks=["10.255.255.0/24"],  # loopback is not a relay client here
                        extra='\n[connection]\nblock = ["127.0.0.0/29"]\nallow = ["127.0.0.5"]\n'
                              'max_rate_per_ip = 3\n')

    @classmethod
    def tearDownClass(cls):
        cls.moat.cleanup()

    def test_a_blocked_client_gets_554_then_503_until_it_quits(self):
        c = connect(self.moat.port, "127.0.0.2")
        code, text = c.read_reply()[-1]
        self.assertEqual((code, text), (554, "5.7.1 mx.moat.test Access denied"))
        for line in ("EHLO client.test", "MAIL FROM:<a@sender.test>", "NOOP"):
            c.send(line + "\r\n")
            self.assertEqual(c.read_reply()[-1], (503, "5.5.1 Error: access denied, send QUIT"))
        c.send("QUIT\r\n")
        self.assertEqual(c.code(), 221)
        self.assertEqual(c.sock.recv(10), b"")
        c.close()
        ev = self.moat.wait_log(event="reject", client_ip="127.0.0.2", stage="connect")
        self.assertEqual(ev["reply"], "554 5.7.1 mx.moat.test Access denied")
        self.assertEqual(self.moat.find_logs(event="accept", client_ip="127.0.0.2"), [])

    def test_allow_wins_over_block_and_others_are_untouched(self):
        for source in ("127.0.0.5", "127.0.0.9"):
            with self.subTest(source=source):
                c = connect(self.moat.port, source)
                self.assertEqual(c.code(), 220)
                c.send("QUIT\r\n")
                self.assertEqual(c.code(), 221)
                c.close()

    def test_new_connections_a_minute_are_limited_per_address(self):
        for i in range(3):
            c = connect(self.moat.port, "127.0.0.10")
            self.assertEqual(c.code(), 220, i)
            c.send("QUIT\r\n")
            c.code()
            c.close()
        c = connect(self.moat.port, "127.0.0.10")
        code, text = c.read_reply()[-1]
        self.assertEqual(code, 421)
        self.assertIn("4.7.0 mx.moat.test Too many connections from your address in the last minute", text)
        self.assertEqual(c.sock.recv(10), b"")
        c.close()
        # Another address, and an allowed one however often it comes, are not held back.
        c = connect(self.moat.port, "127.0.0.11")
        self.assertEqual(c.code(), 220)
        c.close()
        for i in range(5):
            c = connect(self.moat.port, "127.0.0.5")
            self.assertEqual(c.code(), 220, i)
            c.send("QUIT\r\n")
            c.code()
            c.close()


if __name__ == "__main__":
    unittest.main()
