"""CPU per request of cookiesaver's HTTP and pixel code, in process, with no network and no other servers.

    python -m bench.inprocess [--requests N]

wrk figures on a shared 2-core machine move by tens of percent between runs;
process CPU time for the same code path does not. This drives the real
CookiesaverSite (channel, limits, fast path or twisted.web, the Pixel
resource, the real Writer over a store that BSON-encodes each document as the wire would) with complete keep-alive
requests on one connection, and prints microseconds of CPU per request for
each kind of request, with the fast path on and off, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import bson
import zope.interface
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from cookiesaver.bots import BotRules
from cookiesaver.clientaddr import AddressResolver
from cookiesaver.config import load
from cookiesaver.interfaces import IStore, WriteOutcome
from cookiesaver.metrics import Metrics
from cookiesaver.spool import Spool
from cookiesaver.token import TokenKeys, mint
from cookiesaver.visitor import VisitorCookies
from cookiesaver.web.fastpath import FastPixel
from cookiesaver.web.pixel import Pixel, Tracking
from cookiesaver.web.site import CookiesaverSite
from cookiesaver.writer import INDEXES, Writer


class EncodingStore:
    """Costs what the wire costs on our side: every document BSON-encoded once, nothing kept."""

    def insert_many(self, collection, documents):
        for doc in documents:
            bson.encode(doc)
        return defer.succeed(WriteOutcome(written=len(documents)))

    def upsert_many(self, collection, operations):
        for op in operations:
            bson.encode(dict(op.update))
        return defer.succeed(WriteOutcome(written=len(operations)))

    def ensure_indexes(self, collection, indexes):
        return defer.succeed(None)

    def ping(self):
        return defer.succeed(None)

    def find(self, collection, query, limit=0):
        return defer.succeed([])


zope.interface.classImplements(EncodingStore, IStore)

UA = b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36"


def build(tmp: str, fast: bool) -> tuple[CookiesaverSite, Writer, VisitorCookies, TokenKeys, task.Clock]:
    keyfile = os.path.join(tmp, "k1.key")
    with open(keyfile, "w") as f:
        f.write("C" * 43 + "\n")
    environ = {
        "COOKIESAVER_SSL_ON": "false",
        "COOKIESAVER_TOKEN_KEYS": json.dumps({"k1": keyfile}),
        "COOKIESAVER_SITES": json.dumps({"shop": {"origins": ["https://shop.example"]}}),
        "COOKIESAVER_WRITER_MAX_QUEUE_DOCS": "10000000",
        "COOKIESAVER_WRITER_MAX_QUEUE_BYTES": str(4 * 1024**3),
    }
    config = load(None, environ).config
    clock = task.Clock()
    clock.advance(time.time())
    metrics = Metrics()
    writer = Writer(EncodingStore(), config.writer, Spool(os.path.join(tmp, f"spool-{fast}.sqlite3")), clock, metrics, indexes=INDEXES)
    writer.startService()
    visitors = VisitorCookies(config.cookie, b"s" * 32)
    keys = TokenKeys.from_config(config.tokens)
    tracking = Tracking(
        config=config, clock=clock, sink=writer, metrics=metrics, visitors=visitors, tokens=keys,
        resolver=AddressResolver(config.trusted_proxies, config.tls.enabled), bots=BotRules.from_files(None, None),
    )
    pixel = Pixel(tracking)
    root = Resource()
    root.putChild(b"pixel", pixel)
    site = CookiesaverSite(root, config.http, clock, metrics)
    if fast:
        site.fast_pixel = FastPixel(pixel.render_GET, pixel.render_HEAD, config.http, clock, b"cookiesaver")
    return site, writer, visitors, keys, clock


def measure(site: CookiesaverSite, requests: list[bytes], clock: task.Clock) -> float:
    """Microseconds of process CPU per request, all on one keep-alive connection."""
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "203.0.113.7", 4000))
    channel.makeConnection(transport)
    start = time.process_time()
    for i, raw in enumerate(requests):
        channel.dataReceived(raw)
        if i % 256 == 0:
            transport.clear()
            clock.advance(0.05)  # lets the writer's age-based flushes run, as a reactor would
    elapsed = time.process_time() - start
    assert b"500 Internal" not in transport.value()
    return elapsed / len(requests) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    n = args.requests
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for fast in (False, True):
            site, _writer, visitors, keys, clock = build(tmp, fast)
            cookie = b"csid=" + visitors.new_id().encode()
            tokens = [mint(keys, f"https://shop.example/p/{i}?utm=mail", account="1", profile=str(i), message="9", issued=int(clock.seconds())).encode() for i in range(n)]
            head = b" HTTP/1.1\r\nHost: pxl.example.com\r\nUser-Agent: " + UA + b"\r\nAccept: */*\r\n"
            kinds = {
                "pixel, returning": [b"GET /pixel?site=shop&e=page_view&url=https%3A%2F%2Fshop.example%2Fp" + head + b"Cookie: " + cookie + b"\r\n\r\n"] * n,
                "pixel, new": [b"GET /pixel?site=shop&e=page_view&url=https%3A%2F%2Fshop.example%2Fp" + head + b"\r\n"] * n,
                "click, returning": [b"GET /pixel?_open_pix=1&k=" + t + head + b"Cookie: " + cookie + b"\r\n\r\n" for t in tokens],
            }
            for kind, reqs in kinds.items():
                measure(site, reqs[: n // 10], clock)  # warm-up
                rows.append((kind, fast, measure(site, reqs, clock)))
        print(f"{'request':<20} {'twisted.web µs':>15} {'fast path µs':>13} {'ratio':>6}")
        for kind in dict.fromkeys(k for k, _, _ in rows):
            slow = next(v for k, f, v in rows if k == kind and not f)
            fast_us = next(v for k, f, v in rows if k == kind and f)
            print(f"{kind:<20} {slow:>15.1f} {fast_us:>13.1f} {slow / fast_us:>6.2f}")


if __name__ == "__main__":
    main()
