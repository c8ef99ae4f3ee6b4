"""The visitor cookie: signed ids, lenient Cookie parsing, Set-Cookie bytes, SameSite sniffing, opt-out."""

from __future__ import annotations

import os
import stat
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from cookiesaver.config import ConfigError, CookieConfig
from cookiesaver.visitor import VisitorCookies, load_secret, samesite_none_incompatible

SECRET = b"s" * 43
MAX_AGE = 400 * 86400


def _cookies(domain: str | None = None, secret: bytes = SECRET) -> VisitorCookies:
    return VisitorCookies(CookieConfig("csid", domain, MAX_AGE, "/unused", "csoptout"), secret)


# Real User-Agent strings.
IOS12_SAFARI = b"Mozilla/5.0 (iPhone; CPU iPhone OS 12_1_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.0 Mobile/15E148 Safari/604.1"
IOS12_CHROME = b"Mozilla/5.0 (iPhone; CPU iPhone OS 12_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/76.0.3809.123 Mobile/15E148 Safari/605.1"
IPAD12_SAFARI = b"Mozilla/5.0 (iPad; CPU OS 12_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1 Mobile/15E148 Safari/604.1"
MAC1014_SAFARI = b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1.2 Safari/605.1.15"
MAC1014_EMBEDDED = b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_6) AppleWebKit/605.1.15 (KHTML, like Gecko)"
CHROME51 = b"Mozilla/5.0 (Windows NT 10.0; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/51.0.2704.103 Safari/537.36"
CHROME60 = b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/60.0.3112.113 Safari/537.36"
CHROME66_ANDROID = b"Mozilla/5.0 (Linux; Android 8.0.0; SM-G960F Build/R16NW) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/66.0.3359.158 Mobile Safari/537.36"
UC_12_13_0 = b"Mozilla/5.0 (Linux; U; Android 9; en-US; SM-G960F Build/PPR1.180610.011) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/57.0.2987.108 UCBrowser/12.13.0.1207 Mobile Safari/537.36"
LEGACY = [IOS12_SAFARI, IOS12_CHROME, IPAD12_SAFARI, MAC1014_SAFARI, MAC1014_EMBEDDED, CHROME51, CHROME60, CHROME66_ANDROID, UC_12_13_0]

UC_12_13_2 = b"Mozilla/5.0 (Linux; U; Android 9; en-US; SM-G960F Build/PPR1.180610.011) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/57.0.2987.108 UCBrowser/12.13.2.1208 Mobile Safari/537.36"
CHROME50 = b"Mozilla/5.0 (Windows NT 10.0; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/50.0.2661.102 Safari/537.36"
CHROME67 = b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/67.0.3396.99 Safari/537.36"
CHROME120 = b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
MAC1014_CHROME = b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_6) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/80.0.3987.132 Safari/537.36"
MAC1015_SAFARI = b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15"
IOS13_SAFARI = b"Mozilla/5.0 (iPhone; CPU iPhone OS 13_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.0.4 Mobile/15E148 Safari/604.1"
IOS17_SAFARI = b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1.2 Mobile/15E148 Safari/604.1"
FIREFOX121 = b"Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0"
MODERN = [UC_12_13_2, CHROME50, CHROME67, CHROME120, MAC1014_CHROME, MAC1015_SAFARI, IOS13_SAFARI, IOS17_SAFARI, FIREFOX121, b"curl/8.4.0", b""]


