"""Click KEY tokens: the signed C{k} parameter of a tracked link.

A token tells the redirect where to send the browser and what to record, and
the platform mints it, possibly in another language, so the format is small
and fixed (docs/tokens.md has the full spec and a worked example)::

    payload_b64 "." kid "." mac_b64
    payload_b64 = base64url(compact JSON {"a","p","m","u","t","x"}), no padding
    mac_b64     = base64url(HMAC-SHA256(key[kid], payload_b64 "." kid)), no padding

Every character is in C{[A-Za-z0-9_.-]}, so a token needs no escaping in a
query string.

API (all cheap; keys are decoded and HMAC states precomputed once)::

    keys = TokenKeys.from_config(config.tokens)     # ConfigError naming the file
    token = mint(keys, url, account=..., profile=..., message=..., test=False, issued=int)
    result = verify(keys, token_bytes_or_str, now=clock.seconds())
    if isinstance(result, TokenError): count(result.reason)   # "bad_token" | "expired_token"
    else: result.url, result.account, ...

C{verify} returns (never raises) so the hot path has no exception cost on
garbage input. C{python -m cookiesaver.token} mints, verifies and makes keys.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import attrs

from cookiesaver.config import ConfigError, TokenConfig

BAD_TOKEN = "bad_token"
EXPIRED_TOKEN = "expired_token"

#: Tokens issued this many seconds in the future are refused (clock skew allowance).
FUTURE_SKEW = 300
#: Longest token accepted or minted; matches the default request-line limit.
MAX_TOKEN_LENGTH = 8192
#: Shortest key accepted, in bytes (HMAC-SHA256 keys shorter than its output weaken it).
MIN_KEY_BYTES = 32

_TOKEN_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
_CONTROL_CHARS = frozenset(chr(c) for c in range(0x20)) | {"\x7f"}


class MintError(ValueError):
    """A token cannot be minted from these arguments (bad URL, no current key)."""


@attrs.frozen
class TokenError:
    """
    Why a token was refused. Returned, not raised.

    @ivar reason: C{bad_token} or C{expired_token}, usable as a metric label.
    @ivar detail: a short human explanation for logs and the CLI; never shown to clients.
    """

    reason: str
    detail: str


@attrs.frozen
class ClickToken:
    """A verified token's payload."""

    url: str
    issued: int
    kid: str
    account: str | None = None
    profile: str | None = None
    message: str | None = None
    test: bool = False

    def as_json(self) -> dict[str, Any]:
        """The payload with long names, for operators."""
        return {
            "kid": self.kid,
            "url": self.url,
            "issued": self.issued,
            "account": self.account,
            "profile": self.profile,
            "message": self.message,
            "test": self.test,
        }


def b64url_encode(data: bytes) -> bytes:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64url_decode(text: bytes) -> bytes:
    """
    Strict base64url without padding.

    @raise ValueError: characters outside the alphabet or an impossible length.
    """
    if text.translate(None, _TOKEN_ALPHABET) or b"." in text:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))


class TokenKeys:
    """
    The token keys by key id, loaded once; every key verifies, C{current} mints.

    Immutable: a reload builds a new instance and swaps it.
    """

    def __init__(self, keys: Mapping[str, bytes], current: str | None, max_age: int) -> None:
        if current is not None and current not in keys:
            raise ConfigError(f"token key id {current!r} is the current key but has no key file")
        for kid in keys:
            if not kid or not kid.isascii() or kid.encode("ascii").translate(None, _TOKEN_ALPHABET) or "." in kid:
                raise ConfigError(f"token key id {kid!r}: use ASCII letters, digits, '-' or '_'")
        self.current = current
        self.max_age = max_age
        # kid bytes -> a keyed HMAC state; copying it skips re-hashing the key per request.
        self._macs = {kid.encode("ascii"): hmac.new(key, digestmod=hashlib.sha256) for kid, key in keys.items()}

    @classmethod
    def from_config(cls, config: TokenConfig) -> TokenKeys:
        """Read every key file named in the config. @raise ConfigError: one line naming the file."""
        return cls({kid: read_key_file(path) for kid, path in config.keys.items()}, config.current, config.max_age)

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(k.decode("ascii") for k in self._macs)

    def mac(self, kid: bytes, signed: bytes) -> bytes | None:
        """base64url HMAC of C{signed} under key C{kid}, or None for an unknown kid."""
        state = self._macs.get(kid)
        if state is None:
            return None
        state = state.copy()
        state.update(signed)
        return b64url_encode(state.digest())


