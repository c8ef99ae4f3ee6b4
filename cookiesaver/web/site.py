"""The HTTP server: twisted.web's parser with cookiesaver's limits.

What this adds to C{twisted.web.server.Site}:

  - a header deadline: from a request's first byte (or the connection's
    start) to the end of its headers. Unlike Twisted's idle timeout, a client
    dripping one byte at a time cannot extend it;
  - a body deadline once the headers are in;
  - a body limit per path prefix: a C{Content-Length} over it is answered 413
    before any body byte is read, a chunked body is cut off at the limit;
    bodies are held in memory (they are small by construction), never in a
    temporary file;
  - a cap on concurrent connections: over it, new connections are closed at
    once and counted;
  - no access-log formatting per request (Twisted formats a combined-log line
    per request even with no log file); an optional cheap JSON access log.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource, _computeAllowedMethods

from cookiesaver.config import HTTPConfig
from cookiesaver.metrics import Metrics
from cookiesaver.web.fastpath import FastPixel
from cookiesaver.web.sendnow import can_send_now, send_now

#: First path segments counted under their own name; anything else is "other" (bounded label cardinality).
KNOWN_AREAS = frozenset({b"pixel", b"pixel.js", b"push", b"optout", b"cookiesaver", b"robots.txt", b""})

log = Logger()

_REASONS = {
    500: b"Internal Server Error",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


def _raw_response(code: int, message: bytes, as_json: bool = False) -> bytes:
    """A complete fixed response; JSON for areas whose errors are JSON (push), text otherwise."""
    if as_json:
        body, content_type = b'{"error": "%s", "field": "body"}\n' % message, b"application/json"
    else:
        body, content_type = message + b"\n", b"text/plain; charset=utf-8"
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (code, _REASONS[code], content_type, len(body), body)
    )


class LimitedRequest(server.Request):
    """A request whose body lives in memory and is cut off at its path's limit."""

    def render(self, resrc: Any) -> None:
        """Answer an unsupported method with a short 405 and an Allow header (Twisted's page is deprecated HTML)."""
        if type(resrc).render is Resource.render:
            method = self.method.decode("ascii", "replace")
            if not hasattr(resrc, "render_" + method) and not (method == "HEAD" and hasattr(resrc, "render_GET")):
                allowed = sorted(_computeAllowedMethods(resrc))
                self.setResponseCode(405)
                self.setHeader(b"allow", b", ".join(allowed))
                self.setHeader(b"content-type", b"text/plain; charset=utf-8")
                body = b"method not allowed\n"
                self.setHeader(b"content-length", b"%d" % len(body))
                self.write(b"" if method == "HEAD" else body)
                self.finish()
                return
        super().render(resrc)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """Accept absolute-form targets (RFC 9112 3.2.2): route C{http://host/p?q} as C{/p?q}."""
        if path[:1] != b"/" and path[:7].lower() in (b"http://", b"https:/"):
            rest = path.split(b"//", 1)[1]
            cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
            path = rest[cut:]
            if not path.startswith(b"/"):
                path = b"/" + path
        super().requestReceived(command, path, version)

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        channel: LimitedChannel = self.channel  # type: ignore[assignment]
        if channel.body_over_limit(len(data)):
            return
        assert self.content is not None  # gotLength made it before the first chunk
        self.content.write(data)


