"""Shutdown order: services stop one after another, and open connections drain before the writer stops."""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from cookiesaver.config import load
from cookiesaver.metrics import Metrics
from cookiesaver.service import SequentialMultiService
from cookiesaver.web.site import CookiesaverSite


class Recorder(service.Service):
    def __init__(self, name, log):
        self.name = name
        self.log = log
        self.stopping: defer.Deferred[None] = defer.Deferred()

    def stopService(self):
        super().stopService()
        self.log.append(("stop", self.name))
        return self.stopping.addCallback(lambda _: self.log.append(("stopped", self.name)))


class SequentialStopTests(SynchronousTestCase):
    def test_children_stop_one_after_another_in_reverse(self):
        """The next child's stopService is called only after the previous one's Deferred fired."""
        log: list = []
        top = SequentialMultiService()
        store, writer, listener = (Recorder(n, log) for n in ("store", "writer", "listener"))
        for s in (store, writer, listener):
            s.setServiceParent(top)
        top.startService()
        done = top.stopService()
        self.assertEqual(log, [("stop", "listener")])
        listener.stopping.callback(None)
        self.assertEqual(log[-1], ("stop", "writer"))
        self.assertNoResult(done)
        writer.stopping.callback(None)
        store.stopping.callback(None)
        self.successResultOf(done)
        self.assertEqual(log, [("stop", "listener"), ("stopped", "listener"), ("stop", "writer"), ("stopped", "writer"), ("stop", "store"), ("stopped", "store")])


class Slow(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.pending = []

    def render_GET(self, request):
        self.pending.append(request)
        return NOT_DONE_YET


class DrainTests(SynchronousTestCase):
    def setUp(self):
        config = load(None, {"COOKIESAVER_SSL_ON": "false"}).config
        self.clock = task.Clock()
        self.resource = Slow()
        self.site = CookiesaverSite(self.resource, config.http, self.clock, Metrics())

    def connect(self):
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport

    def test_idle_closed_busy_finishes_then_closes(self):
        """Drain closes idle keep-alive connections at once and busy ones right after their response."""
        idle, idle_t = self.connect()
        busy, busy_t = self.connect()
        busy.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        drained = self.site.drain(10)
        self.assertTrue(idle_t.disconnecting)
        self.assertFalse(busy_t.disconnecting)
        idle.connectionLost(None)
        self.assertNoResult(drained)
        request = self.resource.pending[0]
        request.write(b"ok")
        request.finish()
        self.assertIn(b"200 OK", busy_t.value())
        self.assertTrue(busy_t.disconnecting)
        busy.connectionLost(None)
        self.successResultOf(drained)

    def test_request_arriving_while_draining_is_answered_then_closed(self):
        """A request whose headers complete during the drain is answered with Connection: close, then the connection closes."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
        drained = self.site.drain(10)
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"\r\n")
        self.resource.pending[0].finish()
        head = transport.value().split(b"\r\n\r\n")[0]
        self.assertIn(b"Connection: close", head)
        self.assertTrue(transport.disconnecting)
        channel.connectionLost(None)
        self.successResultOf(drained)

    def test_stragglers_aborted_after_timeout(self):
        """A connection still busy when the drain timeout passes is aborted and the drain completes."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        aborted = []
        transport.abortConnection = lambda: (aborted.append(True), channel.connectionLost(None))
        drained = self.site.drain(5)
        self.clock.advance(5.1)
        self.assertEqual(aborted, [True])
        self.successResultOf(drained)
