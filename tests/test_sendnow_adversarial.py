"""Fast-path responses sent straight to the socket keep their order against twisted.web's on real TCP connections."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.trial.unittest import TestCase
from twisted.web import server, static
from twisted.web.resource import Resource

from cookiesaver.web import site as site_module
from tests.test_fastpath import Side, normalise

BIG = (
    bytes(range(256)) * 4096
)  # 1 MiB: more than loopback socket buffers take while the client does not read


class Later(Resource):
    """Answers after a short real delay (NOT_DONE_YET), naming the request, so a slow response is in flight."""

    isLeaf = True

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self._reactor = reactor

    def render_GET(self, request: Any) -> Any:
        body = b"later " + request.uri + b"\n"

        def answer() -> None:
            if not request._disconnected:
                request.setHeader(b"content-type", b"text/plain")
                request.setHeader(b"content-length", b"%d" % len(body))
                request.write(body)
                request.finish()

        self._reactor.callLater(0.005, answer)
        return server.NOT_DONE_YET


class Collect(protocol.Protocol):
    """A client that sends chunks (optionally with pauses and without reading for a while) and keeps every byte."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(bytes(self.received))


class RealSocketOrderTests(TestCase):
    """Real reactor, real listening ports on 127.0.0.1, the real site with and without the fast path."""

    timeout = 30

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.sends = {"direct": 0, "behind_queued": 0}
        original = site_module.send_now

        def counting(transport: Any, data: bytes) -> None:
            self.sends[
                "behind_queued"
                if transport.dataBuffer or transport._tempDataLen
                else "direct"
            ] += 1
            original(transport, data)

        self.patch(site_module, "send_now", counting)
        self.fast = Side(self.mktemp(), fast=True)
        self.slow = Side(self.mktemp(), fast=False)
        self.returning = self.fast.visitors.new_id().encode()
        self.ports = {}
        for name, side in (("fast", self.fast), ("slow", self.slow)):
            side.site.resource.putChild(b"later", Later(reactor))
            side.site.resource.putChild(
                b"big", static.Data(BIG, "application/octet-stream")
            )
            port = reactor.listenTCP(0, side.site, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            self.ports[name] = port.getHost().port

    def pixel(self, n: int, method: bytes = b"GET") -> bytes:
        return (
            method
            + b" /pixel?site=shop&e=n%d HTTP/1.1\r\nHost: x\r\nCookie: csid=%s\r\n\r\n"
            % (n, self.returning)
        )

    def later(self, n: int, close: bool = False) -> bytes:
        return b"GET /later?%d HTTP/1.1\r\nHost: x\r\n%s\r\n" % (
            n,
            b"Connection: close\r\n" if close else b"",
        )

    @defer.inlineCallbacks
    def talk(
        self,
        which: str,
        chunks: list[bytes],
        pause_reading: float = 0.0,
        gap: float = 0.0,
    ) -> Any:
        """Send the chunks (a gap between them), not reading for C{pause_reading} seconds; return all bytes once the server closes."""
        client = yield protocol.ClientCreator(self.reactor, Collect).connectTCP(
            "127.0.0.1", self.ports[which]
        )
        if pause_reading:
            client.transport.pauseProducing()
        for chunk in chunks:
            client.transport.write(chunk)
            if gap:
                yield task.deferLater(self.reactor, gap, lambda: None)
        if pause_reading:
            yield task.deferLater(self.reactor, pause_reading, lambda: None)
            client.transport.resumeProducing()
        received = yield client.closed
        return received

    @defer.inlineCallbacks
    def assertSameOnBoth(self, chunks: list[bytes], **kw: Any) -> Any:
        fast_before = self.fast.fast_calls
        n_fast, n_slow = len(self.fast.sink.documents), len(self.slow.sink.documents)
        fast = yield self.talk("fast", chunks, **kw)
        slow = yield self.talk("slow", chunks, **kw)
        self.assertEqual(len(fast), len(slow))
        self.assertEqual(normalise(fast), normalise(slow))
        self.assertEqual(
            self.fast.events(self.returning)[n_fast:],
            self.slow.events(self.returning)[n_slow:],
        )
        return self.fast.fast_calls - fast_before

    @defer.inlineCallbacks
    def test_pipelined_fast_and_slow_in_one_write(self) -> Any:
        """Fast pixels between in-flight async and 1 MiB twisted.web responses come back in request order, byte for byte."""
        big = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"
        data = (
            self.pixel(1)
            + self.later(2)
            + self.pixel(3)
            + big
            + self.pixel(4, b"HEAD")
            + self.pixel(5)
            + self.later(6, close=True)
        )
        taken = yield self.assertSameOnBoth([data])
        self.assertGreaterEqual(taken, 1)

    @defer.inlineCallbacks
    def test_pipelined_split_at_random_boundaries_with_gaps(self) -> Any:
        """The same pipeline split into random segments sent a millisecond apart: same bytes and events as twisted.web."""
        big = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"
        data = b"".join(
            [
                self.pixel(1),
                self.later(2),
                self.pixel(3),
                self.pixel(4),
                big,
                self.pixel(5),
                self.later(6),
                self.pixel(7),
                self.pixel(8, b"HEAD"),
                self.later(9, close=True),
            ]
        )
        rng = random.Random(20261203)
        taken = 0
        for _ in range(6):
            cuts = sorted(rng.sample(range(1, len(data)), 6))
            chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
            taken += yield self.assertSameOnBoth(chunks, gap=0.001)
        self.assertGreaterEqual(taken, 1)
        self.assertGreater(self.sends["direct"], 0)

    @defer.inlineCallbacks
    def test_client_that_does_not_read(self) -> Any:
        """With kernel buffers full (the client stops reading), later fast responses still queue behind the big ones."""
        big = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"
        chunks = [
            big + self.pixel(1),
            big,
            self.pixel(2) + self.pixel(3),
            self.later(4) + self.pixel(5),
            self.pixel(6) + self.later(7, close=True),
        ]
        yield self.assertSameOnBoth(chunks, pause_reading=0.2, gap=0.02)
        self.assertGreater(
            self.sends["behind_queued"], 0
        )  # the case that matters: a fast answer behind unsent bytes

    @defer.inlineCallbacks
    def test_fast_answer_right_after_slow_finishes(self) -> Any:
        """A fast request arriving while a slow response is still queued in the transport waits behind it."""
        big = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"
        chunks = [
            big,
            self.pixel(1),
            self.pixel(2),
            big + self.pixel(3),
            self.later(4, close=True),
        ]
        yield self.assertSameOnBoth(chunks, gap=0.0005)

    @defer.inlineCallbacks
    def test_client_closing_mid_response(self) -> Any:
        """A client that resets mid-response leaves no error behind and the connection count returns to zero."""
        big = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"
        for which, side in (("fast", self.fast), ("slow", self.slow)):
            client = yield protocol.ClientCreator(self.reactor, Collect).connectTCP(
                "127.0.0.1", self.ports[which]
            )
            client.transport.write(self.pixel(1) + big + self.pixel(2) + self.pixel(3))
            for _ in range(200):
                if len(client.received) > 100_000:
                    break
                yield task.deferLater(self.reactor, 0.005, lambda: None)
            client.transport.abortConnection()
            yield client.closed
            # A fast request that lands after the reset: sent on a connection whose peer is gone.
            for _ in range(200):
                if side.site.open_connections == 0:
                    break
                yield task.deferLater(self.reactor, 0.005, lambda: None)
            self.assertEqual(side.site.open_connections, 0)

    @defer.inlineCallbacks
    def test_fast_requests_then_peer_half_closes(self) -> Any:
        """
        Pipelined pixels then the client's FIN: both sides record the same events; the fast side's bytes are whole responses.

        twisted.web drops its queued responses when it reads the FIN (0 bytes arrive); the fast path has already sent
        its answers. A benign difference, pinned here so a change in either direction is noticed.
        """
        data = b"".join(self.pixel(i) for i in range(50))
        received = {}
        for which in ("fast", "slow"):
            n_before = len(getattr(self, which).sink.documents)
            client = yield protocol.ClientCreator(self.reactor, Collect).connectTCP(
                "127.0.0.1", self.ports[which]
            )
            client.transport.write(data)
            client.transport.loseWriteConnection()
            received[which] = yield client.closed
            self.assertEqual(len(getattr(self, which).sink.documents) - n_before, 50)
        one = normalise(received["fast"]).split(b"HTTP/1.1 ")[1]
        self.assertEqual(
            normalise(received["fast"]),
            (b"HTTP/1.1 " + one) * received["fast"].count(b"HTTP/1.1 "),
        )
        self.assertIn(received["slow"], (b"", received["fast"]))
