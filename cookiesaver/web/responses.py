"""Small response helpers shared by the areas."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from twisted.web import http, pages
from twisted.web.resource import IResource, Resource

JS = b"application/javascript; charset=utf-8"
NOSNIFF = (b"x-content-type-options", b"nosniff")


def static(name: str) -> bytes:
    """Read a packaged asset from cookiesaver/static (at construction only, never per request)."""
    return (resources.files("cookiesaver") / "static" / name).read_bytes()


def head(request: Any, body: bytes) -> bytes:
    """Answer HEAD like GET: same headers and Content-Length, no body (and no Twisted warning)."""
    request.setHeader(b"content-length", b"%d" % len(body))
    return b""


def plain_error(request: Any, code: int, message: bytes) -> bytes:
    """A short text/plain error body; never a traceback, never client input echoed."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return message + b"\n"


class NotFoundBelow(Resource):
    """A resource with nothing below it: any extra path segment is a plain 404."""

    _not_found = pages.notFound("Not Found", "No such resource.")

    def getChild(self, path: bytes, request: Any) -> IResource:
        return self._not_found


class Asset(NotFoundBelow):
    """Fixed bytes with an ETag and a short cache lifetime, computed once (like twisted.web.static.Data)."""

    def __init__(self, body: bytes, content_type: bytes, max_age: int, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__()
        self.body = body
        self.etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode("ascii") + b'"'
        self.headers = [(b"content-type", content_type), (b"cache-control", b"public, max-age=%d" % max_age), NOSNIFF, *extra]

    def render_GET(self, request: Any) -> bytes:
        for name, value in self.headers:
            request.setHeader(name, value)
        if request.setETag(self.etag) == http.CACHED:
            return b""
        return self.body

    def render_HEAD(self, request: Any) -> bytes:
        return head(request, self.render_GET(request))


class Directory(NotFoundBelow):
    """A node of the tree that is not itself a page: itself and unknown children are a plain 404."""

    def render_GET(self, request: Any) -> bytes:
        return plain_error(request, 404, b"not found")

    def render_HEAD(self, request: Any) -> bytes:
        return head(request, self.render_GET(request))
