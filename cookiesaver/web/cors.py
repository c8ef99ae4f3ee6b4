"""CORS for the customers' sites: only their configured origins may read our answers.

The Origin header is echoed back only when it is in the allowed set, never as
C{*}, because responses may carry the visitor cookie (credentials). Every
response that varies by Origin says so with C{Vary: Origin}, or a shared
cache could hand one site's answer to another.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from cookiesaver.config import SiteConfig

PREFLIGHT_MAX_AGE = b"600"
ALLOWED_REQUEST_HEADERS = frozenset({b"content-type"})


def all_site_origins(sites: Mapping[str, SiteConfig]) -> frozenset[str]:
    """Every origin of every site, for endpoints shared by all sites (POST /pixel)."""
    return frozenset(origin for site in sites.values() for origin in site.origins)


def _add_vary_origin(request: Any) -> None:
    existing = b", ".join(request.responseHeaders.getRawHeaders(b"vary", []))
    names = {v.strip().lower() for v in existing.split(b",") if v.strip()}
    if b"origin" not in names and b"*" not in names:
        request.responseHeaders.setRawHeaders(b"vary", [existing + b", Origin" if existing else b"Origin"])


def request_origin(request: Any) -> str | None:
    """The Origin header as text, or None when absent or not ASCII."""
    raw = request.getHeader(b"origin")
    if raw is None:
        return None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None


def apply_cors(request: Any, allowed_origins: Collection[str]) -> bool:
    """
    Add the CORS response headers for an actual (non-preflight) request.

    @return: True when the request's Origin is allowed (and was echoed).
    """
    _add_vary_origin(request)
    origin = request_origin(request)
    if origin is None or origin not in allowed_origins:
        return False
    request.setHeader(b"access-control-allow-origin", origin.encode("ascii"))
    request.setHeader(b"access-control-allow-credentials", b"true")
    return True


def preflight(request: Any, allowed_origins: Collection[str], methods: Iterable[bytes]) -> bytes:
    """
    Answer an OPTIONS preflight: 204 with the allow headers, or 403 for an origin, method or header we do not allow.

    Use as the body of C{render_OPTIONS}.
    """
    methods = tuple(methods)
    _add_vary_origin(request)
    request.setHeader(b"vary", b", ".join(request.responseHeaders.getRawHeaders(b"vary", [])) + b", Access-Control-Request-Method, Access-Control-Request-Headers")
    origin = request_origin(request)
    wanted_method = request.getHeader(b"access-control-request-method")
    wanted_headers = {h.strip().lower() for h in (request.getHeader(b"access-control-request-headers") or b"").split(b",") if h.strip()}
    if origin is None or origin not in allowed_origins or wanted_method not in methods or not wanted_headers <= ALLOWED_REQUEST_HEADERS:
        request.setResponseCode(403)
        return b""
    request.setResponseCode(204)
    request.setHeader(b"access-control-allow-origin", origin.encode("ascii"))
    request.setHeader(b"access-control-allow-credentials", b"true")
    request.setHeader(b"access-control-allow-methods", b", ".join(methods))
    request.setHeader(b"access-control-allow-headers", b"Content-Type")
    request.setHeader(b"access-control-max-age", PREFLIGHT_MAX_AGE)
    return b""