def read_key_file(path: str) -> bytes:
    """A key file: base64url of at least 32 random bytes on one line. @raise ConfigError: naming the file."""
    try:
        with open(path, "rb") as f:
            text = f.read(4096).strip()
    except OSError as e:
        raise ConfigError(f"token key file {path}: {e.strerror or e}") from None
    try:
        key = b64url_decode(text.rstrip(b"="))
    except (ValueError, binascii.Error):
        raise ConfigError(f"token key file {path}: expected base64url text on one line") from None
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"token key file {path}: key is {len(key)} bytes, expected at least {MIN_KEY_BYTES}")
    return key


def write_key_file(path: str, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
    """Create a new key file with mode 0600; refuse to overwrite one. @raise OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, b64url_encode(random_bytes(32)) + b"\n")
    finally:
        os.close(fd)


def check_url(url: object) -> str | None:
    """Why C{url} cannot be a redirect destination, or None when it can."""
    if not isinstance(url, str):
        return "the URL must be a string"
    lower = url[:8].lower()
    if lower.startswith("https://"):
        rest = url[8:]
    elif lower.startswith("http://"):
        rest = url[7:]
    else:
        return "the URL must start with http:// or https://"
    if not rest or rest[0] in "/?#":
        return "the URL has no host"
    if not _CONTROL_CHARS.isdisjoint(url):
        return "the URL contains a control character (CR, LF, ...)"
    return None


def mint(
    keys: TokenKeys,
    url: str,
    account: str | None = None,
    profile: str | None = None,
    message: str | None = None,
    test: bool = False,
    *,
    issued: int,
) -> str:
    """
    Make a token for C{url} with the current key.

    @param issued: issue time in integer seconds (the caller's clock).
    @raise MintError: bad URL, no current key, or a token longer than L{MAX_TOKEN_LENGTH}.
    """
    problem = check_url(url)
    if problem:
        raise MintError(problem)
    if keys.current is None:
        raise MintError("no current token key (set COOKIESAVER_TOKEN_CURRENT_KEY)")
    if isinstance(issued, bool) or not isinstance(issued, int):
        raise MintError("issued must be integer seconds")
    payload: dict[str, Any] = {}
    for name, value in (("a", account), ("p", profile), ("m", message)):
        if value is not None:
            if not isinstance(value, str):
                raise MintError(f"{name} must be a string")
            payload[name] = value
    payload["u"] = url
    payload["t"] = issued
    if test:
        payload["x"] = 1
    try:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise MintError("text fields must be valid Unicode (no lone surrogates)") from None
    kid = keys.current.encode("ascii")
    signed = b64url_encode(body) + b"." + kid
    mac = keys.mac(kid, signed)
    assert mac is not None
    token = (signed + b"." + mac).decode("ascii")
    if len(token) > MAX_TOKEN_LENGTH:
        raise MintError(f"token would be {len(token)} characters, more than {MAX_TOKEN_LENGTH}")
    return token


def _text_field(payload: Mapping[str, Any], name: str) -> tuple[bool, str | None]:
    """(ok, value) for an optional identifier: a string or an integer (PHP and JS mint those)."""
    value = payload.get(name)
    if value is None or isinstance(value, str):
        return True, value
    if isinstance(value, int) and not isinstance(value, bool):
        return True, str(value)
    return False, None


def verify(keys: TokenKeys, token: bytes | str, now: float) -> ClickToken | TokenError:
    """
    Check a token's MAC, shape and age.

    @param now: the current time from the injected clock.
    @return: the payload, or a L{TokenError} whose reason is C{bad_token}
        (malformed, unknown kid, bad MAC, bad JSON, bad fields) or
        C{expired_token} (older than C{max_age}, or issued more than
        L{FUTURE_SKEW} seconds ahead).
    """
    if isinstance(token, str):
        try:
            token = token.encode("ascii")
        except UnicodeEncodeError:
            return TokenError(BAD_TOKEN, "non-ASCII characters")
    if len(token) > MAX_TOKEN_LENGTH:
        return TokenError(BAD_TOKEN, "too long")
    if token.translate(None, _TOKEN_ALPHABET):
        return TokenError(BAD_TOKEN, "characters outside base64url")
    parts = token.split(b".")
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2]:
        return TokenError(BAD_TOKEN, "expected three dot-separated parts")
    payload_b64, kid, mac = parts
    expected = keys.mac(kid, token[: len(payload_b64) + 1 + len(kid)])
    if expected is None:
        return TokenError(BAD_TOKEN, f"unknown key id {kid.decode('ascii')!r}")
    if not hmac.compare_digest(expected, mac):
        return TokenError(BAD_TOKEN, "bad MAC")
    # Past this point the platform signed it: failures are its bugs, still bad_token.
    try:
        payload = json.loads(b64url_decode(payload_b64))
    except (ValueError, binascii.Error):
        return TokenError(BAD_TOKEN, "payload is not base64url JSON")
    if not isinstance(payload, dict):
        return TokenError(BAD_TOKEN, "payload is not a JSON object")
    url = payload.get("u")
    problem = check_url(url)
    if problem or not isinstance(url, str):
        return TokenError(BAD_TOKEN, problem or "bad URL")
    issued = payload.get("t")
    if isinstance(issued, bool) or not isinstance(issued, int) or not -(2**53) < issued < 2**53:
        return TokenError(BAD_TOKEN, "t must be integer seconds")
    test = payload.get("x", 0)
    if test not in (0, 1):
        return TokenError(BAD_TOKEN, "x must be 1 or absent")
    ok_a, account = _text_field(payload, "a")
    ok_p, profile = _text_field(payload, "p")
    ok_m, message = _text_field(payload, "m")
    if not (ok_a and ok_p and ok_m):
        return TokenError(BAD_TOKEN, "a, p and m must be strings or integers")
    age = now - issued
    if age > keys.max_age:
        return TokenError(EXPIRED_TOKEN, f"issued {int(age)} s ago, more than {keys.max_age}")
    if -age > FUTURE_SKEW:
        return TokenError(EXPIRED_TOKEN, f"issued {int(-age)} s in the future")
    return ClickToken(
        url=url, issued=issued, kid=kid.decode("ascii"), account=account, profile=profile, message=message, test=bool(test)
    )


# --- command line -----------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def _load_keys(config_path: str | None) -> TokenKeys:
    from cookiesaver.config import load

    return TokenKeys.from_config(load(config_path).config.tokens)


def main(argv: Sequence[str] | None = None, now: Callable[[], float] = time.time) -> int:
    """
    C{python -m cookiesaver.token {keygen,mint,verify}}.

    Exit status: 0 done, 1 token refused (verify), 2 usage or configuration error.
    The wall clock is read here, at the edge, and only here.
    """
    parser = _Parser(prog="python -m cookiesaver.token", description="Make token keys, mint and verify click tokens.")
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="write a new key file (mode 0600)")
    keygen.add_argument("--out", required=True, help="key file to create; never overwritten")
    minting = sub.add_parser("mint", help="print a token (the k parameter)")
    minting.add_argument("--config", help="main.json (COOKIESAVER_* environment variables apply too)")
    minting.add_argument("--url", required=True)
    minting.add_argument("--account")
    minting.add_argument("--profile")
    minting.add_argument("--message")
    minting.add_argument("--test", action="store_true", help="a test send: the click redirects but records nothing")
    verifying = sub.add_parser("verify", help="print a token's payload as JSON")
    verifying.add_argument("--config")
    verifying.add_argument("token")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage error or --help, already printed
        return e.code if isinstance(e.code, int) else 2
    prog = parser.prog
    try:
        if args.command == "keygen":
            try:
                write_key_file(args.out)
            except OSError as e:
                raise ConfigError(f"{args.out}: {e.strerror or e}") from None
            print(args.out)
            return 0
        keys = _load_keys(args.config)
        if args.command == "mint":
            print(mint(keys, args.url, args.account, args.profile, args.message, test=args.test, issued=int(now())))
            return 0
        result = verify(keys, args.token, now())
        if isinstance(result, TokenError):
            sys.stderr.write(f"{prog}: {result.reason}: {result.detail}\n")
            return 1
        print(json.dumps(result.as_json(), ensure_ascii=False))
        return 0
    except (ConfigError, MintError) as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
