"""The server's TLS transport: Twisted's memory-BIO TLS, with less Python per request.

Twisted's default server transport (L{twisted.protocols.tls.BufferingTLSTransport})
spends CPU on every keep-alive request that changes nothing on the wire:

  - it aggregates the response and sends it from a C{callLater(0)}: one
    delayed call, and one more reactor pass, per response;
  - its receive loop calls C{Connection.recv} until pyOpenSSL raises
    C{WantReadError}, and it drains the outgoing BIO until C{bio_read} raises
    C{WantReadError}: two Python exceptions per request;
  - every C{recv}, C{send}, C{bio_read} and C{bio_write} goes through
    pyOpenSSL's generic argument and error handling, which costs more than
    the OpenSSL call it wraps for a few hundred bytes.

L{ServerTLSProtocol} sends what the application writes during C{dataReceived}
when C{dataReceived} returns (writes made elsewhere, from a Deferred, are
still aggregated until the next reactor pass, as Twisted does), and calls
C{SSL_read}, C{SSL_write}, C{BIO_read} and C{BIO_write} directly. On a plain
TCP connection the ciphertext goes straight to the socket when nothing is
queued before it (L{cookiesaver.web.sendnow}, as the plain fast path does). Only a
successful call takes the short way: any other result goes to pyOpenSSL's own
C{Connection._raise_ssl_error}, so errors, close_notify and EOF raise exactly
what C{recv}/C{send} would raise, and Twisted's handlers deal with them.
Handshakes stay entirely Twisted's and pyOpenSSL's (C{do_handshake}, SNI and
ALPN callbacks). Callbacks whose failures pyOpenSSL reports through the
success path cannot run here: they run only in handshakes, and the server
contexts refuse renegotiation (L{cookiesaver.tls.make_context}).

This leans on private API: pyOpenSSL's C{Connection._ssl}, C{_into_ssl},
C{_from_ssl}, C{_raise_ssl_error} and its C{OpenSSL._util} binding, and
Twisted's L{TLSMemoryBIOProtocol} internals (C{_flushReceiveBIO},
C{_flushSendBIO}, C{_write}, C{_shutdownTLS}, C{_tlsShutdownFinished},
C{_checkHandshakeStatus}, C{_unbufferPendingWrites}, C{_bufferedWrite}, their
state flags, and the factory's C{_clock}). C{tests/test_tlstransport.py} pins
each name and the behaviour built on it, so an upgrade that moves one fails
there, loudly, instead of serving wrong bytes or silently slowing down.
"""

from __future__ import annotations

from typing import Any

from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from cookiesaver.web.sendnow import can_send_now, send_now

# Twisted's sizes: a TLS record carries at most 16 KiB of plaintext, so one
# 32 KiB read takes a whole record, with or without its overhead.
READ_SIZE = 2**15
RECORD_SIZE = 2**14

# As twisted.protocols.tls._AggregateSmallWrites: past this, write at once.
MAX_BUFFER_SIZE = 64_000

# pyOpenSSL's own allocator for read buffers: no zeroing, the read overwrites it.
_allocate = _ffi.new_allocator(should_clear_after_alloc=False)
_SSL_read = _lib.SSL_read
_SSL_write = _lib.SSL_write
_SSL_get_error = _lib.SSL_get_error
_BIO_read = _lib.BIO_read
_BIO_write = _lib.BIO_write
_WANT_READ = _lib.SSL_ERROR_WANT_READ
_buffer = _ffi.buffer
_SEND_BUFFER = _allocate("char[]", READ_SIZE)


