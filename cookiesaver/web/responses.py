"""Small response helpers shared by the areas."""

from __future__ import annotations

from typing import Any

from twisted.web import pages
from twisted.web.resource import IResource, Resource


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


class Directory(Resource):
    """A node of the tree that is not itself a page: itself and unknown children are a plain 404."""

    _not_found = pages.notFound("Not Found", "No such resource.")

    def getChild(self, path: bytes, request: Any) -> IResource:
        return self._not_found

    def render_GET(self, request: Any) -> bytes:
        return plain_error(request, 404, b"not found")

    def render_HEAD(self, request: Any) -> bytes:
        return head(request, self.render_GET(request))
