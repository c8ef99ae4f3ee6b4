"""The visitor cookie: a random id that a client cannot choose for someone else.

A visitor id is the whole signed value (39 ASCII characters)::

    base64url(16 random bytes) "." base64url(HMAC-SHA256(secret, id_b64)[:12])

It is what is stored and what C{pixel.js} echoes back as C{cs_vid}; the tag
means a client can only present an id this server (or a node sharing the
secret) issued.

API::

    cookies = VisitorCookies(config.cookie, load_secret(config.cookie.secret_path))
    vid = cookies.visitor_id_from_header(cookie_header)   # str | None, never raises
    vid = cookies.verify_id(query_value)                  # str | None
    vid = vid or cookies.new_id()
    request.responseHeaders.addRawHeader(b"set-cookie", cookies.set_cookie_header(vid, user_agent))
    cookies.is_opted_out(cookie_header); cookies.optout_set_cookie_header(user_agent)

Cookie headers: pass every C{Cookie} header line joined with C{b"; "}
(HTTP/2 clients split cookies over several lines). Attribute suffixes are
precomputed; per request only the value is concatenated.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re

from cookiesaver.config import ConfigError, CookieConfig

_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_ID_LEN = 22  # base64url of 16 bytes
_TAG_LEN = 16  # base64url of 12 bytes
VALUE_LEN = _ID_LEN + 1 + _TAG_LEN
# RFC 6265 cookie-name is an RFC 7230 token.
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DOMAIN_RE = re.compile(r"\.?[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\Z")
#: Distinct User-Agent strings whose SameSite verdict is remembered.
UA_CACHE_SIZE = 4096
#: Only this prefix of a User-Agent is examined: the markers sit in the first
#: ~300 bytes of real ones, and the reference regexes backtrack badly on long
#: crafted input (an 8 KB UA took seconds). It also bounds the cache's memory.
UA_PREFIX = 512


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def load_secret(path: str) -> bytes:
    """
    The cookie signing secret, created (0600, parents too) on first start.

    Share one file across nodes, or ids issued by one node fail on another.

    @raise ConfigError: one line naming the file when it cannot be read or made.
    """
    try:
        with open(path, "rb") as f:
            text = f.read(4096).strip()
    except FileNotFoundError:
        try:
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it between our open and create
                return load_secret(path)
        except OSError as e:
            raise ConfigError(f"cookie secret {path}: cannot create: {e.strerror or e}") from None
        secret = _b64url(os.urandom(32))
        try:
            os.write(fd, secret + b"\n")
        finally:
            os.close(fd)
        return secret
    except OSError as e:
        raise ConfigError(f"cookie secret {path}: {e.strerror or e}") from None
    if len(text) < 32 or "\n" in text.decode("latin-1"):
        raise ConfigError(f"cookie secret {path}: expected one line of at least 32 characters")
    return text


class VisitorCookies:
    """Issues, checks and formats the visitor and opt-out cookies. Immutable after construction."""

    def __init__(self, config: CookieConfig, secret: bytes) -> None:
        for what, name in (("COOKIESAVER_COOKIE_NAME", config.name), ("COOKIESAVER_OPTOUT_COOKIE_NAME", config.optout_name)):
            if not name or not _TOKEN_CHARS.issuperset(name):
                raise ConfigError(f"{what}: {name!r} is not a valid cookie name")
        if config.name == config.optout_name:
            raise ConfigError("COOKIESAVER_OPTOUT_COOKIE_NAME must differ from COOKIESAVER_COOKIE_NAME")
        if config.domain is not None and not _DOMAIN_RE.match(config.domain):
            raise ConfigError(f"COOKIESAVER_COOKIE_DOMAIN: {config.domain!r} is not a domain name")
        self._mac = hmac.new(secret, digestmod=hashlib.sha256)
        self.name = config.name.encode("ascii")
        self._name_eq = self.name + b"="
        self._optout_eq = config.optout_name.encode("ascii") + b"="
        domain = b"; Domain=" + config.domain.encode("ascii") if config.domain else b""
        common = b"; Path=/" + domain + b"; Secure; HttpOnly"
        max_age = b"; Max-Age=%d" % config.max_age
        # SameSite=None is only ever emitted after Secure (browsers drop it otherwise).
        self._suffix_modern = max_age + common + b"; SameSite=None"
        self._suffix_legacy = max_age + common
        self._expire_modern = b"=; Max-Age=0" + common + b"; SameSite=None"
        self._expire_legacy = b"=; Max-Age=0" + common
        self._optout_modern = self._optout_eq + b"1" + self._suffix_modern
        self._optout_legacy = self._optout_eq + b"1" + self._suffix_legacy
        self._incompatible = functools.lru_cache(maxsize=UA_CACHE_SIZE)(samesite_none_incompatible)

    # --- ids ---------------------------------------------------------------

    def _tag(self, id_b64: bytes) -> bytes:
        state = self._mac.copy()
        state.update(id_b64)
        return _b64url(state.digest()[:12])

    def new_id(self) -> str:
        """A fresh signed visitor id."""
        id_b64 = _b64url(os.urandom(16))
        return (id_b64 + b"." + self._tag(id_b64)).decode("ascii")

    def verify_id(self, value: str | bytes | None) -> str | None:
        """C{value} when it is an id we issued, else None (forged, garbled, wrong length)."""
        if value is None:
            return None
        if isinstance(value, str):
            if len(value) != VALUE_LEN or not value.isascii():
                return None
            value = value.encode("ascii")
        elif len(value) != VALUE_LEN:
            return None
        if value[_ID_LEN] != 0x2E or value[:_ID_LEN].translate(None, _B64URL) or value[_ID_LEN + 1 :].translate(None, _B64URL):
            return None
        if not hmac.compare_digest(self._tag(value[:_ID_LEN]), value[_ID_LEN + 1 :]):
            return None
        return value.decode("ascii")

    def visitor_id_from_header(self, cookie_header: bytes | None) -> str | None:
        """
        The first valid visitor id among our cookies in a raw Cookie header.

        Lenient on purpose: other sites' cookies may be anything (no C{=},
        quotes, binary), and must not hide ours; a value of ours that fails
        its check is skipped as if absent.
        """
        for value in _values(cookie_header, self._name_eq):
            vid = self.verify_id(value)
            if vid is not None:
                return vid
        return None

    # --- headers -----------------------------------------------------------

    def set_cookie_header(self, visitor_value: str, user_agent: bytes | None) -> bytes:
        """
        The complete Set-Cookie value for a visitor id from L{new_id} or L{verify_id}.

        @raise ValueError: C{visitor_value} is not shaped like an id (a bug in the caller:
            client input must go through L{verify_id} first).
        """
        raw = visitor_value.encode("ascii") if visitor_value.isascii() else b""
        if len(raw) != VALUE_LEN or raw.translate(None, _B64URL) != b".":
            raise ValueError("not a visitor id")
        return self._name_eq + raw + (self._suffix_legacy if self._legacy(user_agent) else self._suffix_modern)

    def expire_cookie_header(self, user_agent: bytes | None) -> bytes:
        """A Set-Cookie value deleting the visitor cookie (used when a visitor opts out)."""
        return self.name + (self._expire_legacy if self._legacy(user_agent) else self._expire_modern)

    def optout_set_cookie_header(self, user_agent: bytes | None = None) -> bytes:
        """A Set-Cookie value recording an opt-out (C{name=1}) for as long as the visitor cookie lives."""
        return self._optout_legacy if self._legacy(user_agent) else self._optout_modern

    def is_opted_out(self, cookie_header: bytes | None) -> bool:
        """True when the opt-out cookie is present with a non-empty value."""
        return any(_values(cookie_header, self._optout_eq))

    def _legacy(self, user_agent: bytes | None) -> bool:
        if not user_agent:
            return False
        return self._incompatible(user_agent[:UA_PREFIX])


def _values(header: bytes | None, name_eq: bytes) -> list[bytes]:
    """Values of every C{name=value} pair in a Cookie header, in order, quotes removed."""
    found: list[bytes] = []
    if not header:
        return found
    start = header.find(name_eq)
    while start != -1:
        # A real pair starts the header or follows ';' (after optional spaces);
        # anything else is a substring of another cookie's name or value.
        before = header[:start].rstrip(b" \t")
        if not before or before.endswith(b";"):
            value_start = start + len(name_eq)
            end = header.find(b";", value_start)
            value = header[value_start:] if end == -1 else header[value_start:end]
            value = value.strip(b" \t")
            if len(value) >= 2 and value[0] == value[-1] == 0x22:
                value = value[1:-1]
            found.append(value)
        start = header.find(name_eq, start + 1)
    return found


# --- SameSite=None incompatible clients -----------------------------------------
# The Chromium project's published algorithm, "SameSite=None: Known Incompatible
# Clients" (https://www.chromium.org/updates/same-site/incompatible-clients),
# with cheap substring checks in front of each regex.

_IOS = re.compile(rb"\(iP.+; CPU .*OS (\d+)[_\d]*.*\) AppleWebKit/")
_MACOSX = re.compile(rb"\(Macintosh;.*Mac OS X (\d+)_(\d+)[_\d]*.*\) AppleWebKit/")
_SAFARI = re.compile(rb"Version/.* Safari/")
_MAC_EMBEDDED = re.compile(rb"^Mozilla/[.\d]+ \(Macintosh;.*Mac OS X [_\d]+\) AppleWebKit/[.\d]+ \(KHTML, like Gecko\)$")
_CHROMIUM = re.compile(rb"Chrom(e|ium)")
_CHROMIUM_VERSION = re.compile(rb"Chrom[^ /]+/(\d+)[.\d]* ")
_UC_VERSION = re.compile(rb"UCBrowser/(\d+)\.(\d+)\.(\d+)[.\d]* ")


def samesite_none_incompatible(user_agent: bytes) -> bool:
    """True for clients that mishandle C{SameSite=None}: send them the cookie without SameSite."""
    ua = user_agent[:UA_PREFIX]
    return _has_webkit_samesite_bug(ua) or _drops_unrecognized_samesite(ua)


def _has_webkit_samesite_bug(ua: bytes) -> bool:
    if b"(iP" in ua:
        m = _IOS.search(ua)
        if m is not None and m.group(1) == b"12":
            return True
    if b"Macintosh" in ua:
        m = _MACOSX.search(ua)
        if m is not None and m.group(1) == b"10" and m.group(2) == b"14":
            return (_SAFARI.search(ua) is not None and _CHROMIUM.search(ua) is None) or _MAC_EMBEDDED.search(ua) is not None
    return False


def _drops_unrecognized_samesite(ua: bytes) -> bool:
    if b"UCBrowser/" in ua:
        m = _UC_VERSION.search(ua)
        if m is None:
            # No parsable version: the reference's comparison would see 0.0.0, too old.
            return True
        return tuple(int(g) for g in m.groups()) < (12, 13, 2)
    if b"Chrom" not in ua or _CHROMIUM.search(ua) is None:
        return False
    m = _CHROMIUM_VERSION.search(ua)
    return m is not None and 51 <= int(m.group(1)) < 67
