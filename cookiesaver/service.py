"""The service tree: what runs, in which order it starts and stops.

    embedded store (when MONGO_URI is "embedded")
    MongoDB store            connection pool, opened in startService
    MongoDB health           pings, for readiness
    writer                   batches, spool, backpressure
    connection drain         at shutdown: close idle connections, finish in-flight requests
    listeners                bound in privilegedStartService (before dropping privileges)
    listener-up probe        ready once the listeners are bound
    reloader                 SIGHUP: certificates and bot rules

L{SequentialMultiService} stops children one at a time in reverse order, so
shutdown stops accepting, drains the open connections (every answered request
reaches the writer), flushes the writer, then disconnects from MongoDB, then
stops the embedded server. (Twisted's MultiService would stop them all at once.)
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable
from typing import Any, NoReturn

import attrs
from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from cookiesaver.config import Config, ConfigError
from cookiesaver.gcpolicy import FreezeStartupObjects
from cookiesaver.health import ListenerUp, MongoHealth
from cookiesaver.metrics import Metrics
from cookiesaver.tls import CertificateError, CertificateStore
from cookiesaver.tlstransport import ServerTLSProtocol
from cookiesaver.web.fastpath import FastPixel
from cookiesaver.web.health import operations_resource
from cookiesaver.web.root import build_root
from cookiesaver.web.site import CookiesaverSite, LimitedTLSFactory, json_line_writer

log = Logger()


class SequentialMultiService(service.MultiService):
    """
    A MultiService that stops its children one after another, last added first.

    Twisted's MultiService calls every child's stopService at once and waits
    for all of them; cookiesaver needs an order: stop accepting, drain the
    connections, flush the writer, and only then disconnect from MongoDB.
    """

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        d: defer.Deferred[Any] = defer.succeed(None)

        def stop(_: object, child: service.IService) -> defer.Deferred[None] | None:
            return child.stopService()

        def failed(f: Failure, child: service.IService) -> None:
            log.failure("stopping {name}", f, name=getattr(child, "name", None) or type(child).__name__)

        for child in reversed(list(self)):
            d.addCallback(stop, child)
            d.addErrback(failed, child)
        return d.addCallback(lambda _: None)


class ConnectionDrain(service.Service):
    """Shutdown step between the listeners and the writer: answered requests are recorded before the writer stops."""

    name = "connection-drain"

    def __init__(self, site: CookiesaverSite, timeout: float) -> None:
        self._site = site
        self._timeout = timeout

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self._site.drain(self._timeout)


class StartupError(Exception):
    """Something in the configuration cannot be served; one line naming the key or file."""


class Listener(StreamServerEndpointService):
    """Binds in privilegedStartService; a bind error ends start-up with one line, not a traceback."""

    _raiseSynchronously = True

    def __init__(self, endpoint: Any, factory: Any, description: str) -> None:
        super().__init__(endpoint, factory)
        self.description = description

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            fatal(f"cannot listen on {self.description}: {_socket_reason(e.socketError)}")
        except OSError as e:
            fatal(f"cannot listen on {self.description}: {_socket_reason(e)}")


def fatal(message: str) -> NoReturn:
    """
    End start-up with one line on stderr and exit status 1.

    Once twistd has begun logging, C{sys.stderr} is captured into the log, so
    the line goes to file descriptor 2 directly (the terminal or the service
    manager) and to the log.
    """
    line = f"cookiesaver: {message}"
    log.critical("{line}", line=line)
    try:
        os.write(2, line.encode("utf-8", "replace") + b"\n")
    except OSError:
        pass
    raise SystemExit(1)


def _socket_reason(err: Any) -> str:
    code = getattr(err, "errno", None)
    if code == errno.EADDRINUSE:
        return "address already in use"
    if code == errno.EACCES:
        return "permission denied (ports below 1024 need root: start as root with -u/-g to drop privileges)"
    if code == errno.EADDRNOTAVAIL:
        return "address not available on this host"
    return getattr(err, "strerror", None) or str(err)


class Reloader(service.Service):
    """SIGHUP: the handler only schedules; a burst of signals coalesces into one reload."""

    name = "reloader"

    def __init__(self, reactor: Any, reloads: dict[str, Callable[[], None]]) -> None:
        self._reactor = reactor
        self._reloads = reloads
        self._pending = False
        self._previous: Any = None
        self.completed = 0

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._on_signal)

    def stopService(self) -> Any:
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
        return super().stopService()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._pending:
            return
        self._pending = True
        self._reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """Run every reload; each keeps its old state and logs one line when it fails."""
        self._pending = False
        for name, action in self._reloads.items():
            try:
                action()
            except Exception as e:  # noqa: BLE001 - a failed reload of any kind keeps the old state (logged)
                log.error("reload of {name} failed, keeping the previous one: {error}", name=name, error=e)
            else:
                log.info("reloaded {name}", name=name)
        self.completed += 1


def _main_endpoint(reactor: Any, config: Config) -> tuple[Any, str]:
    ip, port = config.listen.ip, config.listen.port
    if config.listen.reuse_port:
        from cookiesaver.reuseport import ReusePortEndpoint

        return ReusePortEndpoint(reactor, port, ip), (f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}") + " (SO_REUSEPORT)"
    if ":" in ip:
        return endpoints.TCP6ServerEndpoint(reactor, port, backlog=1024, interface=ip), f"[{ip}]:{port}"
    return endpoints.TCP4ServerEndpoint(reactor, port, backlog=1024, interface=ip), f"{ip}:{port}"


def build_service(config: Config, reactor: Any, metrics: Metrics | None = None) -> service.MultiService:
    """Construct (without starting) the whole service; raise L{StartupError} for anything unservable."""
    from cookiesaver.spool import Spool
    from cookiesaver.store.embedded import (
        EmbeddedMongo,
        EmbeddedUnavailable,
        find_server,
        free_loopback_port,
    )
    from cookiesaver.store.mongo import MongoStore
    from cookiesaver.web.pixel import Pixel
    from cookiesaver.writer import INDEXES, Writer

    metrics = metrics or Metrics()
    top = SequentialMultiService()

    # Storage.
    uri = config.mongo.uri
    if uri == "embedded":
        if config.listen.reuse_port:
            raise StartupError("COOKIESAVER_MONGO_URI 'embedded' cannot be shared by several processes: with COOKIESAVER_REUSE_PORT give a mongodb:// URI")
        try:
            executable = find_server()
        except EmbeddedUnavailable as e:
            raise StartupError(str(e)) from None
        embedded = EmbeddedMongo(reactor, config.data_dir, free_loopback_port(), executable)
        embedded.setServiceParent(top)
        uri = embedded.uri
    try:
        os.makedirs(config.data_dir, exist_ok=True)
    except OSError as e:
        raise StartupError(f"COOKIESAVER_DATA_DIR {config.data_dir}: {e.strerror}") from None
    store = MongoStore(attrs.evolve(config.mongo, uri=uri), reactor)
    store.setServiceParent(top)
    mongo_health = MongoHealth(store, reactor, metrics)
    mongo_health.setServiceParent(top)
    spool_name = "spool.sqlite3" if config.listen.instance == "main" else f"spool-{config.listen.instance}.sqlite3"
    spool = Spool(os.path.join(config.data_dir, "spool", spool_name), reactor)
    writer = Writer(store, config.writer, spool, reactor, metrics, indexes=INDEXES)
    writer.setServiceParent(top)

    # HTTP.
    listener_up = ListenerUp()
    probes = [listener_up, mongo_health, writer.readiness]
    reloads: dict[str, Callable[[], None]] = {}
    children, client_address = build_areas(config, reactor, metrics, writer, reloads)
    children[b"cookiesaver"] = operations_resource(metrics, probes, config.metrics_networks, client_address)
    root = build_root(children)
    access_log = json_line_writer(config.http.access_log) if config.http.access_log else None
    site = CookiesaverSite(root, config.http, reactor, metrics, access_log)
    pixel = children.get(b"pixel")
    if isinstance(pixel, Pixel):
        site.fast_pixel = FastPixel(pixel.render_GET, pixel.render_HEAD, config.http, reactor, b"cookiesaver")

    factory: Any = site
    if config.tls.enabled:
        assert config.tls.cert_path and config.tls.key_path
        certs = CertificateStore(config.tls.cert_path, config.tls.key_path, config.tls.certs_dir)
        try:
            certs.load()
        except CertificateError as e:
            raise StartupError(str(e)) from None

        def reload_certificates() -> None:
            try:
                certs.load()
            except CertificateError:
                metrics.tls_reloads.labels(result="failed").inc()
                raise
            metrics.tls_reloads.labels(result="ok").inc()

        reloads["certificates"] = reload_certificates
        factory = LimitedTLSFactory(certs, site)
        factory.protocol = ServerTLSProtocol
    ConnectionDrain(site, config.writer.shutdown_timeout).setServiceParent(top)
    endpoint, description = _main_endpoint(reactor, config)
    Listener(endpoint, factory, description).setServiceParent(top)
    for extra in config.listen.extra:
        try:
            extra_endpoint = endpoints.serverFromString(reactor, extra)
        except (ValueError, TypeError, KeyError) as e:
            raise StartupError(f"--listen {extra}: not a valid endpoint description ({e})") from None
        Listener(extra_endpoint, site, extra).setServiceParent(top)
    listener_up.setServiceParent(top)
    Reloader(reactor, reloads).setServiceParent(top)
    FreezeStartupObjects().setServiceParent(top)
    return top


def build_areas(config: Config, reactor: Any, metrics: Metrics, sink: Any, reloads: dict[str, Callable[[], None]]) -> tuple[dict[bytes, Resource], Callable[[Any], str]]:
    """The tracking and push areas, with the secrets and rules they load once at start."""
    from cookiesaver.bots import BotRules
    from cookiesaver.clientaddr import AddressResolver
    from cookiesaver.token import TokenKeys, verify
    from cookiesaver.vapid import VapidKeys
    from cookiesaver.visitor import VisitorCookies, load_secret
    from cookiesaver.web.pixel import Tracking, tracking_resources
    from cookiesaver.web.push import push_resource

    try:
        visitors = VisitorCookies(config.cookie, load_secret(config.cookie.secret_path))
        tokens = TokenKeys.from_config(config.tokens)
        bots = BotRules.from_files(config.bots.ua_path, config.bots.ip_path)
        vapid = VapidKeys.from_sites(config.sites)
    except ConfigError as e:
        raise StartupError(str(e)) from None
    resolver = AddressResolver(config.trusted_proxies, config.tls.enabled)
    tracking = Tracking(
        config=config, clock=reactor, sink=sink, metrics=metrics,
        visitors=visitors, tokens=tokens, resolver=resolver, bots=bots,
    )

    def reload_bots() -> None:
        tracking.bots = BotRules.from_files(config.bots.ua_path, config.bots.ip_path)

    reloads["bot rules"] = reload_bots

    def visitor_id_for(request: Any) -> str | None:
        cookie = request.requestHeaders.getRawHeaders(b"cookie")
        return visitors.visitor_id_from_header(b"; ".join(cookie) if cookie else None)

    def profile_for_key(key: bytes) -> str | None:
        result = verify(tokens, key, reactor.seconds())
        return getattr(result, "profile", None)

    def client_address(request: Any) -> str:
        return resolver.resolve(getattr(request.getClientAddress(), "host", "unix"), request.requestHeaders.getRawHeaders).address

    children: dict[bytes, Resource] = dict(tracking_resources(tracking))
    children[b"push"] = push_resource(
        config=config, vapid=vapid, sink=sink, metrics=metrics, clock=reactor,
        visitor_id_for=visitor_id_for, profile_for_key=profile_for_key,
    )
    return children, client_address
