"""Differential fuzzing of the pixel fast path: random heads give twisted.web's bytes and events, with and without it."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from tests.test_fastpath import UA, Side, normalise

# -- generators: mostly valid fast-path heads with one twist, and wilder ones ------------------

TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
NONTOKEN = b' "(),/:;<=>?@[\\]{}\x7f\x80\xff\x00\t\x01'
SLOW = [b"content-length", b"transfer-encoding", b"connection", b"expect", b"upgrade"]
KNOWN = [
    b"host",
    b"user-agent",
    b"cookie",
    b"x-forwarded-for",
    b"x-real-ip",
    b"dnt",
    b"sec-gpc",
    b"origin",
    b"referer",
    b"accept",
]


def rcase(r, s):
    return bytes(c ^ 32 if 97 <= (c | 32) <= 122 and r.random() < 0.5 else c for c in s)


def qbytes(r, n):
    pool = [
        b"site=shop",
        b"e=goal",
        b"&",
        b"=",
        b"%",
        b"%2",
        b"%zz",
        b"%41",
        b"%e2%82%ac",
        b"%C3%28",
        b"%00",
        b"+",
        b"url=https%3A%2F%2Fshop.example%2F",
        b"p.v=1",
        b"_open_pix=1",
        b"k=x",
        b"#",
        b"?",
        b"/",
        b";",
        b"vid=abc",
        b"site=nope",
    ]
    out = b""
    for _ in range(n):
        x = r.random()
        if x < 0.8:
            out += r.choice(pool)
        elif x < 0.9:
            out += bytes([r.randrange(0x21, 0x7F)])
        else:
            out += bytes(
                [r.choice([0x20, 0x09, 0x7F, 0x80, 0xFF, 0x00, 0x0D, 0x0A, 0x0B])]
            )
    return out


def value(r, returning):
    x = r.random()
    base = r.choice(
        [
            b"1",
            b"",
            b"shop",
            UA,
            b"csid=" + returning,
            b"a=b; csid=" + returning,
            b"10.1.2.3, 198.51.100.4",
            b"198.51.100.4",
            b"https://shop.example",
            b"\xc3\xa9t\xc3\xa9",
            b"\xff\xfe",
            b"chunked",
            b"0",
            b"close",
            b"keep-alive",
            b"100-continue",
            b"h2c",
        ]
    )
    if x < 0.3:
        base = (
            bytes(r.choice(b" \t")) * 0
            + r.choice([b" ", b"\t", b"  ", b" \t", b""])
            + base
            + r.choice([b" ", b"\t", b"", b"\t "])
        )
    elif x < 0.4:
        i = r.randrange(len(base) + 1)
        base = (
            base[:i]
            + bytes(
                [r.choice([0x00, 0x0D, 0x0A, 0x0B, 0x0C, 0x7F, 0x80, 0x01, 0x09, 0x20])]
            )
            + base[i:]
        )
    elif x < 0.45:
        base = b"v" * r.choice([8000, 8150, 8170, 8180, 8200])
    return base


def name(r):
    x = r.random()
    if x < 0.55:
        return rcase(r, r.choice(KNOWN))
    if x < 0.7:
        return rcase(r, r.choice(SLOW))
    if x < 0.85:
        return bytes(r.choice(TCHAR) for _ in range(r.randint(1, 12)))
    if x < 0.95:
        n = bytearray(r.choice(TCHAR) for _ in range(r.randint(1, 6)))
        n.insert(r.randrange(len(n) + 1), r.choice(NONTOKEN))
        return bytes(n)
    return b""


def head(r: random.Random, returning: bytes) -> bytes:
    if r.random() < 0.6:
        return clean(r, returning)
    method = r.choice(
        [b"GET"] * 6 + [b"HEAD"] * 2 + [b"get", b"POST", b"OPTIONS", b"GET\t", b"PUT"]
    )
    target = r.choice(
        [b"/pixel", b"/pixel?", b"/pixel?"] * 3
        + [
            b"/pixelx",
            b"/pixel/",
            b"/Pixel",
            b"//pixel",
            b"http://x/pixel?",
            b"/pixel.js",
            b"*",
            b"/pixel#",
        ]
    )
    if target.endswith(b"?"):
        target += qbytes(r, r.randint(0, 8))
    if r.random() < 0.03:
        target += b"a" * (8192 - 22 - len(target) + r.randint(-2, 2))
    version = r.choice(
        [b"HTTP/1.1"] * 10
        + [b"HTTP/1.0", b"HTTP/1.2", b"http/1.1", b"HTTP/2.0", b"HTTP/1.1 "]
    )
    sep = lambda: b" " if r.random() < 0.95 else r.choice([b"  ", b"\t", b""])
    lines = [method + sep() + target + sep() + version]
    n = r.choice([0, 1, 2, 3, 4, 5, 6, 8] * 3 + [99, 100, 101])
    for _ in range(n):
        if n > 20 and r.random() < 0.98:
            lines.append(b"X-H: " + b"y" * r.choice([0, 60, 150, 160, 170]))
            continue
        x = r.random()
        if x < 0.9:
            lines.append(
                name(r)
                + r.choice([b":", b":", b":", b": ", b" :", b"::"])
                + value(r, returning)
            )
        elif x < 0.94:
            lines.append(r.choice([b" ", b"\t"]) + b"folded")
        elif x < 0.97:
            lines.append(b"NoColon")
        else:
            lines.append(b"X-A: 1" + r.choice([b"\r", b"\n", b"\rX-B: 2", b"\nX-B: 2"]))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def clean(r, returning):
    """A valid fast-path head with at most one twist."""
    method = r.choice([b"GET", b"GET", b"HEAD"])
    target = b"/pixel" + r.choice(
        [
            b"",
            b"?site=shop",
            b"?site=shop&e=goal&url=https%3A%2F%2Fshop.example%2F",
            b"?" + bytes(r.randrange(0x21, 0x7F) for _ in range(r.randint(0, 40))),
        ]
    )
    lines = [method + b" " + target + b" HTTP/1.1"]
    for _ in range(r.randint(0, 6)):
        nm = (
            rcase(r, r.choice(KNOWN))
            if r.random() < 0.7
            else bytes(r.choice(TCHAR) for _ in range(r.randint(1, 10)))
        )
        lines.append(
            nm
            + b":"
            + r.choice([b"", b" ", b"\t", b"  \t "])
            + r.choice(
                [
                    b"1",
                    b"",
                    UA,
                    b"csid=" + returning,
                    b"198.51.100.4",
                    b"\xc3\xa9",
                    b"a\x0bb",
                    b"x\x7f",
                    b"\x01",
                ]
            )
            + r.choice([b"", b" ", b"\t", b" \t"])
        )
    if r.random() < 0.5:
        i = r.randrange(1, len(lines) + 1)
        twist = r.choice(
            [
                rcase(r, r.choice(SLOW))
                + b": "
                + r.choice(
                    [
                        b"0",
                        b"chunked",
                        b"close",
                        b"keep-alive",
                        b"100-continue",
                        b"h2c",
                        b"",
                    ]
                ),
                b" folded",
                b"\tfolded",
                b"X-A: a\x00b",
                b"X-A: a\rb",
                b"X-A: a\nb",
                b": v",
                b"NoColon",
                b"Bad Name: 1",
                b"X-\x80: 1",
                b"X-A : 1",
                b"X-Long: " + b"v" * r.choice([8180, 8183, 8184, 8185, 8186, 8190]),
            ]
        )
        lines.insert(i, twist)
    if r.random() < 0.1:
        lines += [
            b"X-H: " + b"y" * r.choice([0, 150, 160])
            for _ in range(r.choice([93, 94, 95, 96, 99, 100, 101]))
        ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def head_size(lines: list[bytes], crlf_counted: bool) -> int:
    return sum(map(len, lines)) + (2 * (len(lines) - 1) if crlf_counted else 0)


def chunked(rng: random.Random, data: bytes) -> list[bytes]:
    if len(data) < 2 or rng.random() < 0.6:
        return [data]
    cuts = sorted(
        rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 3)))
    )
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


class FastPathDifferentialTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.fast = Side(self.mktemp(), fast=True)
        self.slow = Side(self.mktemp(), fast=False)
        self.returning = self.fast.visitors.new_id().encode()

    def same(self, *chunks: bytes) -> bool:
        """Same normalised bytes and same new events on both sides; True when the fast path answered something."""
        n_fast, n_slow, calls = (
            len(self.fast.sink.documents),
            len(self.slow.sink.documents),
            self.fast.fast_calls,
        )
        fast = self.fast.exchange(*chunks)
        slow = self.slow.exchange(*chunks)
        self.assertEqual(normalise(fast), normalise(slow), chunks)
        self.assertEqual(
            self.fast.events(self.returning)[n_fast:],
            self.slow.events(self.returning)[n_slow:],
            chunks,
        )
        return self.fast.fast_calls > calls

    def test_random_heads(self) -> None:
        """600 random pipelines of 1-3 heads (methods, odd targets, padding, bad names, obs-fold, bare CR/LF, NUL, limits), randomly split."""
        rng = random.Random(20261203)
        taken = 0
        for _ in range(600):
            heads = [
                head(rng, self.returning) for _ in range(rng.choice([1, 1, 1, 2, 3]))
            ]
            if rng.random() < 0.3:
                heads = [
                    h
                    if rng.random() < 0.6
                    else rng.choice([b"\r\n", b"\r\n\r\n", b"\n"]) + h
                    for h in heads
                ]
            taken += self.same(*chunked(rng, b"".join(heads)))
        self.assertGreater(taken, 100)  # the generator does reach the fast path

    def test_limits_at_the_boundaries(self) -> None:
        """Lines of 8191-8193 bytes, 99-101 headers and heads around 16384 bytes: taken or refused exactly as twisted.web does."""
        base = b"GET /pixel?site=shop HTTP/1.1\r\nHost: x\r\n"
        for size in (8190, 8191, 8192, 8193, 8194):
            self.same(base + b"X-L: " + b"v" * (size - 5) + b"\r\n\r\n")
            target = b"/pixel?site=shop&p=" + b"a" * (
                size - len(b"GET /pixel?site=shop&p= HTTP/1.1")
            )
            self.same(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        for count in (98, 99, 100, 101, 102):
            self.same(
                b"GET /pixel?site=shop HTTP/1.1"
                + b"".join(b"\r\nX-%d: 1" % i for i in range(count))
                + b"\r\n\r\n"
            )
        taken = self.same(
            base + b"X-L: " + b"v" * 8187 + b"\r\n\r\n"
        )  # a header line of exactly 8192 bytes is fast
        for total in (16300, 16383, 16384, 16385, 16390):
            for crlf_counted in (
                True,
                False,
            ):  # the fast path counts CR/LF, twisted.web counts line bytes only
                lines = [b"GET /pixel?site=shop HTTP/1.1"]
                while head_size(lines, crlf_counted) < total - 200:
                    lines.append(b"X-P: " + b"p" * 150)
                lines.append(b"X-Q: ")
                lines[-1] += b"q" * (total - head_size(lines, crlf_counted))
                self.assertEqual(head_size(lines, crlf_counted), total)
                self.same(b"\r\n".join(lines) + b"\r\n\r\n")
        self.assertTrue(taken)

    def test_pipeline_split_at_every_byte(self) -> None:
        """Fast, slow (404), fast HEAD and fast again, split into two segments at every byte boundary."""
        cookie = b"Cookie: csid=" + self.returning + b"\r\n"
        data = (
            b"GET /pixel?e=1 HTTP/1.1\r\n"
            + cookie
            + b"\r\nGET /x HTTP/1.1\r\n\r\nHEAD /pixel HTTP/1.1\r\n\r\nGET /pixel?e=2 HTTP/1.1\r\n\r\n"
        )
        for i in range(1, len(data)):
            self.same(data[:i], data[i:])

    def test_empty_line_before_each_request(self) -> None:
        """A CRLF before each of two pixel requests (one allowed per request) answers 200 twice, as twisted.web does."""
        request = b"GET /pixel?site=shop HTTP/1.1\r\nHost: x\r\n\r\n"
        self.same(b"\r\n", request, b"\r\n" + request)
