"""Validation of what browsers post about web push: subscriptions and the worker's events.

Pure functions, no I/O: a body goes in, a normalized record or a L{FieldError}
naming the offending member comes out. The endpoint check matters most: the
platform later POSTs to every stored endpoint, so an endpoint is accepted only
when it is an https URL on a known browser push service (see L{PushServices}),
never an address an attacker chose (SSRF).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from cryptography.hazmat.primitives.asymmetric import ec

MAX_ENDPOINT_LENGTH = 2048
MAX_MESSAGE_LENGTH = 128
MAX_ACTION_LENGTH = 64
AUTH_LENGTH = 16
P256_POINT_LENGTH = 65

EVENT_TYPES = frozenset({"delivered", "clicked", "closed", "expired", "invalid"})
"""Worker reports: the first three are the issue's; C{expired} and C{invalid}
say a push arrived but was not shown (past its C{expires}, or not a payload we
understand), so the platform can tell "sent, not shown" from "lost"."""

_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# A last label that is all digits or hex-looking is an IPv4 address in one of
# inet_aton's forms (2130706433, 0x7f.1, 0177.0.0.1), never a real TLD.
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")


@attrs.frozen
class FieldError(Exception):
    """A body member that failed validation: C{field} is a dotted path like C{keys.p256dh}."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@attrs.frozen
class Subscription:
    """A validated PushSubscription. Only these members are ever stored."""

    endpoint: str
    endpoint_hash: str
    p256dh: str
    auth: str
    expiration_time: int | float | None


@attrs.frozen
class PushEvent:
    """A validated worker report."""

    type: str
    message: str | None
    subscription: str
    action: str | None

    @property
    def id(self) -> str:
        """The dedupe key: workers retry, and one (message, subscription, event) is one document."""
        key = f"{self.message or ''}|{self.subscription}|{self.type}"
        return hashlib.sha256(key.encode("utf-8")).hexdigest()


def endpoint_hash(endpoint: str) -> str:
    """The subscription's id: hex SHA-256 of the exact endpoint string, so the same subscription is one record."""
    return hashlib.sha256(endpoint.encode("utf-8")).hexdigest()


def _normalize_host(name: str) -> str:
    """Lowercase, IDNA-encode and drop one trailing dot of a configured service name."""
    name = name.strip().rstrip(".").lower()
    return name.encode("idna").decode("ascii") if not name.isascii() else name


@attrs.frozen
class PushServices:
    """The host names (and their sub-domains) accepted as push endpoints, normalized once."""

    names: tuple[str, ...]

    @classmethod
    def from_names(cls, names: Iterable[str]) -> PushServices:
        """Normalize the configured list (C{PushConfig.services})."""
        return cls(tuple(n for n in (_normalize_host(x) for x in names) if n))

    def allows(self, host: str) -> bool:
        """True when C{host} (already lowercase ASCII) is a listed name or a sub-domain of one."""
        return any(host == name or host.endswith("." + name) for name in self.names)


def validate_endpoint(endpoint: Any, services: PushServices, field: str = "endpoint") -> str:
    """
    Check a push endpoint URL and return it unchanged.

    Browsers only ever produce lowercase ASCII https URLs on port 443, so
    anything else (other schemes or ports, user info, IP literals in any
    spelling, localhost, trailing dots, non-ASCII host names, look-alikes such
    as C{fcm.googleapis.com.evil.com}) is refused rather than normalized: the
    exact string is what the platform will later connect to.

    @raise FieldError: naming C{field}.
    """
    if not isinstance(endpoint, str):
        raise FieldError(field, "must be a string")
    if not endpoint:
        raise FieldError(field, "must not be empty")
    if len(endpoint) > MAX_ENDPOINT_LENGTH:
        raise FieldError(field, f"must be at most {MAX_ENDPOINT_LENGTH} characters")
    if not endpoint.isascii() or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in endpoint) or "\\" in endpoint:
        raise FieldError(field, "must be a printable ASCII URL")
    if not endpoint.startswith("https://"):
        raise FieldError(field, "must be an https:// URL")
    rest = endpoint[len("https://") :]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "#" in rest:
        raise FieldError(field, "must not have a fragment")
    if "@" in authority:
        raise FieldError(field, "must not contain user info")
    if authority.startswith("["):
        raise FieldError(field, "must not be an IP address")
    host, sep, port = authority.partition(":")
    if sep and port != "443":
        raise FieldError(field, "must use port 443")
    host = host.lower()
    if not host:
        raise FieldError(field, "must have a host name")
    if host.endswith("."):
        raise FieldError(field, "host must not end with a dot")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        raise FieldError(field, "must not be an IP address")
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise FieldError(field, "must not be an IP address")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise FieldError(field, "host is not a valid host name")
    if host == "localhost" or host.endswith(".localhost"):
        raise FieldError(field, "must not be localhost")
    if not services.allows(host):
        raise FieldError(field, "host is not a known browser push service")
    return endpoint