class LimitedChannel(http.HTTPChannel):
    """HTTPChannel with header and body deadlines and per-path body limits."""

    site: CookiesaverSite
    #: Every transport we serve on (TCP, TLS, UNIX) can abort; ITransport does not say so.
    transport: ITCPTransport | None

    def __init__(self, limits: HTTPConfig, clock: IReactorTime, metrics: Metrics) -> None:
        super().__init__()
        self._limits = limits
        self._clock = clock
        self._metrics = metrics
        self.MAX_LENGTH = limits.max_request_line
        self.totalHeadersSize = limits.max_header_bytes
        self.maxHeaders = limits.max_headers
        self._deadline: IDelayedCall | None = None
        self._abort: IDelayedCall | None = None
        self._awaiting_head = True
        self._body_limit = 0
        self._body_seen = 0
        self._rejected = False
        self._send_now = False
        self._peer: Any = None

    # -- deadlines -----------------------------------------------------------

    def _arm(self, seconds: float, limit: str) -> None:
        self._disarm()
        self._deadline = self._clock.callLater(seconds, self._deadline_passed, limit)

    def _disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self, limit: str) -> None:
        self._deadline = None
        self._reject(408, b"request took too long", limit)

    def _reject(self, code: int, message: bytes, limit: str) -> None:
        """Answer with a fixed error, stop parsing, and close (abort if the peer stalls the close)."""
        if self._rejected:
            return
        self._rejected = True
        self._disarm()
        self._metrics.http_limit_hits.labels(limit=limit).inc()
        self.setTimeout(None)
        if self.transport is None:
            return
        if not self.requests or not self._handlingRequest:
            path = getattr(self, "_path", None) or b""
            self.transport.write(_raw_response(code, message, as_json=code == 413 and path.startswith(b"/push/")))
        self.transport.loseConnection()
        self._abort = self._clock.callLater(2.0, self.transport.abortConnection)

    def drain(self) -> None:
        """Shutdown: close now if idle, else close once the request in progress is answered."""
        self.persistent = False
        if not self.requests and self.transport is not None:
            self._disarm()
            self.transport.loseConnection()

    # -- LineReceiver / HTTPChannel hooks -----------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        assert self.transport is not None  # connectionMade runs once connected
        self._send_now = can_send_now(self.transport)
        self._peer = self.transport.getPeer()  # a connection's peer never changes; getPeer builds a new address each call
        self.site.connection_opened(self)
        self._arm(self._limits.header_timeout, "header_timeout")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()  # the peer closed first: nothing left to abort
        self.site.connection_closed(self)
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._rejected:
            return
        fast = self.site.fast_pixel
        if fast is not None and not self.requests and self.line_mode and not self._buffer and not self.site.draining:
            data = self._answer_fast(fast, data)
            if not data:
                return
        if self._awaiting_head and self._deadline is None:
            self._arm(self._limits.header_timeout, "header_timeout")
        super().dataReceived(data)

    def _answer_fast(self, fast: FastPixel, data: bytes) -> bytes:
        """Answer the complete fast-path requests at the front of C{data}; return what twisted.web must handle."""
        while True:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                return data
            parsed = fast.parse(data[:end])
            if parsed is None:
                return data
            assert self.transport is not None  # dataReceived only runs while connected
            self._disarm()
            self.resetTimeout()
            try:
                response, request = fast.answer(*parsed, self._peer)
            except Exception:  # noqa: BLE001 - any bug answers 500 and is logged, as twisted.web does
                log.failure("fast path")
                self._reject(500, b"internal error", "internal_error")
                return b""
            if self._send_now:
                send_now(self.transport, response)
            else:
                self.transport.write(response)
            self.site.log(request)
            # What twisted.web resets after each request it answers: the one empty line it
            # tolerates before a request line (after a POST, from old browsers) is allowed again.
            self._HTTPChannel__first_line = 1
            data = data[end + 4 :]
            if not data:
                return data

    def lineLengthExceeded(self, line: bytes) -> None:
        if getattr(self, "_HTTPChannel__first_line", 0):
            self._reject(414, b"request line too long", "request_line")
        else:
            self._reject(431, b"header line too long", "header_line")

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._metrics.http_limit_hits.labels(limit="bad_request").inc()
        self._rejected = True
        self._disarm()
        super()._respondToBadRequestAndDisconnect()

    def rawDataReceived(self, data: bytes) -> None:
        if self._rejected:
            return
        super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        self._awaiting_head = False
        if self.site.draining:
            self.requests[-1].responseHeaders.setRawHeaders(b"connection", [b"close"])
        self._disarm()
        limit = self._limits.body_limit(self._path)
        if self.length is not None and self.length > limit:
            self._reject(413, b"request body too large", "body_size")
            return
        self._body_limit = limit
        self._body_seen = 0
        super().allHeadersReceived()
        if self.site.draining:
            self.persistent = False
        if self.length != 0:
            self._arm(self._limits.body_timeout, "body_timeout")

    def body_over_limit(self, more: int) -> bool:
        """Count body bytes; past the limit, answer 413 and stop (chunked bodies have no length up front)."""
        if self._rejected:
            return True
        self._body_seen += more
        if self._body_seen > self._body_limit:
            self._reject(413, b"request body too large", "body_size")
            return True
        return False

    def allContentReceived(self) -> None:
        if self._rejected:
            return
        self._disarm()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self._awaiting_head = True
        super().requestDone(request)
        if self._awaiting_head and self.transport is not None and not self._rejected and self._buffer:
            self._arm(self._limits.header_timeout, "header_timeout")


