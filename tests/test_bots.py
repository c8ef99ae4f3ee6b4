"""Bot rules: loading, precedence, IP ranges, the shipped list, and the literal index's soundness."""

from __future__ import annotations

import json
import os
import re
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from cookiesaver.bots import (
    BLOCK,
    EVENT_IGNORE,
    IP_IGNORE,
    UA_IGNORE,
    BotRules,
    mandatory_literal,
)
from cookiesaver.config import ConfigError

CHROME = b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
BROWSERS = [
    CHROME,
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1.2 Mobile/15E148 Safari/604.1",
    b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
    b"Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
    b"Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
    b"Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBDV/iPhone14,5;FBMD/iPhone;FBSN/iOS;FBSV/16.6;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5]",
]
GOOGLEBOT = b"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def _write(data: object) -> str:
    fd, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))
    return path


class MatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.rules = BotRules(
            [("evilbot", BLOCK), ("crawl(er|ing)", EVENT_IGNORE), ("^curl/", UA_IGNORE), ("Chirp|Chatter", EVENT_IGNORE)],
            [("198.51.100.0/24", IP_IGNORE), ("203.0.113.66", BLOCK), ("2001:db8::/32", EVENT_IGNORE)],
        )

    def test_case_insensitive(self) -> None:
        """UA patterns match regardless of case."""
        self.assertEqual(self.rules.match(b"Mozilla/5.0 EvilBot/1.0", "192.0.2.1"), BLOCK)
        self.assertEqual(self.rules.match(b"My CRAWLER", "192.0.2.1"), EVENT_IGNORE)

    def test_anchor_respected(self) -> None:
        """An anchored pattern does not match in the middle."""
        self.assertEqual(self.rules.match(b"curl/8.4.0", "192.0.2.1"), UA_IGNORE)
        self.assertIsNone(self.rules.match(b"Mozilla curl/8.4.0", "192.0.2.1"))

    def test_alternation_without_literal(self) -> None:
        """A pattern with no mandatory literal (top-level alternation) still matches."""
        self.assertEqual(self.rules.match(b"chatter 1.0", None), EVENT_IGNORE)

    def test_ip_rules(self) -> None:
        """CIDRs and single addresses match, IPv6 too, IPv4-mapped addresses as IPv4."""
        self.assertEqual(self.rules.match(CHROME, "198.51.100.200"), IP_IGNORE)
        self.assertEqual(self.rules.match(CHROME, "::ffff:198.51.100.7"), IP_IGNORE)
        self.assertEqual(self.rules.match(CHROME, "203.0.113.66"), BLOCK)
        self.assertIsNone(self.rules.match(CHROME, "203.0.113.67"))
        self.assertEqual(self.rules.match(CHROME, "2001:db8:5::1"), EVENT_IGNORE)
        self.assertIsNone(self.rules.match(CHROME, "not an address"))

    def test_precedence(self) -> None:
        """block > event_ignore > ua_ignore > ip_ignore, across the UA and IP lists."""
        self.assertEqual(self.rules.match(b"curl/8 crawler", "198.51.100.1"), EVENT_IGNORE)
        self.assertEqual(self.rules.match(b"curl/8", "198.51.100.1"), UA_IGNORE)
        self.assertEqual(self.rules.match(b"curl/8", "203.0.113.66"), BLOCK)
        self.assertEqual(self.rules.match(b"crawler evilbot", "2001:db8::1"), BLOCK)

    def test_ordinary_visitor(self) -> None:
        """No rule matches an ordinary browser; missing UA and address are fine."""
        self.assertIsNone(self.rules.match(CHROME, "192.0.2.1"))
        self.assertIsNone(self.rules.match(None, None))

    def test_cached_result_stable(self) -> None:
        """Repeated lookups (served from the cache) give the same answer."""
        for _ in range(3):
            self.assertEqual(self.rules.match(b"evilbot", "192.0.2.1"), BLOCK)


