"""Operations endpoints under /cookiesaver/: liveness, readiness, metrics."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource

from cookiesaver.config import Network
from cookiesaver.interfaces import IReadinessProbe
from cookiesaver.metrics import Metrics
from cookiesaver.web.responses import Directory, head


class Fixed(Resource):
    """Fixed bytes for GET and HEAD, headers computed once (like twisted.web.static.Data)."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__()
        self.body = body
        self.headers = [(b"content-type", content_type), (b"cache-control", b"no-store"), *extra]

    def render_GET(self, request: Any) -> bytes:
        for name, value in self.headers:
            request.setHeader(name, value)
        return self.body

    def render_HEAD(self, request: Any) -> bytes:
        return head(request, self.render_GET(request))


class Readiness(Resource):
    """200 when every probe is ready, else 503 naming the failing parts (names only, nothing secret)."""

    isLeaf = True

    def __init__(self, probes: Sequence[IReadinessProbe]) -> None:
        super().__init__()
        self._probes = probes

    def render_GET(self, request: Any) -> bytes:
        failing = [p.name for p in self._probes if not p.ready()]
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if failing:
            request.setResponseCode(503)
            return json.dumps({"status": "unavailable", "failing": failing}).encode() + b"\n"
        return b'{"status": "ready"}\n'

    def render_HEAD(self, request: Any) -> bytes:
        return head(request, self.render_GET(request))


class MetricsPage(Resource):
    """Prometheus text format, only for clients in the configured networks."""

    isLeaf = True

    def __init__(self, metrics: Metrics, networks: Sequence[Network], client_address: Callable[[Any], str]) -> None:
        super().__init__()
        self._metrics = metrics
        self._networks = tuple(networks)
        self._client_address = client_address

    def _allowed(self, request: Any) -> bool:
        try:
            address = ipaddress.ip_address(self._client_address(request))
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self._networks)

    def render_GET(self, request: Any) -> bytes:
        if not self._allowed(request):
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"metrics are only served to trusted networks\n"
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self._metrics.registry)


def peer_address(request: Any) -> str:
    """The TCP peer's address; used where no forwarded header may be believed."""
    peer = request.getClientAddress()
    return getattr(peer, "host", "") or ""


def operations_resource(metrics: Metrics, probes: Sequence[IReadinessProbe], networks: Sequence[Network], client_address: Callable[[Any], str] = peer_address) -> Resource:
    """The /cookiesaver/ subtree."""
    ops = Directory()
    ops.putChild(b"health", Fixed(b'{"status": "alive"}\n', b"application/json"))
    ops.putChild(b"readiness", Readiness(probes))
    ops.putChild(b"metrics", MetricsPage(metrics, networks, client_address))
    return ops
