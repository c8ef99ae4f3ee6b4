"""The pixel's fast path: GET and HEAD /pixel answered below twisted.web's Request machinery.

Profiling under wrk showed about two thirds of a pixel hit's CPU in
twisted.web's per-request machinery (Request objects, Headers
normalisation, resource traversal, the access-log and date plumbing), not
in cookiesaver. The hot requests are simple: a GET or HEAD of /pixel with a
query string, no body, a handful of headers. For exactly those, the channel
parses the head itself and calls the same L{Pixel} resource code with a
L{FastRequest}, the small slice of twisted.web's request the pixel uses;
the response bytes are the ones twisted.web would write (a test compares
them byte for byte).

Anything else, or anything unusual about such a request (a body, obs-fold,
a Connection or Expect header, HTTP/1.0, an invalid header name, a head
over the limits, a draining server), is left to twisted.web untouched: the
fast path only ever takes requests it can answer exactly as the slow path
would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.web.http import RESPONSES, datetimeToString
from twisted.web.http_headers import _nameEncoder

from cookiesaver.config import HTTPConfig

log = Logger()

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
#: Request headers whose presence sends the request to twisted.web (it owns their semantics).
_SLOW_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"expect", b"upgrade"})
#: Printable ASCII without space: what twisted.web accepts in a request target (it answers 400 otherwise).
_PRINTABLE = bytes(range(0x21, 0x7F))
_STATUS = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in RESPONSES.items()}


class RawHeaders(dict[bytes, list[bytes]]):
    """Headers by lower-case name, every value in order; C{getRawHeaders} is C{dict.get}, as the pixel code expects."""

    getRawHeaders = dict.get

    def setRawHeaders(self, name: bytes, values: list[bytes]) -> None:
        self[name] = values


class FastRequest:
    """The part of twisted.web's Request that the pixel resource uses."""

    __slots__ = ("_client", "code", "method", "path", "prepath", "requestHeaders", "responseHeaders", "sentLength", "uri")

    def __init__(self, method: bytes, uri: bytes, headers: RawHeaders, client: Any) -> None:
        self.method = method
        self.uri = uri
        self.path = uri.partition(b"?")[0]
        self.requestHeaders = headers
        self.responseHeaders = RawHeaders()
        self.code = 200
        self.sentLength = 0
        self.prepath = [b"pixel"]
        self._client = client

    def getClientAddress(self) -> Any:
        return self._client

    def getHeader(self, name: bytes) -> bytes | None:
        values = self.requestHeaders.get(name.lower())
        return values[-1] if values else None

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.responseHeaders[name.lower()] = [value]


class DateLine:
    """The Date header, formatted once per second (twisted.web formats it per request)."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._second = -1
        self._line = b""

    def __call__(self) -> bytes:
        now = int(self._clock.seconds())
        if now != self._second:
            self._second = now
            self._line = b"Date: " + datetimeToString(now) + b"\r\n"
        return self._line


class FastPixel:
    """Parses and answers fast-path requests for one site; see the module docstring for what qualifies."""

    def __init__(self, render_get: Callable[[Any], bytes], render_head: Callable[[Any], bytes], limits: HTTPConfig, clock: Any, server: bytes) -> None:
        self._render = {b"GET": render_get, b"HEAD": render_head}
        self._max_head = limits.max_header_bytes
        self._max_line = limits.max_request_line
        self._max_headers = limits.max_headers
        self._date = DateLine(clock)
        self._server_line = b"Server: " + server + b"\r\n"
        self._names: dict[bytes, bytes] = {}

    def parse(self, head: bytes) -> tuple[bytes, bytes, RawHeaders] | None:
        """Method, target and headers of a head (without its final CRLFCRLF) the fast path can answer exactly, else None."""
        if len(head) > self._max_head or b"\x00" in head:
            return None
        lines = head.split(b"\r\n")
        if len(lines) - 1 > self._max_headers:
            return None
        request_line = lines[0]
        if len(request_line) > self._max_line or b"\n" in request_line or b"\r" in request_line:
            return None
        method, _, rest = request_line.partition(b" ")
        target, _, version = rest.partition(b" ")
        if method not in self._render or version != b"HTTP/1.1" or not (target == b"/pixel" or target.startswith(b"/pixel?")):
            return None
        if target.translate(None, _PRINTABLE):
            return None
        headers = RawHeaders()
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or len(line) > self._max_line or b"\n" in line or b"\r" in line or not _TOKEN.issuperset(name):
                return None  # obs-fold, bare LF, invalid name: twisted.web answers those
            name = name.lower()
            if name in _SLOW_HEADERS:
                return None
            value = value.strip(b" \t")
            existing = headers.get(name)
            if existing is None:
                headers[name] = [value]
            else:
                existing.append(value)
        return method, target, headers

    def answer(self, method: bytes, target: bytes, headers: RawHeaders, client: Any) -> tuple[bytes, FastRequest]:
        """Render with the pixel resource and serialise the response as twisted.web would."""
        request = FastRequest(method, target, headers, client)
        body = self._render[method](request)
        code = request.code
        parts = [_STATUS.get(code) or b"HTTP/1.1 %d Unknown\r\n" % code, self._server_line, self._date()]
        length: bytes | None = None
        names = self._names
        for name, values in request.responseHeaders.items():
            if name == b"content-length":
                length = values[0]
                continue
            canonical = names.get(name)
            if canonical is None:
                canonical = names[name] = _nameEncoder.encode(name)
            for value in values:
                if b"\r" in value or b"\n" in value:
                    value = b" ".join(value.splitlines())  # as twisted.web sanitises header values
                parts.append(canonical + b": " + value + b"\r\n")
        if method == b"HEAD":
            parts.append(b"Content-Length: " + (length or b"%d" % len(body)) + b"\r\n\r\n")
        else:
            if length is None and body and b"content-type" not in request.responseHeaders:
                parts.append(b"Content-Type: text/html\r\n")
            parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
            parts.append(body)
            request.sentLength = len(body)
        return b"".join(parts), request
