"""The client's address and scheme, believing forwarding headers only from trusted proxies.

API::

    resolver = AddressResolver(config.trusted_proxies, tls=config.tls.enabled)
    r = resolver.resolve(request.getClientAddress().host, request.requestHeaders.getRawHeaders)
    r.address, r.scheme          # "203.0.113.7", "https"
    if r.untrusted_headers: metrics.untrusted_forwarded.inc()

C{headers} is any callable C{name -> list of raw values or None}; Twisted's
C{Headers.getRawHeaders} is one, so is C{dict.get} on C{{b"x-real-ip": [b"..."]}}.

Rules, when the TCP peer is in C{trusted_proxies}:

 1. C{X-Real-IP} (its last line) if it is a valid address that is not itself
    a trusted proxy: our nginx sets it to C{$remote_addr}, overwriting
    whatever the client sent, so it is the most direct statement.
 2. Otherwise C{X-Forwarded-For} (all lines, comma-joined) walked from the
    right: trusted hops are skipped and the first untrusted address is the
    client; when every hop is trusted, the leftmost one. A junk element met
    on the walk stops it and the peer address is used (the chain can no
    longer be believed). Elements may carry a port (C{1.2.3.4:80},
    C{[2001:db8::1]:443}).
 3. Otherwise (absent or junk headers) the peer address.

Scheme: C{https} in TLS mode whatever the headers say; in plain mode
C{X-Scheme} (C{http} or C{https}) from a trusted peer, else C{http}.
X-Forwarded-Proto is not read: our nginx configuration sends X-Scheme.

From an untrusted peer the headers are ignored and C{untrusted_headers} is
set when any of them was present, so the caller can count spoofing attempts
or a proxy missing from the configuration. IPv4-mapped IPv6 addresses
(C{::ffff:192.0.2.1}) are reported as IPv4. A peer that is not an IP address
(a UNIX socket) is returned unchanged and is never trusted.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Sequence

import attrs

RawHeaders = Callable[[bytes], "Sequence[bytes] | None"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_X_REAL_IP = b"x-real-ip"
_X_FORWARDED_FOR = b"x-forwarded-for"
_X_SCHEME = b"x-scheme"
#: At most this many X-Forwarded-For elements are examined, from the right.
MAX_HOPS = 16
#: Longer header values are junk without parsing (an IPv6 address with a zone fits).
MAX_ADDRESS_LENGTH = 64
#: Distinct address strings whose parse and trust verdict are remembered.
CACHE_SIZE = 4096


@attrs.frozen
class Resolved:
    """Where a request really comes from."""

    address: str
    scheme: str
    untrusted_headers: bool = False


class AddressResolver:
    """Resolves requests' client address and scheme. Immutable; cheap per request."""

    def __init__(self, trusted_proxies: Sequence[Network], tls: bool) -> None:
        self._tls = tls
        self._default_scheme = "https" if tls else "http"
        # Per version: (network int, mask int) pairs; a few integer ops beat `in` on ip_network.
        self._nets: dict[int, tuple[tuple[int, int], ...]] = {
            v: tuple((int(n.network_address), int(n.netmask)) for n in trusted_proxies if n.version == v) for v in (4, 6)
        }
        self._has_trusted = bool(trusted_proxies)
        self._cached = functools.lru_cache(maxsize=CACHE_SIZE)(self._classify_uncached)

    def _classify(self, text: str) -> tuple[str | None, bool]:
        """(normalised address or None when junk, trusted?), remembered for repeat addresses."""
        if len(text) > MAX_ADDRESS_LENGTH:  # junk; and keeps the cache's keys small
            return None, False
        return self._cached(text)

    def _classify_uncached(self, text: str) -> tuple[str | None, bool]:
        """(normalised address or None when junk, trusted?)."""
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return None, False
        if ip.version == 6 and ip.ipv4_mapped is not None:  # type: ignore[union-attr]
            ip = ip.ipv4_mapped  # type: ignore[union-attr]
        value = int(ip)
        trusted = any(value & mask == net for net, mask in self._nets[ip.version])
        return str(ip), trusted

    def resolve(self, peer_host: str, headers: RawHeaders) -> Resolved:
        """The client address and scheme for a request from C{peer_host}."""
        peer, peer_trusted = self._classify(peer_host)
        if peer is None:
            peer = peer_host
        if not peer_trusted:
            present = bool(headers(_X_REAL_IP) or headers(_X_FORWARDED_FOR) or headers(_X_SCHEME))
            return Resolved(peer, self._default_scheme, present)
        scheme = self._default_scheme
        if not self._tls:
            lines = headers(_X_SCHEME)
            if lines and lines[-1].strip().lower() == b"https":
                scheme = "https"
        return Resolved(self._client(peer, headers), scheme, False)

    def _client(self, peer: str, headers: RawHeaders) -> str:
        lines = headers(_X_REAL_IP)
        if lines:
            address, trusted = self._classify(_text(lines[-1].strip()))
            if address is not None and not trusted:
                return address
        lines = headers(_X_FORWARDED_FOR)
        if not lines:
            return peer
        joined = lines[0] if len(lines) == 1 else b",".join(lines)
        hops = joined.rsplit(b",", MAX_HOPS)
        if len(hops) > MAX_HOPS:
            hops = hops[1:]  # the unexamined remainder; the leftmost examined hop stands in for it
        leftmost = peer
        for hop in reversed(hops):
            address, trusted = self._classify(_strip_port(hop.strip()))
            if address is None:
                return peer
            if not trusted:
                return address
            leftmost = address
        return leftmost


def _text(raw: bytes) -> str:
    """Header bytes as text for the parser; non-ASCII can never be an address anyway."""
    return raw.decode("latin-1")


def _strip_port(hop: bytes) -> str:
    """C{1.2.3.4:80} -> C{1.2.3.4}; C{[::1]:80} or C{[::1]} -> C{::1}; anything else unchanged."""
    if hop[:1] == b"[":
        end = hop.find(b"]")
        return _text(hop[1:end]) if end > 0 else _text(hop)
    if hop.count(b":") == 1:
        return _text(hop.split(b":", 1)[0])
    return _text(hop)
