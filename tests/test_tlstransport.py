"""ServerTLSProtocol: the same bytes and closes as Twisted's TLS transport, with less work per request."""

from __future__ import annotations

import os
import socket
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import lib as _lib
from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.tls import (
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
    TLSMemoryBIOProtocol,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from cookiesaver.devsecrets import self_signed
from cookiesaver.tls import CertificateStore
from cookiesaver.tlstransport import MAX_BUFFER_SIZE, ServerTLSProtocol

REQUEST = b"GET /pixel HTTP/1.1\r\nHost: pxl.localhost\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 43\r\n\r\n" + b"G" * 43

_stores: dict[str, CertificateStore] = {}


def certificate_store(directory: str) -> CertificateStore:
    """A loaded store for pxl.localhost, plus one SNI name, made once per test run."""
    if "store" not in _stores:
        os.makedirs(os.path.join(directory, "sni", "one.localhost"), exist_ok=True)
        for path, names in ((directory, ["pxl.localhost"]), (os.path.join(directory, "sni", "one.localhost"), ["one.localhost"])):
            cert, key = self_signed(names)
            with open(os.path.join(path, "fullchain.pem"), "wb") as f:
                f.write(cert)
            with open(os.path.join(path, "privkey.pem"), "wb") as f:
                f.write(key)
        store = CertificateStore(os.path.join(directory, "fullchain.pem"), os.path.join(directory, "privkey.pem"), os.path.join(directory, "sni"))
        store.load()
        _stores["store"] = store
    return _stores["store"]


class App(Protocol):
    """The application behind TLS: records what it gets, answers with C{respond}."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Failure] = []
        self.respond: Any = lambda app, data: app.transport.write(RESPONSE)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        self.respond(self, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.append(reason)


class Peer:
    """A TLS client over memory BIOs talking to one server protocol on a L{StringTransport}."""

    def __init__(
        self,
        test: SynchronousTestCase,
        protocol_class: type[TLSMemoryBIOProtocol],
        version: int = SSL.TLS1_3_VERSION,
        server_name: bytes | None = None,
        transport: Any = None,
        read_wire: Any = None,
    ) -> None:
        self.clock = Clock()
        self.app = App()
        factory = TLSMemoryBIOFactory(certificate_store(cert_dir(test)), False, Factory.forProtocol(lambda: self.app), clock=self.clock)
        factory.protocol = protocol_class
        self.server = factory.buildProtocol(None)
        self.transport = transport if transport is not None else StringTransport()
        self.read_wire = read_wire or self._read_string_transport
        self.server.makeConnection(self.transport)
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_max_proto_version(version)
        self.client = SSL.Connection(ctx, None)
        if server_name is not None:
            self.client.set_tlsext_host_name(server_name)
        self.client.set_connect_state()
        self.plaintext = b""
        self.closed_by_server = False
        self.alerts: list[str] = []
        for _ in range(10):
            try:
                self.client.do_handshake()
                break
            except SSL.WantReadError:
                self.send_ciphertext(self.client_output())
                self.receive()
        self.send_ciphertext(self.client_output())
        self.receive()

    def client_output(self) -> bytes:
        out = b""
        while True:
            try:
                out += self.client.bio_read(65536)
            except SSL.WantReadError:
                return out

    def send_ciphertext(self, data: bytes) -> None:
        if data:
            self.server.dataReceived(data)

    def records(self, *messages: bytes) -> bytes:
        """Ciphertext for each message, one TLS record each, concatenated."""
        for m in messages:
            self.client.send(m)
        return self.client_output()

    def _read_string_transport(self) -> bytes:
        data: bytes = self.transport.value()
        self.transport.clear()
        return data

    def receive(self) -> bytes:
        """Decrypt what the server has written so far; note its close_notify."""
        data = self.read_wire()
        if data:
            self.client.bio_write(data)
        got = b""
        while True:
            try:
                got += self.client.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.closed_by_server = True
                break
            except SSL.Error as e:
                self.alerts.append(str(e))
                break
        self.plaintext += got
        return got


def cert_dir(test: SynchronousTestCase) -> str:
    return os.path.join(os.environ.get("TMPDIR", "/tmp"), f"cookiesaver-tlstransport-{os.getpid()}")


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


class PinnedPrivateAPITests(SynchronousTestCase):
    """The private Twisted and pyOpenSSL names tlstransport.py relies on still exist."""

    def test_pyopenssl_names(self) -> None:
        """pyOpenSSL's Connection keeps _ssl, _into_ssl, _from_ssl and _raise_ssl_error; its binding keeps the four I/O calls."""
        connection = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD), None)
        for name in ("_ssl", "_into_ssl", "_from_ssl", "_raise_ssl_error", "_handle_bio_errors"):
            self.assertTrue(hasattr(connection, name), name)
        for name in ("SSL_read", "SSL_write", "SSL_get_error", "BIO_read", "BIO_write", "SSL_ERROR_WANT_READ"):
            self.assertTrue(hasattr(_lib, name), name)

    def test_twisted_names(self) -> None:
        """TLSMemoryBIOProtocol keeps the steps and flags ServerTLSProtocol overrides or reads."""
        for name in (
            "_flushReceiveBIO",
            "_flushSendBIO",
            "_write",
            "_shutdownTLS",
            "_tlsShutdownFinished",
            "_checkHandshakeStatus",
            "_unbufferPendingWrites",
            "_bufferedWrite",
            "_handshakeDone",
            "_lostTLSConnection",
            "_aborted",
            "_producer",
        ):
            self.assertTrue(hasattr(TLSMemoryBIOProtocol, name), name)
        factory = TLSMemoryBIOFactory(certificate_store(cert_dir(self)), False, Factory.forProtocol(App), clock=Clock())
        self.assertIsInstance(factory._clock, Clock)

    def test_handshake_still_twisteds(self) -> None:
        """Twisted's handshake reaches our BIO helpers: a handshake completes and the app is connected."""
        peer = Peer(self, ServerTLSProtocol)
        self.assertTrue(peer.server._handshakeDone)


