"""Small response helpers shared by the areas."""

from __future__ import annotations

from typing import Any


def head(request: Any, body: bytes) -> bytes:
    """Answer HEAD like GET: same headers and Content-Length, no body (and no Twisted warning)."""
    request.setHeader(b"content-length", b"%d" % len(body))
    return b""


def plain_error(request: Any, code: int, message: bytes) -> bytes:
    """A short text/plain error body; never a traceback, never client input echoed."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return message + b"\n"
