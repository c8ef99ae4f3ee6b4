"""The resource tree: which area answers which path.

    /pixel, /pixel.js          tracking (cookiesaver.web.pixel)
    /push/...                  web push (cookiesaver.web.push)
    /cookiesaver/...           health, readiness, metrics (cookiesaver.web.health)
    /robots.txt                disallow everything
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.web.resource import Resource

from cookiesaver.web.health import Fixed
from cookiesaver.web.responses import Directory

ROBOTS = b"User-agent: *\nDisallow: /\n"


class Root(Directory):
    """The top of the tree: children by exact name, anything else a plain 404."""


def build_root(children: Mapping[bytes, Resource]) -> Resource:
    root = Root()
    root.putChild(b"robots.txt", Fixed(ROBOTS, b"text/plain; charset=utf-8"))
    for name, child in children.items():
        root.putChild(name, child)
    return root