class CookiesaverSite(server.Site):
    """The Site: builds limited channels and counts connections."""

    requestFactory = LimitedRequest
    displayTracebacks = False

    def __init__(self, resource: Any, limits: HTTPConfig, clock: IReactorTime, metrics: Metrics, access_log: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__(resource, timeout=limits.idle_timeout, reactor=clock, parsePOSTFormSubmission=False)
        server.version = b"cookiesaver"  # the Server header, instead of Twisted's name and version
        self._limits = limits
        self._clock = clock
        self._metrics = metrics
        self._access_log = access_log
        self.open_connections = 0
        self.draining = False
        #: Set by the service when the pixel area exists (see cookiesaver.web.fastpath).
        self.fast_pixel: FastPixel | None = None
        self._channels: set[LimitedChannel] = set()
        self._drain_waiters: list[defer.Deferred[None]] = []
        self._request_counters: dict[tuple[bytes, int], Any] = {}

    def at_capacity(self) -> bool:
        return self.open_connections >= self._limits.max_connections

    def connection_opened(self, channel: LimitedChannel) -> None:
        self._channels.add(channel)
        self.open_connections += 1
        self._metrics.connections.set(self.open_connections)
        if self.draining:
            channel.drain()

    def connection_closed(self, channel: LimitedChannel) -> None:
        self._channels.discard(channel)
        self.open_connections -= 1
        self._metrics.connections.set(self.open_connections)
        if self.draining and not self._channels:
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                d.callback(None)

    def drain(self, timeout: float) -> defer.Deferred[None]:
        """
        Shutdown, after the listeners stopped accepting: close idle connections,
        let each in-flight request finish and then close its connection, and
        fire when none is left (aborting stragglers after C{timeout}). Until
        then the writer keeps running, so every answered request is recorded.
        """
        self.draining = True
        if not self._channels:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._drain_waiters.append(d)
        for channel in list(self._channels):
            channel.drain()
        timer = self._clock.callLater(timeout, self._abort_all)

        def cancel_timer(result: None | Failure) -> None | Failure:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(cancel_timer)
        return d

    def _abort_all(self) -> None:
        for channel in list(self._channels):
            if channel.transport is not None:
                channel.transport.abortConnection()

    def buildProtocol(self, addr: Any) -> LimitedChannel | None:  # type: ignore[override]
        if self.at_capacity():
            self._metrics.connections_refused.inc()
            return None
        channel = LimitedChannel(self._limits, self._clock, self._metrics)
        channel.factory = self
        channel.site = self
        channel.requestFactory = self.requestFactory
        channel.timeOut = self._limits.idle_timeout  # type: ignore[assignment]  # TimeoutMixin says int | None; any number works
        channel.callLater = self._clock.callLater  # type: ignore[method-assign,assignment]  # as HTTPFactory.buildProtocol does
        return channel

    def log(self, request: Any) -> None:
        """Count every request by area and status class (cached counter children); optionally write the access log."""
        prepath = request.prepath
        key = (prepath[0] if prepath else b"", request.code // 100)
        counter = self._request_counters.get(key)
        if counter is None:
            area = key[0].decode("ascii", "replace") if key[0] in KNOWN_AREAS else "other"
            counter = self._metrics.requests.labels(area=area, status=f"{key[1]}xx")
            if key[0] in KNOWN_AREAS:
                self._request_counters[key] = counter
        counter.inc()
        if self._access_log is not None:
            self._access_log(
                {
                    "t": self._clock.seconds(),
                    "m": request.method.decode("latin-1"),
                    "p": request.path.decode("latin-1"),
                    "s": request.code,
                    "b": request.sentLength,
                }
            )

    def startFactory(self) -> None:
        """Skip HTTPFactory's log-file and date-cache set-up: we never format combined-log lines."""

    def stopFactory(self) -> None:
        pass


class LimitedTLSFactory(TLSMemoryBIOFactory):
    """TLS in front of the site; checks the connection cap before allocating a TLS connection."""

    def __init__(self, creator: Any, site: CookiesaverSite) -> None:
        super().__init__(creator, False, site)
        self._site = site

    def buildProtocol(self, addr: Any) -> Any:
        if self._site.at_capacity():
            self._site._metrics.connections_refused.inc()
            return None
        return super().buildProtocol(addr)


def json_line_writer(path: str) -> Callable[[dict[str, Any]], None]:
    """A cheap structured access log: one compact JSON object per line, line-buffered."""
    f = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - open for the life of the process

    def write(entry: dict[str, Any]) -> None:
        f.write(json.dumps(entry, separators=(",", ":")) + "\n")

    return write
