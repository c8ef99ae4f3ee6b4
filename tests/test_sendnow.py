"""Fast-path responses go straight to the socket only when nothing is queued before them, and always in order."""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from cookiesaver.web.sendnow import can_send_now, send_now


class _Port:
    """What tcp.Server reads from its listening port."""

    _realPortNumber = 0
    _type = "TCP"


class SendNowTests(SynchronousTestCase):
    def setUp(self) -> None:
        ours, self.peer = socket.socketpair()
        ours.setblocking(False)
        self.peer.settimeout(5)
        self.reactor = MemoryReactor()
        self.transport = tcp.Server(ours, Protocol(), ("127.0.0.1", 4000), _Port(), 1, self.reactor)  # type: ignore[arg-type]
        self.addCleanup(self.peer.close)
        self.addCleanup(ours.close)

    def received(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += self.peer.recv(n - len(out))
        return out

    def test_twisted_attributes_it_relies_on(self) -> None:
        """If a Twisted upgrade renames these, this fails instead of send_now misordering bytes."""
        for name in ("connected", "disconnecting", "_writeDisconnected", "dataBuffer", "_tempDataLen", "socket"):
            self.assertTrue(hasattr(self.transport, name), name)
        self.transport.write(b"queued")
        self.assertEqual(self.transport._tempDataLen, 6)
        self.assertIn(self.transport, self.reactor.getWriters())

    def test_sent_at_once_without_registering_for_write(self) -> None:
        self.assertTrue(can_send_now(self.transport))
        send_now(self.transport, b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(self.received(19), b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertNotIn(self.transport, self.reactor.getWriters())
        self.assertEqual(self.transport._tempDataLen, 0)

    def test_queued_bytes_keep_their_place(self) -> None:
        self.transport.write(b"first ")
        send_now(self.transport, b"second")
        self.assertEqual(self.transport._tempDataLen, 12)  # behind "first ", not around it
        self.transport.doWrite()
        self.assertEqual(self.received(12), b"first second")

    def test_what_the_kernel_does_not_take_is_buffered(self) -> None:
        self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers hold
        send_now(self.transport, data)
        self.assertGreater(self.transport._tempDataLen, 0)
        self.assertLess(self.transport._tempDataLen, len(data))
        self.assertIn(self.transport, self.reactor.getWriters())
        out = b""
        while len(out) < len(data):
            self.transport.doWrite()
            out += self.peer.recv(1 << 20)
        self.assertEqual(out, data)

    def test_closing_connection_goes_through_the_transport(self) -> None:
        self.transport.disconnecting = True
        send_now(self.transport, b"late")
        self.assertEqual(self.transport._tempDataLen, 4)

    def test_peer_gone_leaves_the_error_to_the_transport(self) -> None:
        self.peer.close()
        send_now(self.transport, b"x" * 100)  # EPIPE or ECONNRESET on send: no exception here
        self.assertEqual(self.transport._tempDataLen, 100)

    def test_other_transports_are_not_touched(self) -> None:
        self.assertFalse(can_send_now(StringTransport()))
        self.transport.TLS = True
        self.assertFalse(can_send_now(self.transport))