class LoadingTests(SynchronousTestCase):
    def assertLoadError(self, ua: object = None, ip: object = None, expect: str = "") -> None:
        ua_path = _write(ua) if ua is not None else None
        ip_path = _write(ip) if ip is not None else None
        e = self.assertRaises(ConfigError, BotRules.from_files, ua_path, ip_path)
        self.assertIn(ua_path if ua is not None else ip_path, str(e))
        self.assertIn(expect, str(e))
        self.assertNotIn("\n", str(e))

    def test_errors_name_file_and_index(self) -> None:
        """Bad regexes, actions, CIDRs and shapes fail with the file and the rule index."""
        self.assertLoadError(ua=[{"pattern": "ok", "action": "block"}, {"pattern": "bad(", "action": "block"}], expect="rule 1")
        self.assertLoadError(ua=[{"pattern": "x", "action": "ip_ignore"}], expect="rule 0")
        self.assertLoadError(ua=[{"pattern": "(a)\\1", "action": "block"}], expect="rule 0")
        self.assertLoadError(ua=[{"pattern": "a(?i)b", "action": "block"}], expect="rule 0")
        self.assertLoadError(ua=[{"pattern": "", "action": "block"}], expect="rule 0")
        self.assertLoadError(ip=[{"pattern": "10.0.0.0/8", "action": "ip_ignore"}, {"pattern": "10.0.0.300", "action": "block"}], expect="rule 1")
        self.assertLoadError(ip=[{"pattern": "10.0.0.1", "action": "ua_ignore"}], expect="rule 0")
        self.assertLoadError(ua=[{"action": "block"}], expect="rule 0")
        self.assertLoadError(ua={"pattern": "x"}, expect="list")
        self.assertLoadError(ua="[{", expect="invalid JSON")

    def test_missing_file(self) -> None:
        """A missing file fails with one line naming it."""
        e = self.assertRaises(ConfigError, BotRules.from_files, "/nonexistent/bots_ua.json", None)
        self.assertIn("/nonexistent/bots_ua.json", str(e))

    def test_own_files(self) -> None:
        """Configured files replace the shipped lists."""
        rules = BotRules.from_files(_write([{"pattern": "mybot", "action": "block"}]), _write([]))
        self.assertEqual(rules.match(b"MyBot", "192.0.2.1"), BLOCK)
        self.assertIsNone(rules.match(GOOGLEBOT, "192.0.2.1"))

    def test_unknown_keys_ignored(self) -> None:
        """Extra keys such as comment are allowed."""
        rules = BotRules.from_files(_write([{"pattern": "x1bot", "action": "block", "comment": "why", "url": "u"}]), None)
        self.assertEqual(rules.ua_count, 1)


class ShippedListTests(SynchronousTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.rules = BotRules.from_files(None, None)

    def test_loads(self) -> None:
        """The shipped lists load and the UA list is the converted upstream list plus scanners."""
        self.assertGreater(self.rules.ua_count, 1000)
        self.assertEqual(self.rules.ip_count, 0)

    def test_known_bots(self) -> None:
        """Googlebot, bingbot, link previewers and email scanners are event_ignore."""
        for ua in [
            GOOGLEBOT,
            b"Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36",
            b"facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            b"Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/534+ (KHTML, like Gecko) BingPreview/1.0b",
            b"Microsoft Office Existence Discovery",
            b"Mozilla/5.0 (compatible; urldefense.com scanner)",
        ]:
            self.assertEqual(self.rules.match(ua, "192.0.2.1"), EVENT_IGNORE, ua)

    def test_browsers_pass(self) -> None:
        """Common browsers, including in-app ones, match nothing."""
        for ua in BROWSERS:
            self.assertIsNone(self.rules.match(ua, "192.0.2.1"), ua)


class LiteralIndexTests(SynchronousTestCase):
    def test_mandatory_literal(self) -> None:
        """The extracted literal is one every match must contain, or empty when unsure."""
        cases = {
            "Googlebot\\/": "googlebot/",
            "^curl": "curl",
            "AdsBot-Google([^-]|$)": "adsbot-google",
            "(sistrix|SISTRIX) [cC]rawler": "rawler",
            "abc+d": "abc",
            "abcd?e": "abc",
            "ab+c": "",
            "abcx{0,2}yz": "abc",
            "Chirp|gotosocial": "",
            "(?i)abc": "",
            "a\\d\\sbc": "",
            "\\bfoo bar": "foo bar",
            "x.y": "",
            "\\x41bcdef": "",
            "\\\\server": "\\server",
        }
        for pattern, literal in cases.items():
            self.assertEqual(mandatory_literal(pattern), literal, pattern)

    def test_index_agrees_with_plain_regex(self) -> None:
        """For every shipped pattern and a corpus of strings, the index gives the plain regex's verdict."""
        rules = BotRules.from_files(None, None)
        path = os.path.join(os.path.dirname(__file__), "..", "cookiesaver", "data", "bots_ua.json")
        with open(path) as f:
            patterns = [r["pattern"] for r in json.load(f)]
        combined = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)
        corpus = BROWSERS + [GOOGLEBOT, b"curl/8.4.0", b"Wget/1.21", b"python-requests/2.31", b"Go-http-client/1.1", b"HeadlessChrome/120", b"x" * 50, b"\xff\xfe bot"]
        for ua in corpus:
            expected = EVENT_IGNORE if combined.search(ua.decode("latin-1")) else None
            self.assertEqual(rules.match(ua, None), expected, ua)
