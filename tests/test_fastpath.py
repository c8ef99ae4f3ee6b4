"""The pixel fast path writes exactly the bytes twisted.web writes, and records exactly the same events."""

from __future__ import annotations

import json
import re

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from cookiesaver.bots import BotRules
from cookiesaver.clientaddr import AddressResolver
from cookiesaver.config import load
from cookiesaver.metrics import Metrics
from cookiesaver.testing import MemorySink
from cookiesaver.token import TokenKeys, b64url_encode, mint
from cookiesaver.visitor import VisitorCookies
from cookiesaver.web.fastpath import FastPixel
from cookiesaver.web.pixel import Pixel, Tracking
from cookiesaver.web.site import CookiesaverSite

NOW = 1_800_000_000.0
UA = b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36"
LEGACY_UA = b"Mozilla/5.0 (iPhone; CPU iPhone OS 12_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.0 Mobile/15E148 Safari/604.1"
NEW_ID = re.compile(rb"[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{16}")


class Side:
    """One server: the same configuration, with or without the fast path."""

    def __init__(self, tmp: str, fast: bool) -> None:
        import os

        os.makedirs(tmp, exist_ok=True)
        keyfile = os.path.join(tmp, "k1.key")
        with open(keyfile, "w") as f:
            f.write("B" * 43 + "\n")
        environ = {
            "COOKIESAVER_SSL_ON": "false",
            "COOKIESAVER_TOKEN_KEYS": json.dumps({"k1": keyfile}),
            "COOKIESAVER_SITES": json.dumps({"shop": {"origins": ["https://shop.example"]}}),
            "COOKIESAVER_TRUSTED_PROXIES": '["10.0.0.0/8"]',
        }
        config = load(None, environ).config
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.sink = MemorySink()
        self.visitors = VisitorCookies(config.cookie, b"s" * 32)
        self.keys = TokenKeys.from_config(config.tokens)
        tracking = Tracking(
            config=config, clock=self.clock, sink=self.sink, metrics=Metrics(), visitors=self.visitors, tokens=self.keys,
            resolver=AddressResolver(config.trusted_proxies, config.tls.enabled), bots=BotRules.from_files(None, None),
        )
        pixel = Pixel(tracking)
        root = Resource()
        root.putChild(b"pixel", pixel)
        self.site = CookiesaverSite(root, config.http, self.clock, Metrics())
        self.fast_calls = 0
        if fast:
            fast_pixel = FastPixel(pixel.render_GET, pixel.render_HEAD, config.http, self.clock, b"cookiesaver")
            answer = fast_pixel.answer

            def counting(*args):
                self.fast_calls += 1
                return answer(*args)

            fast_pixel.answer = counting  # type: ignore[method-assign]
            self.site.fast_pixel = fast_pixel

    def exchange(self, *chunks: bytes, peer: str = "203.0.113.7") -> bytes:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 4000))
        channel.makeConnection(transport)
        for chunk in chunks:
            channel.dataReceived(chunk)
        return transport.value()

    def events(self, returning: bytes) -> list[dict]:
        """Documents without their random parts (ObjectId, fresh visitor ids)."""
        out = []
        for _, doc in self.sink.documents:
            doc = {k: v for k, v in doc.items() if k != "_id"}
            if doc.get("visitor") != returning.decode():
                doc["visitor"] = "<new-id>"
            out.append(doc)
        return out


DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


def normalise(response: bytes) -> bytes:
    """Fresh visitor ids are random and twisted.web dates responses by wall clock: mask both, compare the rest."""
    return DATE.sub(b"\r\nDate: <date>\r\n", NEW_ID.sub(b"<new-id>", response))


class FastPathTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.fast = Side(self.mktemp(), fast=True)
        self.slow = Side(self.mktemp(), fast=False)
        self.returning = self.fast.visitors.new_id().encode()

    def token(self, url: str, **kw) -> bytes:
        return mint(self.fast.keys, url, issued=int(NOW), **kw).encode()

    def get(self, target: bytes, *headers: bytes, method: bytes = b"GET") -> bytes:
        return method + b" " + target + b" HTTP/1.1\r\nHost: pxl.example.com\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"

    def assertSame(self, *chunks: bytes, peer: str = "203.0.113.7", expect_fast: bool = True) -> bytes:
        before = self.fast.fast_calls
        fast = self.fast.exchange(*chunks, peer=peer)
        slow = self.slow.exchange(*chunks, peer=peer)
        self.assertEqual(normalise(fast), normalise(slow))
        self.assertEqual(self.fast.events(self.returning), self.slow.events(self.returning))
        self.assertEqual(self.fast.fast_calls > before, expect_fast)
        self.assertTrue(fast)
        return fast

    def test_behaviour_pixel_returning_visitor(self) -> None:
        """A page view from a returning visitor: same status, headers (order and case), GIF and event."""
        out = self.assertSame(self.get(b"/pixel?site=shop&e=goal&url=https%3A%2F%2Fshop.example%2F&p.v=1", b"Cookie: a=b; csid=" + self.returning, b"User-Agent: " + UA))
        self.assertIn(b"Content-Type: image/gif\r\n", out)

    def test_click_redirect_new_and_returning(self) -> None:
        """Clicks for new and returning visitors: same 302, Location, cookie attributes and pixel_open event."""
        token = self.token("https://shop.example/a%20b?x=1+2&y=%E2%82%AC#f", account="1", profile="2", message="3")
        self.assertSame(self.get(b"/pixel?_open_pix=1&k=" + token, b"User-Agent: " + UA))
        self.assertSame(self.get(b"/pixel?_open_pix=1&k=" + token, b"User-Agent: " + LEGACY_UA, b"Cookie: csid=" + self.returning))

    def test_refusals_and_head(self) -> None:
        """Bad, repeated and missing KEYs, HEAD on a click, an open pixel and an unknown site answer identically."""
        token = self.token("https://shop.example/")
        for target in (b"/pixel?_open_pix=1&k=garbage", b"/pixel?_open_pix=1&k=" + token + b"&k=" + token, b"/pixel?_open_pix=1", b"/pixel?k=" + token, b"/pixel?site=nope", b"/pixel"):
            self.assertSame(self.get(target, b"User-Agent: " + UA))
        self.assertSame(self.get(b"/pixel?_open_pix=1&k=" + token, b"User-Agent: " + UA, method=b"HEAD"))

    def test_garbage_queries_and_privacy_headers(self) -> None:
        """Malformed escapes, invalid UTF-8, DNT/GPC and opt-out answer and record identically."""
        for query in (b"a=%b", b"url=%zz", b"url=%ff%fe", b"url=%C3%28"):
            self.assertSame(self.get(b"/pixel?site=shop&" + query, b"User-Agent: " + UA, b"DNT: 1", b"Sec-GPC: 1"))
        # A raw non-ASCII byte in the target is twisted.web's 400 on both paths.
        self.assertSame(self.get(b"/pixel?site=shop&url=\xff", b"User-Agent: " + UA), expect_fast=False)
        self.assertSame(self.get(b"/pixel?site=shop", b"Cookie: csoptout=1"))

    def test_forwarded_headers(self) -> None:
        """Forwarded headers from a trusted and an untrusted peer are handled identically."""
        request = self.get(b"/pixel?site=shop", b"X-Real-IP: 198.51.100.4", b"X-Forwarded-For: 1.2.3.4, 198.51.100.4", b"Cookie: csid=" + self.returning)
        self.assertSame(request, peer="10.1.2.3")
        self.assertSame(request, peer="203.0.113.9")

    def test_pipelined_and_split_requests(self) -> None:
        """Two pipelined requests in one segment, and a head split across segments, give the same bytes."""
        one = self.get(b"/pixel?site=shop&e=a", b"Cookie: csid=" + self.returning)
        two = self.get(b"/pixel?site=shop&e=b", b"Cookie: csid=" + self.returning)
        self.assertSame(one + two)
        self.assertSame(one[:10], one[10:], two)  # the split head goes to twisted.web, the next one is fast again

    def test_header_injection_in_signed_destination_sanitised_the_same(self) -> None:
        """A destination with CR/LF from a foreign minter cannot split the response on either path."""
        payload = b64url_encode(json.dumps({"u": "https://shop.example/\r\nSet-Cookie: evil=1", "t": int(NOW)}).encode())
        token = payload + b".k1." + self.fast.keys.mac(b"k1", payload + b".k1")
        out = self.assertSame(self.get(b"/pixel?_open_pix=1&k=" + token, b"User-Agent: " + UA))
        self.assertNotIn(b"\r\nSet-Cookie: evil", out)

    def test_repeated_headers_and_padding_taken_fast(self) -> None:
        """Repeated names keep every value in order, values lose surrounding spaces and tabs, names any case."""
        self.assertSame(
            self.get(
                b"/pixel?site=shop&e=x",
                b"user-AGENT: \t" + UA + b" \t",
                b"Cookie: a=1",
                b"COOKIE:csid=" + self.returning,
                b"X-Forwarded-For: 10.1.2.3",
                b"x-forwarded-for: 198.51.100.9",
                b"DNT:\t1",
            ),
            peer="10.0.0.1",
        )

    def test_unusual_requests_go_to_twisted_web(self) -> None:
        """Bodies, Connection and Expect headers, HTTP/1.0, obs-fold and other paths are left to twisted.web."""
        cases = [
            b"GET /pixel?site=shop HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            b"GET /pixel?site=shop HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /pixel?site=shop HTTP/1.0\r\nHost: x\r\n\r\n",
            b"GET /pixel?site=shop HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",
            b"GET /pixel.js HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /pixelx HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /pixel HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
            b"GET /pixel?site=shop HTTP/1.1\r\nBad Name: 1\r\n\r\n",
            b"GET /pixel?site=shop HTTP/1.1\r\nX-A: 1\r2\r\n\r\n",
            b"GET /pixel?site=shop HTTP/1.1\r\nX-A: 1\n2\r\n\r\n",
            b"GET /pixel?site=shop HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
            b"GET /pixel?site=shop HTTP/1.1\r\n: no name\r\n\r\n",
            b"GET /pixel?site=shop HTTP/1.1\r\nNo-Colon\r\n\r\n",
            b"GET /pixel?site=\x7fshop HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /pixel?site=shop  HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /pixel?site=shop HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            b"get /pixel?site=shop HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
        for raw in cases:
            self.assertSame(raw, expect_fast=False)
