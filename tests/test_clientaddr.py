"""Client address and scheme: which forwarding headers are believed, and how X-Forwarded-For is walked."""

from __future__ import annotations

import ipaddress

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from cookiesaver.clientaddr import AddressResolver, Resolved

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:1::/48"), ipaddress.ip_network("192.0.2.10/32"))


def _headers(**values: bytes | list[bytes]) -> Headers:
    h = Headers()
    for name, value in values.items():
        h.setRawHeaders(name.replace("_", "-"), value if isinstance(value, list) else [value])
    return h


def _resolve(peer: str, tls: bool = True, proxies=PROXIES, **headers: bytes | list[bytes]) -> Resolved:
    return AddressResolver(proxies, tls=tls).resolve(peer, _headers(**headers).getRawHeaders)


class TrustedPeerTests(SynchronousTestCase):
    def test_x_real_ip(self) -> None:
        """From a trusted proxy, X-Real-IP is the client, even when XFF says otherwise."""
        r = _resolve("10.0.0.1", x_real_ip=b"203.0.113.7", x_forwarded_for=b"198.51.100.1, 203.0.113.7")
        self.assertEqual(r, Resolved("203.0.113.7", "https", False))

    def test_xff_multiple_trusted_hops(self) -> None:
        """XFF is walked from the right past every trusted hop; the first untrusted one is the client."""
        r = _resolve("10.0.0.1", x_forwarded_for=b"1.1.1.1, 203.0.113.7, 192.0.2.10, 10.9.9.9")
        self.assertEqual(r.address, "203.0.113.7")

    def test_xff_spoofed_left_part_ignored(self) -> None:
        """Whatever the client prepended to XFF is ignored: the rightmost untrusted hop wins."""
        self.assertEqual(_resolve("10.0.0.1", x_forwarded_for=b"6.6.6.6, 203.0.113.7").address, "203.0.113.7")

    def test_trusted_x_real_ip_defers_to_xff(self) -> None:
        """When X-Real-IP is itself a proxy (CDN in front of nginx), XFF is walked."""
        r = _resolve("10.0.0.1", x_real_ip=b"192.0.2.10", x_forwarded_for=b"203.0.113.7, 192.0.2.10")
        self.assertEqual(r.address, "203.0.113.7")

    def test_xff_all_trusted(self) -> None:
        """When every XFF hop is trusted, the leftmost valid one is the client."""
        self.assertEqual(_resolve("10.0.0.1", x_forwarded_for=b"10.1.1.1, 10.2.2.2").address, "10.1.1.1")

    def test_xff_several_lines(self) -> None:
        """Several XFF header lines are one comma-separated list."""
        self.assertEqual(_resolve("10.0.0.1", x_forwarded_for=[b"203.0.113.7", b"10.2.2.2"]).address, "203.0.113.7")

    def test_ports_and_brackets(self) -> None:
        """XFF elements with ports or IPv6 brackets are understood."""
        self.assertEqual(_resolve("10.0.0.1", x_forwarded_for=b"203.0.113.7:4711, 10.2.2.2:80").address, "203.0.113.7")
        self.assertEqual(_resolve("10.0.0.1", x_forwarded_for=b"[2001:db8:2::5]:443").address, "2001:db8:2::5")
        self.assertEqual(_resolve("10.0.0.1", x_forwarded_for=b"2001:db8:2::5").address, "2001:db8:2::5")

    def test_junk_falls_back_to_peer(self) -> None:
        """Junk X-Real-IP / XFF from a trusted proxy gives the peer address, never the junk."""
        for headers in [
            {"x_real_ip": b"not-an-ip"},
            {"x_forwarded_for": b"unknown"},
            {"x_forwarded_for": b"203.0.113.7, garbage, 10.2.2.2"},
            {"x_forwarded_for": b""},
            {"x_forwarded_for": b"1.2.3.4" * 100},
            {"x_real_ip": b"\xff\xfe", "x_forwarded_for": b", ,"},
            {"x_forwarded_for": b"01.2.3.4"},
        ]:
            self.assertEqual(_resolve("10.0.0.1", **headers).address, "10.0.0.1", headers)

    def test_junk_x_real_ip_then_xff(self) -> None:
        """A junk X-Real-IP does not stop a valid XFF from being used."""
        self.assertEqual(_resolve("10.0.0.1", x_real_ip=b"junk", x_forwarded_for=b"203.0.113.7").address, "203.0.113.7")

    def test_no_headers(self) -> None:
        """A trusted peer without forwarding headers is itself the client, with no flag."""
        self.assertEqual(_resolve("10.0.0.1", tls=False), Resolved("10.0.0.1", "http", False))

    def test_long_chain_bounded(self) -> None:
        """A huge all-trusted XFF chain is examined only near its right end."""
        chain = b", ".join([b"203.0.113.7"] + [b"10.0.0.%d" % i for i in range(200)])
        self.assertEqual(_resolve("10.0.0.1", x_forwarded_for=chain).address, "10.0.0.184")


