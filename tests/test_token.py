"""Click KEY tokens: minting, verification, rotation, expiry and the CLI."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import tempfile
from contextlib import redirect_stderr, redirect_stdout

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cookiesaver.config import ConfigError, TokenConfig
from cookiesaver.token import (
    BAD_TOKEN,
    EXPIRED_TOKEN,
    ClickToken,
    MintError,
    TokenError,
    TokenKeys,
    main,
    mint,
    verify,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
DAY = 86400
T0 = 1_700_000_000


def _keys(current: str = "a", max_age: int = 30 * DAY) -> TokenKeys:
    return TokenKeys({"a": KEY_A, "b": KEY_B}, current, max_age)


def _flip(text: str, index: int) -> str:
    """Change one character to another base64url character."""
    c = text[index]
    return text[:index] + ("B" if c != "B" else "C") + text[index + 1 :]


class RoundTripTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """Every minted field comes back from verify."""
        keys = _keys()
        token = mint(keys, "https://shop.example/p?id=1&utm=x", "acc1", "prof2", "msg3", test=True, issued=T0)
        self.assertEqual(
            verify(keys, token, T0 + 10),
            ClickToken(url="https://shop.example/p?id=1&utm=x", issued=T0, kid="a", account="acc1", profile="prof2", message="msg3", test=True),
        )

    def test_url_byte_for_byte(self) -> None:
        """Odd but legal URLs (escapes, unicode, quotes, fragments) come back unchanged."""
        keys = _keys()
        url = "HTTPS://exämple.com/a%20b/\"q\"?x=%ZZ&y=\u2603#frag'<>"
        result = verify(keys, mint(keys, url, issued=T0), T0)
        assert isinstance(result, ClickToken)
        self.assertEqual(result.url.encode("utf-8"), url.encode("utf-8"))

    def test_query_safe_characters(self) -> None:
        """A token uses only base64url characters and dots, safe unescaped in a query string."""
        token = mint(_keys(), "https://e.example/" + "ü/?&=+ " * 20, account="a b&c", issued=T0)
        self.assertEqual(set(token) - set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."), set())
        self.assertEqual(token.count("."), 2)

    def test_bytes_token(self) -> None:
        """verify accepts the raw query bytes as well as text."""
        keys = _keys()
        token = mint(keys, "http://e.example/", issued=T0)
        self.assertIsInstance(verify(keys, token.encode("ascii"), T0), ClickToken)

    def test_absent_fields(self) -> None:
        """Optional fields are omitted from the payload and come back as None/False."""
        keys = _keys()
        token = mint(keys, "https://e.example/", issued=T0)
        payload = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
        self.assertEqual(payload, {"u": "https://e.example/", "t": T0})
        result = verify(keys, token, T0)
        assert isinstance(result, ClickToken)
        self.assertEqual((result.account, result.profile, result.message, result.test), (None, None, None, False))

    def test_integer_identifiers_from_other_languages(self) -> None:
        """A platform that puts integer ids in a/p/m gets them back as strings."""
        keys = _keys()
        payload = base64.urlsafe_b64encode(b'{"a":12,"p":34,"m":56,"u":"https://e.example/","t":%d}' % T0).rstrip(b"=")
        signed = payload + b".a"
        token = signed + b"." + (keys.mac(b"a", signed) or b"")
        result = verify(keys, token, T0)
        assert isinstance(result, ClickToken)
        self.assertEqual((result.account, result.profile, result.message), ("12", "34", "56"))


class TamperingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.keys = _keys()
        self.token = mint(self.keys, "https://e.example/", "acc", issued=T0)
        self.payload, self.kid, self.mac = self.token.split(".")

    def assertBad(self, token: str | bytes) -> None:
        result = verify(self.keys, token, T0)
        self.assertIsInstance(result, TokenError)
        assert isinstance(result, TokenError)
        self.assertEqual(result.reason, BAD_TOKEN)

    def test_payload_tampered(self) -> None:
        """Changing any payload character breaks the MAC."""
        for i in (0, len(self.payload) // 2, len(self.payload) - 1):
            self.assertBad(".".join([_flip(self.payload, i), self.kid, self.mac]))

    def test_mac_tampered(self) -> None:
        """Changing the MAC, truncating it or extending it is refused."""
        self.assertBad(".".join([self.payload, self.kid, _flip(self.mac, 0)]))
        self.assertBad(".".join([self.payload, self.kid, self.mac[:-1]]))
        self.assertBad(".".join([self.payload, self.kid, self.mac + "A"]))

    def test_kid_swapped(self) -> None:
        """A token signed with key a but labelled b is refused."""
        self.assertBad(f"{self.payload}.b.{self.mac}")

    def test_unknown_kid(self) -> None:
        """A key id we do not hold is bad_token, with the kid in the detail."""
        result = verify(self.keys, f"{self.payload}.zz.{self.mac}", T0)
        self.assertEqual(result, TokenError(BAD_TOKEN, "unknown key id 'zz'"))

    def test_malformed(self) -> None:
        """Garbage of every shape is bad_token, never an exception."""
        for junk in ["", ".", "..", "a.b", "a.b.c.d", self.token + ".", "é.a.b", self.token.replace(".", "%2E"), b"\xff\x00", "x" * 9000, " " + self.token]:
            self.assertBad(junk)

    def test_signed_garbage_payload(self) -> None:
        """A correctly signed payload that is not our JSON shape is still refused."""
        for body in [b"not json", b"[1]", b'{"t":1}', b'{"u":"javascript:alert(1)","t":1700000000}', b'{"u":"https://e.example/","t":"1700000000"}', b'{"u":"https://e.example/","t":1e20}', b'{"u":"https://e.example/","t":1,"x":2}']:
            signed = base64.urlsafe_b64encode(body).rstrip(b"=") + b".a"
            self.assertBad(signed + b"." + (self.keys.mac(b"a", signed) or b""))


class RotationTests(SynchronousTestCase):
    def test_old_key_still_verifies(self) -> None:
        """After rotating to b, tokens minted with a still verify."""
        old = mint(_keys("a"), "https://e.example/", issued=T0)
        rotated = _keys("b")
        result = verify(rotated, old, T0)
        assert isinstance(result, ClickToken)
        self.assertEqual(result.kid, "a")

    def test_current_key_mints(self) -> None:
        """New tokens carry the current key id."""
        self.assertEqual(mint(_keys("b"), "https://e.example/", issued=T0).split(".")[1], "b")

    def test_removed_key(self) -> None:
        """Once key a is removed from the config, its tokens are refused."""
        old = mint(_keys("a"), "https://e.example/", issued=T0)
        result = verify(TokenKeys({"b": KEY_B}, "b", DAY), old, T0)
        assert isinstance(result, TokenError)
        self.assertEqual(result.reason, BAD_TOKEN)

    def test_no_current_key(self) -> None:
        """A verify-only configuration refuses to mint."""
        self.assertRaises(MintError, mint, TokenKeys({"a": KEY_A}, None, DAY), "https://e.example/", issued=T0)


class ExpiryTests(SynchronousTestCase):
    def test_expiry_with_clock(self) -> None:
        """A token is good up to max_age seconds and expired one second later."""
        clock = Clock()
        clock.advance(T0)
        keys = _keys(max_age=DAY)
        token = mint(keys, "https://e.example/", issued=int(clock.seconds()))
        clock.advance(DAY)
        self.assertIsInstance(verify(keys, token, clock.seconds()), ClickToken)
        clock.advance(1)
        result = verify(keys, token, clock.seconds())
        assert isinstance(result, TokenError)
        self.assertEqual(result.reason, EXPIRED_TOKEN)

    def test_future_issue_time(self) -> None:
        """Up to five minutes of clock skew is tolerated, more is expired_token."""
        keys = _keys()
        self.assertIsInstance(verify(keys, mint(keys, "https://e.example/", issued=T0 + 300), T0), ClickToken)
        result = verify(keys, mint(keys, "https://e.example/", issued=T0 + 301), T0)
        assert isinstance(result, TokenError)
        self.assertEqual(result.reason, EXPIRED_TOKEN)


class MintRefusalTests(SynchronousTestCase):
    def test_control_characters(self) -> None:
        """CR, LF, NUL, TAB and DEL in the URL are refused (header injection)."""
        for c in "\r\n\x00\t\x7f":
            self.assertRaises(MintError, mint, _keys(), f"https://e.example/a{c}Set-Cookie: x=1", issued=T0)

    def test_schemes(self) -> None:
        """Only http and https URLs with a host are accepted."""
        for url in ["javascript:alert(1)", "ftp://e.example/", "//e.example/", "https:/e.example", "https://", "https:///path", "data:text/html,x", "e.example"]:
            self.assertRaises(MintError, mint, _keys(), url, issued=T0)

    def test_issued_must_be_int(self) -> None:
        """A float issue time is a programming error, not silently truncated."""
        self.assertRaises(MintError, mint, _keys(), "https://e.example/", issued=1.5)  # type: ignore[arg-type]


class KeyFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_from_config(self) -> None:
        """Keys load from their files and tokens verify across instances."""
        path = self._write("k1", base64.urlsafe_b64encode(KEY_A).rstrip(b"=") + b"\n")
        keys = TokenKeys.from_config(TokenConfig({"k1": path}, "k1", DAY))
        token = mint(keys, "https://e.example/", issued=T0)
        self.assertIsInstance(verify(TokenKeys({"k1": KEY_A}, None, DAY), token, T0), ClickToken)

    def test_errors_name_the_file(self) -> None:
        """Missing, short or non-base64 key files fail with one line naming the file."""
        for path in [os.path.join(self.dir, "missing"), self._write("short", b"AAAA\n"), self._write("junk", b"not base64!\n"), self.dir]:
            e = self.assertRaises(ConfigError, TokenKeys.from_config, TokenConfig({"k": path}, "k", DAY))
            self.assertIn(path, str(e))
            self.assertNotIn("\n", str(e))

    def test_keygen(self) -> None:
        """keygen writes a 0600 one-line key that loads, and never overwrites."""
        path = os.path.join(self.dir, "new.key")
        with redirect_stdout(io.StringIO()):
            self.assertEqual(main(["keygen", "--out", path]), 0)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, "rb") as f:
            self.assertEqual(f.read().count(b"\n"), 1)
        TokenKeys.from_config(TokenConfig({"k": path}, "k", DAY))
        err = io.StringIO()
        with redirect_stderr(err):
            self.assertEqual(main(["keygen", "--out", path]), 2)
        self.assertEqual(err.getvalue().count("\n"), 1)


class CommandLineTests(SynchronousTestCase):
    def setUp(self) -> None:
        d = tempfile.mkdtemp()
        key = os.path.join(d, "k.key")
        with open(key, "wb") as f:
            f.write(base64.urlsafe_b64encode(KEY_A).rstrip(b"=") + b"\n")
        self.config = os.path.join(d, "main.json")
        with open(self.config, "w") as f:
            json.dump({"COOKIESAVER_SSL_ON": False, "COOKIESAVER_TOKEN_KEYS": {"k": key}}, f)

    def run_main(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(argv), now=lambda: float(T0))
        return code, out.getvalue(), err.getvalue()

    def test_mint_then_verify(self) -> None:
        """mint prints a KEY that verify turns back into the payload."""
        code, out, _ = self.run_main("mint", "--config", self.config, "--url", "https://e.example/x", "--account", "A", "--test")
        self.assertEqual(code, 0)
        code, out, _ = self.run_main("verify", "--config", self.config, out.strip())
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out), {"kid": "k", "url": "https://e.example/x", "issued": T0, "account": "A", "profile": None, "message": None, "test": True})

    def test_errors_are_one_line(self) -> None:
        """Bad URL, bad config and bad usage print one line on stderr and exit 2."""
        for argv in [
            ("mint", "--config", self.config, "--url", "https://e.example/\r\nx"),
            ("mint", "--config", self.config + ".missing", "--url", "https://e.example/"),
            ("mint", "--url"),
            ("frobnicate",),
        ]:
            code, out, err = self.run_main(*argv)
            self.assertEqual((code, out, err.count("\n")), (2, "", 1), argv)

    def test_verify_refused(self) -> None:
        """verify of a bad token exits 1 with the reason."""
        code, _, err = self.run_main("verify", "--config", self.config, "a.k.b")
        self.assertEqual(code, 1)
        self.assertIn("bad_token", err)


class WorkedExampleTests(SynchronousTestCase):
    KEY_TEXT = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
    TOKEN = (
        "eyJhIjoiYWNtZSIsInAiOiJwLTEwMDEiLCJtIjoibS03NyIsInUiOiJodHRwczovL3Nob3AuZXhhbXBsZS5jb20vc2FsZT91dG1fc291cmNlPWVtYWlsJmlkPTQyIiwidCI6MTcwMDAwMDAwMH0"
        ".2024a.JT6QWtv4j1gRhaN03CUhWHMCV2nXDlbT6CnaWvqBwhw"
    )

    def test_docs_example(self) -> None:
        """The worked example in docs/tokens.md is what mint produces, and it is in the doc verbatim."""
        keys = TokenKeys({"2024a": base64.urlsafe_b64decode(self.KEY_TEXT + "=")}, "2024a", 400 * DAY)
        token = mint(keys, "https://shop.example.com/sale?utm_source=email&id=42", "acme", "p-1001", "m-77", issued=1_700_000_000)
        self.assertEqual(token, self.TOKEN)
        with open(os.path.join(os.path.dirname(__file__), "..", "docs", "tokens.md")) as f:
            self.assertIn(self.TOKEN, f.read())