class IdTests(SynchronousTestCase):
    def test_new_id_verifies(self) -> None:
        """A fresh id is 39 URL-safe characters and verifies."""
        c = _cookies()
        vid = c.new_id()
        self.assertEqual(len(vid), 39)
        self.assertEqual(c.verify_id(vid), vid)
        self.assertEqual(c.verify_id(vid.encode("ascii")), vid)

    def test_ids_are_random(self) -> None:
        """Two fresh ids differ."""
        c = _cookies()
        self.assertNotEqual(c.new_id(), c.new_id())

    def test_forged_id(self) -> None:
        """Someone else's id part with a tag from another id is refused."""
        c = _cookies()
        victim, mine = c.new_id(), c.new_id()
        self.assertIsNone(c.verify_id(victim[:22] + mine[22:]))

    def test_other_secret(self) -> None:
        """An id signed with another secret is refused."""
        self.assertIsNone(_cookies().verify_id(_cookies(secret=b"t" * 43).new_id()))

    def test_garbled(self) -> None:
        """Truncated, extended, re-cased, non-ASCII and odd-shaped values are refused without raising."""
        c = _cookies()
        vid = c.new_id()
        for bad in [vid[:-1], vid + "A", vid.swapcase(), vid.replace(".", "-"), "é" * 39, "." * 39, "", vid[:22] + "." + "=" * 16, b"\xff" * 39, None]:
            self.assertIsNone(c.verify_id(bad), bad)


class HeaderParsingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.c = _cookies()
        self.vid = self.c.new_id().encode("ascii")

    def test_among_others(self) -> None:
        """Our cookie is found among other sites' cookies."""
        self.assertEqual(self.c.visitor_id_from_header(b"_ga=GA1.2.3; csid=" + self.vid + b"; theme=dark"), self.vid.decode())

    def test_malformed_neighbours(self) -> None:
        """Pairs without '=', empty names, quotes and binary bytes do not hide ours."""
        header = b'noequals; =; "quoted=1"; \xff\xfe=\x00\x01; a="b; csid=' + self.vid + b";;"
        self.assertEqual(self.c.visitor_id_from_header(header), self.vid.decode())

    def test_first_valid_duplicate(self) -> None:
        """With several cookies of our name, the first that verifies wins; bad ones count as absent."""
        other = self.c.new_id().encode("ascii")
        header = b"csid=garbage; csid=" + self.vid + b"; csid=" + other
        self.assertEqual(self.c.visitor_id_from_header(header), self.vid.decode())

    def test_quoted_value(self) -> None:
        """A DQUOTE-wrapped value (allowed by RFC 6265) is accepted."""
        self.assertEqual(self.c.visitor_id_from_header(b'csid="' + self.vid + b'"'), self.vid.decode())

    def test_name_suffix_or_inside_value(self) -> None:
        """'xcsid=' or 'csid=' inside another cookie's value is not our cookie."""
        self.assertIsNone(self.c.visitor_id_from_header(b"xcsid=" + self.vid))
        self.assertIsNone(self.c.visitor_id_from_header(b"other=a csid=" + self.vid))

    def test_absent(self) -> None:
        """No header, empty header, or only a forged value gives None."""
        self.assertIsNone(self.c.visitor_id_from_header(None))
        self.assertIsNone(self.c.visitor_id_from_header(b""))
        self.assertIsNone(self.c.visitor_id_from_header(b"csid=" + self.vid[:-2] + b"AA"))


class SetCookieTests(SynchronousTestCase):
    VID = "AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBB"

    def test_modern_bytes(self) -> None:
        """Modern clients get SameSite=None after Secure, with the exact attribute order."""
        self.assertEqual(
            _cookies().set_cookie_header(self.VID, CHROME120),
            b"csid=AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBB; Max-Age=34560000; Path=/; Secure; HttpOnly; SameSite=None",
        )

    def test_legacy_bytes_with_domain(self) -> None:
        """Incompatible clients get no SameSite attribute; a configured Domain is included."""
        self.assertEqual(
            _cookies("pxl.example.com").set_cookie_header(self.VID, IOS12_SAFARI),
            b"csid=AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBB; Max-Age=34560000; Path=/; Domain=pxl.example.com; Secure; HttpOnly",
        )

    def test_every_variant_secure(self) -> None:
        """SameSite=None never appears without Secure, for any client or header kind."""
        c = _cookies("example.com")
        for ua in LEGACY + MODERN + [None]:
            for header in (c.set_cookie_header(self.VID, ua), c.optout_set_cookie_header(ua), c.expire_cookie_header(ua)):
                self.assertIn(b"; Secure", header)
                if b"SameSite=None" in header:
                    self.assertLess(header.index(b"; Secure"), header.index(b"SameSite=None"))

    def test_refuses_raw_input(self) -> None:
        """A value that is not id-shaped (header injection attempt) raises instead of being emitted."""
        c = _cookies()
        for bad in ["x\r\nSet-Cookie: a=b", "a;b", self.VID + "A", "é" * 39, self.VID.replace(".", ";")]:
            self.assertRaises(ValueError, c.set_cookie_header, bad, None)

    def test_bad_config(self) -> None:
        """Cookie names and domains that would corrupt the header are refused at construction."""
        for name, domain in [("cs id", None), ("cs;id", None), ("", None), ("csid", "a b"), ("csid", "x;y"), ("csoptout", None)]:
            self.assertRaises(ConfigError, VisitorCookies, CookieConfig(name, domain, MAX_AGE, "/x", "csoptout"), SECRET)