class SameBytesAsTwistedTests(SynchronousTestCase):
    """Each scenario gives the client the same plaintext and the same close as Twisted's BufferingTLSTransport."""

    def both(self, scenario: Any, version: int = SSL.TLS1_3_VERSION) -> tuple[Any, Any]:
        results = []
        for protocol_class in (BufferingTLSTransport, ServerTLSProtocol):
            peer = Peer(self, protocol_class, version)
            scenario(peer)
            peer.clock.advance(0)
            peer.receive()
            results.append((peer.plaintext, peer.closed_by_server, peer.alerts, peer.transport.disconnecting, b"".join(peer.app.received), [r.type for r in peer.app.lost]))
        self.assertEqual(results[0], results[1])
        return results[0], results[1]

    def test_one_request(self) -> None:
        """A request in one record is answered with the same bytes, TLS 1.3 and 1.2."""
        for version in (SSL.TLS1_3_VERSION, SSL.TLS1_2_VERSION):
            (plain, *_), _ = self.both(lambda p: p.send_ciphertext(p.records(REQUEST)), version)
            self.assertEqual(plain, RESPONSE)

    def test_pipelined_records(self) -> None:
        """Three records in one read are all delivered and all answered."""
        (plain, _, _, _, received, _), _ = self.both(lambda p: p.send_ciphertext(p.records(REQUEST, REQUEST, REQUEST)))
        self.assertEqual(plain, RESPONSE * 3)
        self.assertEqual(received, REQUEST * 3)

    def test_byte_at_a_time(self) -> None:
        """Ciphertext arriving one byte at a time is delivered once the record is complete."""

        def scenario(peer: Peer) -> None:
            for i, byte in enumerate(peer.records(REQUEST, REQUEST)):
                peer.send_ciphertext(bytes([byte]))

        (plain, *_), _ = self.both(scenario)
        self.assertEqual(plain, RESPONSE * 2)

    def test_large_response(self) -> None:
        """Responses of 40 KB and 200 KB (several records, past the aggregation limit) arrive whole and in order."""
        body = bytes(range(256)) * 800

        def scenario(peer: Peer) -> None:
            peer.app.respond = lambda app, data: (app.transport.write(body[:40_000]), app.transport.write(body))
            peer.send_ciphertext(peer.records(REQUEST))

        (plain, *_), _ = self.both(scenario)
        self.assertEqual(plain, body[:40_000] + body)

    def test_many_small_writes(self) -> None:
        """Many small writes in one dataReceived arrive in order."""

        def scenario(peer: Peer) -> None:
            peer.app.respond = lambda app, data: app.transport.writeSequence([b"%d," % i for i in range(500)])
            peer.send_ciphertext(peer.records(REQUEST))

        (plain, *_), _ = self.both(scenario)
        self.assertEqual(plain, b"".join(b"%d," % i for i in range(500)))

    def test_close_notify_after_request(self) -> None:
        """The peer's request and close_notify in one read: the request reaches the app and the connection closes."""

        def scenario(peer: Peer) -> None:
            peer.app.respond = lambda app, data: None
            peer.client.send(REQUEST)
            peer.client.shutdown()
            peer.send_ciphertext(peer.client_output())

        (_, closed, _, disconnecting, received, _), _ = self.both(scenario)
        self.assertEqual(received, REQUEST)
        self.assertTrue(closed)
        self.assertTrue(disconnecting)

    def test_lose_connection_after_response(self) -> None:
        """The app answers and closes: the response, then close_notify."""

        def scenario(peer: Peer) -> None:
            peer.app.respond = lambda app, data: (app.transport.write(RESPONSE), app.transport.loseConnection())
            peer.send_ciphertext(peer.records(REQUEST))

        (plain, closed, *_), _ = self.both(scenario)
        self.assertEqual((plain, closed), (RESPONSE, True))

    def test_abort_drops_buffered(self) -> None:
        """The app writes then aborts: nothing of the response is sent."""

        def scenario(peer: Peer) -> None:
            peer.app.respond = lambda app, data: (app.transport.write(RESPONSE), app.transport.abortConnection())
            peer.send_ciphertext(peer.records(REQUEST))

        (plain, *_), _ = self.both(scenario)
        self.assertEqual(plain, b"")

    def test_transport_lost_mid_response(self) -> None:
        """The TCP connection drops while a deferred response is pending: the app hears of it once, nothing raises."""

        def scenario(peer: Peer) -> None:
            peer.app.respond = lambda app, data: None
            peer.send_ciphertext(peer.records(REQUEST))
            peer.server.write(b"partial")
            peer.server.connectionLost(Failure(ConnectionResetError()))
            peer.server.write(b"after")

        (_, _, _, _, _, lost), _ = self.both(scenario)
        self.assertEqual(len(lost), 1)

    def test_garbage_after_handshake(self) -> None:
        """Ciphertext that is not TLS ends the connection with an error for the app, as Twisted does."""

        def scenario(peer: Peer) -> None:
            peer.send_ciphertext(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
            peer.server.connectionLost(Failure(ConnectionResetError()))

        (_, _, alerts, disconnecting, _, lost), _ = self.both(scenario)
        self.assertIn("bad record mac", " ".join(alerts))
        self.assertTrue(disconnecting)
        self.assertEqual(len(lost), 1)

    def test_renegotiation_refused(self) -> None:
        """A TLS 1.2 client asking to renegotiate is refused the same way, after its earlier request was answered."""

        def scenario(peer: Peer) -> None:
            peer.send_ciphertext(peer.records(REQUEST))
            peer.clock.advance(0)  # Twisted's transport sends on the next reactor pass
            peer.receive()
            peer.client.renegotiate()
            try:
                peer.client.do_handshake()
            except SSL.WantReadError:
                pass
            peer.send_ciphertext(peer.client_output())
            peer.receive()
            try:
                peer.client.do_handshake()
            except SSL.Error as e:
                peer.alerts.append(str(e))

        (plain, _, alerts, _, _, lost), _ = self.both(scenario, SSL.TLS1_2_VERSION)
        self.assertEqual(plain, RESPONSE)
        self.assertIn("no renegotiation", " ".join(alerts))
        self.assertEqual(lost, [])

    def test_peer_eof_without_close_notify(self) -> None:
        """The TCP connection closes without close_notify: the app's connectionLost gets one reason."""

        def scenario(peer: Peer) -> None:
            peer.send_ciphertext(peer.records(REQUEST)[:-3])
            peer.server.connectionLost(Failure(ConnectionResetError()))

        (_, _, _, _, received, lost), _ = self.both(scenario)
        self.assertEqual((received, len(lost)), (b"", 1))


class ServerTLSProtocolTests(SynchronousTestCase):
    """What ServerTLSProtocol does differently: when it sends, and which calls it avoids."""

    def test_answer_sent_before_data_received_returns(self) -> None:
        """A response written in dataReceived is on the wire when dataReceived returns, with no delayed call."""
        peer = Peer(self, ServerTLSProtocol)
        peer.send_ciphertext(peer.records(REQUEST))
        self.assertEqual(peer.clock.getDelayedCalls(), [])
        self.assertEqual(peer.receive(), RESPONSE)

    def test_no_exception_per_request(self) -> None:
        """A keep-alive request costs no pyOpenSSL error handling: _raise_ssl_error is never called."""
        peer = Peer(self, ServerTLSProtocol)
        calls: list[int] = []
        connection = peer.server._tlsConnection
        original = connection._raise_ssl_error
        connection._raise_ssl_error = lambda ssl, result: (calls.append(result), original(ssl, result))
        for _ in range(3):
            peer.send_ciphertext(peer.records(REQUEST, REQUEST))
        self.assertEqual(peer.receive(), RESPONSE * 6)
        self.assertEqual(calls, [])

    def test_one_record_per_answer(self) -> None:
        """Two writes in one dataReceived leave as one TLS record, one transport write."""
        peer = Peer(self, ServerTLSProtocol)
        writes: list[bytes] = []
        original = peer.transport.write
        peer.transport.write = lambda data: (writes.append(data), original(data))  # type: ignore[method-assign]
        peer.app.respond = lambda app, data: (app.transport.write(RESPONSE[:10]), app.transport.write(RESPONSE[10:]))
        peer.send_ciphertext(peer.records(REQUEST))
        self.assertEqual(len(writes), 1)
        self.assertEqual(writes[0][0], 0x17)  # one application_data record
        self.assertEqual(int.from_bytes(writes[0][3:5], "big") + 5, len(writes[0]))
        self.assertEqual(peer.receive(), RESPONSE)

    def test_write_outside_data_received_waits_one_pass(self) -> None:
        """A write from a callback is aggregated until the next reactor pass, as Twisted does."""
        peer = Peer(self, ServerTLSProtocol)
        peer.server.write(b"one ")
        peer.server.write(b"two")
        self.assertEqual(peer.receive(), b"")
        peer.clock.advance(0)
        self.assertEqual(peer.receive(), b"one two")

    def test_order_kept_across_paths(self) -> None:
        """Bytes aggregated from a callback go before an answer written in the next dataReceived; the delayed flush is cancelled."""
        peer = Peer(self, ServerTLSProtocol)
        peer.server.write(b"early;")
        peer.send_ciphertext(peer.records(REQUEST))
        self.assertEqual(peer.clock.getDelayedCalls(), [])
        self.assertEqual(peer.receive(), b"early;" + RESPONSE)

    def test_big_write_not_held(self) -> None:
        """Past the aggregation limit a callback's writes are encrypted at once."""
        peer = Peer(self, ServerTLSProtocol)
        body = b"x" * (MAX_BUFFER_SIZE + 1)
        peer.server.write(body)
        self.assertEqual(peer.clock.getDelayedCalls(), [])
        self.assertEqual(peer.receive(), body)

    def test_close_notify_after_pending_write(self) -> None:
        """A deferred answer still waiting for its flush goes out before the server's close_notify when the peer closes."""
        peer = Peer(self, ServerTLSProtocol)
        peer.app.respond = lambda app, data: None
        peer.send_ciphertext(peer.records(REQUEST))
        peer.server.write(RESPONSE)
        peer.client.shutdown()
        peer.send_ciphertext(peer.client_output())
        self.assertEqual(peer.receive(), RESPONSE)
        self.assertTrue(peer.closed_by_server)
        self.assertEqual(peer.clock.getDelayedCalls(), [])

    def test_write_after_lose_connection_dropped(self) -> None:
        """After loseConnection (and with no producer) writes are dropped, as in TLSMemoryBIOProtocol."""
        peer = Peer(self, ServerTLSProtocol)
        peer.server.write(b"kept")
        peer.server.loseConnection()
        peer.server.write(b"dropped")
        peer.clock.advance(0)
        self.assertEqual(peer.receive(), b"kept")
        self.assertTrue(peer.closed_by_server)

    def test_producer_close_after_unregister(self) -> None:
        """With a producer (as HTTPChannel registers) the answer goes out and close_notify waits for unregisterProducer."""
        peer = Peer(self, ServerTLSProtocol)
        producer = Producer()
        peer.server.registerProducer(producer, True)
        peer.app.respond = lambda app, data: (app.transport.write(RESPONSE), app.transport.loseConnection())
        peer.send_ciphertext(peer.records(REQUEST))
        self.assertEqual(peer.receive(), RESPONSE)
        self.assertFalse(peer.closed_by_server)
        peer.server.write(b"tail")
        peer.server.unregisterProducer()
        self.assertEqual(peer.receive(), b"tail")
        self.assertTrue(peer.closed_by_server)

    def test_sni_context_chosen(self) -> None:
        """The SNI callback still switches to the named certificate during the handshake."""
        peer = Peer(self, ServerTLSProtocol, server_name=b"one.localhost")
        name = peer.client.get_peer_certificate().to_cryptography().subject.rfc4514_string()  # type: ignore[union-attr]
        self.assertEqual(name, "CN=one.localhost")
        peer.send_ciphertext(peer.records(REQUEST))
        self.assertEqual(peer.receive(), RESPONSE)


class _Port:
    """What tcp.Server reads from its listening port."""

    _realPortNumber = 0
    _type = "TCP"


class SocketTests(SynchronousTestCase):
    """Over a real TCP server transport, ciphertext is sent at once and stays in order."""

    def setUp(self) -> None:
        ours, self.peer_socket = socket.socketpair()
        ours.setblocking(False)
        self.peer_socket.settimeout(5)
        self.addCleanup(self.peer_socket.close)
        self.addCleanup(ours.close)
        self.reactor = MemoryReactor()
        self.tcp = tcp.Server(ours, Protocol(), ("127.0.0.1", 4000), _Port(), 1, self.reactor)  # type: ignore[arg-type]
        self.peer = Peer(self, ServerTLSProtocol, transport=self.tcp, read_wire=self.read_wire)

    def read_wire(self) -> bytes:
        self.tcp.doWrite()
        out = b""
        self.peer_socket.setblocking(False)
        try:
            while True:
                chunk = self.peer_socket.recv(1 << 20)
                if not chunk:
                    break
                out += chunk
        except BlockingIOError:
            pass
        return out

    def test_answer_sent_without_registering_for_write(self) -> None:
        """The answer to a request reaches the socket before dataReceived returns; the reactor is not asked to write."""
        self.peer.send_ciphertext(self.peer.records(REQUEST))
        self.assertNotIn(self.tcp, self.reactor.getWriters())
        self.assertEqual(self.peer.receive(), RESPONSE)

    def test_large_answer_in_order(self) -> None:
        """A 1 MB answer, more than the socket takes at once, arrives whole and in order."""
        self.tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        body = bytes(range(256)) * 4096
        self.peer.app.respond = lambda app, data: app.transport.write(body)
        self.peer.send_ciphertext(self.peer.records(REQUEST))
        got = b""
        for _ in range(2000):
            got += self.peer.receive()
            if len(got) >= len(body):
                break
        self.assertEqual(got, body)
