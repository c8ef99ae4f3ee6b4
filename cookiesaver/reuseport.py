"""One address and port shared by N cookiesaver processes, through SO_REUSEPORT.

With C{COOKIESAVER_REUSE_PORT} true, every process binds the public address
with C{SO_REUSEPORT} and the kernel spreads new connections across them.
Each process stays a complete, independent cookiesaver (its own writer and
spool, named by C{COOKIESAVER_INSTANCE}); signals are sent to each process
(systemd does this for a template unit, see conf/cookiesaver@.service), and
each process answers readiness on its own private listener
(C{--listen tcp:PORT:interface=127.0.0.1}) so a health check reaches every
one of them, not whichever the kernel picked.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """A TCP server endpoint whose socket has SO_REUSEPORT set before bind."""

    def __init__(self, reactor: Any, port: int, interface: str, backlog: int = 1024) -> None:
        self._reactor = reactor
        self._port = port
        self._interface = interface
        self._backlog = backlog

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        family = socket.AF_INET6 if ":" in self._interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self._interface, self._port))
            sock.listen(self._backlog)
            sock.setblocking(False)
            port = self._reactor.adoptStreamPort(sock.fileno(), family, factory)
        except OSError as e:
            return defer.fail(CannotListenError(self._interface, self._port, e))
        finally:
            sock.close()  # adoptStreamPort holds its own duplicate of the descriptor
        return defer.succeed(port)


def supported() -> bool:
    """True when this platform has SO_REUSEPORT with load balancing (Linux 3.9+)."""
    return hasattr(socket, "SO_REUSEPORT")