class SameSiteTests(SynchronousTestCase):
    def test_legacy_clients(self) -> None:
        """iOS 12 (any browser), Safari/embedded on macOS 10.14, Chrome 51-66, UC before 12.13.2 are incompatible."""
        for ua in LEGACY:
            self.assertTrue(samesite_none_incompatible(ua), ua)

    def test_modern_clients(self) -> None:
        """Chrome 50 and 67+, Chrome on 10.14, Safari 10.15, iOS 13+, Firefox, UC 12.13.2 are compatible."""
        for ua in MODERN:
            self.assertFalse(samesite_none_incompatible(ua), ua)

    def test_crafted_long_agent_is_fast(self) -> None:
        """A crafted 8 KB User-Agent does not trigger the reference regexes' backtracking."""
        import time

        ua = b"(iP" + b"; CPU OS 1 )" * 700
        start = time.perf_counter()
        samesite_none_incompatible(ua)
        self.assertLess(time.perf_counter() - start, 0.05)


class OptOutTests(SynchronousTestCase):
    def test_optout_header(self) -> None:
        """The opt-out cookie is name=1 with the visitor cookie's lifetime and attributes."""
        self.assertEqual(
            _cookies().optout_set_cookie_header(FIREFOX121),
            b"csoptout=1; Max-Age=34560000; Path=/; Secure; HttpOnly; SameSite=None",
        )

    def test_expire_header(self) -> None:
        """Deleting the visitor cookie uses Max-Age=0 and the same Path/Domain."""
        self.assertEqual(
            _cookies("example.com").expire_cookie_header(CHROME60),
            b"csid=; Max-Age=0; Path=/; Domain=example.com; Secure; HttpOnly",
        )

    def test_is_opted_out(self) -> None:
        """Opt-out is detected among other cookies; absent or emptied cookies are not opt-outs."""
        c = _cookies()
        self.assertTrue(c.is_opted_out(b"a=1; csoptout=1"))
        self.assertFalse(c.is_opted_out(b"a=1; xcsoptout=1"))
        self.assertFalse(c.is_opted_out(b"csoptout="))
        self.assertFalse(c.is_opted_out(None))


class SecretTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()

    def test_created_when_missing(self) -> None:
        """A missing secret is created 0600 (with its directories) and read back identically."""
        path = os.path.join(self.dir, "a", "b", "cookie-secret")
        first = load_secret(path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertGreaterEqual(len(first), 32)
        self.assertEqual(load_secret(path), first)

    def test_unreadable(self) -> None:
        """An unreadable or too short secret fails with one line naming the file."""
        short = os.path.join(self.dir, "short")
        with open(short, "wb") as f:
            f.write(b"abc\n")
        blocked = os.path.join(self.dir, "file", "secret")  # parent is a regular file
        with open(os.path.join(self.dir, "file"), "wb"):
            pass
        for path in (self.dir, short, blocked):
            e = self.assertRaises(ConfigError, load_secret, path)
            self.assertIn(path, str(e))
            self.assertNotIn("\n", str(e))
