"""Query parsing: raw and decoded values, graceful repair of garbage, the parameter cap."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from cookiesaver.query import MAX_PARAMS, parse_query


class WellFormedTests(SynchronousTestCase):
    def test_basic(self) -> None:
        """Names map to decoded values in order; raw values stay percent-encoded."""
        q = parse_query(b"k=abc.def&u=https%3A%2F%2Fe.example%2F%3Fa%3D1&e=view&e=click")
        self.assertEqual(q.first("u"), "https://e.example/?a=1")
        self.assertEqual(q.raw_values("u"), [b"https%3A%2F%2Fe.example%2F%3Fa%3D1"])
        self.assertEqual(q.values("e"), ["view", "click"])
        self.assertFalse(q.malformed)

    def test_plus_is_space(self) -> None:
        """'+' is a space in form encoding, '%2B' is a plus."""
        q = parse_query(b"t=a+b%2Bc&n+1=x")
        self.assertEqual(q.first("t"), "a b+c")
        self.assertEqual(q.first("n 1"), "x")

    def test_utf8(self) -> None:
        """Percent-encoded and raw UTF-8 are decoded, in upper or lower case hex."""
        q = parse_query("a=%C3%A9%e2%98%83&b=ü".encode())
        self.assertEqual((q.first("a"), q.first("b")), ("é\u2603", "ü"))
        self.assertFalse(q.malformed)

    def test_count(self) -> None:
        """count() reports repeats so the caller can refuse a repeated k."""
        q = parse_query(b"k=1&x=2&k=3")
        self.assertEqual((q.count("k"), q.count("x"), q.count("missing")), (2, 1, 0))

    def test_empty_and_valueless(self) -> None:
        """Empty parameters are skipped; a name without '=' has an empty value; a missing name gives defaults."""
        q = parse_query(b"&&flag&a=&=v&")
        self.assertEqual(q.first("flag"), "")
        self.assertEqual(q.first("a"), "")
        self.assertEqual(q.first(""), "v")
        self.assertIsNone(q.first("nope"))
        self.assertIsNone(q.first_raw("nope"))
        self.assertEqual(parse_query(b"").raw, {})

    def test_equals_in_value(self) -> None:
        """Only the first '=' separates name and value."""
        self.assertEqual(parse_query(b"k=a=b==").first("k"), "a=b==")


class GarbageTests(SynchronousTestCase):
    def assertRepaired(self, raw: bytes, name: str, text: str) -> None:
        q = parse_query(raw)
        self.assertEqual(q.first(name), text)
        self.assertTrue(q.malformed, raw)

    def test_truncated_escape(self) -> None:
        """'a=%b' keeps '%b' literally and flags it."""
        self.assertRepaired(b"a=%b", "a", "%b")

    def test_bad_hex(self) -> None:
        """'%zz' is kept literally, and the valid escapes around it still decode."""
        self.assertRepaired(b"a=%41%zz%42", "a", "A%zzB")
        self.assertRepaired(b"%zz=1", "%zz", "1")

    def test_lone_percent(self) -> None:
        """A trailing '%' is kept."""
        self.assertRepaired(b"a=100%", "a", "100%")

    def test_invalid_utf8_escapes(self) -> None:
        """'%ff%fe' is not UTF-8: replacement characters, flagged."""
        self.assertRepaired(b"a=x%ff%fey", "a", "x\ufffd\ufffdy")

    def test_invalid_continuation(self) -> None:
        """'%C3%28' (bad continuation byte) gives U+FFFD then '('."""
        self.assertRepaired(b"a=%C3%28", "a", "\ufffd(")

    def test_raw_high_bytes(self) -> None:
        """Raw 0xff bytes are replaced in text and preserved in the raw value."""
        q = parse_query(b"a=\xff\xfe&\xff=1")
        self.assertEqual(q.first("a"), "\ufffd\ufffd")
        self.assertEqual(q.first_raw("a"), b"\xff\xfe")
        self.assertEqual(q.first("\ufffd"), "1")
        self.assertTrue(q.malformed)

    def test_control_bytes_not_malformed(self) -> None:
        """Valid escapes of control characters decode as is; they are the caller's business."""
        q = parse_query(b"a=%00%0D%0A")
        self.assertEqual(q.first("a"), "\x00\r\n")
        self.assertFalse(q.malformed)


class CapTests(SynchronousTestCase):
    def test_param_cap(self) -> None:
        """Beyond MAX_PARAMS parameters the rest is dropped and flagged."""
        q = parse_query(b"&".join(b"p%d=1" % i for i in range(10000)))
        self.assertEqual(len(q.raw), MAX_PARAMS)
        self.assertIn("p63", q.raw)
        self.assertNotIn("p64", q.raw)
        self.assertTrue(q.malformed)

    def test_exactly_at_cap(self) -> None:
        """Exactly MAX_PARAMS parameters, even with a trailing '&', is not malformed."""
        q = parse_query(b"&".join(b"p%d=1" % i for i in range(MAX_PARAMS)) + b"&")
        self.assertEqual(len(q.raw), MAX_PARAMS)
        self.assertFalse(q.malformed)

    def test_repeats_count_toward_cap(self) -> None:
        """A flood of one repeated name is capped too."""
        q = parse_query(b"k=1&" * 1000)
        self.assertEqual(q.count("k"), MAX_PARAMS)
        self.assertTrue(q.malformed)


def test_name_cache_is_bounded_and_invisible() -> None:
    """Decoded names are remembered (pages repeat them), but never more than a fixed number, and never long ones."""
    from cookiesaver import query as q

    q._NAMES.clear()
    first = parse_query(b"a%zz=1&site=shop&e=x")
    again = parse_query(b"a%zz=1&site=shop&e=x")
    assert first == again and again.malformed and again.first("a%zz") == "1"
    for i in range(q._NAMES_KEPT * 3):
        parse_query(b"n%d=1" % i)
    parse_query(b"x" * (q._NAME_KEPT_LEN + 1) + b"=1")
    assert len(q._NAMES) <= q._NAMES_KEPT
    assert all(len(name) <= q._NAME_KEPT_LEN for name in q._NAMES)