class UntrustedPeerTests(SynchronousTestCase):
    def test_headers_ignored_and_flagged(self) -> None:
        """An untrusted peer's forwarding headers are ignored and flagged."""
        r = _resolve("203.0.113.9", tls=False, x_real_ip=b"1.2.3.4", x_forwarded_for=b"1.2.3.4", x_scheme=b"https")
        self.assertEqual(r, Resolved("203.0.113.9", "http", True))

    def test_each_header_flags(self) -> None:
        """Any one of the three headers alone sets the flag."""
        for name in ("x_real_ip", "x_forwarded_for", "x_scheme"):
            self.assertTrue(_resolve("203.0.113.9", **{name: b"x"}).untrusted_headers, name)

    def test_no_headers_no_flag(self) -> None:
        """A direct client without forwarding headers is not flagged."""
        self.assertEqual(_resolve("203.0.113.9"), Resolved("203.0.113.9", "https", False))

    def test_no_trusted_proxies(self) -> None:
        """With no proxies configured, the peer is the client and headers only raise the flag."""
        r = _resolve("10.0.0.1", proxies=(), x_real_ip=b"1.2.3.4")
        self.assertEqual(r, Resolved("10.0.0.1", "https", True))

    def test_non_ip_peer(self) -> None:
        """A UNIX-socket peer is returned as is and never trusted."""
        self.assertEqual(_resolve("", x_real_ip=b"1.2.3.4"), Resolved("", "https", True))


class SchemeTests(SynchronousTestCase):
    def test_tls_always_https(self) -> None:
        """In TLS mode the scheme is https even if a trusted proxy says http."""
        self.assertEqual(_resolve("10.0.0.1", tls=True, x_scheme=b"http").scheme, "https")

    def test_plain_trusted_x_scheme(self) -> None:
        """Behind a trusted proxy in plain mode, X-Scheme decides (case-insensitively); junk means http."""
        self.assertEqual(_resolve("10.0.0.1", tls=False, x_scheme=b"HTTPS").scheme, "https")
        self.assertEqual(_resolve("10.0.0.1", tls=False, x_scheme=b"http").scheme, "http")
        self.assertEqual(_resolve("10.0.0.1", tls=False, x_scheme=b"gopher").scheme, "http")


class NormalisationTests(SynchronousTestCase):
    def test_ipv4_mapped_peer(self) -> None:
        """An IPv4-mapped IPv6 peer is reported as IPv4 and matched against IPv4 proxies."""
        self.assertEqual(_resolve("::ffff:203.0.113.9").address, "203.0.113.9")
        self.assertEqual(_resolve("::ffff:10.0.0.1", x_real_ip=b"203.0.113.7").address, "203.0.113.7")

    def test_ipv4_mapped_header(self) -> None:
        """An IPv4-mapped address in a header is reported as IPv4."""
        self.assertEqual(_resolve("10.0.0.1", x_real_ip=b"::ffff:203.0.113.7").address, "203.0.113.7")

    def test_ipv6_trusted_proxy(self) -> None:
        """IPv6 proxies are matched by prefix and IPv6 clients are compressed."""
        self.assertEqual(_resolve("2001:db8:1::2", x_real_ip=b"2001:DB8:0002:0:0:0:0:5").address, "2001:db8:2::5")

    def test_mapping_get_works(self) -> None:
        """A plain dict's get works as the header source."""
        r = AddressResolver(PROXIES, tls=True).resolve("10.0.0.1", {b"x-real-ip": [b"203.0.113.7"]}.get)
        self.assertEqual(r.address, "203.0.113.7")
