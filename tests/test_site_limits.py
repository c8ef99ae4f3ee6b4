"""The HTTP limits of cookiesaver.web.site, driven through an in-memory transport and a fake clock."""

from __future__ import annotations

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from cookiesaver.config import load
from cookiesaver.metrics import Metrics
from cookiesaver.web.site import CookiesaverSite


class Echo(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"ok"

    def render_POST(self, request):
        return b"got %d" % len(request.content.getvalue())


def make(**env):
    environ = {"COOKIESAVER_SSL_ON": "false", **env}
    config = load(None, environ).config
    clock = task.Clock()
    metrics = Metrics()
    site = CookiesaverSite(Echo(), config.http, clock, metrics)
    return site, clock, metrics


def connect(site):
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 4444))
    channel.makeConnection(transport)
    return channel, transport


class HeaderDeadlineTests(SynchronousTestCase):
    def test_silent_connection_closed_at_deadline(self):
        """A connection that never sends a byte is closed when the header deadline passes."""
        site, clock, metrics = make(COOKIESAVER_HTTP_HEADER_TIMEOUT="5")
        channel, transport = connect(site)
        clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertIn(b"408", transport.value())

    def test_dripping_does_not_extend_deadline(self):
        """A client sending one header byte per second is cut off at the deadline, not later."""
        site, clock, metrics = make(COOKIESAVER_HTTP_HEADER_TIMEOUT="5")
        channel, transport = connect(site)
        request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        for i, byte in enumerate(request):
            if transport.disconnecting:
                break
            channel.dataReceived(bytes([byte]))
            clock.advance(1.0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(i, 5)
        self.assertEqual(metrics.http_limit_hits.labels(limit="header_timeout")._value.get(), 1)

    def test_deadline_starts_again_for_next_keepalive_request(self):
        """After a complete request the connection idles under the idle timeout, not the header deadline."""
        site, clock, metrics = make(COOKIESAVER_HTTP_HEADER_TIMEOUT="5", COOKIESAVER_HTTP_IDLE_TIMEOUT="60")
        channel, transport = connect(site)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())
        clock.advance(30)
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"GET / HTT")
        clock.advance(5.1)
        self.assertTrue(transport.disconnecting)


class BodyLimitTests(SynchronousTestCase):
    def test_content_length_over_limit_gets_413_before_body(self):
        """A Content-Length over the path's limit is answered 413 from the headers alone."""
        site, clock, metrics = make()
        channel, transport = connect(site)
        channel.dataReceived(b"POST /pixel HTTP/1.1\r\nHost: x\r\nContent-Length: 10737418240\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(transport.disconnecting)

    def test_body_within_limit_is_served(self):
        """A body within the limit reaches the resource whole."""
        site, clock, metrics = make()
        channel, transport = connect(site)
        channel.dataReceived(b"POST /pixel HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000)
        self.assertIn(b"got 1000", transport.value())

    def test_per_path_limit(self):
        """The default limit applies to paths not listed in HTTP_BODY_LIMITS."""
        site, clock, metrics = make()
        channel, transport = connect(site)
        channel.dataReceived(b"POST /other HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))

    def test_chunked_body_cut_at_limit(self):
        """A chunked body is cut off with 413 as soon as it passes the limit."""
        site, clock, metrics = make(COOKIESAVER_HTTP_BODY_LIMITS='{"/pixel": 100}')
        channel, transport = connect(site)
        channel.dataReceived(b"POST /pixel HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(10):
            channel.dataReceived(b"40\r\n" + b"y" * 64 + b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(transport.disconnecting)
        self.assertNotIn(b"got", transport.value())

    def test_body_deadline(self):
        """A body that stops arriving is cut off at the body deadline."""
        site, clock, metrics = make(COOKIESAVER_HTTP_BODY_TIMEOUT="3")
        channel, transport = connect(site)
        channel.dataReceived(b"POST /pixel HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        clock.advance(3.1)
        self.assertTrue(transport.disconnecting)


class LineAndConnectionLimitTests(SynchronousTestCase):
    def test_long_request_line_gets_414(self):
        """A request line over HTTP_MAX_REQUEST_LINE is answered 414."""
        site, clock, metrics = make(COOKIESAVER_HTTP_MAX_REQUEST_LINE="100")
        channel, transport = connect(site)
        channel.dataReceived(b"GET /" + b"a" * 200)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 414 "))

    def test_long_header_line_gets_431(self):
        """A header line over the limit is answered 431."""
        site, clock, metrics = make(COOKIESAVER_HTTP_MAX_REQUEST_LINE="100")
        channel, transport = connect(site)
        channel.dataReceived(b"GET / HTTP/1.1\r\nX: " + b"a" * 200)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "))

    def test_connection_cap(self):
        """Past HTTP_MAX_CONNECTIONS new connections are refused and counted; closing one frees a slot."""
        site, clock, metrics = make(COOKIESAVER_HTTP_MAX_CONNECTIONS="2")
        first, first_transport = connect(site)
        connect(site)
        self.assertIsNone(site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))
        self.assertEqual(metrics.connections_refused._value.get(), 1)
        first.connectionLost(None)
        self.assertIsNotNone(site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))

    def test_no_access_log_by_default(self):
        """No access-log line is formatted per request unless HTTP_ACCESS_LOG is set."""
        site, clock, metrics = make()
        called = []
        site._logFormatter = lambda *a: called.append(a) or ""
        channel, transport = connect(site)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(called, [])

    def test_requests_counted_by_area_and_status(self):
        """Every answered request increments cookiesaver_requests by area and status class."""
        site, clock, metrics = make()
        channel, transport = connect(site)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(metrics.requests.labels(area="", status="2xx")._value.get(), 2)

    def test_unsupported_method_gets_short_405(self):
        """An unsupported method gets 405, an Allow header and a short text body, not Twisted's HTML page."""
        site, clock, metrics = make()
        channel, transport = connect(site)
        channel.dataReceived(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        response = transport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 405 "))
        self.assertIn(b"Allow: GET, HEAD, POST\r\n", response)
        self.assertTrue(response.endswith(b"\r\n\r\nmethod not allowed\n"))

    def test_push_413_is_json(self):
        """Push errors are JSON, including the HTTP layer's early 413."""
        site, clock, metrics = make()
        channel, transport = connect(site)
        channel.dataReceived(b"POST /push/subscribe HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n")
        response = transport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 413 "))
        self.assertIn(b"Content-Type: application/json", response)
        self.assertTrue(response.endswith(b'{"error": "request body too large", "field": "body"}\n'))

    def test_absolute_form_target_is_routed_by_path(self):
        """GET http://host/x?y is answered like GET /x?y (HTTP/1.1 servers must accept absolute-form)."""
        site, clock, metrics = make()
        root = Resource()
        root.putChild(b"x", Echo())
        site.resource = root
        channel, transport = connect(site)
        channel.dataReceived(b"GET http://pxl.example.com/x?y=1 HTTP/1.1\r\nHost: pxl.example.com\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:40])
        self.assertTrue(transport.value().endswith(b"ok"))
