"""The floor: a bare twisted.web resource answering GET /pixel with the GIF and a cookie.

    python -m bench.bare_twisted PORT

No cookie check, no KEY, no event: only Twisted's HTTP machinery. Access
logging is off (Twisted formats a combined-log line per request otherwise).
"""

from __future__ import annotations

import sys
from typing import Any

from bench.pixel_bytes import GIF, set_cookie


def main(argv: list[str]) -> int:
    from twisted.internet import reactor
    from twisted.web import resource, server

    class Pixel(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            request.responseHeaders.setRawHeaders(b"set-cookie", [set_cookie()])
            request.setHeader(b"content-type", b"image/gif")
            request.setHeader(b"cache-control", b"no-store")
            return GIF

    class QuietSite(server.Site):
        def log(self, request: Any) -> None:
            pass

    server.version = b"bare-twisted"
    site = QuietSite(Pixel())
    reactor.listenTCP(int(argv[0]), site, backlog=1024, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