def b64url_decode(value: str) -> bytes:
    """Decode base64url with or without padding; raise ValueError on anything else (no '+', '/', spaces)."""
    if not _B64URL.fullmatch(value):
        raise ValueError("not base64url")
    stripped = value.rstrip("=")
    if len(stripped) % 4 == 1:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


def b64url_encode(raw: bytes) -> str:
    """Unpadded base64url, the form the Push API and VAPID use."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _p256dh(value: Any) -> str:
    field = "keys.p256dh"
    if not isinstance(value, str):
        raise FieldError(field, "must be a base64url string")
    try:
        raw = b64url_decode(value)
    except ValueError:
        raise FieldError(field, "must be base64url") from None
    if len(raw) != P256_POINT_LENGTH or raw[0] != 0x04:
        raise FieldError(field, f"must be an uncompressed P-256 point ({P256_POINT_LENGTH} bytes)")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        raise FieldError(field, "is not a point on P-256") from None
    return b64url_encode(raw)


def _auth(value: Any) -> str:
    field = "keys.auth"
    if not isinstance(value, str):
        raise FieldError(field, "must be a base64url string")
    try:
        raw = b64url_decode(value)
    except ValueError:
        raise FieldError(field, "must be base64url") from None
    if len(raw) != AUTH_LENGTH:
        raise FieldError(field, f"must be {AUTH_LENGTH} bytes")
    return b64url_encode(raw)


def _expiration_time(value: Any) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise FieldError("expirationTime", "must be null or a non-negative number")
    return value


def validate_subscription(body: Mapping[str, Any], services: PushServices) -> Subscription:
    """
    Validate C{PushSubscription.toJSON()} as browsers send it.

    Unknown members (Chrome and Firefox add different ones over time) are
    ignored and never stored.

    @raise FieldError: the first member that is wrong.
    """
    if not isinstance(body, Mapping):
        raise FieldError("body", "must be a JSON object")
    if "endpoint" not in body:
        raise FieldError("endpoint", "is required")
    endpoint = validate_endpoint(body["endpoint"], services)
    keys = body.get("keys")
    if not isinstance(keys, Mapping):
        raise FieldError("keys", "must be an object with p256dh and auth")
    for name in ("p256dh", "auth"):
        if name not in keys:
            raise FieldError(f"keys.{name}", "is required")
    p256dh = _p256dh(keys["p256dh"])
    auth = _auth(keys["auth"])
    expiration = _expiration_time(body.get("expirationTime"))
    return Subscription(endpoint=endpoint, endpoint_hash=endpoint_hash(endpoint), p256dh=p256dh, auth=auth, expiration_time=expiration)


def _bounded(value: Any, field: str, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise FieldError(field, "must be a non-empty string")
    if len(value) > limit:
        raise FieldError(field, f"must be at most {limit} characters")
    if not value.isprintable():
        raise FieldError(field, "must be printable text")
    return value


def validate_event(body: Mapping[str, Any]) -> PushEvent:
    """
    Validate one worker report: C{type}, C{message}, C{subscription} (an endpoint hash), optional C{action}.

    C{message} may be missing only for C{invalid}, where the payload could not be read.

    @raise FieldError: the first member that is wrong.
    """
    if not isinstance(body, Mapping):
        raise FieldError("body", "must be a JSON object")
    kind = body.get("type")
    if kind not in EVENT_TYPES:
        raise FieldError("type", "must be one of " + ", ".join(sorted(EVENT_TYPES)))
    message = body.get("message")
    if message is None and kind == "invalid":
        message_value = None
    else:
        message_value = _bounded(message, "message", MAX_MESSAGE_LENGTH)
    subscription = body.get("subscription")
    if not isinstance(subscription, str) or not _HEX64.fullmatch(subscription):
        raise FieldError("subscription", "must be the endpoint hash (64 lowercase hex digits)")
    action = body.get("action")
    if action is not None and action != "":
        action = _bounded(action, "action", MAX_ACTION_LENGTH)
    else:
        action = None
    return PushEvent(type=kind, message=message_value, subscription=subscription, action=action)
