"""The peer a user might pick instead: a bare aiohttp handler answering /pixel with the GIF and a cookie.

    python -m bench.bare_aiohttp PORT

No cookie check, no KEY, no event; access logging off.
"""

from __future__ import annotations

import sys

from bench.pixel_bytes import GIF, set_cookie


def main(argv: list[str]) -> int:
    from aiohttp import web

    async def pixel(request: web.Request) -> web.Response:
        return web.Response(
            body=GIF,
            headers={"Content-Type": "image/gif", "Cache-Control": "no-store", "Set-Cookie": set_cookie().decode("ascii")},
        )

    app = web.Application()
    app.router.add_get("/pixel", pixel)
    web.run_app(app, host="127.0.0.1", port=int(argv[0]), access_log=None, print=None, backlog=1024)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
