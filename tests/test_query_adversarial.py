"""parse_query with its name cache and inline value decoding gives exactly what the uncached parser (4cfab2c) gave."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from cookiesaver import query as query_module
from cookiesaver.query import MAX_PARAMS, parse_query

_HEX = b"0123456789ABCDEFabcdef"
_PAIRS = {bytes((a, b)): bytes((int(bytes((a, b)), 16),)) for a in _HEX for b in _HEX}


def reference_decode(raw: bytes) -> tuple[str, bool]:
    """cookiesaver.query.decode as of 4cfab2c."""
    bad = False
    if b"+" in raw:
        raw = raw.replace(b"+", b" ")
    if b"%" in raw:
        chunks = raw.split(b"%")
        out = [chunks[0]]
        for chunk in chunks[1:]:
            byte = _PAIRS.get(chunk[:2])
            if byte is None:
                bad = True
                out += (b"%", chunk)
            else:
                out += (byte, chunk[2:])
        raw = b"".join(out)
    try:
        return raw.decode("utf-8"), bad
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), True


def reference_parse(
    raw: bytes,
) -> tuple[dict[str, list[bytes]], dict[str, list[str]], bool]:
    """cookiesaver.query.parse_query as of 4cfab2c: (raw, text, malformed)."""
    raws: dict[str, list[bytes]] = {}
    texts: dict[str, list[str]] = {}
    if not raw:
        return raws, texts, False
    parts = raw.split(b"&", MAX_PARAMS)
    malformed = False
    if len(parts) > MAX_PARAMS:
        malformed = bool(parts.pop().strip(b"&"))
    for part in parts:
        if not part:
            continue
        name_raw, _, value_raw = part.partition(b"=")
        name, bad_name = reference_decode(name_raw)
        value, bad_value = reference_decode(value_raw)
        if bad_name or bad_value:
            malformed = True
        raws.setdefault(name, []).append(value_raw)
        texts.setdefault(name, []).append(value)
    return raws, texts, malformed


ATOMS = [
    b"site",
    b"e",
    b"url",
    b"k",
    b"_open_pix",
    b"=",
    b"&",
    b"&&",
    b"%",
    b"%2",
    b"%41",
    b"%e2%82%ac",
    b"%E2%82",
    b"%C3%28",
    b"%ff",
    b"%00",
    b"%zz",
    b"%%",
    b"+",
    b"++",
    b"%2B",
    b"\xff",
    b"\xc3\xa9",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    b"\x00",
    b" ",
    b"a",
    b"1",
    b";",
    b"#",
]


def random_query(rng: random.Random) -> bytes:
    shape = rng.random()
    if shape < 0.15:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
    if shape < 0.2:
        return b"&".join(
            b"p%d=%d" % (i, i)
            for i in range(rng.randint(MAX_PARAMS - 2, MAX_PARAMS + 2))
        ) + rng.choice([b"", b"&", b"&&&", b"&x", b"&%zz"])
    return b"".join(rng.choice(ATOMS) for _ in range(rng.randint(0, 24)))


class ParseQueryDifferentialTests(SynchronousTestCase):
    def check(self, raw: bytes) -> None:
        q = parse_query(raw)
        self.assertEqual((q.raw, q.text, q.malformed), reference_parse(raw), raw)
        # Lists are the query's own, never shared with a cached entry or another parse.
        again = parse_query(raw)
        self.assertEqual(
            (again.raw, again.text, again.malformed), reference_parse(raw), raw
        )

    def test_random_queries_match_the_uncached_parser(self) -> None:
        """3000 random byte strings (escapes, +, invalid UTF-8, NUL, 64-parameter edge) parse exactly as before, twice."""
        rng = random.Random(4)
        for _ in range(3000):
            self.check(random_query(rng))

    def test_cached_name_does_not_leak_between_parses(self) -> None:
        """A name cached as malformed (%zz) still marks only the queries that contain it, and mutating a result changes no later one."""
        self.check(b"%zz=1")
        self.check(b"a=1")
        q = parse_query(b"site=shop")
        q.raw["site"].append(b"x")
        q.text["site"].append("x")
        self.check(b"site=shop")

    def test_full_cache_keeps_answers_identical(self) -> None:
        """With the name cache filled by junk (as a scanner would), parsing still matches the reference."""
        saved = dict(query_module._NAMES)
        self.addCleanup(
            lambda: (query_module._NAMES.clear(), query_module._NAMES.update(saved))
        )
        for i in range(query_module._NAMES_KEPT + 10):
            parse_query(b"junk%d=1" % i)
        self.assertLessEqual(len(query_module._NAMES), query_module._NAMES_KEPT)
        rng = random.Random(5)
        for _ in range(300):
            self.check(random_query(rng))
        long_name = b"n" * (query_module._NAME_KEPT_LEN + 1)
        self.check(long_name + b"=%ff")
        self.assertNotIn(long_name, query_module._NAMES)