class ServerTLSProtocol(TLSMemoryBIOProtocol):
    """A L{TLSMemoryBIOProtocol} that answers in the same reactor pass and calls OpenSSL directly on success."""

    def __init__(self, factory: Any, wrappedProtocol: Any, _connectWrapped: bool = True) -> None:
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        self._clock: IReactorTime = factory._clock
        self._pending: list[bytes] = []
        self._pendingSize = 0
        self._receiving = False
        self._scheduled: IDelayedCall | None = None
        self._sendNow = False

    def makeConnection(self, transport: Any) -> None:
        # As the plain fast path does: ciphertext goes straight to the socket when
        # nothing is queued before it, saving two epoll_ctl calls and a doWrite.
        self._sendNow = can_send_now(transport)
        super().makeConnection(transport)

    # -- application writes: sent when dataReceived returns, else on the next reactor pass

    def write(self, data: bytes) -> None:
        # Accept or drop now, as TLSMemoryBIOProtocol.write does: what is
        # accepted is sent even if loseConnection() comes before the flush.
        if self._lostTLSConnection or (self.disconnecting and self._producer is None):
            return
        # The caller may reuse a bytearray; bytes(b) of bytes is the same object.
        data = bytes(data)
        self._pending.append(data)
        self._pendingSize += len(data)
        if self._pendingSize > MAX_BUFFER_SIZE:
            self._flushPending()
        elif not self._receiving and self._scheduled is None:
            self._scheduled = self._clock.callLater(0, self._scheduledFlush)

    def writeSequence(self, iovec: Any) -> None:
        self.write(b"".join(iovec))

    def _scheduledFlush(self) -> None:
        self._scheduled = None
        self._flushPending()

    def _flushPending(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if self._pending:
            pending = self._pending
            self._pending = []
            self._pendingSize = 0
            self._write(pending[0] if len(pending) == 1 else b"".join(pending))

    def _dropPending(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        self._pending = []
        self._pendingSize = 0

    # -- the TLS layer: TLSMemoryBIOProtocol's steps, OpenSSL called directly

    def dataReceived(self, data: bytes) -> None:
        self._receiving = True
        try:
            if data:
                connection = self._tlsConnection
                if type(data) is not bytes:
                    data = bytes(data)
                written = _BIO_write(connection._into_ssl, data, len(data))
                if written != len(data):
                    connection._handle_bio_errors(connection._into_ssl, written)
            if not self._handshakeDone:
                self._checkHandshakeStatus()
                if not self._handshakeDone:
                    return
            if self._appSendBuffer:
                self._unbufferPendingWrites()
            self._flushReceiveBIO()
        finally:
            self._receiving = False
            if self._pending:
                self._flushPending()

    def _flushReceiveBIO(self) -> None:
        connection = self._tlsConnection
        ssl = connection._ssl
        buf = _allocate("char[]", READ_SIZE)  # copied out before the application sees it
        while not self._lostTLSConnection:
            result = _SSL_read(ssl, buf, READ_SIZE)
            if result > 0:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, _buffer(buf, result)[:])
                continue
            if _SSL_get_error(ssl, result) == _WANT_READ:
                break
            try:
                connection._raise_ssl_error(ssl, result)
            except WantReadError:
                break
            except ZeroReturnError:
                # The peer's close_notify: no more TLS data on this connection.
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except Error:
                self._tlsShutdownFinished(Failure())
            else:
                break  # SSL_ERROR_NONE with nothing read: nothing more to read now
        self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        connection = self._tlsConnection
        if connection is None:
            return
        transport = self.transport
        assert transport is not None  # Twisted flushes only while it has a transport
        bio = connection._from_ssl
        while (result := _BIO_read(bio, _SEND_BUFFER, READ_SIZE)) > 0:
            if self._sendNow:
                send_now(transport, _buffer(_SEND_BUFFER, result)[:])
            else:
                transport.write(_buffer(_SEND_BUFFER, result)[:])

    def _write(self, data: bytes) -> None:
        if self._lostTLSConnection:
            return
        connection = self._tlsConnection
        ssl = connection._ssl
        size = len(data)
        sent = 0
        while sent < size:
            chunk = data if sent == 0 and size <= RECORD_SIZE else data[sent : sent + RECORD_SIZE]
            result = _SSL_write(ssl, chunk, len(chunk))
            if result <= 0:
                try:
                    connection._raise_ssl_error(ssl, result)
                except WantReadError:
                    # Mid-handshake: Twisted keeps the rest until a read unblocks it.
                    self._bufferedWrite(data[sent:])
                except Error:
                    self._tlsShutdownFinished(Failure())
                else:
                    self._bufferedWrite(data[sent:])
                break
            sent += result
            self._flushSendBIO()

    # -- closing: buffered writes go out before close_notify, and never after an abort

    def _shutdownTLS(self) -> None:
        if self._pending and not self._aborted:
            self._flushPending()
        super()._shutdownTLS()

    def loseConnection(self) -> None:
        self._flushPending()
        super().loseConnection()

    def abortConnection(self) -> None:
        self._dropPending()
        super().abortConnection()

    def _tlsShutdownFinished(self, reason: Failure | None) -> None:
        if reason is not None:
            self._dropPending()
        super()._tlsShutdownFinished(reason)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._flushPending()
        super().connectionLost(reason)
