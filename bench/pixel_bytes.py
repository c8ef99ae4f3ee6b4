"""The bytes every benchmark peer answers with: cookiesaver's GIF and a visitor cookie of the same shape.

The bare servers use these so that they put the same bytes on the wire as
cookiesaver's pixel (the Set-Cookie value differs only in its random id).
"""

from __future__ import annotations

import base64
import os

from cookiesaver.web.pixel import GIF

COOKIE_NAME = b"csid"
COOKIE_SUFFIX = b"; Max-Age=34560000; Path=/; Secure; HttpOnly; SameSite=None"


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def cookie_value() -> bytes:
    """A value shaped like a visitor id (22 + 1 + 16 characters); not signed, the bare peers only echo it."""
    return _b64(os.urandom(16)) + b"." + _b64(os.urandom(12))


def set_cookie() -> bytes:
    return COOKIE_NAME + b"=" + cookie_value() + COOKIE_SUFFIX


__all__ = ["COOKIE_NAME", "COOKIE_SUFFIX", "GIF", "cookie_value", "set_cookie"]
