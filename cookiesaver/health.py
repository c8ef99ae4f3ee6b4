"""Readiness: each part that must work says whether it does.

L{MongoHealth} proves the MongoDB write path with a ping every second (its
own deadline, so a frozen server counts as down) and is ready while the last
success is recent. L{ListenerUp} is ready once the listeners are bound.
The readiness resource asks every L{IReadinessProbe} and names the failing
ones, never a host name, URI or credential.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from cookiesaver.interfaces import IReadinessProbe, IStore
from cookiesaver.metrics import Metrics

log = Logger()


@implementer(IReadinessProbe)
class MongoHealth(service.Service):
    """Pings the store; ready while a ping succeeded within C{fresh} seconds."""

    name = "mongodb"

    def __init__(self, store: IStore, clock: IReactorTime, metrics: Metrics, interval: float = 1.0, timeout: float = 2.0, fresh: float = 4.0) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._interval = interval
        self._timeout = timeout
        self._fresh = fresh
        self._loop: task.LoopingCall | None = None
        self._in_flight = False
        self.last_ok: float | None = None
        self.down_since: float | None = None

    def startService(self) -> None:
        super().startService()
        self.down_since = self._clock.seconds()
        self._loop = task.LoopingCall(self._ping)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True).addErrback(lambda f: log.failure("mongodb health loop", f))

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return defer.succeed(None)

    def _ping(self) -> None:
        if self._in_flight:
            return
        self._in_flight = True
        d = defer.maybeDeferred(self._store.ping)
        d.addTimeout(self._timeout, self._clock)
        d.addCallbacks(self._ok, self._failed)
        d.addErrback(lambda f: log.failure("mongodb health check", f))

    def _ok(self, _: object) -> None:
        self._in_flight = False
        if self.down_since is not None:
            log.info("mongodb reachable")
        self.last_ok = self._clock.seconds()
        self.down_since = None
        self._metrics.mongo_up.set(1)

    def _failed(self, reason: Any) -> None:
        self._in_flight = False
        if self.down_since is None:
            self.down_since = self._clock.seconds()
            log.warn("mongodb unreachable: {kind}", kind=type(reason.value).__name__)
        self._metrics.mongo_up.set(0)

    def ready(self) -> bool:
        return self.last_ok is not None and self._clock.seconds() - self.last_ok <= self._fresh


@implementer(IReadinessProbe)
class ListenerUp(service.Service):
    """Ready once started; sits after the listeners in the service tree, so it starts after them."""

    name = "listener"

    def ready(self) -> bool:
        return bool(self.running)
