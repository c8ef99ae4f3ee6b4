"""The embedded default store: a supervised local MongoDB-wire server.

When C{COOKIESAVER_MONGO_URI} is C{embedded}, cookiesaver runs SecantusDB's
C{secantusd-py} (WiredTiger storage) as a child process on a free loopback
port with its files under C{DATA_DIR/mongo}, restarts it if it dies, and stops
it with the service. The child is started through this module's C{__main__},
which asks the kernel to send it SIGTERM if cookiesaver itself dies
(C{PR_SET_PDEATHSIG}), so even C{kill -9} leaves no orphan behind.

Production points the URI at MongoDB or a replica set; nothing in cookiesaver
relies on anything the embedded server does that a real mongod would not.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
from typing import Any

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.logger import Logger

log = Logger()


class EmbeddedUnavailable(Exception):
    """secantusd-py is not installed."""


def free_loopback_port() -> int:
    """A port the kernel says is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_server() -> str:
    """The secantusd-py executable: next to our interpreter (virtualenv) or on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "secantusd-py")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("secantusd-py")
    if found:
        return found
    raise EmbeddedUnavailable(
        "COOKIESAVER_MONGO_URI is 'embedded' but secantusd-py is not installed: pip install 'cookiesaver[embedded]'"
    )


class _ChildProtocol(protocol.ProcessProtocol):
    def __init__(self, owner: EmbeddedMongo) -> None:
        self.owner = owner
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._partial = b""

    def errReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                log.info("embedded store: {line}", line=line.decode("utf-8", "replace")[:500])

    outReceived = errReceived

    def processEnded(self, reason: Any) -> None:
        self.owner._child_ended(self, reason)
        self.ended.callback(None)


class EmbeddedMongo(service.Service):
    """Runs C{secantusd-py} on C{port} and keeps it running until stopped."""

    name = "embedded-mongo"

    def __init__(self, reactor: Any, data_dir: str, port: int, executable: str) -> None:
        self._reactor = reactor
        self.storage = os.path.join(data_dir, "mongo")
        self.port = port
        self.executable = executable
        self._child: _ChildProtocol | None = None
        self._restart_delay = 0.5
        self._restart_call: Any = None
        self.restarts = 0

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def startService(self) -> None:
        super().startService()
        os.makedirs(self.storage, exist_ok=True)
        self._spawn()

    def _spawn(self) -> None:
        self._restart_call = None
        child = _ChildProtocol(self)
        args = [
            sys.executable, "-m", "cookiesaver.store.embedded", self.executable,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--storage-path", self.storage, "--log-level", "WARNING",
        ]
        self._reactor.spawnProcess(child, sys.executable, args, env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r"})
        self._child = child
        log.info("embedded store: secantusd-py starting on 127.0.0.1:{port}, data in {storage}", port=self.port, storage=self.storage)

    def _child_ended(self, child: _ChildProtocol, reason: Any) -> None:
        if child is not self._child:
            return
        self._child = None
        if not self.running:
            return
        self.restarts += 1
        log.error(
            "embedded store: secantusd-py exited ({reason}); restarting in {delay:.1f}s",
            reason=reason.value, delay=self._restart_delay,
        )
        self._restart_call = self._reactor.callLater(self._restart_delay, self._spawn)
        self._restart_delay = min(self._restart_delay * 2, 10.0)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        child, self._child = self._child, None
        if child is None or child.transport is None:
            return defer.succeed(None)
        try:
            child.transport.signalProcess("TERM")
        except error.ProcessExitedAlready:
            return defer.succeed(None)
        kill = self._reactor.callLater(10, self._kill, child)
        ended = child.ended

        def done(_: object) -> None:
            if kill.active():
                kill.cancel()

        ended.addBoth(done)
        return ended

    @staticmethod
    def _kill(child: _ChildProtocol) -> None:
        try:
            child.transport.signalProcess("KILL")  # type: ignore[union-attr]
        except error.ProcessExitedAlready:
            pass


def _exec_with_parent_death_signal(argv: list[str]) -> None:
    """Become secantusd-py, asking the kernel for SIGTERM when the parent dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl took effect
            sys.exit(1)
    except (OSError, AttributeError):
        pass  # not Linux: supervision still stops the child on a clean shutdown
    os.execv(argv[0], argv)


if __name__ == "__main__":
    _exec_with_parent_death_signal(sys.argv[1:])
