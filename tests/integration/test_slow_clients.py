"""Clients that are slow on purpose must not keep a connection slot, nor hold off a stop.

A command line must be complete within limits.command_timeout of being awaited, whatever
trickles in meanwhile (RFC 5321 §4.5.3.2 times the exchange, not the gap between bytes); a
line of a message within limits.data_timeout, and the message within limits.max_data_time
of its 354 or first BDAT; an over-long line counts towards limits.max_errors. After SIGTERM, sessions get 20 s (as deliveries do): then
`421 4.3.2`, except a message past the end of its data, which is still answered.

Every wait is bounded; only 127.0.0.1 is used.
"""

import os
import signal
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Moat, RawClient, wait_for  # noqa: E402

COMMAND_TIMEOUT = 3
DATA_TIMEOUT = 3
MAX_DATA_TIME = 6
MAX_JUNK = 5


def trickle_until_closed(c, data, interval, limit):
    """Sends `data` one byte every `interval` seconds until the server closes the connection
    or `limit` seconds pass; returns (seconds until the close or None, what the server sent)."""
    start = time.monotonic()
    got = b""
    c.sock.settimeout(interval)
    for i in range(10**6):
        if time.monotonic() - start > limit:
            return None, got
        try:
            c.sock.send(data[i % len(data):i % len(data) + 1])
        except OSError:
            return time.monotonic() - start, got
        try:
            chunk = c.sock.recv(4096)
            if not chunk:
                return time.monotonic() - start, got
            got += chunk
        except socket.timeout:
            pass
        except OSError:
            return time.monotonic() - start, got
    return None, got


class SlowClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.moat = Moat(extra=f'\n[limits]\ncommand_timeout = "{COMMAND_TIMEOUT}s"\n'
                        f'data_timeout = "{DATA_TIMEOUT}s"\nmax_data_time = "{MAX_DATA_TIME}s"\n'
                        f'max_errors = 3\nmax_junk_commands = {MAX_JUNK}\n')

    @classmethod
    def tearDownClass(cls):
        cls.moat.cleanup()

    def connect(self):
        c = RawClient(self.moat.port, timeout=15)
        self.addCleanup(c.close)
        self.assertEqual(c.code(), 220)
        port = c.sock.getsockname()[1]
        return c, self.moat.wait_log(event="connect", client_port=port)["session"]

    def in_transaction(self):
        c, session = self.connect()
        c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<u@example.test>\r\n")
        for _ in range(3):
            self.assertEqual(c.read_reply()[-1][0], 250)
        return c, session

    def assert_timed_out(self, elapsed, got, limit, session, stage, key):
        self.assertIsNotNone(elapsed, f"still open after {limit + 6}s of a byte every 0.5s")
        self.assertLess(elapsed, limit + 3)
        self.assertIn(b"421 4.4.2 ", got)
        line = self.moat.wait_log(event="timeout", session=session)
        self.assertEqual((line["stage"], line["limit"]), (stage, key))

    def greeted(self):
        c, _ = self.connect()
        c.send("EHLO client.test\r\n")
        self.assertEqual(c.read_reply()[-1][0], 250)
        return c

    def send_each(self, c, command, times, code):
        for _ in range(times):
            c.send(command + "\r\n")
            self.assertEqual(c.code(), code, command)

    def test_commands_that_move_no_mail_end_at_the_junk_limit(self):
        # A whole NOOP every command_timeout would keep the slot for good: past
        # limits.max_junk_commands each one still gets its reply, and counts as an error.
        c = self.greeted()
        # Within the limit nothing counts; then two errors of max_errors = 3.
        for cmd, code in [("NOOP", 250), ("RSET", 250), ("VRFY someone", 252), ("HELP", 214), ("NOOP", 250)]:
            self.send_each(c, cmd, 1, code)
        self.send_each(c, "NOOP", 2, 250)
        c.send("NOOP\r\n")
        self.assertEqual(c.code(), 250)  # answered, then the third error ends the session
        self.assertEqual(c.read_reply()[-1], (421, "4.7.0 mx.moat.test Error: too many errors"))
        self.assertEqual(c.sock.recv(100), b"", "closed after the third error")

    def test_an_accepted_message_forgives_earlier_junk_and_errors(self):
        c = self.greeted()
        self.send_each(c, "NOOP", MAX_JUNK + 2, 250)  # two errors
        c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n")
        self.assertEqual([c.code() for _ in range(3)], [250, 250, 354])
        c.send("Subject: x\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(c.code(), 250)
        # As Postfix's smtpd: both counts start again. Without that, the next junk
        # command would be the third error.
        self.send_each(c, "RSET", MAX_JUNK + 2, 250)
        c.send("QUIT\r\n")
        self.assertEqual(c.code(), 221)

    def test_a_command_line_trickled_a_byte_at_a_time_times_out(self):
        c, session = self.connect()
        elapsed, got = trickle_until_closed(c, b"EHLO slow.client.test", 0.5, COMMAND_TIMEOUT + 6)
        self.assert_timed_out(elapsed, got, COMMAND_TIMEOUT, session, "command", "command_timeout")

    def test_the_rest_of_an_over_long_line_trickled_times_out(self):
        # The 500 for an over-long line, then its rest is read and dropped up to its LF: that
        # rest must end within the command timeout too.
        c, session = self.connect()
        c.send(b"NOOP " + b"x" * 3000)
        self.assertEqual(c.read_reply()[-1], (500, "5.5.2 Line too long"))
        elapsed, got = trickle_until_closed(c, b"x", 0.5, COMMAND_TIMEOUT + 6)
        self.assert_timed_out(elapsed, got, COMMAND_TIMEOUT, session, "command", "command_timeout")

    def in_data(self):
        c, session = self.in_transaction()
        c.send("DATA\r\n")
        self.assertEqual(c.code(), 354)
        return c, session

    def test_a_message_line_trickled_a_byte_at_a_time_times_out(self):
        c, session = self.in_data()
        elapsed, got = trickle_until_closed(c, b"Subject: slow", 0.5, DATA_TIMEOUT + 6)
        self.assert_timed_out(elapsed, got, DATA_TIMEOUT, session, "data", "data_timeout")

    def test_message_lines_trickled_time_out_at_max_data_time(self):
        c, session = self.in_data()
        # Whole lines do not help: the deadline is for the message.
        elapsed, got = trickle_until_closed(c, b"x\r\n", 0.5, MAX_DATA_TIME + 6)
        self.assert_timed_out(elapsed, got, MAX_DATA_TIME, session, "data", "max_data_time")

    def test_a_bdat_chunk_trickled_times_out(self):
        c, session = self.in_transaction()
        c.send("BDAT 100000 LAST\r\n")
        elapsed, got = trickle_until_closed(c, b"y", 0.5, DATA_TIMEOUT + 6)
        self.assert_timed_out(elapsed, got, DATA_TIMEOUT, session, "data", "data_timeout")

    def test_bdat_chunks_trickled_time_out_at_max_data_time(self):
        # Lines in small chunks, each with its BDAT command: one deadline for them all.
        c, session = self.in_transaction()
        c.sock.settimeout(MAX_DATA_TIME + 6)
        start = time.monotonic()
        try:
            while time.monotonic() - start < MAX_DATA_TIME + 6:
                c.send(b"BDAT 3\r\nx\r\n")
                if c.code() != 250:
                    break
                time.sleep(0.5)
        except (ConnectionError, OSError):
            pass
        elapsed = time.monotonic() - start
        self.assertLess(elapsed, MAX_DATA_TIME + 3)
        line = self.moat.wait_log(event="timeout", session=session)
        self.assertEqual(line["limit"], "max_data_time")

    def test_a_refused_bdat_chunk_trickled_times_out_at_max_data_time(self):
        # Refused at its command (no MAIL), the chunk is read and dropped: bounded all the same.
        c, session = self.connect()
        c.send("EHLO client.test\r\nBDAT 1000000000\r\n")
        c.read_reply()
        self.assertEqual(c.code(), 503)
        elapsed, got = trickle_until_closed(c, b"z\r\n", 0.5, MAX_DATA_TIME + 6)
        self.assert_timed_out(elapsed, got, MAX_DATA_TIME, session, "data", "max_data_time")

    def test_over_long_lines_count_as_errors(self):
        c, session = self.connect()
        c.send(b"NOOP " + b"x" * 3000 + b"\r\n")
        self.assertEqual(c.read_reply()[-1], (500, "5.5.2 Line too long"))
        c.send(b"x" * 5000 + b"\r\n")
        self.assertEqual(c.read_reply()[-1], (500, "5.5.2 Line too long"))
        c.send(b"HELO " + b"x" * 2100 + b"\r\n")  # the third error: its 500, then the 421
        self.assertEqual(c.read_reply()[-1], (500, "5.5.2 Line too long"))
        self.assertEqual(c.read_reply()[-1], (421, "4.7.0 mx.moat.test Error: too many errors"))
        with self.assertRaises(ConnectionError):
            c.read_reply()

    def test_a_slow_but_steady_client_delivers(self):
        # Every command line takes half the command timeout, the message nearly all of
        # max_data_time: the session lasts several timeouts and is still served.
        c, session = self.connect()
        before = len(self.moat.maildir_files("u@example.test"))

        def slowly(text, seconds):
            data = text.encode()
            for i in range(0, len(data), 4):
                c.send(data[i:i + 4])
                time.sleep(seconds / ((len(data) + 3) // 4))

        for command, code in (("EHLO client.test\r\n", 250), ("MAIL FROM:<a@client.test>\r\n", 250),
                              ("RCPT TO:<u@example.test>\r\n", 250), ("DATA\r\n", 354)):
            slowly(command, COMMAND_TIMEOUT / 2)
            self.assertEqual(c.code(), code, command)
        lines = ["Subject: slow but steady\r\n", "\r\n"] + [f"line {i}\r\n" for i in range(8)]
        for line in lines:
            slowly(line, (MAX_DATA_TIME - 2) / len(lines))
        c.send(".\r\n")
        self.assertEqual(c.code(), 250)
        c.send("QUIT\r\n")
        self.assertEqual(c.code(), 221)
        self.assertFalse(self.moat.find_logs(event="timeout", session=session))
        wait_for(lambda: len(self.moat.maildir_files("u@example.test")) > before, 20, what="the delivery")


class FakeClamd:
    """Answers PING and VERSION as clamd does, and holds each INSTREAM scan until release():
    a message that stays in the filters for as long as a test needs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.scanning = threading.Event()
        self.released = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    @staticmethod
    def read(conn, n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def handle(self, conn):
        conn.settimeout(30)
        with conn:
            try:
                command = b""
                while not command.endswith(b"\0"):
                    command += self.read(conn, 1)
                if command == b"zPING\0":
                    conn.sendall(b"PONG\0")
                elif command == b"zVERSION\0":
                    conn.sendall(b"ClamAV 1.0.0/27000/fake\0")
                elif command == b"zINSTREAM\0":
                    while True:  # 4-octet lengths, each followed by its chunk; 0 ends
                        n = struct.unpack("!I", self.read(conn, 4))[0]
                        if n == 0:
                            break
                        self.read(conn, n)
                    self.scanning.set()
                    self.released.wait(60)
                    conn.sendall(b"stream: OK\0")
            except OSError:
                pass

    def release(self):
        self.released.set()

    def stop(self):
        self.released.set()
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


class DrainDeadlineTest(unittest.TestCase):
    """SIGTERM: a client idle in a transaction, or trickling its message, is closed with
    421 4.3.2 at the drain deadline; a message already in the filters is still answered 250
    and is delivered."""

    def setUp(self):
        self.clamd = FakeClamd()
        self.addCleanup(self.clamd.stop)
        self.moat = Moat(extra=f'\n[antivirus]\nbackend = "clamd"\nclamd_socket = "127.0.0.1:{self.clamd.port}"\n'
                         'scan_timeout = "2m"\n')
        self.addCleanup(self.moat.cleanup)

    def in_transaction(self):
        c = RawClient(self.moat.port, timeout=60)
        self.addCleanup(c.close)
        self.assertEqual(c.code(), 220)
        c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<u@example.test>\r\n")
        for _ in range(3):
            self.assertEqual(c.read_reply()[-1][0], 250)
        return c

    def test_stalled_clients_are_closed_at_the_drain_deadline(self):
        idle = self.in_transaction()
        committing = self.in_transaction()
        committing.send("DATA\r\n")
        self.assertEqual(committing.code(), 354)
        committing.send("Subject: in the filters at the deadline\r\n\r\nhello\r\n.\r\n")
        self.assertTrue(self.clamd.scanning.wait(20), "the message reached the antivirus")
        trickler = self.in_transaction()
        trickler.send("DATA\r\n")
        self.assertEqual(trickler.code(), 354)
        trickler.send("Subject: slow\r\n\r\n")

        self.moat.signal(signal.SIGTERM)
        sent = time.monotonic()
        self.moat.wait_log(event="stopping")
        result = {}
        thread = threading.Thread(
            target=lambda: result.update(zip(("elapsed", "got"), trickle_until_closed(trickler, b"z", 1.0, 40))))
        thread.start()
        try:
            line = self.moat.wait_log(event="drain_timeout", timeout=30)
        finally:
            thread.join(45)
        self.assertEqual((line["sessions"], line["committing"]), (2, 1))
        self.assertGreaterEqual(time.monotonic() - sent, 19)
        self.assertIsNotNone(result.get("elapsed"), "the trickler was not closed")
        self.assertIn(b"421 4.3.2 ", result["got"])
        self.assertEqual(idle.read_reply()[-1], (421, "4.3.2 mx.moat.test Service shutting down, try again later"))

        self.clamd.release()  # the message leaves the filters: committed, then 250
        reply = committing.read_reply()[-1]
        self.assertEqual(reply[0], 250, reply)
        self.assertEqual(committing.code(), 421)
        self.assertEqual(self.moat.proc.wait(30), 0)
        self.assertLess(time.monotonic() - sent, 40)
        accepted = self.moat.find_logs(event="accept")
        self.assertEqual(len(accepted), 1)

        self.moat.start()
        wait_for(lambda: self.moat.maildir_files("u@example.test"), 30, what="the message that got 250")


if __name__ == "__main__":
    unittest.main()
