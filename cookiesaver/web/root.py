"""The resource tree: which area answers which path.

    /pixel, /pixel.js          tracking (cookiesaver.web.pixel)
    /push/...                  web push (cookiesaver.web.push)
    /cookiesaver/...           health, readiness, metrics (cookiesaver.web.health)
    /robots.txt                disallow everything
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.web import pages
from twisted.web.resource import Resource

from cookiesaver.web.health import Fixed
from cookiesaver.web.responses import head

ROBOTS = b"User-agent: *\nDisallow: /\n"


class Root(Resource):
    """Children by exact name; anything else is a plain 404."""

    _not_found = pages.notFound("Not Found", "No such resource.")

    def getChild(self, path: bytes, request: Any) -> Resource:
        return self._not_found

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"cookiesaver\n"

    def render_HEAD(self, request: Any) -> bytes:
        return head(request, self.render_GET(request))


def build_root(children: Mapping[bytes, Resource]) -> Resource:
    root = Root()
    root.putChild(b"robots.txt", Fixed(ROBOTS, b"text/plain; charset=utf-8"))
    for name, child in children.items():
        root.putChild(name, child)
    return root
