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

import re
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.web.http import RESPONSES, datetimeToString
from twisted.web.http_headers import _nameEncoder

from cookiesaver.config import HTTPConfig

log = Logger()

#: Request headers whose presence sends the request to twisted.web (it owns their semantics).
_SLOW_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"expect", b"upgrade"})
#: A head the fast path can take, checked in one pass: GET or HEAD of /pixel (a target of printable
#: ASCII without space, which is what twisted.web accepts), HTTP/1.1, then header lines each a
#: token name, a colon and a value without CR, LF or NUL (so no obs-fold, bare CR/LF or NUL
#: anywhere). Anything else goes to twisted.web. With the split below this parses a browser's
#: head in 7.6 us where checking line by line in Python took 13.3 us.
_HEAD = re.compile(rb"(GET|HEAD) (/pixel(?:\?[\x21-\x7e]*)?) HTTP/1\.1((?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n\x00]*)*)")
#: Name and raw value of each header line in a head that matched L{_HEAD}.
_HEADER = re.compile(rb"\r\n([^:]+):([^\r]*)")
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
        if len(head) > self._max_head:
            return None
        matched = _HEAD.fullmatch(head)
        if matched is None:
            return None  # not GET/HEAD /pixel HTTP/1.1, or obs-fold, bare CR/LF, NUL, an invalid name: twisted.web answers those
        if len(head) > self._max_line and max(map(len, head.split(b"\r\n"))) > self._max_line:
            return None
        pairs = _HEADER.findall(matched[3])
        if len(pairs) > self._max_headers:
            return None
        headers = RawHeaders({name.lower(): [value.strip(b" \t")] for name, value in pairs})
        if len(headers) != len(pairs):  # a repeated name: keep every value, in order
            headers = RawHeaders()
            for name, value in pairs:
                headers.setdefault(name.lower(), []).append(value.strip(b" \t"))
        if not _SLOW_HEADERS.isdisjoint(headers):
            return None
        return matched[1], matched[2], headers

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
                canonical = names[name] = _nameEncoder.encode(name) + b": "
            for value in values:
                if 13 in value or 10 in value:  # int membership: a fifth of the cost of b"\r" in value
                    value = b" ".join(value.splitlines())  # as twisted.web sanitises header values
                parts += (canonical, value, b"\r\n")
        if method == b"HEAD":
            parts.append(b"Content-Length: " + (length or b"%d" % len(body)) + b"\r\n\r\n")
        else:
            if length is None and body and b"content-type" not in request.responseHeaders:
                parts.append(b"Content-Type: text/html\r\n")
            parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
            parts.append(body)
            request.sentLength = len(body)
        return b"".join(parts), request
